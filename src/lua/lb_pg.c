/* ws.pg: connect(conninfo [, opts]) gives a client on a pool of the core's PostgreSQL client
 * (pg_client.c). This file keeps the app's pools and the clients (their options, client:with)
 * and registers the module; their queries and transactions, which wait, are lb_pg_query.c's.
 * Misuse raises; what goes wrong with the server comes back as nil, message. */
#include "ws/lb.h"

#include "ws/pg_client.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CLIENT_MT "wsserver.pg_client"
#define MAX_POOL_SIZE 1000

struct pg_client {
    struct lb_pg_slot *slot; /* its pool, in the app's lb_pg */
    double timeout;
    int pool_size;
};

static struct lb_pg *pools_of(struct lb_app *a)
{
    if (!a->pg)
        a->pg = ws_xcalloc(1, sizeof(*a->pg));
    return a->pg;
}

static struct pg_client *check_client(lua_State *L)
{
    return luaL_checkudata(L, 1, CLIENT_MT);
}

/* client:query(sql, ...) -> rows, count | nil, err [, sqlstate]; waits. [-0, +2|+3, e] */
static int client_query(lua_State *L)
{
    struct pg_client *cl = check_client(L);
    return lb_pg_query(L, cl->slot->pool, cl->timeout);
}

/* client:transaction(fn) -> fn's results (true when none) | nil, err; waits. fn(tx) runs
 * between BEGIN and COMMIT on one connection; it rolls back when fn raises (the error goes on),
 * returns nil (or false) and an error, or a query of it was abandoned. [-0, +?, e] */
static int client_transaction(lua_State *L)
{
    struct pg_client *cl = check_client(L);
    return lb_pg_transaction(L, cl->slot->pool, cl->timeout);
}

/* Reads opts.timeout and opts.pool at idx into cl. [-0, +0, v] */
static void read_opts(lua_State *L, int idx, struct pg_client *cl)
{
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "timeout");
    if (!lua_isnil(L, -1)) {
        double s = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || !(s > 0) || !isfinite(s))
            luaL_error(L, "ws.pg: opts.timeout must be a number of seconds > 0");
        cl->timeout = s;
    }
    lua_getfield(L, idx, "pool");
    if (!lua_isnil(L, -1)) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
            lua_tointeger(L, -1) > MAX_POOL_SIZE)
            luaL_error(L, "ws.pg: opts.pool must be a whole number from 1 to %d", MAX_POOL_SIZE);
        cl->pool_size = (int)lua_tointeger(L, -1);
    }
    lua_pop(L, 2);
}

static struct pg_client *push_client(lua_State *L)
{
    struct pg_client *cl = lua_newuserdatauv(L, sizeof(*cl), 0);
    memset(cl, 0, sizeof(*cl));
    luaL_setmetatable(L, CLIENT_MT);
    return cl;
}

/* ws.pg.connect(conninfo [, {timeout =, pool =}]) -> client | nil, err. Never waits: the
 * connections are made when queries need them (a server that is down answers the first query
 * with nil, err), so it works in the app's chunk and in load() too. [-0, +1|+2, v] */
static int pg_connect(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    size_t len = 0;
    const char *conninfo = luaL_checklstring(L, 1, &len);
    if (strlen(conninfo) != len)
        return luaL_error(L, "ws.pg: the conninfo holds a NUL byte");
    struct pg_client opts = {.timeout = a->config.io_timeout, .pool_size = 8};
    read_opts(L, 2, &opts);
    struct lb_pg *pg = pools_of(a);
    const struct ws_pg_ops *ops = lb_pg_ops(a);
    struct lb_pg_slot *slot = NULL;
    for (size_t i = 0; i < pg->n && !slot; i++)
        if (strcmp(pg->pools[i].conninfo, conninfo) == 0)
            slot = &pg->pools[i];
    if (slot) {
        ops->pool_set_max(slot->pool, (size_t)opts.pool_size);
    } else {
        if (pg->n == LB_PG_MAX_POOLS)
            return lb_pg_push_failure(
                L, "too many databases (at most 16 distinct conninfo strings)", NULL);
        char err[512];
        struct ws_pg_pool *pool = ops->pool_new(a->loop, conninfo, (size_t)opts.pool_size,
                                                opts.timeout, err, sizeof(err));
        if (!pool)
            return lb_pg_push_failure(L, err, NULL);
        slot = &pg->pools[pg->n++];
        slot->conninfo = ws_xmalloc(len + 1);
        memcpy(slot->conninfo, conninfo, len + 1);
        slot->pool = pool;
    }
    struct pg_client *cl = push_client(L);
    *cl = opts;
    cl->slot = slot;
    return 1;
}

/* client:with({timeout =}) -> a client on the same pool with its own timeout. [-0, +1, v] */
static int client_with(lua_State *L)
{
    struct pg_client *cl = check_client(L);
    struct pg_client copy = *cl;
    read_opts(L, 2, &copy);
    if (copy.pool_size != cl->pool_size)
        return luaL_error(L, "ws.pg: client:with takes a timeout; the pool size is set by "
                             "ws.pg.connect");
    *push_client(L) = copy;
    return 1;
}

/* [-0, +1, m] */
static int client_tostring(lua_State *L)
{
    struct pg_client *cl = check_client(L);
    lua_pushfstring(L, "ws.pg client (pool %d, timeout %f s)", cl->pool_size, cl->timeout);
    return 1;
}

void lb_pg_open(lua_State *L)
{
    static const luaL_Reg client_methods[] = {
        {"query", client_query},
        {"transaction", client_transaction},
        {"with", client_with},
        {NULL, NULL},
    };
    lb_pg_metatable(L, CLIENT_MT, client_methods, NULL);
    lua_pushcfunction(L, client_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lb_pg_query_open(L);
    static const luaL_Reg funcs[] = {{"connect", pg_connect}, {NULL, NULL}};
    luaL_newlib(L, funcs);
}

void lb_pg_free(struct lb_app *a)
{
    if (!a->pg)
        return;
    for (size_t i = 0; i < a->pg->n; i++) {
        lb_pg_ops(a)->pool_free(a->pg->pools[i].pool);
        free(a->pg->pools[i].conninfo);
    }
    free(a->pg);
    a->pg = NULL;
}
