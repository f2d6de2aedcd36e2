/* /metrics in the Prometheus text exposition format (version 0.0.4): every counter of SPEC §5
 * with HELP and TYPE lines, the process series, and with --workers every worker's. Workers share
 * a board in shared memory: each keeps its counters live in its slot (its env's stats point
 * there) and refreshes its gauges every second and before it answers a scrape, so whichever
 * worker answers renders all of them, each series labelled with its worker. */
#ifndef WS_METRICS_H
#define WS_METRICS_H

#include "ws/buf.h"
#include "ws/env.h"

#include <stdint.h>

struct ws_server;

/* One process's figures on the board. */
struct ws_metrics_slot {
    int32_t pid;    /* 0 while no process uses the slot */
    int32_t worker; /* 0 when single-process, else 1..N */
    double started; /* process start, seconds since the epoch */
    struct ws_stats stats;
    /* gauges: written by the slot's process every second and before it renders */
    uint64_t connections_open, send_queue_bytes, topics, lua_bytes, rss_bytes, open_fds;
    uint64_t bus_published, bus_received, bus_dropped;
    double cpu_seconds;
    bool bus;
};

struct ws_metrics_board;

/* Shared memory for n slots (MAP_SHARED: made before forking, seen by every child). NULL when
 * the mapping fails. */
struct ws_metrics_board *ws_metrics_board_new(int n);
void ws_metrics_board_free(struct ws_metrics_board *board);

/* Serves /metrics for srv: its counters move to a slot (slot index of board, or a private board
 * when board is NULL), its gauges are refreshed every second, and srv's env renders the board.
 * version goes into wsserver_build_info. */
void ws_metrics_attach(struct ws_server *srv, struct ws_metrics_board *board, int index,
                       const char *version);

/* Stops the refresh timer and marks the slot free. */
void ws_metrics_detach(struct ws_server *srv);

/* Appends the whole exposition of board to out (every slot in use; labelled by worker when the
 * board has more than one). */
void ws_metrics_render_board(const struct ws_metrics_board *board, struct ws_buf *out);

#endif
