/* Event dispatch: struct ws_app_ops implemented by calling the app's Lua handlers. A handler
 * error closes only its own connection with 1011 (after app.error, if defined, has seen it); an
 * error in upgrade answers 500. */
#include "ws/lb.h"

#include "ws/buf.h"
#include "ws/conn.h"
#include "ws/connlog.h"
#include "ws/err.h"
#include "ws/handshake.h"
#include "ws/log.h"
#include "ws/notify.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* One event for a handler's task. Building a handler's arguments and reading its results
 * allocate Lua memory and may run metamethods, so they run inside the task too: at the heap cap
 * (SPEC §4) an allocation failure fails that call instead of aborting the process from an
 * unprotected context. The event lives on the caller's stack: a task reads it only before its
 * first wait. */
struct event {
    struct lb_app *a;
    struct ws_conn *c;
    const struct ws_http_request *req;
    const uint8_t *data;
    size_t len;
    int code;
    bool binary;
    const char *text;                 /* close reason, shutdown reason, failed handler's name */
    struct ws_upgrade_reply *upgrade; /* upgrade: the decision */
    struct ws_http_reply *http;       /* http: the answer */
    struct ws_buf headers;            /* http: extra header lines being built */
    bool routed;                      /* http: a route matched */
};

/* An event that came while the connection's handler waits (SPEC §4a), its bytes copied. */
struct pending {
    struct pending *next;
    enum lb_handler kind; /* LB_MESSAGE or LB_DRAIN */
    bool binary;
    size_t len;
    uint8_t data[];
};

/* A connection's handlers in order: the task waiting for it and what came meanwhile. Made when
 * one of its handlers first waits (c->app_state), freed with the connection. */
struct connq {
    struct lb_app *a;
    struct ws_conn *c;    /* NULL once the connection is freed */
    struct lb_task *task; /* the handler waiting, or NULL */
    const char *what;     /* its name */
    struct pending *head, *tail;
    size_t bytes;              /* message bytes queued */
    struct decision *decision; /* an upgrade or http handler waiting, or NULL */
};

/* Where an upgrade or http handler that waited builds its answer (SPEC §4a: the 101, the
 * refusal or the route's response goes out when it returns). */
struct decision {
    bool is_http;
    struct ws_upgrade_reply upgrade;
    struct ws_http_reply http;
    struct ws_buf headers; /* http: extra header lines being built */
};

static bool has_handler(struct lb_app *a, enum lb_handler h)
{
    return a->handlers[h] != LUA_NOREF;
}

/* Runs fn with the event as its only (light userdata) argument in task t (or a new one).
 * Pushing a light C function and a light userdata never allocates; a fresh coroutine has
 * LUA_MINSTACK slots. *waiting gets the task when it waits. */
static enum lb_task_result run_in(struct lb_app *a, struct lb_task *t, lua_CFunction fn,
                                  struct event *e, const char *what, bool can_wait,
                                  struct lb_task **waiting)
{
    uint64_t id = e->c ? e->c->node.id : 0;
    if (!t)
        t = lb_task_new(a);
    if (!t) {
        lb_report_error(a, what, id, "not enough memory");
        return LB_TASK_FAILED;
    }
    if (!can_wait)
        t->no_wait = what;
    lua_pushcfunction(t->co, fn);
    lua_pushlightuserdata(t->co, e);
    enum lb_task_result r = lb_task_start(t, 1, what, id);
    if (waiting)
        *waiting = r == LB_TASK_WAITING ? t : NULL;
    return r;
}

static enum lb_task_result run(struct lb_app *a, lua_CFunction fn, struct event *e,
                               const char *what)
{
    return run_in(a, NULL, fn, e, what, true, NULL);
}

/* The continuation of a handler called with lua_callk: it waited and returned. */
static int handler_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)L;
    (void)status;
    (void)ctx;
    return 0;
}

/* app.error(message, conn) [-0, +0, e] */
static int call_error(lua_State *L)
{
    struct event *e = lua_touserdata(L, 1);
    lb_push_ref(L, e->a->handlers[LB_ERROR]);
    lua_pushfstring(L, "%s handler failed: %s", e->text, e->a->last_error);
    lb_conn_push(L, e->c);
    lua_callk(L, 2, 0, 0, handler_done);
    return 0;
}

/* Calls app.error(message, conn) after a connection's handler failed; its own failure is only
 * logged. Then closes the connection with 1011. */
static void handler_failed(struct lb_app *a, struct ws_conn *c, const char *what)
{
    if (has_handler(a, LB_ERROR)) {
        struct event e = {.a = a, .c = c, .text = what};
        run(a, call_error, &e, "error");
    }
    ws_conn_close(c, 1011, "internal error", 14);
}

/* ---- per-connection order (SPEC §4a) ---- */

static void drain_queue(struct connq *q);

/* Message bytes a waiting handler may have queued before its connection stops reading. */
static size_t pending_limit(const struct ws_conn *c)
{
    const struct ws_config *cfg = &c->env->cfg;
    return cfg->max_pending_bytes ? (size_t)cfg->max_pending_bytes
                                  : 2 * (size_t)cfg->max_message_size;
}

static struct connq *queue_of(struct lb_app *a, struct ws_conn *c)
{
    struct connq *q = c->app_state;
    if (!q) {
        q = ws_xcalloc(1, sizeof(*q));
        q->a = a;
        q->c = c;
        c->app_state = q;
    }
    return q;
}

/* True when c's handlers are behind: a new event must queue. */
static bool busy(const struct ws_conn *c)
{
    const struct connq *q = c->app_state;
    return q && (q->task || q->head);
}

static void enqueue(struct lb_app *a, struct ws_conn *c, enum lb_handler kind, const uint8_t *data,
                    size_t len, bool binary)
{
    struct connq *q = queue_of(a, c);
    struct pending *p = ws_xmalloc(sizeof(*p) + len);
    p->next = NULL;
    p->kind = kind;
    p->binary = binary;
    p->len = len;
    if (len)
        memcpy(p->data, data, len);
    if (q->tail)
        q->tail->next = p;
    else
        q->head = p;
    q->tail = p;
    q->bytes += len;
    if (q->bytes > pending_limit(c))
        ws_conn_hold_reading(c, true); /* TCP pushes back on the peer */
}

static void on_conn_task_done(struct lb_app *a, void *ud, bool failed)
{
    struct connq *q = ud;
    q->task = NULL;
    if (failed && q->c)
        handler_failed(a, q->c, q->what);
    drain_queue(q);
}

/* After a connection's handler ran: a failure closes the connection; a wait makes later events
 * queue until it ends. */
static void settle(struct lb_app *a, struct ws_conn *c, enum lb_task_result r, struct lb_task *t,
                   const char *what)
{
    if (r == LB_TASK_FAILED) {
        handler_failed(a, c, what);
    } else if (r == LB_TASK_WAITING) {
        struct connq *q = queue_of(a, c);
        q->task = t;
        q->what = what;
        t->done = on_conn_task_done;
        t->ud = q;
    }
}

/* Runs a connection's handler through fn now. */
static void call_conn(struct lb_app *a, lua_CFunction fn, struct event *e, const char *what)
{
    struct lb_task *t = NULL;
    enum lb_task_result r = run_in(a, NULL, fn, e, what, true, &t);
    settle(a, e->c, r, t, what);
}

/* ---- upgrade: the request as a table ---- */
/* ---- upgrade: the request as a table ---- */

/* Pushes req as the table upgrade() and http routes receive. [-0, +1, m] */
static void push_request(lua_State *L, struct ws_conn *c, const struct ws_http_request *req)
{
    lua_createtable(L, 0, 10);
    lua_pushlstring(L, req->method.p, req->method.n);
    lua_setfield(L, -2, "method");
    const char *q = memchr(req->target.p, '?', req->target.n);
    size_t path_len = q ? (size_t)(q - req->target.p) : req->target.n;
    lua_pushlstring(L, req->target.p, path_len);
    lua_setfield(L, -2, "path");
    lua_pushlstring(L, req->target.p, req->target.n);
    lua_setfield(L, -2, "target");
    if (q) {
        const char *qs = q + 1;
        size_t qn = req->target.n - path_len - 1;
        lb_push_pairs(L, qs, qn, '&', true);
        lua_setfield(L, -2, "query");
        lua_pushlstring(L, qs, qn);
        lua_setfield(L, -2, "query_string");
    } else {
        lua_newtable(L);
        lua_setfield(L, -2, "query");
    }
    /* headers: names lower-cased, repeated fields joined with ", " (RFC 9110 §5.3) */
    lua_newtable(L);
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct ws_http_header *h = &req->headers[i];
        char name[256];
        size_t n = h->name.n < sizeof(name) ? h->name.n : sizeof(name) - 1;
        for (size_t k = 0; k < n; k++)
            name[k] = (char)((h->name.p[k] >= 'A' && h->name.p[k] <= 'Z') ? h->name.p[k] + 32
                                                                          : h->name.p[k]);
        lua_pushlstring(L, name, n);
        if (lua_rawget(L, -2) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h->value.p, h->value.n);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, h->value.p, h->value.n);
        }
        lua_pushlstring(L, name, n);
        lua_insert(L, -2);
        lua_rawset(L, -3);
    }
    lua_getfield(L, -1, "origin");
    lua_setfield(L, -3, "origin");
    lua_getfield(L, -1, "cookie");
    size_t clen = 0;
    const char *cookie = lua_tolstring(L, -1, &clen);
    lb_push_pairs(L, cookie ? cookie : "", cookie ? clen : 0, ';', false);
    lua_setfield(L, -4, "cookies");
    lua_pop(L, 1);
    lua_setfield(L, -2, "headers");
    /* offered subprotocols, in the client's order */
    lua_newtable(L);
    lua_Integer np = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (!ws_span_ieq(req->headers[i].name, "sec-websocket-protocol"))
            continue;
        struct ws_span list = req->headers[i].value, tok;
        while (ws_http_next_token(&list, &tok)) {
            lua_pushlstring(L, tok.p, tok.n);
            lua_rawseti(L, -2, ++np);
        }
    }
    lua_setfield(L, -2, "protocols");
    char peer[64];
    lua_pushstring(L, ws_connlog_peer(c, peer, sizeof(peer)));
    lua_setfield(L, -2, "peer");
    if (req->body.p) {
        lua_pushlstring(L, req->body.p, req->body.n);
        lua_setfield(L, -2, "body");
    }
}

static char *dup_string(lua_State *L, int idx, size_t *len)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (len)
        *len = n;
    return s ? ws_xstrndup(s, n) : NULL; /* bodies may hold NUL bytes */
}

/* Reads a headers table at idx into CRLF-terminated lines in out (NUL-terminated), taking
 * Content-Type aside into *content_type when that is not NULL. Names with CR, LF or ':' and
 * values with CR or LF are skipped, so an app cannot inject header lines. [-0, +0, m] */
static void collect_headers(lua_State *L, int idx, struct ws_buf *out, char **content_type)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t kn = 0, vn = 0;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kn) : NULL;
        const char *v = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER
                            ? lua_tolstring(L, -1, &vn)
                            : NULL;
        bool clean = k && v && kn && !memchr(k, '\r', kn) && !memchr(k, '\n', kn) &&
                     !memchr(k, ':', kn) && !memchr(v, '\r', vn) && !memchr(v, '\n', vn);
        if (clean && content_type && strcasecmp(k, "content-type") == 0) {
            free(*content_type);
            *content_type = strndup(v, vn);
        } else if (clean) {
            ws_buf_append(out, k, kn);
            ws_buf_append(out, ": ", 2);
            ws_buf_append(out, v, vn);
            ws_buf_append(out, "\r\n", 2);
        }
        lua_pop(L, 1);
    }
    ws_buf_append(out, "", 1);
}

/* The connection whose upgrade or http handler the running task is, once it has waited (its
 * caller has returned: the answer is built in the connection's decision). */
static struct connq *waited(lua_State *L)
{
    return lb_app_of(L)->current->ud;
}

/* Reads upgrade's results (false, status, body, headers | {protocol =, data =}) at 2..5 into
 * reply. [-0, +0, e] */
static void upgrade_results(lua_State *L, struct ws_conn *c, struct ws_upgrade_reply *reply)
{
    if (lua_istable(L, 2)) {
        /* accept with {protocol = ..., data = ...} */
        lua_getfield(L, 2, "protocol");
        if (lua_type(L, -1) == LUA_TSTRING)
            reply->protocol = dup_string(L, -1, NULL);
        lua_pop(L, 1);
        lua_getfield(L, 2, "data");
        if (!lua_isnil(L, -1)) {
            lb_conn_push(L, c);
            lua_pushvalue(L, -2);
            lua_setfield(L, -2, "data");
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    } else if (lua_toboolean(L, 2) == 0 && !lua_isnil(L, 2)) {
        /* refuse: false, status, body */
        int isnum;
        lua_Integer status = lua_tointegerx(L, 3, &isnum); /* 401 and 401.0 alike */
        if (!isnum)
            status = 403;
        reply->status = status >= 400 && status <= 599 ? (int)status : 403;
        if (lua_type(L, 4) == LUA_TSTRING)
            reply->body = dup_string(L, 4, &reply->body_len);
        if (lua_istable(L, 5)) {
            /* e.g. WWW-Authenticate with a 401, Retry-After with a 503 */
            struct ws_buf h;
            ws_buf_init(&h);
            collect_headers(L, 5, &h, NULL);
            reply->headers = (char *)h.data;
        }
    }
}

/* upgrade(req) returned after waiting. [-0, +0, e] */
static int upgrade_returned(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    struct connq *q = waited(L);
    upgrade_results(L, q->c, &q->decision->upgrade);
    return 0;
}

/* upgrade(req) [-0, +0, e] */
static int call_upgrade(lua_State *L)
{
    struct event *e = lua_touserdata(L, 1);
    lb_push_ref(L, e->a->handlers[LB_UPGRADE]);
    push_request(L, e->c, e->req);
    lua_callk(L, 1, 4, 0, upgrade_returned);
    upgrade_results(L, e->c, e->upgrade);
    return 0;
}

/* Frees what an upgrade reply owns and empties it. */
static void clear_upgrade(struct ws_upgrade_reply *reply)
{
    free(reply->body);
    free(reply->headers);
    free(reply->protocol);
    memset(reply, 0, sizeof(*reply));
}

/* Frees what a route's reply (and its header lines being built) owns and empties it. */
static void clear_http(struct ws_http_reply *reply, struct ws_buf *headers)
{
    ws_buf_reset(headers);
    free(reply->body);
    free(reply->content_type);
    memset(reply, 0, sizeof(*reply));
}

static void fail_upgrade(struct ws_upgrade_reply *reply)
{
    clear_upgrade(reply);
    reply->status = 500;
}

static void fail_http(struct ws_http_reply *reply, struct ws_buf *headers)
{
    clear_http(reply, headers);
    reply->status = 500;
    reply->body = strdup("internal error\n");
    reply->body_len = strlen(reply->body);
}

/* An upgrade or http handler that waited returned (or raised): its answer goes out. */
static void on_decision_done(struct lb_app *a, void *ud, bool failed)
{
    struct connq *q = ud;
    struct decision *d = q->decision;
    q->decision = NULL;
    q->task = NULL;
    if (d->is_http) {
        if (failed)
            fail_http(&d->http, &d->headers);
        else
            d->http.headers = (char *)d->headers.data;
        ws_conn_http_answered(q->c, &d->http);
    } else {
        if (failed)
            fail_upgrade(&d->upgrade);
        ws_conn_upgrade_decided(q->c, &d->upgrade);
    }
    free(d);
    drain_queue(q); /* open may have begun waiting; a held connection is let go */
    (void)a;
}

/* An upgrade or http handler t waits: its connection's request waits for it. */
static struct decision *defer(struct lb_app *a, struct ws_conn *c, struct lb_task *t,
                              const char *what)
{
    struct connq *q = queue_of(a, c);
    struct decision *d = ws_xcalloc(1, sizeof(*d));
    ws_buf_init(&d->headers);
    q->decision = d;
    q->task = t;
    q->what = what;
    t->done = on_decision_done;
    t->ud = q;
    return d;
}

static void on_upgrade(void *app, struct ws_conn *c, const struct ws_http_request *req,
                       struct ws_upgrade_reply *reply)
{
    struct lb_app *a = app;
    if (!has_handler(a, LB_UPGRADE))
        return;
    struct event e = {.a = a, .c = c, .req = req, .upgrade = reply};
    struct lb_task *t = NULL;
    enum lb_task_result r = run_in(a, NULL, call_upgrade, &e, "upgrade", true, &t);
    if (r == LB_TASK_WAITING) {
        defer(a, c, t, "upgrade");
        reply->pending = true;
    } else if (r == LB_TASK_FAILED) {
        fail_upgrade(reply);
    }
}

/* open(conn) [-0, +0, e] */
static int call_open(lua_State *L)
{
    struct event *e = lua_touserdata(L, 1);
    lb_push_ref(L, e->a->handlers[LB_OPEN]);
    lb_conn_push(L, e->c);
    lua_callk(L, 1, 0, 0, handler_done);
    return 0;
}

static void on_open(void *app, struct ws_conn *c)
{
    struct lb_app *a = app;
    if (!has_handler(a, LB_OPEN))
        return;
    struct event e = {.a = a, .c = c};
    call_conn(a, call_open, &e, "open");
}

/* message(conn, data, kind) [-0, +0, e] */
/* Pushes message(conn, data, kind)'s last two arguments. [-0, +2, m] */
/* co_task: L is a pooled task's coroutine at its top level, whose stack's base holds the kinds
 * (else they come from the registry); made once either way, no hashing per message. */
static void push_message(lua_State *L, const uint8_t *data, size_t len, bool binary, bool co_task)
{
    lua_pushlstring(L, (const char *)data, len);
    if (co_task)
        lua_pushvalue(L, binary ? LB_TASK_BINARY : LB_TASK_TEXT);
    else
        lb_push_ref(L, lb_app_of(L)->kind_refs[binary]);
}

static int call_message(lua_State *L)
{
    struct event *e = lua_touserdata(L, 1);
    lb_push_ref(L, e->a->handlers[LB_MESSAGE]);
    lb_conn_push(L, e->c);
    push_message(L, e->data, e->len, e->binary, false);
    lua_callk(L, 3, 0, 0, handler_done);
    return 0;
}

/* Runs message(conn, data, kind) for c now. */
static void dispatch_message(struct lb_app *a, struct ws_conn *c, const uint8_t *data, size_t len,
                             bool binary, const char *gone)
{
    struct lb_task *t = lb_task_new(a);
    if (!t) {
        lb_report_error(a, "message", c->node.id, "not enough memory");
        handler_failed(a, c, "message");
        return;
    }
    t->gone = gone;
    lua_State *co = t->co;
    /* Fast path, the steady state: the conn userdata exists and the heap has room for the
     * message, so the pushes below cannot raise outside a protected call (a coroutine of the
     * pool holds only its LB_TASK_BASE values, with room for LUA_MINSTACK more). */
    if (a->mem < a->mem_limit && a->mem_limit - a->mem > len + 4096) {
        lb_push_ref(co, a->handlers[LB_MESSAGE]);
        if (lb_conn_push_existing(co, c, true)) {
            push_message(co, data, len, binary, true);
            enum lb_task_result r = lb_task_start(t, 3, "message", c->node.id);
            settle(a, c, r, t, "message");
            return;
        }
        lua_settop(co, LB_TASK_BASE);
    }
    struct event e = {.a = a, .c = c, .data = data, .len = len, .binary = binary};
    struct lb_task *waiting = NULL;
    enum lb_task_result r = run_in(a, t, call_message, &e, "message", true, &waiting);
    settle(a, c, r, waiting, "message");
}

static void on_message(void *app, struct ws_conn *c, const uint8_t *data, size_t len, bool binary)
{
    struct lb_app *a = app;
    if (!has_handler(a, LB_MESSAGE))
        return;
    if (busy(c)) /* SPEC §4a: after the handler that waits, in arrival order */
        enqueue(a, c, LB_MESSAGE, data, len, binary);
    else
        dispatch_message(a, c, data, len, binary, NULL);
}

/* close(conn, code, reason) [-0, +0, e] */
static int call_close(lua_State *L)
{
    struct event *e = lua_touserdata(L, 1);
    lb_push_ref(L, e->a->handlers[LB_CLOSE]);
    lb_conn_push(L, e->c);
    lua_pushinteger(L, e->code);
    lua_pushlstring(L, (const char *)e->data, e->len);
    lua_callk(L, 3, 0, 0, handler_done);
    return 0;
}

static void on_close(void *app, struct ws_conn *c, int code, const uint8_t *reason, size_t len)
{
    struct lb_app *a = app;
    if (!has_handler(a, LB_CLOSE))
        return;
    struct event e = {.a = a, .c = c, .code = code, .data = reason, .len = len};
    /* close may wait: the connection is freed meanwhile and its handle goes stale */
    run(a, call_close, &e, "close");
}

/* drain(conn) [-0, +0, e] */
static int call_drain(lua_State *L)
{
    struct event *e = lua_touserdata(L, 1);
    lb_push_ref(L, e->a->handlers[LB_DRAIN]);
    lb_conn_push(L, e->c);
    lua_callk(L, 1, 0, 0, handler_done);
    return 0;
}

static void on_drain(void *app, struct ws_conn *c)
{
    struct lb_app *a = app;
    if (!has_handler(a, LB_DRAIN))
        return;
    if (busy(c)) {
        enqueue(a, c, LB_DRAIN, NULL, 0, false);
        return;
    }
    struct event e = {.a = a, .c = c};
    call_conn(a, call_drain, &e, "drain");
}

/* Runs the events that queued behind q's waiting handler, in order, until one of them waits.
 * Once nothing is left, a connection held since it closed is let go: its close comes next. */
static void drain_queue(struct connq *q)
{
    struct lb_app *a = q->a;
    while (!q->task && q->head && q->c) {
        struct ws_conn *c = q->c;
        struct pending *p = q->head;
        q->head = p->next;
        if (!q->head)
            q->tail = NULL;
        q->bytes -= p->len;
        if (c->wire.reading_held && q->bytes <= pending_limit(c) / 2)
            ws_conn_hold_reading(c, false);
        /* a connection that closed meanwhile: its handlers still run, in order, but cannot
         * wait any more (a shutdown lets them: it waits for handlers) */
        const char *gone = c->held && !c->env->draining ? "closed" : NULL;
        if (p->kind == LB_MESSAGE && has_handler(a, LB_MESSAGE)) {
            dispatch_message(a, c, p->data, p->len, p->binary, gone);
        } else if (p->kind == LB_DRAIN && has_handler(a, LB_DRAIN)) {
            struct event e = {.a = a, .c = c};
            struct lb_task *t = lb_task_new(a);
            if (t)
                t->gone = gone;
            struct lb_task *waiting = NULL;
            enum lb_task_result r = run_in(a, t, call_drain, &e, "drain", true, &waiting);
            settle(a, c, r, waiting, "drain");
        }
        free(p);
    }
    if (!q->task && !q->head && q->c && q->c->held)
        ws_conn_unhold(q->c);
}

/* The core is about to report c's close and free it: while one of its handlers waits, or
 * events are queued behind one, c is kept and that handler's wait ends with nil, "closed"
 * (during a graceful shutdown it may finish its wait: the shutdown waits for it). */
static bool on_hold(void *app, struct ws_conn *c)
{
    struct lb_app *a = app;
    struct connq *q = c->app_state;
    if (!q || (!q->task && !q->head))
        return false;
    if (q->task && !c->env->draining)
        lb_task_cancel(q->task, "closed");
    (void)a;
    return true;
}

static bool on_busy(void *app)
{
    return ((struct lb_app *)app)->nwaiting > 0;
}

static void on_cancel(void *app, const char *reason)
{
    lb_task_cancel_all(app, reason);
    lb_wsclient_shutdown(app);
}

/* Reads a route's results (status, body, headers: the top three, its key below them) into
 * reply. [-0, +0, e] */
static void http_results(lua_State *L, struct ws_http_reply *reply, struct ws_buf *headers)
{
    int key = lua_gettop(L) - 3;
    int isnum = 0;
    lua_Integer status = lua_type(L, -3) == LUA_TNUMBER ? lua_tointegerx(L, -3, &isnum) : 0;
    if (!isnum || status < 100 || status > 599)
        luaL_error(L, "http route \"%s\" must return a status number from 100 to 599, got %s",
                   lua_tostring(L, key),
                   lua_type(L, -3) == LUA_TNUMBER ? luaL_tolstring(L, -3, NULL)
                                                  : luaL_typename(L, -3));
    if (!lua_isnil(L, -2) && lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "http route \"%s\" must return a string body (or nil), got %s",
                   lua_tostring(L, key), luaL_typename(L, -2));
    if (!lua_isnil(L, -1) && !lua_istable(L, -1))
        luaL_error(L, "http route \"%s\" must return a headers table (or nil), got %s",
                   lua_tostring(L, key), luaL_typename(L, -1));
    reply->status = (int)status;
    if (lua_type(L, -2) == LUA_TSTRING)
        reply->body = dup_string(L, -2, &reply->body_len);
    if (lua_istable(L, -1))
        collect_headers(L, lua_gettop(L), headers, &reply->content_type);
}

/* A route returned after waiting. [-0, +0, e] */
static int http_returned(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    struct decision *d = waited(L)->decision;
    http_results(L, &d->http, &d->headers);
    return 0;
}

/* app.http["METHOD /path"](req) -> status, body, headers. The lookup is an ordinary (not raw)
 * index, so a routes table with an __index metamethod can dispatch. A status that is not a whole
 * number from 100 to 599, a body that is not a string (or nil) and headers that are not a table
 * (or nil) are the route's bug: raised here, so they are logged as its error and answered 500.
 * [-0, +0, e] */
static int call_http(lua_State *L)
{
    struct event *e = lua_touserdata(L, 1);
    struct lb_app *a = e->a;
    const struct ws_http_request *req = e->req;
    const char *q = memchr(req->target.p, '?', req->target.n);
    size_t path_len = q ? (size_t)(q - req->target.p) : req->target.n;
    lb_push_ref(L, a->http_ref);
    bool head = ws_span_ieq(req->method, "HEAD");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, head ? "GET" : req->method.p, head ? 3 : req->method.n);
    luaL_addchar(&b, ' ');
    luaL_addlstring(&b, req->target.p, path_len);
    luaL_pushresult(&b);
    int key = lua_gettop(L);
    lua_pushvalue(L, key);
    if (lua_gettable(L, key - 1) != LUA_TFUNCTION)
        return 0;
    e->routed = true;
    push_request(L, e->c, req);
    lua_callk(L, 1, 3, 0, http_returned);
    http_results(L, e->http, &e->headers);
    return 0;
}

static bool on_http(void *app, struct ws_conn *c, const struct ws_http_request *req,
                    struct ws_http_reply *reply)
{
    struct lb_app *a = app;
    if (a->http_ref == LUA_NOREF)
        return false;
    struct event e = {.a = a, .c = c, .req = req, .http = reply};
    ws_buf_init(&e.headers);
    struct lb_task *t = NULL;
    enum lb_task_result r = run_in(a, NULL, call_http, &e, "http", true, &t);
    if (r == LB_TASK_WAITING) {
        defer(a, c, t, "http")->is_http = true;
        reply->pending = true;
        return true;
    }
    if (r == LB_TASK_FAILED) {
        /* the route (or a routing metamethod) failed */
        fail_http(reply, &e.headers);
        return true;
    }
    reply->headers = (char *)e.headers.data;
    return e.routed;
}

/* shutdown(reason) [-0, +0, e] */
static int call_shutdown(lua_State *L)
{
    struct event *e = lua_touserdata(L, 1);
    lb_push_ref(L, e->a->handlers[LB_SHUTDOWN]);
    lua_pushstring(L, e->text);
    lua_callk(L, 1, 0, 0, handler_done);
    return 0;
}

static void on_shutdown(void *app, const char *reason)
{
    struct lb_app *a = app;
    ws_notify_stopping(); /* whatever began it: a signal or ws.shutdown() */
    if (!has_handler(a, LB_SHUTDOWN))
        return;
    struct event e = {.a = a, .text = reason};
    run(a, call_shutdown, &e, "shutdown");
}

static void on_reload(void *app)
{
    struct lb_app *a = app;
    lb_app_reload(a, "SIGHUP");
    a->srv->reload_error[0] = 0;
}

static size_t memory(void *app)
{
    return ((struct lb_app *)app)->mem;
}

static bool serves_http(void *app)
{
    return ((struct lb_app *)app)->http_ref != LUA_NOREF;
}

static void on_release(void *app, struct ws_conn *c)
{
    struct connq *q = c->app_state;
    if (q) {
        /* only when the server is being freed can a handler still wait here: it never
         * resumes */
        if (q->task) {
            q->task->done = NULL;
            q->task->ud = NULL;
        }
        if (q->decision) {
            clear_upgrade(&q->decision->upgrade);
            clear_http(&q->decision->http, &q->decision->headers);
            free(q->decision);
        }
        while (q->head) {
            struct pending *p = q->head;
            q->head = p->next;
            free(p);
        }
        free(q);
        c->app_state = NULL;
    }
    lb_conn_release(app, c);
}

const struct ws_app_ops lb_app_ops = {
    .upgrade = on_upgrade,
    .open = on_open,
    .message = on_message,
    .close = on_close,
    .drain = on_drain,
    .http = on_http,
    .serves_http = serves_http,
    .memory = memory,
    .shutdown = on_shutdown,
    .reload = on_reload,
    .release = on_release,
    .hold = on_hold,
    .busy = on_busy,
    .cancel = on_cancel,
};
