/* ws.pg's statements: client:query(sql, ...) and client:transaction(fn) wait (SPEC §4a) for a
 * connection of the client's pool and for the answer, counted in the pools' gauges. Parameters
 * always travel apart from the SQL text; what goes wrong with the server comes back as nil,
 * message (and the SQLSTATE). Making pools and clients is lb_pg.c's, values lb_pg_types.c's. */
#include "ws/lb.h"

#include "ws/clock.h"
#include "ws/log.h"
#include "ws/pg_client.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>

#define TX_MT "wsserver.pg_transaction"
#define CALL_MT "wsserver.pg_call"
#define MAX_PARAMS 65535 /* the protocol's Bind message counts them in 16 bits */

enum tx_phase { TX_BEGIN, TX_OPEN, TX_ENDING, TX_OVER };

/* The transaction handed to fn: its connection for as long as fn runs. */
struct pg_tx {
    const struct ws_pg_ops *ops;
    struct ws_pg_pool *pool;
    struct ws_pg_conn *conn;
    double timeout;
    enum tx_phase phase;
    bool aborted;   /* a query of it was abandoned (timeout): it can only roll back */
    bool raised;    /* fn raised: the error is re-raised after the rollback */
    bool committed; /* the end is a COMMIT (else a ROLLBACK) */
};

/* One statement's wait: a userdata on the waiting coroutine's stack, so it lives as long as the
 * wait; its __gc releases whatever is left. The parameter arrays follow it. */
struct pg_call {
    struct lb_task *t;
    const struct ws_pg_ops *ops;
    struct ws_pg_pool *pool;
    struct pg_tx *tx;        /* the statement runs in this transaction, or NULL */
    struct ws_pg_wait *wait; /* queued for a connection */
    struct ws_pg_conn *conn; /* held by this call (outside a transaction) */
    PGresult *res;
    struct ws_pg_rows *rows; /* a stand-in's result, in place of res */
    bool failed;
    char err[512];
    char sqlstate[6];
    double timeout, started;
    const char *sql;
    bool prepare;
    int n;
    const char **values;
    int *lengths, *formats;
};

const struct ws_pg_ops *lb_pg_ops(const struct lb_app *a)
{
    return a->pg_ops ? a->pg_ops : &ws_pg_libpq;
}

void lb_pg_gauges(struct lb_app *a)
{
    struct ws_stats *st = a->srv ? a->srv->env.stats : NULL;
    if (!st || !a->pg)
        return;
    const struct ws_pg_ops *ops = lb_pg_ops(a);
    uint64_t open = 0, in_use = 0;
    for (size_t i = 0; i < a->pg->n; i++) {
        open += ops->pool_open(a->pg->pools[i].pool);
        in_use += ops->pool_in_use(a->pg->pools[i].pool);
    }
    st->stores[WS_STATS_STORE_POSTGRES].pool_open = open;
    st->stores[WS_STATS_STORE_POSTGRES].pool_in_use = in_use;
}

static void observe(struct lb_app *a, enum ws_stats_store_result r, double seconds)
{
    struct ws_stats *st = a->srv ? a->srv->env.stats : NULL;
    if (st)
        ws_stats_observe_store(st, WS_STATS_STORE_POSTGRES, r, seconds);
    lb_pg_gauges(a);
}

static void log_failure(struct lb_task *t, const char *why)
{
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_WARN, "pg_failed");
    ws_log_cstr(&l, "handler", t->what ? t->what : "?");
    if (t->conn)
        ws_log_u64(&l, "conn", t->conn);
    ws_log_cstr(&l, "error", why);
    ws_log_end(&l);
}

/* Gives back what a call holds. */
static void call_release(struct pg_call *c)
{
    if (c->wait)
        c->ops->pool_acquire_cancel(c->wait);
    c->wait = NULL;
    if (c->conn)
        c->ops->conn_release(c->conn);
    c->conn = NULL;
    if (c->tx && c->tx->conn && c->ops->conn_abandon(c->tx->conn))
        c->tx->aborted = true; /* whether that query ran or not is unknown: no COMMIT */
    if (c->res)
        PQclear(c->res);
    c->res = NULL;
    if (c->rows)
        c->rows->free(c->rows);
    c->rows = NULL;
}

/* [-0, +0, -] */
static int call_gc(lua_State *L)
{
    call_release(lua_touserdata(L, 1));
    return 0;
}

/* [-0, +0, -] */
static int tx_gc(lua_State *L)
{
    struct pg_tx *tx = lua_touserdata(L, 1);
    if (tx->conn)
        tx->ops->conn_release(tx->conn); /* still in a transaction: closed, the server rolls back */
    tx->conn = NULL;
    tx->phase = TX_OVER;
    return 0;
}

static void on_conn(void *ud, struct ws_pg_conn *conn, const char *err)
{
    struct pg_call *c = ud;
    c->wait = NULL;
    if (conn) {
        c->conn = conn;
    } else {
        c->failed = true;
        snprintf(c->err, sizeof(c->err), "%s", err);
    }
    lb_task_wake(c->t, NULL);
}

static void on_result(void *ud, PGresult *res, struct ws_pg_rows *rows, const char *err,
                      const char *sqlstate)
{
    struct pg_call *c = ud;
    if (res || rows) {
        c->res = res;
        c->rows = rows;
    } else {
        c->failed = true;
        snprintf(c->err, sizeof(c->err), "%s", err);
        snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", sqlstate);
    }
    lb_task_wake(c->t, NULL);
}

/* The wait ended early (timeout, close, shutdown): what it started stops. */
static void on_cancel(struct lb_task *t)
{
    call_release(t->wait_ud);
}

int lb_pg_push_failure(lua_State *L, const char *why, const char *sqlstate)
{
    lua_pushnil(L);
    if (sqlstate && sqlstate[0]) {
        lua_pushfstring(L, "%s: %s", sqlstate, why);
        lua_pushstring(L, sqlstate);
        return 3;
    }
    lua_pushstring(L, why);
    return 2;
}

/* Ends a call that failed: counts it (a close or a shutdown is no failure of the database),
 * logs operational failures, and pushes nil, why [, sqlstate]. [-0, +2|+3, m] */
static int fail(lua_State *L, struct pg_call *c)
{
    struct lb_task *t = c->t;
    struct lb_app *a = t->a;
    const char *why = t->woke ? t->woke : c->err;
    bool timeout = t->woke && strcmp(t->woke, "timeout") == 0;
    bool cancelled = t->woke && !timeout;
    call_release(c);
    if (!cancelled) {
        observe(a, timeout ? WS_STATS_STORE_TIMEOUT : WS_STATS_STORE_ERROR,
                ws_clock_now(a->loop) - c->started);
        if (!c->sqlstate[0])
            log_failure(t, why);
    } else {
        lb_pg_gauges(a);
    }
    return lb_pg_push_failure(L, why, t->woke ? NULL : c->sqlstate);
}

/* Sends c's statement on conn; on failure c is marked failed. */
static void send_stmt(struct pg_call *c, struct ws_pg_conn *conn)
{
    if (c->ops->conn_query(conn, c->sql, c->n, c->values, c->lengths, c->formats, c->prepare,
                           on_result, c, c->err, sizeof(c->err)) != 0)
        c->failed = true;
}

/* Waits for the answer to c's statement, sent on conn, with what is left of its timeout. */
static int wait_answer(lua_State *L, struct pg_call *c, struct ws_pg_conn *conn, lua_KFunction k)
{
    c->t->woke = NULL; /* what ended an earlier wait of the task is no news for this one */
    send_stmt(c, conn);
    if (c->failed) {
        c->t->wait_ud = c; /* as the continuation finds it after a wait */
        return k(L, LUA_OK, (lua_KContext)c->t);
    }
    double left = c->timeout - (ws_clock_now(c->t->a->loop) - c->started);
    return lb_task_wait(L, c->t, left > 0.001 ? left : 0.001, false, on_cancel, c, k);
}

/* The continuation of a statement: rows, count or nil, err [, sqlstate]. [-0, +2|+3, e] */
static int query_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct lb_task *t = (struct lb_task *)ctx;
    struct pg_call *c = t->wait_ud;
    if (t->woke || c->failed)
        return fail(L, c);
    if (c->conn)
        c->ops->conn_release(c->conn);
    c->conn = NULL;
    observe(t->a, WS_STATS_STORE_OK, ws_clock_now(t->a->loop) - c->started);
    if (c->rows)
        return c->rows->push(c->rows, L);
    return lb_pg_push_rows(L, t->a, c->res); /* c's __gc frees res, even if this raises */
}

/* A connection came (or could not be made): send the statement. [-0, +2|+3, e] */
static int query_acquired(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct lb_task *t = (struct lb_task *)ctx;
    struct pg_call *c = t->wait_ud;
    if (t->woke || c->failed)
        return fail(L, c);
    lb_pg_gauges(t->a);
    return wait_answer(L, c, c->conn, query_done);
}

/* Gets a connection for c (or uses its transaction's) and sends its statement; k runs with the
 * answer. [-0, +?, e] */
static int start(lua_State *L, struct pg_call *c, lua_KFunction k, lua_KFunction acquired)
{
    if (c->tx)
        return wait_answer(L, c, c->tx->conn, k);
    c->conn = c->ops->pool_take(c->pool);
    if (c->conn) {
        lb_pg_gauges(c->t->a);
        return wait_answer(L, c, c->conn, k);
    }
    c->wait = c->ops->pool_acquire(c->pool, on_conn, c);
    return lb_task_wait(L, c->t, c->timeout, false, on_cancel, c, acquired);
}

/* Pushes a call userdata for n parameters. [-0, +1, m] */
static struct pg_call *new_call(lua_State *L, struct lb_task *t, struct ws_pg_pool *pool,
                                double timeout, int n)
{
    size_t extra = (size_t)n * (sizeof(const char *) + 2 * sizeof(int));
    struct pg_call *c = lua_newuserdatauv(L, sizeof(*c) + extra, 0);
    memset(c, 0, sizeof(*c) + extra);
    luaL_setmetatable(L, CALL_MT);
    c->t = t;
    c->ops = lb_pg_ops(t->a);
    c->pool = pool;
    c->timeout = timeout;
    c->started = ws_clock_now(t->a->loop);
    c->n = n;
    c->values = (const char **)(c + 1);
    c->lengths = (int *)(c->values + n);
    c->formats = c->lengths + n;
    return c;
}

/* query(self, sql, ...) for a client or a transaction. [-0, +2|+3, e] */
static int run_query(lua_State *L, struct ws_pg_pool *pool, struct pg_tx *tx, double timeout)
{
    struct lb_app *a = lb_app_of(L);
    size_t sql_len = 0;
    const char *sql = luaL_checklstring(L, 2, &sql_len);
    if (strlen(sql) != sql_len)
        return luaL_error(L, "ws.pg: the SQL text holds a NUL byte");
    int n = lua_gettop(L) - 2;
    if (n > MAX_PARAMS)
        return luaL_error(L, "ws.pg: at most %d parameters", MAX_PARAMS);
    struct lb_task *t = lb_task_waiter(L, "ws.pg query");
    if (t->gone)
        return lb_pg_push_failure(L, t->gone, NULL);
    if (tx && tx->phase != TX_OPEN)
        return lb_pg_push_failure(L, "the transaction is over", NULL);
    if (tx && tx->aborted)
        return lb_pg_push_failure(L, "the transaction is aborted (a query of it did not finish)",
                                  NULL);
    luaL_checkstack(L, 8, "ws.pg");
    struct pg_call *c = new_call(L, t, pool, timeout, n);
    lua_insert(L, 3);
    lb_pg_params(L, a, 4, n, c->values, c->lengths, c->formats);
    c->tx = tx;
    c->sql = sql;
    c->prepare = true;
    return start(L, c, query_done, query_acquired);
}

/* tx:query(sql, ...) inside client:transaction. [-0, +2|+3, e] */
static int tx_query(lua_State *L)
{
    struct pg_tx *tx = luaL_checkudata(L, 1, TX_MT);
    return run_query(L, tx->pool, tx, tx->timeout);
}

int lb_pg_query(lua_State *L, struct ws_pg_pool *pool, double timeout)
{
    return run_query(L, pool, NULL, timeout);
}

/* The transaction's stack: 1 client, 2 fn, 3 tx, 4 the call of BEGIN/COMMIT/ROLLBACK, then fn's
 * results (or its error). */
#define TX_AT 3
#define CALL_AT 4
#define RESULTS_AT 5

/* Re-arms the call at CALL_AT for sql (BEGIN, COMMIT, ROLLBACK: no parameters, not prepared).
 */
static struct pg_call *control(lua_State *L, const char *sql)
{
    struct pg_call *c = lua_touserdata(L, CALL_AT);
    call_release(c);
    c->failed = false;
    c->err[0] = c->sqlstate[0] = '\0';
    c->started = ws_clock_now(c->t->a->loop);
    c->sql = sql;
    c->prepare = false;
    return c;
}

/* The transaction is over: its connection goes back (closed when it is still in a transaction:
 * the end failed or never ran, and the server rolls back). */
static void tx_close(struct lb_task *t, struct pg_tx *tx)
{
    if (tx->conn)
        tx->ops->conn_release(tx->conn);
    tx->conn = NULL;
    tx->phase = TX_OVER;
    lb_pg_gauges(t->a);
}

/* COMMIT or ROLLBACK came back: the connection goes back; the transaction's results, or the
 * failure, or fn's error raised again. [-0, +?, e] */
static int tx_ended(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct lb_task *t = (struct lb_task *)ctx;
    struct pg_tx *tx = lua_touserdata(L, TX_AT);
    struct pg_call *c = lua_touserdata(L, CALL_AT);
    bool ok = !t->woke && !c->failed;
    const char *tag = !ok ? "" : c->rows ? c->rows->status : PQcmdStatus(c->res);
    bool rolled_back = ok && tx->committed && strcmp(tag, "ROLLBACK") == 0;
    if (ok)
        observe(t->a, WS_STATS_STORE_OK, ws_clock_now(t->a->loop) - c->started);
    int failed = ok ? 0 : fail(L, c);
    call_release(c);
    tx_close(t, tx);
    if (tx->raised) {
        lua_settop(L, RESULTS_AT);
        return lua_error(L);
    }
    if (failed)
        return failed;
    if (rolled_back)
        return lb_pg_push_failure(L, "the transaction was rolled back (a statement of it failed)",
                                  NULL);
    int nres = lua_gettop(L) - RESULTS_AT + 1;
    if (!tx->committed)
        return nres;
    if (nres == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    return nres;
}

/* fn returned or raised: COMMIT, or ROLLBACK when it raised, returned nil (or false) and an
 * error, or a query of it was abandoned. [-0, +?, e] */
static int tx_after(lua_State *L, int status, lua_KContext ctx)
{
    struct lb_task *t = (struct lb_task *)ctx;
    struct pg_tx *tx = lua_touserdata(L, TX_AT);
    tx->phase = TX_ENDING;
    tx->raised = status != LUA_OK && status != LUA_YIELD;
    int nres = lua_gettop(L) - RESULTS_AT + 1;
    tx->committed = !tx->raised && !tx->aborted && !(nres >= 2 && !lua_toboolean(L, RESULTS_AT));
    if (tx->aborted && !tx->raised) {
        lua_settop(L, CALL_AT);
        lb_pg_push_failure(L, "the transaction is aborted (a query of it did not finish)", NULL);
    }
    struct pg_call *c = control(L, tx->committed ? "COMMIT" : "ROLLBACK");
    if (tx->conn && tx->ops->conn_ready(tx->conn))
        return wait_answer(L, c, tx->conn, tx_ended);
    /* lost, or still cancelling an abandoned query: closing the connection rolls back */
    tx_close(t, tx);
    if (tx->raised) {
        lua_settop(L, RESULTS_AT);
        return lua_error(L);
    }
    if (!tx->committed)
        return lua_gettop(L) - RESULTS_AT + 1;
    return lb_pg_push_failure(L, "connection lost: the transaction was not committed", NULL);
}

/* The transaction could not begin (no connection; BEGIN failed or timed out): its connection
 * goes back (closed if BEGIN went through) and the call answers nil, err. [-0, +2|+3, m] */
static int tx_not_begun(lua_State *L, struct lb_task *t, struct pg_tx *tx, struct pg_call *c)
{
    int n = fail(L, c);
    tx_close(t, tx);
    return n;
}

static int tx_starting(lua_State *L, int status, lua_KContext ctx);

/* BEGIN goes out on conn, the transaction's connection from now. [-0, +?, e] */
static int tx_begin(lua_State *L, struct lb_task *t, struct pg_tx *tx, struct pg_call *c,
                    struct ws_pg_conn *conn)
{
    tx->conn = conn;
    c->conn = NULL; /* the transaction holds it */
    c->tx = tx;
    lb_pg_gauges(t->a);
    return wait_answer(L, c, conn, tx_starting);
}

/* A step toward fn(tx) came back: a connection (BEGIN goes out on it), or BEGIN's answer (fn(tx)
 * runs, protected, and may wait). [-0, +?, e] */
static int tx_starting(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct lb_task *t = (struct lb_task *)ctx;
    struct pg_tx *tx = lua_touserdata(L, TX_AT);
    struct pg_call *c = lua_touserdata(L, CALL_AT);
    if (t->woke || c->failed)
        return tx_not_begun(L, t, tx, c);
    if (!tx->conn)
        return tx_begin(L, t, tx, c, c->conn);
    observe(t->a, WS_STATS_STORE_OK, ws_clock_now(t->a->loop) - c->started);
    call_release(c);
    tx->phase = TX_OPEN;
    lua_settop(L, CALL_AT);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, TX_AT);
    return tx_after(L, lua_pcallk(L, 1, LUA_MULTRET, 0, ctx, tx_after), ctx);
}

int lb_pg_transaction(lua_State *L, struct ws_pg_pool *pool, double timeout)
{
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    struct lb_task *t = lb_task_waiter(L, "ws.pg transaction");
    if (t->gone)
        return lb_pg_push_failure(L, t->gone, NULL);
    struct pg_tx *tx = lua_newuserdatauv(L, sizeof(*tx), 0);
    memset(tx, 0, sizeof(*tx));
    luaL_setmetatable(L, TX_MT);
    tx->ops = lb_pg_ops(t->a);
    tx->pool = pool;
    tx->timeout = timeout;
    struct pg_call *c = new_call(L, t, tx->pool, timeout, 0);
    c->sql = "BEGIN";
    c->tx = NULL;
    /* take or wait for a connection, then BEGIN on it as the transaction's */
    struct ws_pg_conn *conn = tx->ops->pool_take(tx->pool);
    if (!conn) {
        c->wait = tx->ops->pool_acquire(tx->pool, on_conn, c);
        return lb_task_wait(L, t, c->timeout, false, on_cancel, c, tx_starting);
    }
    return tx_begin(L, t, tx, c, conn);
}

void lb_pg_metatable(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc)
{
    luaL_newmetatable(L, name);
    if (methods) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
    if (gc) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
}

void lb_pg_query_open(lua_State *L)
{
    static const luaL_Reg tx_methods[] = {{"query", tx_query}, {NULL, NULL}};
    lb_pg_metatable(L, TX_MT, tx_methods, tx_gc);
    lua_pop(L, 1);
    lb_pg_metatable(L, CALL_MT, NULL, call_gc);
    lua_pop(L, 1);
}
