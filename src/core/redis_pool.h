/* The state of a Redis pool (struct ws_redis), shared by its two halves: the command connections
 * (redis_client.c) and the subscription connection (redis_sub.c). Not a contract: the API is
 * include/ws/redis_client.h and include/ws/redis_sub.h. */
#ifndef WS_REDIS_POOL_H
#define WS_REDIS_POOL_H

#include "ws/redis_client.h"

#include "redis_hiredis.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

struct rconn;

struct ws_redis {
    struct ev_loop *loop;
    struct ws_redis_addr addr;
    char name[300];
    size_t pool;
    double connect_timeout;
    struct rconn *conns; /* open or opening */
    size_t nconns;
    struct ws_redis_req *queue, *queue_tail;
    size_t nqueued;
    double retry_at; /* ws_clock_now before which no new connection is tried */
    double backoff;
    char last_err[512];
    ev_timer flush; /* answers the queue after a failed attempt, from the loop */
    /* subscriptions */
    redisAsyncContext *sub;
    bool sub_up;
    ev_timer sub_retry;
    double sub_backoff;
    struct ws_redis_sub *subs;
    int delivering; /* > 0 while fns run: unsubscribe only marks */
};

/* Sets up r's subscription state (no connection until the first subscription), for
 * ws_redis_new. */
void ws_redis_sub_setup(struct ws_redis *r);

/* Ends every subscription (no fn runs any more) and closes the subscription connection, for
 * ws_redis_free. */
void ws_redis_sub_close_all(struct ws_redis *r);

#endif
