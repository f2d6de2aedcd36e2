/* ws.redis: connect(url [, opts]) gives a client on a pool the app keeps for its life (so a
 * reload finds it whole); client:call and client:pipeline wait (SPEC §4a) for the replies of the
 * core's pooled client (redis_client.c); client:subscribe runs a function per message. Misuse
 * raises; what goes wrong with Redis comes back as nil, message. */
#include "ws/lb.h"

#include "ws/clock.h"

#include "ws/log.h"
#include "ws/redis_client.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CLIENT_MT "wsserver.redis"
#define CALL_MT "wsserver.redis_call"
#define SUB_MT "wsserver.redis_sub"
#define DEFAULT_POOL 16
#define MAX_ARGS 100000 /* arguments in one call or pipeline (the Lua stack holds them) */

/* One pool per URL and size, for the life of the app. */
struct pool {
    struct pool *next;
    char *url;
    size_t size;
    const struct ws_redis_ops *ops;
    struct ws_redis *r;
};

struct lb_redis_sub {
    struct lb_app *a;
    const struct ws_redis_ops *ops;
    struct ws_redis_sub *s; /* NULL once unsubscribed */
    int fn_ref, self_ref;
    uint64_t generation;
    struct lb_redis_sub *prev, *next;
};

struct lb_redis {
    struct pool *pools;
    struct lb_redis_sub *subs;
};

/* The client userdata: a pool and the timeout of each call. */
struct client {
    struct pool *p;
    double timeout;
};

/* One call in flight, on the waiting coroutine's stack; its __gc releases what is left. */
struct redis_call {
    const struct ws_redis_ops *ops;
    struct ws_redis_req *req;
    struct lb_task *t;
    struct ws_redis_result res;
    bool pipeline;
    char command[32]; /* the first command's name, for logs (never its arguments) */
};

static void set_gauges(struct lb_app *a)
{
    if (!a->srv || !a->redis)
        return;
    size_t open = 0, busy = 0;
    for (struct pool *p = a->redis->pools; p; p = p->next) {
        open += p->ops->open(p->r);
        busy += p->ops->busy(p->r);
    }
    a->srv->env.stats->stores[WS_STATS_STORE_REDIS].pool_open = open;
    a->srv->env.stats->stores[WS_STATS_STORE_REDIS].pool_in_use = busy;
}

/* [-0, +0, -] */
static int call_gc(lua_State *L)
{
    struct redis_call *c = lua_touserdata(L, 1);
    if (c->req)
        c->ops->cancel(c->req, false);
    c->req = NULL;
    ws_redis_result_free(&c->res);
    return 0;
}

static void on_done(void *ud, struct ws_redis_result *res)
{
    struct redis_call *c = ud;
    c->req = NULL;
    c->res = *res;
    lb_task_wake(c->t, NULL);
}

/* The wait ended early: after a timeout the connection is closed (Redis may be hanging); after
 * a close or a shutdown the late reply is discarded and the connection serves again. */
static void on_cancel(struct lb_task *t)
{
    struct redis_call *c = t->wait_ud;
    if (c->req)
        c->ops->cancel(c->req, t->woke && strcmp(t->woke, "timeout") == 0);
    c->req = NULL;
    set_gauges(t->a);
}

static void log_failure(struct lb_task *t, const struct redis_call *c, const char *why)
{
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_WARN, "redis_failed");
    ws_log_cstr(&l, "handler", t->what ? t->what : "?");
    if (t->conn)
        ws_log_u64(&l, "conn", t->conn);
    ws_log_cstr(&l, "command", c->command);
    ws_log_cstr(&l, "error", why);
    ws_log_end(&l);
}

void lb_redis_push_reply(lua_State *L, const struct ws_redis_value *v, int null)
{
    luaL_checkstack(L, 3, "redis reply nested too deep");
    switch (v->kind) {
    case WS_REDIS_STRING:
    case WS_REDIS_STATUS:
        lua_pushlstring(L, v->str, v->len);
        break;
    case WS_REDIS_INTEGER:
        lua_pushinteger(L, (lua_Integer)v->integer);
        break;
    case WS_REDIS_NIL:
        lua_pushvalue(L, null);
        break;
    case WS_REDIS_ERROR:
        lua_createtable(L, 2, 0);
        lua_pushboolean(L, 0);
        lua_rawseti(L, -2, 1);
        lua_pushlstring(L, v->str, v->len);
        lua_rawseti(L, -2, 2);
        break;
    case WS_REDIS_ARRAY:
        lua_createtable(L, v->len > INT32_MAX ? INT32_MAX : (int)v->len, 0);
        for (size_t i = 0; i < v->len; i++) {
            lb_redis_push_reply(L, &v->elements[i], null);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    }
}

/* The continuation: the reply (or the list of replies), or nil and why. [-0, +1|+2, m] */
static int call_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct lb_task *t = (struct lb_task *)ctx;
    struct redis_call *c = t->wait_ud;
    struct lb_app *a = t->a;
    struct ws_stats *st = a->srv ? a->srv->env.stats : NULL;
    double seconds = ws_clock_now(a->loop) - t->wait_started;
    set_gauges(a);
    const char *why = t->woke;
    if (!why && !c->res.ok)
        why = c->res.err;
    if (!why && !c->pipeline && c->res.n == 1 && c->res.values[0].kind == WS_REDIS_ERROR)
        why = c->res.values[0].str; /* a Redis error reply: nil, "ERR ..." */
    if (why) {
        bool timeout = strcmp(why, "timeout") == 0;
        /* a close or a shutdown is no failure of the command */
        bool cancelled = t->woke && !timeout;
        if (st && !cancelled)
            ws_stats_observe_store(st, WS_STATS_STORE_REDIS,
                                   timeout ? WS_STATS_STORE_TIMEOUT : WS_STATS_STORE_ERROR,
                                   seconds);
        if (!cancelled)
            log_failure(t, c, why);
        lua_pushnil(L);
        lua_pushstring(L, why);
        ws_redis_result_free(&c->res);
        return 2;
    }
    if (st)
        ws_stats_observe_store(st, WS_STATS_STORE_REDIS, WS_STATS_STORE_OK, seconds);
    lb_push_ref(L, a->ws_ref);
    lua_getfield(L, -1, "null");
    lua_remove(L, -2);
    int null = lua_gettop(L);
    if (c->pipeline) {
        lua_createtable(L, (int)c->res.n, 0);
        for (size_t i = 0; i < c->res.n; i++) {
            lb_redis_push_reply(L, &c->res.values[i], null);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
    } else {
        lb_redis_push_reply(L, &c->res.values[0], null);
    }
    ws_redis_result_free(&c->res);
    return 1;
}

static struct client *check_client(lua_State *L)
{
    return luaL_checkudata(L, 1, CLIENT_MT);
}

/* Checks that argument i (a string or a number) can be sent. [-0, +0, v] */
static void check_arg(lua_State *L, int i, const char *api)
{
    int ty = lua_type(L, i);
    if (ty != LUA_TSTRING && ty != LUA_TNUMBER)
        luaL_error(L, "ws.redis: %s: argument %d must be a string or a number, got %s", api, i - 1,
                   luaL_typename(L, i));
}

/* Commands that change the state of the connection they run on. A pool's calls share its
 * connections, and a handler's next call may run on another one: they are refused, with what to
 * do instead. MULTI, EXEC and DISCARD may go in a pipeline (its commands go out together on one
 * connection). */
static const struct {
    const char *name;
    const char *instead;
} conn_state[] = {
    {"MULTI", "put MULTI ... EXEC in one client:pipeline"},
    {"EXEC", "put MULTI ... EXEC in one client:pipeline"},
    {"DISCARD", "put MULTI ... DISCARD in one client:pipeline"},
    {"SUBSCRIBE", "use client:subscribe"},
    {"PSUBSCRIBE", "use client:subscribe"},
    {"SSUBSCRIBE", "use client:subscribe"},
    {"UNSUBSCRIBE", "use the handle client:subscribe returns"},
    {"PUNSUBSCRIBE", "use the handle client:subscribe returns"},
    {"SUNSUBSCRIBE", "use the handle client:subscribe returns"},
    {"SELECT", "put the db in the URL (redis://host:port/db)"},
    {"AUTH", "put the password in the URL (redis://:password@host:port)"},
    {"HELLO", "put the password in the URL (redis://:password@host:port)"},
    {"WATCH", "a pooled client cannot keep a connection between calls"},
    {"UNWATCH", "a pooled client cannot keep a connection between calls"},
    {"MONITOR", "a pooled client cannot keep a connection between calls"},
    {"RESET", "a pooled client cannot keep a connection between calls"},
    {"QUIT", "the pool closes its connections itself"},
};

/* Raises when the command at idx (its name) is one of conn_state; in a pipeline (*multi not
 * NULL) MULTI, EXEC and DISCARD are allowed in that order, *multi saying a MULTI is open.
 * [-0, +0, v] */
static void check_command(lua_State *L, int idx, const char *api, bool *multi)
{
    size_t n;
    const char *name = lua_tolstring(L, idx, &n);
    char up[16];
    if (n >= sizeof(up))
        return;
    for (size_t i = 0; i <= n; i++)
        up[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 32 : name[i]);
    for (size_t k = 0; k < sizeof(conn_state) / sizeof(conn_state[0]); k++) {
        if (strcmp(up, conn_state[k].name) != 0)
            continue;
        if (multi && k == 0 && !*multi) {
            *multi = true;
            return;
        }
        if (multi && k <= 2 && k > 0 && *multi) {
            *multi = false;
            return;
        }
        luaL_error(L, "ws.redis: %s: %s changes the state of its connection: %s", api, up,
                   conn_state[k].instead);
    }
}

/* Sends the commands whose arguments are the strings and numbers from stack index first to the
 * top, command i having argc[i] of them, and waits. [-?, +1|+2, v] */
static int send_and_wait(lua_State *L, struct client *cl, int first, size_t ncmds, const int *argc,
                         bool pipeline)
{
    struct lb_app *a = lb_app_of(L);
    int top = lua_gettop(L);
    size_t nargs = (size_t)(top - first + 1);
    struct lb_task *t = lb_task_waiter(L, pipeline ? "redis:pipeline" : "redis:call");
    if (t->gone) {
        lua_pushnil(L);
        lua_pushstring(L, t->gone);
        return 2;
    }
    /* scratch arrays as userdata: freed by the GC whatever happens */
    const char **argv = lua_newuserdatauv(L, nargs * sizeof(*argv), 0);
    size_t *argvlen = lua_newuserdatauv(L, nargs * sizeof(*argvlen), 0);
    for (size_t i = 0; i < nargs; i++)
        argv[i] = lua_tolstring(L, first + (int)i, &argvlen[i]); /* numbers become strings */
    struct redis_call *c = lua_newuserdatauv(L, sizeof(*c), 0);
    memset(c, 0, sizeof(*c));
    luaL_setmetatable(L, CALL_MT);
    c->t = t;
    c->ops = cl->p->ops;
    c->pipeline = pipeline;
    size_t n = argvlen[0] < sizeof(c->command) ? argvlen[0] : sizeof(c->command) - 1;
    memcpy(c->command, argv[0], n);
    char err[256];
    c->req = c->ops->command(cl->p->r, ncmds, argc, argv, argvlen, on_done, c, err, sizeof(err));
    set_gauges(a);
    if (!c->req) {
        struct ws_stats *st = a->srv ? a->srv->env.stats : NULL;
        if (st)
            ws_stats_observe_store(st, WS_STATS_STORE_REDIS, WS_STATS_STORE_ERROR, 0);
        log_failure(t, c, err);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return lb_task_wait(L, t, cl->timeout, false, on_cancel, c, call_done);
}

/* client:call(command, ...) -> reply | nil, err; waits. [-?, +1|+2, v] */
static int client_call(lua_State *L)
{
    struct client *cl = check_client(L);
    int top = lua_gettop(L);
    if (top < 2)
        return luaL_error(L, "ws.redis: call needs a command");
    if (top - 1 > MAX_ARGS)
        return luaL_error(L, "ws.redis: at most %d arguments", MAX_ARGS);
    for (int i = 2; i <= top; i++)
        check_arg(L, i, "call");
    check_command(L, 2, "call", NULL);
    int argc = top - 1;
    return send_and_wait(L, cl, 2, 1, &argc, false);
}

/* p:call(...) inside a pipeline function: appends {...} to the list (upvalue 1). [-0, +0, v] */
static int pipe_call(lua_State *L)
{
    int top = lua_gettop(L);
    if (top < 2)
        return luaL_error(L, "ws.redis: p:call needs a command");
    for (int i = 2; i <= top; i++)
        check_arg(L, i, "p:call");
    lua_createtable(L, top - 1, 0);
    for (int i = 2; i <= top; i++) {
        lua_pushvalue(L, i);
        lua_rawseti(L, -2, i - 1);
    }
    lua_rawseti(L, lua_upvalueindex(1), (lua_Integer)luaL_len(L, lua_upvalueindex(1)) + 1);
    return 0;
}

/* client:pipeline(function(p) p:call(...) ... end) -> {reply, ...} | nil, err; the commands go
 * in one round trip; an error reply among them is {false, "ERR ..."}. [-?, +1|+2, v] */
static int client_pipeline(lua_State *L)
{
    struct client *cl = check_client(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lua_newtable(L); /* 3: the list */
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, 3);
    lua_pushcclosure(L, pipe_call, 1);
    lua_setfield(L, -2, "call");
    lua_pushvalue(L, 2);
    lua_insert(L, -2);
    lua_call(L, 1, 0); /* may raise: nothing is held yet */
    lua_Integer ncmds = luaL_len(L, 3);
    if (ncmds == 0) {
        lua_newtable(L);
        return 1;
    }
    int *argc = lua_newuserdatauv(L, (size_t)ncmds * sizeof(*argc), 0);
    lua_replace(L, 2); /* keeps it alive in the slot of the function */
    size_t total = 0;
    bool multi = false;
    for (lua_Integer i = 1; i <= ncmds; i++) {
        lua_rawgeti(L, 3, i);
        lua_Integer n = luaL_len(L, -1);
        total += (size_t)n;
        if (total > MAX_ARGS)
            return luaL_error(L, "ws.redis: at most %d arguments", MAX_ARGS);
        luaL_checkstack(L, (int)n + 8, "too many arguments in a pipeline");
        argc[i - 1] = (int)n;
        int list = lua_gettop(L);
        for (lua_Integer k = 1; k <= n; k++)
            lua_rawgeti(L, list, k);
        lua_remove(L, list);
        check_command(L, lua_gettop(L) - (int)n + 1, "pipeline", &multi);
    }
    if (multi)
        return luaL_error(L, "ws.redis: pipeline: MULTI without EXEC or DISCARD");
    return send_and_wait(L, cl, 4, (size_t)ncmds, argc, true);
}

/* client:set_timeout(seconds): the timeout of this client's later calls. [-0, +0, v] */
static int client_set_timeout(lua_State *L)
{
    struct client *cl = check_client(L);
    lua_Number s = luaL_checknumber(L, 2);
    luaL_argcheck(L, s > 0 && isfinite(s), 2, "timeout must be a number of seconds > 0");
    cl->timeout = s;
    return 0;
}

/* ---- subscriptions ---- */

static void sub_end(struct lb_redis_sub *s)
{
    struct lb_app *a = s->a;
    if (!s->s)
        return;
    s->ops->unsubscribe(s->s);
    s->s = NULL;
    if (s->prev)
        s->prev->next = s->next;
    else
        a->redis->subs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    luaL_unref(a->L, LUA_REGISTRYINDEX, s->fn_ref);
    luaL_unref(a->L, LUA_REGISTRYINDEX, s->self_ref);
    s->fn_ref = s->self_ref = LUA_NOREF;
}

/* A message: fn(channel, message) runs as a task of its own (it may wait). */
static void on_message(void *ud, const char *ch, size_t chlen, const char *msg, size_t len)
{
    struct lb_redis_sub *s = ud;
    struct lb_app *a = s->a;
    struct lb_task *task = lb_task_new(a);
    if (!task || !lua_checkstack(task->co, 3)) {
        lb_report_error(a, "redis.subscribe", 0, "not enough memory");
        return;
    }
    lb_push_ref(task->co, s->fn_ref);
    lua_pushlstring(task->co, ch, chlen);
    lua_pushlstring(task->co, msg, len);
    lb_task_start(task, 2, "redis.subscribe", 0);
}

/* client:subscribe(channel, fn) -> handle with :unsubscribe(). [-0, +1, v] */
static int client_subscribe(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    struct client *cl = check_client(L);
    size_t len;
    const char *ch = luaL_checklstring(L, 2, &len);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    if (a->closing)
        return luaL_error(L, "the server is stopping: no new subscriptions");
    struct lb_redis_sub *s = lua_newuserdatauv(L, sizeof(*s), 0);
    memset(s, 0, sizeof(*s));
    luaL_setmetatable(L, SUB_MT);
    s->a = a;
    s->generation = a->generation + (a->loading ? 1 : 0);
    lua_pushvalue(L, 3);
    s->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->next = a->redis->subs;
    if (s->next)
        s->next->prev = s;
    a->redis->subs = s;
    s->ops = cl->p->ops;
    s->s = s->ops->subscribe(cl->p->r, ch, len, on_message, s);
    set_gauges(a);
    return 1;
}

/* handle:unsubscribe() [-0, +0, v] */
static int sub_unsubscribe(lua_State *L)
{
    struct lb_redis_sub *s = luaL_checkudata(L, 1, SUB_MT);
    sub_end(s);
    return 0;
}

void lb_redis_cancel_subs(struct lb_app *a, uint64_t keep_generation)
{
    if (!a->redis)
        return;
    struct lb_redis_sub *s = a->redis->subs;
    while (s) {
        struct lb_redis_sub *next = s->next;
        if (s->generation != keep_generation || keep_generation == 0)
            sub_end(s);
        s = next;
    }
}

void lb_redis_free(struct lb_app *a)
{
    if (!a->redis)
        return;
    struct pool *p = a->redis->pools;
    while (p) {
        struct pool *next = p->next;
        p->ops->free(p->r);
        free(p->url);
        free(p);
        p = next;
    }
    free(a->redis);
    a->redis = NULL;
}

/* ---- connect ---- */

/* ws.redis.connect(url [, {timeout =, pool =}]) -> client | nil, err. Makes no connection yet:
 * the first command does. [-0, +1|+2, v] */
static int redis_connect(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    size_t ulen;
    const char *url = luaL_checklstring(L, 1, &ulen);
    double timeout = a->config.io_timeout > 0 ? a->config.io_timeout : 10;
    lua_Integer size = DEFAULT_POOL;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "timeout");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) > 0) ||
                !isfinite(lua_tonumber(L, -1)))
                return luaL_error(L, "ws.redis: opts.timeout must be a number of seconds > 0");
            timeout = lua_tonumber(L, -1);
        }
        lua_getfield(L, 2, "pool");
        if (!lua_isnil(L, -1)) {
            if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
                lua_tointeger(L, -1) > WS_REDIS_MAX_POOL)
                return luaL_error(L, "ws.redis: opts.pool must be a whole number from 1 to %d",
                                  WS_REDIS_MAX_POOL);
            size = lua_tointeger(L, -1);
        }
        lua_pop(L, 2);
    }
    struct ws_redis_addr addr;
    if (strlen(url) != ulen || ws_redis_parse_url(url, &addr) < 0) {
        lua_pushnil(L);
        lua_pushfstring(L,
                        "invalid Redis URL %s (expected redis://[:password@]host:port[/db] or "
                        "unix:/path)",
                        url);
        return 2;
    }
    if (!a->redis)
        a->redis = ws_xcalloc(1, sizeof(*a->redis));
    struct pool *p = a->redis->pools;
    while (p && (strcmp(p->url, url) != 0 || p->size != (size_t)size))
        p = p->next;
    if (!p) {
        p = ws_xcalloc(1, sizeof(*p));
        p->url = ws_xstrndup(url, ulen);
        p->size = (size_t)size;
        p->ops = a->redis_ops ? a->redis_ops : &ws_redis_hiredis;
        p->r = p->ops->create(a->loop, &addr, p->size, timeout);
        p->next = a->redis->pools;
        a->redis->pools = p;
    }
    struct client *cl = lua_newuserdatauv(L, sizeof(*cl), 0);
    cl->p = p;
    cl->timeout = timeout;
    luaL_setmetatable(L, CLIENT_MT);
    return 1;
}

/* ws.redis.url() -> the server's Redis (--redis or config.redis) or nil. [-0, +1, -] */
static int redis_url(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    if (a->config.redis)
        lua_pushstring(L, a->config.redis);
    else
        lua_pushnil(L);
    return 1;
}

void lb_redis_open(lua_State *L)
{
    luaL_newmetatable(L, CALL_MT);
    lua_pushcfunction(L, call_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    static const luaL_Reg client_methods[] = {
        {"call", client_call},
        {"pipeline", client_pipeline},
        {"subscribe", client_subscribe},
        {"set_timeout", client_set_timeout},
        {NULL, NULL},
    };
    luaL_newmetatable(L, CLIENT_MT);
    luaL_newlib(L, client_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, SUB_MT);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, sub_unsubscribe);
    lua_setfield(L, -2, "unsubscribe");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {
        {"connect", redis_connect},
        {"url", redis_url},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
}
