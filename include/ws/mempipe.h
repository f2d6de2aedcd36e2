/* An in-memory connection: its server end is a transport behind the transport vtable
 * (ws_transport_memory), so the bytes a client writes here go through the real handshake, frame
 * and session code, and the client reads the server's real frames. Readiness is level-triggered
 * like a socket's: while bytes wait and the connection watches for them, its watcher is fed at
 * every loop iteration. No socket: the watcher's descriptor is an inert pipe end. */
#ifndef WS_MEMPIPE_H
#define WS_MEMPIPE_H

#include "ws/transport.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ws_mempipe;

/* The server end's transport; its state is the struct ws_mempipe. */
extern const struct ws_transport_ops ws_transport_memory;

/* A new pipe and, in *fd, the descriptor to give ws_conn_new with the pipe as transport state
 * (the connection owns the descriptor and one reference to the pipe; the caller the other).
 * NULL when no descriptor is left. */
struct ws_mempipe *ws_mempipe_new(int *fd);

/* After ws_conn_new: the connection's watcher, fed on loop while the pipe is ready for it. */
void ws_mempipe_attach(struct ws_mempipe *p, struct ev_loop *loop, ev_io *io);

/* The client writes n bytes (ignored after ws_mempipe_shutdown). */
void ws_mempipe_send(struct ws_mempipe *p, const void *data, size_t n);

/* The client ends its sending side: once the bytes sent are read, the server reads the end of
 * the stream. */
void ws_mempipe_shutdown(struct ws_mempipe *p);

/* The client stops (paused) or resumes reading: while paused the server's writes return
 * WS_E_AGAIN, so its send queue grows as with a client whose socket buffer is full. */
void ws_mempipe_pause(struct ws_mempipe *p, bool paused);

/* What the server wrote and the client has not taken yet (*len bytes). */
const uint8_t *ws_mempipe_output(const struct ws_mempipe *p, size_t *len);

/* The client takes n bytes of the output. */
void ws_mempipe_take(struct ws_mempipe *p, size_t n);

/* True once the server ended its sending side or let the connection go: no more output. */
bool ws_mempipe_ended(const struct ws_mempipe *p);

/* Bytes moved both ways since the pipe was made (the kit's "did anything happen"). */
uint64_t ws_mempipe_moved(const struct ws_mempipe *p);

/* The client lets the pipe go; freed once the connection let it go too. NULL is a no-op. */
void ws_mempipe_release(struct ws_mempipe *p);

#endif
