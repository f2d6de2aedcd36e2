/* Prometheus text format from a board of slots in shared memory. Counters are cumulative since
 * the process started (reloads never reset them) and live in the slot; gauges (connections, queue
 * bytes, topics, Lua heap, process figures) are refreshed every second and at each scrape. */
#include "ws/metrics.h"

#include "ws/bus.h"
#include "ws/clock.h"
#include "ws/server.h"

#include <dirent.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define REFRESH_SECONDS 1.0

struct ws_metrics_board {
    size_t size; /* bytes mapped */
    int n;
    char version[32];
    struct ws_metrics_slot slots[];
};

/* What a server's /metrics needs: its slot and the timer that refreshes its gauges. */
struct attachment {
    struct ws_server *srv;
    struct ws_metrics_board *board;
    struct ws_metrics_slot *slot;
    bool own_board;
    ev_timer refresh;
};

static void printf_buf(struct ws_buf *out, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n > 0)
        ws_buf_append(out, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void header(struct ws_buf *out, const char *name, const char *type, const char *help)
{
    printf_buf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

struct ws_metrics_board *ws_metrics_board_new(int n)
{
    size_t size = sizeof(struct ws_metrics_board) + (size_t)n * sizeof(struct ws_metrics_slot);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    struct ws_metrics_board *b = p; /* zeroed by mmap */
    b->size = size;
    b->n = n;
    return b;
}

void ws_metrics_board_free(struct ws_metrics_board *board)
{
    if (board)
        munmap(board, board->size);
}

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    uint64_t n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n > 0 ? n - 1 : 0; /* the directory's own descriptor */
}

static uint64_t rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Writes srv's gauges into its slot. */
static void refresh(struct attachment *at)
{
    struct ws_server *srv = at->srv;
    struct ws_metrics_slot *s = at->slot;
    s->connections_open = srv->env.nopen;
    s->send_queue_bytes = srv->env.pool.queued;
    s->topics = srv->env.topics.count;
    s->lua_bytes = srv->env.ops->memory ? srv->env.ops->memory(srv->env.app) : 0;
    s->rss_bytes = rss_bytes();
    s->open_fds = count_fds();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    s->cpu_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
                     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
    s->bus = srv->bus != NULL;
    if (srv->bus) {
        s->bus_published = srv->bus->published;
        s->bus_received = srv->bus->received;
        s->bus_dropped = srv->bus->dropped;
    }
}

static void on_refresh(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    refresh(w->data);
}

static void render(void *ctx, struct ws_buf *out)
{
    struct attachment *at = ctx;
    refresh(at);
    ws_metrics_render_board(at->board, out);
}

void ws_metrics_attach(struct ws_server *srv, struct ws_metrics_board *board, int index,
                       const char *version)
{
    struct attachment *at = ws_xcalloc(1, sizeof(*at));
    at->srv = srv;
    at->own_board = !board;
    at->board = board ? board : ws_metrics_board_new(1);
    if (!at->board) { /* no shared memory: serve this process alone from the heap */
        at->board = ws_xcalloc(1, sizeof(*at->board) + sizeof(struct ws_metrics_slot));
        at->board->n = 1;
    }
    snprintf(at->board->version, sizeof(at->board->version), "%s", version);
    at->slot = &at->board->slots[board ? index - 1 : 0];
    memset(at->slot, 0, sizeof(*at->slot));
    at->slot->pid = (int32_t)getpid();
    at->slot->worker = index;
    at->slot->started = unix_now();
    /* counters so far (the app's load, before serving) carry over into the slot */
    at->slot->stats = *srv->env.stats;
    srv->env.stats = &at->slot->stats;
    srv->env.render_metrics = render;
    srv->env.metrics_ctx = at;
    refresh(at);
    ev_init(&at->refresh, on_refresh);
    at->refresh.data = at;
    if (at->board->n > 1) { /* alone, a scrape refreshes what it renders */
        ws_timer_start(srv->env.loop, &at->refresh, REFRESH_SECONDS, REFRESH_SECONDS);
        ev_unref(srv->env.loop); /* the refresh alone keeps no loop running */
    }
}

void ws_metrics_detach(struct ws_server *srv)
{
    struct attachment *at = srv->env.metrics_ctx;
    if (!at)
        return;
    if (ev_is_active(&at->refresh)) {
        ev_ref(srv->env.loop);
        ws_timer_stop(srv->env.loop, &at->refresh);
    }
    srv->env.own_stats = at->slot->stats;
    srv->env.stats = &srv->env.own_stats;
    srv->env.render_metrics = NULL;
    srv->env.metrics_ctx = NULL;
    at->slot->pid = 0;
    if (at->own_board && at->board->size)
        ws_metrics_board_free(at->board);
    else if (at->own_board)
        free(at->board);
    free(at);
}

/* The plain series: one sample per slot in use, read at offset (a uint64_t, or a double when
 * is_double) in the slot. */
struct series {
    const char *name, *type, *help;
    size_t offset;
    bool is_double;
};

#define U64(field) offsetof(struct ws_metrics_slot, field), false
#define DBL(field) offsetof(struct ws_metrics_slot, field), true

static const struct series plain[] = {
    {"wsserver_connections_open", "gauge", "WebSocket connections open now.",
     U64(connections_open)},
    {"wsserver_connections_total", "counter", "TCP connections accepted.",
     U64(stats.connections_total)},
    {"wsserver_websocket_connections_total", "counter",
     "WebSocket connections opened (101 answered).", U64(stats.upgrades_total)},
    {"wsserver_http_requests_total", "counter", "Plain HTTP requests answered (no upgrade).",
     U64(stats.http_requests_total)},
    {"wsserver_messages_received_total", "counter", "Data messages received.",
     U64(stats.messages_in)},
    {"wsserver_messages_sent_total", "counter", "Data messages sent.", U64(stats.messages_out)},
    {"wsserver_bytes_received_total", "counter", "Bytes read from sockets.", U64(stats.bytes_in)},
    {"wsserver_bytes_sent_total", "counter", "Bytes written to sockets.", U64(stats.bytes_out)},
    {"wsserver_messages_dropped_total", "counter",
     "Data messages dropped under back-pressure (backpressure = drop).", U64(stats.dropped)},
    {"wsserver_send_queue_bytes", "gauge", "Bytes queued for sending, all connections.",
     U64(send_queue_bytes)},
    {"wsserver_topics", "gauge", "Topics with at least one subscriber.", U64(topics)},
    {"wsserver_handler_errors_total", "counter", "Lua handler calls that failed.",
     U64(stats.handler_errors)},
    {"wsserver_lua_memory_bytes", "gauge", "Bytes of the Lua heap.", U64(lua_bytes)},
    {"wsserver_handlers_waiting", "gauge", "Handlers waiting now (ws.sleep, ws.http).",
     U64(stats.handlers_waiting)},
    {"wsserver_wsclient_connections_open", "gauge",
     "Outbound WebSocket connections (ws.connect) open now.", U64(stats.wsclient_open)},
    {"wsserver_wsclient_messages_received_total", "counter",
     "Messages received on outbound WebSocket connections.", U64(stats.wsclient_messages_in)},
    {"wsserver_wsclient_messages_sent_total", "counter",
     "Messages sent on outbound WebSocket connections.", U64(stats.wsclient_messages_out)},
    {"process_start_time_seconds", "gauge",
     "Start time of the process since the Unix epoch in seconds.", DBL(started)},
    {"process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
     DBL(cpu_seconds)},
    {"process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", U64(rss_bytes)},
    {"process_open_fds", "gauge", "Number of open file descriptors.", U64(open_fds)},
};

static double read_series(const struct ws_metrics_slot *s, const struct series *m)
{
    const char *p = (const char *)s + m->offset;
    if (m->is_double)
        return *(const double *)p;
    return (double)*(const uint64_t *)p;
}

/* A labelled sample for slot s: name{worker="i",label="v"} or name{label="v"}. */
static void labelled(struct ws_buf *out, const struct ws_metrics_board *b,
                     const struct ws_metrics_slot *s, const char *name, const char *labels,
                     double v)
{
    if (b->n > 1)
        printf_buf(out, "%s{worker=\"%d\",%s} %.17g\n", name, s->worker, labels, v);
    else
        printf_buf(out, "%s{%s} %.17g\n", name, labels, v);
}

/* A counter family labelled by number: the non-zero entries [lo, hi) of the uint64_t array at
 * offset in each slot's stats. */
static void counts(struct ws_buf *out, const struct ws_metrics_board *b, const char *name,
                   const char *help, const char *label, size_t offset, int lo, int hi)
{
    header(out, name, "counter", help);
    char labels[64];
    for (int i = 0; i < b->n; i++) {
        const struct ws_metrics_slot *s = &b->slots[i];
        const uint64_t *v = (const uint64_t *)((const char *)&s->stats + offset);
        for (int k = lo; s->pid && k < hi; k++) {
            if (!v[k])
                continue;
            snprintf(labels, sizeof(labels), "%s=\"%d\"", label, k);
            labelled(out, b, s, name, labels, (double)v[k]);
        }
    }
}

/* A histogram family: per slot, the cumulative buckets (uint64_t[WS_STATS_LATENCY_BUCKETS] at
 * buckets in the stats, upper bounds in bounds, the last +Inf), the sum (a double) and the count
 * (a uint64_t). extra: labels every sample carries (store="postgres"), or "". With header false
 * the HELP and TYPE lines are left out (another label value of a family already begun). */
static void histogram_of(struct ws_buf *out, const struct ws_metrics_board *b, const char *name,
                         const char *help, bool with_header, const char *extra,
                         const double *bounds, size_t buckets, size_t sum, size_t count)
{
    if (with_header)
        header(out, name, "histogram", help);
    char labels[128], series[96];
    const char *sep = extra[0] ? "," : "";
    for (int i = 0; i < b->n; i++) {
        const struct ws_metrics_slot *s = &b->slots[i];
        if (!s->pid)
            continue;
        const char *st = (const char *)&s->stats;
        const uint64_t *bucket = (const uint64_t *)(st + buckets);
        uint64_t cumulative = 0;
        snprintf(series, sizeof(series), "%s_bucket", name);
        for (int k = 0; k < WS_STATS_LATENCY_BUCKETS; k++) {
            cumulative += bucket[k];
            if (k == WS_STATS_LATENCY_BUCKETS - 1)
                snprintf(labels, sizeof(labels), "%s%sle=\"+Inf\"", extra, sep);
            else
                snprintf(labels, sizeof(labels), "%s%sle=\"%g\"", extra, sep, bounds[k]);
            labelled(out, b, s, series, labels, (double)cumulative);
        }
        char tail[160] = "";
        if (b->n > 1)
            snprintf(tail, sizeof(tail), "{worker=\"%d\"%s%s}", s->worker, sep, extra);
        else if (extra[0])
            snprintf(tail, sizeof(tail), "{%s}", extra);
        printf_buf(out, "%s_sum%s %.9f\n", name, tail, *(const double *)(st + sum));
        printf_buf(out, "%s_count%s %llu\n", name, tail,
                   (unsigned long long)*(const uint64_t *)(st + count));
    }
}

static void histogram(struct ws_buf *out, const struct ws_metrics_board *b, const char *name,
                      const char *help, const double *bounds, size_t buckets, size_t sum,
                      size_t count)
{
    histogram_of(out, b, name, help, true, "", bounds, buckets, sum, count);
}

/* The stores (ws.pg): commands by result, their latency, the pool gauges; one label value of
 * store per entry of enum ws_stats_store. */
static void stores(struct ws_buf *out, const struct ws_metrics_board *b)
{
    static const char *const names[WS_STATS_STORES] = {"postgres", "redis"};
    static const char *const results[WS_STATS_STORE_RESULTS] = {"ok", "error", "timeout"};
    char labels[96];
    header(out, "wsserver_store_commands_total", "counter",
           "Database commands (ws.pg queries, BEGIN, COMMIT; ws.redis calls and pipelines) by "
           "store and result.");
    for (int i = 0; i < b->n; i++) {
        const struct ws_metrics_slot *s = &b->slots[i];
        for (int k = 0; s->pid && k < WS_STATS_STORES; k++)
            for (int r = 0; r < WS_STATS_STORE_RESULTS; r++) {
                snprintf(labels, sizeof(labels), "store=\"%s\",result=\"%s\"", names[k],
                         results[r]);
                labelled(out, b, s, "wsserver_store_commands_total", labels,
                         (double)s->stats.stores[k].results[r]);
            }
    }
    header(out, "wsserver_store_pool_connections", "gauge",
           "Database connections by store: open (connecting included) and in use.");
    for (int i = 0; i < b->n; i++) {
        const struct ws_metrics_slot *s = &b->slots[i];
        for (int k = 0; s->pid && k < WS_STATS_STORES; k++) {
            snprintf(labels, sizeof(labels), "store=\"%s\",state=\"open\"", names[k]);
            labelled(out, b, s, "wsserver_store_pool_connections", labels,
                     (double)s->stats.stores[k].pool_open);
            snprintf(labels, sizeof(labels), "store=\"%s\",state=\"in_use\"", names[k]);
            labelled(out, b, s, "wsserver_store_pool_connections", labels,
                     (double)s->stats.stores[k].pool_in_use);
        }
    }
    for (int k = 0; k < WS_STATS_STORES; k++) {
        snprintf(labels, sizeof(labels), "store=\"%s\"", names[k]);
        size_t at =
            offsetof(struct ws_stats, stores) + (size_t)k * sizeof(struct ws_stats_store_counts);
        histogram_of(out, b, "wsserver_store_duration_seconds",
                     "Time database commands took, waiting for a connection included.", k == 0,
                     labels, ws_stats_store_bounds,
                     at + offsetof(struct ws_stats_store_counts, buckets),
                     at + offsetof(struct ws_stats_store_counts, seconds),
                     at + offsetof(struct ws_stats_store_counts, calls));
    }
}

void ws_metrics_render_board(const struct ws_metrics_board *b, struct ws_buf *out)
{
    for (size_t k = 0; k < sizeof(plain) / sizeof(plain[0]); k++) {
        const struct series *m = &plain[k];
        header(out, m->name, m->type, m->help);
        for (int i = 0; i < b->n; i++) {
            const struct ws_metrics_slot *s = &b->slots[i];
            if (!s->pid)
                continue;
            if (b->n > 1)
                printf_buf(out, "%s{worker=\"%d\"} %.17g\n", m->name, s->worker, read_series(s, m));
            else
                printf_buf(out, "%s %.17g\n", m->name, read_series(s, m));
        }
    }

    char labels[64];
    header(out, "wsserver_build_info", "gauge", "The running build (value 1).");
    snprintf(labels, sizeof(labels), "version=\"%s\"", b->version);
    for (int i = 0; i < b->n; i++)
        if (b->slots[i].pid)
            labelled(out, b, &b->slots[i], "wsserver_build_info", labels, 1);

    counts(out, b, "wsserver_closes_total", "Closed WebSocket connections by close code.", "code",
           offsetof(struct ws_stats, closes_by_code), 0, 5000);
    counts(out, b, "wsserver_handshake_rejections_total",
           "Refused WebSocket handshakes by HTTP status.", "status",
           offsetof(struct ws_stats, rejections_by_status), 100, 600);

    bool any_bus = false;
    for (int i = 0; i < b->n; i++)
        any_bus = any_bus || (b->slots[i].pid && b->slots[i].bus);
    if (any_bus) {
        header(out, "wsserver_bus_messages_total", "counter",
               "Messages between processes (workers, nodes) by outcome.");
        for (int i = 0; i < b->n; i++) {
            const struct ws_metrics_slot *s = &b->slots[i];
            if (!s->pid || !s->bus)
                continue;
            labelled(out, b, s, "wsserver_bus_messages_total", "outcome=\"published\"",
                     (double)s->bus_published);
            labelled(out, b, s, "wsserver_bus_messages_total", "outcome=\"received\"",
                     (double)s->bus_received);
            labelled(out, b, s, "wsserver_bus_messages_total", "outcome=\"dropped\"",
                     (double)s->bus_dropped);
        }
    }

    header(out, "wsserver_reloads_total", "counter", "App reloads by result.");
    for (int i = 0; i < b->n; i++) {
        const struct ws_metrics_slot *s = &b->slots[i];
        if (!s->pid)
            continue;
        labelled(out, b, s, "wsserver_reloads_total", "result=\"ok\"", (double)s->stats.reloads_ok);
        labelled(out, b, s, "wsserver_reloads_total", "result=\"failed\"",
                 (double)s->stats.reloads_failed);
    }

    histogram(out, b, "wsserver_handler_duration_seconds", "Time spent in Lua handler calls.",
              ws_stats_latency_bounds, offsetof(struct ws_stats, handler_buckets),
              offsetof(struct ws_stats, handler_seconds), offsetof(struct ws_stats, handler_calls));

    static const char *const results[WS_STATS_HTTP_RESULTS] = {"ok", "error", "timeout"};
    header(out, "wsserver_http_client_requests_total", "counter",
           "Outbound HTTP requests (ws.http) by result.");
    for (int i = 0; i < b->n; i++) {
        const struct ws_metrics_slot *s = &b->slots[i];
        if (!s->pid)
            continue;
        for (int k = 0; k < WS_STATS_HTTP_RESULTS; k++) {
            snprintf(labels, sizeof(labels), "result=\"%s\"", results[k]);
            labelled(out, b, s, "wsserver_http_client_requests_total", labels,
                     (double)s->stats.http_results[k]);
        }
    }

    histogram(out, b, "wsserver_http_client_duration_seconds",
              "Time outbound HTTP requests (ws.http) took.", ws_stats_http_bounds,
              offsetof(struct ws_stats, http_buckets), offsetof(struct ws_stats, http_seconds),
              offsetof(struct ws_stats, http_calls));

    static const char *const ws_results[WS_STATS_WSCLIENT_RESULTS] = {"ok", "refused", "error",
                                                                      "timeout"};
    header(out, "wsserver_wsclient_connects_total", "counter",
           "Outbound WebSocket connection attempts (ws.connect) by result.");
    for (int i = 0; i < b->n; i++) {
        const struct ws_metrics_slot *s = &b->slots[i];
        if (!s->pid)
            continue;
        for (int k = 0; k < WS_STATS_WSCLIENT_RESULTS; k++) {
            snprintf(labels, sizeof(labels), "result=\"%s\"", ws_results[k]);
            labelled(out, b, s, "wsserver_wsclient_connects_total", labels,
                     (double)s->stats.wsclient_connects[k]);
        }
    }
    stores(out, b);
}
