/* ws.after and ws.every: timers whose callbacks run as tasks on the loop, each tied to the app
 * version that started it, so a reload ends the old version's timers (and its ws.connect
 * callbacks and Redis subscriptions with them). The rest of the `ws` module is lb_ws.c's. */
#include "ws/lb.h"

#include "ws/clock.h"

#include <lauxlib.h>
#include <math.h>
#include <string.h>

#define TIMER_MT "wsserver.timer"

struct lb_timer {
    ev_timer w;
    struct lb_app *a;
    struct lb_timer *prev, *next; /* the app's active list */
    int fn_ref;
    int self_ref; /* keeps the handle alive while the timer is armed */
    uint64_t generation;
    bool repeat;
};

static void timer_disarm(struct lb_timer *t)
{
    struct lb_app *a = t->a;
    if (t->self_ref == LUA_NOREF)
        return;
    ws_timer_stop(a->loop, &t->w);
    if (t->prev)
        t->prev->next = t->next;
    else
        a->timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
    luaL_unref(a->L, LUA_REGISTRYINDEX, t->fn_ref);
    luaL_unref(a->L, LUA_REGISTRYINDEX, t->self_ref);
    t->fn_ref = t->self_ref = LUA_NOREF;
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct lb_timer *t = (struct lb_timer *)w;
    struct lb_app *a = t->a;
    struct lb_task *task = lb_task_new(a);
    const char *what = t->repeat ? "every" : "after";
    if (!task) {
        lb_report_error(a, what, 0, "not enough memory");
        return;
    }
    /* the callback runs as a task of its own: it may wait (SPEC §4a); a repeating timer does
     * not wait for the previous run */
    lb_push_ref(task->co, t->fn_ref);
    if (!t->repeat)
        timer_disarm(t); /* the handle may go now: nothing below touches it */
    lb_task_start(task, 0, what, 0);
}

void lb_ws_cancel_timers(struct lb_app *a, uint64_t keep_generation)
{
    /* the callbacks of ws.connect clients go with the version's timers */
    lb_wsclient_cancel(a, keep_generation);
    struct lb_timer *t = a->timers;
    while (t) {
        struct lb_timer *next = t->next;
        if (t->generation != keep_generation || keep_generation == 0)
            timer_disarm(t);
        t = next;
    }
    lb_redis_cancel_subs(a, keep_generation); /* an old version's subscriptions go too */
}

static int start_timer(lua_State *L, bool repeat)
{
    struct lb_app *a = lb_app_of(L);
    if (a->closing)
        return luaL_error(L, "the server is stopping: no new timers");
    lua_Number seconds = luaL_checknumber(L, 1);
    luaL_argcheck(L, seconds >= 0 && isfinite(seconds), 1, "seconds must be a number >= 0");
    luaL_argcheck(L, !repeat || seconds >= 0.001, 1, "ws.every needs at least 0.001 seconds");
    luaL_checktype(L, 2, LUA_TFUNCTION);
    struct lb_timer *t = lua_newuserdatauv(L, sizeof(*t), 0);
    memset(t, 0, sizeof(*t));
    luaL_setmetatable(L, TIMER_MT);
    t->a = a;
    t->repeat = repeat;
    t->generation = a->generation + (a->loading ? 1 : 0);
    lua_pushvalue(L, 2);
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ev_init(&t->w, on_timer);
    ws_timer_start(a->loop, &t->w, seconds, repeat ? seconds : 0);
    t->next = a->timers;
    if (a->timers)
        a->timers->prev = t;
    a->timers = t;
    return 1;
}

/* ws.after(seconds, fn) -> timer [-0, +1, v] */
static int ws_after(lua_State *L)
{
    return start_timer(L, false);
}

/* ws.every(seconds, fn) -> timer [-0, +1, v] */
static int ws_every(lua_State *L)
{
    return start_timer(L, true);
}

/* timer:cancel() -> true when it was still armed [-0, +1, v] */
static int timer_cancel(lua_State *L)
{
    struct lb_timer *t = luaL_checkudata(L, 1, TIMER_MT);
    bool armed = t->self_ref != LUA_NOREF;
    timer_disarm(t);
    lua_pushboolean(L, armed);
    return 1;
}

void lb_timer_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {{"after", ws_after}, {"every", ws_every}, {NULL, NULL}};
    luaL_newmetatable(L, TIMER_MT);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, timer_cancel);
    lua_setfield(L, -2, "cancel");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_setfuncs(L, funcs, 0);
}
