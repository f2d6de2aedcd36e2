/* A Redis pool's subscriptions: one connection of their own in subscriber mode, made with the
 * first subscription, reconnected with back-off and every channel subscribed again; messages
 * handed to each subscriber of their channel. Only SUBSCRIBE: no patterns, no commands. */
#include "ws/redis_sub.h"

#include "redis_pool.h"

#include "ws/buf.h"
#include "ws/clock.h"
#include "ws/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ws_redis_sub {
    struct ws_redis *r;
    char *channel;
    size_t len;
    ws_redis_message_fn fn; /* NULL: unsubscribed during a delivery, freed after it */
    void *ud;
    struct ws_redis_sub *next;
};

static void sub_connect(struct ws_redis *r);

static void sub_schedule(struct ws_redis *r)
{
    if (r->subs)
        ws_redis_retry_later(r->loop, &r->sub_retry, &r->sub_backoff);
}

static void on_sub_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sub_connect(w->data);
}

static bool channel_used(struct ws_redis *r, const char *ch, size_t len, const void *except)
{
    for (struct ws_redis_sub *s = r->subs; s; s = s->next)
        if (s != except && s->fn && s->len == len && memcmp(s->channel, ch, len) == 0)
            return true;
    return false;
}

static void sweep_subs(struct ws_redis *r)
{
    for (struct ws_redis_sub **p = &r->subs; *p;) {
        struct ws_redis_sub *s = *p;
        if (s->fn) {
            p = &s->next;
            continue;
        }
        *p = s->next;
        free(s->channel);
        free(s);
    }
}

static void on_sub_message(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct ws_redis *r = ac->data;
    redisReply *reply = reply_;
    if (!r || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
        return;
    redisReply *type = reply->element[0], *ch = reply->element[1], *msg = reply->element[2];
    if (type->type != REDIS_REPLY_STRING || strcmp(type->str, "message") != 0 ||
        ch->type != REDIS_REPLY_STRING || msg->type != REDIS_REPLY_STRING)
        return;
    r->delivering++;
    for (struct ws_redis_sub *s = r->subs; s; s = s->next)
        if (s->fn && s->len == (size_t)ch->len && memcmp(s->channel, ch->str, s->len) == 0)
            s->fn(s->ud, ch->str, (size_t)ch->len, msg->str, (size_t)msg->len);
    if (--r->delivering == 0)
        sweep_subs(r);
}

static void send_sub(struct ws_redis *r, const char *verb, const char *ch, size_t len)
{
    if (r->sub_up)
        redisAsyncCommand(r->sub, on_sub_message, NULL, "%s %b", verb, ch, len);
}

static void on_sub_connect(const redisAsyncContext *ac, int status)
{
    struct ws_redis *r = ac->data;
    if (!r)
        return;
    if (status != REDIS_OK) {
        char why[300];
        snprintf(why, sizeof(why), "redis %.200s: %.90s", r->name, ac->errstr);
        ws_log_msg(WS_LOG_WARN, "redis_connect_failed", why);
        r->sub = NULL;
        sub_schedule(r);
        return;
    }
    r->sub_up = true;
    r->sub_backoff = WS_REDIS_BACKOFF_MIN;
    /* every subscription again (Redis ignores a channel subscribed twice) */
    for (struct ws_redis_sub *s = r->subs; s; s = s->next)
        if (s->fn)
            send_sub(r, "SUBSCRIBE", s->channel, s->len);
}

static void on_sub_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct ws_redis *r = ac->data;
    if (!r)
        return;
    r->sub = NULL;
    r->sub_up = false;
    ws_log_msg(WS_LOG_WARN, "redis_disconnected", r->name);
    sub_schedule(r);
}

static void sub_connect(struct ws_redis *r)
{
    if (r->sub || !r->subs)
        return;
    char err[256];
    int nsetup = 0;
    r->sub = ws_redis_connect(r->loop, &r->addr, NULL, NULL, &nsetup, err, sizeof(err));
    if (!r->sub) {
        ws_log_msg(WS_LOG_WARN, "redis_connect_failed", err);
        sub_schedule(r);
        return;
    }
    r->sub->data = r;
    redisAsyncSetConnectCallback(r->sub, on_sub_connect);
    redisAsyncSetDisconnectCallback(r->sub, on_sub_disconnect);
}

struct ws_redis_sub *ws_redis_subscribe(struct ws_redis *r, const char *channel, size_t len,
                                        ws_redis_message_fn fn, void *ud)
{
    struct ws_redis_sub *s = ws_xcalloc(1, sizeof(*s));
    s->r = r;
    s->channel = ws_xstrndup(channel, len);
    s->len = len;
    s->fn = fn;
    s->ud = ud;
    bool used = channel_used(r, channel, len, NULL);
    s->next = r->subs;
    r->subs = s;
    if (!r->sub) {
        if (!ev_is_active(&r->sub_retry))
            sub_connect(r);
    } else if (!used) {
        send_sub(r, "SUBSCRIBE", channel, len);
    }
    return s;
}

void ws_redis_unsubscribe(struct ws_redis_sub *s)
{
    struct ws_redis *r = s->r;
    s->fn = NULL;
    if (!channel_used(r, s->channel, s->len, s))
        send_sub(r, "UNSUBSCRIBE", s->channel, s->len);
    if (!r->delivering)
        sweep_subs(r);
}

void ws_redis_sub_setup(struct ws_redis *r)
{
    r->sub_backoff = WS_REDIS_BACKOFF_MIN;
    ev_init(&r->sub_retry, on_sub_retry);
    r->sub_retry.data = r;
}

void ws_redis_sub_close_all(struct ws_redis *r)
{
    ws_timer_stop(r->loop, &r->sub_retry);
    if (r->sub) {
        r->sub->data = NULL;
        redisAsyncFree(r->sub);
    }
    for (struct ws_redis_sub *s = r->subs; s; s = s->next)
        s->fn = NULL;
    sweep_subs(r);
}
