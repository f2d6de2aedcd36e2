/* ws.connect: outbound WebSocket connections for the app, on the core's client (wsclient.c).
 * Two styles over one userdata: waiting (ws.connect waits for the handshake, cl:receive waits for
 * a message, SPEC §4a) and events (open/message/close callbacks run as tasks, in order, with an
 * optional reconnect after a jittered back-off). Misuse raises; network failures are nil, err. */
#include "ws/lb.h"

#include "ws/clock.h"
#include "ws/err.h"
#include "ws/frame.h"
#include "ws/http.h"
#include "ws/log.h"
#include "ws/server.h"
#include "ws/session.h"
#include "ws/wsclient.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CLIENT_MT "wsserver.wsclient"
#define MAX_PROTOCOLS 16
#define MAX_HEADERS 64

enum { FN_OPEN, FN_MESSAGE, FN_CLOSE, FN_COUNT };

/* One queued event: a message (text or binary), or the open or close of the connection. */
enum item_kind { ITEM_TEXT, ITEM_BINARY, ITEM_OPEN, ITEM_CLOSE };

struct item {
    struct item *next;
    enum item_kind kind;
    int code; /* ITEM_CLOSE */
    size_t len;
    uint8_t data[];
};

struct lb_wsclient {
    struct lb_app *a;
    struct ws_client *c; /* the connection now, or NULL */
    int self_ref;        /* event style: anchors the userdata while it may still call back */
    int fn_ref[FN_COUNT];
    bool event;              /* callbacks instead of cl:receive */
    bool reconnect;          /* event style: connect again after an end */
    bool app_closed;         /* cl:close, a reload or a shutdown: no reconnect */
    bool opened;             /* the current connection completed its handshake */
    bool pumping;            /* pump() is on the C stack */
    struct lb_task *waiter;  /* a task waiting in ws.connect or cl:receive */
    struct lb_task *running; /* event style: a callback that waits; later events queue */
    struct item *head, *tail;
    size_t queued; /* bytes of queued messages */
    /* how the last connection ended */
    int code;
    char reason[WS_FRAME_MAX_CONTROL_PAYLOAD + 1];
    size_t reason_len;
    char err[400];
    int status;
    char *body;
    size_t body_len;
    char protocol[128];
    /* the options, kept for reconnecting */
    char *url;
    char *protocols[MAX_PROTOCOLS];
    size_t nprotocols;
    char *headers[MAX_HEADERS];
    size_t nheaders;
    char *ca_file;
    bool insecure, compression;
    double timeout;
    size_t max_message_bytes;
    double delay, min_delay, max_delay; /* reconnect back-off */
    uint64_t rng;                       /* its jitter */
    ev_timer retry;
    uint64_t generation;
    struct lb_wsclient *prev, *next; /* the app's clients */
};

static void pump(struct lb_wsclient *cl);

/* The queue's cap: beyond it the socket is not read until the app catches up. */
static size_t pending_limit(const struct lb_wsclient *cl)
{
    int64_t v = cl->a->config.max_pending_bytes;
    return v > 0 ? (size_t)v : 2 * cl->max_message_bytes;
}

static void push_item(struct lb_wsclient *cl, enum item_kind kind, int code, const void *data,
                      size_t len)
{
    struct item *it = ws_xmalloc(sizeof(*it) + len);
    it->next = NULL;
    it->kind = kind;
    it->code = code;
    it->len = len;
    if (len)
        memcpy(it->data, data, len);
    if (cl->tail)
        cl->tail->next = it;
    else
        cl->head = it;
    cl->tail = it;
    if (kind == ITEM_TEXT || kind == ITEM_BINARY) {
        cl->queued += len;
        if (cl->c && cl->queued > pending_limit(cl))
            ws_client_hold(cl->c, true);
    }
}

static struct item *pop_item(struct lb_wsclient *cl)
{
    struct item *it = cl->head;
    if (!it)
        return NULL;
    cl->head = it->next;
    if (!cl->head)
        cl->tail = NULL;
    if (it->kind == ITEM_TEXT || it->kind == ITEM_BINARY) {
        cl->queued -= it->len;
        if (cl->c && cl->queued <= pending_limit(cl) / 2)
            ws_client_hold(cl->c, false);
    }
    return it;
}

/* Lets the userdata go once nothing can call back any more. Last thing its callers do: the
 * collector may free cl at the next allocation. */
static void maybe_release(struct lb_wsclient *cl)
{
    if (cl->self_ref == LUA_NOREF || cl->c || ev_is_active(&cl->retry) || cl->head || cl->running ||
        cl->pumping)
        return;
    int ref = cl->self_ref;
    cl->self_ref = LUA_NOREF;
    luaL_unref(cl->a->L, LUA_REGISTRYINDEX, ref);
}

/* ---- the core's callbacks ---- */

static void on_open(void *ud, struct ws_client *c)
{
    struct lb_wsclient *cl = ud;
    cl->opened = true;
    cl->delay = cl->min_delay;
    snprintf(cl->protocol, sizeof cl->protocol, "%s", ws_client_protocol(c));
    if (cl->waiter) {
        lb_task_wake(cl->waiter, NULL);
    } else if (cl->event) {
        push_item(cl, ITEM_OPEN, 0, NULL, 0);
        pump(cl);
    }
}

static void on_message(void *ud, struct ws_client *c, const uint8_t *data, size_t len, bool binary)
{
    (void)c;
    struct lb_wsclient *cl = ud;
    push_item(cl, binary ? ITEM_BINARY : ITEM_TEXT, 0, data, len);
    if (cl->waiter)
        lb_task_wake(cl->waiter, NULL);
    else if (cl->event)
        pump(cl);
}

/* "Equal jitter" between half the delay and the delay (AWS architecture blog, "Exponential
 * backoff and jitter"): clients that lost the same server do not come back all at once. The
 * generator is the client's own (xorshift64), seeded per client and process, so forked workers
 * do not draw the same delays. */
static double next_delay(struct lb_wsclient *cl)
{
    cl->rng ^= cl->rng << 13;
    cl->rng ^= cl->rng >> 7;
    cl->rng ^= cl->rng << 17;
    double d = cl->delay * (0.5 + 0.5 * (double)(cl->rng >> 11) / (double)(1ULL << 53));
    cl->delay = cl->delay * 2 > cl->max_delay ? cl->max_delay : cl->delay * 2;
    return d;
}

static void on_end(void *ud, struct ws_client *c, const struct ws_client_end *e)
{
    struct lb_wsclient *cl = ud;
    ws_client_free(c); /* happens once this callback returns */
    cl->c = NULL;
    cl->code = e->opened ? e->code : 1006;
    const char *reason = e->opened ? e->reason : e->err;
    size_t rlen = e->opened ? e->reason_len : strlen(e->err ? e->err : "");
    if (rlen >= sizeof cl->reason)
        rlen = sizeof cl->reason - 1;
    if (rlen)
        memcpy(cl->reason, reason, rlen);
    cl->reason[rlen] = '\0';
    cl->reason_len = rlen;
    snprintf(cl->err, sizeof cl->err, "%s", e->err ? e->err : "closed");
    cl->status = e->status;
    free(cl->body);
    cl->body = NULL;
    cl->body_len = e->body_len;
    if (e->body_len) {
        cl->body = ws_xmalloc(e->body_len);
        memcpy(cl->body, e->body, e->body_len);
    }
    cl->opened = false;
    if (cl->waiter) {
        lb_task_wake(cl->waiter, NULL);
        return;
    }
    if (!cl->event)
        return;
    struct lb_app *a = cl->a;
    /* a connection that opened reports its close; a failed attempt reports 1006 and why */
    push_item(cl, ITEM_CLOSE, cl->code, cl->reason, cl->reason_len);
    if (cl->reconnect && !cl->app_closed && !a->stopping && !a->closing) {
        ws_timer_start(a->loop, &cl->retry, next_delay(cl), 0);
    }
    pump(cl);
}

static const struct ws_client_ops client_ops = {on_open, on_message, on_end};

/* Connects with the kept options. Returns false with cl->err filled. */
static bool start(struct lb_wsclient *cl)
{
    struct lb_app *a = cl->a;
    struct ws_client_opts o = {
        .url = cl->url,
        .protocols = (const char *const *)cl->protocols,
        .nprotocols = cl->nprotocols,
        .headers = (const char *const *)cl->headers,
        .nheaders = cl->nheaders,
        .timeout = cl->timeout,
        .close_timeout = a->config.close_timeout,
        .max_message_bytes = cl->max_message_bytes,
        .max_buffered_bytes = (size_t)a->config.max_buffered,
        .compression = cl->compression,
        .ca_file = cl->ca_file,
        .insecure = cl->insecure,
        .stats = a->srv ? a->srv->env.stats : NULL,
        .net = a->wsclient_net,
    };
    cl->opened = false;
    cl->c = ws_client_connect(a->loop, &o, &client_ops, cl, cl->err, sizeof cl->err);
    return cl->c != NULL;
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct lb_wsclient *cl = w->data;
    if (cl->app_closed) {
        maybe_release(cl);
        return;
    }
    if (!start(cl)) {
        /* reported like any failed attempt: the close callback, then a retry if asked */
        struct ws_client_end e = {.err = cl->err};
        on_end(cl, NULL, &e);
        return;
    }
    maybe_release(cl);
}

/* ---- event style: callbacks as tasks, one at a time, in order ---- */

static void on_task_done(struct lb_app *a, void *ud, bool failed)
{
    (void)a;
    (void)failed;
    struct lb_wsclient *cl = ud;
    cl->running = NULL;
    pump(cl);
}

static const char *const item_what[] = {"ws.connect message", "ws.connect message",
                                        "ws.connect open", "ws.connect close"};

/* Runs queued events while no callback waits. */
static void pump(struct lb_wsclient *cl)
{
    struct lb_app *a = cl->a;
    if (cl->pumping)
        return;
    cl->pumping = true;
    while (!cl->running && cl->head) {
        struct item *it = pop_item(cl);
        int fn = it->kind == ITEM_OPEN    ? cl->fn_ref[FN_OPEN]
                 : it->kind == ITEM_CLOSE ? cl->fn_ref[FN_CLOSE]
                                          : cl->fn_ref[FN_MESSAGE];
        struct lb_task *t = fn == LUA_NOREF ? NULL : lb_task_new(a);
        if (fn != LUA_NOREF && !t)
            lb_report_error(a, item_what[it->kind], 0, "not enough memory");
        if (!t || !lua_checkstack(t->co, 4)) {
            free(it);
            continue;
        }
        lb_push_ref(t->co, fn);
        lb_push_ref(t->co, cl->self_ref);
        int nargs = 1;
        if (it->kind == ITEM_TEXT || it->kind == ITEM_BINARY) {
            lua_pushlstring(t->co, (const char *)it->data, it->len);
            lua_pushvalue(t->co, it->kind == ITEM_TEXT ? LB_TASK_TEXT : LB_TASK_BINARY);
            nargs = 3;
        } else if (it->kind == ITEM_CLOSE) {
            lua_pushinteger(t->co, it->code);
            lua_pushlstring(t->co, (const char *)it->data, it->len);
            nargs = 3;
        }
        const char *what = item_what[it->kind];
        free(it);
        if (lb_task_start(t, nargs, what, 0) == LB_TASK_WAITING) {
            cl->running = t;
            t->done = on_task_done;
            t->ud = cl;
        }
    }
    cl->pumping = false;
    maybe_release(cl);
}

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
        free(pop_item(cl));
    for (int i = 0; i < FN_COUNT; i++)
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

/* Pushes the next queued message (data, kind), or the end (nil, "closed", code, reason), or
 * nothing when neither is there. [-0, +0|+2|+4, m] */
static int deliver(lua_State *L, struct lb_wsclient *cl)
{
    struct item *it = NULL;
    for (struct item **p = &cl->head; *p; p = &(*p)->next) {
        if ((*p)->kind == ITEM_TEXT || (*p)->kind == ITEM_BINARY) {
            it = *p;
            break;
        }
    }
    if (it) {
        while (cl->head != it)
            free(pop_item(cl));
        pop_item(cl);
        lua_pushlstring(L, (const char *)it->data, it->len);
        lua_pushstring(L, it->kind == ITEM_TEXT ? "text" : "binary");
        free(it);
        return 2;
    }
    if (!cl->c) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        lua_pushinteger(L, cl->code);
        lua_pushlstring(L, cl->reason, cl->reason_len);
        return 4;
    }
    return 0;
}

/* The wait of cl:receive ended. [-0, +2|+4, m] */
static int receive_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct lb_task *t = (struct lb_task *)ctx;
    struct lb_wsclient *cl = t->wait_ud;
    cl->waiter = NULL;
    int n = deliver(L, cl);
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

/* Reads timeout seconds at idx (nil: io_timeout). [-0, +0, v] */
static double opt_timeout(lua_State *L, int idx, const char *what)
{
    struct lb_app *a = lb_app_of(L);
    if (lua_isnoneornil(L, idx))
        return a->config.io_timeout;
    if (lua_type(L, idx) != LUA_TNUMBER || !(lua_tonumber(L, idx) > 0) ||
        !isfinite(lua_tonumber(L, idx)))
        luaL_error(L, "%s must be a number of seconds > 0", what);
    return lua_tonumber(L, idx);
}

/* cl:receive([timeout]) -> data, kind | nil, "closed", code, reason | nil, "timeout"; waits.
 * [-0, +2|+4, v] */
static int client_receive(lua_State *L)
{
    struct lb_wsclient *cl = check_client(L);
    double timeout = opt_timeout(L, 2, "cl:receive: timeout");
    if (cl->event)
        return luaL_error(L, "cl:receive: this client delivers messages to its message callback");
    int n = deliver(L, cl);
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
    const char *kind = luaL_optstring(L, 3, "text");
    bool binary = strcmp(kind, "binary") == 0;
    luaL_argcheck(L, binary || strcmp(kind, "text") == 0, 3, "\"text\" or \"binary\"");
    lb_check_text(L, binary ? WS_OP_BINARY : WS_OP_TEXT, data, len, "send it as \"binary\"");
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

/* Ends cl for good: no reconnect; an open connection starts its closing handshake, one still
 * connecting is dropped. */
static void shut(struct lb_wsclient *cl, int code, const char *reason, size_t len)
{
    cl->app_closed = true;
    ws_timer_stop(cl->a->loop, &cl->retry);
    if (!cl->c)
        return;
    if (ws_client_is_open(cl->c)) {
        ws_client_close(cl->c, code, reason, len);
    } else if (!cl->opened && !cl->waiter) {
        /* still connecting and nobody waits for it */
        ws_client_free(cl->c);
        cl->c = NULL;
        cl->code = 1006;
        snprintf(cl->reason, sizeof cl->reason, "closed before it opened");
        cl->reason_len = strlen(cl->reason);
    }
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
    shut(cl, code, reason, len);
    maybe_release(cl);
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

static bool is_token(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!ws_http_is_tchar((unsigned char)s[i]))
            return false;
    }
    return n > 0;
}

/* Reads opts (at 2) into cl. Raises for misuse. [-0, +0, v] */
static void read_opts(lua_State *L, struct lb_wsclient *cl)
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
    cl->timeout = opt_timeout(L, -1, "ws.connect: opts.timeout");
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
        if (n > MAX_PROTOCOLS)
            luaL_error(L, "ws.connect: at most %d protocols", MAX_PROTOCOLS);
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
            if (cl->nheaders == MAX_HEADERS)
                luaL_error(L, "ws.connect: at most %d headers", MAX_HEADERS);
            const char *line = lb_push_header_line(L, "ws.connect");
            cl->headers[cl->nheaders++] = ws_xstrndup(line, strlen(line));
            lua_pop(L, 2);
        }
    }
    lua_pop(L, 1);
    static const char *const names[FN_COUNT] = {"open", "message", "close"};
    for (int i = 0; i < FN_COUNT; i++) {
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
    for (int i = 0; i < FN_COUNT; i++)
        cl->fn_ref[i] = LUA_NOREF;
    ev_init(&cl->retry, on_retry);
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
    read_opts(L, cl);
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
    if (!start(cl)) {
        lua_pushnil(L);
        lua_pushstring(L, cl->err);
        return 2;
    }
    cl->waiter = t;
    return lb_task_wait(L, t, cl->timeout, false, connect_cancel, cl, connect_done);
}

void lb_wsclient_cancel(struct lb_app *a, uint64_t keep_generation)
{
    struct lb_wsclient *cl = a->wsclients;
    while (cl) {
        struct lb_wsclient *next = cl->next;
        if (keep_generation == 0) {
            /* the state closes: drop every connection now, count nothing more */
            ws_timer_stop(a->loop, &cl->retry);
            cl->app_closed = true;
            if (cl->c) {
                ws_client_set_stats(cl->c, NULL);
                ws_client_free(cl->c);
                cl->c = NULL;
            }
        } else if (cl->event && cl->generation != keep_generation) {
            /* a reload: the callbacks of the old version close their connections */
            shut(cl, 1001, "reload", 6);
            maybe_release(cl);
        }
        cl = next;
    }
}

void lb_wsclient_shutdown(struct lb_app *a)
{
    for (struct lb_wsclient *cl = a->wsclients; cl;) {
        struct lb_wsclient *next = cl->next;
        shut(cl, 1001, "server shutting down", 20);
        maybe_release(cl);
        cl = next;
    }
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
