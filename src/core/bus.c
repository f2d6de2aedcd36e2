/* Bus message encoding and the worker side of the built-in hub. Hub frames are a 4-byte
 * big-endian length and one encoded message; a frame that cannot be written at once is queued
 * (bounded: beyond the cap messages are dropped and counted, never blocking the loop). */
#include "ws/bus.h"

#include "ws/err.h"
#include "ws/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HUB_QUEUE_MAX (64u * 1024 * 1024)
#define HUB_FRAME_MAX (256u * 1024 * 1024)

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

void ws_bus_encode(const struct ws_bus_msg *m, struct ws_buf *out)
{
    uint8_t hdr[WS_BUS_HEADER];
    put_be(hdr, m->origin, 8);
    hdr[8] = m->kind;
    hdr[9] = m->opcode;
    put_be(hdr + 10, m->topic_len, 2);
    ws_buf_append(out, hdr, sizeof(hdr));
    ws_buf_append(out, m->topic, m->topic_len);
    ws_buf_append(out, m->data, m->len);
}

int ws_bus_decode(const uint8_t *p, size_t n, struct ws_bus_msg *m)
{
    if (n < WS_BUS_HEADER)
        return WS_E_INVAL;
    m->origin = get_be(p, 8);
    m->kind = p[8];
    m->opcode = p[9];
    m->topic_len = (size_t)get_be(p + 10, 2);
    if (n - WS_BUS_HEADER < m->topic_len ||
        (m->kind != WS_BUS_BROADCAST && m->kind != WS_BUS_TOPIC))
        return WS_E_INVAL;
    m->topic = (const char *)p + WS_BUS_HEADER;
    m->data = p + WS_BUS_HEADER + m->topic_len;
    m->len = n - WS_BUS_HEADER - m->topic_len;
    return 0;
}

uint64_t ws_bus_new_origin(void)
{
    uint64_t v = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &v, sizeof(v)) != sizeof(v))
            v = 0;
        close(fd);
    }
    if (!v) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = (uint64_t)ts.tv_nsec * 2654435761u ^ (uint64_t)getpid() << 32 ^ (uint64_t)ts.tv_sec;
    }
    return v | 1;
}

/* ---- the hub, worker side ---- */

struct hub {
    struct ws_bus bus;
    struct ev_loop *loop;
    int fd;
    ev_io io;
    struct ws_buf in, out;
    bool closed;
};

static void hub_update(struct hub *h)
{
    int events = EV_READ | (h->out.len ? EV_WRITE : 0);
    if (h->closed || (events == (h->io.events & (EV_READ | EV_WRITE)) && ev_is_active(&h->io)))
        return;
    ev_io_stop(h->loop, &h->io);
    ev_io_set(&h->io, h->fd, events);
    ev_io_start(h->loop, &h->io);
}

static void hub_lost(struct hub *h)
{
    ws_log_msg(WS_LOG_ERROR, "bus_lost", "the master process went away");
    ev_io_stop(h->loop, &h->io);
    h->closed = true;
}

static void hub_flush(struct hub *h)
{
    while (h->out.len && !h->closed) {
        ssize_t w = send(h->fd, h->out.data, h->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                hub_lost(h);
            break;
        }
        ws_buf_consume(&h->out, (size_t)w);
    }
    hub_update(h);
}

static void hub_read(struct hub *h)
{
    uint8_t chunk[65536];
    ssize_t r = recv(h->fd, chunk, sizeof(chunk), 0);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        hub_lost(h);
        return;
    }
    if (r < 0)
        return;
    ws_buf_append(&h->in, chunk, (size_t)r);
    size_t off = 0;
    while (h->in.len - off >= 4) {
        size_t n = (size_t)get_be(h->in.data + off, 4);
        if (n > HUB_FRAME_MAX) {
            hub_lost(h);
            return;
        }
        if (h->in.len - off - 4 < n)
            break;
        struct ws_bus_msg m;
        if (ws_bus_decode(h->in.data + off + 4, n, &m) == 0 && m.origin != h->bus.origin) {
            h->bus.received++;
            h->bus.deliver(h->bus.ctx, &m);
        }
        off += 4 + n;
    }
    ws_buf_consume(&h->in, off);
}

static void on_hub_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct hub *h = w->data;
    if (revents & EV_READ)
        hub_read(h);
    if ((revents & EV_WRITE) && !h->closed)
        hub_flush(h);
}

static int hub_publish(struct ws_bus *bus, const struct ws_bus_msg *m)
{
    struct hub *h = (struct hub *)bus;
    size_t n = WS_BUS_HEADER + m->topic_len + m->len;
    if (h->closed || h->out.len + n + 4 > HUB_QUEUE_MAX) {
        bus->dropped++;
        return WS_E_IO;
    }
    uint8_t len[4];
    put_be(len, n, 4);
    ws_buf_append(&h->out, len, 4);
    ws_bus_encode(m, &h->out);
    bus->published++;
    hub_flush(h);
    return 0;
}

/* The hub relays everything to every worker: nothing to subscribe. */
static void hub_subscribe(struct ws_bus *bus, const char *topic, size_t len)
{
    (void)bus;
    (void)topic;
    (void)len;
}

static void hub_free(struct ws_bus *bus)
{
    struct hub *h = (struct hub *)bus;
    ev_io_stop(h->loop, &h->io);
    close(h->fd);
    ws_buf_reset(&h->in);
    ws_buf_reset(&h->out);
    free(h);
}

static const struct ws_bus_ops hub_ops = {hub_publish, hub_subscribe, hub_subscribe, hub_free};

struct ws_bus *ws_bus_hub_new(struct ev_loop *loop, int fd, ws_bus_deliver_fn deliver, void *ctx)
{
    struct hub *h = ws_xcalloc(1, sizeof(*h));
    h->bus.ops = &hub_ops;
    h->bus.origin = ws_bus_new_origin();
    h->bus.deliver = deliver;
    h->bus.ctx = ctx;
    h->loop = loop;
    h->fd = fd;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    ws_buf_init(&h->in);
    ws_buf_init(&h->out);
    ev_io_init(&h->io, on_hub_io, fd, EV_READ);
    h->io.data = h;
    ev_io_start(loop, &h->io);
    return &h->bus;
}
