/* ws.connect: outbound WebSocket connections for the app, on the core's client (wsclient.c).
 * Two styles over one userdata: waiting (ws.connect waits for the handshake, cl:receive waits for
 * a message, SPEC §4a) and events (open/message/close callbacks run as tasks, in order, with an
 * optional reconnect after a jittered back-off). Misuse raises; network failures are nil, err.
 * Here: ws.connect and the userdata's methods; the options in lb_wsclient_opts.c, the queue,
 * callbacks and reconnects in lb_wsclient_events.c. */
#include "ws/lb.h"

#include "ws/clock.h"
#include "ws/err.h"
#include "ws/frame.h"
#include "ws/session.h"
#include "ws/wsclient.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CLIENT_MT "wsserver.wsclient"

/* ---- the userdata ---- */

static struct lb_wsclient *check_client(lua_State *L)
{
    return luaL_checkudata(L, 1, CLIENT_MT);
}

static void unlink_client(struct lb_wsclient *cl)
{
    struct lb_app *a = cl->a;
    if (cl->prev)
        cl->prev->next = cl->next;
    else if (a->wsclients == cl)
        a->wsclients = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    cl->prev = cl->next = NULL;
}

/* [-0, +0, -] */
static int client_gc(lua_State *L)
{
    struct lb_wsclient *cl = lua_touserdata(L, 1);
    if (!cl->a)
        return 0;
    if (cl->c)
        ws_client_free(cl->c);
    cl->c = NULL;
    ws_timer_stop(cl->a->loop, &cl->retry);
    while (cl->head)
        free(lb_wsclient_pop_item(cl));
    for (int i = 0; i < LB_WSCLIENT_FN_COUNT; i++)
        luaL_unref(L, LUA_REGISTRYINDEX, cl->fn_ref[i]);
    free(cl->url);
    for (size_t i = 0; i < cl->nprotocols; i++)
        free(cl->protocols[i]);
    for (size_t i = 0; i < cl->nheaders; i++)
        free(cl->headers[i]);
    free(cl->ca_file);
    free(cl->body);
    unlink_client(cl);
    cl->a = NULL;
    return 0;
}

/* The wait of cl:receive ended. [-0, +2|+4, m] */
static int receive_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct lb_task *t = (struct lb_task *)ctx;
    struct lb_wsclient *cl = t->wait_ud;
    cl->waiter = NULL;
    int n = lb_wsclient_deliver(L, cl);
    if (n)
        return n;
    lua_pushnil(L);
    lua_pushstring(L, t->woke ? t->woke : "timeout");
    return 2;
}

static void receive_cancel(struct lb_task *t)
{
    struct lb_wsclient *cl = t->wait_ud;
    cl->waiter = NULL;
}

/* cl:receive([timeout]) -> data, kind | nil, "closed", code, reason | nil, "timeout"; waits.
 * [-0, +2|+4, v] */
static int client_receive(lua_State *L)
{
    struct lb_wsclient *cl = check_client(L);
    double timeout = lb_wsclient_opt_timeout(L, 2, "cl:receive: timeout");
    if (cl->event)
        return luaL_error(L, "cl:receive: this client delivers messages to its message callback");
    int n = lb_wsclient_deliver(L, cl);
    if (n)
        return n;
    struct lb_task *t = lb_task_waiter(L, "cl:receive");
    if (cl->waiter)
        return luaL_error(L, "cl:receive: another handler is already waiting on this client");
    cl->waiter = t;
    lua_settop(L, 1);
    return lb_task_wait(L, t, timeout, false, receive_cancel, cl, receive_done);
}

/* cl:send(data [, "binary"]) -> "sent" | "queued" | nil, err [-0, +1|+2, v] */
static int client_send(lua_State *L)
{
    struct lb_wsclient *cl = check_client(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    uint8_t opcode = lb_check_kind(L, 3);
    bool binary = opcode == WS_OP_BINARY;
    lb_check_text(L, opcode, data, len, "send it as \"binary\"");
    int rc = cl->c ? ws_client_send(cl->c, data, len, binary) : WS_E_CLOSED;
    if (rc == 0) {
        lua_pushstring(L, ws_client_buffered(cl->c) ? "queued" : "sent");
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, rc == WS_E_LIMIT ? "buffer full" : "closed");
    return 2;
}

/* cl:ping([payload]) -> true | nil, "closed" [-0, +1|+2, v] */
static int client_ping(lua_State *L)
{
    struct lb_wsclient *cl = check_client(L);
    size_t len = 0;
    const char *data = luaL_optlstring(L, 2, "", &len);
    luaL_argcheck(L, len <= WS_FRAME_MAX_CONTROL_PAYLOAD, 2, "at most 125 bytes");
    if (!cl->c || ws_client_ping(cl->c, data, len) < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* cl:close([code [, reason]]) -> true [-0, +1, v] */
static int client_close(lua_State *L)
{
    struct lb_wsclient *cl = check_client(L);
    int code = (int)luaL_optinteger(L, 2, 1000);
    size_t len = 0;
    const char *reason = luaL_optlstring(L, 3, "", &len);
    luaL_argcheck(L, ws_close_code_valid(code), 2, "a close code that may be sent (RFC 6455 §7.4)");
    lb_check_text(L, WS_OP_TEXT, reason, len, "a close reason is text");
    lb_wsclient_shut(cl, code, reason, len);
    lb_wsclient_maybe_release(cl);
    lua_pushboolean(L, 1);
    return 1;
}

/* cl:is_open() [-0, +1, v] */
static int client_is_open(lua_State *L)
{
    struct lb_wsclient *cl = check_client(L);
    lua_pushboolean(L, cl->c && ws_client_is_open(cl->c));
    return 1;
}

/* cl:buffered() -> bytes waiting to be sent [-0, +1, v] */
static int client_buffered(lua_State *L)
{
    struct lb_wsclient *cl = check_client(L);
    lua_pushinteger(L, cl->c ? (lua_Integer)ws_client_buffered(cl->c) : 0);
    return 1;
}

static const luaL_Reg client_methods[] = {
    {"send", client_send},
    {"receive", client_receive},
    {"ping", client_ping},
    {"close", client_close},
    {"is_open", client_is_open},
    {"buffered", client_buffered},
    {NULL, NULL},
};

/* cl.protocol, cl.url, and the methods. [-0, +1, v] */
static int client_index(lua_State *L)
{
    struct lb_wsclient *cl = check_client(L);
    const char *key = luaL_checkstring(L, 2);
    if (strcmp(key, "protocol") == 0) {
        if (cl->protocol[0])
            lua_pushstring(L, cl->protocol);
        else
            lua_pushnil(L);
        return 1;
    }
    if (strcmp(key, "url") == 0) {
        lua_pushstring(L, cl->url ? cl->url : "");
        return 1;
    }
    for (const luaL_Reg *m = client_methods; m->name; m++) {
        if (strcmp(m->name, key) == 0) {
            lua_pushcfunction(L, m->func);
            return 1;
        }
    }
    lua_pushnil(L);
    return 1;
}

/* ---- ws.connect ---- */

/* The wait of ws.connect ended: the client, or nil, err, status, body. [-0, +1|+2|+4, m] */
static int connect_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct lb_task *t = (struct lb_task *)ctx;
    struct lb_wsclient *cl = t->wait_ud;
    cl->waiter = NULL;
    if (cl->c && ws_client_is_open(cl->c)) {
        lua_pushvalue(L, 3);
        return 1;
    }
    lua_pushnil(L);
    if (t->woke) {
        lua_pushstring(L, t->woke);
        return 2;
    }
    lua_pushstring(L, cl->err);
    if (!cl->status)
        return 2;
    lua_pushinteger(L, cl->status);
    lua_pushlstring(L, cl->body ? cl->body : "", cl->body_len);
    return 4;
}

static void connect_cancel(struct lb_task *t)
{
    struct lb_wsclient *cl = t->wait_ud;
    cl->waiter = NULL;
    ws_client_free(cl->c);
    cl->c = NULL;
}

/* ws.connect(url [, opts]) -> cl | nil, err [, status, body]. Waits for the handshake unless
 * opts has callbacks (then returns at once). [-0, +1|+2|+4, v] */
static int ws_connect(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    size_t ulen = 0;
    const char *url = luaL_checklstring(L, 1, &ulen);
    lua_settop(L, 2);
    struct ws_url parsed;
    const char *why = NULL;
    if (strlen(url) != ulen || ws_url_parse(url, &parsed, &why) < 0)
        return luaL_error(L, "ws.connect: %s", why ? why : "the URL holds a NUL byte");
    if (a->closing)
        return luaL_error(L, "ws.connect: the server is stopping");
    struct lb_wsclient *cl = lua_newuserdatauv(L, sizeof(*cl), 0); /* at 3 */
    memset(cl, 0, sizeof(*cl));
    cl->self_ref = LUA_NOREF;
    for (int i = 0; i < LB_WSCLIENT_FN_COUNT; i++)
        cl->fn_ref[i] = LUA_NOREF;
    ev_init(&cl->retry, lb_wsclient_on_retry);
    cl->retry.data = cl;
    cl->a = a;
    cl->url = ws_xstrndup(url, ulen);
    cl->generation = a->generation + (a->loading ? 1 : 0);
    cl->rng =
        ((uint64_t)(uintptr_t)cl ^ (uint64_t)(ev_time() * 1e6) ^ (uint64_t)getpid() << 40) | 1;
    luaL_setmetatable(L, CLIENT_MT);
    cl->next = a->wsclients;
    if (a->wsclients)
        a->wsclients->prev = cl;
    a->wsclients = cl;
    lb_wsclient_read_opts(L, cl);
    lua_settop(L, 3);
    if (cl->event) {
        if (a->stopping)
            return luaL_error(L, "ws.connect: the server is stopping");
        lua_pushvalue(L, 3);
        cl->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        /* connects from the loop: the app's chunk may not be running on a server yet */
        ws_timer_start(a->loop, &cl->retry, 0, 0);
        return 1;
    }
    struct lb_task *t = lb_task_waiter(L, "ws.connect");
    if (t->gone) {
        lua_pushnil(L);
        lua_pushstring(L, t->gone);
        return 2;
    }
    if (!lb_wsclient_start(cl)) {
        lua_pushnil(L);
        lua_pushstring(L, cl->err);
        return 2;
    }
    cl->waiter = t;
    return lb_task_wait(L, t, cl->timeout, false, connect_cancel, cl, connect_done);
}

void lb_wsclient_open(lua_State *L)
{
    luaL_newmetatable(L, CLIENT_MT);
    lua_pushcfunction(L, client_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, client_index);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "ws.client");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    lua_pushcfunction(L, ws_connect);
}
