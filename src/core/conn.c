/* A connection's life on libev: accept, the state machine (every change goes through
 * ws_conn_set_state, which refuses illegal transitions), reads parsed straight out of the shared
 * read buffer into frames and messages, every timeout as one row of the deadline table, and
 * freeing, which waits for ws_conn_run_pending and never happens during a callback. Frames out
 * are conn_out.c's; the request and the front's decision are conn_http.c's. */
#include "ws/conn.h"

#include "ws/clock.h"
#include "ws/err.h"
#include "ws/frame.h"
#include "ws/front.h"
#include "ws/handshake.h"
#include "ws/http.h"
#include "ws/connlog.h"
#include "ws/log.h"
#include "ws/request.h"

#include <arpa/inet.h>
#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_io(struct ev_loop *loop, ev_io *w, int revents);

void ws_conn_set_state(struct ws_conn *c, enum ws_conn_state to)
{
    enum ws_conn_state from = c->state;
    bool legal = (from == WS_CONN_CONNECTING && to != WS_CONN_CONNECTING) ||
                 (from == WS_CONN_OPEN && (to == WS_CONN_CLOSING || to == WS_CONN_CLOSED)) ||
                 (from == WS_CONN_CLOSING && to == WS_CONN_CLOSED);
    assert(legal);
    (void)legal;
    c->state = to;
    if (from == WS_CONN_OPEN)
        c->env->nopen--;
    if (to == WS_CONN_OPEN)
        c->env->nopen++;
    if (to == WS_CONN_CLOSING)
        c->clock.closing_since = ws_clock_now(c->env->loop);
}

/* Counts c against max_connections_per_ip under its peer address; false when that is one too
 * many (the slot is taken all the same and given back when c goes). */
bool ws_conn_take_ip_slot(struct ws_conn *c)
{
    c->ip_counted = true;
    return ws_env_ip_count(c->env, &c->peer.sa, 1) <=
           (uintptr_t)ws_conn_cfg(c)->max_connections_per_ip;
}

struct ws_conn *ws_conn_new(struct ws_env *env, int fd, const struct sockaddr *sa, socklen_t salen,
                            const struct ws_transport_ops *transport, void *transport_state)
{
    struct ws_conn *c = ws_xcalloc(1, sizeof(*c));
    c->env = env;
    c->node.id = ++env->next_id;
    if (salen > sizeof(c->peer))
        salen = sizeof(c->peer);
    memcpy(&c->peer, sa, salen);
    c->state = WS_CONN_CONNECTING;
    c->clock.started = c->clock.last_read = c->clock.last_message = ws_clock_now(env->loop);
    ws_session_init(&c->session, (size_t)env->cfg.max_message_size);
    c->request = ws_xmalloc(sizeof(*c->request));
    ws_request_init(c->request);
    ws_wire_init(&c->wire, env->loop, fd, transport, transport_state, on_io, c);
    ws_registry_add(&env->conns, &c->node);
    env->stats->connections_total++;
    ws_conn_rearm(c);
    /* per address, every socket counts from accept, handshakes in progress included: one
     * address must not be able to hold all the sockets the server accepts */
    if (env->cfg.max_connections_per_ip > 0 && c->peer.sa.sa_family != AF_UNIX &&
        !ws_front_trusted(env, &c->peer.sa)) {
        if (!ws_conn_take_ip_slot(c)) {
            /* refused at once and not kept lingering: those sockets must not pile up either.
             * A fresh socket's send buffer takes the short answer whole. */
            static const char msg[] = "too many connections from this address\n";
            char out[512];
            size_t n =
                ws_handshake_error_response(out, sizeof(out), 503, msg, sizeof(msg) - 1, NULL);
            if (transport != &ws_transport_tls) { /* TLS has no session yet to say it in */
                struct iovec iov = {out, n};
                (void)transport->writev(transport_state, fd, &iov, 1);
            }
            ws_stats_count_refusal(env->stats, 503);
            ws_connlog_access(c, 503, "too many connections from this address", NULL, n);
            ws_conn_abort(c, 0, NULL);
        }
    }
    return c;
}

/* Closes the socket now; the app hears of it in the sweep. code is reported unless a close
 * frame already settled it. */
void ws_conn_abort(struct ws_conn *c, int code, const char *reason)
{
    if (c->state == WS_CONN_CLOSED)
        return;
    if (!c->close_code) {
        c->close_code = (uint16_t)code;
        if (reason && !c->close_reason)
            c->close_reason = ws_xstrndup(reason, strlen(reason));
    }
    ws_conn_set_state(c, WS_CONN_CLOSED);
    ws_deadline_clear(&c->env->deadlines, &c->deadline);
    ws_wire_close(&c->wire, c->env->loop, &c->env->pool);
    if (c->in_flush_list) {
        /* out of the flush list (a closed connection has nothing to flush): next_dead takes
         * next_flush's place */
        struct ws_conn **p = &c->env->flush_head;
        while (*p != c)
            p = &(*p)->next_flush;
        *p = c->next_flush;
        c->in_flush_list = false;
    }
    c->next_dead = c->env->dead_head;
    c->env->dead_head = c;
}

/* ---- WebSocket side ---- */

static void fail(struct ws_conn *c, int err)
{
    int code = ws_err_close_code(err);
    ws_connlog_event(c, WS_LOG_DEBUG, "protocol_error", code, ws_strerror(err));
    if (c->state == WS_CONN_OPEN)
        ws_conn_start_close(c, code, ws_strerror(err), strlen(ws_strerror(err)));
    else
        ws_conn_abort(c, code, ws_strerror(err));
}

static void on_peer_close(struct ws_conn *c, const struct ws_session_event *ev)
{
    if (c->state == WS_CONN_OPEN)
        c->closed_by = WS_CONN_BY_PEER;
    c->close_code = ev->code;
    free(c->close_reason);
    c->close_reason = ev->len ? ws_xstrndup((const char *)ev->data, ev->len) : NULL;
    /* RFC 6455 §5.5.1: echo the status code (1005 means there was none); the handshake is then
     * done, so start_close keeps the peer's code as the one reported */
    if (c->state == WS_CONN_OPEN)
        ws_conn_start_close(c, ev->code == 1005 ? 0 : ev->code, NULL, 0);
    else if (c->state == WS_CONN_CLOSING && ws_conn_closes_at_once(c) && c->wire.out.bytes == 0)
        ws_conn_abort(c, 1006, NULL); /* the reply to our close: done */
}

/* Takes the read's next event: the held one, or one fed from its bytes. */
static int next_event(struct ws_feed *f, struct ws_session_event *ev)
{
    if (f->held) {
        f->held = false;
        *ev = f->ev;
        return f->rc;
    }
    size_t used = 0;
    int rc = ws_session_feed(&f->c->session, f->data, f->len, &used, ev);
    f->data += used;
    f->len -= used;
    return rc;
}

/* A message from an open connection reaches the app: counted, and its time noted. */
static void count_message(struct ws_conn *c)
{
    c->env->stats->messages_in++;
    c->messages_in++;
    c->clock.last_message = c->clock.last_read; /* set by this read */
}

static void process_frames(struct ws_conn *c, uint8_t *data, size_t len)
{
    struct ws_env *env = c->env;
    struct ws_feed f; /* its ev is set only with held */
    f.c = c;
    f.data = data;
    f.len = len;
    f.held = false;
    struct ws_feed *outer = env->feed; /* kept: a read may be handled inside another's */
    env->feed = &f;
    for (;;) {
        struct ws_session_event ev;
        int rc = next_event(&f, &ev);
        if (rc == WS_E_AGAIN)
            break;
        if (rc < 0) {
            fail(c, rc);
            break;
        }
        switch (ev.type) {
        case WS_SESSION_MESSAGE:
            if (c->state != WS_CONN_OPEN)
                break; /* RFC 6455 §1.4: data after our close frame is discarded */
            count_message(c);
            if (env->ops->message)
                env->ops->message(env->app, c, ev.data, ev.len, ev.opcode == WS_OP_BINARY);
            break;
        case WS_SESSION_PING:
            if (c->state == WS_CONN_OPEN) /* RFC 6455 §5.5.2: pong with the same payload */
                ws_conn_queue_frame(c, WS_OP_PONG, true, 0, ev.data, ev.len);
            ws_conn_want_flush(c);
            break;
        case WS_SESSION_PONG:
            c->clock.ping_sent = 0;
            break;
        case WS_SESSION_CLOSE:
            on_peer_close(c, &ev);
            break;
        }
        if (c->state == WS_CONN_CLOSED)
            break;
    }
    env->feed = outer;
}

bool ws_conn_next_message(struct ws_conn *c, struct ws_message *m)
{
    struct ws_feed *f = c->env->feed;
    if (!f || f->c != c || f->held || !f->len || c->state != WS_CONN_OPEN)
        return false;
    struct ws_session_event ev;
    int rc = next_event(f, &ev);
    if (rc != 0 || ev.type != WS_SESSION_MESSAGE) {
        f->held = true;
        f->rc = rc;
        if (rc == 0)
            f->ev = ev; /* set only with an event */
        return false;
    }
    count_message(c);
    m->data = ev.data;
    m->len = ev.len;
    m->binary = ev.opcode == WS_OP_BINARY;
    return true;
}

/* the hot path (on_bytes) calls process_frames, which the compiler inlines there */
void ws_conn_process_frames(struct ws_conn *c, uint8_t *data, size_t len)
{
    process_frames(c, data, len);
}

/* Runs the transport's handshake (TLS); true once it is done. */
static bool secure(struct ws_conn *c)
{
    int rc = ws_wire_secure(&c->wire, c->env->loop);
    if (rc == 0 || rc == WS_E_AGAIN)
        return rc == 0;
    ws_connlog_event(c, WS_LOG_INFO, "tls_failed", 0, ws_strerror(rc));
    ws_conn_abort(c, 1006, "TLS handshake failed");
    return false;
}

/* Handles one chunk of bytes from the peer. */
static void on_bytes(struct ws_conn *c, uint8_t *data, size_t n)
{
    struct ws_env *env = c->env;
    env->stats->bytes_in += n;
    c->bytes_in += n;
    c->clock.last_read = ws_clock_now(env->loop);
    c->clock.ping_sent = 0; /* any bytes prove the peer alive */
    switch (c->state) {
    case WS_CONN_CONNECTING:
        if (c->deciding)
            ws_conn_while_deciding(c, data, n);
        else
            ws_conn_read_request(c, data, n);
        break;
    case WS_CONN_OPEN:
    case WS_CONN_CLOSING:
        /* after an HTTP answer, or a protocol error we closed for: discard until EOF */
        if (c->opened && !c->session.err)
            process_frames(c, data, n);
        break;
    case WS_CONN_CLOSED:
        break;
    }
}

static void on_read(struct ws_conn *c)
{
    struct ws_env *env = c->env;
    if (!secure(c))
        return;
    /* TLS may hold decrypted bytes that the socket will not signal again: drain them */
    do {
        ssize_t n = ws_wire_read(&c->wire, env->loop, env->rbuf,
                                 c->state == WS_CONN_CONNECTING ? WS_CONN_REQUEST_READ_BYTES
                                                                : WS_ENV_READ_BYTES);
        if (n == WS_E_AGAIN)
            break;
        if (n <= 0) {
            ws_conn_abort(c, 1006,
                          n == 0 && c->state == WS_CONN_OPEN ? "connection dropped" : NULL);
            return;
        }
        on_bytes(c, env->rbuf, (size_t)n);
        if (c->state == WS_CONN_CLOSED)
            return;
    } while (ws_wire_pending(&c->wire) && !c->wire.reading_held);
    /* Stop reading from a peer whose replies pile up, until they drain (TCP pushes back). */
    if (c->wire.out.bytes > (size_t)ws_conn_cfg(c)->max_buffered / 2 && c->state == WS_CONN_OPEN)
        c->wire.reading_paused = true;
    /* write now: the queue's chunk goes back to the pool for the next connection's replies
     * (waiting for the loop's flush pass would hold one chunk per connection read meanwhile) */
    ws_conn_flush(c);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct ws_conn *c = w->data;
    if (revents & EV_READ)
        on_read(c);
    if ((revents & EV_WRITE) && c->state != WS_CONN_CLOSED) {
        if (!c->wire.secured)
            on_read(c); /* the TLS handshake wanted to write */
        else
            ws_conn_flush(c);
    }
}

void ws_conn_hold_reading(struct ws_conn *c, bool held)
{
    if (c->wire.reading_held == held || c->state == WS_CONN_CLOSED)
        return;
    c->wire.reading_held = held;
    ws_wire_watch(&c->wire, c->env->loop, c->wire.out.bytes > 0);
    /* TLS may hold decrypted bytes the socket will not signal again */
    if (!held && c->wire.secured && ws_wire_pending(&c->wire))
        ev_feed_event(c->env->loop, &c->wire.io, EV_READ);
}

void ws_conn_unhold(struct ws_conn *c)
{
    if (!c->held)
        return;
    c->held = false;
    c->next_dead = c->env->dead_head;
    c->env->dead_head = c;
}

/* ---- Timeouts: the table in heartbeat.c, carried out here ---- */

static const enum ws_heartbeat_phase phases[] = {
    [WS_CONN_CONNECTING] = WS_HEARTBEAT_HANDSHAKE,
    [WS_CONN_OPEN] = WS_HEARTBEAT_OPEN,
    [WS_CONN_CLOSING] = WS_HEARTBEAT_CLOSING,
};

void ws_conn_rearm(struct ws_conn *c)
{
    struct ws_deadlines *ds = &c->env->deadlines;
    ev_tstamp at = c->state == WS_CONN_CLOSED
                       ? 0
                       : ws_heartbeat_next(phases[c->state], &c->clock, ws_conn_cfg(c));
    if (at)
        ws_deadline_set(ds, &c->deadline, at);
    else
        ws_deadline_clear(ds, &c->deadline);
}

void ws_conn_deadline_due(struct ws_deadlines *ds, struct ws_deadline *d)
{
    struct ws_conn *c = (struct ws_conn *)((char *)d - offsetof(struct ws_conn, deadline));
    ev_tstamp now = ws_clock_now(ds->loop);
    enum ws_conn_state state = c->state;
    const struct ws_heartbeat_rule *r;
    while (c->state == state &&
           (r = ws_heartbeat_due(phases[state], &c->clock, ws_conn_cfg(c), now)) != NULL) {
        if (r->event)
            ws_connlog_event(c, WS_LOG_INFO, r->event, r->action == WS_HEARTBEAT_DROP ? 0 : r->code,
                             NULL);
        if (r->action == WS_HEARTBEAT_DROP) {
            ws_conn_abort(c, r->code, r->reason);
        } else if (r->action == WS_HEARTBEAT_CLOSE) {
            ws_conn_start_close(c, r->code, r->reason, strlen(r->reason));
        } else {
            ws_conn_queue_frame(c, WS_OP_PING, true, 0, NULL, 0);
            c->clock.ping_sent = now;
            ws_conn_want_flush(c);
        }
    }
    ws_conn_rearm(c);
}

void ws_conn_apply_config(struct ws_conn *c)
{
    c->session.max_message_bytes = (size_t)ws_conn_cfg(c)->max_message_size;
    if (c->state != WS_CONN_CLOSED)
        ws_conn_rearm(c);
}

void ws_conn_destroy(struct ws_conn *c)
{
    struct ws_env *env = c->env;
    assert(c->state == WS_CONN_CLOSED);
    int code = c->close_code ? c->close_code : 1006;
    if (c->opened) {
        ws_connlog_close(c, code);
        ws_stats_count_close(env->stats, code);
        if (env->ops->close) {
            const char *r = c->close_reason ? c->close_reason : "";
            env->ops->close(env->app, c, code, (const uint8_t *)r, strlen(r));
        }
        env->nupgraded--;
    }
    /* SPEC §7: close runs with topics attached; unsubscribe after, then free */
    ws_topics_leave_all(&env->topics, &c->sub);
    if (env->ops->release)
        env->ops->release(env->app, c);
    if (c->ip_counted)
        ws_env_ip_count(c->env, &c->peer.sa, -1);
    ws_registry_remove(&env->conns, &c->node);
    ws_session_reset(&c->session);
    ws_conn_free_http(c);
    ws_wire_free(&c->wire, &env->pool);
    if (c->session.deflate) {
        ws_deflate_reset(c->session.deflate);
        free(c->session.deflate);
    }
    free(c->protocol);
    free(c->close_reason);
    free(c);
}

void ws_conn_run_pending(struct ws_env *env)
{
    /* Flushing can kill connections and the app's close callbacks can send: repeat until both
     * lists are empty. */
    while (env->flush_head || env->dead_head) {
        while (env->flush_head) {
            struct ws_conn *c = env->flush_head;
            env->flush_head = c->next_flush;
            c->in_flush_list = false;
            ws_conn_flush(c);
        }
        while (env->dead_head) {
            struct ws_conn *c = env->dead_head;
            env->dead_head = c->next_dead;
            assert(!c->in_flush_list); /* kill_conn took it out */
            /* SPEC §4a: a handler still running for c finishes first; close comes after it */
            if (!env->stopped && (c->opened || c->deciding) && env->ops->hold &&
                env->ops->hold(env->app, c)) {
                c->held = true;
                continue;
            }
            ws_conn_destroy(c);
        }
    }
}
