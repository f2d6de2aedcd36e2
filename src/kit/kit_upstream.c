/* ws.connect's stand-in for ws.kitcore: upstream servers the spec declares by URL. The app's
 * client runs its real code over an in-memory pipe (struct ws_client_net); this end answers in
 * the server role with the project's own handshake, frame and session code, as the spec asks. */
#include "ws/kit.h"

#include "ws/buf.h"
#include "ws/clock.h"
#include "ws/err.h"
#include "ws/handshake.h"
#include "ws/http.h"
#include "ws/session.h"
#include "ws/wsclient.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEAD_BYTES 16384
#define MAX_MESSAGE_BYTES (64u << 20)

/* What the app did, in order, for the spec's up:next(). */
struct kit_up_event {
    const char *kind; /* "text", "binary", "close" (code, data the reason) */
    int code;
    char *data;
    size_t len;
    struct kit_up_event *next;
};

enum conn_state { UC_HANDSHAKE, UC_ANSWERING, UC_OPEN, UC_DONE };

/* One connection the app made to an upstream. */
struct kit_up_conn {
    ev_timer timer; /* the delayed answer to the handshake */
    struct kit_upstream *up;
    struct ws_mempipe *pipe;
    enum conn_state state;
    struct ws_buf head;
    size_t scanned;
    struct ws_session session;
    bool session_ready, close_sent;
    struct kit_up_conn *next;
};

struct kit_upstream {
    struct kit_engine *e;
    char *url;
    int status;            /* 101: accept, else refuse with it */
    char *protocol;        /* the subprotocol an accept picks ("" none) */
    char *body;            /* a refusal's body */
    double delay;          /* seconds before the handshake is answered */
    struct ws_buf request; /* the last handshake request's head */
    struct kit_up_conn *conns, *current;
    int nconns;
    struct kit_up_event *events, *last;
    struct kit_upstream *next;
};

static void push_event(struct kit_upstream *up, const char *kind, int code, const void *data,
                       size_t len)
{
    struct kit_up_event *ev = ws_xcalloc(1, sizeof(*ev));
    ev->kind = kind;
    ev->code = code;
    ev->data = ws_xmalloc(len + 1);
    if (len)
        memcpy(ev->data, data, len);
    ev->len = len;
    if (up->last)
        up->last->next = ev;
    else
        up->events = ev;
    up->last = ev;
}

/* Writes one unmasked frame to the app's client (RFC 6455 §5.1: a server never masks). */
static void send_frame(struct kit_up_conn *c, uint8_t opcode, const void *data, size_t len)
{
    uint8_t hdr[WS_FRAME_MAX_HEADER];
    size_t hlen = ws_frame_encode_header(hdr, true, 0, opcode, len, NULL);
    ws_mempipe_send(c->pipe, hdr, hlen);
    if (len)
        ws_mempipe_send(c->pipe, data, len);
}

static void send_close(struct kit_up_conn *c, int code, const char *reason, size_t len)
{
    if (c->close_sent)
        return;
    uint8_t payload[WS_FRAME_MAX_CONTROL_PAYLOAD];
    size_t n = ws_close_payload(payload, code, reason, len);
    send_frame(c, WS_OP_CLOSE, payload, n);
    c->close_sent = true;
}

/* Ends this side: the app's client reads the end of the stream next. */
static void conn_end(struct kit_up_conn *c)
{
    c->state = UC_DONE;
    ws_mempipe_shutdown(c->pipe);
}

/* Answers the handshake request in c->head as the spec said. */
static void answer(struct kit_up_conn *c)
{
    struct kit_upstream *up = c->up;
    struct ws_http_request req;
    size_t scanned = 0;
    char out[4096];
    size_t n = 0;
    struct ws_handshake hs;
    bool upgrade = ws_http_parse((const char *)c->head.data, c->head.len, MAX_HEAD_BYTES, &scanned,
                                 &req) >= 0 &&
                   ws_handshake_check(&req, &hs) == 0;
    if (upgrade && up->status == 101)
        n = ws_handshake_response(out, sizeof out, &hs, up->protocol, strlen(up->protocol), NULL);
    else if (upgrade)
        n = ws_handshake_error_response(out, sizeof out, up->status, up->body, strlen(up->body),
                                        NULL);
    else
        n = ws_handshake_error_response(out, sizeof out, 400, "not a WebSocket upgrade", 23, NULL);
    bool accepted = upgrade && up->status == 101 && n > 0;
    if (n == 0) { /* a subprotocol or body the proto code cannot write */
        const char *why = "the stand-in's answer cannot be written";
        n = ws_handshake_error_response(out, sizeof out, 500, why, strlen(why), NULL);
    }
    ws_mempipe_send(c->pipe, out, n);
    ws_buf_reset(&c->head);
    if (!accepted) {
        conn_end(c);
        return;
    }
    c->state = UC_OPEN;
    ws_session_init(&c->session, MAX_MESSAGE_BYTES);
    c->session_ready = true;
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct kit_up_conn *c = (struct kit_up_conn *)w;
    if (c->state != UC_ANSWERING)
        return;
    if (ws_mempipe_ended(c->pipe)) /* the app gave up waiting (its timeout) */
        c->state = UC_DONE;
    else
        answer(c);
}

/* Handles what the app's client wrote on c since the last pump. */
static void pump_conn(struct kit_up_conn *c)
{
    size_t n;
    const uint8_t *p = ws_mempipe_output(c->pipe, &n);
    if (c->state == UC_HANDSHAKE && n) {
        ws_buf_append(&c->head, p, n);
        ws_mempipe_take(c->pipe, n);
        struct ws_http_request req;
        int rc = ws_http_parse((const char *)c->head.data, c->head.len, MAX_HEAD_BYTES, &c->scanned,
                               &req);
        if (rc == WS_E_AGAIN)
            return;
        struct kit_upstream *up = c->up;
        up->request.len = 0;
        ws_buf_append(&up->request, c->head.data, rc < 0 ? c->head.len : req.head_len);
        c->state = UC_ANSWERING;
        if (up->delay > 0 && rc >= 0)
            ws_timer_start(up->e->loop, &c->timer, up->delay, 0);
        else
            answer(c);
        return;
    }
    if (c->state == UC_OPEN && n) {
        uint8_t *buf = ws_xmalloc(n);
        memcpy(buf, p, n);
        ws_mempipe_take(c->pipe, n);
        size_t off = 0;
        while (off < n && c->state == UC_OPEN) {
            struct ws_session_event ev;
            size_t used = 0;
            int rc = ws_session_feed(&c->session, buf + off, n - off, &used, &ev);
            off += used;
            if (rc == WS_E_AGAIN)
                break;
            if (rc < 0) { /* the app's client broke the protocol: say so, as a server would */
                const char *why = ws_strerror(rc);
                send_close(c, ws_err_close_code(rc), why, strlen(why));
                push_event(c->up, "close", ws_err_close_code(rc), why, strlen(why));
                conn_end(c);
                break;
            }
            if (ev.type == WS_SESSION_MESSAGE)
                push_event(c->up, ev.opcode == WS_OP_BINARY ? "binary" : "text", 0, ev.data,
                           ev.len);
            else if (ev.type == WS_SESSION_PING)
                send_frame(c, WS_OP_PONG, ev.data, ev.len);
            else if (ev.type == WS_SESSION_CLOSE) {
                push_event(c->up, "close", ev.code, ev.data, ev.len);
                /* RFC 6455 §5.5.1: echo the code, then the server closes TCP first */
                send_close(c, ev.code == 1005 ? 0 : ev.code, NULL, 0);
                conn_end(c);
            }
        }
        free(buf);
        return;
    }
    if (n)
        ws_mempipe_take(c->pipe, n); /* after the end: dropped */
    if (c->state != UC_DONE && ws_mempipe_ended(c->pipe)) {
        if (c->state == UC_OPEN)
            push_event(c->up, "close", 1006, "", 0);
        c->state = UC_DONE;
    }
}

void kit_upstream_pump(struct kit_engine *e)
{
    for (struct kit_upstream *up = e->upstreams; up; up = up->next)
        for (struct kit_up_conn *c = up->conns; c; c = c->next)
            pump_conn(c);
}

uint64_t kit_upstream_moved(const struct kit_engine *e)
{
    uint64_t n = 0;
    for (const struct kit_upstream *up = e->upstreams; up; up = up->next)
        for (const struct kit_up_conn *c = up->conns; c; c = c->next)
            n += ws_mempipe_moved(c->pipe);
    return n;
}

/* ---- struct ws_client_net ---- */

static int net_open(void *ud, const char *url, const struct ws_transport_ops **tops, void **ts,
                    char *err, size_t errlen)
{
    struct kit_engine *e = ud;
    struct kit_upstream *up = e->upstreams;
    while (up && strcmp(up->url, url) != 0)
        up = up->next;
    if (!up) {
        snprintf(err, errlen, "no stand-in for %s in this test (t:upstream)", url);
        return -1;
    }
    int fd;
    struct ws_mempipe *p = ws_mempipe_new(&fd);
    if (!p) {
        snprintf(err, errlen, "no descriptor left");
        return -1;
    }
    struct kit_up_conn *c = ws_xcalloc(1, sizeof(*c));
    c->up = up;
    c->pipe = p;
    ws_buf_init(&c->head);
    ev_init(&c->timer, on_timer);
    c->next = up->conns;
    up->conns = up->current = c;
    up->nconns++;
    *tops = &ws_transport_memory;
    *ts = p;
    return fd;
}

static void net_attach(void *ud, void *ts, struct ev_loop *loop, ev_io *io)
{
    (void)ud;
    ws_mempipe_attach(ts, loop, io);
}

void kit_upstream_install(struct kit_engine *e, struct lb_app *a)
{
    e->net.open = net_open;
    e->net.attach = net_attach;
    e->net.ud = e;
    a->wsclient_net = &e->net;
}

void kit_upstream_free(struct kit_engine *e)
{
    while (e->upstreams) {
        struct kit_upstream *up = e->upstreams;
        e->upstreams = up->next;
        while (up->conns) {
            struct kit_up_conn *c = up->conns;
            up->conns = c->next;
            if (e->loop)
                ws_timer_stop(e->loop, &c->timer);
            if (c->session_ready)
                ws_session_reset(&c->session);
            ws_buf_reset(&c->head);
            ws_mempipe_release(c->pipe);
            free(c);
        }
        while (up->events) {
            struct kit_up_event *ev = up->events;
            up->events = ev->next;
            free(ev->data);
            free(ev);
        }
        ws_buf_reset(&up->request);
        free(up->url);
        free(up->protocol);
        free(up->body);
        free(up);
    }
}

/* ---- the spec's side ---- */

static struct kit_upstream *check_upstream(lua_State *L, struct kit_engine *e, int idx)
{
    lua_Integer id = luaL_checkinteger(L, idx);
    struct kit_upstream *up = e->upstreams;
    for (lua_Integer i = e->nupstreams; up && i > id; i--)
        up = up->next;
    luaL_argcheck(L, up && id >= 1 && id <= e->nupstreams, idx, "no such upstream");
    return up;
}

static void set_str(char **to, const char *s)
{
    free(*to);
    *to = ws_xstrndup(s, strlen(s));
}

int kit_upstream_add(lua_State *L, struct kit_engine *e)
{
    const char *url = luaL_checkstring(L, 2);
    lua_Integer id = e->nupstreams;
    for (struct kit_upstream *up = e->upstreams; up; up = up->next, id--)
        if (strcmp(up->url, url) == 0) {
            lua_pushinteger(L, id);
            return 1;
        }
    struct kit_upstream *up = ws_xcalloc(1, sizeof(*up));
    up->e = e;
    set_str(&up->url, url);
    set_str(&up->protocol, "");
    set_str(&up->body, "");
    up->status = 101;
    ws_buf_init(&up->request);
    up->next = e->upstreams;
    e->upstreams = up;
    lua_pushinteger(L, ++e->nupstreams);
    return 1;
}

int kit_upstream_answer(lua_State *L, struct kit_engine *e)
{
    struct kit_upstream *up = check_upstream(L, e, 2);
    lua_Integer status = luaL_checkinteger(L, 3);
    luaL_argcheck(L, status == 101 || (status >= 200 && status <= 599), 3,
                  "101 (accept) or a status 200-599");
    const char *s = luaL_optstring(L, 4, "");
    double delay = luaL_optnumber(L, 5, 0);
    luaL_argcheck(L, delay >= 0, 5, "time moves forward only");
    up->status = (int)status;
    set_str(status == 101 ? &up->protocol : &up->body, s);
    up->delay = delay;
    return 0;
}

int kit_upstream_send(lua_State *L, struct kit_engine *e)
{
    struct kit_upstream *up = check_upstream(L, e, 2);
    size_t n;
    const char *s = luaL_checklstring(L, 3, &n);
    bool binary = lua_toboolean(L, 4);
    struct kit_up_conn *c = up->current;
    if (!c || c->state != UC_OPEN || c->close_sent) {
        lua_pushnil(L);
        lua_pushstring(L, "the upstream has no open connection");
        return 2;
    }
    send_frame(c, binary ? WS_OP_BINARY : WS_OP_TEXT, s, n);
    kit_settle(e);
    lua_pushboolean(L, 1);
    return 1;
}

int kit_upstream_close(lua_State *L, struct kit_engine *e, bool drop)
{
    struct kit_upstream *up = check_upstream(L, e, 2);
    struct kit_up_conn *c = up->current;
    if (!c || c->state == UC_DONE) {
        lua_pushnil(L);
        lua_pushstring(L, "the upstream has no open connection");
        return 2;
    }
    if (!drop && c->state == UC_OPEN) {
        /* the app's client echoes it, then this end closes (pump_conn) */
        size_t n = 0;
        lua_Integer code = luaL_optinteger(L, 3, 1000);
        const char *reason = luaL_optlstring(L, 4, "", &n);
        luaL_argcheck(L, ws_close_code_valid((int)code), 3, "a close code that may be sent");
        send_close(c, (int)code, reason, n);
    } else {
        conn_end(c);
    }
    kit_settle(e);
    lua_pushboolean(L, 1);
    return 1;
}

int kit_upstream_next(lua_State *L, struct kit_engine *e)
{
    struct kit_upstream *up = check_upstream(L, e, 2);
    struct kit_up_event *ev = up->events;
    if (!ev)
        return 0;
    up->events = ev->next;
    if (!up->events)
        up->last = NULL;
    lua_createtable(L, 0, 3);
    lua_pushstring(L, ev->kind);
    lua_setfield(L, -2, "kind");
    lua_pushlstring(L, ev->data, ev->len);
    lua_setfield(L, -2, ev->code ? "reason" : "data");
    if (ev->code) {
        lua_pushinteger(L, ev->code);
        lua_setfield(L, -2, "code");
    }
    free(ev->data);
    free(ev);
    return 1;
}

int kit_upstream_state(lua_State *L, struct kit_engine *e)
{
    struct kit_upstream *up = check_upstream(L, e, 2);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, up->nconns);
    lua_setfield(L, -2, "connections");
    lua_pushboolean(L, up->current && up->current->state == UC_OPEN);
    lua_setfield(L, -2, "open");
    if (up->request.len) {
        lua_pushlstring(L, (const char *)up->request.data, up->request.len);
        lua_setfield(L, -2, "request");
    }
    return 1;
}
