/* The state of a PostgreSQL pool and of its connections, shared by the pool (pg_client.c) and the
 * connections (pg_conn.c), and the calls each makes into the other. Not a contract: the API is
 * include/ws/pg_client.h and include/ws/pg_conn.h. */
#ifndef WS_PG_POOL_H
#define WS_PG_POOL_H

#include "ws/pg_client.h"

#include <ev.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#define MAX_STMTS 64 /* prepared statements kept per connection */

enum state {
    CONNECTING,
    IDLE,     /* ready for a query */
    BUSY,     /* a query in flight, its callback set */
    DRAINING, /* a query abandoned: its answer is read and dropped */
    LOST,     /* closed (failed, timed out, or the server went away) */
};

struct stmt {
    char *sql;
    char name[16];
};

/* A query's parameters, copied: sent once its statement is prepared. */
struct pending {
    int n;
    char **values;
    int *lengths;
    int *formats;
    int stmt; /* index into stmts */
};

struct ws_pg_conn {
    struct ws_pg_pool *p;
    PGconn *pg;
    ev_io io;
    ev_timer timer;
    enum state state;
    bool out;       /* handed out to a caller */
    bool preparing; /* the answer awaited is the PQsendPrepare's */
    ws_pg_result_fn done;
    void *ud;
    PGresult *res; /* the first error, else the last result */
    struct pending pend;
    struct stmt stmts[MAX_STMTS];
    size_t nstmts;
    unsigned next_name;
    struct ws_pg_conn *prev, *next;
};

struct ws_pg_pool {
    struct ev_loop *loop;
    char *conninfo;
    size_t max_conns;
    double connect_timeout;
    struct ws_pg_conn *conns; /* every connection */
    size_t nopen, nout, nconnecting;
    struct ws_pg_wait *wait_head, *wait_tail;
    size_t nwaiting;
    ev_timer kick; /* hands connections and connect errors to waiters, from the loop */
};

/* ---- pg_conn.c ---- */

/* Starts a connection for p (counted as open and connecting); a failure is reported from the
 * loop, to ws_pg_pool_connect_failed, like the others. */
void ws_pg_conn_start(struct ws_pg_pool *p);

/* Closes c's connection (c is then LOST); c stays allocated, in the pool's list. */
void ws_pg_conn_close(struct ws_pg_conn *c);

/* Watches c's socket for events (EV_READ, EV_WRITE). */
void ws_pg_conn_watch(struct ws_pg_conn *c, int events);

/* prefix and the last line of libpq's msg (NULL: none) into out, without its trailing newline. */
void ws_pg_conn_copy_msg(char *out, size_t cap, const char *prefix, const char *msg);

/* ---- pg_client.c ---- */

/* Closes c, takes it out of its pool and frees it; a waiter may get a new connection. */
void ws_pg_pool_drop(struct ws_pg_conn *c);

/* c's connection attempt failed for why: c is dropped and the first waiter hears why. */
void ws_pg_pool_connect_failed(struct ws_pg_conn *c, const char *why);

/* c, held by the pool (not handed out) and idle, is kept for reuse, or dropped when it is in a
 * transaction or over the cap. Otherwise nothing happens. */
void ws_pg_pool_settle(struct ws_pg_conn *c);

#endif
