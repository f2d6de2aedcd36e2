/* The standard functions the budget and the tasks need guarded: xpcall's message handler (it
 * could loop past the budget), coroutine.yield and isyieldable (a handler's own coroutine is the
 * main thread to the app), coroutine.resume and wrap (the watchdog must know which coroutine
 * runs) and debug.sethook (refused: the budget is a hook). No other library is touched. */
#include "ws/lb.h"

#include <lauxlib.h>

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
    lua_State *prev = lb_run_on(co);
    int base = lua_gettop(L) - nargs - 1;
    int rc = lua_pcall(L, nargs, LUA_MULTRET, 0);
    lb_run_off(co, prev);
    if (rc != LUA_OK)
        return lua_error(L);
    return lua_gettop(L) - base;
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

void lb_guard_open(lua_State *L)
{
    lua_getglobal(L, "xpcall");
    lua_pushcclosure(L, guarded_xpcall, 1);
    lua_setglobal(L, "xpcall");
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
}
