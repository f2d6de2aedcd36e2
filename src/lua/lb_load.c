/* Loading and reloading app.lua: a reload builds the whole new version aside (compiled, run in a
 * fresh environment, validated, its config applied and its load() hook passed) and swaps it in
 * only then; any failure leaves the running version serving. Reload results go to a status file
 * for `wsserver --reload`. */
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

/* The app table fields that hold handlers, by enum lb_handler. */
static const char *const handler_names[LB_HANDLER_COUNT] = {
    "upgrade", "open", "message", "close", "drain", "shutdown", "load", "error",
};

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

/* Checks the returned app table: every known field has the right type, unknown ones are
 * refused (a typo like "mesage" would otherwise be silently ignored). [-0, +0, m] */
static int validate(lua_State *L, int idx, char *err, size_t errlen)
{
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "the app must return a table, got %s", luaL_typename(L, idx));
        return WS_E_INVAL;
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        const char *want = NULL;
        bool known = false;
        if (key && (strcmp(key, "config") == 0 || strcmp(key, "http") == 0)) {
            known = true;
            want = lua_istable(L, -1) ? NULL : "a table";
        }
        for (int i = 0; key && !known && i < LB_HANDLER_COUNT; i++) {
            if (strcmp(key, handler_names[i]) == 0) {
                known = true;
                want = lua_isfunction(L, -1) ? NULL : "a function";
            }
        }
        if (!known) {
            snprintf(err, errlen,
                     "unknown app field '%s' (known: config, http, upgrade, open, "
                     "message, close, drain, shutdown, load, error)",
                     key ? key : luaL_typename(L, -2));
            lua_pop(L, 2);
            return WS_E_INVAL;
        }
        if (want) {
            snprintf(err, errlen, "app.%s must be %s, got %s", key, want, luaL_typename(L, -1));
            lua_pop(L, 2);
            return WS_E_INVAL;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* Merges the config table at idx into cfg. Every value must have its option's type: a string
 * where a number belongs ("20" for ping_interval) is refused, like a number for a string.
 * [-0, +0, e] (a __len or __tostring metamethod may raise) */
static int apply_config(lua_State *L, int t, struct ws_config *cfg, char *err, size_t errlen)
{
    int rc = 0;
    lua_pushnil(L);
    while (rc == 0 && lua_next(L, t)) {
        const struct ws_option *opt =
            lua_type(L, -2) == LUA_TSTRING ? ws_config_find(lua_tostring(L, -2), false) : NULL;
        int type = lua_type(L, -1);
        bool number_opt = opt && (opt->type == WS_OPT_INT || opt->type == WS_OPT_SECONDS);
        if (!opt) {
            snprintf(err, errlen, "unknown config key '%s'", luaL_tolstring(L, -2, NULL));
            lua_pop(L, 1);
            rc = WS_E_INVAL;
        } else if (type == LUA_TNUMBER) {
            rc = ws_config_set_number(cfg, opt, lua_tonumber(L, -1), err, errlen);
        } else if (type == LUA_TBOOLEAN) {
            rc = ws_config_set_bool(cfg, opt, lua_toboolean(L, -1), err, errlen);
        } else if (type == LUA_TSTRING && number_opt &&
                   !(strcmp(opt->name, "workers") == 0 &&
                     strcmp(lua_tostring(L, -1), "auto") == 0)) {
            rc = ws_config_wrong_type(opt, "string", err, errlen);
        } else if (type == LUA_TSTRING) {
            if (opt->type == WS_OPT_LIST)
                ws_config_clear_list(cfg, opt);
            rc = ws_config_set(cfg, opt, lua_tostring(L, -1), false, err, errlen);
        } else if (type == LUA_TTABLE && opt->type == WS_OPT_LIST) {
            ws_config_clear_list(cfg, opt);
            lua_Integer n = luaL_len(L, -1);
            for (lua_Integer i = 1; rc == 0 && i <= n; i++) {
                lua_rawgeti(L, -1, i);
                if (lua_type(L, -1) != LUA_TSTRING) {
                    snprintf(err, errlen, "invalid value for %s: a list of strings", opt->name);
                    rc = WS_E_INVAL;
                } else {
                    rc = ws_config_set(cfg, opt, lua_tostring(L, -1), false, err, errlen);
                }
                lua_pop(L, 1);
            }
        } else {
            rc = ws_config_wrong_type(opt, luaL_typename(L, -1), err, errlen);
        }
        lua_pop(L, 1);
    }
    if (rc != 0)
        lua_pop(L, 1); /* the key lua_next left */
    return rc;
}

/* The paths the server answers itself, before any app route. */
static bool builtin_path(const char *path, size_t n)
{
    return (n == 8 && memcmp(path, "/healthz", 8) == 0) ||
           (n == 8 && memcmp(path, "/metrics", 8) == 0);
}

/* Checks the keys of the app.http table at idx (its own keys: a metamethod that dispatches
 * cannot be listed): each is "METHOD /path" (an upper-case method, one space, a path starting
 * with '/' without spaces or a query) holding a function, and none is a built-in path.
 * [-0, +0, -] */
static int check_routes(lua_State *L, int idx, char *err, size_t errlen)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *why = NULL;
        size_t n = 0;
        const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &n) : NULL;
        size_t m = key ? strspn(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") : 0;
        const char *path = key ? key + m + 1 : NULL;
        size_t plen = key && m < n ? n - m - 1 : 0;
        if (!key) {
            snprintf(err, errlen, "app.http keys must be strings like \"GET /path\", got a %s",
                     luaL_typename(L, -2));
            lua_pop(L, 2);
            return WS_E_INVAL;
        }
        if (m == 0 || m >= n || key[m] != ' ' || plen == 0 || path[0] != '/')
            why = "must be \"METHOD /path\" (e.g. \"GET /count\")";
        for (size_t i = 0; !why && i < plen; i++)
            if ((unsigned char)path[i] <= ' ' || path[i] == '?' || path[i] == '#' ||
                path[i] == 0x7f)
                why = "must be \"METHOD /path\" with a path of its own (no spaces, no query)";
        if (!why && builtin_path(path, plen))
            why = "is a path the server answers itself (/healthz, /metrics): pick another path";
        if (!why && !lua_isfunction(L, -1)) {
            snprintf(err, errlen, "app.http[\"%.100s\"] must be a function, got %s", key,
                     luaL_typename(L, -1));
            lua_pop(L, 2);
            return WS_E_INVAL;
        }
        if (why) {
            snprintf(err, errlen, "app.http key \"%.100s\" %s", key, why);
            lua_pop(L, 2);
            return WS_E_INVAL;
        }
        lua_pop(L, 1);
    }
    return 0;
}

int lb_status_path(char *out, size_t cap, const char *pidfile, long pid, int which)
{
    const char *dirs[3];
    int lens[3], n = 0;
    const char *slash = pidfile ? strrchr(pidfile, '/') : NULL;
    if (pidfile) {
        dirs[n] = slash ? pidfile : ".";
        lens[n++] = slash ? (int)(slash - pidfile) : 1;
    }
    const char *runtime = getenv("RUNTIME_DIRECTORY"); /* systemd: "a:b" for several folders */
    if (runtime && *runtime) {
        dirs[n] = runtime;
        lens[n++] = (int)strcspn(runtime, ":");
    }
    dirs[n] = "/tmp";
    lens[n++] = 4;
    if (which < 0 || which >= n)
        return WS_E_INVAL;
    int k = snprintf(out, cap, "%.*s/wsserver-%ld.status", lens[which], dirs[which], pid);
    return k < 0 || (size_t)k >= cap ? WS_E_INVAL : 0;
}

/* Writes line to path through a temporary file renamed into place, so a reader never sees half
 * a line and a planted symlink is replaced, not followed. False when the folder refuses. */
static bool put_status(const char *path, const char *line, size_t n)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return false;
    bool written = write(fd, line, n) == (ssize_t)n;
    close(fd);
    if (written && rename(tmp, path) == 0)
        return true;
    unlink(tmp);
    return false;
}

/* Publishes the latest reload result for "wsserver --reload" in the first folder of
 * lb_status_path that lets us write (the pidfile's or the runtime folder: a private /tmp, as
 * systemd's PrivateTmp= gives, is invisible to a --reload run from outside), and in /tmp too,
 * where `--reload PID` without the pidfile looks. */
static void write_status(struct lb_app *a, bool ok, const char *why)
{
    if (a->status_pid < 0)
        return;
    if (ok && a->srv && a->srv->reload_error[0]) {
        ok = false; /* the app took over, but the TLS files did not: the operator must know */
        why = a->srv->reload_error;
    }
    char line[700];
    int n = snprintf(line, sizeof(line), "attempt=%llu result=%s generation=%llu%s%s\n",
                     (unsigned long long)a->attempts, ok ? "ok" : "failed",
                     (unsigned long long)a->generation, why ? " error=" : "", why ? why : "");
    if (n >= (int)sizeof(line)) {
        n = (int)sizeof(line) - 1; /* a long error is cut; the line still ends the same way */
        line[n - 1] = '\n';
    }
    for (int i = 0; i < n - 1; i++)
        if (line[i] == '\n')
            line[i] = ' ';
    char path[PATH_MAX], next[PATH_MAX];
    long pid = a->status_pid ? a->status_pid : (long)getpid();
    bool done = false;
    for (int i = 0; lb_status_path(path, sizeof(path), a->config.pidfile, pid, i) == 0; i++) {
        bool last = lb_status_path(next, sizeof(next), a->config.pidfile, pid, i + 1) < 0;
        if (!done || last)
            done = put_status(path, line, (size_t)n) || done;
    }
}

static void log_reload(struct lb_app *a, const char *trigger, bool ok, const char *why)
{
    write_status(a, ok, why);
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
    if (validate(L, app_idx, v->err, sizeof(v->err)) < 0)
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
        (apply_config(L, lua_gettop(L), &v->next, v->err, sizeof(v->err)) < 0 ||
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
        if (check_routes(L, lua_gettop(L), v->err, sizeof(v->err)) < 0)
            return 0;
        keep(L, &v->http_ref);
    } else {
        lua_pop(L, 1);
    }

    /* handlers are read once, here: a table whose __index answers them works, one whose
     * __index raises is refused now instead of failing later */
    for (int i = 0; i < LB_HANDLER_COUNT; i++) {
        v->field = handler_names[i];
        lua_getfield(L, app_idx, handler_names[i]);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
        } else if (!lua_isfunction(L, -1)) {
            snprintf(v->err, sizeof(v->err), "app.%s must be a function, got %s", handler_names[i],
                     luaL_typename(L, -1));
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
