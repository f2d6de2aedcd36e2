/* Reaching host:port without blocking the loop: the name lookup (getaddrinfo(3)) runs on a
 * short-lived thread of its own, its answer comes back through a pipe watched by libev, then a
 * non-blocking connect tries each address in turn. No cache (the system's resolver has its own);
 * addresses are tried in the resolver's order, not raced (RFC 8305 would). */
#ifndef WS_DIAL_H
#define WS_DIAL_H

#include <ev.h>

struct ws_dial;

/* Called once from the loop, never from inside ws_dial_start: fd is a connected non-blocking
 * TCP socket the callee now owns, or -1 with err saying why ("cannot resolve HOST: ...",
 * "cannot connect to HOST:PORT: Connection refused"). The dial is freed before the call. */
typedef void (*ws_dial_fn)(void *ud, int fd, const char *err);

/* Starts reaching host (a name or an address, IPv6 without brackets) on port. Returns the dial,
 * or NULL with errno set when no thread or pipe can be made. */
struct ws_dial *ws_dial_start(struct ev_loop *loop, const char *host, int port, ws_dial_fn done,
                              void *ud);

/* Stops d: its callback does not run. A lookup still inside getaddrinfo is left to its thread,
 * which frees what is left when it returns. */
void ws_dial_cancel(struct ws_dial *d);

#endif
