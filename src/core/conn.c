/* Connection I/O and lifecycle on libev. Every state change goes through set_state(), which
 * refuses illegal transitions; every timeout is one row of the deadline table; reads are parsed
 * straight out of the shared read buffer and replies are queued and written once per wake-up.
 * What to answer to an HTTP request is the front's decision (front.c), not this file's. Freeing
 * waits for ws_conn_run_pending, never happens during a callback. */
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

/* Reads of a connection still sending its request are at most this long, and a request may hold
 * this much past its limits (the bytes of one read); an open connection reads the whole buffer
 * (WS_ENV_READ_BYTES), so a large frame usually arrives whole and is not assembled by a copy. */
#define REQUEST_READ_BYTES 65536

/* The path of most requests, shared instead of copied (c->path is never written through). */
static char root_path[] = "/";

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void kill_conn(struct ws_conn *c, int code, const char *reason);
static void rearm(struct ws_conn *c);

static const struct ws_config *cfg(const struct ws_conn *c)
{
    return &c->env->cfg;
}

/* Queues c for this iteration's flush pass (ws_conn_run_pending); a closed connection has
 * nothing to flush. */
static void want_flush(struct ws_conn *c)
{
    if (c->in_flush_list || c->state == WS_CONN_CLOSED)
        return;
    c->in_flush_list = true;
    c->next_flush = c->env->flush_head;
    c->env->flush_head = c;
}

static size_t low_water(const struct ws_conn *c)
{
    size_t half = (size_t)cfg(c)->max_buffered / 2;
    return half < 65536 ? half : 65536;
}

static void set_state(struct ws_conn *c, enum ws_conn_state to)
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
static bool take_ip_slot(struct ws_conn *c)
{
    c->ip_counted = true;
    return ws_env_ip_count(c->env, &c->peer.sa, 1) <= (uintptr_t)cfg(c)->max_connections_per_ip;
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
    rearm(c);
    /* per address, every socket counts from accept, handshakes in progress included: one
     * address must not be able to hold all the sockets the server accepts */
    if (env->cfg.max_connections_per_ip > 0 && c->peer.sa.sa_family != AF_UNIX &&
        !ws_front_trusted(env, &c->peer.sa)) {
        if (!take_ip_slot(c)) {
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
            kill_conn(c, 0, NULL);
        }
    }
    return c;
}

/* Closes the socket now; the app hears of it in the sweep. code is reported unless a close
 * frame already settled it. */
static void kill_conn(struct ws_conn *c, int code, const char *reason)
{
    if (c->state == WS_CONN_CLOSED)
        return;
    if (!c->close_code) {
        c->close_code = (uint16_t)code;
        if (reason && !c->close_reason)
            c->close_reason = ws_xstrndup(reason, strlen(reason));
    }
    set_state(c, WS_CONN_CLOSED);
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

void ws_conn_abort(struct ws_conn *c, int code, const char *reason)
{
    kill_conn(c, code, reason);
}

size_t ws_conn_buffered(const struct ws_conn *c)
{
    return c->wire.out.bytes;
}

static void queue_frame(struct ws_conn *c, uint8_t opcode, bool fin, uint8_t rsv, const void *data,
                        size_t len)
{
    uint8_t hdr[WS_FRAME_MAX_HEADER];
    size_t n = ws_frame_encode_header(hdr, fin, rsv, opcode, len, NULL);
    ws_outq_append2(&c->wire.out, &c->env->pool, hdr, n, data, len);
}

/* Queues our close frame and enters CLOSING: nothing is sent after it. */
static void start_close(struct ws_conn *c, int code, const char *reason, size_t len)
{
    if (c->closed_by == WS_CONN_BY_NONE)
        c->closed_by = WS_CONN_BY_SERVER;
    uint8_t payload[WS_FRAME_MAX_CONTROL_PAYLOAD];
    size_t n = ws_close_payload(payload, code, reason, len);
    queue_frame(c, WS_OP_CLOSE, true, 0, payload, n);
    ws_session_close_sent(&c->session);
    if (c->session.close_state != WS_CLOSE_DONE) {
        c->close_code = (uint16_t)(code ? code : 1005);
        free(c->close_reason);
        c->close_reason = reason && len ? ws_xstrndup(reason, len) : NULL;
    }
    set_state(c, WS_CONN_CLOSING);
    rearm(c);
    want_flush(c);
}

int ws_conn_close(struct ws_conn *c, int code, const char *reason, size_t len)
{
    if (c->state != WS_CONN_OPEN)
        return WS_E_CLOSED;
    start_close(c, code, reason, len);
    return 0;
}

/* Back-pressure (SPEC §3): a queue may not grow past max_buffered, except that one message of
 * any size may enter an empty queue; and all queues together may not grow past
 * max_buffered_total, beyond which the connections that already have a backlog are the ones
 * refused. */
static int accept_data(struct ws_conn *c, size_t len)
{
    bool own_ok = c->wire.out.bytes == 0 || c->wire.out.bytes + len <= (size_t)cfg(c)->max_buffered;
    /* an empty queue always takes one message, so slow consumers filling the total cannot
     * starve the connections that keep up: the bound is the total plus one message for each
     * connection that has none queued */
    bool total_ok =
        c->wire.out.bytes == 0 || c->env->pool.queued + len <= (size_t)cfg(c)->max_buffered_total;
    if (own_ok && total_ok)
        return 0;
    if (strcmp(cfg(c)->backpressure, "drop") == 0) {
        c->env->stats->dropped++;
        return WS_E_LIMIT;
    }
    ws_connlog_event(c, WS_LOG_WARN, "slow_consumer", 1008, NULL);
    start_close(c, 1008, "slow consumer", 13);
    return WS_E_CLOSED;
}

static int sent_result(struct ws_conn *c)
{
    want_flush(c);
    if (c->wire.out.bytes > low_water(c)) {
        c->above_low = true;
        return WS_CONN_QUEUED;
    }
    return WS_CONN_SENT;
}

int ws_conn_send(struct ws_conn *c, uint8_t opcode, const void *data, size_t len)
{
    if (c->state != WS_CONN_OPEN)
        return WS_E_CLOSED;
    bool control = ws_frame_is_control(opcode);
    if (control) {
        if (len > WS_FRAME_MAX_CONTROL_PAYLOAD)
            return WS_E_INVAL;
        queue_frame(c, opcode, true, 0, data, len);
        return sent_result(c);
    }
    /* decide on back-pressure before compressing: a compressor with context takeover must see
     * exactly the messages that are sent */
    int rc = accept_data(c, len);
    if (rc < 0)
        return rc;
    c->env->stats->messages_out++;
    c->messages_out++;
    uint8_t rsv = 0;
    struct ws_buf *z = &c->env->zbuf;
    if (c->session.deflate && ws_deflate_should_compress(c->session.deflate, len)) {
        /* RFC 7692 §7.2.1: the payload compressed, RSV1 on the first frame only */
        z->len = 0;
        ws_deflate_compress(c->session.deflate, data, len, z);
        data = z->data;
        len = z->len;
        rsv = WS_FRAME_RSV1;
    }
    size_t frag = (size_t)cfg(c)->fragment_size;
    const uint8_t *p = data;
    if (frag && len > frag) {
        /* RFC 6455 §5.4: a fragmented message; only the first frame carries the opcode */
        for (size_t off = 0; off < len; off += frag) {
            size_t n = len - off < frag ? len - off : frag;
            queue_frame(c, off ? WS_OP_CONTINUATION : opcode, off + n == len, off ? 0 : rsv,
                        p + off, n);
        }
    } else if (c->wire.out.bytes == 0 && len >= WS_OUTQ_CHUNK_BYTES) {
        uint8_t hdr[WS_FRAME_MAX_HEADER];
        size_t hlen = ws_frame_encode_header(hdr, true, rsv, opcode, len, NULL);
        uint64_t before = c->bytes_out;
        ws_wire_write(&c->wire, &c->env->pool, hdr, hlen, data, len, &c->bytes_out);
        c->env->stats->bytes_out += c->bytes_out - before;
    } else {
        queue_frame(c, opcode, true, rsv, data, len);
    }
    if (z->cap > WS_OUTQ_CHUNK_BYTES * 64)
        ws_buf_reset(z); /* do not keep a big scratch buffer after one big message */
    return sent_result(c);
}

int ws_conn_send_set(struct ws_conn *c, struct ws_frameset *set)
{
    if (c->state != WS_CONN_OPEN)
        return WS_E_CLOSED;
    size_t frag = (size_t)cfg(c)->fragment_size;
    if (frag && set->len > frag) /* fragmented: framed per connection */
        return ws_conn_send(c, set->opcode, set->data, set->len);
    if (c->session.deflate && ws_deflate_should_compress(c->session.deflate, set->len)) {
        int bits = ws_deflate_broadcast_bits(c->session.deflate);
        if (!bits) /* its own compressor with context: this connection's own encoding */
            return ws_conn_send(c, set->opcode, set->data, set->len);
        return ws_conn_send_shared(c, ws_frameset_deflated(set, bits), true);
    }
    return ws_conn_send_shared(c, ws_frameset_plain(set), true);
}

int ws_conn_send_shared(struct ws_conn *c, struct ws_shared *frame, bool is_data)
{
    if (c->state != WS_CONN_OPEN)
        return WS_E_CLOSED;
    if (is_data) {
        int rc = accept_data(c, frame->len);
        if (rc < 0)
            return rc;
        c->env->stats->messages_out++;
        c->messages_out++;
    }
    ws_outq_append_shared(&c->wire.out, &c->env->pool, frame);
    return sent_result(c);
}

int ws_conn_ping(struct ws_conn *c, const void *payload, size_t len)
{
    return ws_conn_send(c, WS_OP_PING, payload, len);
}

/* Both close frames have passed (RFC 6455 §7.1.1: once ours is out, the server closes the TCP
 * connection first): a plain socket then closes at once instead of reading until the peer's
 * FIN, which saves two system calls and a wake-up per connection. Our last frame is written with
 * MSG_MORE (ws_wire_flush_last) and the half-close sends it with the FIN in one segment before
 * the close(): a peer that sent something after its close frame (§5.5.1 forbids it) makes that
 * close() a reset, which would discard a frame still held back, but not one already sent. TLS
 * still waits: the peer's close_notify may follow. */
static bool closes_at_once(const struct ws_conn *c)
{
    return c->opened && c->session.close_state == WS_CLOSE_DONE &&
           c->wire.transport == &ws_transport_plain;
}

void ws_conn_flush(struct ws_conn *c)
{
    struct ws_env *env = c->env;
    if (c->state == WS_CONN_CLOSED)
        return;
    if (!c->wire.secured)
        return; /* the transport's handshake comes first */
    /* nothing queued and nothing to change: the loop's flush pass after on_read wrote */
    if (c->wire.out.bytes == 0 && c->state == WS_CONN_OPEN && !c->above_low &&
        !c->wire.reading_paused && !(c->wire.io.events & EV_WRITE) && ev_is_active(&c->wire.io))
        return;
    uint64_t before = c->bytes_out;
    bool last = c->state == WS_CONN_CLOSING && closes_at_once(c);
    int rc = last ? ws_wire_flush_last(&c->wire, env->loop, &env->pool, &c->bytes_out)
                  : ws_wire_flush(&c->wire, env->loop, &env->pool, &c->bytes_out);
    env->stats->bytes_out += c->bytes_out - before;
    if (rc == WS_E_AGAIN)
        return;
    if (rc < 0) {
        kill_conn(c, 1006, ws_strerror(rc));
        return;
    }
    if (c->wire.reading_paused && c->wire.out.bytes < low_water(c))
        c->wire.reading_paused = false;
    ws_wire_watch(&c->wire, c->env->loop, false);
    if (c->above_low && c->state == WS_CONN_OPEN) {
        c->above_low = false;
        if (env->ops->drain)
            env->ops->drain(env->app, c);
    }
    if (c->state == WS_CONN_CLOSING && !c->wire.wr_shut && c->wire.out.bytes == 0) {
        if (last) {
            ws_wire_shutdown(&c->wire); /* the held frame and the FIN, in one segment */
            kill_conn(c, 1006, NULL);
            return;
        }
        /* Our last byte is out: half-close, then read until the peer closes
         * (RFC 6455 §7.1.1: the server closes the TCP connection first). */
        ws_wire_shutdown(&c->wire);
    }
}

/* ---- HTTP side: the request head, then the front's decision ---- */

static void process_frames(struct ws_conn *c, uint8_t *data, size_t len);

/* The request reader is needed only while CONNECTING: an open connection holds none. */
static void free_request(struct ws_conn *c)
{
    if (c->request) {
        ws_request_reset(c->request);
        free(c->request);
        c->request = NULL;
    }
}

/* Sends the front's answer to req (NULL: unreadable), then closes: the one response a plain
 * request gets. */
static void answer(struct ws_conn *c, const struct ws_front_reply *r,
                   const struct ws_http_request *req)
{
    if (r->refused) {
        if (c->ip_counted) {
            /* a refused socket only lingers for its answer: it holds no per-address slot */
            ws_env_ip_count(c->env, &c->peer.sa, -1);
            c->ip_counted = false;
        }
        ws_stats_count_refusal(c->env->stats, r->status);
    } else {
        c->env->stats->http_requests_total++;
    }
    ws_outq_append(&c->wire.out, &c->env->pool, r->response.data, r->response.len);
    ws_connlog_access(c, r->status, r->reason[0] ? r->reason : NULL, req, r->response.len);
    free_request(c);
    set_state(c, WS_CONN_CLOSING);
    rearm(c);
    want_flush(c);
}

/* Sends the 101 and opens the connection. */
static void open_ws(struct ws_conn *c, struct ws_front_reply *r, const struct ws_http_request *req)
{
    struct ws_env *env = c->env;
    ws_outq_append(&c->wire.out, &env->pool, r->response.data, r->response.len);
    c->protocol = r->protocol;
    r->protocol = NULL;
    if (r->deflate) {
        struct ws_deflate *d = ws_xcalloc(1, sizeof(*d)); /* owned through the session */
        ws_deflate_init(d, &r->params, env->deflate_shared);
        ws_session_set_deflate(&c->session, d);
    }
    set_state(c, WS_CONN_OPEN);
    env->nupgraded++;
    c->opened = true;
    c->clock.last_read = c->clock.last_message = ws_clock_now(env->loop);
    rearm(c);
    want_flush(c);
    env->stats->upgrades_total++;
    ws_connlog_access(c, 101, NULL, req, r->response.len);
    if (env->ops->open)
        env->ops->open(env->app, c);
    /* SPEC §3: bytes after the head in the same read are the first frame bytes */
    size_t rest = c->request->in.len - req->head_len;
    if (rest && c->state != WS_CONN_CLOSED)
        process_frames(c, c->request->in.data + req->head_len, rest);
}

/* Answers a request that could not be read: the status that goes with err. req is its head
 * when that much was parsed, else NULL. */
static void refuse_request(struct ws_conn *c, int err, const struct ws_http_request *req)
{
    struct ws_front_reply r = {0};
    ws_front_error(&r, ws_err_http_status(err), ws_strerror(err), strlen(ws_strerror(err)), NULL,
                   true);
    answer(c, &r, req);
    ws_front_reply_free(&r);
}

/* Carries out the front's decision on req (r is freed). */
static void carry_out(struct ws_conn *c, struct ws_front_reply *r,
                      const struct ws_http_request *req)
{
    if (r->action == WS_FRONT_PENDING) {
        /* the request stays in c->request until the app decides */
        c->deciding =
            ws_handshake_is_upgrade(req) ? WS_CONN_DECIDING_UPGRADE : WS_CONN_DECIDING_HTTP;
    } else if (r->action == WS_FRONT_UPGRADE) {
        open_ws(c, r, req);
        free_request(c);
    } else {
        answer(c, r, req);
    }
    ws_front_reply_free(r);
}

/* The whole request is here (head, and body when it has one): the front decides. */
static void decide(struct ws_conn *c, const struct ws_http_request *req)
{
    struct ws_front_reply r = {0};
    if (c->ops_port)
        ws_front_handle_ops(c->env, req, &r);
    else
        ws_front_handle(c->env, c, req, &r);
    carry_out(c, &r, req);
}

/* Bytes that come while the app decides. An upgrade's are its first frames: kept, and past one
 * read's worth reading stops until the decision. A plain request's are not read (it closes after
 * its answer). Reading goes on otherwise, so a client that leaves is seen. */
static void while_deciding(struct ws_conn *c, const uint8_t *data, size_t n)
{
    if (c->deciding != WS_CONN_DECIDING_UPGRADE)
        return;
    ws_buf_append(&c->request->in, data, n);
    if (c->request->in.len - c->request->head_len > WS_ENV_READ_BYTES)
        ws_conn_hold_reading(c, true);
}

/* The app decided: false when the connection went away meanwhile. */
static bool decided(struct ws_conn *c, enum ws_conn_decision was)
{
    bool live = c->deciding == was && c->state == WS_CONN_CONNECTING;
    c->deciding = WS_CONN_DECIDED;
    if (live)
        ws_conn_hold_reading(c, false);
    return live;
}

void ws_conn_upgrade_decided(struct ws_conn *c, struct ws_upgrade_reply *app)
{
    struct ws_http_request req;
    if (!decided(c, WS_CONN_DECIDING_UPGRADE) || !ws_request_head(c->request, &req)) {
        free(app->body);
        free(app->headers);
        free(app->protocol);
        return;
    }
    struct ws_front_reply r;
    ws_front_upgrade_decided(c->env, &req, app, &r);
    carry_out(c, &r, &req);
}

void ws_conn_http_answered(struct ws_conn *c, struct ws_http_reply *app)
{
    struct ws_http_request req;
    if (!decided(c, WS_CONN_DECIDING_HTTP) || !ws_request_complete(c->request, &req)) {
        free(app->body);
        free(app->headers);
        free(app->content_type);
        return;
    }
    struct ws_front_reply r;
    ws_front_http_answered(&req, app, &r);
    carry_out(c, &r, &req);
}

/* Behind a trusted proxy the client is the address it forwards: the peer from now on (logs,
 * conn.peer) and the one counted against max_connections_per_ip. False when refused for it. */
static bool forwarded(struct ws_conn *c, const struct ws_http_request *req)
{
    struct sockaddr_storage client;
    if (!ws_front_client_address(c->env, &c->peer.sa, req, &client))
        return true;
    memcpy(&c->peer, &client, sizeof(c->peer));
    if (cfg(c)->max_connections_per_ip > 0 && !c->ip_counted) {
        if (!take_ip_slot(c)) {
            struct ws_front_reply r = {0};
            const char *msg = "too many connections from this address";
            ws_front_error(&r, 503, msg, strlen(msg), NULL, true);
            answer(c, &r, req);
            ws_front_reply_free(&r);
            return false;
        }
    }
    return true;
}

static void on_request_bytes(struct ws_conn *c, const uint8_t *data, size_t len)
{
    const struct ws_request_limits lim = {(size_t)cfg(c)->max_header_size,
                                          (size_t)cfg(c)->max_body_size, REQUEST_READ_BYTES};
    struct ws_http_request req;
    int rc = ws_request_feed(c->request, data, len, &lim, &req);
    if (rc == WS_E_AGAIN)
        return;
    bool head = rc == 0 || ws_request_head(c->request, &req);
    if (head && !c->path)
        c->path = req.target.n == 1 && req.target.p[0] == '/'
                      ? root_path
                      : ws_xstrndup(req.target.p, req.target.n);
    if (rc < 0)
        refuse_request(c, rc, head ? &req : NULL);
    else if (forwarded(c, &req))
        decide(c, &req);
}

/* ---- WebSocket side ---- */

static void fail(struct ws_conn *c, int err)
{
    int code = ws_err_close_code(err);
    ws_connlog_event(c, WS_LOG_DEBUG, "protocol_error", code, ws_strerror(err));
    if (c->state == WS_CONN_OPEN)
        start_close(c, code, ws_strerror(err), strlen(ws_strerror(err)));
    else
        kill_conn(c, code, ws_strerror(err));
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
        start_close(c, ev->code == 1005 ? 0 : ev->code, NULL, 0);
    else if (c->state == WS_CONN_CLOSING && closes_at_once(c) && c->wire.out.bytes == 0)
        kill_conn(c, 1006, NULL); /* the reply to our close: done */
}

static void process_frames(struct ws_conn *c, uint8_t *data, size_t len)
{
    struct ws_env *env = c->env;
    for (;;) {
        size_t used = 0;
        struct ws_session_event ev;
        int rc = ws_session_feed(&c->session, data, len, &used, &ev);
        data += used;
        len -= used;
        if (rc == WS_E_AGAIN)
            return;
        if (rc < 0) {
            fail(c, rc);
            return;
        }
        switch (ev.type) {
        case WS_SESSION_MESSAGE:
            if (c->state != WS_CONN_OPEN)
                break; /* RFC 6455 §1.4: data after our close frame is discarded */
            env->stats->messages_in++;
            c->messages_in++;
            c->clock.last_message = c->clock.last_read; /* set by this read */
            if (env->ops->message)
                env->ops->message(env->app, c, ev.data, ev.len, ev.opcode == WS_OP_BINARY);
            break;
        case WS_SESSION_PING:
            if (c->state == WS_CONN_OPEN) /* RFC 6455 §5.5.2: pong with the same payload */
                queue_frame(c, WS_OP_PONG, true, 0, ev.data, ev.len);
            want_flush(c);
            break;
        case WS_SESSION_PONG:
            c->clock.ping_sent = 0;
            break;
        case WS_SESSION_CLOSE:
            on_peer_close(c, &ev);
            break;
        }
        if (c->state == WS_CONN_CLOSED)
            return;
    }
}

/* Runs the transport's handshake (TLS); true once it is done. */
static bool secure(struct ws_conn *c)
{
    int rc = ws_wire_secure(&c->wire, c->env->loop);
    if (rc == 0 || rc == WS_E_AGAIN)
        return rc == 0;
    ws_connlog_event(c, WS_LOG_INFO, "tls_failed", 0, ws_strerror(rc));
    kill_conn(c, 1006, "TLS handshake failed");
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
            while_deciding(c, data, n);
        else
            on_request_bytes(c, data, n);
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
        ssize_t n =
            ws_wire_read(&c->wire, env->loop, env->rbuf,
                         c->state == WS_CONN_CONNECTING ? REQUEST_READ_BYTES : WS_ENV_READ_BYTES);
        if (n == WS_E_AGAIN)
            break;
        if (n <= 0) {
            kill_conn(c, 1006, n == 0 && c->state == WS_CONN_OPEN ? "connection dropped" : NULL);
            return;
        }
        on_bytes(c, env->rbuf, (size_t)n);
        if (c->state == WS_CONN_CLOSED)
            return;
    } while (ws_wire_pending(&c->wire) && !c->wire.reading_held);
    /* Stop reading from a peer whose replies pile up, until they drain (TCP pushes back). */
    if (c->wire.out.bytes > (size_t)cfg(c)->max_buffered / 2 && c->state == WS_CONN_OPEN)
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

static void rearm(struct ws_conn *c)
{
    struct ws_deadlines *ds = &c->env->deadlines;
    ev_tstamp at =
        c->state == WS_CONN_CLOSED ? 0 : ws_heartbeat_next(phases[c->state], &c->clock, cfg(c));
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
           (r = ws_heartbeat_due(phases[state], &c->clock, cfg(c), now)) != NULL) {
        if (r->event)
            ws_connlog_event(c, WS_LOG_INFO, r->event, r->action == WS_HEARTBEAT_DROP ? 0 : r->code,
                             NULL);
        if (r->action == WS_HEARTBEAT_DROP) {
            kill_conn(c, r->code, r->reason);
        } else if (r->action == WS_HEARTBEAT_CLOSE) {
            start_close(c, r->code, r->reason, strlen(r->reason));
        } else {
            queue_frame(c, WS_OP_PING, true, 0, NULL, 0);
            c->clock.ping_sent = now;
            want_flush(c);
        }
    }
    rearm(c);
}

void ws_conn_apply_config(struct ws_conn *c)
{
    c->session.max_message_bytes = (size_t)cfg(c)->max_message_size;
    if (c->state != WS_CONN_CLOSED)
        rearm(c);
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
    free_request(c);
    ws_wire_free(&c->wire, &env->pool);
    if (c->session.deflate) {
        ws_deflate_reset(c->session.deflate);
        free(c->session.deflate);
    }
    if (c->path != root_path)
        free(c->path);
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
