/* The Lua VM: a capped allocator, the handler time budget (a watchdog that arms a count hook only
 * in a run that overruns), lb_call() for handlers, lb_protect() for the rest of our work on the
 * state, a panic handler that logs, and the small helpers every other lb_* file uses. The bottom
 * of the Lua layer: it calls no other lb_* file; loading the app is lb_load's job. */
#include "ws/lb.h"

#include "ws/buf.h"
#include "ws/err.h"
#include "ws/http.h"
#include "ws/log.h"
#include "ws/server.h"

#include <assert.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TRACEBACK_INDEX 1 /* stack slot of the message handler of calls from the loop */
#define HOOK_COUNT 10000  /* VM instructions between two looks at the clock, once armed */
#define TICK_NS 5000000   /* the watchdog's period, in CPU time of the loop's thread */

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The budget watchdog. A count hook makes every VM instruction trap, so runs go without one: a
 * timer on the loop thread's CPU clock ticks every TICK_NS while that thread computes, and a
 * tick that finds the same run as the tick before (it has computed for a full period) arms the
 * count hook on the thread running it, as lua.c arms its hook from a signal handler; from then on
 * budget_hook looks at the clock every HOOK_COUNT instructions. A run only bumps seq and says
 * which thread runs: no clock read, no hook. An idle server's thread uses no CPU: no ticks.
 * Process-wide (one loop thread per process); a forked worker starts its own. */
static struct {
    lua_State *volatile running;  /* the thread of the run in progress, or NULL between runs */
    volatile unsigned long seq;   /* bumped when a run starts */
    volatile unsigned long seen;  /* seq at the latest tick */
    volatile unsigned long armed; /* seq of the run a hook was armed in */
    pid_t pid;                    /* the process whose timer ticks */
    timer_t timer;
} watchdog;

static void budget_hook(lua_State *L, lua_Debug *ar);

/* SIGPROF, delivered to the loop thread only. lua_sethook is safe in a signal handler. */
static void on_tick(int sig)
{
    (void)sig;
    lua_State *L = watchdog.running;
    unsigned long seq = watchdog.seq;
    if (L && seq == watchdog.seen && watchdog.armed != seq) {
        watchdog.armed = seq;
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_COUNT);
    }
    watchdog.seen = seq;
}

/* Starts this process's watchdog timer (once per process). Returns 0 or -1 with errno. */
static int start_watchdog(void)
{
    if (watchdog.pid == getpid())
        return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_tick;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGPROF, &sa, NULL) < 0)
        return -1;
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID; /* never another thread (libcurl's resolver) */
    sev.sigev_signo = SIGPROF;
    sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    timer_t timer;
    if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &timer) < 0)
        return -1;
    struct itimerspec its = {.it_interval = {0, TICK_NS}, .it_value = {0, TICK_NS}};
    if (timer_settime(timer, 0, &its, NULL) < 0) {
        timer_delete(timer);
        return -1;
    }
    watchdog.timer = timer;
    watchdog.pid = getpid();
    return 0;
}

void lb_budget_stop(void)
{
    if (watchdog.pid != getpid())
        return;
    timer_delete(watchdog.timer);
    signal(SIGPROF, SIG_IGN); /* a tick already on its way finds no handler to call */
    watchdog.pid = 0;
}

/* Makes co the running thread; returns the one before. A hook armed in this run goes with it. */
static lua_State *run_on(lua_State *co)
{
    lua_State *prev = watchdog.running;
    watchdog.running = co;
    if (prev && prev != co && lua_gethook(prev) == budget_hook && watchdog.armed == watchdog.seq)
        lua_sethook(co, budget_hook, LUA_MASKCOUNT, lua_gethookcount(prev));
    return prev;
}

/* Back to prev after co ran (NULL: the run is over). */
static void run_off(lua_State *co, lua_State *prev)
{
    watchdog.running = prev;
    if (prev && prev != co && lua_gethook(co) == budget_hook && watchdog.armed == watchdog.seq)
        lua_sethook(prev, budget_hook, LUA_MASKCOUNT, lua_gethookcount(co));
}

/* A fresh run starts on co; returns the thread that ran before (a run inside lb_protect). */
static lua_State *run_start(lua_State *co)
{
    lua_State *prev = watchdog.running;
    watchdog.running = NULL;
    watchdog.seq++;
    watchdog.running = co;
    return prev;
}

/* The run on co is over: its hooks come off and prev (NULL: none) runs on. */
static void run_end(struct lb_app *a, lua_State *co, lua_State *prev)
{
    watchdog.running = prev;
    if (watchdog.armed == watchdog.seq) {
        lua_sethook(co, NULL, 0, 0);
        if (a->hooked)
            lua_sethook(a->hooked, NULL, 0, 0);
    }
    a->hooked = NULL;
    a->timed_out = false;
}

struct lb_app *lb_app_of(lua_State *L)
{
    return *(struct lb_app **)lua_getextraspace(L);
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

/* GC pacing. Lua starts a collection cycle once the heap reaches pause % of what the last cycle
 * left (200: twice the live heap) and each cycle marks the whole live heap. A small heap then
 * collects every few hundred KiB allocated: with 64 KiB messages, a whole cycle every few
 * messages. Like Go's minimum heap target, the next cycle waits until the heap has grown by at
 * least GC_MIN_GROWTH, 1 MiB (at most a quarter of the memory cap), the pause capped at
 * GC_PAUSE_MAX; a heap over that size keeps Lua's default. A sentinel's __gc counts the cycles
 * (lua_gc does nothing inside a finalizer); the pause is set after the handler in which a cycle
 * ended. */
#define GC_MIN_GROWTH ((size_t)1 << 20)
#define GC_PAUSE_DEFAULT 200
#define GC_PAUSE_MAX 1000
#define GC_SENTINEL_MT "wsserver.gc_sentinel"

static void gc_new_sentinel(lua_State *L)
{
    lua_newuserdatauv(L, 0, 0);
    luaL_setmetatable(L, GC_SENTINEL_MT);
    lua_pop(L, 1); /* garbage at once: its __gc runs when this cycle ends */
}

static int gc_sentinel(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    a->gc_cycles++;
    a->gc_live = a->mem; /* finalizers run once the cycle has swept */
    gc_new_sentinel(L);  /* for the next cycle (none once the state closes) */
    return 0;
}

static void gc_pace(struct lb_app *a)
{
    a->gc_paced = a->gc_cycles;
    if (a->gc_app_tuned)
        return;
    size_t live = a->gc_live > 1 ? a->gc_live : 1, growth = a->mem_limit / 4;
    if (growth > GC_MIN_GROWTH)
        growth = GC_MIN_GROWTH;
    size_t pause = live >= growth ? GC_PAUSE_DEFAULT : 100 + 100 * growth / live;
    if (pause < GC_PAUSE_DEFAULT)
        pause = GC_PAUSE_DEFAULT;
    lua_gc(a->L, LUA_GCINC, (int)(pause < GC_PAUSE_MAX ? pause : GC_PAUSE_MAX), 0, 0);
}

/* SPEC §4: a handler running longer than handler_timeout is interrupted and treated as an
 * error. Once over budget every hook call raises again, so a pcall loop cannot swallow it. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    struct lb_app *a = lb_app_of(L);
    if (watchdog.armed != watchdog.seq || a->depth == 0) {
        lua_sethook(L, NULL, 0, 0); /* armed in a run that is over */
        return;
    }
    if (a->timed_out || mono_now() > a->deadline) {
        if (!a->timed_out) {
            /* from now on raise at every instruction: a pcall loop cannot swallow it, the
             * error surfaces at the first instruction outside the innermost pcall */
            a->timed_out = true;
            a->hooked = L; /* hooks are per thread: this one is put back after the run */
            lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
        }
        luaL_error(L, "handler exceeded handler_timeout (%f s)", a->handler_timeout);
    }
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

/* The message handler given to xpcall, guarded: once the handler budget is spent Lua runs
 * message handlers with hooks off, so a looping one could never be stopped; then the error goes
 * through untouched instead. */
static int guarded_msgh(lua_State *L)
{
    if (lb_app_of(L)->timed_out)
        return 1;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* True when L is the coroutine of the running handler (lb_task): the app's code sees it as the
 * main thread, which cannot yield: only waiting calls yield it. */
static bool in_handler_thread(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    return a->current && a->current->co == L;
}

/* coroutine.yield: in a handler's own coroutine it raises as on the main thread (a pcall around
 * it catches it); in a coroutine of the app's own it yields. [-?, +?, e] */
static int guarded_yield(lua_State *L)
{
    if (in_handler_thread(L)) {
        lua_pushliteral(L, "attempt to yield from outside a coroutine"); /* Lua's own words */
        return lua_error(L);
    }
    return lua_yield(L, lua_gettop(L));
}

/* coroutine.isyieldable: false in a handler's own coroutine, as on the main thread. */
static int guarded_isyieldable(lua_State *L)
{
    lua_State *co = lua_isnone(L, 1) ? L : lua_tothread(L, 1);
    luaL_argexpected(L, co, 1, "coroutine");
    lua_pushboolean(L, lua_isyieldable(co) && !in_handler_thread(co));
    return 1;
}

/* Calls the function below nargs arguments (a resume of co) with co as the running thread, so
 * that the watchdog interrupts co when it loops; errors go on up after the running thread is
 * back. [-(nargs+1), +?, e] */
static int resume_as(lua_State *L, lua_State *co, int nargs)
{
    lua_State *prev = run_on(co);
    int base = lua_gettop(L) - nargs - 1;
    int rc = lua_pcall(L, nargs, LUA_MULTRET, 0);
    run_off(co, prev);
    if (rc != LUA_OK)
        return lua_error(L);
    return lua_gettop(L) - base;
}

/* collectgarbage(opt, ...): the standard one (upvalue 1); an app that sets the collector's mode
 * or parameters itself keeps them (no pacing from then on). [-?, +?, e] */
static int guarded_collectgarbage(lua_State *L)
{
    static const char *const tuning[] = {"incremental", "generational", "setpause", "setstepmul",
                                         NULL};
    const char *opt = luaL_optstring(L, 1, "collect");
    for (int i = 0; tuning[i]; i++)
        if (strcmp(opt, tuning[i]) == 0)
            lb_app_of(L)->gc_app_tuned = true;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* coroutine.resume(co, ...): the standard one (upvalue 1), run as co. [-?, +?, e] */
static int guarded_resume(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argexpected(L, co, 1, "coroutine");
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    return resume_as(L, co, lua_gettop(L) - 1);
}

/* A function coroutine.wrap made: the standard one (upvalue 1) run as its coroutine (upvalue
 * 2). [-?, +?, e] */
static int guarded_wrapped(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    return resume_as(L, lua_tothread(L, lua_upvalueindex(2)), lua_gettop(L) - 1);
}

/* coroutine.wrap(f): the standard one (upvalue 1), its function guarded. Its coroutine is that
 * function's first upvalue (lcorolib's auxwrap). [-1, +1, m] */
static int guarded_wrap(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    if (!lua_getupvalue(L, 1, 1) || !lua_isthread(L, -1))
        return luaL_error(L, "coroutine.wrap: unexpected standard library");
    lua_pushcclosure(L, guarded_wrapped, 2);
    return 1;
}

/* debug.sethook is not for apps: the handler budget (SPEC §4) is a hook. [-0, +0, v] */
static int refuse_sethook(lua_State *L)
{
    return luaL_error(L, "debug.sethook is not available: the server's handler budget uses it");
}

/* guarded_xpcall's continuation: a handler waited inside the xpcall. */
static int xpcall_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    return lua_gettop(L);
}

/* xpcall(f, msgh, ...) with msgh guarded; f may wait (SPEC §4a). [-?, +?, e] */
static int guarded_xpcall(lua_State *L)
{
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, guarded_msgh, 1);
    lua_replace(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1)); /* the standard xpcall */
    lua_insert(L, 1);
    lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, xpcall_done);
    return lua_gettop(L);
}

void lb_budget_begin(struct lb_app *a, lua_State *co, struct lb_run *run)
{
    run->started = 0;
    if (a->depth == a->base_depth) {
        run->started = mono_now();
        a->deadline = run->started + a->handler_timeout;
        a->timed_out = false;
        /* near the cap, collect first: luaL_Buffer (string.rep, table.concat) allocates without
         * Lua's emergency collection, so garbage could fail a handler that would fit */
        if (a->mem > a->mem_limit / 10 * 9)
            lua_gc(a->L, LUA_GCCOLLECT);
        run->prev = run_start(co);
    } else {
        run->prev = run_on(co);
    }
    a->depth++;
}

void lb_budget_end(struct lb_app *a, lua_State *co, const struct lb_run *run)
{
    a->depth--;
    if (a->depth != a->base_depth) {
        run_off(co, run->prev);
        return;
    }
    run_end(a, co, run->prev);
    if (a->gc_cycles != a->gc_paced)
        gc_pace(a);
    if (a->srv && run->started)
        ws_stats_observe_handler(a->srv->env.stats, mono_now() - run->started);
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
        a->deadline = mono_now() + a->handler_timeout;
        a->timed_out = false;
        prev = run_start(L);
    } else {
        prev = run_on(L);
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
        run_off(L, prev);
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
    lua_getglobal(L, "xpcall");
    lua_pushcclosure(L, guarded_xpcall, 1);
    lua_setglobal(L, "xpcall");
    lua_getglobal(L, "collectgarbage");
    lua_pushcclosure(L, guarded_collectgarbage, 1);
    lua_setglobal(L, "collectgarbage");
    /* the budget is a hook: an app that could replace it could loop the loop forever */
    lua_getglobal(L, "debug");
    lua_pushcfunction(L, refuse_sethook);
    lua_setfield(L, -2, "sethook");
    lua_pop(L, 1);
    lua_getglobal(L, "coroutine");
    lua_pushcfunction(L, guarded_yield);
    lua_setfield(L, -2, "yield");
    lua_pushcfunction(L, guarded_isyieldable);
    lua_setfield(L, -2, "isyieldable");
    /* the budget's watchdog must know which coroutine runs */
    lua_getfield(L, -1, "resume");
    lua_pushcclosure(L, guarded_resume, 1);
    lua_setfield(L, -2, "resume");
    lua_getfield(L, -1, "wrap");
    lua_pushcclosure(L, guarded_wrap, 1);
    lua_setfield(L, -2, "wrap");
    lua_pop(L, 1);
    luaL_newmetatable(L, GC_SENTINEL_MT);
    lua_pushcfunction(L, gc_sentinel);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    gc_new_sentinel(L);
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
    if (start_watchdog() < 0) {
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

/* Pushes the form-decoded (percent and '+') string. [-0, +1, m] */
static void push_decoded(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            luaL_addchar(&b, ' ');
        } else if (s[i] == '%' && i + 2 < n && ws_http_hexval(s[i + 1]) >= 0 &&
                   ws_http_hexval(s[i + 2]) >= 0) {
            luaL_addchar(&b, (char)(ws_http_hexval(s[i + 1]) * 16 + ws_http_hexval(s[i + 2])));
            i += 2;
        } else {
            luaL_addchar(&b, s[i]);
        }
    }
    luaL_pushresult(&b);
}

/* Pushes a table of key=value pairs split on sep (query: '&', cookies: ';'); the first value of
 * a repeated key wins. [-0, +1, m] */
void lb_push_pairs(lua_State *L, const char *s, size_t n, char sep, bool decode)
{
    lua_newtable(L);
    size_t i = 0;
    while (i < n) {
        size_t end = i;
        while (end < n && s[end] != sep)
            end++;
        size_t k = i;
        while (k < end && s[k] == ' ')
            k++;
        size_t eq = k;
        while (eq < end && s[eq] != '=')
            eq++;
        if (eq > k) {
            if (decode)
                push_decoded(L, s + k, eq - k);
            else
                lua_pushlstring(L, s + k, eq - k);
            if (lua_rawget(L, -2) == LUA_TNIL) {
                lua_pop(L, 1);
                if (decode)
                    push_decoded(L, s + k, eq - k);
                else
                    lua_pushlstring(L, s + k, eq - k);
                size_t vs = eq < end ? eq + 1 : end;
                if (decode)
                    push_decoded(L, s + vs, end - vs);
                else
                    lua_pushlstring(L, s + vs, end - vs);
                lua_rawset(L, -3);
            } else {
                lua_pop(L, 1);
            }
        }
        i = end + 1;
    }
}

const char *lb_push_header_line(lua_State *L, const char *api)
{
    size_t kn = 0, vn = 0;
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kn) : NULL;
    int vt = lua_type(L, -1);
    /* converting the value in place is fine: lua_next needs only the key as it was */
    const char *v = vt == LUA_TSTRING || vt == LUA_TNUMBER ? lua_tolstring(L, -1, &vn) : NULL;
    if (!k || !v)
        luaL_error(L, "%s: opts.headers maps names to string values", api);
    bool ok = kn > 0;
    for (size_t i = 0; ok && i < kn; i++)
        ok = ws_http_is_tchar((unsigned char)k[i]);
    /* RFC 9110 §5.5: CR, LF and NUL would end the field (or the head) early */
    if (!ok || memchr(v, '\r', vn) || memchr(v, '\n', vn) || strlen(v) != vn)
        luaL_error(L, "%s: header %s is not a valid name and value", api, k);
    return lua_pushfstring(L, "%s: %s", k, v);
}
