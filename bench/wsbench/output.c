/* A connection's output: the watcher's events, the raw buffer (request, control frames) and the
 * queue of data messages, written with one sendmsg per batch. Writing through TLS is tls.c's;
 * a failed write ends the connection through conn.c. */
#include "wsbench.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

void wb_io_want(struct conn *c, int events)
{
    if (c->events == events)
        return;
    ev_io_stop(c->b->loop, &c->io);
    ev_io_set(&c->io, c->fd, events);
    ev_io_start(c->b->loop, &c->io);
    c->events = events;
}

bool wb_raw_append(struct conn *c, const void *data, size_t len)
{
    if (c->raw_len + len > sizeof c->raw)
        return false;
    memcpy(c->raw + c->raw_len, data, len);
    c->raw_len += len;
    return true;
}

bool wb_raw_frame(struct conn *c, uint8_t opcode, const uint8_t *payload, size_t len)
{
    uint8_t f[14 + 125];
    size_t h = wb_frame_head(f, opcode, len);
    wb_mask_copy(f + h, payload, len, 0);
    return wb_raw_append(c, f, h + len);
}

int wb_build_iov(struct conn *c, struct iovec *iov, size_t *raw_now)
{
    struct bench *b = c->b;
    size_t tail_len = b->wire_tail_len;
    const uint8_t *tail = b->wire_tail;
    int n = 0;
    *raw_now = 0;
    if (c->raw_len > 0 && c->q_off == 0) {
        *raw_now = c->raw_len;
        iov[n++] = (struct iovec){c->raw, c->raw_len};
    }
    for (unsigned k = 0; k < c->q_len && n + 2 <= WB_IOV_MAX; k++) {
        struct outmsg *m = &c->q[(c->q_head + k) % c->q_cap];
        size_t skip = k == 0 ? c->q_off : 0;
        if (skip < m->head_len) {
            iov[n++] = (struct iovec){m->head + skip, m->head_len - skip};
            skip = 0;
        } else {
            skip -= m->head_len;
        }
        if (tail_len > skip)
            iov[n++] = (struct iovec){(void *)(tail + skip), tail_len - skip};
    }
    return n;
}

void wb_advance(struct conn *c, size_t raw_now, size_t w)
{
    struct bench *b = c->b;
    size_t left = w;
    if (b->measuring)
        b->win_out += w;
    if (raw_now) {
        size_t r = left < raw_now ? left : raw_now;
        memmove(c->raw, c->raw + r, c->raw_len - r);
        c->raw_len -= r;
        left -= r;
    }
    while (left > 0) {
        struct outmsg *m = &c->q[c->q_head];
        size_t rest = m->head_len + b->wire_tail_len - c->q_off;
        if (left < rest) {
            c->q_off += left;
            break;
        }
        left -= rest;
        c->q_off = 0;
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
    }
}

bool wb_has_output(const struct conn *c)
{
    return c->raw_len || c->q_len || c->tout_off < c->tout_len;
}

int wb_flush(struct conn *c)
{
    struct bench *b = c->b;
    if (c->ssl)
        return wb_flush_tls(c);
    for (;;) {
        struct iovec iov[WB_IOV_MAX];
        size_t total = 0, raw_now;
        int n = wb_build_iov(c, iov, &raw_now);
        if (n == 0) {
            if (c->events & EV_WRITE)
                wb_io_want(c, EV_READ);
            return 0;
        }
        for (int i = 0; i < n; i++)
            total += iov[i].iov_len;
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                wb_io_want(c, EV_READ | EV_WRITE);
                return 0;
            }
            wb_conn_fail(c,
                         c->state == CS_HANDSHAKE && c->raw_len == b->request_len ? ERR_CONNECT
                                                                                  : ERR_CLOSED,
                         strerror(errno));
            return -1;
        }
        wb_advance(c, raw_now, (size_t)w);
        if ((size_t)w < total) {
            wb_io_want(c, EV_READ | EV_WRITE);
            return 0;
        }
    }
}

void wb_enqueue(struct conn *c, uint64_t seq, uint64_t ts)
{
    struct bench *b = c->b;
    if (c->q_len == c->q_cap) {
        wb_err_add(b, ERR_PROTOCOL, c, "internal: send queue full");
        return;
    }
    uint8_t pre[WB_STORED_HEAD + WB_PREFIX_MAX];
    size_t k = 0;
    if (b->o.deflate) {
        pre[0] = 0x00; /* BFINAL 0, BTYPE 00, then padding to the byte boundary */
        pre[1] = (uint8_t)b->span;
        pre[2] = (uint8_t)(b->span >> 8);
        pre[3] = (uint8_t)~pre[1];
        pre[4] = (uint8_t)~pre[2];
        k = WB_STORED_HEAD;
    }
    wb_span_put(b, pre + k, seq, ts, (uint64_t)(c - b->conns));
    struct outmsg *m = &c->q[(c->q_head + c->q_len) % c->q_cap];
    memcpy(m->head, b->head, b->head_len);
    wb_mask_copy(m->head + b->head_len, pre, k + b->span, 0);
    m->head_len = (uint32_t)(b->head_len + k + b->span);
    c->q_len++;
    b->sent_total++;
}
