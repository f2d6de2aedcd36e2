/* The log lines of a connection's life: one access line per HTTP answer (the 101 included),
 * one close line per WebSocket connection, and events (timeouts, protocol errors) carrying the
 * connection's id and peer. Formatting only: when to log is the connection's call. */
#include "ws/connlog.h"

#include "ws/clock.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

const char *ws_connlog_peer(const struct ws_conn *c, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN];
    switch (c->peer.sa.sa_family) {
    case AF_INET:
        inet_ntop(AF_INET, &c->peer.in4.sin_addr, ip, sizeof(ip));
        if (c->peer.in4.sin_port) /* no port: an address forwarded by a trusted proxy */
            snprintf(out, cap, "%s:%u", ip, ntohs(c->peer.in4.sin_port));
        else
            snprintf(out, cap, "%s", ip);
        break;
    case AF_INET6:
        inet_ntop(AF_INET6, &c->peer.in6.sin6_addr, ip, sizeof(ip));
        if (c->peer.in6.sin6_port)
            snprintf(out, cap, "[%s]:%u", ip, ntohs(c->peer.in6.sin6_port));
        else
            snprintf(out, cap, "[%s]", ip);
        break;
    default:
        snprintf(out, cap, "unix");
    }
    return out;
}

void ws_connlog_event(struct ws_conn *c, enum ws_log_level level, const char *event, int code,
                      const char *reason)
{
    if (!ws_log_enabled(level))
        return;
    char peer[64];
    struct ws_log_line l;
    ws_log_begin(&l, level, event);
    ws_log_u64(&l, "conn", c->node.id);
    ws_log_cstr(&l, "peer", ws_connlog_peer(c, peer, sizeof(peer)));
    if (code)
        ws_log_i64(&l, "code", code);
    if (reason)
        ws_log_cstr(&l, "reason", reason);
    ws_log_ms(&l, "ms", ws_clock_now(c->env->loop) - c->clock.started);
    ws_log_end(&l);
}

/* The access log: one line per HTTP answer, the 101 included. req (NULL when the request could
 * not be parsed) gives the user agent; bytes_out is the answer's size. */
void ws_connlog_access(struct ws_conn *c, int status, const char *reason,
                       const struct ws_http_request *req, size_t bytes_out)
{
    enum ws_log_level level = status >= 500 ? WS_LOG_WARN : WS_LOG_INFO;
    if (!ws_log_enabled(level))
        return;
    char peer[64];
    struct ws_log_line l;
    ws_log_begin(&l, level, "access");
    ws_log_u64(&l, "conn", c->node.id);
    ws_log_cstr(&l, "peer", ws_connlog_peer(c, peer, sizeof(peer)));
    ws_log_i64(&l, "status", status);
    /* the path without its query: query strings carry tokens that logs must not keep */
    const char *path = c->path ? c->path : "";
    ws_log_str(&l, "path", path, strcspn(path, "?"));
    if (reason)
        ws_log_cstr(&l, "reason", reason);
    const struct ws_span *ua = req ? ws_http_field(req, WS_HTTP_USER_AGENT) : NULL;
    if (ua)
        ws_log_str(&l, "ua", ua->p, ua->n);
    ws_log_u64(&l, "bytes_in", c->bytes_in);
    ws_log_u64(&l, "bytes_out", bytes_out);
    ws_log_ms(&l, "ms", ws_clock_now(c->env->loop) - c->clock.started);
    ws_log_end(&l);
}

/* The close line: one per WebSocket connection, with who closed it and what it carried. */
void ws_connlog_close(struct ws_conn *c, int code)
{
    if (!ws_log_enabled(WS_LOG_INFO))
        return;
    static const char *const by[] = {"drop", "server", "peer"}; /* enum ws_conn_closer */
    char peer[64];
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_INFO, "close");
    ws_log_u64(&l, "conn", c->node.id);
    ws_log_cstr(&l, "peer", ws_connlog_peer(c, peer, sizeof(peer)));
    ws_log_i64(&l, "code", code);
    if (c->close_reason)
        ws_log_cstr(&l, "reason", c->close_reason);
    ws_log_cstr(&l, "by", by[c->closed_by]);
    ws_log_u64(&l, "bytes_in", c->bytes_in);
    ws_log_u64(&l, "bytes_out", c->bytes_out);
    ws_log_u64(&l, "messages_in", c->messages_in);
    ws_log_u64(&l, "messages_out", c->messages_out);
    ws_log_ms(&l, "ms", ws_clock_now(c->env->loop) - c->clock.started);
    ws_log_end(&l);
}
