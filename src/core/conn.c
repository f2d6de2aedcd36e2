/* Connection I/O and lifecycle on libev. Every state change goes through set_state(), which
 * refuses illegal transitions; reads are parsed straight out of the server's shared buffer and
 * replies are queued and written once per wake-up. Freeing is left to the server's sweep. */
#include "ws/conn.h"

#include "ws/err.h"
#include "ws/frame.h"
#include "ws/handshake.h"
#include "ws/http.h"
#include "ws/log.h"
#include "ws/metrics.h"
#include "ws/server.h"
#include "ws/static.h"

#include <arpa/inet.h>
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define IOV_BATCH 64
#define RESPONSE_HEAD_MAX 1024

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void refuse(struct ws_conn *c, int status, const char *body, size_t len, const char *extra);
static void kill_conn(struct ws_conn *c, int code, const char *reason);
static void on_timer(struct ev_loop *loop, ev_timer *w, int revents);

/* A refused handshake, counted by status for /metrics. */
static void count_refusal(struct ws_stats *st, int status)
{
    st->handshake_rejections++;
    if (status >= 100 && status < 600)
        st->rejections_by_status[status]++;
}

static const struct ws_config *cfg(const struct ws_conn *c)
{
    return &c->srv->cfg;
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
        c->srv->nopen--;
    if (to == WS_CONN_OPEN)
        c->srv->nopen++;
    if (to == WS_CONN_CLOSING)
        c->closing_since = ev_now(c->srv->loop);
}

/* Watch for reading unless paused or closed, and for writing while the queue is stuck. */
static void update_events(struct ws_conn *c, bool want_write)
{
    if (c->state == WS_CONN_CLOSED)
        return;
    int events = (c->reading_paused ? 0 : EV_READ) | (want_write ? EV_WRITE : 0);
    if (events == (c->io.events & (EV_READ | EV_WRITE)) && ev_is_active(&c->io))
        return;
    ev_io_stop(c->srv->loop, &c->io);
    ev_io_set(&c->io, c->fd, events);
    if (events)
        ev_io_start(c->srv->loop, &c->io);
}

/* The earliest deadline for the current state; 0 when none. */
static ev_tstamp next_deadline(const struct ws_conn *c)
{
    const struct ws_config *o = cfg(c);
    switch (c->state) {
    case WS_CONN_CONNECTING:
        return c->started + o->handshake_timeout;
    case WS_CONN_CLOSING:
        return c->closing_since + o->close_timeout;
    case WS_CONN_OPEN: {
        ev_tstamp t = 0;
        if (c->ping_sent > 0)
            t = c->ping_sent + o->pong_timeout;
        else if (o->ping_interval > 0)
            t = c->last_read + o->ping_interval;
        if (o->idle_timeout > 0) {
            ev_tstamp idle = c->last_message + o->idle_timeout;
            if (!t || idle < t)
                t = idle;
        }
        return t;
    }
    case WS_CONN_CLOSED:
        break;
    }
    return 0;
}

static void rearm(struct ws_conn *c)
{
    struct ev_loop *loop = c->srv->loop;
    ev_timer_stop(loop, &c->timer);
    ev_tstamp at = next_deadline(c);
    if (!at)
        return;
    ev_tstamp in = at - ev_now(loop);
    ev_timer_set(&c->timer, in > 0.001 ? in : 0.001, 0);
    ev_timer_start(loop, &c->timer);
}

const char *ws_conn_peer(const struct ws_conn *c, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN];
    switch (c->peer.sa.sa_family) {
    case AF_INET:
        inet_ntop(AF_INET, &c->peer.in4.sin_addr, ip, sizeof(ip));
        snprintf(out, cap, "%s:%u", ip, ntohs(c->peer.in4.sin_port));
        break;
    case AF_INET6:
        inet_ntop(AF_INET6, &c->peer.in6.sin6_addr, ip, sizeof(ip));
        snprintf(out, cap, "[%s]:%u", ip, ntohs(c->peer.in6.sin6_port));
        break;
    default:
        snprintf(out, cap, "unix");
    }
    return out;
}

static void log_conn(struct ws_conn *c, enum ws_log_level level, const char *event, int code,
                     const char *reason)
{
    if (!ws_log_enabled(level))
        return;
    char peer[64];
    struct ws_log_line l;
    ws_log_begin(&l, level, event);
    ws_log_u64(&l, "conn", c->node.id);
    ws_log_cstr(&l, "peer", ws_conn_peer(c, peer, sizeof(peer)));
    if (code)
        ws_log_i64(&l, "code", code);
    if (reason)
        ws_log_cstr(&l, "reason", reason);
    ws_log_ms(&l, "ms", ev_now(c->srv->loop) - c->started);
    ws_log_end(&l);
}

/* The access log: one line per HTTP answer, the 101 included. */
static void log_access(struct ws_conn *c, int status, const char *reason)
{
    enum ws_log_level level = status >= 500 ? WS_LOG_WARN : WS_LOG_INFO;
    if (!ws_log_enabled(level))
        return;
    char peer[64];
    struct ws_log_line l;
    ws_log_begin(&l, level, "access");
    ws_log_u64(&l, "conn", c->node.id);
    ws_log_cstr(&l, "peer", ws_conn_peer(c, peer, sizeof(peer)));
    ws_log_i64(&l, "status", status);
    /* the path without its query: query strings carry tokens that logs must not keep */
    const char *path = c->path ? c->path : "";
    ws_log_str(&l, "path", path, strcspn(path, "?"));
    if (reason)
        ws_log_cstr(&l, "reason", reason);
    ws_log_ms(&l, "ms", ev_now(c->srv->loop) - c->started);
    ws_log_end(&l);
}

/* Per-IP accounting key: the address without the port. */
static uint64_t ip_key(const struct ws_conn *c)
{
    if (c->peer.sa.sa_family == AF_INET)
        return ws_hash_bytes(&c->peer.in4.sin_addr, sizeof(c->peer.in4.sin_addr));
    if (c->peer.sa.sa_family == AF_INET6)
        return ws_hash_bytes(&c->peer.in6.sin6_addr, sizeof(c->peer.in6.sin6_addr));
    return 0;
}

static uintptr_t ip_count(struct ws_conn *c, int delta)
{
    struct ws_map *m = &c->srv->per_ip;
    uint64_t key = ip_key(c);
    uintptr_t n = (uintptr_t)ws_map_get(m, key) + (uintptr_t)(intptr_t)delta;
    if (n)
        ws_map_put(m, key, (void *)n);
    else
        ws_map_del(m, key);
    return n;
}

struct ws_conn *ws_conn_new(struct ws_server *srv, int fd, const struct sockaddr *sa,
                            socklen_t salen, const struct ws_transport_ops *transport,
                            void *transport_state)
{
    struct ws_conn *c = ws_xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->fd = fd;
    c->transport = transport;
    c->transport_state = transport_state;
    c->node.id = ++srv->next_id;
    c->sub.id = c->node.id;
    if (salen > sizeof(c->peer))
        salen = sizeof(c->peer);
    memcpy(&c->peer, sa, salen);
    c->state = WS_CONN_CONNECTING;
    c->started = c->last_read = c->last_message = ev_now(srv->loop);
    ws_session_init(&c->session, (size_t)srv->cfg.max_message_size);
    ws_outq_init(&c->out);
    ws_buf_init(&c->in);
    ev_io_init(&c->io, on_io, fd, EV_READ);
    c->io.data = c;
    ev_init(&c->timer, on_timer);
    c->timer.data = c;
    ev_io_start(srv->loop, &c->io);
    ws_registry_add(&srv->conns, &c->node);
    srv->stats.connections_total++;
    rearm(c);
    /* per address, every socket counts from accept, handshakes in progress included: one
     * address must not be able to hold all the sockets the server accepts */
    if (srv->cfg.max_connections_per_ip > 0 && c->peer.sa.sa_family != AF_UNIX) {
        c->ip_counted = true;
        if (ip_count(c, 1) > (uintptr_t)srv->cfg.max_connections_per_ip) {
            /* refused at once and not kept lingering: those sockets must not pile up either.
             * A fresh socket's send buffer takes the short answer whole. */
            static const char msg[] = "too many connections from this address\n";
            char out[512];
            size_t n =
                ws_handshake_error_response(out, sizeof(out), 503, msg, sizeof(msg) - 1, NULL);
            if (transport == &ws_transport_plain)
                (void)!send(fd, out, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            count_refusal(&srv->stats, 503);
            log_access(c, 503, "too many connections from this address");
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
    ev_io_stop(c->srv->loop, &c->io);
    ev_timer_stop(c->srv->loop, &c->timer);
    close(c->fd);
    c->fd = -1;
    ws_outq_clear(&c->out, &c->srv->pool);
    ws_server_bury(c->srv, c);
}

void ws_conn_abort(struct ws_conn *c, int code, const char *reason)
{
    kill_conn(c, code, reason);
}

size_t ws_conn_buffered(const struct ws_conn *c)
{
    return c->out.bytes;
}

static void queue_frame(struct ws_conn *c, uint8_t opcode, bool fin, uint8_t rsv, const void *data,
                        size_t len)
{
    uint8_t hdr[WS_FRAME_MAX_HEADER];
    size_t n = ws_frame_encode_header(hdr, fin, rsv, opcode, len, NULL);
    ws_outq_append(&c->out, &c->srv->pool, hdr, n);
    ws_outq_append(&c->out, &c->srv->pool, data, len);
}

/* Queues our close frame and enters CLOSING: nothing is sent after it. */
static void start_close(struct ws_conn *c, int code, const char *reason, size_t len)
{
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
    ws_server_want_flush(c->srv, c);
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
    bool own_ok = c->out.bytes == 0 || c->out.bytes + len <= (size_t)cfg(c)->max_buffered;
    /* an empty queue always takes one message, so slow consumers filling the total cannot
     * starve the connections that keep up: the bound is the total plus one message for each
     * connection that has none queued */
    bool total_ok =
        c->out.bytes == 0 || c->srv->pool.queued + len <= (size_t)cfg(c)->max_buffered_total;
    if (own_ok && total_ok)
        return 0;
    if (strcmp(cfg(c)->backpressure, "drop") == 0) {
        c->srv->stats.dropped++;
        return WS_E_LIMIT;
    }
    log_conn(c, WS_LOG_WARN, "slow_consumer", 1008, NULL);
    start_close(c, 1008, "slow consumer", 13);
    return WS_E_CLOSED;
}

static int sent_result(struct ws_conn *c)
{
    ws_server_want_flush(c->srv, c);
    if (c->out.bytes > low_water(c)) {
        c->above_low = true;
        return WS_CONN_QUEUED;
    }
    return WS_CONN_SENT;
}

/* Writes header + payload straight to the socket when nothing is queued (large messages skip
 * the copy into the queue); the unwritten rest is queued. */
static void send_direct(struct ws_conn *c, const uint8_t *hdr, size_t hlen, const uint8_t *data,
                        size_t len)
{
    struct iovec iov[2] = {{(void *)hdr, hlen}, {(void *)data, len}};
    ssize_t w = c->secured ? c->transport->writev(c->transport_state, c->fd, iov, 2) : 0;
    size_t done = w > 0 ? (size_t)w : 0;
    if (w > 0)
        c->srv->stats.bytes_out += done;
    if (done < hlen) {
        ws_outq_append(&c->out, &c->srv->pool, hdr + done, hlen - done);
        done = 0;
    } else {
        done -= hlen;
    }
    ws_outq_append(&c->out, &c->srv->pool, data + done, len - done);
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
    c->srv->stats.messages_out++;
    uint8_t rsv = 0;
    struct ws_buf *z = &c->srv->zbuf;
    if (c->deflate && ws_deflate_should_compress(c->deflate, len)) {
        /* RFC 7692 §7.2.1: the payload compressed, RSV1 on the first frame only */
        z->len = 0;
        ws_deflate_compress(c->deflate, data, len, z);
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
    } else if (c->out.bytes == 0 && len >= WS_OUTQ_CHUNK_BYTES) {
        uint8_t hdr[WS_FRAME_MAX_HEADER];
        size_t hlen = ws_frame_encode_header(hdr, true, rsv, opcode, len, NULL);
        send_direct(c, hdr, hlen, data, len);
    } else {
        queue_frame(c, opcode, true, rsv, data, len);
    }
    if (z->cap > WS_OUTQ_CHUNK_BYTES * 64)
        ws_buf_reset(z); /* do not keep a big scratch buffer after one big message */
    return sent_result(c);
}

struct ws_shared *ws_conn_encode_shared(uint8_t opcode, uint8_t rsv, const void *data, size_t len)
{
    uint8_t hdr[WS_FRAME_MAX_HEADER];
    size_t hlen = ws_frame_encode_header(hdr, true, rsv, opcode, len, NULL);
    struct ws_shared *s = ws_shared_new(hlen + len);
    memcpy(s->data, hdr, hlen);
    if (len)
        memcpy(s->data + hlen, data, len);
    return s;
}

void ws_frame_set_init(struct ws_frame_set *set, uint8_t opcode, const void *data, size_t len)
{
    memset(set, 0, sizeof(*set));
    set->opcode = opcode;
    set->data = data;
    set->len = len;
}

void ws_frame_set_free(struct ws_frame_set *set)
{
    ws_shared_unref(set->plain);
    for (size_t i = 0; i < sizeof(set->deflated) / sizeof(set->deflated[0]); i++)
        ws_shared_unref(set->deflated[i]);
    memset(set, 0, sizeof(*set));
}

int ws_conn_send_set(struct ws_conn *c, struct ws_frame_set *set)
{
    if (c->state != WS_CONN_OPEN)
        return WS_E_CLOSED;
    size_t frag = (size_t)cfg(c)->fragment_size;
    if (frag && set->len > frag) /* fragmented: framed per connection */
        return ws_conn_send(c, set->opcode, set->data, set->len);
    if (c->deflate && ws_deflate_should_compress(c->deflate, set->len)) {
        int bits = ws_deflate_broadcast_bits(c->deflate);
        if (!bits) /* its own compressor with context: this connection's own encoding */
            return ws_conn_send(c, set->opcode, set->data, set->len);
        if (!set->deflated[bits]) {
            /* compressed once for every recipient with this window (RFC 7692 §7.1.1.1 lets a
             * server reset its context per message) */
            struct ws_buf *z = &c->srv->zbuf;
            z->len = 0;
            ws_deflate_shared_compress(c->srv->deflate_shared, bits, set->data, set->len, z);
            set->deflated[bits] =
                ws_conn_encode_shared(set->opcode, WS_FRAME_RSV1, z->data, z->len);
        }
        return ws_conn_send_shared(c, set->deflated[bits], true);
    }
    if (!set->plain)
        set->plain = ws_conn_encode_shared(set->opcode, 0, set->data, set->len);
    return ws_conn_send_shared(c, set->plain, true);
}

int ws_conn_send_shared(struct ws_conn *c, struct ws_shared *frame, bool is_data)
{
    if (c->state != WS_CONN_OPEN)
        return WS_E_CLOSED;
    if (is_data) {
        int rc = accept_data(c, frame->len);
        if (rc < 0)
            return rc;
        c->srv->stats.messages_out++;
    }
    ws_outq_append_shared(&c->out, &c->srv->pool, frame);
    return sent_result(c);
}

int ws_conn_ping(struct ws_conn *c, const void *payload, size_t len)
{
    return ws_conn_send(c, WS_OP_PING, payload, len);
}

void ws_conn_flush(struct ws_conn *c)
{
    struct ws_server *srv = c->srv;
    if (c->state == WS_CONN_CLOSED)
        return;
    if (!c->secured)
        return; /* the transport's handshake comes first */
    while (c->out.bytes && !c->wr_shut) {
        struct iovec iov[IOV_BATCH];
        int n = ws_outq_iov(&c->out, iov, IOV_BATCH);
        ssize_t w = c->transport->writev(c->transport_state, c->fd, iov, n);
        if (w == WS_E_AGAIN) {
            update_events(c, true);
            return;
        }
        if (w < 0) {
            kill_conn(c, 1006, ws_strerror((int)w));
            return;
        }
        srv->stats.bytes_out += (uint64_t)w;
        ws_outq_consume(&c->out, &srv->pool, (size_t)w);
    }
    if (c->out.bytes && c->wr_shut)
        ws_outq_clear(&c->out, &srv->pool);
    if (c->reading_paused && c->out.bytes < low_water(c))
        c->reading_paused = false;
    update_events(c, false);
    if (c->above_low && c->state == WS_CONN_OPEN) {
        c->above_low = false;
        if (srv->ops->drain)
            srv->ops->drain(srv->app, c);
    }
    if (c->state == WS_CONN_CLOSING && !c->wr_shut && c->out.bytes == 0) {
        /* Our last byte is out: half-close, then read until the peer closes
         * (RFC 6455 §7.1.1: the server closes the TCP connection first). */
        c->transport->shutdown(c->transport_state, c->fd);
        c->wr_shut = true;
    }
}

/* ---- HTTP side: the handshake and plain requests ---- */

static void queue_response(struct ws_conn *c, int status, const char *content_type,
                           const void *body, size_t body_len, const char *extra, bool head_only)
{
    char head[RESPONSE_HEAD_MAX];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s\r\n",
                     status, ws_http_reason(status), content_type, body_len, extra ? extra : "");
    if (n < 0 || (size_t)n >= sizeof(head))
        n = snprintf(head, sizeof(head), "HTTP/1.1 500 Internal Server Error\r\n\r\n");
    ws_outq_append(&c->out, &c->srv->pool, head, (size_t)n);
    if (!head_only)
        ws_outq_append(&c->out, &c->srv->pool, body, body_len);
}

/* After the one response a plain request gets: send it, then close. */
static void finish_http(struct ws_conn *c)
{
    ws_buf_reset(&c->in);
    set_state(c, WS_CONN_CLOSING);
    rearm(c);
    ws_server_want_flush(c->srv, c);
}

/* Answers status with a one-line text body (the status text when body is NULL) and closes. */
static void respond_error(struct ws_conn *c, int status, const char *body, size_t len,
                          const char *extra)
{
    char out[2048];
    if (!body) {
        body = ws_http_reason(status);
        len = strlen(body);
    }
    if (len > 1024)
        len = 1024;
    char line[1100];
    bool newline = len > 0 && body[len - 1] == '\n';
    int k = snprintf(line, sizeof(line), "%.*s%s", (int)len, body, newline ? "" : "\n");
    size_t n = ws_handshake_error_response(out, sizeof(out), status, line, (size_t)k, extra);
    ws_outq_append(&c->out, &c->srv->pool, out, n);
    log_access(c, status, body);
    finish_http(c);
}

/* Refuses a WebSocket handshake (counted by status for /metrics). */
static void refuse(struct ws_conn *c, int status, const char *body, size_t len, const char *extra)
{
    if (c->ip_counted) {
        /* a refused socket only lingers for its answer: it no longer holds a per-address slot */
        ip_count(c, -1);
        c->ip_counted = false;
    }
    count_refusal(&c->srv->stats, status);
    respond_error(c, status, body, len, extra);
}

static bool method_is(const struct ws_http_request *req, const char *m)
{
    /* RFC 9110 §9.1: methods are case-sensitive */
    return req->method.n == strlen(m) && memcmp(req->method.p, m, req->method.n) == 0;
}

static bool path_is(const struct ws_http_request *req, const char *path)
{
    const char *q = memchr(req->target.p, '?', req->target.n);
    size_t n = q ? (size_t)(q - req->target.p) : req->target.n;
    return n == strlen(path) && memcmp(req->target.p, path, n) == 0;
}

static void serve_static(struct ws_conn *c, const struct ws_http_request *req, bool head)
{
    struct ws_static_reply st;
    ws_static_serve(c->srv->cfg.static_dir, req, &st);
    if (st.status == 200 || st.status == 304)
        queue_response(c, st.status, st.content_type, st.body, st.body_len, st.headers,
                       head || st.status == 304);
    ws_static_reply_free(&st);
    if (st.status == 200 || st.status == 304) {
        log_access(c, st.status, NULL);
        finish_http(c);
    } else {
        respond_error(c, st.status, NULL, 0, st.headers);
    }
}

static void answer_http(struct ws_conn *c, const struct ws_http_request *req)
{
    struct ws_server *srv = c->srv;
    struct ws_http_reply reply = {0};
    bool head = method_is(req, "HEAD");
    bool get = head || method_is(req, "GET");
    int status = 200;
    if (get && path_is(req, "/healthz")) {
        /* for load balancers: 503 once a shutdown has begun */
        const char *body = srv->shutting_down ? "shutting down\n" : "ok\n";
        status = srv->shutting_down ? 503 : 200;
        queue_response(c, status, "text/plain; charset=utf-8", body, strlen(body), NULL, head);
    } else if (get && srv->cfg.metrics && path_is(req, "/metrics")) {
        struct ws_buf out;
        ws_buf_init(&out);
        ws_metrics_render(srv, &out);
        queue_response(c, 200, "text/plain; version=0.0.4; charset=utf-8", out.data, out.len, NULL,
                       head);
        ws_buf_reset(&out);
    } else if (srv->ops->http && srv->ops->http(srv->app, c, req, &reply)) {
        status = reply.status;
        queue_response(c, reply.status,
                       reply.content_type ? reply.content_type : "text/plain; charset=utf-8",
                       reply.body, reply.body_len, reply.headers, head);
        free(reply.body);
        free(reply.headers);
        free(reply.content_type);
    } else if (get && srv->cfg.static_dir) {
        serve_static(c, req, head);
        return;
    } else if (!get) {
        respond_error(c, 405, "method not allowed", 18, "Allow: GET, HEAD\r\n");
        return;
    } else {
        const char *msg = "this is a WebSocket endpoint: use a WebSocket client";
        respond_error(c, 426, msg, strlen(msg), "Upgrade: websocket\r\n");
        return;
    }
    log_access(c, status, NULL);
    finish_http(c);
}

static void process_frames(struct ws_conn *c, uint8_t *data, size_t len);

static void upgrade(struct ws_conn *c, const struct ws_http_request *req)
{
    struct ws_server *srv = c->srv;
    struct ws_handshake hs;
    int rc = ws_handshake_check(req, &hs);
    if (rc < 0) {
        refuse(c, hs.status, hs.reason, strlen(hs.reason), NULL);
        return;
    }
    if (srv->nupgraded >= (size_t)srv->cfg.max_connections) {
        refuse(c, 503, "server full", 11, NULL);
        return;
    }

    struct ws_upgrade_reply reply = {0};
    if (srv->ops->upgrade)
        srv->ops->upgrade(srv->app, c, req, &reply);
    if (reply.status) {
        refuse(c, reply.status, reply.body, reply.body ? reply.body_len : 0, reply.headers);
        free(reply.body);
        free(reply.headers);
        free(reply.protocol);
        return;
    }
    if (reply.protocol) {
        if (!ws_handshake_offers_protocol(req, reply.protocol, strlen(reply.protocol))) {
            /* SPEC §3: answer only a protocol the client offered */
            log_conn(c, WS_LOG_ERROR, "bad_protocol", 500, "upgrade chose a protocol not offered");
            free(reply.protocol);
            refuse(c, 500, "internal error", 14, NULL);
            return;
        }
        c->protocol = reply.protocol;
    } else if (srv->cfg.protocols.n) {
        int i = ws_handshake_select_protocol(req, (const char *const *)srv->cfg.protocols.items,
                                             srv->cfg.protocols.n);
        if (i >= 0)
            c->protocol =
                ws_xstrndup(srv->cfg.protocols.items[i], strlen(srv->cfg.protocols.items[i]));
    }
    free(reply.body);

    /* RFC 7692 §5: accept the first permessage-deflate offer we can honour */
    char ext[WS_DEFLATE_RESPONSE_MAX];
    struct ws_deflate_params dp;
    bool deflate =
        srv->deflate_cfg.enabled && hs.noffers &&
        ws_deflate_negotiate(&srv->deflate_cfg, hs.offers, hs.noffers, &dp, ext, sizeof(ext)) == 1;
    char out[1024];
    size_t n = ws_handshake_response(out, sizeof(out), &hs, c->protocol,
                                     c->protocol ? strlen(c->protocol) : 0, deflate ? ext : NULL);
    if (!n) {
        refuse(c, 500, "internal error", 14, NULL);
        return;
    }
    ws_outq_append(&c->out, &srv->pool, out, n);
    if (deflate) {
        c->deflate = ws_xcalloc(1, sizeof(*c->deflate));
        ws_deflate_init(c->deflate, &dp, srv->deflate_shared);
        ws_session_set_deflate(&c->session, c->deflate);
    }
    set_state(c, WS_CONN_OPEN);
    srv->nupgraded++;
    c->opened = true;
    c->last_read = c->last_message = ev_now(srv->loop);
    rearm(c);
    ws_server_want_flush(srv, c);
    log_access(c, 101, NULL);
    if (srv->ops->open)
        srv->ops->open(srv->app, c);
    /* SPEC §3: bytes after the head in the same read are the first frame bytes */
    size_t rest = c->in.len - req->head_len;
    if (rest && c->state != WS_CONN_CLOSED)
        process_frames(c, c->in.data + req->head_len, rest);
}

static void on_head_bytes(struct ws_conn *c, const uint8_t *data, size_t len)
{
    size_t max = (size_t)cfg(c)->max_header_size;
    /* keep at most one byte past the cap: enough to tell "too large" */
    size_t room =
        max + WS_SERVER_READ_BYTES > c->in.len ? max + WS_SERVER_READ_BYTES - c->in.len : 0;
    ws_buf_append(&c->in, data, len < room ? len : room);
    struct ws_http_request req;
    int rc = ws_http_parse((const char *)c->in.data, c->in.len, max, &c->scanned, &req);
    if (rc == WS_E_AGAIN)
        return;
    if (rc < 0) {
        refuse(c, ws_err_http_status(rc), ws_strerror(rc), strlen(ws_strerror(rc)), NULL);
        return;
    }
    c->path = ws_xstrndup(req.target.p, req.target.n);
    if (ws_handshake_is_upgrade(&req))
        upgrade(c, &req);
    else
        answer_http(c, &req);
    ws_buf_reset(&c->in);
}

/* ---- WebSocket side ---- */

static void fail(struct ws_conn *c, int err)
{
    int code = ws_err_close_code(err);
    log_conn(c, WS_LOG_DEBUG, "protocol_error", code, ws_strerror(err));
    if (c->state == WS_CONN_OPEN)
        start_close(c, code, ws_strerror(err), strlen(ws_strerror(err)));
    else
        kill_conn(c, code, ws_strerror(err));
}

static void on_peer_close(struct ws_conn *c, const struct ws_session_event *ev)
{
    c->close_code = ev->code;
    free(c->close_reason);
    c->close_reason = ev->len ? ws_xstrndup((const char *)ev->data, ev->len) : NULL;
    /* RFC 6455 §5.5.1: echo the status code (1005 means there was none); the handshake is then
     * done, so start_close keeps the peer's code as the one reported */
    if (c->state == WS_CONN_OPEN)
        start_close(c, ev->code == 1005 ? 0 : ev->code, NULL, 0);
}

static void process_frames(struct ws_conn *c, uint8_t *data, size_t len)
{
    struct ws_server *srv = c->srv;
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
            srv->stats.messages_in++;
            c->last_message = ev_now(srv->loop);
            if (srv->ops->message)
                srv->ops->message(srv->app, c, ev.data, ev.len, ev.opcode == WS_OP_BINARY);
            break;
        case WS_SESSION_PING:
            if (c->state == WS_CONN_OPEN) /* RFC 6455 §5.5.2: pong with the same payload */
                queue_frame(c, WS_OP_PONG, true, 0, ev.data, ev.len);
            ws_server_want_flush(srv, c);
            break;
        case WS_SESSION_PONG:
            c->ping_sent = 0;
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
    if (c->secured)
        return true;
    int rc = c->transport->handshake(c->transport_state);
    if (rc == 0) {
        c->secured = true;
        update_events(c, c->out.bytes > 0);
        return true;
    }
    if (rc == WS_E_AGAIN || rc == WS_E_WANT_WRITE) {
        update_events(c, rc == WS_E_WANT_WRITE);
        return false;
    }
    log_conn(c, WS_LOG_INFO, "tls_failed", 0, ws_strerror(rc));
    kill_conn(c, 1006, "TLS handshake failed");
    return false;
}

/* Handles one chunk of bytes from the peer. */
static void on_bytes(struct ws_conn *c, uint8_t *data, size_t n)
{
    struct ws_server *srv = c->srv;
    srv->stats.bytes_in += n;
    c->last_read = ev_now(srv->loop);
    c->ping_sent = 0; /* any bytes prove the peer alive */
    switch (c->state) {
    case WS_CONN_CONNECTING:
        on_head_bytes(c, data, n);
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
    struct ws_server *srv = c->srv;
    if (!secure(c))
        return;
    /* TLS may hold decrypted bytes that the socket will not signal again: drain them */
    do {
        ssize_t n = c->transport->read(c->transport_state, c->fd, srv->rbuf, WS_SERVER_READ_BYTES);
        if (n == WS_E_AGAIN)
            break;
        if (n == WS_E_WANT_WRITE) {
            update_events(c, true);
            break;
        }
        if (n <= 0) {
            kill_conn(c, 1006, n == 0 && c->state == WS_CONN_OPEN ? "connection dropped" : NULL);
            return;
        }
        on_bytes(c, srv->rbuf, (size_t)n);
        if (c->state == WS_CONN_CLOSED)
            return;
    } while (c->transport->pending(c->transport_state));
    /* Stop reading from a peer whose replies pile up, until they drain (TCP pushes back). */
    if (c->out.bytes > (size_t)cfg(c)->max_buffered / 2 && c->state == WS_CONN_OPEN)
        c->reading_paused = true;
    ws_conn_flush(c);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct ws_conn *c = w->data;
    if (revents & EV_READ)
        on_read(c);
    if ((revents & EV_WRITE) && c->state != WS_CONN_CLOSED) {
        if (!c->secured)
            on_read(c); /* the TLS handshake wanted to write */
        else
            ws_conn_flush(c);
    }
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct ws_conn *c = w->data;
    const struct ws_config *o = cfg(c);
    ev_tstamp now = ev_now(loop);
    switch (c->state) {
    case WS_CONN_CONNECTING:
        if (now >= c->started + o->handshake_timeout) {
            log_conn(c, WS_LOG_INFO, "handshake_timeout", 0, NULL);
            kill_conn(c, 1006, "handshake timeout");
            return;
        }
        break;
    case WS_CONN_CLOSING:
        if (now >= c->closing_since + o->close_timeout) {
            kill_conn(c, 1006, "close timeout");
            return;
        }
        break;
    case WS_CONN_OPEN:
        if (c->ping_sent > 0 && now >= c->ping_sent + o->pong_timeout) {
            log_conn(c, WS_LOG_INFO, "pong_timeout", 1001, NULL);
            start_close(c, 1001, "pong timeout", 12);
            break;
        }
        if (o->idle_timeout > 0 && now >= c->last_message + o->idle_timeout) {
            start_close(c, 1001, "idle timeout", 12);
            break;
        }
        if (o->ping_interval > 0 && !c->ping_sent && now >= c->last_read + o->ping_interval) {
            queue_frame(c, WS_OP_PING, true, 0, NULL, 0);
            c->ping_sent = now;
            ws_server_want_flush(c->srv, c);
        }
        break;
    case WS_CONN_CLOSED:
        return;
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
    struct ws_server *srv = c->srv;
    assert(c->state == WS_CONN_CLOSED);
    int code = c->close_code ? c->close_code : 1006;
    if (c->opened) {
        log_conn(c, WS_LOG_DEBUG, "close", code, c->close_reason);
        ws_server_count_close(srv, code);
        if (srv->ops->close) {
            const char *r = c->close_reason ? c->close_reason : "";
            srv->ops->close(srv->app, c, code, (const uint8_t *)r, strlen(r));
        }
        srv->nupgraded--;
    }
    /* SPEC §7: close runs with topics attached; unsubscribe after, then free */
    ws_topics_leave_all(&srv->topics, &c->sub);
    if (srv->ops->release)
        srv->ops->release(srv->app, c);
    if (c->ip_counted)
        ip_count(c, -1);
    ws_registry_remove(&srv->conns, &c->node);
    ws_session_reset(&c->session);
    ws_buf_reset(&c->in);
    ws_outq_clear(&c->out, &srv->pool);
    c->transport->free(c->transport_state);
    if (c->deflate) {
        ws_deflate_reset(c->deflate);
        free(c->deflate);
    }
    free(c->path);
    free(c->protocol);
    free(c->close_reason);
    free(c);
}
