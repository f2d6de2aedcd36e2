/* The state the connections of one server share, and the counters. Setting up and tearing down
 * only: the connections (conn.c) and the server (server.c) do the work. */
#include "ws/env.h"

#include "ws/conn.h"

#include "ws/buf.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define POOL_CHUNKS 256

const double ws_stats_latency_bounds[WS_STATS_LATENCY_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 1e300,
};

const double ws_stats_http_bounds[WS_STATS_LATENCY_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 1e300,
};

const double ws_stats_store_bounds[WS_STATS_LATENCY_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 1e300,
};

/* Counts seconds in the first of buckets whose bound holds it. */
static void bucket(uint64_t *buckets, const double *bounds, double seconds)
{
    for (int i = 0; i < WS_STATS_LATENCY_BUCKETS; i++) {
        if (seconds <= bounds[i]) {
            buckets[i]++;
            break;
        }
    }
}

void ws_stats_observe_http(struct ws_stats *st, enum ws_stats_http_result result, double seconds)
{
    st->http_results[result]++;
    st->http_calls++;
    st->http_seconds += seconds;
    bucket(st->http_buckets, ws_stats_http_bounds, seconds);
}

void ws_stats_observe_store(struct ws_stats *st, enum ws_stats_store store,
                            enum ws_stats_store_result result, double seconds)
{
    struct ws_stats_store_counts *s = &st->stores[store];
    s->results[result]++;
    s->calls++;
    s->seconds += seconds;
    bucket(s->buckets, ws_stats_store_bounds, seconds);
}

void ws_stats_observe_handler(struct ws_stats *st, double seconds)
{
    st->handler_calls++;
    st->handler_seconds += seconds;
    bucket(st->handler_buckets, ws_stats_latency_bounds, seconds);
}

void ws_stats_count_close(struct ws_stats *st, int code)
{
    if (code >= 0 && code < 5000)
        st->closes_by_code[code]++;
}

void ws_stats_count_refusal(struct ws_stats *st, int status)
{
    st->handshake_rejections++;
    if (status >= 100 && status < 600)
        st->rejections_by_status[status]++;
}

void ws_env_init(struct ws_env *env, struct ev_loop *loop, const struct ws_config *cfg,
                 const struct ws_app_ops *ops, void *app)
{
    memset(env, 0, sizeof(*env));
    env->loop = loop;
    ws_config_copy(&env->cfg, cfg);
    env->ops = ops;
    env->app = app;
    env->stats = &env->own_stats;
    ws_registry_init(&env->conns);
    ws_deadlines_init(&env->deadlines, loop, ws_conn_deadline_due);
    ws_topics_init(&env->topics);
    ws_map_init(&env->per_ip);
    ws_chunk_pool_init(&env->pool, POOL_CHUNKS);
    env->rbuf = ws_xmalloc(WS_ENV_READ_BYTES);
    ws_buf_init(&env->zbuf);
    ws_env_parse_trusted(env);
    ws_deflate_config_init(&env->deflate_cfg);
    if (strcmp(env->cfg.compression, "on") == 0) {
        struct ws_deflate_config *d = &env->deflate_cfg;
        d->enabled = true;
        d->server_max_window_bits = (int)env->cfg.compression_window_bits;
        d->mem_level = (int)env->cfg.compression_mem_level;
        d->level = (int)env->cfg.compression_level;
        d->server_context_takeover = env->cfg.compression_context_takeover;
        d->client_no_context_takeover = env->cfg.compression_client_no_context_takeover;
        d->compress_min_size = (size_t)env->cfg.compress_min_size;
        env->deflate_shared = ws_deflate_shared_new(d->mem_level, d->level);
    }
}

void ws_env_parse_trusted(struct ws_env *env)
{
    env->ntrusted = 0;
    for (size_t i = 0; i < env->cfg.trusted_proxies.n; i++)
        if (ws_cidr_parse(env->cfg.trusted_proxies.items[i], &env->trusted[env->ntrusted]) == 0)
            env->ntrusted++;
}

void ws_env_free(struct ws_env *env)
{
    ws_registry_free(&env->conns);
    ws_deadlines_free(&env->deadlines);
    env->topics.on_change = NULL;
    ws_topics_free(&env->topics);
    ws_map_free(&env->per_ip);
    ws_chunk_pool_free(&env->pool);
    ws_deflate_shared_free(env->deflate_shared);
    ws_buf_reset(&env->zbuf);
    ws_config_free(&env->cfg);
    free(env->rbuf);
    env->rbuf = NULL;
}

/* Per-address key: the address without the port (0 for Unix sockets). */
static uint64_t ip_key(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
        return ws_hash_bytes(&in4->sin_addr, sizeof(in4->sin_addr));
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        return ws_hash_bytes(&in6->sin6_addr, sizeof(in6->sin6_addr));
    }
    return 0;
}

uintptr_t ws_env_ip_count(struct ws_env *env, const struct sockaddr *sa, int delta)
{
    uint64_t key = ip_key(sa);
    uintptr_t n = (uintptr_t)ws_map_get(&env->per_ip, key) + (uintptr_t)(intptr_t)delta;
    if (n)
        ws_map_put(&env->per_ip, key, (void *)n);
    else
        ws_map_del(&env->per_ip, key);
    return n;
}
