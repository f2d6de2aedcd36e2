/* The message layer of one connection (RFC 6455 §5.4-5.6, §7): turns decoded frames into
 * messages, pings, pongs and a validated close. It owns one reassembly buffer and does no I/O;
 * it neither answers pings nor sends the closing handshake: the caller acts on the events. */
#include "ws/session.h"

#include "ws/err.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* A finished message buffer larger than this is freed rather than kept for the next message,
 * so an idle connection holds no large buffer after one big message. */
static const size_t msg_keep_bytes = 64 * 1024;

/* RFC 6455 §7.1.5: the code reported when a close frame carries no status code. */
enum { CLOSE_NO_STATUS = 1005 };

void ws_session_init(struct ws_session *s, size_t max_message_bytes)
{
    /* RFC 6455 §5.1: a server rejects unmasked client frames; no extension owns RSV bits here */
    ws_frame_decoder_init(&s->dec, true, 0);
    ws_utf8_init(&s->utf8);
    ws_buf_init(&s->msg);
    s->msg_opcode = 0;
    s->msg_compressed = false;
    s->deflate = NULL;
    s->msg_len = 0;
    s->msg_done = false;
    s->ctl = NULL;
    s->ctl_len = 0;
    s->max_message_bytes = max_message_bytes;
    s->close_state = WS_CLOSE_NONE;
    s->err = 0;
}

void ws_session_set_deflate(struct ws_session *s, struct ws_deflate *d)
{
    s->deflate = d;
    s->dec.rsv_allowed = WS_FRAME_RSV1; /* RFC 7692 §6: "Per-Message Compressed" bit */
}

void ws_session_set_client(struct ws_session *s)
{
    /* RFC 6455 §5.1: a client fails the connection on a masked server frame */
    s->dec.require_mask = false;
}

void ws_session_reset(struct ws_session *s)
{
    ws_buf_reset(&s->msg);
    s->msg_done = false;
    free(s->ctl);
    s->ctl = NULL;
    s->ctl_len = 0;
}

/* Drops the message handed out by the previous event; its pointers were valid until now. */
static void release_msg(struct ws_session *s)
{
    if (s->msg.cap > msg_keep_bytes)
        ws_buf_reset(&s->msg);
    s->msg.len = 0;
    s->msg_done = false;
}

static int on_header(struct ws_session *s, const struct ws_frame_header *h)
{
    /* RFC 7692 §6.1: RSV1 only on the first frame of a data message */
    bool rsv1 = h->rsv & WS_FRAME_RSV1;
    if (ws_frame_is_control(h->opcode)) {
        if (rsv1)
            return WS_E_RSV;
        s->ctl_len = 0;
        return 0;
    }
    if (h->opcode == WS_OP_CONTINUATION) {
        /* RFC 6455 §5.4: a continuation only continues a fragmented message */
        if (!s->msg_opcode)
            return WS_E_UNEXPECTED_CONTINUATION;
        if (rsv1)
            return WS_E_RSV;
    } else {
        assert(h->opcode == WS_OP_TEXT || h->opcode == WS_OP_BINARY); /* decoder rejects others */
        /* RFC 6455 §5.4: fragments of one message are not interleaved with another message */
        if (s->msg_opcode)
            return WS_E_EXPECTED_CONTINUATION;
        s->msg_opcode = h->opcode;
        s->msg_len = 0;
        ws_utf8_init(&s->utf8);
        s->msg_compressed = rsv1;
        if (rsv1)
            ws_deflate_inflate_begin(s->deflate);
    }
    /* SPEC §3 (RFC 6455 §10.4): refuse before buffering a byte of a frame over the limit. A
     * compressed message is bounded by its inflated size as it inflates; its wire bytes get
     * room for deflate's worst-case growth on incompressible data (RFC 1951 stored blocks),
     * and no more, so empty blocks cannot stream forever. The limit may have been lowered by a
     * reload since the message began: compare before subtracting. */
    size_t limit = s->max_message_bytes;
    if (s->msg_compressed)
        limit += limit / 64 + 1024;
    if (s->msg_len > limit || h->length > limit - s->msg_len)
        return WS_E_MESSAGE_TOO_BIG;
    return 0;
}

/* A compressed message's span: inflated into s->msg, bounded by the message limit as it grows
 * (a small frame cannot make us hold more than max_message_bytes + 1). */
static int on_compressed(struct ws_session *s, const struct ws_frame_event *fe,
                         struct ws_session_event *ev)
{
    size_t before = s->msg.len;
    bool last = fe->last && fe->header.fin;
    if (before > s->max_message_bytes)
        return WS_E_MESSAGE_TOO_BIG; /* a reload lowered the limit under this message */
    int rc = ws_deflate_inflate(s->deflate, fe->data, fe->len, last, &s->msg, s->max_message_bytes);
    /* RFC 7692 §8: text is validated after inflation, still as it arrives. What was inflated
     * before an inflate error is validated first, so the error does not depend on how the payload
     * was split into reads. (msg.data is NULL while nothing was inflated.) */
    if (s->msg_opcode == WS_OP_TEXT && s->msg.len > before &&
        ws_utf8_feed(&s->utf8, s->msg.data + before, s->msg.len - before) < 0)
        return WS_E_UTF8;
    if (rc < 0)
        return rc;
    s->msg_len += fe->len;
    if (!last)
        return 0;
    if (s->msg_opcode == WS_OP_TEXT && !ws_utf8_complete(&s->utf8))
        return WS_E_UTF8;
    ev->type = WS_SESSION_MESSAGE;
    ev->opcode = s->msg_opcode;
    ev->code = 0;
    ev->data = s->msg.len ? s->msg.data : (const uint8_t *)"";
    ev->len = s->msg.len;
    s->msg_done = true;
    s->msg_opcode = 0;
    s->msg_len = 0;
    s->msg_compressed = false;
    return 1;
}

/* Returns 1 when a message is complete in *ev, 0 when more is needed, or a WS_E_*. */
static int on_data(struct ws_session *s, const struct ws_frame_event *fe,
                   struct ws_session_event *ev)
{
    if (s->msg_compressed)
        return on_compressed(s, fe, ev);
    /* RFC 6455 §8.1: fail as soon as the text cannot be valid UTF-8, not at the end */
    if (s->msg_opcode == WS_OP_TEXT && ws_utf8_feed(&s->utf8, fe->data, fe->len) < 0)
        return WS_E_UTF8;
    s->msg_len += fe->len;
    if (!(fe->last && fe->header.fin)) {
        ws_buf_append(&s->msg, fe->data, fe->len);
        return 0;
    }
    if (s->msg_opcode == WS_OP_TEXT && !ws_utf8_complete(&s->utf8))
        return WS_E_UTF8;
    ev->type = WS_SESSION_MESSAGE;
    ev->opcode = s->msg_opcode;
    ev->code = 0;
    if (s->msg.len == 0) {
        /* Every earlier span was empty, so this span is the whole message: no copy. */
        ev->data = fe->data;
        ev->len = fe->len;
    } else {
        ws_buf_append(&s->msg, fe->data, fe->len);
        ev->data = s->msg.data;
        ev->len = s->msg.len;
        s->msg_done = true;
    }
    s->msg_opcode = 0;
    s->msg_len = 0;
    return 1;
}

/* Validates the peer's close frame (RFC 6455 §5.5.1, §7.4) and advances the handshake. */
static int on_close(struct ws_session *s, const uint8_t *p, size_t n, struct ws_session_event *ev)
{
    uint16_t code = CLOSE_NO_STATUS;
    if (n == 1)
        return WS_E_CLOSE_PAYLOAD; /* RFC 6455 §5.5.1: a body starts with a 2-byte code */
    if (n >= 2) {
        code = (uint16_t)(p[0] << 8 | p[1]);
        if (!ws_close_code_valid(code))
            return WS_E_CLOSE_CODE;
        /* RFC 6455 §5.5.1: the reason is UTF-8 */
        if (ws_utf8_validate(p + 2, n - 2) < 0)
            return WS_E_CLOSE_REASON_UTF8;
        p += 2;
        n -= 2;
    }
    s->close_state = s->close_state == WS_CLOSE_SENT ? WS_CLOSE_DONE : WS_CLOSE_RECEIVED;
    ev->type = WS_SESSION_CLOSE;
    ev->opcode = WS_OP_CLOSE;
    ev->data = p;
    ev->len = n;
    ev->code = code;
    return 1;
}

/* Gathers a control frame's payload (RFC 6455 §5.5: at most 125 bytes, never fragmented, may
 * arrive between the fragments of a message) and reports it once complete. */
static int on_control(struct ws_session *s, const struct ws_frame_event *fe,
                      struct ws_session_event *ev)
{
    const uint8_t *p = fe->data;
    size_t n = fe->len;
    if (!fe->last || s->ctl_len > 0) {
        /* split across calls: the earlier spans' buffers are gone, keep a copy (its buffer is
         * made by the first split one: a connection that never gets one holds none) */
        assert(s->ctl_len + fe->len <= WS_FRAME_MAX_CONTROL_PAYLOAD); /* the decoder's limit */
        if (!s->ctl)
            s->ctl = ws_xmalloc(WS_FRAME_MAX_CONTROL_PAYLOAD);
        if (fe->len > 0)
            memcpy(s->ctl + s->ctl_len, fe->data, fe->len);
        s->ctl_len = (uint8_t)(s->ctl_len + fe->len);
        if (!fe->last)
            return 0;
        p = s->ctl;
        n = s->ctl_len;
    }
    s->ctl_len = 0;
    switch (fe->header.opcode) {
    case WS_OP_CLOSE:
        return on_close(s, p, n, ev);
    case WS_OP_PING:
    case WS_OP_PONG:
        ev->type = fe->header.opcode == WS_OP_PING ? WS_SESSION_PING : WS_SESSION_PONG;
        ev->opcode = fe->header.opcode;
        ev->data = p;
        ev->len = n;
        ev->code = 0;
        return 1;
    default:
        /* RFC 6455 §5.5: 0xB-0xF are reserved; the decoder already rejected them */
        assert(!"unknown control opcode");
        return WS_E_OPCODE;
    }
}

int ws_session_feed(struct ws_session *s, uint8_t *data, size_t len, size_t *used,
                    struct ws_session_event *ev)
{
    *used = 0;
    if (s->err)
        return s->err;
    /* RFC 6455 §5.5.1: nothing the peer sends after its close frame is processed */
    if (s->close_state == WS_CLOSE_RECEIVED || s->close_state == WS_CLOSE_DONE) {
        *used = len;
        return WS_E_AGAIN;
    }
    if (s->msg_done)
        release_msg(s);
    if (!s->msg_opcode && ws_frame_between(&s->dec)) {
        /* between messages: nothing to read yet, or (the common case) a whole small frame */
        uint8_t op, *p;
        size_t n;
        if (!len)
            return WS_E_AGAIN;
        size_t took = ws_frame_take_whole(&s->dec, data, len, s->max_message_bytes, &op, &p, &n);
        if (took) {
            *used = took;
            /* RFC 6455 §8.1 */
            if (op == WS_OP_TEXT && ws_utf8_validate(p, n) < 0)
                return s->err = WS_E_UTF8;
            ev->type = WS_SESSION_MESSAGE;
            ev->opcode = op;
            ev->code = 0;
            ev->data = p;
            ev->len = n;
            return 0;
        }
    }

    size_t off = 0;
    for (;;) {
        struct ws_frame_event fe;
        size_t n = 0;
        int rc = ws_frame_decode(&s->dec, data + off, len - off, &n, &fe);
        off += n;
        *used = off;
        if (rc == WS_E_AGAIN)
            return WS_E_AGAIN;
        if (rc == 0) {
            if (fe.type == WS_FRAME_HEADER)
                rc = on_header(s, &fe.header);
            else if (ws_frame_is_control(fe.header.opcode))
                rc = on_control(s, &fe, ev);
            else
                rc = on_data(s, &fe, ev);
            if (rc == 1)
                return 0;
        }
        if (rc < 0) {
            s->err = rc;
            return rc;
        }
    }
}

enum ws_close_state ws_session_close_sent(struct ws_session *s)
{
    /* RFC 6455 §5.5.1: an endpoint sends at most one close frame */
    assert(s->close_state == WS_CLOSE_NONE || s->close_state == WS_CLOSE_RECEIVED);
    s->close_state = s->close_state == WS_CLOSE_RECEIVED ? WS_CLOSE_DONE : WS_CLOSE_SENT;
    return s->close_state;
}

bool ws_close_code_valid(int code)
{
    /* RFC 6455 §7.4.1-7.4.2 and the IANA registry: 1004 is reserved, 1005, 1006 and 1015 are
     * never sent, 1016-2999 are unassigned, 3000-4999 belong to libraries and applications. */
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

size_t ws_close_payload(uint8_t out[WS_FRAME_MAX_CONTROL_PAYLOAD], int code, const char *reason,
                        size_t reason_len)
{
    if (code == 0)
        return 0;
    assert(ws_close_code_valid(code));
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    /* RFC 6455 §5.5: the whole payload fits 125 bytes; cut the reason only before a byte that
     * starts a code point so the truncated reason stays UTF-8 (§5.5.1). */
    size_t n = reason_len;
    if (n > WS_FRAME_MAX_CONTROL_PAYLOAD - 2) {
        n = WS_FRAME_MAX_CONTROL_PAYLOAD - 2;
        while (n > 0 && ((uint8_t)reason[n] & 0xC0) == 0x80)
            n--;
    }
    if (n > 0)
        memcpy(out + 2, reason, n);
    return 2 + n;
}
