/* ws.connect's options: the opts table read into a client, every value checked (misuse raises),
 * with the defaults from the app's config. It starts no connection: lb_wsclient.c does. */
#include "ws/lb.h"

#include "ws/buf.h"
#include "ws/http.h"

#include <lauxlib.h>
#include <math.h>
#include <string.h>

/* Reads timeout seconds at idx (nil: io_timeout). [-0, +0, v] */
double lb_wsclient_opt_timeout(lua_State *L, int idx, const char *what)
{
    struct lb_app *a = lb_app_of(L);
    if (lua_isnoneornil(L, idx))
        return a->config.io_timeout;
    if (lua_type(L, idx) != LUA_TNUMBER || !(lua_tonumber(L, idx) > 0) ||
        !isfinite(lua_tonumber(L, idx)))
        luaL_error(L, "%s must be a number of seconds > 0", what);
    return lua_tonumber(L, idx);
}

static bool is_token(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!ws_http_is_tchar((unsigned char)s[i]))
            return false;
    }
    return n > 0;
}

/* Reads opts (at 2) into cl. Raises for misuse. [-0, +0, v] */
void lb_wsclient_read_opts(lua_State *L, struct lb_wsclient *cl)
{
    struct lb_app *a = cl->a;
    cl->timeout = a->config.io_timeout;
    cl->max_message_bytes = (size_t)a->config.max_message_size;
    cl->min_delay = 0.5;
    cl->max_delay = 30;
    if (lua_isnoneornil(L, 2))
        goto done;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "timeout");
    cl->timeout = lb_wsclient_opt_timeout(L, -1, "ws.connect: opts.timeout");
    lua_pop(L, 1);
    lua_getfield(L, 2, "max_message_size");
    if (!lua_isnil(L, -1)) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1)
            luaL_error(L, "ws.connect: opts.max_message_size must be a whole number of bytes > 0");
        cl->max_message_bytes = (size_t)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    lua_getfield(L, 2, "compression");
    cl->compression = lua_toboolean(L, -1);
    lua_getfield(L, 2, "insecure");
    cl->insecure = lua_toboolean(L, -1);
    lua_getfield(L, 2, "reconnect");
    cl->reconnect = lua_toboolean(L, -1);
    lua_pop(L, 3);
    lua_getfield(L, 2, "ca_file");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "ws.connect: opts.ca_file must be a string");
        cl->ca_file = ws_xstrndup(lua_tostring(L, -1), lua_rawlen(L, -1));
    }
    lua_pop(L, 1);
    static const char *const delays[] = {"reconnect_delay", "reconnect_max_delay"};
    for (int i = 0; i < 2; i++) {
        lua_getfield(L, 2, delays[i]);
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) >= 0.01) ||
                !isfinite(lua_tonumber(L, -1)))
                luaL_error(L, "ws.connect: opts.%s must be a number of seconds >= 0.01", delays[i]);
            *(i ? &cl->max_delay : &cl->min_delay) = lua_tonumber(L, -1);
        }
        lua_pop(L, 1);
    }
    if (cl->max_delay < cl->min_delay)
        cl->max_delay = cl->min_delay;
    lua_getfield(L, 2, "protocols");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            luaL_error(L, "ws.connect: opts.protocols must be a list of strings");
        lua_Integer n = luaL_len(L, -1);
        if (n > LB_WSCLIENT_MAX_PROTOCOLS)
            luaL_error(L, "ws.connect: at most %d protocols", LB_WSCLIENT_MAX_PROTOCOLS);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            size_t len = 0;
            const char *p = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (!p || !is_token(p, len))
                luaL_error(L, "ws.connect: opts.protocols[%d] must be a token (RFC 6455 §4.1)",
                           (int)i);
            cl->protocols[cl->nprotocols++] = ws_xstrndup(p, len);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, 2, "headers");
    int hidx = lua_gettop(L);
    if (!lua_isnil(L, hidx)) {
        if (!lua_istable(L, hidx))
            luaL_error(L, "ws.connect: opts.headers must map names to values");
        lua_pushnil(L);
        while (lua_next(L, hidx)) {
            if (cl->nheaders == LB_WSCLIENT_MAX_HEADERS)
                luaL_error(L, "ws.connect: at most %d headers", LB_WSCLIENT_MAX_HEADERS);
            const char *line = lb_push_header_line(L, "ws.connect");
            cl->headers[cl->nheaders++] = ws_xstrndup(line, strlen(line));
            lua_pop(L, 2);
        }
    }
    lua_pop(L, 1);
    static const char *const names[LB_WSCLIENT_FN_COUNT] = {"open", "message", "close"};
    for (int i = 0; i < LB_WSCLIENT_FN_COUNT; i++) {
        lua_getfield(L, 2, names[i]);
        if (lua_isfunction(L, -1)) {
            cl->fn_ref[i] = luaL_ref(L, LUA_REGISTRYINDEX);
            cl->event = true;
        } else if (!lua_isnil(L, -1)) {
            luaL_error(L, "ws.connect: opts.%s must be a function", names[i]);
        } else {
            lua_pop(L, 1);
        }
    }
done:
    if (cl->reconnect && !cl->event)
        luaL_error(L, "ws.connect: opts.reconnect needs the event style (a message or close "
                      "callback)");
    cl->delay = cl->min_delay;
}
