/* The server: listeners, accept (surviving EMFILE), the loop's per-iteration flush and sweep,
 * signals, graceful shutdown and the counters behind ws.stats() and /metrics. One per process;
 * owns every connection. */
#ifndef WS_SERVER_H
#define WS_SERVER_H

#include "ws/app.h"
#include "ws/config.h"
#include "ws/conn.h"
#include "ws/outq.h"
#include "ws/registry.h"
#include "ws/topics.h"
#include "ws/transport.h"

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#define WS_SERVER_MAX_LISTENERS WS_CONFIG_MAX_LIST
#define WS_SERVER_READ_BYTES 65536

struct ws_listener {
    ev_io io;
    int fd;
    char *addr; /* as configured */
    char *unix_path;
    bool tls; /* wss:// */
};

#define WS_STATS_LATENCY_BUCKETS 12

/* Counters behind ws.stats() and /metrics: monotonic for the life of the process (a reload does
 * not reset them). */
struct ws_stats {
    uint64_t connections_total;
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
};

/* Upper bounds (seconds) of the handler latency buckets; the last is +Inf. */
extern const double ws_stats_latency_bounds[WS_STATS_LATENCY_BUCKETS];

/* Records one handler call that took seconds. */
void ws_stats_observe_handler(struct ws_stats *st, double seconds);

struct ws_server {
    struct ev_loop *loop;
    struct ws_config cfg;
    const struct ws_app_ops *ops;
    void *app;
    struct ws_listener listeners[WS_SERVER_MAX_LISTENERS];
    size_t nlisteners;
    struct ws_registry conns;
    size_t nopen;         /* WebSocket connections in OPEN: what ws.count() says */
    size_t nupgraded;     /* after a 101 and not yet freed (OPEN or closing): counts for limits */
    struct ws_map per_ip; /* address hash -> count */
    struct ws_topics topics;
    struct ws_tls_ctx *tls; /* NULL without tls_cert */
    struct ws_deflate_config deflate_cfg;
    struct ws_deflate_shared *deflate_shared; /* with compression on */
    struct ws_buf zbuf;                       /* compression scratch */
    struct ws_bus *bus;                       /* other workers and nodes; NULL when alone */
    int worker;                               /* 0 when single-process, else 1..workers */
    char reload_error[512]; /* set when the TLS files failed to reload on this SIGHUP */
    struct ws_chunk_pool pool;
    uint8_t *rbuf; /* shared read buffer, WS_SERVER_READ_BYTES */
    uint64_t next_id;
    struct ws_conn *flush_head;
    struct ws_conn *dead_head;
    ev_prepare prepare;
    ev_signal sig_term, sig_int, sig_hup;
    ev_timer shutdown_timer;
    ev_timer accept_retry;
    int spare_fd; /* kept open to recover from EMFILE */
    bool shutting_down;
    struct ws_stats stats;
};

/* Creates a server on loop with a copy of cfg and the app. Returns NULL and fills err when a
 * listener cannot be opened (address in use, bad address). */
struct ws_server *ws_server_new(struct ev_loop *loop, const struct ws_config *cfg,
                                const struct ws_app_ops *ops, void *app, char *err, size_t errlen);

/* Stops and frees everything; NULL is a no-op. */
void ws_server_free(struct ws_server *srv);

/* Replaces the live options (limits, timeouts) with cfg's; listeners are not touched. */
void ws_server_apply_config(struct ws_server *srv, const struct ws_config *cfg);

/* Begins a graceful shutdown: stop accepting, app shutdown(), close all with 1001, and break the
 * loop when all are gone or after shutdown_timeout. */
void ws_server_shutdown(struct ws_server *srv, const char *reason);

/* Schedules c for a flush in this loop iteration's prepare pass. */
void ws_server_want_flush(struct ws_server *srv, struct ws_conn *c);

/* Schedules c for freeing in the sweep. */
void ws_server_bury(struct ws_server *srv, struct ws_conn *c);

/* The connection with id, or NULL (also when it is already closed). */
struct ws_conn *ws_server_get(struct ws_server *srv, uint64_t id);

/* Connects the server to the bus (it takes ownership): broadcasts and publishes go to the other
 * processes too, and theirs are delivered here. */
void ws_server_set_bus(struct ws_server *srv, struct ws_bus *bus);

/* Sends a frame encoded once to every open connection for which filter (NULL: all) returns true,
 * except except_id (0: none). Without a filter it also goes to the other processes on the bus
 * (except_id names a connection of this process); with one it stays here. Returns the number
 * reached in this process. */
size_t ws_server_broadcast(struct ws_server *srv, uint8_t opcode, const void *data, size_t len,
                           uint64_t except_id, bool (*filter)(void *ctx, struct ws_conn *c),
                           void *ctx);

/* Sends to every subscriber of topic except except_id, here and on the bus. Returns the number
 * reached in this process. */
size_t ws_server_publish(struct ws_server *srv, const char *topic, size_t topic_len, uint8_t opcode,
                         const void *data, size_t len, uint64_t except_id);

/* Records a close code in the counters. */
void ws_server_count_close(struct ws_server *srv, int code);

#endif
