/* The client role on the loop: connect (dial.c), secure (transport.c), upgrade
 * (handshake_client.c), then the same frame decoder and session as the server's, with masking
 * on the way out and masked frames refused on the way in. One state machine per client, one
 * timer (connect deadline, then the closing handshake's). No Lua, no knowledge of who waits. */
#include "ws/wsclient.h"

#include "ws/clock.h"
#include "ws/deflate.h"
#include "ws/err.h"
#include "ws/handshake_client.h"
#include "ws/http.h"
#include "ws/log.h"
#include "ws/dial.h"
#include "ws/session.h"
#include "ws/wire.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BYTES 16384
#define READS_PER_WAKE 16
#define MAX_HEAD_BYTES 16384
#define MAX_BODY_BYTES 65536 /* of a refusal: what the caller gets back */

enum state {
    ST_CONNECTING,
    ST_SECURING,
    ST_HANDSHAKE,
    ST_BODY, /* the server refused: reading its answer's body */
    ST_OPEN,
    ST_CLOSING, /* a close frame went out or came in: waiting for the server to close TCP */
    ST_ENDED,
};

struct ws_client {
    struct ev_loop *loop;
    enum state state;
    const struct ws_client_ops *ops;
    void *ud;
    struct ws_url url;
    char log_url[256]; /* scheme, host and path, never the query */
    char *protocols[16];
    size_t nprotocols;
    char *request; /* the upgrade request, sent once connected */
    size_t request_len;
    char key[WS_HANDSHAKE_KEY_LEN + 1];
    char *ca_file;
    bool insecure, compression;
    double timeout, close_timeout;
    size_t max_message_bytes, max_buffered_bytes;
    struct ws_stats *stats;
    struct ws_dial *dial; /* while connecting */
    struct ws_wire wire;
    bool wired;
    struct ws_chunk_pool pool;
    ev_timer timer;
    struct ws_buf head; /* the answer's head (then the refusal's body after it) */
    size_t scanned;
    struct ws_http_request resp;
    struct ws_http_framing framing;
    struct ws_http_chunked chunked;
    size_t body_at; /* where the body starts in head */
    char protocol[128];
    struct ws_session session;
    bool session_ready;
    struct ws_deflate deflate;
    bool deflate_on;
    struct ws_buf tx, zbuf;
    bool close_sent, close_received;
    int end_code; /* the code ops->end reports */
    char end_reason[WS_FRAME_MAX_CONTROL_PAYLOAD];
    size_t end_reason_len;
    const char *end_err;
    int depth;         /* callbacks running */
    bool free_pending; /* ws_client_free from inside a callback */
    uint8_t rbuf[READ_BYTES];
};

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

static void count_result(struct ws_client *c, enum ws_stats_wsclient_result r)
{
    if (c->stats)
        c->stats->wsclient_connects[r]++;
}

/* Ends the client: everything stops, then ops->end runs last (it may free c). */
static void finish(struct ws_client *c, struct ws_client_end *e)
{
    if (c->state == ST_ENDED)
        return;
    bool was_open = c->state == ST_OPEN || c->state == ST_CLOSING;
    c->state = ST_ENDED;
    stop_io(c);
    e->opened = was_open;
    if (was_open && c->stats)
        c->stats->wsclient_open--;
    if (!was_open)
        count_result(c, e->status      ? WS_STATS_WSCLIENT_REFUSED
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
static void fail(struct ws_client *c, const char *err, bool timed_out)
{
    struct ws_client_end e = {.err = err, .timed_out = timed_out};
    finish(c, &e);
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
    finish(c, &e);
}

/* ---- writing ---- */

/* Queues one frame, masked with a fresh key from the CSPRNG (RFC 6455 §5.3: unpredictable,
 * one per frame). */
static void write_frame(struct ws_client *c, uint8_t opcode, uint8_t rsv, const void *data,
                        size_t len)
{
    uint8_t mask[4], hdr[WS_FRAME_MAX_HEADER];
    if (RAND_bytes(mask, sizeof mask) != 1) {
        fprintf(stderr, "wsserver: the random generator failed\n");
        abort();
    }
    size_t hlen = ws_frame_encode_header(hdr, true, rsv, opcode, len, mask);
    c->tx.len = 0;
    ws_buf_reserve(&c->tx, len);
    if (len)
        memcpy(c->tx.data, data, len);
    ws_frame_mask(c->tx.data, len, mask, 0);
    uint64_t out = 0;
    /* an empty payload still needs a real pointer: the TLS transport copies from it */
    ws_wire_write(&c->wire, &c->pool, hdr, hlen, len ? c->tx.data : hdr, len, &out);
    if (c->tx.cap > 65536)
        ws_buf_reset(&c->tx);
    ws_wire_watch(&c->wire, c->loop, c->wire.out.bytes > 0);
}

static void send_close(struct ws_client *c, int code, const char *reason, size_t len)
{
    uint8_t payload[WS_FRAME_MAX_CONTROL_PAYLOAD];
    size_t n = ws_close_payload(payload, code, reason, len);
    write_frame(c, WS_OP_CLOSE, 0, payload, n);
    c->close_sent = true;
    ws_session_close_sent(&c->session);
}

static void set_end(struct ws_client *c, int code, const char *reason, size_t len, const char *err)
{
    c->end_code = code;
    if (len > sizeof c->end_reason)
        len = sizeof c->end_reason;
    if (len)
        memcpy(c->end_reason, reason, len);
    c->end_reason_len = len;
    c->end_err = err;
}

/* Closing: wait for the server's close frame and its TCP close (RFC 6455 §7.1.1: the server
 * closes first), at most close_timeout. */
static void start_closing(struct ws_client *c)
{
    c->state = ST_CLOSING;
    ws_timer_start(c->loop, &c->timer, c->close_timeout, 0);
}

int ws_client_send(struct ws_client *c, const void *data, size_t len, bool binary)
{
    if (c->state != ST_OPEN)
        return WS_E_CLOSED;
    if (c->wire.out.bytes > c->max_buffered_bytes)
        return WS_E_LIMIT;
    uint8_t op = binary ? WS_OP_BINARY : WS_OP_TEXT;
    if (c->deflate_on && ws_deflate_should_compress(&c->deflate, len)) {
        c->zbuf.len = 0;
        ws_deflate_compress(&c->deflate, data, len, &c->zbuf);
        /* RFC 7692 §6: RSV1 marks the message compressed */
        write_frame(c, op, WS_FRAME_RSV1, c->zbuf.data, c->zbuf.len);
        if (c->zbuf.cap > 65536)
            ws_buf_reset(&c->zbuf);
    } else {
        write_frame(c, op, 0, data, len);
    }
    if (c->stats)
        c->stats->wsclient_messages_out++;
    return 0;
}

int ws_client_ping(struct ws_client *c, const void *data, size_t len)
{
    if (c->state != ST_OPEN)
        return WS_E_CLOSED;
    if (len > WS_FRAME_MAX_CONTROL_PAYLOAD)
        return WS_E_INVAL;
    write_frame(c, WS_OP_PING, 0, data, len);
    return 0;
}

int ws_client_close(struct ws_client *c, int code, const char *reason, size_t len)
{
    if (c->state != ST_OPEN)
        return WS_E_CLOSED;
    send_close(c, code, reason, len);
    /* what ends reports unless the server's answer says otherwise */
    set_end(c, code ? code : 1005, reason, len, NULL);
    start_closing(c);
    return 0;
}

bool ws_client_is_open(const struct ws_client *c)
{
    return c->state == ST_OPEN;
}

const char *ws_client_protocol(const struct ws_client *c)
{
    return c->protocol;
}

size_t ws_client_buffered(const struct ws_client *c)
{
    return c->wired ? c->wire.out.bytes : 0;
}

/* ---- the open connection ---- */

/* A violation by the server: close with its code (RFC 6455 §7.1.7) and wait for the server. */
static void fail_open(struct ws_client *c, int err)
{
    int code = ws_err_close_code(err);
    const char *why = ws_strerror(err);
    if (!c->close_sent)
        send_close(c, code, why, strlen(why));
    set_end(c, code, why, strlen(why), why);
    start_closing(c);
}

/* Feeds bytes read to the session and acts on its events. Returns false once c ended or is
 * being freed (the caller stops at once). */
static bool feed(struct ws_client *c, uint8_t *p, size_t n)
{
    size_t off = 0;
    for (;;) {
        if (c->session.err)
            return true; /* after a violation bytes are read and dropped until the end */
        struct ws_session_event ev;
        size_t used = 0;
        int rc = ws_session_feed(&c->session, p + off, n - off, &used, &ev);
        off += used;
        if (rc == WS_E_AGAIN)
            return true;
        if (rc < 0) {
            fail_open(c, rc);
            return true;
        }
        switch (ev.type) {
        case WS_SESSION_MESSAGE:
            if (c->stats)
                c->stats->wsclient_messages_in++;
            if (c->state != ST_OPEN)
                break; /* we closed already: the app asked for no more */
            c->depth++;
            c->ops->message(c->ud, c, ev.data, ev.len, ev.opcode == WS_OP_BINARY);
            c->depth--;
            if (c->free_pending || c->state == ST_ENDED) {
                if (c->free_pending && c->depth == 0)
                    ws_client_free(c);
                return false;
            }
            break;
        case WS_SESSION_PING:
            /* RFC 6455 §5.5.2: answer with the same payload, unless we are closing */
            if (!c->close_sent)
                write_frame(c, WS_OP_PONG, 0, ev.data, ev.len);
            break;
        case WS_SESSION_PONG:
            break;
        case WS_SESSION_CLOSE:
            c->close_received = true;
            if (!c->close_sent) {
                /* RFC 6455 §5.5.1: echo the code; 1005 stands for none and is never sent */
                int code = ev.code == 1005 ? 0 : ev.code;
                send_close(c, code, NULL, 0);
                set_end(c, ev.code, (const char *)ev.data, ev.len, NULL);
            } else if (!c->end_err) {
                set_end(c, ev.code, (const char *)ev.data, ev.len, NULL);
            }
            start_closing(c);
            break;
        }
    }
}

/* ---- the handshake ---- */

static void opened(struct ws_client *c, const struct ws_handshake_client_result *hr)
{
    snprintf(c->protocol, sizeof c->protocol, "%.*s", (int)hr->protocol.n,
             hr->protocol.n ? hr->protocol.p : "");
    ws_session_init(&c->session, c->max_message_bytes);
    ws_session_set_client(&c->session);
    c->session_ready = true;
    if (hr->deflate) {
        ws_deflate_init(&c->deflate, &hr->params, NULL);
        ws_session_set_deflate(&c->session, &c->deflate);
        c->deflate_on = true;
    }
    ws_timer_stop(c->loop, &c->timer);
    c->state = ST_OPEN;
    count_result(c, WS_STATS_WSCLIENT_OK);
    if (c->stats)
        c->stats->wsclient_open++;
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_INFO, "wsclient_open");
    ws_log_cstr(&l, "url", c->log_url);
    if (c->protocol[0])
        ws_log_cstr(&l, "protocol", c->protocol);
    if (c->deflate_on)
        ws_log_cstr(&l, "compression", "permessage-deflate");
    ws_log_end(&l);
}

/* The refusal's body is complete (or the connection ended): report status and body. */
static void refused(struct ws_client *c, const char *err)
{
    const uint8_t *body = c->head.data + c->body_at;
    size_t len = c->head.len - c->body_at;
    if (c->framing.chunked)
        len = c->chunked.out;
    else if (c->framing.length && len > c->framing.length)
        len = (size_t)c->framing.length;
    char msg[96];
    snprintf(msg, sizeof msg, "the server refused the upgrade with status %d", c->resp.status);
    struct ws_client_end e = {
        .status = c->resp.status, .body = body, .body_len = len, .err = err ? err : msg};
    finish(c, &e);
}

/* Bytes of the refusal's body arrived; true when it is complete. */
static bool body_complete(struct ws_client *c)
{
    size_t have = c->head.len - c->body_at;
    if (c->framing.chunked) {
        int rc =
            ws_http_chunked_decode(&c->chunked, c->head.data + c->body_at, have, MAX_BODY_BYTES);
        return rc != WS_E_AGAIN;
    }
    if (c->framing.length)
        return have >= c->framing.length || have >= MAX_BODY_BYTES;
    return have >= MAX_BODY_BYTES;
}

/* The answer's head is complete in c->head. Returns false when c ended. */
static bool on_head(struct ws_client *c)
{
    if (c->resp.status != 101) {
        c->body_at = c->resp.head_len;
        if (ws_http_framing(&c->resp, &c->framing) < 0)
            memset(&c->framing, 0, sizeof c->framing);
        ws_http_chunked_init(&c->chunked);
        /* RFC 9110 §6.4.1: 1xx, 204 and 304 have no body */
        bool none = c->resp.status < 200 || c->resp.status == 204 || c->resp.status == 304 ||
                    (!c->framing.chunked && c->framing.length == 0 &&
                     ws_http_header(&c->resp, "Content-Length"));
        c->state = ST_BODY;
        if (none || body_complete(c)) {
            refused(c, NULL);
            return false;
        }
        return true;
    }
    struct ws_handshake_client_result hr;
    if (ws_handshake_client_check(&c->resp, c->key, (const char *const *)c->protocols,
                                  c->nprotocols, c->compression, &hr) < 0) {
        fail(c, hr.reason, false);
        return false;
    }
    opened(c, &hr);
    c->depth++;
    c->ops->open(c->ud, c);
    c->depth--;
    if (c->free_pending || c->state == ST_ENDED) {
        if (c->free_pending && c->depth == 0)
            ws_client_free(c);
        return false;
    }
    /* frames the server sent right behind its answer */
    size_t rest = c->head.len - c->resp.head_len;
    if (rest) {
        memmove(c->rbuf, c->head.data + c->resp.head_len, rest);
        ws_buf_reset(&c->head);
        return feed(c, c->rbuf, rest);
    }
    ws_buf_reset(&c->head);
    return true;
}

/* Handshake bytes arrived. Returns false when c ended. */
static bool on_handshake_bytes(struct ws_client *c, const uint8_t *p, size_t n)
{
    ws_buf_append(&c->head, p, n);
    if (c->state == ST_BODY) {
        if (body_complete(c)) {
            refused(c, NULL);
            return false;
        }
        return true;
    }
    int rc = ws_http_parse_response((const char *)c->head.data, c->head.len, MAX_HEAD_BYTES,
                                    &c->scanned, &c->resp);
    if (rc == WS_E_AGAIN)
        return true;
    if (rc < 0) {
        fail(c,
             rc == WS_E_HTTP_TOO_LARGE ? "the server's answer head is too large"
                                       : "the server's answer is not HTTP/1.1",
             false);
        return false;
    }
    return on_head(c);
}

/* ---- the socket ---- */

/* The connection ended from the server's side (end of stream or an error). */
static void on_eof(struct ws_client *c, const char *err)
{
    switch (c->state) {
    case ST_BODY:
        refused(c, NULL);
        return;
    case ST_OPEN:
        /* RFC 6455 §7.1.5: closed without a close frame is 1006 */
        set_end(c, 1006, NULL, 0,
                err ? err : "the server closed the connection without a close frame");
        end_open(c, false);
        return;
    case ST_CLOSING:
        if (!c->close_received && !c->end_err) {
            set_end(c, 1006, NULL, 0,
                    err ? err
                        : "the server closed the connection without answering the close frame");
        }
        end_open(c, false);
        return;
    default:
        fail(c, err ? err : "the server closed the connection during the handshake", false);
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
        bool alive = c->state == ST_OPEN || c->state == ST_CLOSING
                         ? feed(c, c->rbuf, (size_t)n)
                         : on_handshake_bytes(c, c->rbuf, (size_t)n);
        if (!alive || c->state == ST_ENDED)
            return;
    }
    /* a busy server does not hold the loop: come back on the next iteration */
    ev_feed_event(c->loop, &c->wire.io, EV_READ);
}

static void on_wire(struct ev_loop *loop, ev_io *w, int revents)
{
    struct ws_client *c = w->data;
    if (c->state == ST_SECURING) {
        int rc = ws_wire_secure(&c->wire, loop);
        if (rc == WS_E_AGAIN)
            return;
        if (rc < 0) {
            const char *v = ws_tls_verify_error(c->wire.transport_state);
            char msg[400];
            snprintf(msg, sizeof msg, "TLS handshake with %s:%d failed%s%s", c->url.host,
                     c->url.port, v ? ": certificate verification: " : "", v ? v : "");
            fail(c, msg, false);
            return;
        }
        c->state = ST_HANDSHAKE;
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
        fail(c, err, false);
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
            fail(c, why, false);
            return;
        }
        tops = &ws_transport_tls;
    }
    ws_wire_init(&c->wire, c->loop, fd, tops, ts, on_wire, c);
    c->wired = true;
    c->state = ST_SECURING;
    on_wire(c->loop, &c->wire.io, EV_WRITE);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_client *c = w->data;
    if (c->state == ST_CLOSING) {
        if (!c->close_received && !c->end_err)
            set_end(c, 1006, NULL, 0, "the server did not answer the close frame in time");
        end_open(c, true);
        return;
    }
    if (c->state == ST_BODY) {
        refused(c, NULL);
        return;
    }
    fail(c, "timeout", true);
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
    c->state = ST_CONNECTING;
    if (o->net) { /* no lookup, TCP or TLS: the transport it gives is ready */
        const struct ws_transport_ops *tops = NULL;
        void *ts = NULL;
        int fd = o->net->open(o->net->ud, o->url, &tops, &ts, err, errlen);
        if (fd < 0) {
            c->state = ST_ENDED;
            ws_client_free(c);
            return NULL;
        }
        ws_wire_init(&c->wire, loop, fd, tops, ts, on_wire, c);
        c->wired = true;
        o->net->attach(o->net->ud, ts, loop, &c->wire.io);
        c->state = ST_SECURING;
        ev_feed_event(loop, &c->wire.io, EV_WRITE); /* from the loop, never from in here */
        ws_timer_start(loop, &c->timer, o->timeout, 0);
        return c;
    }
    c->dial = ws_dial_start(loop, host, url.port, on_dialled, c);
    if (!c->dial) {
        snprintf(err, errlen, "cannot start the name lookup: %s", strerror(errno));
        c->state = ST_ENDED;
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
    if (c->state != ST_ENDED) {
        bool was_open = c->state == ST_OPEN || c->state == ST_CLOSING;
        if (was_open && c->stats)
            c->stats->wsclient_open--;
        c->state = ST_ENDED;
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
