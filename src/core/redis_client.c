/* The pooled Redis client (ws.redis underneath): hiredis's async API on our libev loop. Requests
 * go out on ready connections (AUTH and SELECT done), several in flight on each, blocking ones
 * alone; replies are copied out of hiredis, so they outlive its callbacks. A lost connection
 * fails its requests and leaves the pool; new ones are made on demand, with back-off after a
 * failed attempt. No timeouts of its own but the connect timeout: whoever waits sets them. */
#include "ws/redis_client.h"

#include "redis_pool.h"

#include "ws/buf.h"
#include "ws/clock.h"
#include "ws/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_INFLIGHT 64 /* requests sent on one connection and not answered yet */

struct rconn {
    struct ws_redis *r;
    redisAsyncContext *ac; /* NULL once hiredis frees it */
    ev_timer connect_timer;
    int setup_left; /* AUTH / SELECT replies still to come */
    bool connected, ready;
    bool dying;                       /* hiredis reports it lost: no new request */
    bool exclusive;                   /* carries a blocking command: no other request joins */
    bool reserved;                    /* a blocking command waits for it to empty: no new request */
    struct ws_redis_req *head, *tail; /* in flight, in the order of their replies */
    size_t inflight;
    double last_reply; /* ws_clock_now of its latest reply */
    struct rconn *prev, *next;
};

struct ws_redis_req {
    struct ws_redis *r;
    ws_redis_done_fn done; /* NULL once cancelled */
    void *ud;
    size_t ncmds, sent, replies;
    size_t *cmd_end; /* end offset of each formatted command in cmds */
    struct ws_buf cmds;
    struct ws_redis_result res;
    bool failed;
    struct ws_redis_req *prev, *next; /* the queue */
    bool queued;
    bool exclusive;             /* holds a blocking command (BLPOP, XREAD, WAIT, ...) */
    struct rconn *conn;         /* sent on, until its replies are in (NULL once that is lost) */
    struct ws_redis_req *cnext; /* the next one in flight on conn */
    double sent_at;
};

static void pump(struct ws_redis *r);

static void enqueue(struct ws_redis *r, struct ws_redis_req *q)
{
    q->prev = r->queue_tail;
    q->next = NULL;
    if (r->queue_tail)
        r->queue_tail->next = q;
    else
        r->queue = q;
    r->queue_tail = q;
    q->queued = true;
    r->nqueued++;
}

static void unqueue(struct ws_redis *r, struct ws_redis_req *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        r->queue = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        r->queue_tail = q->prev;
    q->prev = q->next = NULL;
    q->queued = false;
    r->nqueued--;
}

static void req_free(struct ws_redis_req *q)
{
    ws_redis_result_free(&q->res);
    ws_buf_reset(&q->cmds);
    free(q->cmd_end);
    free(q);
}

/* Hands q's result to its owner (when it still has one) and frees q. */
static void finish(struct ws_redis_req *q)
{
    ws_redis_done_fn done = q->done;
    if (done) {
        struct ws_redis_result res = q->res;
        memset(&q->res, 0, sizeof(q->res));
        void *ud = q->ud;
        req_free(q);
        done(ud, &res);
    } else {
        req_free(q);
    }
}

static void fail(struct ws_redis_req *q, const char *err)
{
    if (!q->failed) {
        q->failed = true;
        q->res.ok = false;
        snprintf(q->res.err, sizeof(q->res.err), "%.255s", err);
    }
}

/* Takes c out of the pool; hiredis may still be freeing its context (ac->data cleared, so its
 * late callbacks leave c alone). free_ac: we close it ourselves. */
static void drop_conn(struct rconn *c, bool free_ac)
{
    struct ws_redis *r = c->r;
    ws_timer_stop(r->loop, &c->connect_timer);
    if (c->prev)
        c->prev->next = c->next;
    else
        r->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    r->nconns--;
    for (struct ws_redis_req *q = c->head; q; q = q->cnext)
        q->conn = NULL; /* their replies come back NULL: they fail */
    redisAsyncContext *ac = c->ac;
    c->ac = NULL;
    free(c);
    if (ac) {
        ac->data = NULL;
        if (free_ac)
            redisAsyncFree(ac); /* pending replies come back NULL: their requests fail */
    }
}

/* A connection attempt failed: no new one before the back-off has passed, and requests that
 * wait for a connection fail unless another one may serve them. */
static void connect_failed(struct ws_redis *r, const char *why)
{
    snprintf(r->last_err, sizeof(r->last_err), "redis %.200s: %.200s", r->name, why);
    ws_log_msg(WS_LOG_WARN, "redis_connect_failed", r->last_err);
    r->retry_at = ws_clock_now(r->loop) + ws_redis_next_backoff(&r->backoff);
    if (!ev_is_active(&r->flush)) {
        ws_timer_start(r->loop, &r->flush, 0, 0);
    }
}

/* After a failed attempt: with no connection left to serve them, waiting requests fail with
 * the reason (the caller of ws_redis_command is never answered from inside it). */
static void on_flush(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_redis *r = w->data;
    if (r->nconns > 0) {
        pump(r);
        return;
    }
    while (r->queue) {
        struct ws_redis_req *q = r->queue;
        unqueue(r, q);
        fail(q, r->last_err);
        finish(q);
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct ws_redis_req *q = privdata;
    if (reply) {
        ws_redis_value_copy(&q->res.values[q->replies], reply);
    } else {
        char why[256];
        snprintf(why, sizeof(why), "redis %.200s: %.40s", q->r->name,
                 ac->errstr[0] ? ac->errstr : "connection closed");
        fail(q, why);
    }
    struct rconn *c = q->conn;
    if (c && reply)
        c->last_reply = ws_clock_now(c->r->loop);
    else if (c)
        c->dying = true; /* hiredis is closing it: the rest comes back NULL too */
    if (++q->replies < q->ncmds)
        return;
    if (c) {
        /* replies come in order: q is the oldest in flight */
        c->head = q->cnext;
        if (!c->head)
            c->tail = NULL;
        c->inflight--;
        if (q->exclusive)
            c->exclusive = false;
        q->conn = NULL;
        if (!c->dying)
            pump(c->r); /* room on c: the queue goes first */
    }
    finish(q);
}

static void dispatch(struct rconn *c, struct ws_redis_req *q)
{
    q->conn = c;
    q->cnext = NULL;
    q->sent_at = ws_clock_now(c->r->loop);
    if (c->tail)
        c->tail->cnext = q;
    else
        c->head = q;
    c->tail = q;
    c->inflight++;
    if (q->exclusive) {
        c->exclusive = true;
        c->reserved = false;
    }
    size_t start = 0;
    for (size_t i = 0; i < q->ncmds; i++) {
        redisAsyncFormattedCommand(c->ac, on_reply, q, (const char *)q->cmds.data + start,
                                   q->cmd_end[i] - start);
        start = q->cmd_end[i];
    }
    q->sent = q->ncmds;
}

static void became_ready(struct rconn *c)
{
    c->ready = true;
    ws_timer_stop(c->r->loop, &c->connect_timer);
    c->r->backoff = WS_REDIS_BACKOFF_MIN;
    pump(c->r);
}

static void on_setup(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct rconn *c = ac->data;
    redisReply *reply = reply_;
    if (!c || !reply)
        return; /* closing: its own path reports it */
    if (reply->type == REDIS_REPLY_ERROR) {
        struct ws_redis *r = c->r;
        char why[200];
        snprintf(why, sizeof(why), "%.*s", (int)reply->len, reply->str);
        drop_conn(c, false);
        redisAsyncDisconnect(ac); /* nothing of ours is pending on it */
        connect_failed(r, why);
        return;
    }
    if (--c->setup_left == 0 && c->connected)
        became_ready(c);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rconn *c = ac->data;
    if (!c)
        return;
    if (status != REDIS_OK) {
        struct ws_redis *r = c->r;
        char why[200];
        snprintf(why, sizeof(why), "%s", ac->errstr[0] ? ac->errstr : "cannot connect");
        drop_conn(c, false); /* hiredis frees the context */
        connect_failed(r, why);
        return;
    }
    c->connected = true;
    if (c->setup_left == 0)
        became_ready(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct rconn *c = ac->data;
    if (!c)
        return;
    struct ws_redis *r = c->r;
    bool was_ready = c->ready;
    char why[200];
    snprintf(why, sizeof(why), "%s", ac->errstr[0] ? ac->errstr : "connection closed");
    drop_conn(c, false);
    if (!was_ready)
        connect_failed(r, why);
    else
        ws_log_msg(WS_LOG_WARN, "redis_disconnected", r->name);
    pump(r);
}

static void on_connect_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct rconn *c = w->data;
    struct ws_redis *r = c->r;
    drop_conn(c, true);
    connect_failed(r, "connect timed out");
}

static void open_conn(struct ws_redis *r)
{
    struct rconn *c = ws_xcalloc(1, sizeof(*c));
    c->r = r;
    char err[256];
    c->ac = ws_redis_connect(r->loop, &r->addr, on_setup, NULL, &c->setup_left, err, sizeof(err));
    if (!c->ac) {
        free(c);
        const char *why = strstr(err, ": ");
        connect_failed(r, why ? why + 2 : err);
        return;
    }
    c->ac->data = c;
    redisAsyncSetConnectCallback(c->ac, on_connect);
    redisAsyncSetDisconnectCallback(c->ac, on_disconnect);
    ev_init(&c->connect_timer, on_connect_timeout);
    c->connect_timer.data = c;
    ws_timer_start(r->loop, &c->connect_timer, r->connect_timeout, 0);
    c->next = r->conns;
    if (r->conns)
        r->conns->prev = c;
    r->conns = c;
    r->nconns++;
}

/* The connection for q: an idle one first; else, while the pool may grow, none (a new one will
 * be opened); else the least loaded one that takes more. A blocking command needs an idle
 * connection: when there is none it reserves the least loaded one, which takes no new request
 * until it is empty. */
static struct rconn *pick(struct ws_redis *r, const struct ws_redis_req *q)
{
    struct rconn *best = NULL;
    for (struct rconn *c = r->conns; c; c = c->next) {
        if (!c->ready || c->dying || c->exclusive)
            continue;
        if (c->inflight == 0)
            return c;
        if (!c->reserved && (!best || c->inflight < best->inflight))
            best = c;
    }
    bool may_grow = r->nconns < r->pool && ws_clock_now(r->loop) >= r->retry_at;
    if (q->exclusive) {
        if (best && !may_grow)
            best->reserved = true;
        return NULL;
    }
    return may_grow || (best && best->inflight >= MAX_INFLIGHT) ? NULL : best;
}

/* Gives waiting requests connections, in arrival order, and opens connections for the rest. */
static void pump(struct ws_redis *r)
{
    for (struct rconn *c = r->conns; c; c = c->next)
        c->reserved = false; /* the queue, in order, reserves again what it still needs */
    for (struct ws_redis_req *q = r->queue, *next; q; q = next) {
        next = q->next;
        struct rconn *c = pick(r, q);
        if (c) {
            unqueue(r, q);
            dispatch(c, q);
        } else if (!q->exclusive) {
            break; /* no idle connection and no room: nothing behind q gets one either */
        }
    }
    size_t opening = 0;
    for (struct rconn *c = r->conns; c; c = c->next)
        opening += !c->ready;
    while (r->nqueued > opening && r->nconns < r->pool && ws_clock_now(r->loop) >= r->retry_at) {
        size_t before = r->nconns;
        open_conn(r);
        if (r->nconns == before)
            break; /* failed at once: connect_failed has answered the queue */
        opening++;
    }
}

struct ws_redis *ws_redis_new(struct ev_loop *loop, const struct ws_redis_addr *addr, size_t pool,
                              double connect_timeout)
{
    struct ws_redis *r = ws_xcalloc(1, sizeof(*r));
    r->loop = loop;
    r->addr = *addr;
    ws_redis_addr_name(addr, r->name, sizeof(r->name));
    r->pool = pool < 1 ? 1 : pool > WS_REDIS_MAX_POOL ? WS_REDIS_MAX_POOL : pool;
    r->connect_timeout = connect_timeout > 0 ? connect_timeout : 10;
    r->backoff = WS_REDIS_BACKOFF_MIN;
    ws_redis_sub_setup(r);
    ev_init(&r->flush, on_flush);
    r->flush.data = r;
    return r;
}

/* Commands Redis may hold until something happens: they must not delay others on a shared
 * connection. */
static bool blocking(const char *name, size_t n)
{
    static const char *const names[] = {
        "BLPOP",    "BRPOP",  "BRPOPLPUSH", "BLMOVE",     "BLMPOP", "BZPOPMIN",
        "BZPOPMAX", "BZMPOP", "XREAD",      "XREADGROUP", "WAIT",   "WAITAOF",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i]) == n && strncasecmp(names[i], name, n) == 0)
            return true;
    return false;
}

struct ws_redis_req *ws_redis_command(struct ws_redis *r, size_t ncmds, const int *argc,
                                      const char *const *argv, const size_t *argvlen,
                                      ws_redis_done_fn done, void *ud, char *err, size_t errlen)
{
    if (r->nconns == 0 && ws_clock_now(r->loop) < r->retry_at) {
        snprintf(err, errlen, "%s", r->last_err);
        return NULL;
    }
    struct ws_redis_req *q = ws_xcalloc(1, sizeof(*q));
    q->r = r;
    q->done = done;
    q->ud = ud;
    q->ncmds = ncmds;
    q->cmd_end = ws_xcalloc(ncmds, sizeof(*q->cmd_end));
    q->res.ok = true;
    q->res.n = ncmds;
    q->res.values = ws_xcalloc(ncmds, sizeof(*q->res.values));
    ws_buf_init(&q->cmds);
    size_t k = 0;
    for (size_t i = 0; i < ncmds; i++) {
        char *cmd = NULL;
        int len = redisFormatCommandArgv(&cmd, argc[i], (const char **)argv + k, argvlen + k);
        if (len < 0) {
            snprintf(err, errlen, "redis %s: out of memory", r->name);
            req_free(q);
            return NULL;
        }
        ws_buf_append(&q->cmds, cmd, (size_t)len);
        redisFreeCommand(cmd);
        q->cmd_end[i] = q->cmds.len;
        q->exclusive = q->exclusive || blocking(argv[k], argvlen[k]);
        k += (size_t)argc[i];
    }
    enqueue(r, q);
    pump(r);
    return q;
}

void ws_redis_cancel(struct ws_redis_req *q, bool close)
{
    struct ws_redis *r = q->r;
    if (q->sent) {
        q->done = NULL; /* on_reply frees it when the last reply (or the close) comes */
        struct rconn *c = q->conn;
        if (close && c && c->last_reply <= q->sent_at) {
            /* nothing came back on c since q went out: Redis is not answering it */
            drop_conn(c, true);
            pump(r);
        }
        return;
    }
    if (q->queued)
        unqueue(r, q);
    req_free(q);
}

size_t ws_redis_open(const struct ws_redis *r)
{
    return r->nconns + (r->sub ? 1 : 0);
}

size_t ws_redis_busy(const struct ws_redis *r)
{
    size_t n = 0;
    for (const struct rconn *c = r->conns; c; c = c->next)
        n += c->inflight > 0;
    return n;
}

void ws_redis_free(struct ws_redis *r)
{
    if (!r)
        return;
    while (r->queue) {
        struct ws_redis_req *q = r->queue;
        unqueue(r, q);
        req_free(q);
    }
    for (struct rconn *c = r->conns; c; c = c->next)
        for (struct ws_redis_req *q = c->head; q; q = q->cnext)
            q->done = NULL;
    while (r->conns)
        drop_conn(r->conns, true);
    ws_redis_sub_close_all(r);
    ws_timer_stop(r->loop, &r->flush);
    free(r);
}

const struct ws_redis_ops ws_redis_hiredis = {
    ws_redis_new,       ws_redis_free,        ws_redis_command, ws_redis_cancel,
    ws_redis_subscribe, ws_redis_unsubscribe, ws_redis_open,    ws_redis_busy,
};
