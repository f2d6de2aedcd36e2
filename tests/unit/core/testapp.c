/* The C test app: a struct ws_app_ops that records every event the core reports into a log the
 * tests read, and behaves as a test programs it. No loop, no sockets: the kit (testkit.c) drives
 * the core that calls it. */
#include "testapp.h"

#include "ws/buf.h"
#include "ws/frame.h"
#include "ws/http.h"
#include "ws/topics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct testapp_event *record(struct testapp *a, enum testapp_kind kind, struct ws_conn *c)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->ev = ws_xrealloc(a->ev, a->cap * sizeof(*a->ev));
    }
    struct testapp_event *e = &a->ev[a->n++];
    memset(e, 0, sizeof(*e));
    e->kind = kind;
    if (c) {
        e->conn = c->node.id;
        e->state = c->state;
        e->ntopics = ws_subscriber_count(&c->sub);
    }
    return e;
}

static void set_data(struct testapp_event *e, const void *p, size_t n)
{
    e->data = ws_xmalloc(n + 1);
    if (n)
        memcpy(e->data, p, n);
    e->data[n] = 0;
    e->len = n;
}

static char *dup_str(const char *s)
{
    return s ? ws_xstrndup(s, strlen(s)) : NULL;
}

static void on_upgrade(void *app, struct ws_conn *c, const struct ws_http_request *req,
                       struct ws_upgrade_reply *reply)
{
    struct testapp *a = app;
    struct testapp_event *e = record(a, TA_UPGRADE, c);
    set_data(e, req->target.p, req->target.n);
    struct ws_buf offered;
    ws_buf_init(&offered);
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct ws_http_header *h = &req->headers[i];
        if (!ws_span_ieq(h->name, "Sec-WebSocket-Protocol"))
            continue;
        if (offered.len)
            ws_buf_append(&offered, ", ", 2);
        ws_buf_append(&offered, h->value.p, h->value.n);
    }
    if (offered.len) {
        e->protocols = ws_xstrndup((const char *)offered.data, offered.len);
    }
    ws_buf_reset(&offered);
    if (a->act.defer) {
        reply->pending = true;
        return;
    }
    if (a->act.refuse_status) {
        reply->status = a->act.refuse_status;
        reply->body = dup_str(a->act.refuse_body);
        reply->body_len = a->act.refuse_body ? strlen(a->act.refuse_body) : 0;
    }
    reply->protocol = dup_str(a->act.protocol);
}

static void app_send(struct testapp *a, struct ws_conn *c, uint8_t op, const void *p, size_t n)
{
    a->last_send = ws_conn_send(c, op, p, n);
}

static void on_open(void *app, struct ws_conn *c)
{
    struct testapp *a = app;
    record(a, TA_OPEN, c);
    if (a->act.subscribe)
        ws_topics_subscribe(&c->env->topics, &c->sub, a->act.subscribe, strlen(a->act.subscribe));
    for (size_t i = 0; i < a->act.send_on_open; i++) {
        char m[32];
        int n = snprintf(m, sizeof(m), "m%zu", i);
        app_send(a, c, WS_OP_TEXT, m, (size_t)n);
    }
    if (a->act.close_on_open)
        ws_conn_close(c, a->act.close_on_open, "bye", 3);
}

static void take_message(struct testapp *a, struct ws_conn *c, const struct ws_message *m,
                         bool pulled)
{
    struct testapp_event *e = record(a, TA_MESSAGE, c);
    set_data(e, m->data, m->len);
    e->binary = m->binary;
    e->pulled = pulled;
    e->more = ws_conn_reading_more(c);
    if (a->act.echo)
        app_send(a, c, m->binary ? WS_OP_BINARY : WS_OP_TEXT, m->data, m->len);
}

static void on_message(void *app, struct ws_conn *c, const uint8_t *data, size_t len, bool binary)
{
    struct testapp *a = app;
    struct ws_message m = {.data = data, .len = len, .binary = binary};
    take_message(a, c, &m, false);
    while (a->act.pull && ws_conn_next_message(c, &m))
        take_message(a, c, &m, true);
    for (size_t i = 0; i < a->act.broadcast; i++)
        ws_server_broadcast(a->srv, binary ? WS_OP_BINARY : WS_OP_TEXT, data, len, c->node.id, NULL,
                            NULL);
    if (a->act.abort_on_message)
        ws_conn_abort(c, a->act.close_on_message, "aborted by the app");
    else if (a->act.close_on_message)
        ws_conn_close(c, a->act.close_on_message, "closed by the app", 17);
}

static void on_close(void *app, struct ws_conn *c, int code, const uint8_t *reason, size_t len)
{
    struct testapp_event *e = record(app, TA_CLOSE, c);
    e->code = code;
    set_data(e, reason, len);
}

static void on_drain(void *app, struct ws_conn *c)
{
    record(app, TA_DRAIN, c);
}

static bool on_http(void *app, struct ws_conn *c, const struct ws_http_request *req,
                    struct ws_http_reply *reply)
{
    struct testapp *a = app;
    struct testapp_event *e = record(a, TA_HTTP, c);
    set_data(e, req->target.p, req->target.n);
    if (!a->act.http_path || strcmp(e->data, a->act.http_path) != 0)
        return false;
    if (a->act.defer) {
        reply->pending = true;
        return true;
    }
    reply->status = a->act.http_status;
    reply->body = dup_str(a->act.http_body);
    reply->body_len = a->act.http_body ? strlen(a->act.http_body) : 0;
    return true;
}

static void on_shutdown(void *app, const char *reason)
{
    struct testapp *a = app;
    struct testapp_event *e = record(a, TA_SHUTDOWN, NULL);
    set_data(e, reason, strlen(reason));
    if (!a->srv)
        return;
    e->listeners = a->srv->nlisteners;
    for (struct ws_registry_node *n = a->srv->env.conns.head; n; n = n->next)
        e->closing += ((struct ws_conn *)n)->state >= WS_CONN_CLOSING;
}

static void on_release(void *app, struct ws_conn *c)
{
    record(app, TA_RELEASE, c)->code = c->close_code;
}

const struct ws_app_ops testapp_ops = {
    .upgrade = on_upgrade,
    .open = on_open,
    .message = on_message,
    .close = on_close,
    .drain = on_drain,
    .http = on_http,
    .shutdown = on_shutdown,
    .release = on_release,
};

void testapp_init(struct testapp *a)
{
    memset(a, 0, sizeof(*a));
}

void testapp_free(struct testapp *a)
{
    for (size_t i = 0; i < a->n; i++) {
        free(a->ev[i].data);
        free(a->ev[i].protocols);
    }
    free(a->ev);
    memset(a, 0, sizeof(*a));
}

long testapp_index(const struct testapp *a, enum testapp_kind kind, uint64_t id)
{
    for (size_t i = 0; i < a->n; i++)
        if (a->ev[i].kind == kind && (!id || a->ev[i].conn == id))
            return (long)i;
    return -1;
}

size_t testapp_count(const struct testapp *a, enum testapp_kind kind, uint64_t id)
{
    size_t k = 0;
    for (size_t i = 0; i < a->n; i++)
        k += a->ev[i].kind == kind && (!id || a->ev[i].conn == id);
    return k;
}

const struct testapp_event *testapp_find(const struct testapp *a, enum testapp_kind kind,
                                         uint64_t id)
{
    long i = testapp_index(a, kind, id);
    return i < 0 ? NULL : &a->ev[i];
}
