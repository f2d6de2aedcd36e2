/* getaddrinfo(3) off the loop, then connect(2) through the addresses. The lookup is shared by the
 * loop and one detached thread through a reference count, so either may finish first: a
 * cancelled lookup is simply left to the thread, which frees it when getaddrinfo returns (glibc
 * cannot interrupt getaddrinfo). */
#include "ws/dial.h"

#include "ws/buf.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The lookup: shared by the loop and its thread. */
struct lookup {
    atomic_int refs; /* the loop's and the thread's */
    int fds[2];      /* the thread writes one byte when the answer is in */
    ev_io io;
    struct ev_loop *loop;
    char *host, *port;
    struct addrinfo *res; /* written by the thread before its byte, read by the loop after */
    int rc;
    struct ws_dial *dial;
};

struct ws_dial {
    struct ev_loop *loop;
    struct lookup *lookup; /* while resolving */
    struct addrinfo *addrs, *next;
    int fd; /* the socket being connected, or -1 */
    ev_io io;
    char host[256];
    int port;
    ws_dial_fn done;
    void *ud;
    char err[400]; /* the last failure */
};

static void unref(struct lookup *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    if (r->res)
        freeaddrinfo(r->res);
    close(r->fds[0]);
    close(r->fds[1]);
    free(r->host);
    free(r->port);
    free(r);
}

static void *run_lookup(void *arg)
{
    struct lookup *r = arg;
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV;
    r->rc = getaddrinfo(r->host, r->port, &hints, &r->res);
    ssize_t w;
    do
        w = write(r->fds[1], "x", 1);
    while (w < 0 && errno == EINTR);
    unref(r);
    return NULL;
}

/* Ends d: frees it, then tells the owner. */
static void finish(struct ws_dial *d, int fd, const char *err)
{
    char why[sizeof d->err];
    snprintf(why, sizeof why, "%s", err ? err : "");
    ws_dial_fn done = d->done;
    void *ud = d->ud;
    if (d->addrs)
        freeaddrinfo(d->addrs);
    free(d);
    done(ud, fd, fd < 0 ? why : NULL);
}

static void try_next(struct ws_dial *d);

static void on_connect(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct ws_dial *d = w->data;
    ev_io_stop(loop, w);
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(d->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == 0) {
        int fd = d->fd;
        d->fd = -1;
        finish(d, fd, NULL);
        return;
    }
    snprintf(d->err, sizeof d->err, "cannot connect to %s:%d: %s", d->host, d->port, strerror(err));
    close(d->fd);
    d->fd = -1;
    try_next(d);
}

/* Connects to the next address of the lookup. */
static void try_next(struct ws_dial *d)
{
    while (d->next) {
        struct addrinfo *ai = d->next;
        d->next = ai->ai_next;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(d->err, sizeof d->err, "cannot make a socket: %s", strerror(errno));
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS) {
            d->fd = fd;
            ev_io_init(&d->io, on_connect, fd, EV_WRITE);
            d->io.data = d;
            ev_io_start(d->loop, &d->io);
            return;
        }
        snprintf(d->err, sizeof d->err, "cannot connect to %s:%d: %s", d->host, d->port,
                 strerror(errno));
        close(fd);
    }
    finish(d, -1, d->err[0] ? d->err : "no address to connect to");
}

static void on_answer(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct lookup *r = w->data;
    char b;
    if (read(r->fds[0], &b, 1) != 1)
        return; /* spurious wake-up */
    ev_io_stop(loop, &r->io);
    struct ws_dial *d = r->dial;
    d->lookup = NULL;
    d->addrs = d->next = r->res;
    r->res = NULL;
    int rc = r->rc;
    unref(r);
    if (rc != 0) {
        snprintf(d->err, sizeof d->err, "cannot resolve %s: %s", d->host, gai_strerror(rc));
        finish(d, -1, d->err);
        return;
    }
    try_next(d);
}

/* Starts the lookup thread for d; NULL with errno set when it cannot. */
static struct lookup *lookup_start(struct ws_dial *d)
{
    struct lookup *r = ws_xcalloc(1, sizeof(*r));
    if (pipe2(r->fds, O_CLOEXEC | O_NONBLOCK) < 0) {
        free(r);
        return NULL;
    }
    char port[8];
    snprintf(port, sizeof port, "%d", d->port);
    atomic_init(&r->refs, 2);
    r->loop = d->loop;
    r->host = ws_xstrndup(d->host, strlen(d->host));
    r->port = ws_xstrndup(port, strlen(port));
    r->dial = d;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* the thread takes no signal: they belong to the loop's thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t th;
    int rc = pthread_create(&th, &attr, run_lookup, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        atomic_store(&r->refs, 1);
        unref(r);
        errno = rc;
        return NULL;
    }
    ev_io_init(&r->io, on_answer, r->fds[0], EV_READ);
    r->io.data = r;
    ev_io_start(r->loop, &r->io);
    return r;
}

struct ws_dial *ws_dial_start(struct ev_loop *loop, const char *host, int port, ws_dial_fn done,
                              void *ud)
{
    struct ws_dial *d = ws_xcalloc(1, sizeof(*d));
    d->loop = loop;
    d->fd = -1;
    snprintf(d->host, sizeof d->host, "%s", host);
    d->port = port;
    d->done = done;
    d->ud = ud;
    ev_init(&d->io, on_connect);
    d->lookup = lookup_start(d);
    if (!d->lookup) {
        free(d);
        return NULL;
    }
    return d;
}

void ws_dial_cancel(struct ws_dial *d)
{
    if (d->lookup) {
        ev_io_stop(d->loop, &d->lookup->io);
        unref(d->lookup);
    }
    ev_io_stop(d->loop, &d->io);
    if (d->fd >= 0)
        close(d->fd);
    if (d->addrs)
        freeaddrinfo(d->addrs);
    free(d);
}
