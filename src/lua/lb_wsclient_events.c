/* ws.connect's clients on the core's connections (wsclient.c): what the core reports is queued
 * and handed to the app, to a task waiting in ws.connect or cl:receive, or to the event style's
 * callbacks run as tasks one at a time, in order; reconnecting after a jittered back-off; the end
 * a cl:close, a reload or a shutdown brings. No Lua-facing API: lb_wsclient.c has it. */
#include "ws/lb.h"

#include "ws/clock.h"
#include "ws/err.h"
#include "ws/server.h"
#include "ws/wsclient.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

/* One queued event: a message (text or binary), or the open or close of the connection. */
enum item_kind { ITEM_TEXT, ITEM_BINARY, ITEM_OPEN, ITEM_CLOSE };

struct lb_wsclient_item {
    struct lb_wsclient_item *next;
    enum item_kind kind;
    int code; /* ITEM_CLOSE */
    size_t len;
    uint8_t data[];
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
    struct lb_wsclient_item *it = ws_xmalloc(sizeof(*it) + len);
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

struct lb_wsclient_item *lb_wsclient_pop_item(struct lb_wsclient *cl)
{
    struct lb_wsclient_item *it = cl->head;
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
void lb_wsclient_maybe_release(struct lb_wsclient *cl)
{
    if (cl->self_ref == LUA_NOREF || cl->c || ev_is_active(&cl->retry) || cl->head || cl->running ||
        cl->pumping)
        return;
    int ref = cl->self_ref;
    cl->self_ref = LUA_NOREF;
    luaL_unref(cl->a->L, LUA_REGISTRYINDEX, ref);
}

/* Pushes the next queued message (data, kind), or the end (nil, "closed", code, reason), or
 * nothing when neither is there. [-0, +0|+2|+4, m] */
int lb_wsclient_deliver(lua_State *L, struct lb_wsclient *cl)
{
    struct lb_wsclient_item *it = NULL;
    for (struct lb_wsclient_item **p = &cl->head; *p; p = &(*p)->next) {
        if ((*p)->kind == ITEM_TEXT || (*p)->kind == ITEM_BINARY) {
            it = *p;
            break;
        }
    }
    if (it) {
        while (cl->head != it)
            free(lb_wsclient_pop_item(cl));
        lb_wsclient_pop_item(cl);
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
bool lb_wsclient_start(struct lb_wsclient *cl)
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

void lb_wsclient_on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct lb_wsclient *cl = w->data;
    if (cl->app_closed) {
        lb_wsclient_maybe_release(cl);
        return;
    }
    if (!lb_wsclient_start(cl)) {
        /* reported like any failed attempt: the close callback, then a retry if asked */
        struct ws_client_end e = {.err = cl->err};
        on_end(cl, NULL, &e);
        return;
    }
    lb_wsclient_maybe_release(cl);
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
        struct lb_wsclient_item *it = lb_wsclient_pop_item(cl);
        int fn = it->kind == ITEM_OPEN    ? cl->fn_ref[LB_WSCLIENT_FN_OPEN]
                 : it->kind == ITEM_CLOSE ? cl->fn_ref[LB_WSCLIENT_FN_CLOSE]
                                          : cl->fn_ref[LB_WSCLIENT_FN_MESSAGE];
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
    lb_wsclient_maybe_release(cl);
}

/* ---- the end: cl:close, a reload, a shutdown ---- */

/* Ends cl for good: no reconnect; an open connection starts its closing handshake, one still
 * connecting is dropped. */
void lb_wsclient_shut(struct lb_wsclient *cl, int code, const char *reason, size_t len)
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
            lb_wsclient_shut(cl, 1001, "reload", 6);
            lb_wsclient_maybe_release(cl);
        }
        cl = next;
    }
}

void lb_wsclient_shutdown(struct lb_app *a)
{
    for (struct lb_wsclient *cl = a->wsclients; cl;) {
        struct lb_wsclient *next = cl->next;
        lb_wsclient_shut(cl, 1001, "server shutting down", 20);
        lb_wsclient_maybe_release(cl);
        cl = next;
    }
}
