/* ws.pg's values both ways: Lua parameters to the text (or binary) form PostgreSQL reads, and
 * result rows to Lua tables by column type. No waiting and no connections: those are
 * lb_pg_query.c's and lb_pg.c's. */
#include "ws/lb.h"

#include "ws/utf8.h"

#include <lauxlib.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses a bytea in hex output format (\x0102...) in place; returns the length. */
static size_t unhex(char *s, size_t n)
{
    if (n < 2 || s[0] != '\\' || s[1] != 'x')
        return n; /* the escape format of bytea_output = escape is left as it is */
    size_t o = 0;
    for (size_t i = 2; i + 1 < n; i += 2) {
        int hi = s[i] <= '9' ? s[i] - '0' : (s[i] | 32) - 'a' + 10;
        int lo = s[i + 1] <= '9' ? s[i + 1] - '0' : (s[i + 1] | 32) - 'a' + 10;
        s[o++] = (char)(hi << 4 | lo);
    }
    return o;
}

/* Type OIDs (pg_type.dat) */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_OID 26
#define OID_JSON 114
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_JSONB 3802

/* Pushes field f of row r as Lua sees it; json_at: ws.json.decode, null_at: ws.null.
 * [-0, +1, e] */
static void push_value(lua_State *L, PGresult *res, int r, int f, int json_at, int null_at)
{
    if (PQgetisnull(res, r, f)) {
        lua_pushvalue(L, null_at);
        return;
    }
    char *v = PQgetvalue(res, r, f);
    size_t n = (size_t)PQgetlength(res, r, f);
    switch (PQftype(res, f)) {
    case OID_BOOL:
        lua_pushboolean(L, v[0] == 't');
        return;
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
    case OID_OID:
        if (lua_stringtonumber(L, v) == 0)
            lua_pushlstring(L, v, n);
        return;
    case OID_FLOAT4:
    case OID_FLOAT8:
        lua_pushnumber(L, strtod(v, NULL)); /* NaN, Infinity, -Infinity too */
        return;
    case OID_BYTEA:
        lua_pushlstring(L, v, unhex(v, n));
        return;
    case OID_JSON:
    case OID_JSONB:
        lua_pushvalue(L, json_at);
        lua_pushlstring(L, v, n);
        lua_call(L, 1, 1);
        return;
    default: /* text, numeric (exact), timestamps, dates, uuids, arrays: as the server wrote them */
        lua_pushlstring(L, v, n);
    }
}

int lb_pg_push_rows(lua_State *L, struct lb_app *a, PGresult *res)
{
    int rows = PQntuples(res), fields = PQnfields(res);
    luaL_checkstack(L, 8, "ws.pg");
    int base = lua_gettop(L);
    lb_push_ref(L, a->ws_ref);
    lua_getfield(L, -1, "null");
    lua_getfield(L, -2, "json");
    lua_getfield(L, -1, "decode");
    int null_at = base + 2, json_at = base + 4;
    lua_createtable(L, rows, 0);
    for (int r = 0; r < rows; r++) {
        lua_createtable(L, 0, fields);
        for (int f = 0; f < fields; f++) {
            push_value(L, res, r, f, json_at, null_at);
            lua_setfield(L, -2, PQfname(res, f));
        }
        lua_rawseti(L, -2, r + 1);
    }
    const char *count = PQcmdTuples(res);
    lua_pushinteger(L, count[0] ? strtoll(count, NULL, 10) : rows);
    lua_copy(L, base + 5, base + 1);
    lua_copy(L, base + 6, base + 2);
    lua_settop(L, base + 2);
    return 2;
}

void lb_pg_params(lua_State *L, struct lb_app *a, int idx, int n, const char **values, int *lengths,
                  int *formats)
{
    lb_push_ref(L, a->ws_ref);
    lua_getfield(L, -1, "null");
    lua_getfield(L, -2, "json");
    lua_getfield(L, -1, "encode");
    int encode_at = lua_gettop(L), null_at = encode_at - 2;
    for (int i = 0; i < n; i++) {
        int at = idx + i;
        switch (lua_type(L, at)) {
        case LUA_TNIL:
            continue;
        case LUA_TBOOLEAN:
            lua_pushstring(L, lua_toboolean(L, at) ? "true" : "false");
            break;
        case LUA_TNUMBER:
            if (lua_isinteger(L, at))
                lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, at));
            else if (isnan(lua_tonumber(L, at)))
                lua_pushliteral(L, "NaN");
            else if (isinf(lua_tonumber(L, at)))
                lua_pushstring(L, lua_tonumber(L, at) > 0 ? "Infinity" : "-Infinity");
            else {
                char num[40];
                snprintf(num, sizeof(num), "%.17g", lua_tonumber(L, at));
                lua_pushstring(L, num);
            }
            break;
        case LUA_TSTRING:
            lua_pushvalue(L, at);
            break;
        case LUA_TTABLE:
            lua_pushvalue(L, encode_at);
            lua_pushvalue(L, at);
            lua_call(L, 1, 2);
            if (lua_isnil(L, -2))
                luaL_error(L, "ws.pg: parameter %d cannot be sent as JSON: %s", i + 1,
                           lua_tostring(L, -1));
            lua_pop(L, 1);
            break;
        default:
            if (lua_rawequal(L, at, null_at)) {
                lua_pushnil(L);
                break;
            }
            luaL_error(L, "ws.pg: parameter %d cannot be a %s", i + 1, luaL_typename(L, at));
        }
        lua_replace(L, at);
        if (lua_isnil(L, at))
            continue;
        size_t len = 0;
        const char *s = lua_tolstring(L, at, &len);
        if (len > INT32_MAX)
            luaL_error(L, "ws.pg: parameter %d is too large", i + 1);
        values[i] = s;
        lengths[i] = (int)len;
        bool text = !memchr(s, '\0', len) && ws_utf8_validate((const uint8_t *)s, len) == 0;
        formats[i] = text ? 0 : 1;
    }
    lua_settop(L, null_at - 2);
}
