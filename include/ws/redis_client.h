/* A pooled Redis client on the server's libev loop: hiredis's async API with its libev adapter.
 * Requests (one command, or several sent in one round trip) go out on the pool's connections,
 * several in flight on one connection (Redis answers in order), blocking commands on one of
 * their own. Subscriptions share one more connection. Callback-based: it knows nothing of Lua,
 * timeouts or what waits for the answer. The URL parsing and the connection set-up are shared
 * with the Redis bus (bus_redis.c). */
#ifndef WS_REDIS_CLIENT_H
#define WS_REDIS_CLIENT_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

struct redisAsyncContext;
struct ws_redis;
struct ws_redis_req;
struct ws_redis_sub;

#define WS_REDIS_MAX_POOL 1024

/* Where a Redis listens: "redis://[[user]:password@]host[:port][/db]", "host[:port]" (port 6379)
 * or "unix:/path/to/socket[?db=N]". */
struct ws_redis_addr {
    char host[256]; /* empty for a Unix socket */
    int port;
    char path[108]; /* the Unix socket, or empty */
    char user[64];  /* empty: AUTH password only (Redis < 6 style) */
    char password[256];
    int db; /* SELECT db when > 0 */
};

/* Parses url into addr. 0, or WS_E_INVAL for a malformed URL, a port outside 1..65535, a db
 * outside 0..65535 or a part too long. */
int ws_redis_parse_url(const char *url, struct ws_redis_addr *addr);

/* "host:port" or the socket path, for messages. */
void ws_redis_addr_name(const struct ws_redis_addr *addr, char *out, size_t cap);

typedef void (*ws_redis_setup_fn)(struct redisAsyncContext *ac, void *reply, void *privdata);

/* Starts a non-blocking connection to addr attached to loop and queues its AUTH and SELECT (each
 * answered to setup with privdata; setup may be NULL); *nsetup says how many were queued. Returns
 * NULL with err filled when the connection cannot even start. The caller owns the context. */
struct redisAsyncContext *ws_redis_connect(struct ev_loop *loop, const struct ws_redis_addr *addr,
                                           ws_redis_setup_fn setup, void *privdata, int *nsetup,
                                           char *err, size_t errlen);

/* Reconnecting: starts t (not already active) after *backoff seconds and doubles *backoff, up to
 * WS_REDIS_BACKOFF_MAX. A success sets *backoff back to WS_REDIS_BACKOFF_MIN. */
#define WS_REDIS_BACKOFF_MIN 0.1
#define WS_REDIS_BACKOFF_MAX 5.0
void ws_redis_retry_later(struct ev_loop *loop, ev_timer *t, double *backoff);

/* ---- replies ---- */

enum ws_redis_kind {
    WS_REDIS_STRING,  /* bulk string */
    WS_REDIS_STATUS,  /* +OK */
    WS_REDIS_INTEGER, /* :1 */
    WS_REDIS_NIL,     /* $-1 or *-1 */
    WS_REDIS_ARRAY,   /* len elements */
    WS_REDIS_ERROR,   /* -ERR ...: str holds the text */
};

/* One reply, copied out of hiredis: owned by the request's result. */
struct ws_redis_value {
    enum ws_redis_kind kind;
    long long integer;
    size_t len;                      /* bytes of str, or elements */
    char *str;                       /* STRING, STATUS, ERROR: len bytes and a NUL */
    struct ws_redis_value *elements; /* ARRAY */
};

/* What came back: ok and n replies in the order of the commands, or not ok and err (the
 * connection failed or closed: the message names the server). Owned by the callback, which
 * frees it with ws_redis_result_free. */
struct ws_redis_result {
    bool ok;
    size_t n;
    struct ws_redis_value *values;
    char err[256];
};

typedef void (*ws_redis_done_fn)(void *ud, struct ws_redis_result *res);
typedef void (*ws_redis_message_fn)(void *ud, const char *channel, size_t channel_len,
                                    const char *msg, size_t msg_len);

/* Frees what res holds (not res itself). */
void ws_redis_result_free(struct ws_redis_result *res);

/* ---- the pool ---- */

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

/* Calls fn for every message on channel until ws_redis_unsubscribe; on the subscription
 * connection, which reconnects with back-off and subscribes again. */
struct ws_redis_sub *ws_redis_subscribe(struct ws_redis *r, const char *channel, size_t len,
                                        ws_redis_message_fn fn, void *ud);

/* Ends s (also from inside its own fn) and frees it. */
void ws_redis_unsubscribe(struct ws_redis_sub *s);

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
