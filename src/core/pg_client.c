/* PostgreSQL pools on the loop: connections made on demand up to a cap, handed to waiters in
 * arrival order from the loop, kept while idle or closed when they come back in a transaction or
 * over the cap. What runs on one connection (libpq, queries, cancels) is pg_conn.c's. No Lua; no
 * knowledge of who waits. */
#include "ws/pg_client.h"

#include "pg_pool.h"

#include "ws/buf.h"
#include "ws/clock.h"

#include <stdlib.h>
#include <string.h>

struct ws_pg_wait {
    struct ws_pg_pool *p;
    ws_pg_conn_fn done;
    void *ud;
    struct ws_pg_wait *prev, *next;
};

static void kick(struct ws_pg_pool *p)
{
    if (!p->wait_head || ev_is_active(&p->kick))
        return;
    ws_timer_start(p->loop, &p->kick, 0, 0);
}

void ws_pg_pool_drop(struct ws_pg_conn *c)
{
    struct ws_pg_pool *p = c->p;
    ws_pg_conn_close(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    p->nopen--;
    if (c->out)
        p->nout--;
    free(c);
    kick(p); /* room for a new connection */
}

/* A connection attempt failed: the first waiter hears why. */
void ws_pg_pool_connect_failed(struct ws_pg_conn *c, const char *why)
{
    struct ws_pg_pool *p = c->p;
    char err[512];
    ws_pg_conn_copy_msg(err, sizeof(err), "cannot connect: ", why);
    ws_pg_pool_drop(c);
    struct ws_pg_wait *w = p->wait_head;
    if (!w)
        return;
    p->wait_head = w->next;
    if (w->next)
        w->next->prev = NULL;
    else
        p->wait_tail = NULL;
    p->nwaiting--;
    ws_pg_conn_fn done = w->done;
    void *ud = w->ud;
    free(w);
    done(ud, NULL, err);
}

/* A connection the pool holds (not handed out) that is idle: kept for reuse, or closed when it
 * is in a transaction or over the cap. */
void ws_pg_pool_settle(struct ws_pg_conn *c)
{
    struct ws_pg_pool *p = c->p;
    if (c->out || c->state != IDLE)
        return;
    if (PQtransactionStatus(c->pg) != PQTRANS_IDLE || p->nopen > p->max_conns) {
        ws_pg_pool_drop(c);
        return;
    }
    ws_pg_conn_watch(c, EV_READ); /* a server that goes away is noticed while idle */
    kick(p);
}

static struct ws_pg_conn *find_idle(struct ws_pg_pool *p)
{
    for (struct ws_pg_conn *c = p->conns; c; c = c->next)
        if (!c->out && c->state == IDLE)
            return c;
    return NULL;
}

static void hand_out(struct ws_pg_conn *c)
{
    c->out = true;
    c->p->nout++;
}

static void on_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_pg_pool *p = w->data;
    while (p->wait_head) {
        struct ws_pg_conn *c = find_idle(p);
        if (!c) {
            if (p->nconnecting < p->nwaiting && p->nopen < p->max_conns) {
                ws_pg_conn_start(p);
                continue;
            }
            return;
        }
        struct ws_pg_wait *wt = p->wait_head;
        p->wait_head = wt->next;
        if (wt->next)
            wt->next->prev = NULL;
        else
            p->wait_tail = NULL;
        p->nwaiting--;
        hand_out(c);
        ws_pg_conn_fn done = wt->done;
        void *ud = wt->ud;
        free(wt);
        done(ud, c, NULL); /* may release, take or queue: the loop starts over */
    }
}

struct ws_pg_pool *ws_pg_pool_new(struct ev_loop *loop, const char *conninfo, size_t max_conns,
                                  double connect_timeout, char *err, size_t errlen)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &msg);
    if (!opts) {
        ws_pg_conn_copy_msg(err, errlen, "invalid conninfo: ", msg ? msg : "out of memory");
        PQfreemem(msg);
        return NULL;
    }
    PQconninfoFree(opts);
    struct ws_pg_pool *p = ws_xcalloc(1, sizeof(*p));
    p->loop = loop;
    p->conninfo = ws_xstrndup(conninfo, strlen(conninfo));
    p->max_conns = max_conns ? max_conns : 1;
    p->connect_timeout = connect_timeout > 0 ? connect_timeout : 10;
    ev_init(&p->kick, on_kick);
    p->kick.data = p;
    return p;
}

void ws_pg_pool_set_max(struct ws_pg_pool *p, size_t max_conns)
{
    p->max_conns = max_conns ? max_conns : 1;
    kick(p);
}

void ws_pg_pool_free(struct ws_pg_pool *p)
{
    if (!p)
        return;
    while (p->conns) {
        p->conns->out = false;
        p->nout = 0;
        ws_pg_pool_drop(p->conns);
    }
    while (p->wait_head) {
        struct ws_pg_wait *w = p->wait_head;
        p->wait_head = w->next;
        free(w);
    }
    ws_timer_stop(p->loop, &p->kick);
    free(p->conninfo);
    free(p);
}

struct ws_pg_conn *ws_pg_pool_take(struct ws_pg_pool *p)
{
    if (p->wait_head)
        return NULL;
    struct ws_pg_conn *c = find_idle(p);
    if (c)
        hand_out(c);
    return c;
}

struct ws_pg_wait *ws_pg_pool_acquire(struct ws_pg_pool *p, ws_pg_conn_fn done, void *ud)
{
    struct ws_pg_wait *w = ws_xcalloc(1, sizeof(*w));
    w->p = p;
    w->done = done;
    w->ud = ud;
    w->prev = p->wait_tail;
    if (p->wait_tail)
        p->wait_tail->next = w;
    else
        p->wait_head = w;
    p->wait_tail = w;
    p->nwaiting++;
    kick(p);
    return w;
}

void ws_pg_pool_acquire_cancel(struct ws_pg_wait *w)
{
    struct ws_pg_pool *p = w->p;
    if (w->prev)
        w->prev->next = w->next;
    else
        p->wait_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        p->wait_tail = w->prev;
    p->nwaiting--;
    free(w);
}

void ws_pg_conn_release(struct ws_pg_conn *c)
{
    if (!c->out)
        return;
    ws_pg_conn_abandon(c);
    c->out = false;
    c->p->nout--;
    if (c->state == LOST)
        ws_pg_pool_drop(c);
    else
        ws_pg_pool_settle(c);
}

size_t ws_pg_pool_open(const struct ws_pg_pool *p)
{
    return p->nopen;
}

size_t ws_pg_pool_in_use(const struct ws_pg_pool *p)
{
    return p->nout;
}

size_t ws_pg_pool_waiting(const struct ws_pg_pool *p)
{
    return p->nwaiting;
}

const struct ws_pg_ops ws_pg_libpq = {
    ws_pg_pool_new,     ws_pg_pool_set_max,        ws_pg_pool_free,  ws_pg_pool_take,
    ws_pg_pool_acquire, ws_pg_pool_acquire_cancel, ws_pg_conn_query, ws_pg_conn_abandon,
    ws_pg_conn_ready,   ws_pg_conn_release,        ws_pg_pool_open,  ws_pg_pool_in_use,
};
