/* Name lookups that never block the loop: getaddrinfo(3) runs on a short-lived thread of its
 * own and the answer comes back on the loop through a pipe watched by libev. One lookup per
 * call; no cache (the system's resolver has its own). */
#ifndef WS_RESOLVE_H
#define WS_RESOLVE_H

#include <ev.h>
#include <netdb.h>

struct ws_resolve;

/* Called once on the loop with the addresses (the callee owns them: freeaddrinfo) or NULL and
 * getaddrinfo's error (gai_strerror), never from inside ws_resolve_start. */
typedef void (*ws_resolve_fn)(void *ud, struct addrinfo *res, int gai_err);

/* Starts looking up host and port (numeric service) for a TCP stream socket, any family.
 * Returns the lookup, or NULL with errno set when no thread or pipe can be made. */
struct ws_resolve *ws_resolve_start(struct ev_loop *loop, const char *host, const char *port,
                                    ws_resolve_fn done, void *ud);

/* Forgets r: its callback does not run; the thread, if still inside getaddrinfo, frees what is
 * left when it returns. */
void ws_resolve_cancel(struct ws_resolve *r);

#endif
