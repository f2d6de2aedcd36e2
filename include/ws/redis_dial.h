/* Reaching a Redis: its URL parsed into an address, a hiredis async connection started on the
 * loop with its AUTH and SELECT queued, the back-off between attempts. Shared by the pools
 * (redis_client.h) and the Redis bus (bus_redis.c); what runs on the connection is theirs. */
#ifndef WS_REDIS_DIAL_H
#define WS_REDIS_DIAL_H

#include <ev.h>
#include <stddef.h>

struct redisAsyncContext;

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

/* The back-off to wait now: returns *backoff and doubles it, up to WS_REDIS_BACKOFF_MAX. */
double ws_redis_next_backoff(double *backoff);

#endif
