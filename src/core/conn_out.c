/* Frames out of a connection: messages and control frames into the send queue under
 * back-pressure (or straight to the socket when large and nothing waits), compression and
 * fragmentation, our close frame, and writing the queue out with the half-close at the end. */
#include "ws/conn.h"

#include "ws/connlog.h"
#include "ws/err.h"
#include "ws/frame.h"

#include <stdlib.h>
#include <string.h>

/* Queues c for this iteration's flush pass (ws_conn_run_pending); a closed connection has
 * nothing to flush. */
void ws_conn_want_flush(struct ws_conn *c)
{
    if (c->in_flush_list || c->state == WS_CONN_CLOSED)
        return;
    c->in_flush_list = true;
    c->next_flush = c->env->flush_head;
    c->env->flush_head = c;
}

static size_t low_water(const struct ws_conn *c)
{
    size_t half = (size_t)ws_conn_cfg(c)->max_buffered / 2;
    return half < 65536 ? half : 65536;
}

size_t ws_conn_buffered(const struct ws_conn *c)
{
    return c->wire.out.bytes;
}

void ws_conn_queue_frame(struct ws_conn *c, uint8_t opcode, bool fin, uint8_t rsv, const void *data,
                         size_t len)
{
    uint8_t hdr[WS_FRAME_MAX_HEADER];
    size_t n = ws_frame_encode_header(hdr, fin, rsv, opcode, len, NULL);
    ws_outq_append2(&c->wire.out, &c->env->pool, hdr, n, data, len);
}

/* Queues our close frame and enters CLOSING: nothing is sent after it. */
void ws_conn_start_close(struct ws_conn *c, int code, const char *reason, size_t len)
{
    if (c->closed_by == WS_CONN_BY_NONE)
        c->closed_by = WS_CONN_BY_SERVER;
    uint8_t payload[WS_FRAME_MAX_CONTROL_PAYLOAD];
    size_t n = ws_close_payload(payload, code, reason, len);
    ws_conn_queue_frame(c, WS_OP_CLOSE, true, 0, payload, n);
    ws_session_close_sent(&c->session);
    if (c->session.close_state != WS_CLOSE_DONE) {
        c->close_code = (uint16_t)(code ? code : 1005);
        free(c->close_reason);
        c->close_reason = reason && len ? ws_xstrndup(reason, len) : NULL;
    }
    ws_conn_set_state(c, WS_CONN_CLOSING);
    ws_conn_rearm(c);
    ws_conn_want_flush(c);
}

int ws_conn_close(struct ws_conn *c, int code, const char *reason, size_t len)
{
    if (c->state != WS_CONN_OPEN)
        return WS_E_CLOSED;
    ws_conn_start_close(c, code, reason, len);
    return 0;
}

/* Back-pressure (SPEC §3): a queue may not grow past max_buffered, except that one message of
 * any size may enter an empty queue; and all queues together may not grow past
 * max_buffered_total, beyond which the connections that already have a backlog are the ones
 * refused. */
static int accept_data(struct ws_conn *c, size_t len)
{
    bool own_ok =
        c->wire.out.bytes == 0 || c->wire.out.bytes + len <= (size_t)ws_conn_cfg(c)->max_buffered;
    /* an empty queue always takes one message, so slow consumers filling the total cannot
     * starve the connections that keep up: the bound is the total plus one message for each
     * connection that has none queued */
    bool total_ok = c->wire.out.bytes == 0 ||
                    c->env->pool.queued + len <= (size_t)ws_conn_cfg(c)->max_buffered_total;
    if (own_ok && total_ok)
        return 0;
    if (strcmp(ws_conn_cfg(c)->backpressure, "drop") == 0) {
        c->env->stats->dropped++;
        return WS_E_LIMIT;
    }
    ws_connlog_event(c, WS_LOG_WARN, "slow_consumer", 1008, NULL);
    ws_conn_start_close(c, 1008, "slow consumer", 13);
    return WS_E_CLOSED;
}

static int sent_result(struct ws_conn *c)
{
    ws_conn_want_flush(c);
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
        ws_conn_queue_frame(c, opcode, true, 0, data, len);
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
    size_t frag = (size_t)ws_conn_cfg(c)->fragment_size;
    const uint8_t *p = data;
    if (frag && len > frag) {
        /* RFC 6455 §5.4: a fragmented message; only the first frame carries the opcode */
        for (size_t off = 0; off < len; off += frag) {
            size_t n = len - off < frag ? len - off : frag;
            ws_conn_queue_frame(c, off ? WS_OP_CONTINUATION : opcode, off + n == len, off ? 0 : rsv,
                                p + off, n);
        }
    } else if (c->wire.out.bytes == 0 && len >= WS_OUTQ_CHUNK_BYTES) {
        uint8_t hdr[WS_FRAME_MAX_HEADER];
        size_t hlen = ws_frame_encode_header(hdr, true, rsv, opcode, len, NULL);
        uint64_t before = c->bytes_out;
        ws_wire_write(&c->wire, &c->env->pool, hdr, hlen, data, len, &c->bytes_out);
        c->env->stats->bytes_out += c->bytes_out - before;
    } else {
        ws_conn_queue_frame(c, opcode, true, rsv, data, len);
    }
    if (z->cap > WS_OUTQ_CHUNK_BYTES * 64)
        ws_buf_reset(z); /* do not keep a big scratch buffer after one big message */
    return sent_result(c);
}

int ws_conn_send_set(struct ws_conn *c, struct ws_frameset *set)
{
    if (c->state != WS_CONN_OPEN)
        return WS_E_CLOSED;
    size_t frag = (size_t)ws_conn_cfg(c)->fragment_size;
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
 * still waits: the peer's close_notify may follow. The kit's in-memory transport closes at once
 * like a plain socket, so its close events come when the real server's do. */
bool ws_conn_closes_at_once(const struct ws_conn *c)
{
    return c->opened && c->session.close_state == WS_CLOSE_DONE && c->wire.transport->close_at_once;
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
    bool last = c->state == WS_CONN_CLOSING && ws_conn_closes_at_once(c);
    int rc = last ? ws_wire_flush_last(&c->wire, env->loop, &env->pool, &c->bytes_out)
                  : ws_wire_flush(&c->wire, env->loop, &env->pool, &c->bytes_out);
    env->stats->bytes_out += c->bytes_out - before;
    if (rc == WS_E_AGAIN)
        return;
    if (rc < 0) {
        ws_conn_abort(c, 1006, ws_strerror(rc));
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
            ws_conn_abort(c, 1006, NULL);
            return;
        }
        /* Our last byte is out: half-close, then read until the peer closes
         * (RFC 6455 §7.1.1: the server closes the TCP connection first). */
        ws_wire_shutdown(&c->wire);
    }
}
