/* One socket's bytes: the transport (plain TCP or TLS) and its handshake, the libev watcher whose
 * events follow what the owner wants (read unless paused, write while output is stuck), the send
 * queue written with writev, the half-close. It knows nothing of HTTP or WebSocket: the
 * connection above decides what to queue and what the bytes read mean. */
#ifndef WS_WIRE_H
#define WS_WIRE_H

#include "ws/outq.h"
#include "ws/transport.h"

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct ws_wire {
    const struct ws_transport_ops *transport;
    void *transport_state; /* owned */
    ev_io io;              /* io.fd is the socket, -1 once closed */
    struct ws_outq out;
    bool secured;        /* the transport's own handshake (TLS) is done */
    bool reading_paused; /* the owner stopped reading (back-pressure) */
    bool reading_held;   /* the app stopped reading (its handlers are behind) */
    bool wr_shut;        /* our sending side is shut: queued bytes are dropped */
};

/* Takes fd and the transport state, and starts watching for reads; cb gets data in w->io.data. */
void ws_wire_init(struct ws_wire *w, struct ev_loop *loop, int fd,
                  const struct ws_transport_ops *transport, void *transport_state,
                  void (*cb)(struct ev_loop *loop, ev_io *io, int revents), void *data);

/* Sets the watcher's events (what ws_wire_watch decided changed). */
void ws_wire_rewatch(struct ws_wire *w, struct ev_loop *loop, int events);

/* Watches for reading unless paused or held, and for writing when want_write. No-op once closed.
 * Inline:
 * it runs after every write and nearly always finds nothing to change. */
static inline void ws_wire_watch(struct ws_wire *w, struct ev_loop *loop, bool want_write)
{
    if (w->io.fd < 0)
        return;
    int events = (w->reading_paused || w->reading_held ? 0 : EV_READ) | (want_write ? EV_WRITE : 0);
    if (events != (w->io.events & (EV_READ | EV_WRITE)) || !ev_is_active(&w->io))
        ws_wire_rewatch(w, loop, events);
}

/* Advances the transport's handshake: 0 once done, WS_E_AGAIN while it waits for the socket
 * (the watcher is set for what it waits on), or the transport's error. */
int ws_wire_secure(struct ws_wire *w, struct ev_loop *loop);

/* Reads up to cap bytes: > 0 bytes read, 0 at end of stream, WS_E_AGAIN (nothing now; the
 * watcher is set when the transport needs to write first), or an error. */
ssize_t ws_wire_read(struct ws_wire *w, struct ev_loop *loop, uint8_t *buf, size_t cap);

/* True when the transport holds bytes already read from the socket (TLS records). */
bool ws_wire_pending(const struct ws_wire *w);

/* Writes hdr then data at once when the transport is ready, queueing whatever was not written
 * (meant for an empty queue: large messages skip the copy). Adds the bytes written to
 * *bytes_out. */
void ws_wire_write(struct ws_wire *w, struct ws_chunk_pool *pool, const uint8_t *hdr, size_t hlen,
                   const uint8_t *data, size_t len, uint64_t *bytes_out);

/* Writes the queue until it is empty (0), the socket is full (WS_E_AGAIN: write events are
 * watched), or the transport fails (its error). Adds the bytes written to *bytes_out. After
 * ws_wire_shutdown the queue is dropped instead. */
int ws_wire_flush(struct ws_wire *w, struct ev_loop *loop, struct ws_chunk_pool *pool,
                  uint64_t *bytes_out);

/* ws_wire_flush for the socket's last bytes: once this returns 0 the caller half-closes the
 * wire (ws_wire_shutdown), which sends what the transport held back with the FIN (plain TCP:
 * one segment), then closes it. */
int ws_wire_flush_last(struct ws_wire *w, struct ev_loop *loop, struct ws_chunk_pool *pool,
                       uint64_t *bytes_out);

/* Ends our sending side (TLS close_notify, then FIN); reading goes on. */
void ws_wire_shutdown(struct ws_wire *w);

/* Stops the watcher, closes the socket and drops the queue. */
void ws_wire_close(struct ws_wire *w, struct ev_loop *loop, struct ws_chunk_pool *pool);

/* Frees the queue and the transport state; the wire must be closed. */
void ws_wire_free(struct ws_wire *w, struct ws_chunk_pool *pool);

#endif
