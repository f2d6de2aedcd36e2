/* Values between the spec's Lua state and the app's (ws.kitcore): plain data is copied (tables
 * without a metatable deeply, shared and cyclic ones kept shared), anything else crosses as a
 * handle, a userdata in the spec's state standing for the app's object. Indexing, assigning,
 * calling, tostring, # and pairs on a handle run on the object in the app's state, under the
 * server's protection (lb_protect): what they raise comes back raised with the app's message. */
#include "ws/kit.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdbool.h>
#include <string.h>

#define HANDLE_MT "ws.kitcore.handle"
#define COPY_DEPTH 100

struct handle {
    struct kit_engine *e;
    int ref;       /* the object, in the app's registry */
    char name[32]; /* the field it was first read from, to name it in argument errors */
};

/* Pushes onto c->to the handle for the value at idx of L (the app's state): the one made before
 * for the same object, or a new one. [-0, +1, m] (on c->to) */
static void push_handle(lua_State *L, int idx, struct kit_copy *c)
{
    lua_State *to = c->to;
    const void *p = lua_topointer(L, idx);
    lua_getiuservalue(to, c->engine, 1); /* the engine's cache: object address -> handle */
    if (p && lua_rawgetp(to, -1, p) == LUA_TUSERDATA) {
        lua_remove(to, -2);
        return;
    }
    if (p)
        lua_pop(to, 1); /* rawgetp's nil */
    struct handle *h = lua_newuserdatauv(to, sizeof(*h), 1);
    h->e = c->e;
    snprintf(h->name, sizeof(h->name), "%s", c->name ? c->name : "");
    lua_pushvalue(L, idx);
    h->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    luaL_setmetatable(to, HANDLE_MT);
    lua_pushvalue(to, c->engine); /* a handle keeps its engine */
    lua_setiuservalue(to, -2, 1);
    if (p) {
        lua_pushvalue(to, -1);
        lua_rawsetp(to, -3, p);
    }
    lua_remove(to, -2);
}

void kit_value_out(lua_State *L, int idx, struct kit_copy *c, int depth)
{
    lua_State *to = c->to;
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 4) || !lua_checkstack(to, 8))
        luaL_error(L, "value too deep to copy");
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        lua_pushnil(to);
        return;
    case LUA_TBOOLEAN:
        lua_pushboolean(to, lua_toboolean(L, idx));
        return;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            lua_pushinteger(to, lua_tointeger(L, idx));
        else
            lua_pushnumber(to, lua_tonumber(L, idx));
        return;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        lua_pushlstring(to, s, n);
        return;
    }
    case LUA_TLIGHTUSERDATA: /* a bare pointer (ws.null): the same value on both sides */
        lua_pushlightuserdata(to, lua_touserdata(L, idx));
        return;
    case LUA_TTABLE:
        if (!lua_getmetatable(L, idx))
            break;
        lua_pop(L, 1);
        push_handle(L, idx, c); /* it behaves through its metatable: a handle */
        return;
    default:
        push_handle(L, idx, c);
        return;
    }
    const void *addr = lua_topointer(L, idx);
    if (lua_rawgetp(to, c->map, addr) != LUA_TNIL)
        return;
    lua_pop(to, 1);
    if (depth >= COPY_DEPTH)
        luaL_error(L, "value too deep to copy");
    lua_newtable(to);
    lua_pushvalue(to, -1);
    lua_rawsetp(to, c->map, addr);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        kit_value_out(L, -2, c, depth + 1);
        kit_value_out(L, -1, c, depth + 1);
        lua_rawset(to, -3);
        lua_pop(L, 1);
    }
}

static int spec_function(lua_State *L)
{
    return luaL_error(L, "a function of the spec cannot run in the app");
}

void kit_value_in(lua_State *from, int idx, lua_State *L, int map, struct kit_engine *e, int depth)
{
    idx = lua_absindex(from, idx);
    if (!lua_checkstack(L, 6) || !lua_checkstack(from, 4))
        luaL_error(L, "value too deep to copy");
    switch (lua_type(from, idx)) {
    case LUA_TNIL:
        lua_pushnil(L);
        return;
    case LUA_TBOOLEAN:
        lua_pushboolean(L, lua_toboolean(from, idx));
        return;
    case LUA_TNUMBER:
        if (lua_isinteger(from, idx))
            lua_pushinteger(L, lua_tointeger(from, idx));
        else
            lua_pushnumber(L, lua_tonumber(from, idx));
        return;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(from, idx, &n);
        lua_pushlstring(L, s, n);
        return;
    }
    case LUA_TLIGHTUSERDATA:
        lua_pushlightuserdata(L, lua_touserdata(from, idx));
        return;
    case LUA_TTABLE:
        break;
    case LUA_TFUNCTION: /* it stays in the spec: the app gets one that says so when called */
        lua_pushcfunction(L, spec_function);
        return;
    default: {
        struct handle *h = luaL_testudata(from, idx, HANDLE_MT);
        if (!h || h->e != e)
            luaL_error(L, "a %s of the spec cannot go into the app", luaL_typename(from, idx));
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref);
        return;
    }
    }
    const void *addr = lua_topointer(from, idx);
    if (lua_rawgetp(L, map, addr) != LUA_TNIL)
        return;
    lua_pop(L, 1);
    if (depth >= COPY_DEPTH)
        luaL_error(L, "value too deep to copy");
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, map, addr);
    lua_pushnil(from);
    while (lua_next(from, idx)) {
        kit_value_in(from, -2, L, map, e, depth + 1);
        kit_value_in(from, -1, L, map, e, depth + 1);
        lua_rawset(L, -3);
        lua_pop(from, 1);
    }
}

/* ---- handle operations: each runs in the app's state under lb_protect ---- */

enum op { OP_INDEX, OP_NEWINDEX, OP_CALL, OP_TOSTRING, OP_LEN, OP_PAIRS };

struct call {
    enum op op;
    struct handle *h;
    lua_State *spec; /* arguments at [first, top], results pushed here */
    int first, top;
    int nres;
    struct kit_copy out;
};

static int run_op(lua_State *L)
{
    struct call *k = lua_touserdata(L, 1);
    lua_settop(L, 0);
    lua_newtable(L);                              /* 1: tables copied in */
    lua_rawgeti(L, LUA_REGISTRYINDEX, k->h->ref); /* 2: the object */
    int base = lua_gettop(L);
    switch (k->op) {
    case OP_INDEX:
        kit_value_in(k->spec, k->first, L, 1, k->h->e, 0);
        if (lua_type(L, -1) == LUA_TSTRING)
            k->out.name = lua_tostring(k->spec, k->first);
        lua_gettable(L, 2);
        break;
    case OP_NEWINDEX:
        kit_value_in(k->spec, k->first, L, 1, k->h->e, 0);
        kit_value_in(k->spec, k->first + 1, L, 1, k->h->e, 0);
        lua_settable(L, 2);
        break;
    case OP_CALL:
        lua_pushvalue(L, 2);
        for (int i = k->first; i <= k->top; i++)
            kit_value_in(k->spec, i, L, 1, k->h->e, 0);
        lua_call(L, k->top - k->first + 1, LUA_MULTRET);
        break;
    case OP_TOSTRING:
        luaL_tolstring(L, 2, NULL);
        break;
    case OP_LEN:
        lua_len(L, 2);
        break;
    case OP_PAIRS: { /* every key and value now, as one list {k1, v1, k2, v2, ...} */
        lua_getglobal(L, "pairs");
        lua_pushvalue(L, 2);
        lua_call(L, 1, 3); /* base+1: f, base+2: s, base+3: the control */
        lua_newtable(L);   /* base+4 */
        for (lua_Integer n = 0;; n += 2) {
            lua_pushvalue(L, base + 1);
            lua_pushvalue(L, base + 2);
            lua_pushvalue(L, base + 3);
            lua_call(L, 2, 2);
            if (lua_isnil(L, -2)) {
                lua_pop(L, 2);
                break;
            }
            lua_pushvalue(L, -2);
            lua_replace(L, base + 3);
            lua_rawseti(L, base + 4, n + 2);
            lua_rawseti(L, base + 4, n + 1);
        }
        lua_copy(L, base + 4, base + 1);
        lua_settop(L, base + 1);
        break;
    }
    }
    k->nres = lua_gettop(L) - base;
    for (int i = base + 1; i <= lua_gettop(L); i++)
        kit_value_out(L, i, &k->out, 0);
    return 0;
}

/* Runs op on the handle at 1 with the arguments at [2, top]; pushes the results. */
static int handle_op(lua_State *L, enum op op)
{
    struct handle *h = luaL_checkudata(L, 1, HANDLE_MT);
    struct kit_engine *e = h->e;
    if (!e->loop)
        return luaL_error(L, "the app's engine is closed");
    e->L = L;
    int top = lua_gettop(L);
    lua_getiuservalue(L, 1, 1); /* the engine, for the handles the results need */
    lua_newtable(L);
    struct call k = {.op = op, .h = h, .spec = L, .first = 2, .top = top};
    k.out = (struct kit_copy){.to = L, .map = top + 2, .engine = top + 1, .e = e};
    char err[1024];
    int rc = lb_protect(e->app, run_op, &k, err, sizeof(err));
    kit_settle(e);
    if (rc != 0) {
        lua_settop(L, top);
        /* called from C it has no name; called from the app's code it would have its field's */
        const char *anon = op == OP_CALL && h->name[0] ? strstr(err, " to '?' (") : NULL;
        if (anon)
            lua_pushfstring(L, "%s to '%s' (%s", lua_pushlstring(L, err, (size_t)(anon - err)),
                            h->name, anon + 9);
        else
            lua_pushstring(L, err);
        return lua_error(L);
    }
    return k.nres;
}

static int handle_index(lua_State *L)
{
    return handle_op(L, OP_INDEX);
}

static int handle_newindex(lua_State *L)
{
    return handle_op(L, OP_NEWINDEX);
}

static int handle_call(lua_State *L)
{
    return handle_op(L, OP_CALL);
}

static int handle_tostring(lua_State *L)
{
    return handle_op(L, OP_TOSTRING);
}

static int handle_len(lua_State *L)
{
    return handle_op(L, OP_LEN);
}

static int pairs_next(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2));
    lua_rawgeti(L, lua_upvalueindex(1), i + 1);
    if (lua_isnil(L, -1))
        return 1;
    lua_rawgeti(L, lua_upvalueindex(1), i + 2);
    lua_pushinteger(L, i + 2);
    lua_replace(L, lua_upvalueindex(2));
    return 2;
}

/* pairs(handle): the object's pairs (its __pairs included), taken at once. */
static int handle_pairs(lua_State *L)
{
    lua_settop(L, 1);
    handle_op(L, OP_PAIRS);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, pairs_next, 2);
    return 1;
}

static int handle_gc(lua_State *L)
{
    struct handle *h = luaL_checkudata(L, 1, HANDLE_MT);
    if (h->e->loop && h->e->app)
        luaL_unref(h->e->app->L, LUA_REGISTRYINDEX, h->ref);
    return 0;
}

void kit_value_open(lua_State *L)
{
    static const luaL_Reg mt[] = {
        {"__index", handle_index}, {"__newindex", handle_newindex},
        {"__call", handle_call},   {"__tostring", handle_tostring},
        {"__len", handle_len},     {"__pairs", handle_pairs},
        {"__gc", handle_gc},       {NULL, NULL},
    };
    luaL_newmetatable(L, HANDLE_MT);
    luaL_setfuncs(L, mt, 0);
    lua_pushnil(L); /* argument errors call a handle a userdata, as the app's own objects */
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}
