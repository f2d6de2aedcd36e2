/* A pooled Redis client on the server's libev loop: hiredis's async API with its libev adapter.
 * Requests (one command, or several sent in one round trip) go out on the pool's connections,
 * several in flight on one connection (Redis answers in order), blocking commands on one of
 * their own. Subscriptions share one more connection. Callback-based: it knows nothing of Lua,
 * timeouts or what waits for the answer. Addresses and connecting are redis_dial.h's (shared with
 * the Redis bus), the replies redis_reply.h's, the subscriptions redis_sub.h's. */
#ifndef WS_REDIS_CLIENT_H
#define WS_REDIS_CLIENT_H

#include "ws/redis_dial.h"
#include "ws/redis_reply.h"
#include "ws/redis_sub.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

struct ws_redis;
struct ws_redis_req;

#define WS_REDIS_MAX_POOL 1024

/* ---- the pool ---- */

/* A request's end: its replies, or why there are none (struct ws_redis_result, redis_reply.h). */
typedef void (*ws_redis_done_fn)(void *ud, struct ws_redis_result *res);

/* A client for addr on loop with at most pool (1..WS_REDIS_MAX_POOL) command connections, each
 * made when first needed; connecting gives up after connect_timeout seconds. */
struct ws_redis *ws_redis_new(struct ev_loop *loop, const struct ws_redis_addr *addr, size_t pool,
                              double connect_timeout);

/* Closes every connection and frees r; no callback runs any more. NULL is a no-op. */
void ws_redis_free(struct ws_redis *r);

/* Sends ncmds commands in one round trip: command i has argc[i] arguments, taken in turn from
 * argv/argvlen (copied). They go on an idle connection; when there is none, on a new one while
 * the pool may grow, else on the least loaded connection (at most 64 requests in flight each).
 * A request holding a blocking command (BLPOP, BRPOP, BLMOVE, BZPOPMIN, XREAD, WAIT, ...) waits
 * for an idle connection and has it to itself (reserving the least loaded one so that it empties).
 * done runs once with the replies, from the loop, never from inside this call. Returns the
 * request, or NULL with err filled when Redis is known to be unreachable (no connection, and one
 * failed less than the back-off ago: 0.1 s, doubling up to 5 s, reset by a success). */
struct ws_redis_req *ws_redis_command(struct ws_redis *r, size_t ncmds, const int *argc,
                                      const char *const *argv, const size_t *argvlen,
                                      ws_redis_done_fn done, void *ud, char *err, size_t errlen);

/* Forgets req: its callback never runs. A request still waiting for a connection is dropped. One
 * already sent stays on its connection until its replies arrive, and they are discarded; with
 * close (a timeout), when nothing at all came back on that connection since req went out, Redis
 * is not answering it: the connection is closed (its other requests fail) and leaves the pool. */
void ws_redis_cancel(struct ws_redis_req *req, bool close);

/* Connections open or opening, and those with requests in flight. */
size_t ws_redis_open(const struct ws_redis *r);
size_t ws_redis_busy(const struct ws_redis *r);

/* The calls a pool answers to, so that a stand-in (an in-memory Redis for app specs) can take the
 * place of hiredis's: the binding reaches pools only through these. */
struct ws_redis_ops {
    struct ws_redis *(*create)(struct ev_loop *loop, const struct ws_redis_addr *addr, size_t pool,
                               double connect_timeout);
    void (*free)(struct ws_redis *r);
    struct ws_redis_req *(*command)(struct ws_redis *r, size_t ncmds, const int *argc,
                                    const char *const *argv, const size_t *argvlen,
                                    ws_redis_done_fn done, void *ud, char *err, size_t errlen);
    void (*cancel)(struct ws_redis_req *req, bool close);
    struct ws_redis_sub *(*subscribe)(struct ws_redis *r, const char *channel, size_t len,
                                      ws_redis_message_fn fn, void *ud);
    void (*unsubscribe)(struct ws_redis_sub *s);
    size_t (*open)(const struct ws_redis *r);
    size_t (*busy)(const struct ws_redis *r);
};

/* The functions above: hiredis on the loop. */
extern const struct ws_redis_ops ws_redis_hiredis;

#endif
