/* getaddrinfo(3) off the loop. The lookup is shared by the loop and one detached thread through a
 * reference count, so either may finish first: a cancelled lookup is simply left to the thread,
 * which frees it when getaddrinfo returns. No cancellation inside getaddrinfo (glibc has none). */
#include "ws/resolve.h"

#include "ws/buf.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ws_resolve {
    atomic_int refs; /* the loop's and the thread's */
    int fds[2];      /* the thread writes one byte when the answer is in */
    ev_io io;
    struct ev_loop *loop;
    char *host, *port;
    struct addrinfo *res; /* written by the thread before its byte, read by the loop after */
    int rc;
    ws_resolve_fn done;
    void *ud;
};

static void unref(struct ws_resolve *r)
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

static void *lookup(void *arg)
{
    struct ws_resolve *r = arg;
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

static void on_answer(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct ws_resolve *r = w->data;
    char b;
    if (read(r->fds[0], &b, 1) != 1)
        return; /* spurious wake-up */
    ev_io_stop(loop, &r->io);
    struct addrinfo *res = r->res;
    r->res = NULL;
    ws_resolve_fn done = r->done;
    void *ud = r->ud;
    int rc = r->rc;
    unref(r);
    done(ud, rc == 0 ? res : NULL, rc);
}

struct ws_resolve *ws_resolve_start(struct ev_loop *loop, const char *host, const char *port,
                                    ws_resolve_fn done, void *ud)
{
    struct ws_resolve *r = ws_xcalloc(1, sizeof(*r));
    if (pipe2(r->fds, O_CLOEXEC | O_NONBLOCK) < 0) {
        free(r);
        return NULL;
    }
    atomic_init(&r->refs, 2);
    r->loop = loop;
    r->host = ws_xstrndup(host, strlen(host));
    r->port = ws_xstrndup(port, strlen(port));
    r->done = done;
    r->ud = ud;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* the thread takes no signal: they belong to the loop's thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t th;
    int rc = pthread_create(&th, &attr, lookup, r);
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
    ev_io_start(loop, &r->io);
    return r;
}

void ws_resolve_cancel(struct ws_resolve *r)
{
    ev_io_stop(r->loop, &r->io);
    unref(r);
}
