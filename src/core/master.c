/* The master of --workers N: forks the workers, restarts one that dies (backing off when it keeps
 * dying young), forwards SIGHUP, SIGUSR1 (after reopening its own log file) and SIGTERM, and
 * relays hub frames between workers. It runs a
 * plain poll(2) loop of its own and never loads the app, so a worker's crash cannot take it down.
 */
#include "ws/master.h"

#include "ws/buf.h"
#include "ws/log.h"
#include "ws/notify.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 1024
#define RELAY_QUEUE_MAX (64u * 1024 * 1024)
#define FRAME_MAX (256u * 1024 * 1024)
#define YOUNG_SECONDS 2.0 /* a worker dying younger than this counts as crashing */

struct worker {
    pid_t pid;  /* 0 while down */
    int starts; /* times started */
    int fd;     /* hub socket, -1 while down */
    struct ws_buf in, out;
    double started;
    double restart_at; /* > 0: due for a restart then */
    int crashes;       /* consecutive young deaths */
};

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t ignored = write(sig_pipe[1], &b, 1);
    (void)ignored;
    errno = saved;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void log_worker(enum ws_log_level level, const char *event, int index, pid_t pid,
                       const char *detail)
{
    struct ws_log_line l;
    ws_log_begin(&l, level, event);
    ws_log_i64(&l, "worker", index);
    ws_log_i64(&l, "pid", pid);
    if (detail)
        ws_log_cstr(&l, "detail", detail);
    ws_log_end(&l);
}

struct master {
    struct worker w[MAX_WORKERS];
    int n;
    bool stopping;
    int exit_code;
    ws_worker_fn fn;
    void *arg;
};

static void set_handlers(void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    int sigs[] = {SIGHUP, SIGTERM, SIGINT, SIGCHLD, SIGUSR1};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaction(sigs[i], &sa, NULL);
}

static void spawn(struct master *m, int i)
{
    struct worker *w = &m->w[i];
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        log_worker(WS_LOG_ERROR, "worker_spawn_failed", i + 1, 0, strerror(errno));
        w->restart_at = now_s() + 1;
        return;
    }
    pid_t master_pid = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_worker(WS_LOG_ERROR, "worker_spawn_failed", i + 1, 0, strerror(errno));
        close(sv[0]);
        close(sv[1]);
        w->restart_at = now_s() + 1;
        return;
    }
    if (pid == 0) {
        /* the worker: nothing of the master's survives but the hub end */
        set_handlers(SIG_DFL);
        signal(SIGUSR1, SIG_IGN); /* not fatal before the worker's loop reopens its log on it */
        close(sig_pipe[0]);
        close(sig_pipe[1]);
        for (int k = 0; k < m->n; k++)
            if (m->w[k].fd >= 0)
                close(m->w[k].fd);
        close(sv[0]);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != master_pid)
            _exit(0);
        _exit(m->fn(m->arg, i + 1, sv[1]));
    }
    close(sv[1]);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    w->pid = pid;
    w->fd = sv[0];
    w->in.len = w->out.len = 0;
    w->started = now_s();
    w->restart_at = 0;
    w->starts++;
    log_worker(WS_LOG_INFO, "worker_started", i + 1, pid, NULL);
}

static void send_all(struct master *m, int sig);

static void worker_down(struct master *m, int i, int status)
{
    struct worker *w = &m->w[i];
    char detail[64];
    if (WIFSIGNALED(status))
        snprintf(detail, sizeof(detail), "killed by signal %d", WTERMSIG(status));
    else
        snprintf(detail, sizeof(detail), "exit code %d", WEXITSTATUS(status));
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    pid_t pid = w->pid;
    w->pid = 0;
    if (m->stopping) {
        log_worker(WS_LOG_INFO, "worker_exited", i + 1, pid, detail);
        return;
    }
    /* A first start that exits at once with a start-up error (1: cannot load or bind, 2: bad
     * configuration) will fail the same way every time: give up and report it. */
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
    if (w->starts == 1 && (code == 1 || code == 2) && now_s() - w->started < YOUNG_SECONDS) {
        log_worker(WS_LOG_ERROR, "worker_failed_to_start", i + 1, pid, detail);
        m->stopping = true;
        m->exit_code = code;
        send_all(m, SIGTERM);
        return;
    }
    /* restart at once, or later and later while it keeps dying young */
    double lived = now_s() - w->started;
    w->crashes = lived < YOUNG_SECONDS ? w->crashes + 1 : 0;
    double delay = w->crashes ? (double)(1 << (w->crashes < 5 ? w->crashes : 5)) : 0.1;
    w->restart_at = now_s() + delay;
    log_worker(WS_LOG_WARN, "worker_died", i + 1, pid, detail);
}

static void reap(struct master *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        for (int i = 0; i < m->n; i++)
            if (m->w[i].pid == pid)
                worker_down(m, i, status);
}

static void send_all(struct master *m, int sig)
{
    for (int i = 0; i < m->n; i++)
        if (m->w[i].pid > 0)
            kill(m->w[i].pid, sig);
}

static void flush_worker(struct worker *w)
{
    while (w->out.len && w->fd >= 0) {
        ssize_t n = send(w->fd, w->out.data, w->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0)
            return; /* EAGAIN: poll for POLLOUT; errors show up as the worker's death */
        ws_buf_consume(&w->out, (size_t)n);
    }
}

/* Reads frames from worker i and queues each for every other live worker. */
static void relay_from(struct master *m, int i)
{
    struct worker *w = &m->w[i];
    uint8_t chunk[65536];
    ssize_t r = recv(w->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        /* the worker closed its end (it uses Redis, or it is exiting): stop polling it */
        close(w->fd);
        w->fd = -1;
        return;
    }
    if (r < 0)
        return;
    ws_buf_append(&w->in, chunk, (size_t)r);
    size_t off = 0;
    while (w->in.len - off >= 4) {
        const uint8_t *p = w->in.data + off;
        size_t n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        if (n > FRAME_MAX) {
            log_worker(WS_LOG_ERROR, "hub_bad_frame", i + 1, w->pid, "frame too large");
            kill(w->pid, SIGTERM);
            w->in.len = 0;
            return;
        }
        if (w->in.len - off - 4 < n)
            break;
        for (int k = 0; k < m->n; k++) {
            struct worker *to = &m->w[k];
            if (k == i || to->fd < 0)
                continue;
            if (to->out.len + n + 4 > RELAY_QUEUE_MAX)
                continue; /* that worker is not reading: drop rather than grow */
            ws_buf_append(&to->out, p, n + 4);
            flush_worker(to);
        }
        off += n + 4;
    }
    ws_buf_consume(&w->in, off);
}

static bool any_alive(const struct master *m)
{
    for (int i = 0; i < m->n; i++)
        if (m->w[i].pid > 0)
            return true;
    return false;
}

int ws_master_run(int workers, double shutdown_timeout, ws_worker_fn fn, void *arg)
{
    static struct master m;
    if (workers > MAX_WORKERS)
        workers = MAX_WORKERS;
    m.n = workers;
    m.fn = fn;
    m.arg = arg;
    if (pipe2(sig_pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        perror("wsserver: pipe");
        return 1;
    }
    for (int i = 0; i < m.n; i++) {
        m.w[i].fd = -1;
        ws_buf_init(&m.w[i].in);
        ws_buf_init(&m.w[i].out);
    }
    set_handlers(on_signal);
    ws_log_msg(WS_LOG_INFO, "master_started", "supervising workers");
    for (int i = 0; i < m.n; i++)
        spawn(&m, i);

    double deadline = 0;
    struct pollfd pfd[MAX_WORKERS + 1];
    int owner[MAX_WORKERS + 1];
    for (;;) {
        if (m.stopping && !any_alive(&m))
            break;
        double now = now_s();
        if (m.stopping && now >= deadline) {
            send_all(&m, SIGKILL);
            deadline = now + 1e9;
        }
        double wake = m.stopping ? deadline : 0;
        for (int i = 0; i < m.n && !m.stopping; i++) {
            if (m.w[i].pid == 0 && m.w[i].restart_at > 0) {
                if (m.w[i].restart_at <= now)
                    spawn(&m, i);
                else if (!wake || m.w[i].restart_at < wake)
                    wake = m.w[i].restart_at;
            }
        }
        int np = 0;
        pfd[np] = (struct pollfd){.fd = sig_pipe[0], .events = POLLIN};
        owner[np++] = -1;
        for (int i = 0; i < m.n; i++) {
            if (m.w[i].fd < 0)
                continue;
            pfd[np] = (struct pollfd){.fd = m.w[i].fd,
                                      .events = (short)(POLLIN | (m.w[i].out.len ? POLLOUT : 0))};
            owner[np++] = i;
        }
        int timeout = -1;
        if (wake)
            timeout = wake > now ? (int)((wake - now) * 1000) + 1 : 0;
        if (poll(pfd, (nfds_t)np, timeout) < 0 && errno != EINTR)
            break;
        for (int k = 1; k < np; k++) {
            int i = owner[k];
            if (pfd[k].revents & POLLIN)
                relay_from(&m, i);
            if (pfd[k].revents & POLLOUT)
                flush_worker(&m.w[i]);
        }
        if (pfd[0].revents & POLLIN) {
            unsigned char sigs[64];
            ssize_t n = read(sig_pipe[0], sigs, sizeof(sigs));
            for (ssize_t k = 0; k < n; k++) {
                if (sigs[k] == SIGCHLD) {
                    reap(&m);
                } else if (sigs[k] == SIGHUP) {
                    ws_log_msg(WS_LOG_INFO, "master_reload", "forwarding SIGHUP to the workers");
                    send_all(&m, SIGHUP);
                } else if (sigs[k] == SIGUSR1) {
                    ws_log_reopen();
                    send_all(&m, SIGUSR1);
                } else if (!m.stopping) {
                    m.stopping = true;
                    ws_notify_stopping();
                    deadline = now_s() + shutdown_timeout + 5;
                    ws_log_msg(WS_LOG_INFO, "master_shutdown", "stopping the workers");
                    send_all(&m, SIGTERM);
                }
            }
        }
    }
    for (int i = 0; i < m.n; i++) {
        ws_buf_reset(&m.w[i].in);
        ws_buf_reset(&m.w[i].out);
    }
    ws_log_msg(WS_LOG_INFO, "master_exit", "all workers stopped");
    return m.exit_code;
}
