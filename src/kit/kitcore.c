/* ws.kitcore: the real server in-process for Lua specs (a C module for lua5.4, loaded through
 * package.cpath). This is the module's face: an engine's methods, its clients on in-memory
 * connections (mempipe) whose bytes go through the real handshake, frame and session code, and
 * frames for the spec. What the server answers is its own code, never re-implemented here; an
 * engine's making, settling and freeing are kit_engine.c's. */
#include "ws/kit.h"

#include "ws/clock.h"
#include "ws/config.h"
#include "ws/frame.h"
#include "ws/lb.h"
#include "ws/mempipe.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <lua.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static struct kit_engine *check_engine(lua_State *L)
{
    struct kit_engine *e = luaL_checkudata(L, 1, KIT_ENGINE_MT);
    luaL_argcheck(L, e->loop != NULL, 1, "engine closed");
    e->L = L;
    return e;
}

/* e:on_http(fn): fn(req) answers the app's ws.http calls from now on: {status =, headers =,
 * body =, delay = seconds} or nil, err. nil: no stand-in (calls answer nil, err). */
static int engine_on_http(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    kit_http_answer_with(e, L);
    return 0;
}

/* e:on_pg(fn): fn(sql, params) answers the app's ws.pg queries from now on: rows [, count] |
 * nil, err [, sqlstate]. nil: no stand-in (queries answer nil, err). */
static int engine_on_pg(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    kit_pg_answer_with(e, L);
    return 0;
}

/* e:redis(): from now on the engine's in-memory Redis answers ws.redis (without it, calls answer
 * nil, err). */
static int engine_redis(lua_State *L)
{
    kit_redis_enable(check_engine(L));
    return 0;
}

/* e:on_redis(fn): fn(command) is asked first for each command the app sends (see
 * kit_redis_answer_with); nil: none. */
static int engine_on_redis(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    kit_redis_answer_with(e, L);
    return 0;
}

/* e:redis_call(null, command, ...) -> reply | nil, err: runs a command on the in-memory Redis at
 * once, for the spec (null stands for a nil reply). */
static int engine_redis_call(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    int n = lua_gettop(L) - 2;
    luaL_argcheck(L, n >= 1, 3, "a command");
    for (int i = 3; i <= lua_gettop(L); i++)
        luaL_argexpected(L, lua_type(L, i) == LUA_TSTRING || lua_type(L, i) == LUA_TNUMBER, i,
                         "string or number");
    int pushed = kit_redis_push_call(e, L, 3, n, 2);
    kit_settle(e); /* what PUBLISH sent is delivered */
    return pushed;
}

/* e:upstream(url) and the upstream_* methods: see kit_upstream_add in ws/kit.h. */
static int engine_upstream(lua_State *L)
{
    return kit_upstream_add(L, check_engine(L));
}

static int engine_upstream_answer(lua_State *L)
{
    return kit_upstream_answer(L, check_engine(L));
}

static int engine_upstream_send(lua_State *L)
{
    return kit_upstream_send(L, check_engine(L));
}

static int engine_upstream_close(lua_State *L)
{
    return kit_upstream_close(L, check_engine(L), false);
}

static int engine_upstream_drop(lua_State *L)
{
    return kit_upstream_close(L, check_engine(L), true);
}

static int engine_upstream_next(lua_State *L)
{
    return kit_upstream_next(L, check_engine(L));
}

static int engine_upstream_state(lua_State *L)
{
    return kit_upstream_state(L, check_engine(L));
}

static struct kit_client *check_client(lua_State *L, struct kit_engine *e, int idx)
{
    lua_Integer i = luaL_checkinteger(L, idx);
    luaL_argcheck(L, i >= 1 && (size_t)i <= e->nclients, idx, "no such client");
    return &e->clients[i - 1];
}

/* e:connect([ip [, port]]) -> client, id: a new in-memory connection from ip (IPv4 or IPv6,
 * default 127.0.0.1), accepted with nothing sent yet, and the server's id for it. */
static int engine_connect(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    const char *ip = luaL_optstring(L, 2, "127.0.0.1");
    lua_Integer port = luaL_optinteger(L, 3, 40000 + (lua_Integer)(e->nclients % 20000));
    luaL_argcheck(L, port > 0 && port < 65536, 3, "port 1-65535");
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t salen;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        salen = sizeof(*in4);
    } else if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        salen = sizeof(*in6);
    } else {
        return luaL_argerror(L, 2, "not an IPv4 or IPv6 address");
    }
    int fd;
    struct ws_mempipe *p = ws_mempipe_new(&fd);
    if (!p)
        return luaL_error(L, "no descriptor left");
    if (e->nclients == e->cap) {
        e->cap = e->cap ? 2 * e->cap : 16;
        e->clients = ws_xrealloc(e->clients, e->cap * sizeof(*e->clients));
    }
    struct ws_conn *c =
        ws_conn_new(&e->srv->env, fd, (struct sockaddr *)&ss, salen, &ws_transport_memory, p);
    ws_mempipe_attach(p, e->loop, &c->wire.io);
    e->clients[e->nclients++] = (struct kit_client){p, c->node.id};
    kit_settle(e);
    lua_pushinteger(L, (lua_Integer)e->nclients);
    lua_pushinteger(L, (lua_Integer)e->clients[e->nclients - 1].id);
    return 2;
}

/* e:write(client, bytes): the client sends; returns once the server is done with them. */
static int engine_write(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    struct kit_client *c = check_client(L, e, 2);
    size_t n;
    const char *s = luaL_checklstring(L, 3, &n);
    ws_mempipe_send(c->pipe, s, n);
    kit_settle(e);
    return 0;
}

/* e:read(client) -> bytes, ended: what the server wrote since the last read, and whether it
 * has ended its side (no more will come). */
static int engine_read(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    struct kit_client *c = check_client(L, e, 2);
    size_t n; /* every call that sets the server off lets it finish: nothing is pending here */
    const uint8_t *p = ws_mempipe_output(c->pipe, &n);
    lua_pushlstring(L, (const char *)p, n);
    ws_mempipe_take(c->pipe, n);
    lua_pushboolean(L, ws_mempipe_ended(c->pipe));
    return 2;
}

/* e:shutdown(client): the client ends its sending side (FIN). */
static int engine_shutdown(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    ws_mempipe_shutdown(check_client(L, e, 2)->pipe);
    kit_settle(e);
    return 0;
}

/* e:pause(client, paused): the client stops or resumes reading. */
static int engine_pause(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    struct kit_client *c = check_client(L, e, 2);
    ws_mempipe_pause(c->pipe, lua_toboolean(L, 3));
    kit_settle(e);
    return 0;
}

/* e:reload([trigger]) -> ok: reloads the app from its file, as SIGHUP does (trigger, default
 * "SIGHUP", is what load's info.trigger says; the reason of a failure is in the log). */
static int engine_reload(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    int cwd = kit_in_app_dir(e);
    int rc = lb_app_reload(e->app, luaL_optstring(L, 2, "SIGHUP"));
    kit_back_from_app_dir(cwd);
    kit_settle(e);
    lua_pushboolean(L, rc == 0);
    return 1;
}

/* e:advance(seconds) -> timers fired: moves the simulated clock. */
static int engine_advance(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    double s = luaL_checknumber(L, 2);
    luaL_argcheck(L, s >= 0, 2, "time moves forward only");
    size_t fired = ws_clock_advance(e->loop, s);
    kit_settle(e);
    lua_pushinteger(L, (lua_Integer)fired);
    return 1;
}

/* e:config() -> {name = value}: the options the server runs with now (numbers, booleans,
 * strings; lists as tables; unset strings absent). */
static int engine_config(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    lua_newtable(L);
    for (const struct ws_option *o = ws_options; o->name; o++) {
        char v[4096];
        ws_config_format(&e->app->config, o, v, sizeof(v));
        switch (o->type) {
        case WS_OPT_INT:
        case WS_OPT_SECONDS:
            lua_pushstring(L, v);
            if (!lua_stringtonumber(L, v))
                lua_pushnil(L);
            lua_remove(L, -2);
            break;
        case WS_OPT_BOOL:
            lua_pushboolean(L, strcmp(v, "true") == 0);
            break;
        case WS_OPT_LIST: {
            lua_newtable(L);
            lua_Integer n = 0;
            for (char *item = strtok(v, ","); item; item = strtok(NULL, ","))
                if (*item) {
                    lua_pushstring(L, item);
                    lua_rawseti(L, -2, ++n);
                }
            break;
        }
        default:
            if (!v[0]) {
                lua_pushnil(L);
                break;
            }
            lua_pushstring(L, v);
            break;
        }
        lua_setfield(L, -2, o->name);
    }
    return 1;
}

/* e:path() -> the app's file. */
static int engine_path(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    if (e->name[0])
        lua_pushfstring(L, "%s/%s", e->dir, e->name);
    else
        lua_pushstring(L, e->app->path);
    return 1;
}

/* e:shutdown_server([reason]): a graceful shutdown, as SIGTERM (app.shutdown, then 1001 to
 * every connection in batches); its timers run as the clock moves. */
static int engine_shutdown_server(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    ws_server_shutdown(e->srv, luaL_optstring(L, 2, "SIGTERM"));
    kit_settle(e);
    return 0;
}

/* e:next_timer() -> seconds | nil: when the next timer falls due (on the clock of e:now()). */
static int engine_next_timer(lua_State *L)
{
    double at = ws_clock_next(check_engine(L)->loop);
    if (at < 0)
        return 0;
    lua_pushnumber(L, at);
    return 1;
}

static int engine_now(lua_State *L)
{
    lua_pushnumber(L, ws_clock_now(check_engine(L)->loop));
    return 1;
}

struct eval {
    const char *code;
    size_t len;
    struct kit_copy out;
};

/* In the app's state: runs the chunk and copies its first result to the spec's state. */
static int eval_in_app(lua_State *L)
{
    struct eval *ev = lua_touserdata(L, 1);
    if (luaL_loadbuffer(L, ev->code, ev->len, "=eval") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 1);
    kit_value_out(L, -1, &ev->out, 0);
    return 0;
}

/* e:eval(code) -> value, or nil, err: runs code in the app's Lua state (its globals, ws.state)
 * and returns its first result (kit_value_out: data copied, anything else a handle). */
static int engine_eval(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    struct eval ev = {.out = {.to = L, .engine = 1, .e = e}};
    ev.code = luaL_checklstring(L, 2, &ev.len);
    lua_settop(L, 2);
    lua_newtable(L);
    ev.out.map = lua_gettop(L);
    char err[1024];
    int rc = lb_protect(e->app, eval_in_app, &ev, err, sizeof(err));
    kit_settle(e);
    if (rc == 0)
        return 1;
    lua_settop(L, ev.out.map);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* e:log() -> text: the server's log lines so far. */
static int engine_log(lua_State *L)
{
    struct kit_engine *e = check_engine(L);
    char path[128];
    snprintf(path, sizeof(path), "%s/log", e->dir);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    FILE *f = fopen(path, "r");
    if (f) {
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
            luaL_addlstring(&b, chunk, n);
        fclose(f);
    }
    luaL_pushresult(&b);
    return 1;
}

static int engine_close(lua_State *L)
{
    struct kit_engine *e = luaL_checkudata(L, 1, KIT_ENGINE_MT);
    e->L = L; /* the thread that last called may be gone (a finalizer runs on any) */
    kit_free_engine(e);
    return 0;
}

/* kitcore.frame(opcode, payload [, fin]) -> bytes: one masked client frame (RFC 6455 §5.3). */
static int kit_frame(lua_State *L)
{
    lua_Integer op = luaL_checkinteger(L, 1);
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);
    bool fin = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
    luaL_argcheck(L, op >= 0 && op <= 15, 1, "opcode 0..15");
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t hdr[WS_FRAME_MAX_HEADER];
    size_t h = ws_frame_encode_header(hdr, fin, 0, (uint8_t)op, n, mask);
    luaL_Buffer b;
    uint8_t *out = (uint8_t *)luaL_buffinitsize(L, &b, h + n);
    memcpy(out, hdr, h);
    memcpy(out + h, p, n);
    ws_frame_mask(out + h, n, mask, 0);
    luaL_pushresultsize(&b, h + n);
    return 1;
}

/* kitcore.take(bytes) -> opcode, payload, fin, rest: the first whole server frame of bytes,
 * or nil when bytes do not hold one yet. */
static int kit_take(lua_State *L)
{
    size_t avail;
    const uint8_t *p = (const uint8_t *)luaL_checklstring(L, 1, &avail);
    if (avail < 2)
        return 0;
    uint64_t len = p[1] & 0x7f;
    size_t h = 2;
    if (len == 126) {
        if (avail < 4)
            return 0;
        len = (uint64_t)p[2] << 8 | p[3];
        h = 4;
    } else if (len == 127) {
        if (avail < 10)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        h = 10;
    }
    if (p[1] & 0x80)
        h += 4; /* a server must not mask (RFC 6455 §5.1); taken as it is */
    if (avail < h || avail - h < len)
        return 0;
    lua_pushinteger(L, p[0] & 0x0f);
    lua_pushlstring(L, (const char *)p + h, (size_t)len);
    lua_pushboolean(L, p[0] & 0x80);
    lua_pushlstring(L, (const char *)p + h + len, avail - h - (size_t)len);
    return 4;
}

int luaopen_ws_kitcore(lua_State *L);

int luaopen_ws_kitcore(lua_State *L)
{
    lb_app_standins = kit_install_standins;
    static const luaL_Reg methods[] = {
        {"connect", engine_connect},
        {"write", engine_write},
        {"read", engine_read},
        {"shutdown", engine_shutdown},
        {"pause", engine_pause},
        {"advance", engine_advance},
        {"now", engine_now},
        {"path", engine_path},
        {"shutdown_server", engine_shutdown_server},
        {"config", engine_config},
        {"next_timer", engine_next_timer},
        {"on_http", engine_on_http},
        {"on_pg", engine_on_pg},
        {"redis", engine_redis},
        {"redis_call", engine_redis_call},
        {"on_redis", engine_on_redis},
        {"upstream", engine_upstream},
        {"upstream_answer", engine_upstream_answer},
        {"upstream_send", engine_upstream_send},
        {"upstream_close", engine_upstream_close},
        {"upstream_drop", engine_upstream_drop},
        {"upstream_next", engine_upstream_next},
        {"upstream_state", engine_upstream_state},
        {"reload", engine_reload},
        {"eval", engine_eval},
        {"log", engine_log},
        {"close", engine_close},
        {NULL, NULL},
    };
    kit_value_open(L);
    luaL_newmetatable(L, KIT_ENGINE_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, engine_close);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {
        {"load", kit_load}, {"frame", kit_frame}, {"take", kit_take}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}
