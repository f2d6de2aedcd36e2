/* A connection's output and its end: the raw buffer (request, control frames), the queue of data
 * messages written with sendmsg, errors counted, a connection killed or failed (and restarted in
 * connect mode). Writing through TLS is tls.c's. */
#include "wsbench.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

const char *const ERR_NAMES[] = {
#define X(id, name) name,
    WB_ERRORS(X)
#undef X
};

void wb_io_want(struct conn *c, int events)
{
    if (c->events == events)
        return;
    ev_io_stop(c->b->loop, &c->io);
    ev_io_set(&c->io, c->fd, events);
    ev_io_start(c->b->loop, &c->io);
    c->events = events;
}

void wb_err_add(struct bench *b, enum wb_err e, struct conn *c, const char *what)
{
    if (b->errors[e]++ < 5)
        fprintf(stderr, "wsbench: %s error on connection %ld: %s\n", ERR_NAMES[e],
                c ? (long)(c - b->conns) : -1L, what);
}

void wb_conn_kill(struct conn *c)
{
    struct bench *b = c->b;
    if (c->ssl) { /* no close_notify: the server closes first, or we are giving up */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    c->tout_len = c->tout_off = 0;
    c->read_wants_write = false;
    if (c->inf)
        inflateReset(c->inf);
    c->zmsg_len = 0;
    c->zstream = false;
    if (c->fd >= 0) {
        ev_io_stop(b->loop, &c->io);
        close(c->fd);
        c->fd = -1;
    }
    if (c->state == CS_CONNECTING || c->state == CS_TLS || c->state == CS_HANDSHAKE)
        b->opening--;
    c->state = CS_DEAD;
    c->events = 0;
    c->raw_len = 0;
    c->q_len = 0;
    c->q_off = 0;
    if (c->role == ROLE_SUB && c->subscribed) {
        b->subs_live--;
        c->subscribed = false;
        wb_pub_send_more(b); /* fewer acknowledgements are now enough */
    }
}

void wb_conn_fail(struct conn *c, enum wb_err e, const char *what)
{
    struct bench *b = c->b;
    wb_err_add(b, e, c, what);
    wb_conn_kill(c);
    if (c->role == ROLE_CYCLE && b->running && !b->finished)
        wb_conn_start(b, c);
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
