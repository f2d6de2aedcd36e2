/* Handlers as coroutines on the loop (SPEC §4a): every handler runs in a task whose coroutine
 * comes from a pool; a waiting call yields it and the watcher that ends the wait resumes it.
 * Close and shutdown end waits through lb_task_cancel, the one cancel path. What a wait waits
 * for (a timer, an HTTP transfer) is the waiting call's business, not this file's. */
#include "ws/lb.h"

#include "ws/clock.h"
#include "ws/err.h"
#include "ws/log.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#define POOL_MAX 256 /* idle coroutines kept for reuse */

static void on_task_timer(struct ev_loop *loop, ev_timer *w, int revents);

static void set_gauge(struct lb_app *a)
{
    if (a->srv)
        a->srv->env.stats->handlers_waiting = a->nwaiting;
}

/* Creates a coroutine and anchors it in the registry, protected: at the heap cap it fails
 * softly. [-0, +0, m] */
static int new_thread(lua_State *L)
{
    struct lb_task *t = lua_touserdata(L, 1);
    t->co = lua_newthread(L);
    t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* the stack's base (LB_TASK_CONNS, LB_TASK_TEXT, LB_TASK_BINARY, LB_TASK_MESSAGE) */
    lb_push_ref(t->co, t->a->conns_ref);
    lb_push_ref(t->co, t->a->kind_refs[0]);
    lb_push_ref(t->co, t->a->kind_refs[1]);
    lb_push_ref(t->co, t->a->handlers[LB_MESSAGE]);
    t->generation = t->a->generation;
    return 0;
}

struct lb_task *lb_task_new(struct lb_app *a)
{
    struct lb_task *t = a->idle;
    if (t) {
        a->idle = t->next;
        a->nidle--;
        t->next = NULL;
        return t;
    }
    t = ws_xcalloc(1, sizeof(*t));
    t->a = a;
    t->ref = LUA_NOREF;
    ev_init(&t->timer, on_task_timer);
    lua_State *L = a->L;
    if (!lua_checkstack(L, 2)) {
        free(t);
        return NULL;
    }
    lua_pushcfunction(L, new_thread);
    lua_pushlightuserdata(L, t);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        free(t);
        return NULL;
    }
    return t;
}

/* Gives a finished task back to the pool; its coroutine's stack is empty. */
static void recycle(struct lb_task *t)
{
    struct lb_app *a = t->a;
    t->what = t->no_wait = t->gone = t->woke = NULL;
    t->conn = 0;
    t->done = NULL;
    t->ud = NULL;
    t->cancel = NULL;
    t->wait_ud = NULL;
    /* a task that began before a reload holds the old version's handler: not reused */
    if (a->nidle >= POOL_MAX || a->closing || t->broken || t->generation != a->generation) {
        luaL_unref(a->L, LUA_REGISTRYINDEX, t->ref);
        free(t);
        return;
    }
    t->next = a->idle;
    a->idle = t;
    a->nidle++;
}

void lb_task_drop_idle(struct lb_app *a)
{
    while (a->idle) {
        struct lb_task *t = a->idle;
        a->idle = t->next;
        luaL_unref(a->L, LUA_REGISTRYINDEX, t->ref);
        free(t);
    }
    a->nidle = 0;
}

/* The text and traceback of the error that ended a coroutine, built by lb_protect on the main
 * thread (it allocates, and a looping __tostring is interrupted by the budget). */
struct failure {
    lua_State *co;
    char *text; /* owned, NULL until built */
};

static int build_traceback(lua_State *L)
{
    struct failure *f = lua_touserdata(L, 1);
    lua_xmove(f->co, L, 1);
    int t = lua_type(L, -1);
    const char *msg =
        t == LUA_TSTRING || t == LUA_TNUMBER ? lua_tostring(L, -1) : luaL_tolstring(L, -1, NULL);
    luaL_traceback(L, f->co, msg, 0);
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    f->text = ws_xstrndup(s, n);
    return 0;
}

/* Logs the error that ended t's coroutine, with the coroutine's traceback. The coroutine is not
 * reused: an error raised by the budget hook leaves its hooks off (Lua restores allowhook only
 * in a pcall), so a fresh one takes its place in the pool. */
static void report(struct lb_task *t, const char *fixed)
{
    struct lb_app *a = t->a;
    if (fixed) {
        lb_report_error(a, t->what, t->conn, fixed);
    } else {
        struct failure f = {.co = t->co, .text = NULL};
        char err[512];
        if (lb_protect(a, build_traceback, &f, err, sizeof(err)) < 0)
            lb_report_error(a, t->what, t->conn, err);
        else
            lb_report_error(a, t->what, t->conn, f.text);
        free(f.text);
    }
    lua_resetthread(t->co); /* closes its pending to-be-closed variables */
    t->broken = true;
}

/* Resumes t (nargs on its stack) under a budget of its own. */
static enum lb_task_result resume(struct lb_task *t, int nargs)
{
    struct lb_app *a = t->a;
    struct lb_task *outer = a->current;
    lua_State *from = outer ? outer->co : a->L;
    a->current = t;
    lb_budget_begin(a, t->co, &t->run);
    int nres = 0;
    int rc = lua_resume(t->co, from, nargs, &nres);
    lb_budget_end(a, t->co, &t->run);
    a->current = outer;
    if (rc == LUA_YIELD && t->waiting)
        return LB_TASK_WAITING;
    if (rc == LUA_OK) {
        lua_settop(t->co, LB_TASK_BASE);
        return LB_TASK_DONE;
    }
    if (rc == LUA_YIELD)
        report(t, "attempt to yield outside a coroutine of the app's own: handlers wait with "
                  "ws.sleep or another waiting call");
    else
        report(t, NULL);
    if (rc == LUA_ERRMEM && a->depth == 0)
        lua_gc(a->L, LUA_GCCOLLECT); /* what the failed handler built is garbage now */
    return LB_TASK_FAILED;
}

enum lb_task_result lb_task_start(struct lb_task *t, int nargs, const char *what, uint64_t conn)
{
    t->what = what;
    t->conn = conn;
    if (!t->gone)
        t->gone = t->a->stopping;
    enum lb_task_result r = resume(t, nargs);
    if (r != LB_TASK_WAITING)
        recycle(t);
    return r;
}

struct lb_task *lb_task_waiter(lua_State *L, const char *api)
{
    struct lb_app *a = lb_app_of(L);
    struct lb_task *t = a->current;
    if (!t) {
        if (a->loading || a->in_load)
            luaL_error(L,
                       "%s cannot wait inside load (the app's chunk and load() run before "
                       "it takes effect)",
                       api);
        luaL_error(L, "%s can only wait inside a handler", api);
    }
    if (t->no_wait)
        luaL_error(L, "%s cannot wait inside %s", api, t->no_wait);
    if (t->co != L)
        luaL_error(L, "%s cannot wait inside a coroutine the app created", api);
    if (!lua_isyieldable(L))
        luaL_error(L,
                   "%s cannot wait here (inside a metamethod, an iterator or a C function "
                   "such as table.sort)",
                   api);
    return t;
}

int lb_task_wait(lua_State *L, struct lb_task *t, double timeout, bool sleeping,
                 lb_task_cancel_fn cancel, void *wait_ud, lua_KFunction k)
{
    struct lb_app *a = t->a;
    if (t->gone) {
        /* the connection is gone or the server stops: no new waits */
        if (cancel)
            cancel(t);
        lua_pushnil(L);
        lua_pushstring(L, t->gone);
        return 2;
    }
    t->waiting = true;
    t->sleeping = sleeping;
    t->woke = NULL;
    t->cancel = cancel;
    t->wait_ud = wait_ud;
    t->wait_started = ws_clock_now(a->loop);
    ws_timer_start(a->loop, &t->timer, timeout, 0);
    t->prev = NULL;
    t->next = a->waiting;
    if (a->waiting)
        a->waiting->prev = t;
    a->waiting = t;
    a->nwaiting++;
    set_gauge(a);
    return lua_yieldk(L, 0, (lua_KContext)t, k);
}

/* Takes t off the waiting list and stops its timer. */
static void unlist(struct lb_task *t)
{
    struct lb_app *a = t->a;
    ws_timer_stop(a->loop, &t->timer);
    if (!t->waiting)
        return;
    t->waiting = false;
    if (t->prev)
        t->prev->next = t->next;
    else
        a->waiting = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
    a->nwaiting--;
    set_gauge(a);
}

void lb_task_wake(struct lb_task *t, const char *why)
{
    if (!t->waiting)
        return;
    if (why && !t->woke)
        t->woke = why;
    if (t->woke && t->cancel)
        t->cancel(t);
    t->cancel = NULL;
    unlist(t);
    enum lb_task_result r = resume(t, 0);
    if (r == LB_TASK_WAITING)
        return;
    struct lb_app *a = t->a;
    lb_task_done_fn done = t->done;
    void *ud = t->ud;
    recycle(t);
    if (done)
        done(a, ud, r == LB_TASK_FAILED);
}

static void on_task_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct lb_task *t = (struct lb_task *)w;
    /* a cancelled wait (woke set) or a sleep that ran its course, else the wait's timeout */
    lb_task_wake(t, t->woke || t->sleeping ? NULL : "timeout");
}

void lb_task_cancel(struct lb_task *t, const char *why)
{
    if (!t->gone)
        t->gone = why;
    if (!t->waiting || t->woke)
        return;
    t->woke = why;
    if (t->cancel)
        t->cancel(t);
    t->cancel = NULL;
    /* resumed from the loop, never from inside the caller (a sweep, a registry walk) */
    ws_timer_start(t->a->loop, &t->timer, 0, 0);
}

void lb_task_cancel_all(struct lb_app *a, const char *why)
{
    if (!a->stopping)
        a->stopping = why;
    for (struct lb_task *t = a->waiting; t; t = t->next)
        lb_task_cancel(t, why);
}

void lb_task_free_all(struct lb_app *a)
{
    while (a->waiting) {
        struct lb_task *t = a->waiting;
        if (t->cancel)
            t->cancel(t);
        t->cancel = NULL;
        unlist(t);
        free(t);
    }
    while (a->idle) {
        struct lb_task *t = a->idle;
        a->idle = t->next;
        free(t);
    }
    a->nidle = 0;
}
