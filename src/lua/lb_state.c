/* The Lua VM: a capped allocator, the handler time budget's bookkeeping (each run's deadline and
 * thread; lb_watchdog interrupts a run that overruns), lb_call() for handlers, lb_protect() for
 * the rest of our work on the state, a panic handler and Lua warnings that log. It calls only its
 * pieces below it (lb_guard, lb_gc, lb_watchdog); loading the app is lb_load's job. */
#include "ws/lb.h"

#include "ws/err.h"
#include "ws/log.h"
#include "ws/server.h"

#include <assert.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TRACEBACK_INDEX 1 /* stack slot of the message handler of calls from the loop */

/* A fresh run starts on co; returns the thread that ran before (a run inside lb_protect). This
 * and run_end write lb_watchdog's state here rather than in lb_watchdog.c: every handler run
 * passes through them, from lb_budget_begin and lb_budget_end in this file. */
static lua_State *run_start(lua_State *co)
{
    lua_State *prev = lb_watchdog.running;
    lb_watchdog.running = NULL;
    lb_watchdog.seq++;
    lb_watchdog.running = co;
    return prev;
}

/* The run on co is over: its hooks come off and prev (NULL: none) runs on. */
static void run_end(struct lb_app *a, lua_State *co, lua_State *prev)
{
    lb_watchdog.running = prev;
    if (lb_watchdog.armed == lb_watchdog.seq) {
        lua_sethook(co, NULL, 0, 0);
        if (a->hooked)
            lua_sethook(a->hooked, NULL, 0, 0);
    }
    a->hooked = NULL;
    a->timed_out = false;
}

void lb_push_ref(lua_State *L, int ref)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
}

/* lua_Alloc with a cap: growth past mem_limit fails (Lua raises "not enough memory" inside the
 * handler), shrinking and freeing always succeed. */
static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct lb_app *a = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        a->mem -= old;
        return NULL;
    }
    if (nsize > old && a->mem + (nsize - old) > a->mem_limit)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (!p)
        return NULL;
    a->mem = a->mem - old + nsize;
    return p;
}

/* lb_call's message handler: the error as text plus the traceback. An error object that is
 * neither a string nor a number goes through luaL_tolstring (its __tostring, or "table: 0x...");
 * a __tostring that raises, returns no string or loops (the budget hook interrupts it) ends in
 * LUA_ERRERR, which lb_call reports like any other error. [-1, +1, m] */
static int traceback(lua_State *L)
{
    int t = lua_type(L, 1);
    const char *msg =
        t == LUA_TSTRING || t == LUA_TNUMBER ? lua_tostring(L, 1) : luaL_tolstring(L, 1, NULL);
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* The text of the error object at idx without running any metamethod or converting it: what is
 * left of an error after a protected call, when nothing may raise any more. [-0, +0, -] */
const char *lb_error_text(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TSTRING)
        return lua_tostring(L, idx);
    return lua_type(L, idx) == LUA_TNUMBER ? "(error object is a number)"
                                           : "(error object is not a string)";
}

/* A fresh budget for the outermost run on co, from now. */
static inline void open_budget(struct lb_app *a, lua_State *co, struct lb_run *run, double now)
{
    run->started = now;
    a->deadline = now + a->handler_timeout;
    a->timed_out = false;
    /* near the cap, collect first: luaL_Buffer (string.rep, table.concat) allocates without
     * Lua's emergency collection, so garbage could fail a handler that would fit */
    if (a->mem > a->mem_limit / 10 * 9)
        lua_gc(a->L, LUA_GCCOLLECT);
    run->prev = run_start(co);
}

/* The outermost run on co is over: hooks off, the collector paced, its time (to now, or to the
 * clock when now is 0) recorded when it had a budget of its own. */
static inline void close_budget(struct lb_app *a, lua_State *co, const struct lb_run *run,
                                double now)
{
    run_end(a, co, run->prev);
    if (a->gc_cycles != a->gc_paced)
        lb_gc_pace(a);
    if (a->srv && run->started)
        ws_stats_observe_handler(a->srv->env.stats, (now ? now : lb_mono_now()) - run->started);
}

void lb_budget_begin(struct lb_app *a, lua_State *co, struct lb_run *run)
{
    run->started = 0;
    if (a->depth == a->base_depth)
        open_budget(a, co, run, lb_mono_now());
    else
        run->prev = lb_run_on(co);
    a->depth++;
}

void lb_budget_end(struct lb_app *a, lua_State *co, const struct lb_run *run)
{
    a->depth--;
    if (a->depth != a->base_depth)
        lb_run_off(co, run->prev);
    else
        close_budget(a, co, run, 0);
}

void lb_budget_next(struct lb_app *a, lua_State *co, struct lb_run *run)
{
    if (a->depth - 1 != a->base_depth || !run->started) {
        lb_budget_end(a, co, run);
        lb_budget_begin(a, co, run);
        return;
    }
    double now = lb_mono_now();
    close_budget(a, co, run, now);
    open_budget(a, co, run, now);
}

void lb_report_error(struct lb_app *a, const char *what, uint64_t conn, const char *msg)
{
    snprintf(a->last_error, sizeof(a->last_error), "%s", msg);
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_ERROR, "handler_error");
    ws_log_cstr(&l, "handler", what);
    if (conn)
        ws_log_u64(&l, "conn", conn);
    ws_log_text(&l, "error", msg, strlen(msg));
    ws_log_end(&l);
    if (a->srv)
        a->srv->env.stats->handler_errors++;
}

int lb_call_for(struct lb_app *a, int nargs, int nres, const char *what, uint64_t conn)
{
    lua_State *L = a->L;
    /* the outermost call (or the outermost inside lb_protect) gets a fresh budget */
    bool top = a->depth == a->base_depth;
    double saved_deadline = a->deadline;
    /* from the loop (no call or protected run around this one) the message handler waits at
     * the bottom of the stack, so the hot path moves nothing; nested, it goes below the
     * function (pushing a light C function never allocates; the room is checked without
     * raising) */
    bool nested = a->depth > 0;
    int msgh = TRACEBACK_INDEX;
    if (nested) {
        msgh = lua_gettop(L) - nargs;
        if (!lua_checkstack(L, 2)) {
            lua_settop(L, msgh - 1);
            snprintf(a->last_error, sizeof(a->last_error), "stack overflow");
            return -1;
        }
        lua_pushcfunction(L, traceback);
        lua_insert(L, msgh);
    }
    struct lb_task *task = a->current; /* on the main thread: no task's waits */
    a->current = NULL;
    struct lb_run run;
    lb_budget_begin(a, L, &run);
    int rc = lua_pcall(L, nargs, nres, msgh);
    lb_budget_end(a, L, &run);
    a->current = task;
    if (nested)
        lua_remove(L, msgh);
    if (top && a->depth > 0)
        a->deadline = saved_deadline; /* back to the enclosing lb_protect's budget */
    if (rc == LUA_OK)
        return 0;
    if (rc == LUA_ERRMEM && a->depth == 0)
        lua_gc(L, LUA_GCCOLLECT); /* what the failed handler built is garbage now */
    lb_report_error(a, what, conn, lb_error_text(L, -1));
    lua_pop(L, 1);
    return -1;
}

int lb_call(struct lb_app *a, int nargs, int nres, const char *what)
{
    return lb_call_for(a, nargs, nres, what, 0);
}

int lb_protect(struct lb_app *a, lua_CFunction fn, void *ud, char *err, size_t errlen)
{
    lua_State *L = a->L;
    int top = lua_gettop(L);
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "Lua stack overflow");
        return -1;
    }
    int saved_base = a->base_depth;
    double saved_deadline = a->deadline;
    bool outermost = a->depth == a->base_depth;
    lua_State *prev;
    if (outermost) {
        a->deadline = lb_mono_now() + a->handler_timeout;
        a->timed_out = false;
        prev = run_start(L);
    } else {
        prev = lb_run_on(L);
    }
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    struct lb_task *task = a->current;
    a->current = NULL;
    a->depth++;
    a->base_depth = a->depth;
    int rc = lua_pcall(L, 1, 0, 0);
    a->base_depth = saved_base;
    a->depth--;
    a->current = task;
    if (outermost) {
        run_end(a, L, prev);
        a->deadline = saved_deadline;
    } else {
        lb_run_off(L, prev);
    }
    if (rc != LUA_OK)
        snprintf(err, errlen, "%s", lb_error_text(L, -1));
    lua_settop(L, top);
    return rc == LUA_OK ? 0 : -1;
}

void lb_lib_path(char *out, size_t cap)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[n > 0 ? n : 0] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    const char *env = getenv("WSSERVER_LUA_PATH");
    snprintf(out, cap,
             "%s%s%s/../lua/?.lua;%s/../../lua/?.lua;%s/../share/wsserver/lua/?.lua;" WS_LUA_DIR
             "/?.lua;",
             env ? env : "", env ? ";" : "", exe, exe, exe);
}

/* Adds the app's folder and the shipped Lua library to package.path. [-0, +0, m] */
static void set_paths(struct lb_app *a)
{
    lua_State *L = a->L;
    char lib[LB_LIB_PATH_MAX];
    lb_lib_path(lib, sizeof(lib));
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", a->dir, a->dir, lib);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

/* The last word before Lua aborts the process (an error outside every protected call: a bug of
 * ours, since all our Lua work runs under lb_call or lb_protect). Says so in the log first.
 * Reads the error object without converting it: converting could raise again. [-0, +0, -] */
static int on_panic(lua_State *L)
{
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_ERROR, "lua_panic");
    ws_log_cstr(&l, "error", lb_error_text(L, -1));
    ws_log_cstr(&l, "msg", "unprotected Lua error: the process aborts");
    ws_log_end(&l);
    ws_log_flush();
    return 0; /* Lua calls abort() */
}

/* Lua's warnings (an error in a __gc metamethod, warn() from the app) go to the log, one line
 * per warning; pieces of one warning are joined. Control messages ("@on", "@off") are ignored:
 * warnings are always on. */
static void on_warning(void *ud, const char *msg, int tocont)
{
    struct lb_app *a = ud;
    size_t room = sizeof(a->warning) - 1 - a->warning_len;
    if (a->warning_len == 0 && !tocont && msg[0] == '@')
        return;
    size_t n = strlen(msg);
    if (n > room)
        n = room;
    memcpy(a->warning + a->warning_len, msg, n);
    a->warning_len += n;
    if (tocont)
        return;
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_WARN, "lua_warning");
    ws_log_text(&l, "msg", a->warning, a->warning_len);
    ws_log_end(&l);
    a->warning_len = 0;
}

/* The state's set-up, protected: at a small heap cap any step may fail. [-0, +0, m] */
static int open_state(lua_State *L)
{
    struct lb_app *a = lua_touserdata(L, 1);
    luaL_openlibs(L);
    lb_guard_open(L);
    lb_gc_open(L);
    set_paths(a);
    return 0;
}

int lb_state_open(struct lb_app *a, char *err, size_t errlen)
{
    a->L = lua_newstate(capped_alloc, a);
    if (!a->L) {
        snprintf(err, errlen, "cannot create the Lua state: out of memory");
        return WS_E_NOMEM;
    }
    *(struct lb_app **)lua_getextraspace(a->L) = a;
    lua_atpanic(a->L, on_panic);
    lua_setwarnf(a->L, on_warning, a);
    if (lb_watchdog_start() < 0) {
        snprintf(err, errlen, "cannot start the handler budget's timer: %s", strerror(errno));
        lua_close(a->L);
        a->L = NULL;
        return WS_E_NOMEM;
    }
    /* the message handler of every call from the loop stays at the bottom of the stack */
    lua_pushcfunction(a->L, traceback);
    assert(lua_gettop(a->L) == TRACEBACK_INDEX);
    if (lb_protect(a, open_state, a, err, errlen) < 0)
        return WS_E_NOMEM;
    return 0;
}

void lb_app_request_reload(struct lb_app *a)
{
    if (a->reload_pending)
        return;
    a->reload_pending = true;
    ev_idle_start(a->loop, &a->reload_idle);
}
