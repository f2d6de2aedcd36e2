/* The client role on the loop: connect (dial.c), secure (transport.c), upgrade
 * (handshake_client.c), then the same frame decoder and session as the server's, with masking
 * on the way out and masked frames refused on the way in. One state machine per client, one
 * timer (connect deadline, then the closing handshake's). No Lua, no knowledge of who waits.
 * Here: the client's life (connect, the socket, the timer, the end, free); the server's answer
 * is read in wsclient_handshake.c, the open connection's frames in wsclient_frames.c. */
#include "ws/wsclient.h"

#include "ws/clock.h"
#include "ws/dial.h"
#include "ws/err.h"
#include "ws/log.h"

#include <errno.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READS_PER_WAKE 16

static void on_wire(struct ev_loop *loop, ev_io *w, int revents);

/* ---- the end ---- */

static void log_end(struct ws_client *c, const struct ws_client_end *e)
{
    struct ws_log_line l;
    if (!e->opened) {
        ws_log_begin(&l, WS_LOG_WARN, "wsclient_failed");
        ws_log_cstr(&l, "url", c->log_url);
        if (e->status)
            ws_log_i64(&l, "status", e->status);
        ws_log_cstr(&l, "error", e->err ? e->err : "?");
    } else {
        ws_log_begin(&l, e->err ? WS_LOG_WARN : WS_LOG_INFO, "wsclient_closed");
        ws_log_cstr(&l, "url", c->log_url);
        ws_log_i64(&l, "code", e->code);
        ws_log_str(&l, "reason", e->reason, e->reason_len);
        if (e->err)
            ws_log_cstr(&l, "error", e->err);
    }
    ws_log_end(&l);
}

static void stop_io(struct ws_client *c)
{
    if (c->dial) {
        ws_dial_cancel(c->dial);
        c->dial = NULL;
    }
    ws_timer_stop(c->loop, &c->timer);
    if (c->wired && c->wire.io.fd >= 0)
        ws_wire_close(&c->wire, c->loop, &c->pool);
}

void ws_client_count_result(struct ws_client *c, enum ws_stats_wsclient_result r)
{
    if (c->stats)
        c->stats->wsclient_connects[r]++;
}

/* Ends the client: everything stops, then ops->end runs last (it may free c). */
void ws_client_finish(struct ws_client *c, struct ws_client_end *e)
{
    if (c->state == WS_CLIENT_ENDED)
        return;
    bool was_open = c->state == WS_CLIENT_OPEN || c->state == WS_CLIENT_CLOSING;
    c->state = WS_CLIENT_ENDED;
    stop_io(c);
    e->opened = was_open;
    if (was_open && c->stats)
        c->stats->wsclient_open--;
    if (!was_open)
        ws_client_count_result(c, e->status      ? WS_STATS_WSCLIENT_REFUSED
                                  : e->timed_out ? WS_STATS_WSCLIENT_TIMEOUT
                                                 : WS_STATS_WSCLIENT_ERROR);
    log_end(c, e);
    c->depth++;
    c->ops->end(c->ud, c, e);
    c->depth--;
    if (c->free_pending && c->depth == 0)
        ws_client_free(c);
}

/* A failure before the connection opened. */
void ws_client_fail(struct ws_client *c, const char *err, bool timed_out)
{
    struct ws_client_end e = {.err = err, .timed_out = timed_out};
    ws_client_finish(c, &e);
}

/* The end of an open connection with the code and reason recorded so far. */
static void end_open(struct ws_client *c, bool timed_out)
{
    struct ws_client_end e = {
        .code = c->end_code,
        .reason = c->end_reason,
        .reason_len = c->end_reason_len,
        .err = c->end_err,
        .timed_out = timed_out,
    };
    ws_client_finish(c, &e);
}

/* ---- the socket ---- */

/* The connection ended from the server's side (end of stream or an error). */
static void on_eof(struct ws_client *c, const char *err)
{
    switch (c->state) {
    case WS_CLIENT_BODY:
        ws_client_refused(c, NULL);
        return;
    case WS_CLIENT_OPEN:
        /* RFC 6455 §7.1.5: closed without a close frame is 1006 */
        ws_client_set_end(c, 1006, NULL, 0,
                          err ? err : "the server closed the connection without a close frame");
        end_open(c, false);
        return;
    case WS_CLIENT_CLOSING:
        if (!c->close_received && !c->end_err) {
            ws_client_set_end(
                c, 1006, NULL, 0,
                err ? err : "the server closed the connection without answering the close frame");
        }
        end_open(c, false);
        return;
    default:
        ws_client_fail(c, err ? err : "the server closed the connection during the handshake",
                       false);
        return;
    }
}

static void do_read(struct ws_client *c)
{
    for (int i = 0; i < READS_PER_WAKE; i++) {
        if (c->wire.reading_held)
            return;
        ssize_t n = ws_wire_read(&c->wire, c->loop, c->rbuf, sizeof c->rbuf);
        if (n == WS_E_AGAIN)
            return;
        if (n <= 0) {
            on_eof(c, n == 0 ? NULL : "the connection failed while reading");
            return;
        }
        if (c->stats)
            c->stats->bytes_in += (uint64_t)n;
        bool alive = c->state == WS_CLIENT_OPEN || c->state == WS_CLIENT_CLOSING
                         ? ws_client_feed(c, c->rbuf, (size_t)n)
                         : ws_client_handshake_bytes(c, c->rbuf, (size_t)n);
        if (!alive || c->state == WS_CLIENT_ENDED)
            return;
    }
    /* a busy server does not hold the loop: come back on the next iteration */
    ev_feed_event(c->loop, &c->wire.io, EV_READ);
}

static void on_wire(struct ev_loop *loop, ev_io *w, int revents)
{
    struct ws_client *c = w->data;
    if (c->state == WS_CLIENT_SECURING) {
        int rc = ws_wire_secure(&c->wire, loop);
        if (rc == WS_E_AGAIN)
            return;
        if (rc < 0) {
            const char *v = ws_tls_verify_error(c->wire.transport_state);
            char msg[400];
            snprintf(msg, sizeof msg, "TLS handshake with %s:%d failed%s%s", c->url.host,
                     c->url.port, v ? ": certificate verification: " : "", v ? v : "");
            ws_client_fail(c, msg, false);
            return;
        }
        c->state = WS_CLIENT_HANDSHAKE;
        uint64_t out = 0;
        ws_wire_write(&c->wire, &c->pool, (const uint8_t *)c->request, c->request_len,
                      (const uint8_t *)c->request, 0, &out);
        ws_wire_watch(&c->wire, loop, c->wire.out.bytes > 0);
        return;
    }
    if (revents & EV_WRITE) {
        uint64_t out = 0;
        int rc = ws_wire_flush(&c->wire, loop, &c->pool, &out);
        if (c->stats)
            c->stats->bytes_out += out;
        if (rc < 0 && rc != WS_E_AGAIN) {
            on_eof(c, "the connection failed while writing");
            return;
        }
        if (rc == 0)
            ws_wire_watch(&c->wire, loop, false);
    }
    if ((revents & EV_READ) || ws_wire_pending(&c->wire))
        do_read(c);
}

/* The URL's host without the brackets of an IPv6 address. */
static void bare_host(const struct ws_url *u, char out[256])
{
    size_t n = strlen(u->host);
    if (u->host[0] == '[')
        snprintf(out, 256, "%.*s", (int)(n - 2), u->host + 1);
    else
        snprintf(out, 256, "%s", u->host);
}

static void on_dialled(void *ud, int fd, const char *err)
{
    struct ws_client *c = ud;
    c->dial = NULL;
    if (fd < 0) {
        ws_client_fail(c, err, false);
        return;
    }
    void *ts = NULL;
    const struct ws_transport_ops *tops = &ws_transport_plain;
    if (c->url.tls) {
        char host[256], why[256];
        bare_host(&c->url, host); /* the certificate names the address without brackets */
        ts = ws_tls_client_new(fd, host, c->ca_file, c->insecure, why, sizeof why);
        if (!ts) {
            close(fd);
            ws_client_fail(c, why, false);
            return;
        }
        tops = &ws_transport_tls;
    }
    ws_wire_init(&c->wire, c->loop, fd, tops, ts, on_wire, c);
    c->wired = true;
    c->state = WS_CLIENT_SECURING;
    on_wire(c->loop, &c->wire.io, EV_WRITE);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_client *c = w->data;
    if (c->state == WS_CLIENT_CLOSING) {
        if (!c->close_received && !c->end_err)
            ws_client_set_end(c, 1006, NULL, 0,
                              "the server did not answer the close frame in time");
        end_open(c, true);
        return;
    }
    if (c->state == WS_CLIENT_BODY) {
        ws_client_refused(c, NULL);
        return;
    }
    ws_client_fail(c, "timeout", true);
}

struct ws_client *ws_client_connect(struct ev_loop *loop, const struct ws_client_opts *o,
                                    const struct ws_client_ops *ops, void *ud, char *err,
                                    size_t errlen)
{
    struct ws_url url;
    const char *why = NULL;
    if (ws_url_parse(o->url, &url, &why) < 0) {
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    if (o->nprotocols > 16) {
        snprintf(err, errlen, "at most 16 subprotocols");
        return NULL;
    }
    uint8_t nonce[16];
    if (RAND_bytes(nonce, sizeof nonce) != 1) {
        snprintf(err, errlen, "the random generator failed");
        return NULL;
    }
    struct ws_client *c = ws_xcalloc(1, sizeof(*c));
    c->loop = loop;
    c->ops = ops;
    c->ud = ud;
    c->url = url;
    ws_handshake_client_key(nonce, c->key);
    struct ws_handshake_client_request r = {
        .host = url.host,
        .port = url.port,
        .tls = url.tls,
        .target = url.target,
        .key = c->key,
        .protocols = o->protocols,
        .nprotocols = o->nprotocols,
        .deflate = o->compression,
        .headers = o->headers,
        .nheaders = o->nheaders,
    };
    size_t cap = 1024 + strlen(url.target) + strlen(url.host);
    for (size_t i = 0; i < o->nprotocols; i++)
        cap += strlen(o->protocols[i]) + 2;
    for (size_t i = 0; i < o->nheaders; i++)
        cap += strlen(o->headers[i]) + 2;
    c->request = ws_xmalloc(cap);
    c->request_len = ws_handshake_client_request(c->request, cap, &r);
    if (c->request_len == 0) {
        snprintf(err, errlen,
                 "a subprotocol is not a token, or the URL or a header holds a "
                 "character that cannot be sent");
        free(c->request);
        free(c);
        return NULL;
    }
    for (size_t i = 0; i < o->nprotocols; i++)
        c->protocols[i] = ws_xstrndup(o->protocols[i], strlen(o->protocols[i]));
    c->nprotocols = o->nprotocols;
    c->ca_file = o->ca_file ? ws_xstrndup(o->ca_file, strlen(o->ca_file)) : NULL;
    c->insecure = o->insecure;
    c->compression = o->compression;
    c->timeout = o->timeout;
    c->close_timeout = o->close_timeout > 0 ? o->close_timeout : 5;
    c->max_message_bytes = o->max_message_bytes;
    c->max_buffered_bytes = o->max_buffered_bytes;
    c->stats = o->stats;
    snprintf(c->log_url, sizeof c->log_url, "%s://%s:%d%.*s", url.tls ? "wss" : "ws", url.host,
             url.port, (int)strcspn(url.target, "?"), url.target);
    ws_chunk_pool_init(&c->pool, 2);
    ws_buf_init(&c->head);
    ws_buf_init(&c->tx);
    ws_buf_init(&c->zbuf);
    ev_init(&c->timer, on_timer);
    c->timer.data = c;
    char host[256];
    bare_host(&url, host); /* the lookup wants the address without its brackets */
    c->state = WS_CLIENT_CONNECTING;
    if (o->net) { /* no lookup, TCP or TLS: the transport it gives is ready */
        const struct ws_transport_ops *tops = NULL;
        void *ts = NULL;
        int fd = o->net->open(o->net->ud, o->url, &tops, &ts, err, errlen);
        if (fd < 0) {
            c->state = WS_CLIENT_ENDED;
            ws_client_free(c);
            return NULL;
        }
        ws_wire_init(&c->wire, loop, fd, tops, ts, on_wire, c);
        c->wired = true;
        o->net->attach(o->net->ud, ts, loop, &c->wire.io);
        c->state = WS_CLIENT_SECURING;
        ev_feed_event(loop, &c->wire.io, EV_WRITE); /* from the loop, never from in here */
        ws_timer_start(loop, &c->timer, o->timeout, 0);
        return c;
    }
    c->dial = ws_dial_start(loop, host, url.port, on_dialled, c);
    if (!c->dial) {
        snprintf(err, errlen, "cannot start the name lookup: %s", strerror(errno));
        c->state = WS_CLIENT_ENDED;
        ws_client_free(c);
        return NULL;
    }
    ws_timer_start(loop, &c->timer, o->timeout, 0);
    return c;
}

void ws_client_hold(struct ws_client *c, bool held)
{
    if (!c->wired || c->wire.reading_held == held)
        return;
    c->wire.reading_held = held;
    ws_wire_watch(&c->wire, c->loop, c->wire.out.bytes > 0);
    /* bytes a TLS record left behind need no socket event */
    if (!held && ws_wire_pending(&c->wire))
        ev_feed_event(c->loop, &c->wire.io, EV_READ);
}

void ws_client_set_stats(struct ws_client *c, struct ws_stats *stats)
{
    c->stats = stats;
}

void ws_client_free(struct ws_client *c)
{
    if (!c)
        return;
    if (c->depth > 0) {
        c->free_pending = true;
        return;
    }
    if (c->state != WS_CLIENT_ENDED) {
        bool was_open = c->state == WS_CLIENT_OPEN || c->state == WS_CLIENT_CLOSING;
        if (was_open && c->stats)
            c->stats->wsclient_open--;
        c->state = WS_CLIENT_ENDED;
        stop_io(c);
    }
    if (c->wired)
        ws_wire_free(&c->wire, &c->pool);
    if (c->session_ready)
        ws_session_reset(&c->session);
    if (c->deflate_on)
        ws_deflate_reset(&c->deflate);
    ws_buf_reset(&c->head);
    ws_buf_reset(&c->tx);
    ws_buf_reset(&c->zbuf);
    ws_chunk_pool_free(&c->pool);
    for (size_t i = 0; i < c->nprotocols; i++)
        free(c->protocols[i]);
    free(c->ca_file);
    free(c->request);
    free(c);
}
