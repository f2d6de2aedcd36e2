/* Loading and reloading app.lua: a reload builds the whole new version aside (compiled, run in a
 * fresh environment, validated, its config applied and its load() hook passed) and swaps it in
 * only then; any failure leaves the running version serving. Reload results go to a status file
 * for `wsserver --reload`. */
#include "ws/lb.h"

#include "ws/buf.h"
#include "ws/err.h"
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
    a->app_ref = a->http_ref = LUA_NOREF;
    for (int i = 0; i < LB_HANDLER_COUNT; i++)
        a->handlers[i] = LUA_NOREF;
    if (lb_state_open(a) < 0) {
        snprintf(err, errlen, "cannot create the Lua state");
        lb_app_free(a);
        return NULL;
    }
    ev_idle_init(&a->reload_idle, on_reload_idle);
    a->reload_idle.data = a;
    lua_newtable(a->L);
    a->conns_ref = luaL_ref(a->L, LUA_REGISTRYINDEX);
    lb_conn_open(a->L);
    lb_ws_open(a);
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
        lb_ws_cancel_timers(a, 0);
        lua_close(a->L);
    }
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

/* Merges the app's config table into cfg. [-0, +0, m] */
static int apply_config(lua_State *L, int app_idx, struct ws_config *cfg, char *err, size_t errlen)
{
    lua_getfield(L, app_idx, "config");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    int t = lua_gettop(L);
    int rc = 0;
    lua_pushnil(L);
    while (rc == 0 && lua_next(L, t)) {
        const struct ws_option *opt =
            lua_type(L, -2) == LUA_TSTRING ? ws_config_find(lua_tostring(L, -2), false) : NULL;
        if (!opt) {
            snprintf(err, errlen, "unknown config key '%s'", luaL_tolstring(L, -2, NULL));
            lua_pop(L, 1);
            rc = WS_E_INVAL;
        } else if (lua_type(L, -1) == LUA_TNUMBER) {
            rc = ws_config_set_number(cfg, opt, lua_tonumber(L, -1), err, errlen);
        } else if (lua_isboolean(L, -1)) {
            rc = ws_config_set_bool(cfg, opt, lua_toboolean(L, -1), err, errlen);
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            if (opt->type == WS_OPT_LIST)
                ws_config_clear_list(cfg, opt);
            rc = ws_config_set(cfg, opt, lua_tostring(L, -1), false, err, errlen);
        } else if (lua_istable(L, -1) && opt->type == WS_OPT_LIST) {
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
            snprintf(err, errlen, "invalid value for %s: %s is not allowed", opt->name,
                     luaL_typename(L, -1));
            rc = WS_E_INVAL;
        }
        lua_pop(L, 1);
    }
    if (rc != 0)
        lua_pop(L, 1); /* the key lua_next left */
    lua_pop(L, 1);
    return rc;
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
 * (pushes) a table of what was removed so a failed reload can put it back. [-0, +1, m] */
static void forget_modules(struct lb_app *a)
{
    lua_State *L = a->L;
    lua_newtable(L);
    int saved = lua_gettop(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
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

static void restore_modules(lua_State *L, int saved)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_pushnil(L);
    while (lua_next(L, saved)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_pop(L, 2);
}

/* Calls the new version's load(state, info). [-0, +0, -] */
static int call_load(struct lb_app *a, int app_idx, uint64_t generation, const char *trigger)
{
    lua_State *L = a->L;
    lua_getfield(L, app_idx, "load");
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    lb_push_ref(L, a->state_ref);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)generation);
    lua_setfield(L, -2, "generation");
    lua_pushinteger(L, (lua_Integer)generation - 1);
    lua_setfield(L, -2, "previous");
    lua_pushstring(L, a->path);
    lua_setfield(L, -2, "file");
    lua_pushstring(L, trigger ? trigger : "start");
    lua_setfield(L, -2, "trigger");
    return lb_call(a, 2, 0, "load");
}

static void swap_in(struct lb_app *a, int app_idx)
{
    lua_State *L = a->L;
    luaL_unref(L, LUA_REGISTRYINDEX, a->app_ref);
    lua_pushvalue(L, app_idx);
    a->app_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    for (int i = 0; i < LB_HANDLER_COUNT; i++) {
        luaL_unref(L, LUA_REGISTRYINDEX, a->handlers[i]);
        lua_getfield(L, app_idx, handler_names[i]);
        a->handlers[i] = lua_isfunction(L, -1) ? luaL_ref(L, LUA_REGISTRYINDEX) : LUA_NOREF;
        if (a->handlers[i] == LUA_NOREF)
            lua_pop(L, 1);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, a->http_ref);
    lua_getfield(L, app_idx, "http");
    a->http_ref = lua_istable(L, -1) ? luaL_ref(L, LUA_REGISTRYINDEX) : LUA_NOREF;
    if (a->http_ref == LUA_NOREF)
        lua_pop(L, 1);
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
    int top = lua_gettop(L);
    char err[512] = "";
    a->config_error = false;
    if (a->srv)
        ws_notify_reloading(); /* systemd: reloading until READY=1, whatever the result */
    forget_modules(a);
    int saved = lua_gettop(L);

    int rc = luaL_loadfilex(L, a->path, "t");
    if (rc != LUA_OK) {
        snprintf(err, sizeof(err), "%s", lua_tostring(L, -1));
        goto failed;
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
        snprintf(err, sizeof(err), "running the app failed (see the handler_error above)");
        goto failed;
    }
    int app_idx = lua_gettop(L);
    if (validate(L, app_idx, err, sizeof(err)) < 0)
        goto failed;

    /* every load starts from the defaults plus the command line, then the app's table */
    struct ws_config next;
    ws_config_copy(&next, &a->base);
    if (apply_config(L, app_idx, &next, err, sizeof(err)) < 0 ||
        ws_config_validate(&next, err, sizeof(err)) < 0) {
        a->config_error = true;
        ws_config_free(&next);
        goto failed;
    }
    if (a->srv && call_load(a, app_idx, a->generation + 1, trigger) < 0) {
        snprintf(err, sizeof(err), "load() failed (see the handler_error above)");
        ws_config_free(&next);
        goto failed;
    }
    /* committed: from here on nothing fails */
    a->loading = false;
    swap_in(a, app_idx);
    a->generation++;
    a->attempts++;
    if (a->srv)
        a->srv->stats.reloads_ok++;
    lb_ws_cancel_timers(a, a->generation);
    if (a->srv) {
        report_restart_needed(&a->srv->cfg, &next);
        ws_server_apply_config(a->srv, &next);
    }
    ws_config_free(&a->config);
    a->config = next;
    a->mem_limit = (size_t)next.lua_memory_limit;
    a->handler_timeout = next.handler_timeout;
    if (a->srv) {
        log_reload(a, trigger, true, NULL);
        ws_notify_ready();
    }
    lua_settop(L, top);
    return 0;

failed:
    a->loading = false;
    lb_ws_cancel_timers(a, a->generation); /* timers the failed version started */
    restore_modules(L, saved);
    a->attempts++;
    if (a->srv)
        a->srv->stats.reloads_failed++;
    log_reload(a, trigger, false, err);
    if (a->srv)
        ws_notify_ready(); /* the running version still serves */
    lua_settop(L, top);
    return WS_E_INVAL;
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
    lb_push_ref(a->L, a->app_ref);
    int rc = call_load(a, lua_gettop(a->L), a->generation, "start");
    lua_pop(a->L, 1);
    if (rc < 0) {
        snprintf(err, errlen, "%s: load() failed (see the error above)", a->path);
        return WS_E_INVAL;
    }
    log_reload(a, "start", true, NULL);
    return 0;
}
