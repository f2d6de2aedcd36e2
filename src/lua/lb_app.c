/* Event dispatch: struct ws_app_ops implemented by calling the app's Lua handlers, each event
 * run as a task, a connection's events kept in order behind a handler that waits. A handler
 * error closes only its own connection with 1011 (after app.error, if defined, has seen it); an
 * error in upgrade answers 500. The Lua side of upgrade and the http routes is lb_front's. */
#include "ws/lb.h"

#include "ws/buf.h"
#include "ws/conn.h"
#include "ws/notify.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

/* An event that came while the connection's handler waits (SPEC §4a), its bytes copied. */
struct lb_pending {
    struct lb_pending *next;
    enum lb_handler kind; /* LB_MESSAGE or LB_DRAIN */
    bool binary;
    size_t len;
    uint8_t data[];
};

static bool has_handler(struct lb_app *a, enum lb_handler h)
{
    return a->handlers[h] != LUA_NOREF;
}

/* Runs fn with the event as its only (light userdata) argument in task t (or a new one).
 * Pushing a light C function and a light userdata never allocates; a fresh coroutine has
 * LUA_MINSTACK slots. *waiting gets the task when it waits. */
static enum lb_task_result run_in(struct lb_app *a, struct lb_task *t, lua_CFunction fn,
                                  struct lb_event *e, const char *what, bool can_wait,
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

static enum lb_task_result run(struct lb_app *a, lua_CFunction fn, struct lb_event *e,
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
    struct lb_event *e = lua_touserdata(L, 1);
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
        struct lb_event e = {.a = a, .c = c, .text = what};
        run(a, call_error, &e, "error");
    }
    ws_conn_close(c, 1011, "internal error", 14);
}

/* ---- per-connection order (SPEC §4a) ---- */

static void drain_queue(struct lb_connq *q);

/* Message bytes a waiting handler may have queued before its connection stops reading. */
static size_t pending_limit(const struct ws_conn *c)
{
    const struct ws_config *cfg = &c->env->cfg;
    return cfg->max_pending_bytes ? (size_t)cfg->max_pending_bytes
                                  : 2 * (size_t)cfg->max_message_size;
}

static struct lb_connq *queue_of(struct lb_app *a, struct ws_conn *c)
{
    struct lb_connq *q = c->app_state;
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
    const struct lb_connq *q = c->app_state;
    return q && (q->task || q->head);
}

static void enqueue(struct lb_app *a, struct ws_conn *c, enum lb_handler kind, const uint8_t *data,
                    size_t len, bool binary)
{
    struct lb_connq *q = queue_of(a, c);
    struct lb_pending *p = ws_xmalloc(sizeof(*p) + len);
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
    struct lb_connq *q = ud;
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
        struct lb_connq *q = queue_of(a, c);
        q->task = t;
        q->what = what;
        t->done = on_conn_task_done;
        t->ud = q;
    }
}

/* Runs a connection's handler through fn now. */
static void call_conn(struct lb_app *a, lua_CFunction fn, struct lb_event *e, const char *what)
{
    struct lb_task *t = NULL;
    enum lb_task_result r = run_in(a, NULL, fn, e, what, true, &t);
    settle(a, e->c, r, t, what);
}

/* ---- upgrade and http: answers that wait ---- */

/* An upgrade or http handler that waited returned (or raised): its answer goes out. */
static void on_decision_done(struct lb_app *a, void *ud, bool failed)
{
    struct lb_connq *q = ud;
    struct lb_decision *d = q->decision;
    q->decision = NULL;
    q->task = NULL;
    if (d->is_http) {
        if (failed)
            lb_front_fail_http(&d->http, &d->headers);
        else
            d->http.headers = (char *)d->headers.data;
        ws_conn_http_answered(q->c, &d->http);
    } else {
        if (failed)
            lb_front_fail_upgrade(&d->upgrade);
        ws_conn_upgrade_decided(q->c, &d->upgrade);
    }
    free(d);
    drain_queue(q); /* open may have begun waiting; a held connection is let go */
    (void)a;
}

/* An upgrade or http handler t waits: its connection's request waits for it. */
static struct lb_decision *defer(struct lb_app *a, struct ws_conn *c, struct lb_task *t,
                                 const char *what)
{
    struct lb_connq *q = queue_of(a, c);
    struct lb_decision *d = ws_xcalloc(1, sizeof(*d));
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
    struct lb_event e = {.a = a, .c = c, .req = req, .upgrade = reply};
    struct lb_task *t = NULL;
    enum lb_task_result r = run_in(a, NULL, lb_front_call_upgrade, &e, "upgrade", true, &t);
    if (r == LB_TASK_WAITING) {
        defer(a, c, t, "upgrade");
        reply->pending = true;
    } else if (r == LB_TASK_FAILED) {
        lb_front_fail_upgrade(reply);
    }
}

/* open(conn) [-0, +0, e] */
static int call_open(lua_State *L)
{
    struct lb_event *e = lua_touserdata(L, 1);
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
    struct lb_event e = {.a = a, .c = c};
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
    struct lb_event *e = lua_touserdata(L, 1);
    lb_push_ref(L, e->a->handlers[LB_MESSAGE]);
    lb_conn_push(L, e->c);
    push_message(L, e->data, e->len, e->binary, false);
    lua_callk(L, 3, 0, 0, handler_done);
    return 0;
}

/* A pooled task's function for a read's messages: message(conn, data, kind), then each further
 * message of the same read the core hands over (ws_conn_next_message), in one resume, each call
 * a run with a budget of its own. The first that waits ends it: the messages after it come
 * through on_message and queue behind it. Arguments: c (light), the handler, conn, and the
 * first call (handler, conn, data, kind). [-0, +0, e] */
static int run_messages(lua_State *L)
{
    struct ws_conn *c = lua_touserdata(L, 1);
    struct lb_app *a = lb_app_of(L);
    struct lb_task *t = a->current;
    for (;;) {
        lua_callk(L, 3, 0, 0, handler_done);
        struct ws_message m;
        if (t->generation != a->generation || busy(c) || !ws_conn_next_message(c, &m))
            return 0;
        lb_budget_next(a, L, &t->run);
        lua_pushvalue(L, 2);
        lua_pushvalue(L, 3);
        push_message(L, m.data, m.len, m.binary, false);
    }
}

/* Runs message(conn, data, kind) for c now, and the messages that follow it in the same read. */
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
        /* more messages may follow in this read: run them in this resume (run_messages) */
        bool more = ws_conn_reading_more(c);
        int nargs = 3;
        if (more) {
            lua_pushcfunction(co, run_messages);
            lua_pushlightuserdata(co, c);
            nargs = 7;
        }
        lua_pushvalue(co, LB_TASK_MESSAGE);
        if (lb_conn_push_existing(co, c, true)) {
            if (more) {
                lua_pushvalue(co, -2);
                lua_pushvalue(co, -2);
            }
            push_message(co, data, len, binary, true);
            enum lb_task_result r = lb_task_start(t, nargs, "message", c->node.id);
            settle(a, c, r, t, "message");
            return;
        }
        lua_settop(co, LB_TASK_BASE);
    }
    struct lb_event e = {.a = a, .c = c, .data = data, .len = len, .binary = binary};
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
    struct lb_event *e = lua_touserdata(L, 1);
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
    struct lb_event e = {.a = a, .c = c, .code = code, .data = reason, .len = len};
    /* close may wait: the connection is freed meanwhile and its handle goes stale */
    run(a, call_close, &e, "close");
}

/* drain(conn) [-0, +0, e] */
static int call_drain(lua_State *L)
{
    struct lb_event *e = lua_touserdata(L, 1);
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
    struct lb_event e = {.a = a, .c = c};
    call_conn(a, call_drain, &e, "drain");
}

/* Runs the events that queued behind q's waiting handler, in order, until one of them waits.
 * Once nothing is left, a connection held since it closed is let go: its close comes next. */
static void drain_queue(struct lb_connq *q)
{
    struct lb_app *a = q->a;
    while (!q->task && q->head && q->c) {
        struct ws_conn *c = q->c;
        struct lb_pending *p = q->head;
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
            struct lb_event e = {.a = a, .c = c};
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
    struct lb_connq *q = c->app_state;
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

static bool on_http(void *app, struct ws_conn *c, const struct ws_http_request *req,
                    struct ws_http_reply *reply)
{
    struct lb_app *a = app;
    if (a->http_ref == LUA_NOREF)
        return false;
    struct lb_event e = {.a = a, .c = c, .req = req, .http = reply};
    ws_buf_init(&e.headers);
    struct lb_task *t = NULL;
    enum lb_task_result r = run_in(a, NULL, lb_front_call_http, &e, "http", true, &t);
    if (r == LB_TASK_WAITING) {
        defer(a, c, t, "http")->is_http = true;
        reply->pending = true;
        return true;
    }
    if (r == LB_TASK_FAILED) {
        /* the route (or a routing metamethod) failed */
        lb_front_fail_http(reply, &e.headers);
        return true;
    }
    reply->headers = (char *)e.headers.data;
    return e.routed;
}

/* shutdown(reason) [-0, +0, e] */
static int call_shutdown(lua_State *L)
{
    struct lb_event *e = lua_touserdata(L, 1);
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
    struct lb_event e = {.a = a, .text = reason};
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
    struct lb_connq *q = c->app_state;
    if (q) {
        /* only when the server is being freed can a handler still wait here: it never
         * resumes */
        if (q->task) {
            q->task->done = NULL;
            q->task->ud = NULL;
        }
        lb_decision_free(q->decision);
        while (q->head) {
            struct lb_pending *p = q->head;
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
