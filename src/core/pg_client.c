/* PostgreSQL connections on the loop: libpq in non-blocking mode, one ev_io per connection's
 * socket, one ev_timer bounding its connect or the drain of a cancelled query. The pool hands
 * idle connections to waiters in arrival order, from the loop. Server-side cancels go through
 * PQcancel on a short-lived thread (libpq 15 has no non-blocking cancel), so the loop never
 * blocks. No Lua; no knowledge of who waits. */
#include "ws/pg_client.h"

#include "ws/buf.h"
#include "ws/clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STMTS 64 /* prepared statements kept per connection */

enum state {
    CONNECTING,
    IDLE,     /* ready for a query */
    BUSY,     /* a query in flight, its callback set */
    DRAINING, /* a query abandoned: its answer is read and dropped */
    LOST,     /* closed (failed, timed out, or the server went away) */
};

struct stmt {
    char *sql;
    char name[16];
};

/* A query's parameters, copied: sent once its statement is prepared. */
struct pending {
    int n;
    char **values;
    int *lengths;
    int *formats;
    int stmt; /* index into stmts */
};

struct ws_pg_conn {
    struct ws_pg_pool *p;
    PGconn *pg;
    ev_io io;
    ev_timer timer;
    enum state state;
    bool out;       /* handed out to a caller */
    bool preparing; /* the answer awaited is the PQsendPrepare's */
    ws_pg_result_fn done;
    void *ud;
    PGresult *res; /* the first error, else the last result */
    struct pending pend;
    struct stmt stmts[MAX_STMTS];
    size_t nstmts;
    unsigned next_name;
    struct ws_pg_conn *prev, *next;
};

struct ws_pg_wait {
    struct ws_pg_pool *p;
    ws_pg_conn_fn done;
    void *ud;
    struct ws_pg_wait *prev, *next;
};

struct ws_pg_pool {
    struct ev_loop *loop;
    char *conninfo;
    size_t max_conns;
    double connect_timeout;
    struct ws_pg_conn *conns; /* every connection */
    size_t nopen, nout, nconnecting;
    struct ws_pg_wait *wait_head, *wait_tail;
    size_t nwaiting;
    ev_timer kick; /* hands connections and connect errors to waiters, from the loop */
};

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void settle(struct ws_pg_conn *c);

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = ws_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

/* libpq's notices (a NOTICE from a function, a WARNING) are not errors: they are dropped
 * instead of going to stderr. */
static void no_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* The last line of libpq's message without its trailing newline. */
static void copy_msg(char *out, size_t cap, const char *prefix, const char *msg)
{
    size_t n = msg ? strlen(msg) : 0;
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    snprintf(out, cap, "%s%.*s", prefix, (int)n, msg ? msg : "");
}

static void kick(struct ws_pg_pool *p)
{
    if (!p->wait_head || ev_is_active(&p->kick))
        return;
    ws_timer_start(p->loop, &p->kick, 0, 0);
}

static void watch(struct ws_pg_conn *c, int events)
{
    struct ev_loop *loop = c->p->loop;
    int fd = PQsocket(c->pg);
    if (ev_is_active(&c->io) && c->io.fd == fd && (c->io.events & (EV_READ | EV_WRITE)) == events)
        return;
    ev_io_stop(loop, &c->io);
    if (fd < 0)
        return;
    ev_io_set(&c->io, fd, events);
    ev_io_start(loop, &c->io);
}

static void clear_pending(struct ws_pg_conn *c)
{
    for (int i = 0; i < c->pend.n; i++)
        free(c->pend.values[i]);
    free(c->pend.values);
    free(c->pend.lengths);
    free(c->pend.formats);
    memset(&c->pend, 0, sizeof(c->pend));
}

static void drop_stmt(struct ws_pg_conn *c, int i)
{
    free(c->stmts[i].sql);
    c->stmts[i] = c->stmts[--c->nstmts];
}

/* Closes c's connection; c stays allocated while it is handed out. */
static void close_conn(struct ws_pg_conn *c)
{
    struct ws_pg_pool *p = c->p;
    ev_io_stop(p->loop, &c->io);
    ws_timer_stop(p->loop, &c->timer);
    if (c->state == CONNECTING)
        p->nconnecting--;
    if (c->pg)
        PQfinish(c->pg);
    c->pg = NULL;
    if (c->res)
        PQclear(c->res);
    c->res = NULL;
    clear_pending(c);
    while (c->nstmts)
        drop_stmt(c, 0);
    c->state = LOST;
}

static void free_conn(struct ws_pg_conn *c)
{
    struct ws_pg_pool *p = c->p;
    close_conn(c);
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

/* c failed for the reason in msg: its query's caller hears of it; an idle connection of the pool
 * is freed. */
static void lose(struct ws_pg_conn *c, const char *why)
{
    ws_pg_result_fn done = c->state == BUSY ? c->done : NULL;
    void *ud = c->ud;
    char err[512];
    copy_msg(err, sizeof(err), "connection lost: ", why);
    c->done = NULL;
    close_conn(c);
    if (!c->out)
        free_conn(c);
    if (done)
        done(ud, NULL, NULL, err, "");
}

static void pg_lost(struct ws_pg_conn *c)
{
    lose(c, c->pg ? PQerrorMessage(c->pg) : "closed");
}

static void start_connect(struct ws_pg_pool *p)
{
    struct ws_pg_conn *c = ws_xcalloc(1, sizeof(*c));
    c->p = p;
    ev_init(&c->io, on_io);
    c->io.data = c;
    ev_init(&c->timer, on_timer);
    c->timer.data = c;
    /* the conninfo is expanded first; the keywords after it override what it says */
    const char *const keys[] = {"dbname", "client_encoding", "fallback_application_name", NULL};
    const char *const vals[] = {p->conninfo, "UTF8", "wsserver", NULL};
    c->pg = PQconnectStartParams(keys, vals, 1);
    c->state = CONNECTING;
    c->next = p->conns;
    if (p->conns)
        p->conns->prev = c;
    p->conns = c;
    p->nopen++;
    p->nconnecting++;
    /* failures are reported from the loop, like the others */
    ws_timer_start(p->loop, &c->timer,
                   !c->pg || PQstatus(c->pg) == CONNECTION_BAD ? 0 : p->connect_timeout, 0);
    if (c->pg && PQstatus(c->pg) != CONNECTION_BAD) {
        PQsetNoticeProcessor(c->pg, no_notice, NULL);
        watch(c, EV_WRITE);
    }
}

/* A connection attempt failed: the first waiter hears why. */
static void connect_failed(struct ws_pg_conn *c, const char *why)
{
    struct ws_pg_pool *p = c->p;
    char err[512];
    copy_msg(err, sizeof(err), "cannot connect: ", why);
    free_conn(c);
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

static void connect_step(struct ws_pg_conn *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        watch(c, EV_READ);
        return;
    case PGRES_POLLING_WRITING:
        watch(c, EV_WRITE);
        return;
    case PGRES_POLLING_OK:
        break;
    default:
        connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    if (PQsetnonblocking(c->pg, 1) != 0) {
        connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    ws_timer_stop(c->p->loop, &c->timer);
    c->p->nconnecting--;
    c->state = IDLE;
    settle(c);
}

/* Sends what is buffered; watches for writability until it is all out. Returns -1 when the
 * connection failed. */
static int flush(struct ws_pg_conn *c)
{
    int rc = PQflush(c->pg);
    if (rc < 0)
        return -1;
    watch(c, rc ? EV_READ | EV_WRITE : EV_READ);
    return 0;
}

static int send_prepared(struct ws_pg_conn *c)
{
    struct pending *q = &c->pend;
    return PQsendQueryPrepared(c->pg, c->stmts[q->stmt].name, q->n, (const char *const *)q->values,
                               q->lengths, q->formats, 0)
               ? 0
               : -1;
}

/* The command's results are all in (PQgetResult gave NULL). */
static void finished(struct ws_pg_conn *c)
{
    PGresult *res = c->res;
    c->res = NULL;
    if (c->state == DRAINING) {
        if (res)
            PQclear(res);
        ws_timer_stop(c->p->loop, &c->timer);
        c->state = IDLE;
        clear_pending(c);
        if (!c->out)
            settle(c);
        return;
    }
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    bool ok = st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY;
    if (c->preparing) {
        c->preparing = false;
        if (ok) {
            if (res)
                PQclear(res);
            if (send_prepared(c) != 0 || flush(c) != 0)
                pg_lost(c);
            return;
        }
        drop_stmt(c, c->pend.stmt);
    }
    clear_pending(c);
    ws_pg_result_fn done = c->done;
    void *ud = c->ud;
    c->done = NULL;
    c->state = IDLE;
    if (ok) {
        done(ud, res, NULL, NULL, NULL);
        return;
    }
    char err[512], sqlstate[6] = "";
    if (res) {
        const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        snprintf(sqlstate, sizeof(sqlstate), "%s", code ? code : "");
        copy_msg(err, sizeof(err), "", msg ? msg : PQresultErrorMessage(res));
        PQclear(res);
    } else {
        copy_msg(err, sizeof(err), "", PQerrorMessage(c->pg));
    }
    done(ud, NULL, NULL, err, sqlstate);
}

/* Reads what arrived and hands over every finished command. */
static void read_results(struct ws_pg_conn *c)
{
    if (!PQconsumeInput(c->pg)) {
        pg_lost(c);
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(c->pg)))
        PQfreemem(n);
    while (c->state == BUSY || c->state == DRAINING) {
        if (PQisBusy(c->pg))
            return;
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            finished(c);
            return;
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            PQclear(r);
            lose(c, "COPY is not supported");
            return;
        }
        /* the first error is the one that counts; otherwise the last result */
        if (c->res && PQresultStatus(c->res) == PGRES_FATAL_ERROR) {
            PQclear(r);
            continue;
        }
        if (c->res)
            PQclear(c->res);
        c->res = r;
    }
    if (c->state == IDLE && PQstatus(c->pg) == CONNECTION_BAD)
        pg_lost(c);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct ws_pg_conn *c = w->data;
    if (c->state == CONNECTING) {
        connect_step(c);
        return;
    }
    if ((revents & EV_WRITE) && flush(c) != 0) {
        pg_lost(c);
        return;
    }
    if (revents & EV_READ)
        read_results(c);
}

/* A connection attempt or a drain took too long. */
static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_pg_conn *c = w->data;
    if (c->state == CONNECTING)
        connect_failed(c, c->pg && PQstatus(c->pg) == CONNECTION_BAD ? PQerrorMessage(c->pg)
                          : c->pg                                    ? "timeout"
                                                                     : "out of memory");
    else
        lose(c, "the server did not answer a cancel in time");
}

/* A connection the pool holds (not handed out) that is idle: kept for reuse, or closed when it
 * is in a transaction or over the cap. */
static void settle(struct ws_pg_conn *c)
{
    struct ws_pg_pool *p = c->p;
    if (c->out || c->state != IDLE)
        return;
    if (PQtransactionStatus(c->pg) != PQTRANS_IDLE || p->nopen > p->max_conns) {
        free_conn(c);
        return;
    }
    watch(c, EV_READ); /* a server that goes away is noticed while idle */
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
                start_connect(p);
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
        copy_msg(err, errlen, "invalid conninfo: ", msg ? msg : "out of memory");
        PQfreemem(msg);
        return NULL;
    }
    PQconninfoFree(opts);
    struct ws_pg_pool *p = ws_xcalloc(1, sizeof(*p));
    p->loop = loop;
    p->conninfo = xstrdup(conninfo);
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
        free_conn(p->conns);
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

/* Copies the parameters into c->pend. */
static void keep_params(struct ws_pg_conn *c, int n, const char *const *values, const int *lengths,
                        const int *formats)
{
    struct pending *q = &c->pend;
    q->n = n;
    if (!n)
        return;
    q->values = ws_xcalloc((size_t)n, sizeof(*q->values));
    q->lengths = ws_xcalloc((size_t)n, sizeof(*q->lengths));
    q->formats = ws_xcalloc((size_t)n, sizeof(*q->formats));
    for (int i = 0; i < n; i++) {
        q->formats[i] = formats ? formats[i] : 0;
        if (!values[i])
            continue;
        size_t len = q->formats[i] ? (size_t)lengths[i] : strlen(values[i]);
        q->lengths[i] = (int)len;
        q->values[i] = ws_xmalloc(len + 1);
        memcpy(q->values[i], values[i], len);
        q->values[i][len] = '\0';
    }
}

int ws_pg_conn_query(struct ws_pg_conn *c, const char *sql, int n, const char *const *values,
                     const int *lengths, const int *formats, bool prepare, ws_pg_result_fn done,
                     void *ud, char *err, size_t errlen)
{
    if (c->state != IDLE) {
        snprintf(err, errlen, "%s",
                 c->state == LOST ? "connection lost"
                                  : "the connection is still busy with an abandoned query");
        return -1;
    }
    keep_params(c, n, values, lengths, formats);
    int ok;
    if (prepare) {
        int found = -1;
        for (size_t i = 0; i < c->nstmts && found < 0; i++)
            if (strcmp(c->stmts[i].sql, sql) == 0)
                found = (int)i;
        if (found < 0 && c->nstmts < MAX_STMTS) {
            struct stmt *s = &c->stmts[c->nstmts];
            s->sql = xstrdup(sql);
            snprintf(s->name, sizeof(s->name), "ws_%u", c->next_name++);
            c->pend.stmt = (int)c->nstmts++;
            c->preparing = true;
            ok = PQsendPrepare(c->pg, s->name, sql, n, NULL);
        } else if (found >= 0) {
            c->pend.stmt = found;
            ok = send_prepared(c) == 0;
        } else { /* the cache is full: an unnamed statement */
            prepare = false;
        }
    }
    if (!prepare)
        ok = PQsendQueryParams(c->pg, sql, n, NULL, (const char *const *)c->pend.values,
                               c->pend.lengths, c->pend.formats, 0);
    int fl = ok ? PQflush(c->pg) : -1;
    if (fl < 0) {
        copy_msg(err, errlen, "", PQerrorMessage(c->pg));
        if (c->preparing) {
            c->preparing = false;
            drop_stmt(c, c->pend.stmt);
        }
        clear_pending(c);
        if (PQstatus(c->pg) == CONNECTION_BAD)
            close_conn(c);
        return -1;
    }
    c->state = BUSY;
    c->done = done;
    c->ud = ud;
    watch(c, fl ? EV_READ | EV_WRITE : EV_READ);
    return 0;
}

static void *cancel_thread(void *arg)
{
    PGcancel *k = arg;
    char buf[256];
    PQcancel(k, buf, sizeof(buf));
    PQfreeCancel(k);
    return NULL;
}

bool ws_pg_conn_abandon(struct ws_pg_conn *c)
{
    if (c->state != BUSY)
        return false;
    c->done = NULL;
    c->state = DRAINING;
    /* PQcancel opens a connection of its own and blocks until the server took the request */
    PGcancel *k = PQgetCancel(c->pg);
    pthread_t th;
    pthread_attr_t attr;
    if (k && pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &attr, cancel_thread, k) != 0)
            PQfreeCancel(k); /* the drain's timer bounds the wait instead */
        pthread_attr_destroy(&attr);
    } else if (k) {
        PQfreeCancel(k);
    }
    ws_timer_start(c->p->loop, &c->timer, c->p->connect_timeout, 0);
    return true;
}

bool ws_pg_conn_ready(const struct ws_pg_conn *c)
{
    return c->state == IDLE;
}

void ws_pg_conn_release(struct ws_pg_conn *c)
{
    if (!c->out)
        return;
    ws_pg_conn_abandon(c);
    c->out = false;
    c->p->nout--;
    if (c->state == LOST)
        free_conn(c);
    else
        settle(c);
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
