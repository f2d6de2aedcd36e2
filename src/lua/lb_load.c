/* Loading and reloading app.lua: a reload builds the whole new version aside (compiled, run in a
 * fresh environment, validated, its config applied and its load() hook passed) and swaps it in
 * only then; any failure leaves the running version serving. The checks themselves are
 * lb_validate.c's; the status file that `wsserver --reload` reads is lb_status.c's. */
#include "ws/lb.h"

#include "ws/buf.h"
#include "ws/err.h"
#include "ws/http_client.h"
#include "ws/log.h"
#include "ws/notify.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void on_reload_idle(struct ev_loop *loop, ev_idle *w, int revents);

/* The Lua side of a new app: the connection table, the conn metatable, the ws module.
 * [-0, +0, m] */
static int init_app(lua_State *L)
{
    struct lb_app *a = lua_touserdata(L, 1);
    lua_newtable(L);
    a->conns_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lb_conn_open(L);
    lb_ws_open(a);
    return 0;
}

void (*lb_app_standins)(struct lb_app *a);

struct lb_app *lb_app_new(struct ev_loop *loop, const char *path, const struct ws_config *cli,
                          bool *config_error, char *err, size_t errlen)
{
    struct lb_app *a = ws_xcalloc(1, sizeof(*a));
    a->loop = loop;
    ws_config_copy(&a->base, cli);
    ws_config_copy(&a->config, cli);
    a->path = ws_xstrndup(path, strlen(path));
    const char *slash = strrchr(path, '/');
    a->dir = slash ? ws_xstrndup(path, (size_t)(slash - path)) : ws_xstrndup(".", 1);
    a->mem_limit = (size_t)cli->lua_memory_limit;
    a->handler_timeout = cli->handler_timeout;
    a->app_ref = a->http_ref = a->conns_ref = a->state_ref = a->ws_ref = LUA_NOREF;
    a->http_ops = &ws_http_client_libcurl;
    if (lb_app_standins)
        lb_app_standins(a);
    for (int i = 0; i < LB_HANDLER_COUNT; i++)
        a->handlers[i] = LUA_NOREF;
    ev_idle_init(&a->reload_idle, on_reload_idle);
    a->reload_idle.data = a;
    char why[512];
    if (lb_state_open(a, why, sizeof(why)) < 0 ||
        lb_protect(a, init_app, a, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: cannot set up the Lua state: %s", path, why);
        lb_app_free(a);
        return NULL;
    }
    if (lb_app_reload(a, NULL) < 0) {
        /* lb_app_reload logged the reason */
        snprintf(err, errlen, "%s: the app failed to load (see the error above)", path);
        if (a->config_error)
            *config_error = true;
        lb_app_free(a);
        return NULL;
    }
    return a;
}

void lb_app_free(struct lb_app *a)
{
    if (!a)
        return;
    if (a->L) {
        /* finalizers run by lua_close may call the API: no server, no new timers */
        a->srv = NULL;
        a->closing = true;
        lb_ws_cancel_timers(a, 0);
        lb_task_free_all(a);
        lua_close(a->L);
    }
    if (a->http) /* after the state: nothing refers to a request any more */
        a->http_ops->free(a->http);
    lb_pg_free(a);
    lb_redis_free(a);
    ev_idle_stop(a->loop, &a->reload_idle);
    if (!a->status_pid) {
        char status[PATH_MAX];
        for (int i = 0; lb_status_path(status, sizeof(status), a->config.pidfile, getpid(), i) == 0;
             i++)
            unlink(status);
    }
    ws_config_free(&a->base);
    ws_config_free(&a->config);
    free(a->path);
    free(a->dir);
    free(a);
}

static void log_reload(struct lb_app *a, const char *trigger, bool ok, const char *why)
{
    lb_status_write(a, ok, why);
    struct ws_log_line l;
    ws_log_begin(&l, ok ? WS_LOG_INFO : WS_LOG_ERROR, ok ? "app_loaded" : "app_load_failed");
    ws_log_cstr(&l, "file", a->path);
    ws_log_u64(&l, "generation", a->generation + (ok ? 0 : 1));
    if (trigger)
        ws_log_cstr(&l, "trigger", trigger);
    if (why)
        ws_log_cstr(&l, "error", why);
    ws_log_end(&l);
}

/* Removes the app folder's modules from package.loaded so require() reads them again; returns
 * (pushes) a table of what was removed so a failed reload can put it back. package.searchpath
 * is the app's to replace, so this runs protected. [-0, +1, e] */
static void forget_modules(struct lb_app *a)
{
    lua_State *L = a->L;
    lua_newtable(L);
    int saved = lua_gettop(L);
    lua_getglobal(L, "package");
    if (!lua_istable(L, -1))
        luaL_error(L, "the global 'package' is not a table any more");
    lua_getfield(L, -1, "loaded");
    if (!lua_istable(L, -1))
        luaL_error(L, "package.loaded is not a table any more");
    int loaded = lua_gettop(L);
    lua_getfield(L, -2, "searchpath");
    int searchpath = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, loaded)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            continue;
        lua_pushvalue(L, searchpath);
        lua_pushvalue(L, -2);
        lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", a->dir, a->dir);
        lua_call(L, 2, 1);
        bool mine = lua_isstring(L, -1);
        lua_pop(L, 1);
        if (mine) {
            lua_pushvalue(L, -1);
            lua_pushvalue(L, -1);
            lua_rawget(L, loaded);
            lua_rawset(L, saved);
        }
    }
    lua_pushnil(L);
    while (lua_next(L, saved)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, loaded);
    }
    lua_settop(L, saved);
}

/* A new version being built aside: what build_version made so far, so a failure at any point
 * (an error it returns, or one a metamethod raises) can be undone. */
struct version {
    struct lb_app *a;
    const char *trigger;
    const char *stage; /* what was being done, for an error raised inside */
    const char *field; /* or the app field being read */
    char err[512];     /* a refusal build_version returned */
    bool config_error;
    struct ws_config next;
    bool have_next;
    int saved_ref; /* the forgotten modules */
    int app_ref, http_ref, handlers[LB_HANDLER_COUNT];
};

/* Puts the forgotten modules back into package.loaded. [-0, +0, m] */
static int restore_modules(lua_State *L)
{
    struct version *v = lua_touserdata(L, 1);
    lb_push_ref(L, v->saved_ref);
    int saved = lua_gettop(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    if (!lua_istable(L, saved) || !lua_istable(L, -1))
        return 0;
    lua_pushnil(L);
    while (lua_next(L, saved)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    return 0;
}

struct load_call {
    struct lb_app *a;
    int fn_ref;
    uint64_t generation;
    const char *trigger;
};

/* load(state, info) [-0, +0, e] */
static int call_load_fn(lua_State *L)
{
    struct load_call *c = lua_touserdata(L, 1);
    lb_push_ref(L, c->fn_ref);
    lb_push_ref(L, c->a->state_ref);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)c->generation);
    lua_setfield(L, -2, "generation");
    lua_pushinteger(L, (lua_Integer)c->generation - 1);
    lua_setfield(L, -2, "previous");
    lua_pushstring(L, c->a->path);
    lua_setfield(L, -2, "file");
    lua_pushstring(L, c->trigger ? c->trigger : "start");
    lua_setfield(L, -2, "trigger");
    lua_call(L, 2, 0);
    return 0;
}

/* Calls load(state, info) when the version has one (fn_ref). Returns lb_call's result. */
static int call_load(struct lb_app *a, int fn_ref, uint64_t generation, const char *trigger)
{
    if (fn_ref == LUA_NOREF)
        return 0;
    struct load_call c = {a, fn_ref, generation, trigger};
    lua_pushcfunction(a->L, call_load_fn);
    lua_pushlightuserdata(a->L, &c);
    a->in_load++; /* SPEC §4a: load cannot wait */
    int rc = lb_call(a, 1, 0, "load");
    a->in_load--;
    return rc;
}

/* Keeps the value on top in the registry; *ref is set before anything else can fail.
 * [-1, +0, m] */
static void keep(lua_State *L, int *ref)
{
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Builds the new version aside: compiles and runs the file in a fresh environment, validates
 * its table, its config and its routes, resolves its handlers and calls its load(). Returns
 * with v->err set when the version is refused; raises when something (a metamethod, memory)
 * fails on the way. Nothing of the running version is touched. [-0, +0, e] */
static int build_version(lua_State *L)
{
    struct version *v = lua_touserdata(L, 1);
    struct lb_app *a = v->a;
    v->stage = "reloading the app's modules";
    forget_modules(a);
    keep(L, &v->saved_ref);

    v->stage = "loading the app";
    if (luaL_loadfilex(L, a->path, "t") != LUA_OK) {
        snprintf(v->err, sizeof(v->err), "%s", lua_tostring(L, -1));
        return 0;
    }
    /* a fresh environment: the old version's globals are gone, _G stays readable */
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushglobaltable(L);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setupvalue(L, -2, 1);
    a->loading = true;
    if (lb_call(a, 0, 1, "app") < 0) {
        snprintf(v->err, sizeof(v->err), "running the app failed (see the handler_error above)");
        return 0;
    }
    int app_idx = lua_gettop(L);
    v->stage = "checking the app table";
    if (lb_validate_app(L, app_idx, v->err, sizeof(v->err)) < 0)
        return 0;
    lua_pushvalue(L, app_idx);
    keep(L, &v->app_ref);

    /* every load starts from the defaults plus the command line, then the app's table */
    v->stage = "reading app.config";
    lua_settop(L, app_idx);
    ws_config_copy(&v->next, &a->base);
    v->have_next = true;
    lua_getfield(L, app_idx, "config");
    if (!lua_isnil(L, -1) && !lua_istable(L, -1)) {
        snprintf(v->err, sizeof(v->err), "app.config must be a table, got %s",
                 luaL_typename(L, -1));
        return 0;
    }
    if (lua_istable(L, -1) &&
        (lb_validate_config(L, lua_gettop(L), &v->next, v->err, sizeof(v->err)) < 0 ||
         ws_config_validate(&v->next, v->err, sizeof(v->err)) < 0)) {
        v->config_error = true;
        return 0;
    }
    lua_pop(L, 1);

    v->stage = "reading app.http";
    lua_getfield(L, app_idx, "http");
    if (!lua_isnil(L, -1) && !lua_istable(L, -1)) {
        snprintf(v->err, sizeof(v->err), "app.http must be a table, got %s", luaL_typename(L, -1));
        return 0;
    }
    if (lua_istable(L, -1)) {
        if (lb_validate_routes(L, lua_gettop(L), v->err, sizeof(v->err)) < 0)
            return 0;
        keep(L, &v->http_ref);
    } else {
        lua_pop(L, 1);
    }

    /* handlers are read once, here: a table whose __index answers them works, one whose
     * __index raises is refused now instead of failing later */
    for (int i = 0; i < LB_HANDLER_COUNT; i++) {
        v->field = lb_handler_names[i];
        lua_getfield(L, app_idx, lb_handler_names[i]);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
        } else if (!lua_isfunction(L, -1)) {
            snprintf(v->err, sizeof(v->err), "app.%s must be a function, got %s",
                     lb_handler_names[i], luaL_typename(L, -1));
            return 0;
        } else {
            keep(L, &v->handlers[i]);
        }
    }

    v->field = NULL;
    v->stage = "calling load()";
    if (a->srv && call_load(a, v->handlers[LB_LOAD], a->generation + 1, v->trigger) < 0) {
        snprintf(v->err, sizeof(v->err), "load() failed (see the handler_error above)");
        return 0;
    }
    return 0;
}

/* Drops a registry reference; never allocates, so it is safe outside a protected call.
 * [-0, +0, -] */
static void drop(lua_State *L, int *ref)
{
    luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    *ref = LUA_NOREF;
}

/* Reports configuration changes a reload cannot apply. */
static void report_restart_needed(const struct ws_config *was, const struct ws_config *now)
{
    for (const struct ws_option *opt = ws_options; opt->name; opt++) {
        if (opt->live || ws_config_equal(was, now, opt))
            continue;
        struct ws_log_line l;
        ws_log_begin(&l, WS_LOG_WARN, "config_needs_restart");
        ws_log_cstr(&l, "option", opt->name);
        ws_log_end(&l);
    }
}

int lb_app_reload(struct lb_app *a, const char *trigger)
{
    lua_State *L = a->L;
    struct version v = {.a = a, .trigger = trigger, .stage = "starting"};
    v.saved_ref = v.app_ref = v.http_ref = LUA_NOREF;
    for (int i = 0; i < LB_HANDLER_COUNT; i++)
        v.handlers[i] = LUA_NOREF;
    a->config_error = false;
    if (a->srv)
        ws_notify_reloading(); /* systemd: reloading until READY=1, whatever the result */
    char raised[480];
    if (lb_protect(a, build_version, &v, raised, sizeof(raised)) < 0)
        snprintf(v.err, sizeof(v.err), "%s%s failed: %s", v.field ? "reading app." : "",
                 v.field ? v.field : v.stage, raised);
    a->loading = false;
    if (v.err[0]) {
        a->config_error = v.config_error;
        lb_ws_cancel_timers(a, a->generation); /* timers the failed version started */
        if (v.saved_ref != LUA_NOREF &&
            lb_protect(a, restore_modules, &v, raised, sizeof(raised)) < 0)
            ws_log_msg(WS_LOG_WARN, "modules_not_restored", raised);
        drop(L, &v.saved_ref);
        drop(L, &v.app_ref);
        drop(L, &v.http_ref);
        for (int i = 0; i < LB_HANDLER_COUNT; i++)
            drop(L, &v.handlers[i]);
        if (v.have_next)
            ws_config_free(&v.next);
        a->attempts++;
        if (a->srv)
            a->srv->env.stats->reloads_failed++;
        log_reload(a, trigger, false, v.err);
        if (a->srv)
            ws_notify_ready(); /* the running version still serves */
        return WS_E_INVAL;
    }
    /* committed: from here on nothing fails and nothing touches Lua but dropping references */
    drop(L, &v.saved_ref);
    drop(L, &a->app_ref);
    a->app_ref = v.app_ref;
    drop(L, &a->http_ref);
    a->http_ref = v.http_ref;
    for (int i = 0; i < LB_HANDLER_COUNT; i++) {
        drop(L, &a->handlers[i]);
        a->handlers[i] = v.handlers[i];
    }
    a->generation++;
    lb_task_drop_idle(a);
    a->attempts++;
    if (a->srv)
        a->srv->env.stats->reloads_ok++;
    lb_ws_cancel_timers(a, a->generation);
    if (a->srv) {
        report_restart_needed(&a->srv->env.cfg, &v.next);
        ws_server_apply_config(a->srv, &v.next);
    }
    ws_config_free(&a->config);
    a->config = v.next;
    a->mem_limit = (size_t)v.next.lua_memory_limit;
    a->handler_timeout = v.next.handler_timeout;
    if (a->http)
        a->http_ops->set_max(a->http, (size_t)a->config.http_max_concurrent);
    if (a->srv) {
        log_reload(a, trigger, true, NULL);
        ws_notify_ready();
    }
    return 0;
}

static void on_reload_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)revents;
    struct lb_app *a = w->data;
    ev_idle_stop(loop, w);
    a->reload_pending = false;
    lb_app_reload(a, "request");
}

int lb_app_attach(struct lb_app *a, struct ws_server *srv, char *err, size_t errlen)
{
    a->srv = srv;
    if (call_load(a, a->handlers[LB_LOAD], a->generation, "start") < 0) {
        snprintf(err, errlen, "%s: load() failed (see the error above)", a->path);
        return WS_E_INVAL;
    }
    log_reload(a, "start", true, NULL);
    return 0;
}

int lb_app_check(struct lb_app *a, char *err, size_t errlen)
{
    if (call_load(a, a->handlers[LB_LOAD], a->generation, "check") < 0) {
        snprintf(err, errlen, "%s: load() failed (see the error above)", a->path);
        return WS_E_INVAL;
    }
    return 0;
}
