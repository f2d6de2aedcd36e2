/* The `ws` module: broadcast, topics, the connection registry, logging, stats, state and
 * lifecycle control (its timers are lb_timer.c's). Scripts see a read-only proxy; the real
 * table sits in the registry. Lua errors raised inside a broadcast filter are caught and
 * re-raised only after the C side has cleaned up, so they never unwind through C state. */
#include "ws/lb.h"

#include "ws/bus.h"
#include "ws/clock.h"
#include "ws/conn.h"
#include "ws/err.h"
#include "ws/frame.h"
#include "ws/log.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <math.h>

/* ---- messaging ---- */

static struct ws_server *server(lua_State *L)
{
    return lb_app_of(L)->srv;
}

struct filter_ctx {
    lua_State *L; /* the thread ws.broadcast runs on */
    int fn_idx;
    bool failed; /* the error object is on the stack */
};

/* filter(conn), with the conn pushed inside the protected call: creating the userdata may
 * raise (heap cap) and must not unwind through ws_server_broadcast. [-2, +1, e] */
static int call_filter(lua_State *L)
{
    lb_conn_push(L, lua_touserdata(L, 2));
    lua_replace(L, 2);
    lua_call(L, 1, 1);
    return 1;
}

static bool run_filter(void *ctx, struct ws_conn *c)
{
    struct filter_ctx *f = ctx;
    lua_State *L = f->L;
    if (f->failed)
        return false;
    lua_pushcfunction(L, call_filter);
    lua_pushvalue(L, f->fn_idx);
    lua_pushlightuserdata(L, c);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        f->failed = true;
        return false;
    }
    bool keep = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return keep;
}

/* An opts.except value: a conn or an id. */
static uint64_t except_id(lua_State *L, int opts)
{
    if (lua_isnoneornil(L, opts))
        return 0;
    lua_getfield(L, opts, "except");
    uint64_t id = 0;
    if (lua_isinteger(L, -1)) {
        id = (uint64_t)lua_tointeger(L, -1);
    } else if (lua_type(L, -1) == LUA_TUSERDATA) {
        lb_conn_check(L, lua_gettop(L)); /* raises unless it is a conn */
        lua_getfield(L, -1, "id");
        id = (uint64_t)lua_tointeger(L, -1);
    } else if (!lua_isnil(L, -1)) {
        luaL_error(L, "opts.except must be a conn or a connection id, got %s",
                   luaL_typename(L, -1));
    }
    lua_settop(L, opts);
    return id;
}

static uint8_t opts_opcode(lua_State *L, int opts)
{
    if (lua_isnoneornil(L, opts))
        return WS_OP_TEXT;
    if (!lua_istable(L, opts))
        luaL_error(L, "options must be a table, got %s", luaL_typename(L, opts));
    lua_getfield(L, opts, "binary");
    uint8_t op = lua_toboolean(L, -1) ? WS_OP_BINARY : WS_OP_TEXT;
    lua_pop(L, 1);
    return op;
}

/* ws.broadcast(data [, {except=, filter=, binary=}]) -> count [-0, +1, v] */
static int ws_broadcast(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    uint8_t opcode = opts_opcode(L, 2);
    lb_check_text(L, opcode, data, len, "pass {binary = true}");
    uint64_t except = except_id(L, 2);
    struct filter_ctx f = {L, 0, false};
    if (!lua_isnoneornil(L, 2)) {
        lua_getfield(L, 2, "filter");
        if (!lua_isnil(L, -1)) {
            if (!lua_isfunction(L, -1))
                luaL_error(L, "opts.filter must be a function, got %s", luaL_typename(L, -1));
            f.fn_idx = lua_gettop(L);
        }
    }
    struct ws_server *srv = server(L);
    size_t n =
        srv ? ws_server_broadcast(srv, opcode, data, len, except, f.fn_idx ? run_filter : NULL, &f)
            : 0;
    if (f.failed)
        return lua_error(L);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/* ws.publish(topic, data [, {except=, binary=}]) -> count [-0, +1, v] */
static int ws_publish(lua_State *L)
{
    size_t tlen, len;
    const char *topic = luaL_checklstring(L, 1, &tlen);
    const char *data = luaL_checklstring(L, 2, &len);
    uint8_t opcode = opts_opcode(L, 3);
    lb_check_text(L, opcode, data, len, "pass {binary = true}");
    uint64_t except = except_id(L, 3);
    struct ws_server *srv = server(L);
    lua_pushinteger(
        L, srv ? (lua_Integer)ws_server_publish(srv, topic, tlen, opcode, data, len, except) : 0);
    return 1;
}

/* ws.subscribers(topic) -> count [-0, +1, v] */
static int ws_subscribers(lua_State *L)
{
    size_t len;
    const char *topic = luaL_checklstring(L, 1, &len);
    struct ws_server *srv = server(L);
    struct ws_topic *t = srv ? ws_topics_find(&srv->env.topics, topic, len) : NULL;
    lua_pushinteger(L, t ? (lua_Integer)t->nsubs : 0);
    return 1;
}

/* ws.topics() -> list of topic names with subscribers [-0, +1, m] */
static int ws_topics(lua_State *L)
{
    struct ws_server *srv = server(L);
    lua_newtable(L);
    if (!srv)
        return 1;
    lua_Integer i = 0;
    for (struct ws_registry_node *node = srv->env.conns.head; node; node = node->next) {
        struct ws_conn *c = (struct ws_conn *)node;
        for (uint32_t k = 0; k < ws_subscriber_count(&c->sub); k++) {
            struct ws_topic *t = ws_subscriber_topic(&c->sub, k);
            lua_pushlstring(L, t->name, t->len);
            if (lua_rawget(L, -2) == LUA_TNIL) {
                lua_pop(L, 1);
                lua_pushlstring(L, t->name, t->len);
                lua_pushboolean(L, 1);
                lua_rawset(L, -3);
                i++;
            } else {
                lua_pop(L, 1);
            }
        }
    }
    /* turn the set into a sorted list */
    lua_createtable(L, (int)i, 0);
    lua_Integer k = 0;
    lua_pushnil(L);
    while (lua_next(L, -3)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, -3, ++k);
    }
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, -3);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
    return 1;
}

/* ---- registry ---- */

/* ws.get(id) -> conn or nil [-0, +1, v] */
static int ws_get(lua_State *L)
{
    lua_Integer id = luaL_checkinteger(L, 1);
    struct ws_server *srv = server(L);
    struct ws_conn *c = srv && id > 0 ? ws_server_get(srv, (uint64_t)id) : NULL;
    if (c && c->opened)
        lb_conn_push(L, c);
    else
        lua_pushnil(L);
    return 1;
}

/* ws.count() -> open connections [-0, +1, -] */
static int ws_count(lua_State *L)
{
    struct ws_server *srv = server(L);
    lua_pushinteger(L, srv ? (lua_Integer)srv->env.nopen : 0);
    return 1;
}

static int connections_next(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2)) + 1;
    lua_pushinteger(L, i);
    lua_replace(L, lua_upvalueindex(2));
    lua_rawgeti(L, lua_upvalueindex(1), i);
    return 1;
}

/* ws.connections() -> iterator over the open connections (a snapshot: closing a connection
 * inside the loop is safe) [-0, +1, m] */
static int ws_connections(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    struct ws_server *srv = a->srv;
    lua_createtable(L, srv ? (int)srv->env.nopen : 0, 0);
    lua_Integer i = 0;
    for (struct ws_registry_node *node = srv ? srv->env.conns.head : NULL; node;
         node = node->next) {
        struct ws_conn *c = (struct ws_conn *)node;
        if (c->state == WS_CONN_OPEN) {
            lb_conn_push(L, c);
            lua_rawseti(L, -2, ++i);
        }
    }
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, connections_next, 2);
    return 1;
}

/* ---- logging, stats, control ---- */

static int log_at(lua_State *L, enum ws_log_level level)
{
    size_t len;
    const char *msg = luaL_checklstring(L, 1, &len);
    if (!ws_log_enabled(level))
        return 0;
    struct ws_log_line l;
    ws_log_begin(&l, level, "app");
    ws_log_str(&l, "msg", msg, len);
    if (lua_istable(L, 2)) {
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            if (lua_type(L, -2) == LUA_TSTRING) {
                const char *key = lua_tostring(L, -2);
                if (lua_isinteger(L, -1)) {
                    ws_log_i64(&l, key, lua_tointeger(L, -1));
                } else {
                    size_t n;
                    const char *v = luaL_tolstring(L, -1, &n);
                    ws_log_str(&l, key, v, n);
                    lua_pop(L, 1);
                }
            }
            lua_pop(L, 1);
        }
    }
    ws_log_end(&l);
    return 0;
}

static int log_debug(lua_State *L)
{
    return log_at(L, WS_LOG_DEBUG);
}
static int log_info(lua_State *L)
{
    return log_at(L, WS_LOG_INFO);
}
static int log_warn(lua_State *L)
{
    return log_at(L, WS_LOG_WARN);
}
static int log_error(lua_State *L)
{
    return log_at(L, WS_LOG_ERROR);
}

static void set_int(lua_State *L, const char *key, uint64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, key);
}

/* ws.stats() -> table of counters [-0, +1, m] */
static int ws_stats(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    struct ws_server *srv = a->srv;
    lua_createtable(L, 0, 16);
    if (srv) {
        const struct ws_stats *s = srv->env.stats;
        set_int(L, "connections", srv->env.nopen);
        set_int(L, "connections_total", s->connections_total);
        set_int(L, "messages_in", s->messages_in);
        set_int(L, "messages_out", s->messages_out);
        set_int(L, "bytes_in", s->bytes_in);
        set_int(L, "bytes_out", s->bytes_out);
        set_int(L, "handshake_rejections", s->handshake_rejections);
        set_int(L, "handler_errors", s->handler_errors);
        set_int(L, "dropped", s->dropped);
        set_int(L, "topics", srv->env.topics.count);
        set_int(L, "worker", (uint64_t)srv->worker);
        if (srv->bus) {
            set_int(L, "bus_published", srv->bus->published);
            set_int(L, "bus_received", srv->bus->received);
            set_int(L, "bus_dropped", srv->bus->dropped);
        }
    }
    if (srv) {
        set_int(L, "reloads_ok", srv->env.stats->reloads_ok);
        set_int(L, "reloads_failed", srv->env.stats->reloads_failed);
    }
    set_int(L, "lua_memory", a->mem);
    set_int(L, "generation", a->generation);
    return 1;
}

/* ws.now() -> seconds since the epoch, with fractions, as of the current loop iteration (cached:
 * cheap to call; for intervals and timestamps alike) [-0, +1, -] */
static int ws_now(lua_State *L)
{
    lua_pushnumber(L, ws_clock_now(lb_app_of(L)->loop));
    return 1;
}

/* ws.sleep's continuation: true, or nil and why the wait ended early. [-0, +1|+2, -] */
static int sleep_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct lb_task *t = (struct lb_task *)ctx;
    if (t->woke) {
        lua_pushnil(L);
        lua_pushstring(L, t->woke);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ws.sleep(seconds) -> true; nil, "closed" | "shutdown" when the wait was cancelled. Waits
 * without blocking the loop (SPEC §4a). [-0, +1|+2, v] */
static int ws_sleep(lua_State *L)
{
    lua_Number seconds = luaL_checknumber(L, 1);
    luaL_argcheck(L, seconds >= 0 && isfinite(seconds), 1, "seconds must be a number >= 0");
    struct lb_task *t = lb_task_waiter(L, "ws.sleep");
    return lb_task_wait(L, t, seconds, true, NULL, NULL, sleep_done);
}

/* ws.reload() -> true: the app reloads between two loop iterations [-0, +1, -] */
static int ws_reload(lua_State *L)
{
    lb_app_request_reload(lb_app_of(L));
    lua_pushboolean(L, 1);
    return 1;
}

/* ws.shutdown() -> true: graceful shutdown begins [-0, +1, -] */
static int ws_shutdown(lua_State *L)
{
    struct ws_server *srv = server(L);
    if (srv)
        ws_server_shutdown(srv, "ws.shutdown");
    lua_pushboolean(L, srv != NULL);
    return 1;
}

static int readonly(lua_State *L)
{
    return luaL_error(L, "the ws table is read-only (keep your data in ws.state)");
}

static int proxy_pairs(lua_State *L)
{
    lua_getglobal(L, "next");
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__index");
    lua_remove(L, -2);
    lua_pushnil(L);
    return 3;
}

static const luaL_Reg ws_funcs[] = {
    {"broadcast", ws_broadcast},
    {"publish", ws_publish},
    {"subscribers", ws_subscribers},
    {"topics", ws_topics},
    {"connections", ws_connections},
    {"get", ws_get},
    {"count", ws_count},
    {"sleep", ws_sleep},
    {"stats", ws_stats},
    {"now", ws_now},
    {"reload", ws_reload},
    {"shutdown", ws_shutdown},
    {NULL, NULL},
};

static const luaL_Reg log_funcs[] = {
    {"debug", log_debug}, {"info", log_info}, {"warn", log_warn},
    {"error", log_error}, {NULL, NULL},
};

static const struct {
    const char *name;
    int code;
} close_codes[] = {
    {"NORMAL", 1000},          {"GOING_AWAY", 1001},     {"PROTOCOL_ERROR", 1002},
    {"UNSUPPORTED", 1003},     {"NO_STATUS", 1005},      {"ABNORMAL", 1006},
    {"INVALID_DATA", 1007},    {"POLICY", 1008},         {"TOO_BIG", 1009},
    {"EXTENSION", 1010},       {"INTERNAL_ERROR", 1011}, {"RESTART", 1012},
    {"TRY_AGAIN_LATER", 1013},
};

/* Wraps the table at the top in a read-only proxy. [-1, +1, m] */
static void make_readonly(lua_State *L)
{
    /* a userdata, not a table: rawset cannot get past it either */
    lua_newuserdatauv(L, 0, 0);
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, proxy_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_remove(L, -2);
}

void lb_ws_open(struct lb_app *a)
{
    lua_State *L = a->L;
    luaL_newlib(L, ws_funcs);
    lb_timer_open(L);
    luaL_newlib(L, log_funcs);
    make_readonly(L);
    lua_setfield(L, -2, "log");
    lua_createtable(L, 0, 16);
    for (size_t i = 0; i < sizeof(close_codes) / sizeof(close_codes[0]); i++) {
        lua_pushinteger(L, close_codes[i].code);
        lua_setfield(L, -2, close_codes[i].name);
    }
    make_readonly(L);
    lua_setfield(L, -2, "close_codes");
    lb_http_open(L);
    make_readonly(L);
    lua_setfield(L, -2, "http");
    lb_wsclient_open(L);
    lua_setfield(L, -2, "connect");
    lb_pg_open(L);
    make_readonly(L);
    lua_setfield(L, -2, "pg");
    lb_redis_open(L);
    make_readonly(L);
    lua_setfield(L, -2, "redis");
    lua_newtable(L);
    lua_pushvalue(L, -1);
    a->state_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_setfield(L, -2, "state");
    /* ws.json: lua/ws/json.lua on top of lua-cjson */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "ws.json");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        ws_log_msg(WS_LOG_WARN, "json_unavailable", lua_tostring(L, -1));
        lua_pop(L, 1);
        lua_newtable(L);
    }
    /* read-only too, and require "ws.json" gives the same object */
    make_readonly(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "ws.json");
    lua_pop(L, 1);
    /* ws.null: the one null of replies and rows (Redis nil, SQL NULL), json.null itself */
    lua_getfield(L, -1, "null");
    lua_setfield(L, -3, "null");
    lua_setfield(L, -2, "json");
    lua_pushvalue(L, -1);
    a->ws_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    make_readonly(L);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "ws");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "ws");
    lua_pop(L, 2);
}
