/* Listeners, accept, the per-iteration flush and sweep, signals and graceful shutdown. The
 * prepare watcher runs once per loop iteration after all callbacks: every connection written to
 * in that iteration is flushed with one writev, and dead connections are freed. */
#include "ws/server.h"

#include "ws/buf.h"
#include "ws/bus.h"
#include "ws/clock.h"
#include "ws/err.h"
#include "ws/frame.h"
#include "ws/log.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define ACCEPT_BATCH 128
#define SHUTDOWN_BATCH 500
/* Sockets allowed beyond max_connections: room to answer 503 instead of refusing silently. */
#define ACCEPT_HEADROOM 256

static void on_accept(struct ev_loop *loop, ev_io *w, int revents);

/* Splits "host:port", "[v6]:port" or ":port" into host (may be empty) and port. */
static int split_addr(const char *addr, char *host, size_t hostcap, char *port, size_t portcap)
{
    const char *colon;
    const char *h = addr;
    size_t hlen;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':')
            return WS_E_INVAL;
        h = addr + 1;
        hlen = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon)
            return WS_E_INVAL;
        hlen = (size_t)(colon - addr);
    }
    if (hlen >= hostcap || strlen(colon + 1) >= portcap || !colon[1])
        return WS_E_INVAL;
    memcpy(host, h, hlen);
    host[hlen] = 0;
    strcpy(port, colon + 1);
    return 0;
}

static int open_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sun.sun_path)) {
        snprintf(err, errlen, "listen unix:%s: path too long", path);
        return -1;
    }
    strcpy(sun.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "listen unix:%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path); /* a stale socket from an earlier run */
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, SOMAXCONN) < 0) {
        snprintf(err, errlen, "listen unix:%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int open_tcp(const char *addr, bool reuseport, char *err, size_t errlen)
{
    char host[256], port[16];
    if (split_addr(addr, host, sizeof(host), port, sizeof(port)) < 0) {
        snprintf(
            err, errlen,
            "listen %s: expected host:port, [v6]:port or unix:/path (tls: in front for wss://)",
            addr);
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "listen %s: %s", addr, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    int saved = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        /* --workers: every worker binds the same port; the kernel spreads the connections */
        if (reuseport)
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        /* frames go out as they are made (no Nagle); an accepted socket inherits the option
         * from its listener, which saves a system call per connection */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "listen %s: %s", addr, strerror(saved));
    return fd;
}

/* addr is "host:port", "[v6]:port" or "unix:/path", with "tls:" in front for a wss:// listener
 * (without any "tls:" listener, a configured certificate makes every listener TLS). */
static int open_listener(struct ws_server *srv, const char *addr, bool all_tls, bool ops, char *err,
                         size_t errlen)
{
    struct ws_listener *l = &srv->listeners[srv->nlisteners];
    bool tls = all_tls && !ops;
    l->ops = ops;
    if (strncmp(addr, "tls:", 4) == 0) {
        tls = true;
        addr += 4;
    }
    if (tls && !srv->tls) {
        snprintf(err, errlen, "listen tls:%s: needs tls_cert and tls_key", addr);
        return WS_E_INVAL;
    }
    l->tls = tls;
    bool is_unix = strncmp(addr, "unix:", 5) == 0;
    int fd = is_unix ? open_unix(addr + 5, err, errlen)
                     : open_tcp(addr, srv->env.cfg.workers != 1, err, errlen);
    if (fd < 0)
        return WS_E_IO;
    l->fd = fd;
    l->addr = ws_xstrndup(addr, strlen(addr));
    l->unix_path = is_unix ? ws_xstrndup(addr + 5, strlen(addr + 5)) : NULL;
    ev_io_init(&l->io, on_accept, fd, EV_READ);
    l->io.data = srv;
    ev_io_start(srv->env.loop, &l->io);
    srv->nlisteners++;
    struct ws_log_line line;
    ws_log_begin(&line, WS_LOG_INFO, "listen");
    ws_log_cstr(&line, "addr", addr);
    ws_log_cstr(&line, "scheme", ops ? "http" : tls ? "wss" : "ws");
    if (ops)
        ws_log_cstr(&line, "serves", "/metrics /healthz");
    ws_log_end(&line);
    return 0;
}

/* Closes the app's listeners, and the metrics listener too unless keep_ops (a drain keeps
 * answering health probes there). */
static void close_listeners(struct ws_server *srv, bool keep_ops)
{
    size_t kept = 0;
    for (size_t i = 0; i < srv->nlisteners; i++) {
        struct ws_listener *l = &srv->listeners[i];
        if (keep_ops && l->ops) {
            ev_io_stop(srv->env.loop, &l->io); /* libev knows a watcher by its address */
            srv->listeners[kept++] = *l;
            continue;
        }
        ev_io_stop(srv->env.loop, &l->io);
        close(l->fd);
        if (l->unix_path)
            unlink(l->unix_path);
        free(l->addr);
        free(l->unix_path);
    }
    srv->nlisteners = kept;
    for (size_t i = 0; i < kept; i++) /* the watcher moved with its listener */
        ev_io_start(srv->env.loop, &srv->listeners[i].io);
}

static void set_accepting(struct ws_server *srv, bool on)
{
    for (size_t i = 0; i < srv->nlisteners; i++) {
        if (on)
            ev_io_start(srv->env.loop, &srv->listeners[i].io);
        else
            ev_io_stop(srv->env.loop, &srv->listeners[i].io);
    }
}

/* Out of descriptors: release the spare, accept and drop one pending client so it is told
 * instead of left hanging, then pause accepting briefly rather than spin on a ready listener. */
static void on_fd_exhausted(struct ws_server *srv, int lfd)
{
    if (srv->spare_fd >= 0) {
        close(srv->spare_fd);
        int fd = accept(lfd, NULL, NULL);
        if (fd >= 0)
            close(fd);
        srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    ws_log_msg(WS_LOG_WARN, "accept_paused", "out of file descriptors");
    set_accepting(srv, false);
    ws_timer_start(srv->env.loop, &srv->accept_retry, 0.1, 0);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_listener *l = (struct ws_listener *)w;
    struct ws_server *srv = w->data;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(w->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                on_fd_exhausted(srv, w->fd);
            else if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN and the rest */
        }
        if ((srv->env.draining && !l->ops) ||
            srv->env.conns.count >= (size_t)srv->env.cfg.max_connections + ACCEPT_HEADROOM) {
            close(fd);
            continue;
        }
        void *tls = l->tls ? ws_tls_session_new(srv->tls, fd) : NULL;
        if (l->tls && !tls) {
            close(fd);
            continue;
        }
        struct ws_conn *c = ws_conn_new(&srv->env, fd, (struct sockaddr *)&ss, len,
                                        l->tls ? &ws_transport_tls : &ws_transport_plain, tls);
        c->ops_port = l->ops;
    }
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    struct ws_server *srv = w->data;
    ws_conn_run_pending(&srv->env);
    /* SPEC §4a: a graceful shutdown also waits for the app's waiting handlers */
    if (srv->env.draining && srv->env.conns.count == 0 &&
        !(srv->env.ops->busy && srv->env.ops->busy(srv->env.app)))
        ev_break(loop, EVBREAK_ALL);
}

static void shutdown_batch(struct ws_server *srv)
{
    size_t n = 0;
    for (struct ws_registry_node *node = srv->env.conns.head; node && n < SHUTDOWN_BATCH;
         node = node->next) {
        struct ws_conn *c = (struct ws_conn *)node;
        if (c->state == WS_CONN_OPEN) {
            ws_conn_close(c, 1001, "server shutting down", 20);
            n++;
        } else if (c->state == WS_CONN_CONNECTING) {
            ws_conn_abort(c, 1001, "server shutting down");
        }
    }
    if (n == SHUTDOWN_BATCH) {
        /* more to go: continue on the next iteration so the loop keeps serving writes */
        ws_timer_start(srv->env.loop, &srv->batch_timer, 0, 0);
    }
}

static void on_shutdown_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct ws_server *srv = w->data;
    /* shutdown_timeout reached: drop whoever is left */
    for (struct ws_registry_node *node = srv->env.conns.head; node; node = node->next)
        ws_conn_abort((struct ws_conn *)node, 1001, "shutdown timeout");
    /* waiting handlers end: their calls return nil, "shutdown" and they finish on the next
     * iterations, which on_prepare ends once they have; a handler that does not is given one
     * more second */
    if (!srv->cancelled && srv->env.ops->cancel && srv->env.ops->busy &&
        srv->env.ops->busy(srv->env.app)) {
        srv->cancelled = true;
        srv->env.ops->cancel(srv->env.app, "shutdown");
        ws_timer_start(loop, w, 1, 0);
        return;
    }
    ev_break(loop, EVBREAK_ALL);
}

static void on_batch_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    shutdown_batch(w->data);
}

static void on_accept_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_server *srv = w->data;
    if (!srv->env.draining)
        set_accepting(srv, true);
}

void ws_server_shutdown(struct ws_server *srv, const char *reason)
{
    if (srv->env.draining)
        return;
    srv->env.draining = true;
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_INFO, "shutdown");
    ws_log_cstr(&l, "reason", reason);
    ws_log_u64(&l, "connections", srv->env.conns.count);
    ws_log_end(&l);
    /* SPEC §7: stop accepting first, then the app's shutdown, then close in batches */
    close_listeners(srv, true);
    if (srv->env.ops->shutdown)
        srv->env.ops->shutdown(srv->env.app, reason);
    ws_timer_start(srv->env.loop, &srv->shutdown_timer, srv->env.cfg.shutdown_timeout, 0);
    shutdown_batch(srv);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_server *srv = w->data;
    if (w->signum == SIGHUP) {
        if (srv->tls) {
            /* new certificate and key for new connections; on failure the old ones stay */
            char err[512];
            bool ok = ws_tls_ctx_reload(srv->tls, srv->env.cfg.tls_cert, srv->env.cfg.tls_key, err,
                                        sizeof(err)) == 0;
            snprintf(srv->reload_error, sizeof(srv->reload_error), "%s", ok ? "" : err);
            ws_log_msg(ok ? WS_LOG_INFO : WS_LOG_ERROR, ok ? "tls_reloaded" : "tls_reload_failed",
                       ok ? srv->env.cfg.tls_cert : err);
        }
        if (srv->env.ops->reload)
            srv->env.ops->reload(srv->env.app);
        return;
    }
    ws_server_shutdown(srv, w->signum == SIGINT ? "SIGINT" : "SIGTERM");
}

struct ws_server *ws_server_new(struct ev_loop *loop, const struct ws_config *cfg,
                                const struct ws_app_ops *ops, void *app, char *err, size_t errlen)
{
    struct ws_server *srv = ws_xcalloc(1, sizeof(*srv));
    ws_env_init(&srv->env, loop, cfg, ops, app);
    srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (srv->env.cfg.tls_cert) {
        srv->tls = ws_tls_ctx_new(srv->env.cfg.tls_cert, srv->env.cfg.tls_key, err, errlen);
        if (!srv->tls) {
            ws_server_free(srv);
            return NULL;
        }
    }
    const struct ws_string_list *listen = &srv->env.cfg.listen;
    const char *fallback = "0.0.0.0:8080";
    bool any_tls = false;
    for (size_t i = 0; i < listen->n; i++)
        any_tls = any_tls || strncmp(listen->items[i], "tls:", 4) == 0;
    for (size_t i = 0; i < (listen->n ? listen->n : 1); i++) {
        if (open_listener(srv, listen->n ? listen->items[i] : fallback, srv->tls && !any_tls, false,
                          err, errlen) < 0) {
            ws_server_free(srv);
            return NULL;
        }
    }
    if (srv->env.cfg.metrics_listen &&
        open_listener(srv, srv->env.cfg.metrics_listen, false, true, err, errlen) < 0) {
        ws_server_free(srv);
        return NULL;
    }
    ev_prepare_init(&srv->prepare, on_prepare);
    srv->prepare.data = srv;
    ev_prepare_start(loop, &srv->prepare);
    ev_signal_init(&srv->sig_term, on_signal, SIGTERM);
    ev_signal_init(&srv->sig_int, on_signal, SIGINT);
    ev_signal_init(&srv->sig_hup, on_signal, SIGHUP);
    ev_signal *sigs[] = {&srv->sig_term, &srv->sig_int, &srv->sig_hup};
    for (size_t i = 0; i < 3; i++) {
        sigs[i]->data = srv;
        ev_signal_start(loop, sigs[i]);
    }
    ev_init(&srv->shutdown_timer, on_shutdown_timer);
    srv->shutdown_timer.data = srv;
    ev_init(&srv->accept_retry, on_accept_retry);
    srv->accept_retry.data = srv;
    ev_init(&srv->batch_timer, on_batch_timer);
    srv->batch_timer.data = srv;
    return srv;
}

void ws_server_free(struct ws_server *srv)
{
    if (!srv)
        return;
    for (struct ws_registry_node *node = srv->env.conns.head; node; node = node->next)
        ws_conn_abort((struct ws_conn *)node, 1001, "server stopped");
    if (srv->env.ops->cancel)
        srv->env.ops->cancel(srv->env.app, "shutdown");
    /* the app holds no connection any more: each one still held is reported and freed now */
    srv->env.stopped = true;
    for (struct ws_registry_node *node = srv->env.conns.head; node; node = node->next)
        ws_conn_unhold((struct ws_conn *)node);
    ws_conn_run_pending(&srv->env);
    close_listeners(srv, false);
    ev_prepare_stop(srv->env.loop, &srv->prepare);
    ev_signal_stop(srv->env.loop, &srv->sig_term);
    ev_signal_stop(srv->env.loop, &srv->sig_int);
    ev_signal_stop(srv->env.loop, &srv->sig_hup);
    ws_timer_stop(srv->env.loop, &srv->shutdown_timer);
    ws_timer_stop(srv->env.loop, &srv->accept_retry);
    ws_timer_stop(srv->env.loop, &srv->batch_timer);
    if (srv->spare_fd >= 0)
        close(srv->spare_fd);
    ws_tls_ctx_free(srv->tls);
    srv->env.topics.on_change = NULL;
    if (srv->bus)
        srv->bus->ops->free(srv->bus);
    ws_env_free(&srv->env);
    free(srv);
}

void ws_server_apply_config(struct ws_server *srv, const struct ws_config *cfg)
{
    struct ws_config next;
    ws_config_copy(&next, cfg);
    /* listeners and every other option that is not live stay as the process started */
    for (const struct ws_option *opt = ws_options; opt->name; opt++)
        if (!opt->live)
            ws_config_copy_option(&next, &srv->env.cfg, opt);
    ws_config_free(&srv->env.cfg);
    srv->env.cfg = next;
    ws_env_parse_trusted(&srv->env);
    ws_log_setup((enum ws_log_level)ws_log_level_parse(srv->env.cfg.log_level),
                 (enum ws_log_format)ws_log_format_parse(srv->env.cfg.log_format));
    for (struct ws_registry_node *node = srv->env.conns.head; node; node = node->next)
        ws_conn_apply_config((struct ws_conn *)node);
}

struct ws_conn *ws_server_get(struct ws_server *srv, uint64_t id)
{
    struct ws_conn *c = (struct ws_conn *)ws_registry_get(&srv->env.conns, id);
    return c && c->state != WS_CONN_CLOSED ? c : NULL;
}

static size_t broadcast_local(struct ws_server *srv, uint8_t opcode, const void *data, size_t len,
                              uint64_t except_id, bool (*filter)(void *ctx, struct ws_conn *c),
                              void *ctx)
{
    struct ws_frameset set;
    ws_frameset_init(&set, opcode, data, len, srv->env.deflate_shared, &srv->env.zbuf);
    size_t reached = 0;
    for (struct ws_registry_node *node = srv->env.conns.head; node; node = node->next) {
        struct ws_conn *c = (struct ws_conn *)node;
        if (c->state != WS_CONN_OPEN || node->id == except_id)
            continue;
        if (filter && !filter(ctx, c))
            continue;
        if (ws_conn_send_set(c, &set) >= 0)
            reached++;
    }
    ws_frameset_free(&set);
    return reached;
}

static size_t publish_local(struct ws_server *srv, const char *topic, size_t topic_len,
                            uint8_t opcode, const void *data, size_t len, uint64_t except_id)
{
    struct ws_topic *t = ws_topics_find(&srv->env.topics, topic, topic_len);
    if (!t)
        return 0;
    struct ws_frameset set;
    ws_frameset_init(&set, opcode, data, len, srv->env.deflate_shared, &srv->env.zbuf);
    size_t reached = 0;
    for (size_t i = 0; i < t->nsubs; i++) {
        struct ws_conn *c = (struct ws_conn *)((char *)t->subs[i] - offsetof(struct ws_conn, sub));
        if (c->node.id == except_id)
            continue;
        if (ws_conn_send_set(c, &set) >= 0)
            reached++;
    }
    ws_frameset_free(&set);
    return reached;
}

static void bus_send(struct ws_server *srv, uint8_t kind, const char *topic, size_t topic_len,
                     uint8_t opcode, const void *data, size_t len)
{
    if (!srv->bus)
        return;
    struct ws_bus_msg m = {srv->bus->origin, kind, opcode, topic, topic_len, data, len};
    srv->bus->ops->publish(srv->bus, &m);
}

size_t ws_server_broadcast(struct ws_server *srv, uint8_t opcode, const void *data, size_t len,
                           uint64_t except_id, bool (*filter)(void *ctx, struct ws_conn *c),
                           void *ctx)
{
    size_t n = broadcast_local(srv, opcode, data, len, except_id, filter, ctx);
    /* a filter is Lua in this process: other processes cannot apply it, so a filtered
     * broadcast stays here rather than reach connections the filter would have excluded */
    if (!filter)
        bus_send(srv, WS_BUS_BROADCAST, NULL, 0, opcode, data, len);
    return n;
}

size_t ws_server_publish(struct ws_server *srv, const char *topic, size_t topic_len, uint8_t opcode,
                         const void *data, size_t len, uint64_t except_id)
{
    size_t n = publish_local(srv, topic, topic_len, opcode, data, len, except_id);
    bus_send(srv, WS_BUS_TOPIC, topic, topic_len, opcode, data, len);
    return n;
}

/* A message from another process: delivered here only. */
static void on_bus_message(void *ctx, const struct ws_bus_msg *m)
{
    struct ws_server *srv = ctx;
    uint8_t opcode = m->opcode == WS_OP_BINARY ? WS_OP_BINARY : WS_OP_TEXT;
    if (m->kind == WS_BUS_BROADCAST)
        broadcast_local(srv, opcode, m->data, m->len, 0, NULL, NULL);
    else
        publish_local(srv, m->topic, m->topic_len, opcode, m->data, m->len, 0);
}

static void on_topic_change(void *ctx, const struct ws_topic *topic, bool created)
{
    struct ws_server *srv = ctx;
    if (created)
        srv->bus->ops->subscribe(srv->bus, topic->name, topic->len);
    else
        srv->bus->ops->unsubscribe(srv->bus, topic->name, topic->len);
}

void ws_server_set_bus(struct ws_server *srv, struct ws_bus *bus)
{
    srv->bus = bus;
    bus->deliver = on_bus_message;
    bus->ctx = srv;
    srv->env.topics.on_change = on_topic_change;
    srv->env.topics.ctx = srv;
}
