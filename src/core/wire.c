/* A socket behind its transport, with its watcher and send queue. No protocol here: what the
 * bytes mean is the connection's business. */
#include "ws/wire.h"

#include "ws/err.h"

#include <assert.h>
#include <unistd.h>

#define IOV_BATCH 64

void ws_wire_init(struct ws_wire *w, struct ev_loop *loop, int fd,
                  const struct ws_transport_ops *transport, void *transport_state,
                  void (*cb)(struct ev_loop *loop, ev_io *io, int revents), void *data)
{
    w->transport = transport;
    w->transport_state = transport_state;
    ws_outq_init(&w->out);
    w->secured = w->reading_paused = w->reading_held = w->wr_shut = false;
    ev_io_init(&w->io, cb, fd, EV_READ);
    w->io.data = data;
    ev_io_start(loop, &w->io);
}

void ws_wire_rewatch(struct ws_wire *w, struct ev_loop *loop, int events)
{
    ev_io_stop(loop, &w->io);
    ev_io_set(&w->io, w->io.fd, events);
    if (events)
        ev_io_start(loop, &w->io);
}

int ws_wire_secure(struct ws_wire *w, struct ev_loop *loop)
{
    if (w->secured)
        return 0;
    int rc = w->transport->handshake(w->transport_state);
    if (rc == 0) {
        w->secured = true;
        ws_wire_watch(w, loop, w->out.bytes > 0);
        return 0;
    }
    if (rc == WS_E_AGAIN || rc == WS_E_WANT_WRITE) {
        ws_wire_watch(w, loop, rc == WS_E_WANT_WRITE);
        return WS_E_AGAIN;
    }
    return rc;
}

ssize_t ws_wire_read(struct ws_wire *w, struct ev_loop *loop, uint8_t *buf, size_t cap)
{
    ssize_t n = w->transport->read(w->transport_state, w->io.fd, buf, cap);
    if (n == WS_E_WANT_WRITE) {
        ws_wire_watch(w, loop, true);
        return WS_E_AGAIN;
    }
    return n;
}

bool ws_wire_pending(const struct ws_wire *w)
{
    return w->transport->pending(w->transport_state);
}

void ws_wire_write(struct ws_wire *w, struct ws_chunk_pool *pool, const uint8_t *hdr, size_t hlen,
                   const uint8_t *data, size_t len, uint64_t *bytes_out)
{
    struct iovec iov[2] = {{(void *)hdr, hlen}, {(void *)data, len}};
    ssize_t n = w->secured ? w->transport->writev(w->transport_state, w->io.fd, iov, 2) : 0;
    size_t done = n > 0 ? (size_t)n : 0;
    *bytes_out += done;
    if (done < hlen) {
        ws_outq_append(&w->out, pool, hdr + done, hlen - done);
        done = 0;
    } else {
        done -= hlen;
    }
    ws_outq_append(&w->out, pool, data + done, len - done);
}

static int flush(struct ws_wire *w, struct ev_loop *loop, struct ws_chunk_pool *pool,
                 uint64_t *bytes_out, bool last)
{
    ssize_t (*write)(void *, int, const struct iovec *, int) =
        last && w->transport->writev_last ? w->transport->writev_last : w->transport->writev;
    while (w->out.bytes && !w->wr_shut) {
        struct iovec iov[IOV_BATCH];
        int n = ws_outq_iov(&w->out, iov, IOV_BATCH);
        ssize_t written = write(w->transport_state, w->io.fd, iov, n);
        if (written == WS_E_AGAIN) {
            ws_wire_watch(w, loop, true);
            return WS_E_AGAIN;
        }
        if (written < 0)
            return (int)written;
        *bytes_out += (uint64_t)written;
        ws_outq_consume(&w->out, pool, (size_t)written);
    }
    if (w->out.bytes && w->wr_shut)
        ws_outq_clear(&w->out, pool);
    return 0;
}

int ws_wire_flush(struct ws_wire *w, struct ev_loop *loop, struct ws_chunk_pool *pool,
                  uint64_t *bytes_out)
{
    return flush(w, loop, pool, bytes_out, false);
}

int ws_wire_flush_last(struct ws_wire *w, struct ev_loop *loop, struct ws_chunk_pool *pool,
                       uint64_t *bytes_out)
{
    return flush(w, loop, pool, bytes_out, true);
}

void ws_wire_shutdown(struct ws_wire *w)
{
    w->transport->shutdown(w->transport_state, w->io.fd);
    w->wr_shut = true;
}

void ws_wire_close(struct ws_wire *w, struct ev_loop *loop, struct ws_chunk_pool *pool)
{
    ev_io_stop(loop, &w->io);
    close(w->io.fd);
    ev_io_set(&w->io, -1, 0);
    ws_outq_clear(&w->out, pool);
}

void ws_wire_free(struct ws_wire *w, struct ws_chunk_pool *pool)
{
    assert(w->io.fd < 0);
    ws_outq_clear(&w->out, pool);
    w->transport->free(w->transport_state);
}
