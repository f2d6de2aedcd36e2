/* HTTP fields as Lua values: key=value pairs (query strings, cookies) into tables, and the
 * entries of an opts.headers table into header lines, checked. No parsing of whole requests or
 * heads: that is src/proto's http. */
#include "ws/lb.h"

#include "ws/http.h"

#include <lauxlib.h>
#include <string.h>

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
