/* GC pacing: the collector's pause set after each handler in which a cycle ended, so that a
 * small heap is not collected every few messages, and collectgarbage() wrapped so that an app
 * that tunes the collector itself keeps its settings. It never runs a collection itself. */
#include "ws/lb.h"

#include <lauxlib.h>
#include <string.h>

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

void lb_gc_pace(struct lb_app *a)
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

void lb_gc_open(lua_State *L)
{
    lua_getglobal(L, "collectgarbage");
    lua_pushcclosure(L, guarded_collectgarbage, 1);
    lua_setglobal(L, "collectgarbage");
    luaL_newmetatable(L, GC_SENTINEL_MT);
    lua_pushcfunction(L, gc_sentinel);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    gc_new_sentinel(L);
}
