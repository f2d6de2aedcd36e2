/* The bus over Redis pub/sub, with hiredis's async API on our libev loop. Two connections: one in
 * subscriber mode (the broadcast channel plus one channel per topic this process has local
 * subscribers for), one for PUBLISH. Either one lost: publishes are dropped and counted, local
 * delivery goes on, and both reconnect with back-off and restore their subscriptions. */
#include "ws/bus.h"

#include "ws/clock.h"
#include "ws/err.h"
#include "ws/log.h"
#include "ws/map.h"
#include "ws/redis_client.h"

#include "redis_hiredis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHANNEL_ALL "wsserver:all"
#define CHANNEL_TOPIC "wsserver:t:"
#define PENDING_MAX (64u * 1024 * 1024) /* unsent PUBLISH bytes before messages are dropped */

struct topic_entry {
    struct topic_entry *next; /* same hash */
    size_t len;
    char name[];
};

struct redis_bus {
    struct ws_bus bus;
    struct ev_loop *loop;
    struct ws_redis_addr addr;
    char name[300]; /* host:port or the socket, for logs */
    redisAsyncContext *pub, *sub;
    bool pub_up, sub_up;
    ev_timer retry;
    double backoff;
    struct ws_map topics; /* hash -> chain of topics with local subscribers */
    struct ws_buf scratch;
};

static void connect_both(struct redis_bus *r);

static void schedule_retry(struct redis_bus *r)
{
    ws_redis_retry_later(r->loop, &r->retry, &r->backoff);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    connect_both(w->data);
}

static void channel_for(struct ws_buf *out, const char *topic, size_t len)
{
    out->len = 0;
    ws_buf_append(out, CHANNEL_TOPIC, strlen(CHANNEL_TOPIC));
    ws_buf_append(out, topic, len);
}

static void on_message(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct redis_bus *r = ac->data;
    redisReply *reply = reply_;
    if (!r || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
        return;
    redisReply *type = reply->element[0], *payload = reply->element[2];
    if (type->type != REDIS_REPLY_STRING || strcmp(type->str, "message") != 0 ||
        payload->type != REDIS_REPLY_STRING)
        return;
    struct ws_bus_msg m;
    if (ws_bus_decode((const uint8_t *)payload->str, payload->len, &m) == 0 &&
        m.origin != r->bus.origin) {
        r->bus.received++;
        r->bus.deliver(r->bus.ctx, &m);
    }
}

static void send_subscribe(struct redis_bus *r, const char *verb, const char *topic, size_t len)
{
    if (!r->sub_up)
        return;
    channel_for(&r->scratch, topic, len);
    redisAsyncCommand(r->sub, on_message, NULL, "%s %b", verb, r->scratch.data, r->scratch.len);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct redis_bus *r = ac->data;
    bool is_sub = ac == r->sub;
    if (status != REDIS_OK) {
        ws_log_msg(WS_LOG_WARN, "bus_connect_failed", ac->errstr);
        if (is_sub)
            r->sub = NULL;
        else
            r->pub = NULL;
        schedule_retry(r);
        return;
    }
    if (is_sub) {
        r->sub_up = true;
        /* restore every subscription */
        redisAsyncCommand(r->sub, on_message, NULL, "SUBSCRIBE " CHANNEL_ALL);
        for (size_t i = 0; i < r->topics.cap; i++)
            for (struct topic_entry *t = r->topics.slots[i].value; t; t = t->next)
                send_subscribe(r, "SUBSCRIBE", t->name, t->len);
    } else {
        r->pub_up = true;
    }
    if (r->sub_up && r->pub_up) {
        r->backoff = WS_REDIS_BACKOFF_MIN;
        ws_log_msg(WS_LOG_INFO, "bus_connected", r->name);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_bus *r = ac->data;
    if (!r)
        return; /* we closed it */
    (void)status;
    if (ac == r->sub) {
        r->sub = NULL;
        r->sub_up = false;
    } else {
        r->pub = NULL;
        r->pub_up = false;
    }
    ws_log_msg(WS_LOG_WARN, "bus_disconnected", ac->errstr[0] ? ac->errstr : "connection closed");
    schedule_retry(r);
}

static redisAsyncContext *open_one(struct redis_bus *r)
{
    char err[256];
    int nsetup;
    /* AUTH when the URL has a password; SELECT does not matter to pub/sub */
    redisAsyncContext *ac =
        ws_redis_connect(r->loop, &r->addr, NULL, NULL, &nsetup, err, sizeof(err));
    if (!ac) {
        ws_log_msg(WS_LOG_WARN, "bus_connect_failed", err);
        return NULL;
    }
    ac->data = r;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

static void connect_both(struct redis_bus *r)
{
    if (!r->sub)
        r->sub = open_one(r);
    if (!r->pub)
        r->pub = open_one(r);
    if (!r->sub || !r->pub)
        schedule_retry(r);
}

static int redis_publish(struct ws_bus *bus, const struct ws_bus_msg *m)
{
    struct redis_bus *r = (struct redis_bus *)bus;
    if (!r->pub_up) {
        bus->dropped++;
        ws_log_msg(WS_LOG_WARN, "bus_dropped", "Redis is unreachable: message not sent to peers");
        return WS_E_IO;
    }
    if (r->pub->c.obuf && sdslen(r->pub->c.obuf) > PENDING_MAX) {
        /* Redis is there but not reading: do not buffer without bound */
        bus->dropped++;
        ws_log_msg(WS_LOG_WARN, "bus_dropped",
                   "Redis is not keeping up: message not sent to peers");
        return WS_E_IO;
    }
    struct ws_buf payload;
    ws_buf_init(&payload);
    ws_bus_encode(m, &payload);
    if (m->kind == WS_BUS_TOPIC)
        channel_for(&r->scratch, m->topic, m->topic_len);
    else {
        r->scratch.len = 0;
        ws_buf_append(&r->scratch, CHANNEL_ALL, strlen(CHANNEL_ALL));
    }
    redisAsyncCommand(r->pub, NULL, NULL, "PUBLISH %b %b", r->scratch.data, r->scratch.len,
                      payload.data, payload.len);
    ws_buf_reset(&payload);
    bus->published++;
    return 0;
}

static void redis_subscribe(struct ws_bus *bus, const char *topic, size_t len)
{
    struct redis_bus *r = (struct redis_bus *)bus;
    uint64_t h = ws_hash_bytes(topic, len);
    struct topic_entry *head = ws_map_get(&r->topics, h);
    for (struct topic_entry *t = head; t; t = t->next)
        if (t->len == len && memcmp(t->name, topic, len) == 0)
            return;
    struct topic_entry *t = ws_xmalloc(sizeof(*t) + len + 1);
    t->len = len;
    memcpy(t->name, topic, len);
    t->name[len] = 0;
    t->next = head;
    ws_map_put(&r->topics, h, t);
    send_subscribe(r, "SUBSCRIBE", topic, len);
}

static void redis_unsubscribe(struct ws_bus *bus, const char *topic, size_t len)
{
    struct redis_bus *r = (struct redis_bus *)bus;
    uint64_t h = ws_hash_bytes(topic, len);
    struct topic_entry *head = ws_map_get(&r->topics, h);
    for (struct topic_entry **p = &head; *p; p = &(*p)->next) {
        struct topic_entry *t = *p;
        if (t->len == len && memcmp(t->name, topic, len) == 0) {
            *p = t->next;
            if (head)
                ws_map_put(&r->topics, h, head);
            else
                ws_map_del(&r->topics, h);
            free(t);
            send_subscribe(r, "UNSUBSCRIBE", topic, len);
            return;
        }
    }
}

static void redis_free(struct ws_bus *bus)
{
    struct redis_bus *r = (struct redis_bus *)bus;
    ws_timer_stop(r->loop, &r->retry);
    redisAsyncContext *contexts[2] = {r->sub, r->pub};
    for (int i = 0; i < 2; i++) {
        if (contexts[i]) {
            contexts[i]->data = NULL; /* on_disconnect: nothing to reschedule */
            redisAsyncFree(contexts[i]);
        }
    }
    for (size_t i = 0; i < r->topics.cap; i++) {
        struct topic_entry *t = r->topics.slots[i].value;
        while (t) {
            struct topic_entry *next = t->next;
            free(t);
            t = next;
        }
    }
    ws_map_free(&r->topics);
    ws_buf_reset(&r->scratch);
    free(r);
}

static const struct ws_bus_ops redis_ops = {redis_publish, redis_subscribe, redis_unsubscribe,
                                            redis_free};

struct ws_bus *ws_bus_redis_new(struct ev_loop *loop, const char *url, ws_bus_deliver_fn deliver,
                                void *ctx, char *err, size_t errlen)
{
    struct redis_bus *r = ws_xcalloc(1, sizeof(*r));
    if (ws_redis_parse_url(url, &r->addr) < 0) {
        snprintf(err, errlen, "invalid value for redis: %s (expected redis://host:port)", url);
        free(r);
        return NULL;
    }
    ws_redis_addr_name(&r->addr, r->name, sizeof(r->name));
    r->bus.ops = &redis_ops;
    r->bus.origin = ws_bus_new_origin();
    r->bus.deliver = deliver;
    r->bus.ctx = ctx;
    r->loop = loop;
    r->backoff = WS_REDIS_BACKOFF_MIN;
    ws_map_init(&r->topics);
    ws_buf_init(&r->scratch);
    ev_init(&r->retry, on_retry);
    r->retry.data = r;
    connect_both(r);
    return &r->bus;
}
