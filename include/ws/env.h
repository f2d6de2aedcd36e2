/* What the connections of one server share: the loop, the live options, the app, the registry
 * and topics, buffers and pools, the counters, and the two lists (connections to flush,
 * connections to free) that the owner works through once per loop iteration. The server owns
 * one; conn.c and front.c are handed a pointer and never call back into the server. */
#ifndef WS_ENV_H
#define WS_ENV_H

#include "ws/app.h"
#include "ws/buf.h"
#include "ws/cidr.h"
#include "ws/config.h"
#include "ws/deadlines.h"
#include "ws/deflate.h"
#include "ws/map.h"
#include "ws/outq.h"
#include "ws/registry.h"
#include "ws/topics.h"

#include <ev.h>
#include <sys/socket.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WS_ENV_READ_BYTES 262144 /* the shared read buffer: a 64 KiB frame and more in one read */
#define WS_STATS_LATENCY_BUCKETS 12

/* How an outbound HTTP request ended, for /metrics. */
enum ws_stats_http_result {
    WS_STATS_HTTP_OK,      /* a response came (any status) */
    WS_STATS_HTTP_ERROR,   /* connection, TLS, protocol or size failure */
    WS_STATS_HTTP_TIMEOUT, /* its timeout passed */
    WS_STATS_HTTP_RESULTS
};

/* How an outbound WebSocket connection attempt (ws.connect) ended, for /metrics. */
enum ws_stats_wsclient_result {
    WS_STATS_WSCLIENT_OK,      /* the handshake completed */
    WS_STATS_WSCLIENT_REFUSED, /* the server answered another status than 101 */
    WS_STATS_WSCLIENT_ERROR,   /* lookup, connect, TLS or handshake failure */
    WS_STATS_WSCLIENT_TIMEOUT, /* its timeout passed */
    WS_STATS_WSCLIENT_RESULTS
};

/* The stores of ws.pg and ws.redis, for /metrics: one entry each. */
enum ws_stats_store { WS_STATS_STORE_POSTGRES, WS_STATS_STORE_REDIS, WS_STATS_STORES };

/* How a store's command (a query, BEGIN, COMMIT) ended. */
enum ws_stats_store_result {
    WS_STATS_STORE_OK,      /* the server answered */
    WS_STATS_STORE_ERROR,   /* the server refused it (SQLSTATE) or the connection failed */
    WS_STATS_STORE_TIMEOUT, /* its timeout passed */
    WS_STATS_STORE_RESULTS
};

/* One store's counters, latency histogram and pool gauges. */
struct ws_stats_store_counts {
    uint64_t results[WS_STATS_STORE_RESULTS];
    uint64_t calls;
    double seconds;
    uint64_t buckets[WS_STATS_LATENCY_BUCKETS];
    uint64_t pool_open, pool_in_use; /* gauges: connections open, handed out */
};

/* Counters behind ws.stats() and /metrics: monotonic for the life of the process (a reload does
 * not reset them). */
struct ws_stats {
    uint64_t connections_total;   /* sockets accepted */
    uint64_t upgrades_total;      /* WebSocket connections opened (101) */
    uint64_t http_requests_total; /* plain HTTP requests answered (no upgrade) */
    uint64_t messages_in, messages_out;
    uint64_t bytes_in, bytes_out;
    uint64_t handshake_rejections;
    uint64_t rejections_by_status[600];
    uint64_t handler_errors;
    uint64_t dropped;
    uint64_t reloads_ok, reloads_failed;
    uint64_t closes_by_code[5000]; /* index: close code (< 5000) */
    /* handler latency histogram: cumulative counts per upper bound in ws_stats_latency_bounds */
    uint64_t handler_calls;
    double handler_seconds;
    uint64_t handler_buckets[WS_STATS_LATENCY_BUCKETS];
    uint64_t handlers_waiting; /* gauge: handlers waiting now (SPEC §4a) */
    /* outbound HTTP requests (ws.http) by enum ws_stats_http_result, and their latency */
    uint64_t http_results[WS_STATS_HTTP_RESULTS];
    uint64_t http_calls;
    double http_seconds;
    uint64_t http_buckets[WS_STATS_LATENCY_BUCKETS];
    /* outbound WebSocket connections (ws.connect) */
    uint64_t wsclient_connects[WS_STATS_WSCLIENT_RESULTS];
    uint64_t wsclient_open; /* gauge */
    uint64_t wsclient_messages_in, wsclient_messages_out;
    struct ws_stats_store_counts stores[WS_STATS_STORES];
};

/* Upper bounds (seconds) of the handler latency buckets; the last is +Inf. */
extern const double ws_stats_latency_bounds[WS_STATS_LATENCY_BUCKETS];

/* Upper bounds (seconds) of the outbound HTTP latency buckets; the last is +Inf. */
extern const double ws_stats_http_bounds[WS_STATS_LATENCY_BUCKETS];

/* Records one outbound HTTP request that ended as result after seconds. */
void ws_stats_observe_http(struct ws_stats *st, enum ws_stats_http_result result, double seconds);

/* Upper bounds (seconds) of the store command latency buckets; the last is +Inf. */
extern const double ws_stats_store_bounds[WS_STATS_LATENCY_BUCKETS];

/* Records one command of store that ended as result after seconds. */
void ws_stats_observe_store(struct ws_stats *st, enum ws_stats_store store,
                            enum ws_stats_store_result result, double seconds);

/* Records one handler call that took seconds. */
void ws_stats_observe_handler(struct ws_stats *st, double seconds);

/* Records a close code (codes >= 5000 are not counted). */
void ws_stats_count_close(struct ws_stats *st, int code);

/* Records a refused handshake by its HTTP status. */
void ws_stats_count_refusal(struct ws_stats *st, int status);

struct ws_conn;
struct ws_feed;

struct ws_env {
    struct ev_loop *loop;
    struct ws_config cfg;                       /* the live options (owned) */
    struct ws_cidr trusted[WS_CONFIG_MAX_LIST]; /* cfg.trusted_proxies, parsed */
    size_t ntrusted;
    const struct ws_app_ops *ops;
    void *app;
    struct ws_registry conns;      /* every connection, by id in arrival order */
    struct ws_deadlines deadlines; /* every connection's deadline, on one timer */
    size_t nopen;                  /* WebSocket connections in OPEN: what ws.count() says */
    size_t nupgraded;              /* after a 101 and not yet freed (OPEN or closing): for limits */
    struct ws_map per_ip;          /* address hash -> count */
    struct ws_topics topics;
    struct ws_deflate_config deflate_cfg;
    struct ws_deflate_shared *deflate_shared; /* with compression on */
    struct ws_buf zbuf;                       /* compression scratch */
    struct ws_chunk_pool pool;
    uint8_t *rbuf;        /* shared read buffer, WS_ENV_READ_BYTES */
    struct ws_feed *feed; /* the read whose frames are being handled (conn.c), or NULL */
    uint64_t next_id;
    struct ws_conn *flush_head; /* written to in this iteration */
    struct ws_conn *dead_head;  /* closed, to be freed */
    bool draining;              /* a graceful shutdown has begun */
    bool stopped;               /* the server is being freed: the app holds no connection */
    struct ws_stats *stats;     /* own_stats, or a slot other processes can read (metrics) */
    struct ws_stats own_stats;
    /* Renders /metrics for the whole process (set by the owner; NULL: not served). */
    void (*render_metrics)(void *ctx, struct ws_buf *out);
    void *metrics_ctx;
};

/* Initialises env with a copy of cfg: registry, topics, pools, the read buffer and, when
 * cfg->compression is "on", the shared compressors. */
void ws_env_init(struct ws_env *env, struct ev_loop *loop, const struct ws_config *cfg,
                 const struct ws_app_ops *ops, void *app);

/* Parses cfg.trusted_proxies into trusted (after ws_env_init and each new cfg); entries that
 * do not parse are skipped (ws_config_validate refuses them first). */
void ws_env_parse_trusted(struct ws_env *env);

/* Frees what ws_env_init made; the connections must be gone already. */
void ws_env_free(struct ws_env *env);

/* Adds delta to the count of sockets from sa's address (the port ignored) and returns the new
 * count; a count that reaches 0 is forgotten. */
uintptr_t ws_env_ip_count(struct ws_env *env, const struct sockaddr *sa, int delta);

#endif
