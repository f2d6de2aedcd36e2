/* The `conn` userdata: a box holding the connection pointer, which becomes NULL when the
 * connection is freed, so a stale handle fails softly with nil, "closed". conn.data lives in the
 * box's user value and is created on first use. Boxes are kept in a registry table by id. */
#include "ws/lb.h"

#include "ws/conn.h"
#include "ws/connlog.h"
#include "ws/err.h"
#include "ws/frame.h"
#include "ws/server.h"
#include "ws/utf8.h"

#include <lauxlib.h>
#include <string.h>

#define CONN_MT "wsserver.conn"

/* 16 bytes, so the userdata with its user value fits an 80-byte heap chunk (96 with the id
 * kept beside the pointer): the id of a gone connection takes the pointer's place, tagged. */
struct lb_box {
    const void *mt; /* the conn metatable's address: marks the box as ours */
    uintptr_t v;    /* the struct ws_conn *, or (id << 1) | 1 once the connection is gone */
};

/* The box's connection, NULL once it is gone. */
static struct ws_conn *box_conn(const struct lb_box *box)
{
    return box->v & 1 ? NULL : (struct ws_conn *)box->v;
}

static uint64_t box_id(const struct lb_box *box)
{
    return box->v & 1 ? (uint64_t)(box->v >> 1) : box_conn(box)->node.id;
}

static struct lb_box *check_box(lua_State *L, int idx)
{
    /* hot path: a userdata of our size whose first word is the conn metatable's address is a
     * box (no other userdata can hold that address: it is a live table's); no metatable
     * lookup */
    struct lb_box *box = lua_touserdata(L, idx);
    if (box && lua_rawlen(L, idx) == sizeof(*box) && box->mt == lb_app_of(L)->conn_mt)
        return box;                          /* a light userdata's length is 0 */
    return luaL_checkudata(L, idx, CONN_MT); /* raises the usual "conn expected" error */
}

struct ws_conn *lb_conn_check(lua_State *L, int idx)
{
    return box_conn(check_box(L, idx));
}

void lb_conn_push(lua_State *L, struct ws_conn *c)
{
    struct lb_app *a = lb_app_of(L);
    if (lb_conn_push_existing(L, c, false))
        return;
    struct lb_box *box = lua_newuserdatauv(L, sizeof(*box), 1);
    box->mt = a->conn_mt;
    box->v = (uintptr_t)c;
    luaL_setmetatable(L, CONN_MT);
    lb_push_ref(L, a->conns_ref);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, (lua_Integer)c->node.id);
    lua_pop(L, 1);
}

bool lb_conn_push_existing(lua_State *L, struct ws_conn *c, bool co_task)
{
    if (co_task) {
        if (lua_rawgeti(L, LB_TASK_CONNS, (lua_Integer)c->node.id) != LUA_TNIL)
            return true;
        lua_pop(L, 1);
        return false;
    }
    lb_push_ref(L, lb_app_of(L)->conns_ref);
    if (lua_rawgeti(L, -1, (lua_Integer)c->node.id) == LUA_TNIL) {
        lua_pop(L, 2);
        return false;
    }
    lua_replace(L, -2);
    return true;
}

void lb_conn_release(struct lb_app *a, struct ws_conn *c)
{
    lua_State *L = a->L;
    lb_push_ref(L, a->conns_ref);
    if (lua_rawgeti(L, -1, (lua_Integer)c->node.id) == LUA_TUSERDATA) {
        struct lb_box *box = lua_touserdata(L, -1);
        box->v = (uintptr_t)(c->node.id << 1) | 1;
        /* clearing a key that exists never allocates, so this needs no protected call */
        lua_pushnil(L);
        lua_rawseti(L, -3, (lua_Integer)c->node.id);
    }
    lua_pop(L, 2);
}

/* A method's connection, or NULL after pushing nil, "closed". [-0, +0|+2, v] */
static struct ws_conn *open_or_fail(lua_State *L, struct ws_conn **out)
{
    struct ws_conn *c = lb_conn_check(L, 1);
    *out = c && c->state == WS_CONN_OPEN ? c : NULL;
    if (!*out) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
    }
    return *out;
}

/* Maps ws_conn_send's result to Lua: "sent", "queued", or nil, "closed" / "dropped". The
 * methods' upvalue 1 is the string "sent", made once. */
static int push_send_result(lua_State *L, int rc)
{
    if (rc == WS_CONN_SENT) {
        lua_pushvalue(L, lua_upvalueindex(1));
        return 1;
    }
    if (rc == WS_CONN_QUEUED) {
        lua_pushliteral(L, "queued");
        return 1;
    }
    lua_pushnil(L);
    if (rc == WS_E_LIMIT)
        lua_pushliteral(L, "dropped");
    else
        lua_pushliteral(L, "closed");
    return 2;
}

uint8_t lb_check_kind(lua_State *L, int idx)
{
    static const char *const kinds[] = {"text", "binary", NULL};
    /* short strings are interned, so any string "text" or "binary" is one of the app's two, and
     * compared by address (luaL_checkoption's string walk is left for the errors) */
    const char *s = lua_tostring(L, idx);
    const char *const *made = lb_app_of(L)->kinds;
    if (s == made[0])
        return WS_OP_TEXT;
    if (s == made[1])
        return WS_OP_BINARY;
    if (!s && lua_isnoneornil(L, idx))
        return WS_OP_TEXT; /* the default, conn:send(data) */
    return luaL_checkoption(L, idx, "text", kinds) ? WS_OP_BINARY : WS_OP_TEXT;
}

void lb_check_text(lua_State *L, uint8_t opcode, const char *data, size_t len, const char *hint)
{
    if (opcode == WS_OP_TEXT && ws_utf8_validate((const uint8_t *)data, len) < 0)
        luaL_error(L, "text message is not valid UTF-8 (%s)", hint);
}

/* conn:send(data [, "text"|"binary"]) [-0, +1|+2, v] */
static int conn_send(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    uint8_t opcode = lb_check_kind(L, 3);
    lb_check_text(L, opcode, data, len, "send it as \"binary\"");
    struct ws_conn *c;
    if (!open_or_fail(L, &c))
        return 2;
    return push_send_result(L, ws_conn_send(c, opcode, data, len));
}

/* conn:send_json(value) [-0, +1|+2, v] */
static int conn_send_json(lua_State *L)
{
    luaL_checkany(L, 2);
    struct ws_conn *c;
    if (!open_or_fail(L, &c))
        return 2;
    lb_push_ref(L, lb_app_of(L)->ws_ref); /* not the global: the app may shadow `ws` */
    lua_getfield(L, -1, "json");
    lua_getfield(L, -1, "encode");
    lua_pushvalue(L, 2);
    lua_call(L, 1, 2);
    size_t len;
    const char *data = lua_tolstring(L, -2, &len);
    if (!data)
        return luaL_error(L, "send_json: %s",
                          lua_isstring(L, -1) ? lua_tostring(L, -1) : "cannot encode the value");
    /* lua-cjson copies string bytes as they are, but a text frame must be UTF-8 (RFC 6455 §5.6) */
    if (ws_utf8_validate((const uint8_t *)data, len) < 0)
        return luaL_error(L, "send_json: a string in the value is not valid UTF-8");
    return push_send_result(L, ws_conn_send(c, WS_OP_TEXT, data, len));
}

/* conn:close([code [, reason]]) [-0, +1|+2, v] */
static int conn_close(lua_State *L)
{
    lua_Integer code = luaL_optinteger(L, 2, 1000);
    size_t len = 0;
    const char *reason = luaL_optlstring(L, 3, "", &len);
    luaL_argcheck(L, code >= 0 && code <= 65535 && ws_close_code_valid((int)code), 2,
                  "close code must be 1000-1003, 1007-1014 or 3000-4999");
    luaL_argcheck(L, len <= WS_FRAME_MAX_CONTROL_PAYLOAD - 2, 3, "reason longer than 123 bytes");
    luaL_argcheck(L, ws_utf8_validate((const uint8_t *)reason, len) == 0, 3,
                  "reason is not valid UTF-8");
    struct ws_conn *c;
    if (!open_or_fail(L, &c))
        return 2;
    ws_conn_close(c, (int)code, reason, len);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:ping([payload]) [-0, +1|+2, v] */
static int conn_ping(lua_State *L)
{
    size_t len = 0;
    const char *payload = luaL_optlstring(L, 2, "", &len);
    luaL_argcheck(L, len <= WS_FRAME_MAX_CONTROL_PAYLOAD, 2, "ping payload over 125 bytes");
    struct ws_conn *c;
    if (!open_or_fail(L, &c))
        return 2;
    return push_send_result(L, ws_conn_ping(c, payload, len));
}

/* conn:buffered() [-0, +1, v] */
static int conn_buffered(lua_State *L)
{
    struct ws_conn *c = lb_conn_check(L, 1);
    lua_pushinteger(L, c ? (lua_Integer)ws_conn_buffered(c) : 0);
    return 1;
}

/* conn:is_open() [-0, +1, v] */
static int conn_is_open(lua_State *L)
{
    struct ws_conn *c = lb_conn_check(L, 1);
    lua_pushboolean(L, c && c->state == WS_CONN_OPEN);
    return 1;
}

/* conn:subscribe(topic) -> true when newly subscribed, false when it already was [-0, +1, v] */
static int conn_subscribe(lua_State *L)
{
    size_t len;
    const char *topic = luaL_checklstring(L, 2, &len);
    struct ws_conn *c;
    if (!open_or_fail(L, &c))
        return 2;
    lua_pushboolean(L, ws_topics_subscribe(&c->env->topics, &c->sub, topic, len));
    return 1;
}

/* conn:unsubscribe(topic) -> true when it was subscribed [-0, +1, v] */
static int conn_unsubscribe(lua_State *L)
{
    size_t len;
    const char *topic = luaL_checklstring(L, 2, &len);
    struct ws_conn *c;
    if (!open_or_fail(L, &c))
        return 2;
    lua_pushboolean(L, ws_topics_unsubscribe(&c->env->topics, &c->sub, topic, len));
    return 1;
}

/* conn:topics() -> list of names, in subscription order (readable in close too) [-0, +1, m] */
static int conn_topics(lua_State *L)
{
    struct ws_conn *c = lb_conn_check(L, 1);
    uint32_t n = c ? ws_subscriber_count(&c->sub) : 0;
    lua_createtable(L, (int)n, 0);
    for (uint32_t i = 0; i < n; i++) {
        const struct ws_topic *t = ws_subscriber_topic(&c->sub, i);
        lua_pushlstring(L, t->name, t->len);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* conn:publish(topic, data [, kind]) -> number of other subscribers reached [-0, +1|+2, v] */
static int conn_publish(lua_State *L)
{
    size_t tlen, len;
    const char *topic = luaL_checklstring(L, 2, &tlen);
    const char *data = luaL_checklstring(L, 3, &len);
    uint8_t opcode = lb_check_kind(L, 4);
    lb_check_text(L, opcode, data, len, "send it as \"binary\"");
    struct ws_conn *c;
    if (!open_or_fail(L, &c))
        return 2;
    lua_pushinteger(L, (lua_Integer)ws_server_publish(lb_app_of(L)->srv, topic, tlen, opcode, data,
                                                      len, c->node.id));
    return 1;
}

static const luaL_Reg methods[] = {
    {"send", conn_send},
    {"send_json", conn_send_json},
    {"close", conn_close},
    {"ping", conn_ping},
    {"buffered", conn_buffered},
    {"is_open", conn_is_open},
    {"subscribe", conn_subscribe},
    {"unsubscribe", conn_unsubscribe},
    {"topics", conn_topics},
    {"publish", conn_publish},
    {NULL, NULL},
};

/* conn.data: the user value, created on first read. [-0, +1, m] */
static void push_data(lua_State *L, int idx)
{
    if (lua_getiuservalue(L, idx, 1) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setiuservalue(L, idx, 1);
    }
}

/* __index: conn:send, the other methods, then fields. [-0, +1, v] */
static int conn_index(lua_State *L)
{
    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    /* hot path (conn:send on every message): the interned "send", compared by address */
    const char *key = lua_tostring(L, 2);
    if (key == lb_app_of(L)->send_name) {
        lua_pushvalue(L, lua_upvalueindex(2));
        return 1;
    }
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    struct lb_box *box = lua_touserdata(L, 1); /* this metatable's __index: always a conn */
    struct ws_conn *c = box_conn(box);
    if (strcmp(key, "id") == 0) {
        lua_pushinteger(L, (lua_Integer)box_id(box));
    } else if (strcmp(key, "data") == 0) {
        push_data(L, 1);
    } else if (strcmp(key, "peer") == 0) {
        char peer[64];
        if (c)
            lua_pushstring(L, ws_connlog_peer(c, peer, sizeof(peer)));
        else
            lua_pushnil(L);
    } else if (strcmp(key, "path") == 0 || strcmp(key, "query") == 0 ||
               strcmp(key, "target") == 0) {
        /* target: as requested; path: without the query; query: its pairs, decoded */
        const char *t = c ? c->path : NULL;
        size_t plen = t ? strcspn(t, "?") : 0;
        const char *qs = t && t[plen] ? t + plen + 1 : "";
        if (!t)
            lua_pushnil(L);
        else if (key[0] == 't')
            lua_pushstring(L, t);
        else if (key[0] == 'p')
            lua_pushlstring(L, t, plen);
        else
            lb_push_pairs(L, qs, strlen(qs), '&', true);
    } else if (strcmp(key, "protocol") == 0) {
        if (c && c->protocol)
            lua_pushstring(L, c->protocol);
        else
            lua_pushnil(L);
    } else {
        lua_pushnil(L);
    }
    return 1;
}

/* __newindex: only conn.data may be replaced. [-0, +0, v] */
static int conn_newindex(lua_State *L)
{
    check_box(L, 1);
    const char *key = luaL_checkstring(L, 2);
    if (strcmp(key, "data") != 0)
        return luaL_error(L, "conn.%s is read-only (keep your own fields in conn.data)", key);
    lua_settop(L, 3);
    lua_setiuservalue(L, 1, 1);
    return 0;
}

static int conn_tostring(lua_State *L)
{
    struct lb_box *box = check_box(L, 1);
    lua_pushfstring(L, "conn %I%s", (lua_Integer)box_id(box), box_conn(box) ? "" : " (closed)");
    return 1;
}

/* __eq also runs for a conn compared with another kind of userdata (a timer): false, no error */
static int conn_eq(lua_State *L)
{
    struct lb_box *x = luaL_testudata(L, 1, CONN_MT), *y = luaL_testudata(L, 2, CONN_MT);
    lua_pushboolean(L, x && y && box_id(x) == box_id(y));
    return 1;
}

void lb_conn_open(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    a->kinds[0] = lua_pushliteral(L, "text");
    a->kind_refs[0] = luaL_ref(L, LUA_REGISTRYINDEX);
    a->kinds[1] = lua_pushliteral(L, "binary");
    a->kind_refs[1] = luaL_ref(L, LUA_REGISTRYINDEX);
    luaL_newmetatable(L, CONN_MT);
    a->conn_mt = lua_topointer(L, -1);
    luaL_newlibtable(L, methods);
    lua_pushliteral(L, "sent");
    luaL_setfuncs(L, methods, 1);
    /* upvalues: the methods, and conn:send (the methods table keeps its name alive) */
    a->send_name = lua_pushliteral(L, "send");
    lua_rawget(L, -2);
    lua_pushcclosure(L, conn_index, 2);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, conn_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, conn_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, conn_eq);
    lua_setfield(L, -2, "__eq");
    lua_pushliteral(L, "conn");
    lua_setfield(L, -2, "__name");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}
