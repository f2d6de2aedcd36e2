/* The checks a new version of the app passes before it is swapped in: the fields of its table,
 * its config table merged over the base config, the keys of its app.http routes. They check and
 * report only (the config is merged into the new version's copy): building the new version and
 * swapping it in are lb_load.c's. */
#include "ws/lb.h"

#include "ws/err.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

const char *const lb_handler_names[LB_HANDLER_COUNT] = {
    "upgrade", "open", "message", "close", "drain", "shutdown", "load", "error",
};

int lb_validate_app(lua_State *L, int idx, char *err, size_t errlen)
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
            if (strcmp(key, lb_handler_names[i]) == 0) {
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

int lb_validate_config(lua_State *L, int t, struct ws_config *cfg, char *err, size_t errlen)
{
    int rc = 0;
    lua_pushnil(L);
    while (rc == 0 && lua_next(L, t)) {
        const struct ws_option *opt =
            lua_type(L, -2) == LUA_TSTRING ? ws_config_find(lua_tostring(L, -2), false) : NULL;
        int type = lua_type(L, -1);
        bool number_opt = opt && (opt->type == WS_OPT_INT || opt->type == WS_OPT_SECONDS);
        if (!opt) {
            snprintf(err, errlen, "unknown config key '%s'", luaL_tolstring(L, -2, NULL));
            lua_pop(L, 1);
            rc = WS_E_INVAL;
        } else if (type == LUA_TNUMBER) {
            rc = ws_config_set_number(cfg, opt, lua_tonumber(L, -1), err, errlen);
        } else if (type == LUA_TBOOLEAN) {
            rc = ws_config_set_bool(cfg, opt, lua_toboolean(L, -1), err, errlen);
        } else if (type == LUA_TSTRING && number_opt &&
                   !(strcmp(opt->name, "workers") == 0 &&
                     strcmp(lua_tostring(L, -1), "auto") == 0)) {
            rc = ws_config_wrong_type(opt, "string", err, errlen);
        } else if (type == LUA_TSTRING) {
            if (opt->type == WS_OPT_LIST)
                ws_config_clear_list(cfg, opt);
            rc = ws_config_set(cfg, opt, lua_tostring(L, -1), false, err, errlen);
        } else if (type == LUA_TTABLE && opt->type == WS_OPT_LIST) {
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
            rc = ws_config_wrong_type(opt, luaL_typename(L, -1), err, errlen);
        }
        lua_pop(L, 1);
    }
    if (rc != 0)
        lua_pop(L, 1); /* the key lua_next left */
    return rc;
}

/* The paths the server answers itself, before any app route. */
static bool builtin_path(const char *path, size_t n)
{
    return (n == 8 && memcmp(path, "/healthz", 8) == 0) ||
           (n == 8 && memcmp(path, "/metrics", 8) == 0);
}

int lb_validate_routes(lua_State *L, int idx, char *err, size_t errlen)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *why = NULL;
        size_t n = 0;
        const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &n) : NULL;
        size_t m = key ? strspn(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") : 0;
        const char *path = key ? key + m + 1 : NULL;
        size_t plen = key && m < n ? n - m - 1 : 0;
        if (!key) {
            snprintf(err, errlen, "app.http keys must be strings like \"GET /path\", got a %s",
                     luaL_typename(L, -2));
            lua_pop(L, 2);
            return WS_E_INVAL;
        }
        if (m == 0 || m >= n || key[m] != ' ' || plen == 0 || path[0] != '/')
            why = "must be \"METHOD /path\" (e.g. \"GET /count\")";
        for (size_t i = 0; !why && i < plen; i++)
            if ((unsigned char)path[i] <= ' ' || path[i] == '?' || path[i] == '#' ||
                path[i] == 0x7f)
                why = "must be \"METHOD /path\" with a path of its own (no spaces, no query)";
        if (!why && builtin_path(path, plen))
            why = "is a path the server answers itself (/healthz, /metrics): pick another path";
        if (!why && !lua_isfunction(L, -1)) {
            snprintf(err, errlen, "app.http[\"%.100s\"] must be a function, got %s", key,
                     luaL_typename(L, -1));
            lua_pop(L, 2);
            return WS_E_INVAL;
        }
        if (why) {
            snprintf(err, errlen, "app.http key \"%.100s\" %s", key, why);
            lua_pop(L, 2);
            return WS_E_INVAL;
        }
        lua_pop(L, 1);
    }
    return 0;
}
