/* Server frames in: the incremental decoder with RFC 6455 §5.2 checks, control frames answered,
 * message bytes kept and checked against the template, whole messages handed to the mode.
 * Inflating compressed messages is deflate.c's. */
#include "wsbench.h"

#include <stdlib.h>
#include <string.h>

static void on_message(struct conn *c, uint64_t t)
{
    switch (c->role) {
    case ROLE_ECHO:
        wb_on_echo_reply(c, t);
        break;
    case ROLE_SUB:
        wb_on_delivery(c, t);
        break;
    case ROLE_CHAT:
        wb_on_chat_message(c, t);
        break;
    default:
        wb_conn_fail(c, ERR_MISMATCH, "unexpected data message");
        break;
    }
}

/* Compares message bytes [off, off+len) with the template where the check applies: everything
 * after the span (--verify full), or its first and last 64 bytes (--verify sample). */
static void check_chunk(struct conn *c, uint64_t off, const uint8_t *data, size_t len)
{
    struct bench *b = c->b;
    struct parser *p = &c->p;
    uint64_t lo = off, hi = off + len;
    if (lo < b->span)
        lo = b->span;
    if (hi > b->o.size)
        hi = b->o.size;
    if (lo >= hi)
        return;
    if (b->o.verify_full) {
        if (memcmp(data + (lo - off), b->payload + lo, hi - lo) != 0)
            p->mismatch = true;
        return;
    }
    uint64_t win[2][2] = {{b->span, b->span + 64}, {b->o.size - 64, b->o.size}};
    for (int i = 0; i < 2; i++) {
        uint64_t a = lo > win[i][0] ? lo : win[i][0], z = hi < win[i][1] ? hi : win[i][1];
        if (a < z && memcmp(data + (a - off), b->payload + a, z - a) != 0)
            p->mismatch = true;
    }
}

void wb_parser_reset(struct parser *p)
{
    memset(p, 0, sizeof *p);
    p->hdr_need = 2;
}

/* A whole control frame arrived. Returns -1 when the connection is gone. */
static int on_control(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    struct parser *p = &c->p;
    switch (p->opcode) {
    case 0x9: /* RFC 6455 §5.5.3: answer a ping with a pong carrying its payload */
        if (!wb_raw_frame(c, 0xA, p->ctl, p->ctl_len))
            wb_err_add(b, ERR_PROTOCOL, c, "too many pings queued");
        return 0;
    case 0xA:
        return 0;
    default: /* close */
        if (c->role == ROLE_CYCLE && !c->got_close) {
            /* RFC 6455 §5.5.1: the reply echoes our status code 1000 */
            if (p->ctl_len < 2 || p->ctl[0] != 0x03 || p->ctl[1] != 0xe8)
                wb_err_add(b, ERR_MISMATCH, c, "close reply without status 1000");
            c->got_close = true;
            wb_progress(b, t);
            return 0;
        }
        wb_conn_fail(c, ERR_CLOSED, "close frame from the server");
        return -1;
    }
}

/* Header complete: RFC 6455 §5.2 checks on a server frame. Returns -1 on a protocol error. */
static int header_done(struct conn *c)
{
    struct parser *p = &c->p;
    uint8_t b0 = p->hdr[0], b1 = p->hdr[1];
    p->fin = b0 & 0x80;
    p->opcode = b0 & 0x0f;
    /* RFC 6455 §5.2: RSV bits only for a negotiated extension; RFC 7692 §6: RSV1 marks a
     * compressed message on its first frame, never on a continuation or control frame */
    bool rsv1 = b0 & 0x40;
    if ((b0 & 0x30) || (rsv1 && (!c->pmd || p->opcode == 0 || p->opcode >= 0x8)))
        goto bad;
    if (b1 & 0x80) /* RFC 6455 §5.1: a server must not mask its frames */
        goto bad;
    uint64_t len = b1 & 0x7f;
    if (len == 126)
        len = (uint64_t)p->hdr[2] << 8 | p->hdr[3];
    else if (len == 127)
        for (int i = 0; i < 8; i++)
            len = (i ? len << 8 : 0) | p->hdr[2 + i];
    if (p->opcode >= 0x8) {
        /* RFC 6455 §5.5: control frames are <= 125 bytes and not fragmented */
        if (p->opcode > 0xA || len > 125 || !p->fin)
            goto bad;
        p->ctl_len = 0;
    } else if (p->opcode == 0) {
        if (!p->in_message)
            goto bad;
    } else if (p->opcode <= 2) {
        if (p->in_message) /* RFC 6455 §5.4: no new message inside a fragmented one */
            goto bad;
        p->in_message = true;
        p->msg_opcode = p->opcode;
        p->msg_off = 0;
        p->mismatch = false;
        p->compressed = rsv1;
    } else {
        goto bad;
    }
    if (p->opcode < 0x8 && p->msg_off + len > WB_MAX_MESSAGE)
        goto bad;
    p->remaining = len;
    p->in_payload = true;
    return 0;
bad:
    wb_conn_fail(c, ERR_PROTOCOL, "invalid frame header from the server");
    return -1;
}

int wb_consume(struct conn *c, const uint8_t *data, size_t n)
{
    struct parser *p = &c->p;
    if (p->msg_off + n > WB_MAX_MESSAGE) {
        wb_conn_fail(c, ERR_PROTOCOL, "message larger than 64 MiB");
        return -1;
    }
    if (c->role == ROLE_CHAT) {
        if (p->msg_off < WB_CHAT_CAP) {
            size_t k = WB_CHAT_CAP - (size_t)p->msg_off;
            memcpy(c->msg + p->msg_off, data, k < n ? k : n);
        }
    } else {
        if (p->msg_off < WB_PREFIX_MAX) {
            size_t k = WB_PREFIX_MAX - (size_t)p->msg_off;
            memcpy(p->prefix + p->msg_off, data, k < n ? k : n);
        }
        check_chunk(c, p->msg_off, data, n);
    }
    p->msg_off += n;
    return 0;
}

static int frame_done(struct conn *c, uint64_t t)
{
    struct parser *p = &c->p;
    p->in_payload = false;
    p->hdr_have = 0;
    p->hdr_need = 2;
    if (p->opcode >= 0x8)
        return on_control(c, t);
    if (!p->fin)
        return 0;
    p->in_message = false;
    if (p->compressed) {
        static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff}; /* RFC 7692 §7.2.2 */
        struct memo *m = NULL;
        if (!c->zstream) {
            uint64_t h = wb_memo_hash(c->zmsg, c->zmsg_len);
            m = &c->b->memo[h % WB_MEMO_SLOTS];
            if (m->valid && m->hash == h && m->zlen == c->zmsg_len &&
                memcmp(m->z, c->zmsg, c->zmsg_len) == 0) {
                c->b->memo_hits++;
                p->msg_off = m->len;
                memcpy(p->prefix, m->prefix, WB_PREFIX_MAX);
                p->mismatch = m->mismatch;
                c->zmsg_len = 0;
                on_message(c, t);
                return c->state == CS_OPEN ? 0 : -1;
            }
            c->b->memo_misses++;
            if (wb_inflate_some(c, c->zmsg, c->zmsg_len) < 0)
                return -1;
            m->valid = false;
            m->hash = h;
            if (m->zcap < c->zmsg_len) {
                free(m->z);
                m->z = wb_xcalloc(c->zmsg_len, 1);
                m->zcap = c->zmsg_len;
            }
            memcpy(m->z, c->zmsg, c->zmsg_len);
            m->zlen = c->zmsg_len;
        }
        if (wb_inflate_some(c, tail, 4) < 0)
            return -1;
        if (c->pmd_reset) /* server_no_context_takeover: the next message starts afresh */
            inflateReset(c->inf);
        if (m) {
            m->len = p->msg_off;
            memcpy(m->prefix, p->prefix, WB_PREFIX_MAX);
            m->mismatch = p->mismatch;
            m->valid = true;
        }
        c->zmsg_len = 0;
        c->zstream = false;
    }
    on_message(c, t);
    return c->state == CS_OPEN ? 0 : -1;
}

int wb_parse(struct conn *c, const uint8_t *data, size_t len, uint64_t t)
{
    struct parser *p = &c->p;
    while (len > 0) {
        if (!p->in_payload) {
            while (len > 0 && p->hdr_have < p->hdr_need) {
                p->hdr[p->hdr_have++] = *data++;
                len--;
                if (p->hdr_have == 2) {
                    unsigned l7 = p->hdr[1] & 0x7f;
                    p->hdr_need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
                }
            }
            if (p->hdr_have < p->hdr_need)
                return 0;
            if (header_done(c) < 0)
                return -1;
            if (p->remaining == 0 && frame_done(c, t) < 0)
                return -1;
            continue;
        }
        size_t n = p->remaining < len ? (size_t)p->remaining : len;
        if (p->opcode >= 0x8) {
            memcpy(p->ctl + p->ctl_len, data, n);
            p->ctl_len += (unsigned)n;
        } else if ((p->compressed ? wb_compressed_in(c, data, n) : wb_consume(c, data, n)) < 0) {
            return -1;
        }
        data += n;
        len -= n;
        p->remaining -= n;
        if (p->remaining == 0 && frame_done(c, t) < 0)
            return -1;
    }
    return 0;
}
