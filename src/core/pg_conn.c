/* One PostgreSQL connection on the loop: libpq in non-blocking mode, one ev_io on its socket, one
 * ev_timer bounding its connect or the drain of a cancelled query. Server-side cancels go through
 * PQcancel on a short-lived thread (libpq 15 has no non-blocking cancel), so the loop never
 * blocks. Who gets a connection, and whether it is kept, is the pool's (pg_client.c). */
#include "ws/pg_conn.h"

#include "pg_pool.h"

#include "ws/buf.h"
#include "ws/clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *w, int revents);

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
void ws_pg_conn_copy_msg(char *out, size_t cap, const char *prefix, const char *msg)
{
    size_t n = msg ? strlen(msg) : 0;
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    snprintf(out, cap, "%s%.*s", prefix, (int)n, msg ? msg : "");
}

void ws_pg_conn_watch(struct ws_pg_conn *c, int events)
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
void ws_pg_conn_close(struct ws_pg_conn *c)
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

/* c failed for the reason in msg: its query's caller hears of it; an idle connection of the pool
 * is freed. */
static void lose(struct ws_pg_conn *c, const char *why)
{
    ws_pg_result_fn done = c->state == BUSY ? c->done : NULL;
    void *ud = c->ud;
    char err[512];
    ws_pg_conn_copy_msg(err, sizeof(err), "connection lost: ", why);
    c->done = NULL;
    ws_pg_conn_close(c);
    if (!c->out)
        ws_pg_pool_drop(c);
    if (done)
        done(ud, NULL, NULL, err, "");
}

static void pg_lost(struct ws_pg_conn *c)
{
    lose(c, c->pg ? PQerrorMessage(c->pg) : "closed");
}

void ws_pg_conn_start(struct ws_pg_pool *p)
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
        ws_pg_conn_watch(c, EV_WRITE);
    }
}

static void connect_step(struct ws_pg_conn *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        ws_pg_conn_watch(c, EV_READ);
        return;
    case PGRES_POLLING_WRITING:
        ws_pg_conn_watch(c, EV_WRITE);
        return;
    case PGRES_POLLING_OK:
        break;
    default:
        ws_pg_pool_connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    if (PQsetnonblocking(c->pg, 1) != 0) {
        ws_pg_pool_connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    ws_timer_stop(c->p->loop, &c->timer);
    c->p->nconnecting--;
    c->state = IDLE;
    ws_pg_pool_settle(c);
}

/* Sends what is buffered; watches for writability until it is all out. Returns -1 when the
 * connection failed. */
static int flush(struct ws_pg_conn *c)
{
    int rc = PQflush(c->pg);
    if (rc < 0)
        return -1;
    ws_pg_conn_watch(c, rc ? EV_READ | EV_WRITE : EV_READ);
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
            ws_pg_pool_settle(c);
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
        ws_pg_conn_copy_msg(err, sizeof(err), "", msg ? msg : PQresultErrorMessage(res));
        PQclear(res);
    } else {
        ws_pg_conn_copy_msg(err, sizeof(err), "", PQerrorMessage(c->pg));
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
        ws_pg_pool_connect_failed(c, c->pg && PQstatus(c->pg) == CONNECTION_BAD
                                         ? PQerrorMessage(c->pg)
                                     : c->pg ? "timeout"
                                             : "out of memory");
    else
        lose(c, "the server did not answer a cancel in time");
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
        ws_pg_conn_copy_msg(err, errlen, "", PQerrorMessage(c->pg));
        if (c->preparing) {
            c->preparing = false;
            drop_stmt(c, c->pend.stmt);
        }
        clear_pending(c);
        if (PQstatus(c->pg) == CONNECTION_BAD)
            ws_pg_conn_close(c);
        return -1;
    }
    c->state = BUSY;
    c->done = done;
    c->ud = ud;
    ws_pg_conn_watch(c, fl ? EV_READ | EV_WRITE : EV_READ);
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
