/* The in-memory transport: two byte buffers and a prepare watcher that feeds the connection's
 * io watcher what a socket's readiness would (read while input waits or the client ended,
 * write while the client reads). Used by the testing kit; the server never makes one. */
#include "ws/mempipe.h"

#include "ws/buf.h"
#include "ws/err.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ws_mempipe {
    ev_prepare ready; /* first: the watcher's address is the pipe's */
    struct ev_loop *loop;
    ev_io *io;              /* the connection's watcher, NULL once the connection let go */
    struct ws_buf in, out;  /* client -> server, server -> client */
    size_t in_off, out_off; /* bytes already taken off the front */
    int hold_fd;            /* the write end keeping the watcher's descriptor inert */
    int refs;
    bool client_shut, server_shut, paused;
    uint64_t moved;
};

static void on_ready(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    struct ws_mempipe *p = (struct ws_mempipe *)w;
    if (!p->io || !ev_is_active(p->io))
        return;
    int events = 0;
    if ((p->io->events & EV_READ) && (p->in.len > p->in_off || p->client_shut))
        events |= EV_READ;
    if ((p->io->events & EV_WRITE) && !p->paused)
        events |= EV_WRITE;
    if (events)
        ev_feed_event(loop, p->io, events);
}

struct ws_mempipe *ws_mempipe_new(int *fd)
{
    int ends[2];
    if (pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0)
        return NULL;
    struct ws_mempipe *p = ws_xcalloc(1, sizeof(*p));
    ws_buf_init(&p->in);
    ws_buf_init(&p->out);
    p->hold_fd = ends[1];
    p->refs = 2;
    ev_prepare_init(&p->ready, on_ready);
    *fd = ends[0]; /* a pipe's read end is never writable, and never readable while we hold the
                      other end and write nothing */
    return p;
}

void ws_mempipe_attach(struct ws_mempipe *p, struct ev_loop *loop, ev_io *io)
{
    p->loop = loop;
    p->io = io;
    ev_prepare_start(loop, &p->ready);
}

static void compact(struct ws_buf *b, size_t *off)
{
    if (*off == b->len) {
        b->len = *off = 0;
    } else if (*off > 65536 && *off > b->len / 2) {
        memmove(b->data, b->data + *off, b->len - *off);
        b->len -= *off;
        *off = 0;
    }
}

void ws_mempipe_send(struct ws_mempipe *p, const void *data, size_t n)
{
    if (p->client_shut)
        return;
    ws_buf_append(&p->in, data, n);
}

void ws_mempipe_shutdown(struct ws_mempipe *p)
{
    p->client_shut = true;
}

void ws_mempipe_pause(struct ws_mempipe *p, bool paused)
{
    p->paused = paused;
}

const uint8_t *ws_mempipe_output(const struct ws_mempipe *p, size_t *len)
{
    *len = p->out.len - p->out_off;
    return p->out.data + p->out_off;
}

void ws_mempipe_take(struct ws_mempipe *p, size_t n)
{
    p->out_off += n < p->out.len - p->out_off ? n : p->out.len - p->out_off;
    compact(&p->out, &p->out_off);
}

bool ws_mempipe_ended(const struct ws_mempipe *p)
{
    return p->server_shut || !p->io;
}

uint64_t ws_mempipe_moved(const struct ws_mempipe *p)
{
    return p->moved;
}

static void unref(struct ws_mempipe *p)
{
    if (--p->refs > 0)
        return;
    ws_buf_reset(&p->in);
    ws_buf_reset(&p->out);
    free(p);
}

void ws_mempipe_release(struct ws_mempipe *p)
{
    if (p)
        unref(p);
}

/* ---- the server end: struct ws_transport_ops ---- */

static int mem_handshake(void *t)
{
    (void)t;
    return 0;
}

static ssize_t mem_read(void *t, int fd, void *buf, size_t n)
{
    (void)fd;
    struct ws_mempipe *p = t;
    size_t have = p->in.len - p->in_off;
    if (have == 0)
        return p->client_shut ? 0 : WS_E_AGAIN;
    if (n > have)
        n = have;
    memcpy(buf, p->in.data + p->in_off, n);
    p->in_off += n;
    p->moved += n;
    compact(&p->in, &p->in_off);
    return (ssize_t)n;
}

static ssize_t mem_writev(void *t, int fd, const struct iovec *iov, int n)
{
    (void)fd;
    struct ws_mempipe *p = t;
    if (p->paused)
        return WS_E_AGAIN;
    if (p->server_shut)
        return WS_E_IO;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        ws_buf_append(&p->out, iov[i].iov_base, iov[i].iov_len);
        total += iov[i].iov_len;
    }
    p->moved += total;
    return (ssize_t)total;
}

static bool mem_pending(void *t)
{
    struct ws_mempipe *p = t;
    return p->in.len > p->in_off;
}

static void mem_shutdown(void *t, int fd)
{
    (void)fd;
    ((struct ws_mempipe *)t)->server_shut = true;
}

static void mem_free(void *t)
{
    struct ws_mempipe *p = t;
    if (p->loop)
        ev_prepare_stop(p->loop, &p->ready);
    p->io = NULL;
    close(p->hold_fd);
    p->hold_fd = -1;
    unref(p);
}

const struct ws_transport_ops ws_transport_memory = {
    mem_handshake, mem_read, mem_writev, mem_pending, mem_shutdown, mem_free, NULL, true,
};
