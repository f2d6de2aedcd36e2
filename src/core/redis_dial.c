/* Where a Redis listens and how a connection to it starts: URLs parsed, a non-blocking hiredis
 * connection attached to the loop with its AUTH and SELECT queued, the reconnect back-off. Shared
 * by the pools (redis_client.c, redis_sub.c) and the Redis bus; it keeps no connection and knows
 * nothing of what runs on one. */
#include "ws/redis_dial.h"

#include "redis_hiredis.h"

#include "ws/clock.h"
#include "ws/err.h"

#include <stdio.h>
#include <string.h>

static int copy_part(char *out, size_t cap, const char *p, size_t n)
{
    if (n >= cap)
        return WS_E_INVAL;
    memcpy(out, p, n);
    out[n] = 0;
    return 0;
}

static int parse_number(const char *p, size_t n, long lo, long hi, int *out)
{
    if (n == 0 || n > 5)
        return WS_E_INVAL;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return WS_E_INVAL;
        v = v * 10 + (p[i] - '0');
    }
    if (v < lo || v > hi)
        return WS_E_INVAL;
    *out = (int)v;
    return 0;
}

int ws_redis_parse_url(const char *url, struct ws_redis_addr *addr)
{
    memset(addr, 0, sizeof(*addr));
    addr->port = 6379;
    if (strncmp(url, "unix:", 5) == 0) {
        const char *p = url + 5;
        while (p[0] == '/' && p[1] == '/')
            p++; /* unix:///run/redis.sock */
        size_t n = strcspn(p, "?");
        if (n == 0 || p[0] != '/' || copy_part(addr->path, sizeof(addr->path), p, n) < 0)
            return WS_E_INVAL;
        if (p[n] == '?') {
            const char *q = p + n + 1;
            if (strncmp(q, "db=", 3) != 0 ||
                parse_number(q + 3, strlen(q + 3), 0, 65535, &addr->db) < 0)
                return WS_E_INVAL;
        }
        return 0;
    }
    if (strncmp(url, "redis://", 8) == 0)
        url += 8;
    const char *at = strrchr(url, '@');
    if (at) {
        const char *colon = memchr(url, ':', (size_t)(at - url));
        if (!colon)
            return WS_E_INVAL; /* "user@" without a password */
        if (copy_part(addr->user, sizeof(addr->user), url, (size_t)(colon - url)) < 0 ||
            copy_part(addr->password, sizeof(addr->password), colon + 1, (size_t)(at - colon - 1)) <
                0)
            return WS_E_INVAL;
        url = at + 1;
    }
    const char *end = url + strcspn(url, "/");
    const char *colon = memchr(url, ':', (size_t)(end - url));
    size_t hlen = (size_t)((colon ? colon : end) - url);
    if (hlen == 0 || copy_part(addr->host, sizeof(addr->host), url, hlen) < 0)
        return WS_E_INVAL;
    if (colon && parse_number(colon + 1, (size_t)(end - colon - 1), 1, 65535, &addr->port) < 0)
        return WS_E_INVAL;
    if (*end == '/' && end[1] && parse_number(end + 1, strlen(end + 1), 0, 65535, &addr->db) < 0)
        return WS_E_INVAL;
    return 0;
}

void ws_redis_addr_name(const struct ws_redis_addr *addr, char *out, size_t cap)
{
    if (addr->path[0])
        snprintf(out, cap, "%s", addr->path);
    else
        snprintf(out, cap, "%s:%d", addr->host, addr->port);
}

struct redisAsyncContext *ws_redis_connect(struct ev_loop *loop, const struct ws_redis_addr *addr,
                                           ws_redis_setup_fn setup, void *privdata, int *nsetup,
                                           char *err, size_t errlen)
{
    char name[300];
    ws_redis_addr_name(addr, name, sizeof(name));
    *nsetup = 0;
    redisAsyncContext *ac = addr->path[0] ? redisAsyncConnectUnix(addr->path)
                                          : redisAsyncConnect(addr->host, addr->port);
    if (!ac) {
        snprintf(err, errlen, "redis %s: out of memory", name);
        return NULL;
    }
    if (ac->err) {
        snprintf(err, errlen, "redis %s: %s", name, ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    redisLibevAttach(loop, ac);
    /* queued now, written first once connected: nothing else runs before them */
    if (addr->password[0]) {
        if (addr->user[0])
            redisAsyncCommand(ac, setup, privdata, "AUTH %s %s", addr->user, addr->password);
        else
            redisAsyncCommand(ac, setup, privdata, "AUTH %s", addr->password);
        (*nsetup)++;
    }
    if (addr->db > 0) {
        redisAsyncCommand(ac, setup, privdata, "SELECT %d", addr->db);
        (*nsetup)++;
    }
    return ac;
}

double ws_redis_next_backoff(double *backoff)
{
    double now = *backoff;
    *backoff = now * 2 > WS_REDIS_BACKOFF_MAX ? WS_REDIS_BACKOFF_MAX : now * 2;
    return now;
}

void ws_redis_retry_later(struct ev_loop *loop, ev_timer *t, double *backoff)
{
    if (ev_is_active(t))
        return;
    ws_timer_start(loop, t, ws_redis_next_backoff(backoff), 0);
}
