/* A PostgreSQL connection pool on the server's libev loop: connections made on demand with
 * libpq's asynchronous API (PQconnectStart/PQconnectPoll) up to a cap, handed to callers at once
 * or to waiters in line. What a connection does once handed out is pg_conn.h's. Callback-based;
 * knows nothing of Lua or of who waits. */
#ifndef WS_PG_CLIENT_H
#define WS_PG_CLIENT_H

#include "ws/pg_conn.h"

#include <ev.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

struct ws_pg_pool;
struct ws_pg_conn;
struct ws_pg_wait;

/* A connection for a waiter, or NULL with err set (connecting failed). Runs from the loop. */
typedef void (*ws_pg_conn_fn)(void *ud, struct ws_pg_conn *c, const char *err);

/* A pool of at most max_conns connections to conninfo (a libpq keyword/value string or URI),
 * made on demand; connect_timeout bounds each connection attempt and the draining of a
 * cancelled query. Returns NULL with err filled when conninfo does not parse. */
struct ws_pg_pool *ws_pg_pool_new(struct ev_loop *loop, const char *conninfo, size_t max_conns,
                                  double connect_timeout, char *err, size_t errlen);

/* Changes the size cap; connections over it are closed as they come back. */
void ws_pg_pool_set_max(struct ws_pg_pool *p, size_t max_conns);

/* Closes every connection and drops every waiter (no callback runs); NULL is a no-op. The
 * connections handed out must not be used afterwards. */
void ws_pg_pool_free(struct ws_pg_pool *p);

/* An idle connection of the pool, now the caller's, or NULL (none idle, or waiters queued
 * before the caller). */
struct ws_pg_conn *ws_pg_pool_take(struct ws_pg_pool *p);

/* Queues for a connection (a new one is made while the pool is under its cap); done runs once,
 * from the loop, never from inside this call. */
struct ws_pg_wait *ws_pg_pool_acquire(struct ws_pg_pool *p, ws_pg_conn_fn done, void *ud);

/* Leaves the queue; done does not run. w is freed. */
void ws_pg_pool_acquire_cancel(struct ws_pg_wait *w);

/* Hands c back to the pool. A query in flight is abandoned first; a connection that is lost, in
 * a transaction, or over the cap is closed instead of reused. */
void ws_pg_conn_release(struct ws_pg_conn *c);

/* Connections open (connecting included), handed out, and callers queued for one. */
size_t ws_pg_pool_open(const struct ws_pg_pool *p);
size_t ws_pg_pool_in_use(const struct ws_pg_pool *p);
size_t ws_pg_pool_waiting(const struct ws_pg_pool *p);

/* The calls a pool answers to, so that a stand-in can take the place of libpq's (the testing kit
 * answers queries itself): lb_app keeps a pointer to them (NULL: ws_pg_libpq's). Each is the
 * function above of the same name. */
struct ws_pg_ops {
    struct ws_pg_pool *(*pool_new)(struct ev_loop *loop, const char *conninfo, size_t max_conns,
                                   double connect_timeout, char *err, size_t errlen);
    void (*pool_set_max)(struct ws_pg_pool *p, size_t max_conns);
    void (*pool_free)(struct ws_pg_pool *p);
    struct ws_pg_conn *(*pool_take)(struct ws_pg_pool *p);
    struct ws_pg_wait *(*pool_acquire)(struct ws_pg_pool *p, ws_pg_conn_fn done, void *ud);
    void (*pool_acquire_cancel)(struct ws_pg_wait *w);
    int (*conn_query)(struct ws_pg_conn *c, const char *sql, int n, const char *const *values,
                      const int *lengths, const int *formats, bool prepare, ws_pg_result_fn done,
                      void *ud, char *err, size_t errlen);
    bool (*conn_abandon)(struct ws_pg_conn *c);
    bool (*conn_ready)(const struct ws_pg_conn *c);
    void (*conn_release)(struct ws_pg_conn *c);
    size_t (*pool_open)(const struct ws_pg_pool *p);
    size_t (*pool_in_use)(const struct ws_pg_pool *p);
};

/* The functions above: the pools ws_pg_pool_new makes, on libpq. */
extern const struct ws_pg_ops ws_pg_libpq;

#endif
