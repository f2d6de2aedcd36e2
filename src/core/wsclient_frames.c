/* The client's open connection: messages and pings out as masked frames (a fresh key per
 * frame), the session's events in (messages to the owner, pings answered), the closing handshake
 * from either side. It does not connect, read the socket or end the client: wsclient.c does. */
#include "ws/wsclient.h"

#include "ws/clock.h"
#include "ws/deflate.h"
#include "ws/err.h"
#include "ws/session.h"
#include "ws/wire.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void ws_client_set_end(struct ws_client *c, int code, const char *reason, size_t len,
                       const char *err)
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
    c->state = WS_CLIENT_CLOSING;
    ws_timer_start(c->loop, &c->timer, c->close_timeout, 0);
}

int ws_client_send(struct ws_client *c, const void *data, size_t len, bool binary)
{
    if (c->state != WS_CLIENT_OPEN)
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
    if (c->state != WS_CLIENT_OPEN)
        return WS_E_CLOSED;
    if (len > WS_FRAME_MAX_CONTROL_PAYLOAD)
        return WS_E_INVAL;
    write_frame(c, WS_OP_PING, 0, data, len);
    return 0;
}

int ws_client_close(struct ws_client *c, int code, const char *reason, size_t len)
{
    if (c->state != WS_CLIENT_OPEN)
        return WS_E_CLOSED;
    send_close(c, code, reason, len);
    /* what ends reports unless the server's answer says otherwise */
    ws_client_set_end(c, code ? code : 1005, reason, len, NULL);
    start_closing(c);
    return 0;
}

bool ws_client_is_open(const struct ws_client *c)
{
    return c->state == WS_CLIENT_OPEN;
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
    ws_client_set_end(c, code, why, strlen(why), why);
    start_closing(c);
}

/* Feeds bytes read to the session and acts on its events. Returns false once c ended or is
 * being freed (the caller stops at once). */
bool ws_client_feed(struct ws_client *c, uint8_t *p, size_t n)
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
            if (c->state != WS_CLIENT_OPEN)
                break; /* we closed already: the app asked for no more */
            c->depth++;
            c->ops->message(c->ud, c, ev.data, ev.len, ev.opcode == WS_OP_BINARY);
            c->depth--;
            if (c->free_pending || c->state == WS_CLIENT_ENDED) {
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
                ws_client_set_end(c, ev.code, (const char *)ev.data, ev.len, NULL);
            } else if (!c->end_err) {
                ws_client_set_end(c, ev.code, (const char *)ev.data, ev.len, NULL);
            }
            start_closing(c);
            break;
        }
    }
}
