/* The server: listeners, accept (surviving EMFILE), the loop's per-iteration flush and sweep,
 * signals, graceful shutdown and the counters behind ws.stats() and /metrics. One per process;
 * owns every connection. */
#ifndef WS_SERVER_H
#define WS_SERVER_H

#include "ws/app.h"
#include "ws/config.h"
#include "ws/conn.h"
#include "ws/env.h"
#include "ws/outq.h"
#include "ws/registry.h"
#include "ws/topics.h"
#include "ws/transport.h"

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#define WS_SERVER_MAX_LISTENERS (WS_CONFIG_MAX_LIST + 1) /* the app's, and metrics_listen */

struct ws_listener {
    ev_io io;
    int fd;
    char *addr; /* as configured */
    char *unix_path;
    bool tls; /* wss:// */
    bool ops; /* metrics_listen: /metrics and /healthz only, open while draining */
};

struct ws_server {
    struct ws_env env; /* what the connections share */
    struct ws_listener listeners[WS_SERVER_MAX_LISTENERS];
    size_t nlisteners;
    struct ws_tls_ctx *tls; /* NULL without tls_cert */
    struct ws_bus *bus;     /* other workers and nodes; NULL when alone */
    int worker;             /* 0 when single-process, else 1..workers */
    char reload_error[512]; /* set when the TLS files failed to reload on this SIGHUP */
    ev_prepare prepare;
    ev_signal sig_term, sig_int, sig_hup;
    ev_timer shutdown_timer;
    ev_timer accept_retry; /* accepting again after running out of descriptors */
    ev_timer batch_timer;  /* the next batch of closes during a shutdown */
    int spare_fd;          /* kept open to recover from EMFILE */
    bool cancelled;        /* the shutdown timeout ended the app's waiting handlers */
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

#endif
