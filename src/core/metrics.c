/* Prometheus text format. Counters are cumulative since start (reloads never reset them);
 * gauges are read at scrape time (open connections, queued bytes, topics, Lua memory is the
 * app's and not known here). */
#include "ws/metrics.h"

#include "ws/bus.h"
#include "ws/server.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

static void metric(struct ws_buf *out, const char *name, const char *type, const char *help,
                   unsigned long long value)
{
    header(out, name, type, help);
    printf_buf(out, "%s %llu\n", name, value);
}

void ws_metrics_render(const struct ws_server *srv, struct ws_buf *out)
{
    const struct ws_stats *st = &srv->env.stats;
    size_t queued = 0;
    for (const struct ws_registry_node *n = srv->env.conns.head; n; n = n->next)
        queued += ((const struct ws_conn *)n)->wire.out.bytes;

    metric(out, "wsserver_connections_open", "gauge", "WebSocket connections open now.",
           srv->env.nopen);
    metric(out, "wsserver_connections_total", "counter", "TCP connections accepted.",
           st->connections_total);
    metric(out, "wsserver_messages_received_total", "counter", "Data messages received.",
           st->messages_in);
    metric(out, "wsserver_messages_sent_total", "counter", "Data messages sent.", st->messages_out);
    metric(out, "wsserver_bytes_received_total", "counter", "Bytes read from sockets.",
           st->bytes_in);
    metric(out, "wsserver_bytes_sent_total", "counter", "Bytes written to sockets.", st->bytes_out);
    metric(out, "wsserver_messages_dropped_total", "counter",
           "Data messages dropped under back-pressure (backpressure = drop).", st->dropped);
    metric(out, "wsserver_send_queue_bytes", "gauge", "Bytes queued for sending, all connections.",
           queued);
    metric(out, "wsserver_topics", "gauge", "Topics with at least one subscriber.",
           srv->env.topics.count);
    metric(out, "wsserver_handler_errors_total", "counter", "Lua handler calls that failed.",
           st->handler_errors);

    header(out, "wsserver_closes_total", "counter", "Closed WebSocket connections by close code.");
    for (int code = 0; code < 5000; code++)
        if (st->closes_by_code[code])
            printf_buf(out, "wsserver_closes_total{code=\"%d\"} %llu\n", code,
                       (unsigned long long)st->closes_by_code[code]);

    header(out, "wsserver_handshake_rejections_total", "counter",
           "Refused WebSocket handshakes by HTTP status.");
    for (int status = 100; status < 600; status++)
        if (st->rejections_by_status[status])
            printf_buf(out, "wsserver_handshake_rejections_total{status=\"%d\"} %llu\n", status,
                       (unsigned long long)st->rejections_by_status[status]);

    if (srv->bus) {
        header(out, "wsserver_bus_messages_total", "counter",
               "Messages between processes (workers, nodes) by outcome.");
        printf_buf(out, "wsserver_bus_messages_total{outcome=\"published\"} %llu\n",
                   (unsigned long long)srv->bus->published);
        printf_buf(out, "wsserver_bus_messages_total{outcome=\"received\"} %llu\n",
                   (unsigned long long)srv->bus->received);
        printf_buf(out, "wsserver_bus_messages_total{outcome=\"dropped\"} %llu\n",
                   (unsigned long long)srv->bus->dropped);
    }

    header(out, "wsserver_reloads_total", "counter", "App reloads by result.");
    printf_buf(out, "wsserver_reloads_total{result=\"ok\"} %llu\n",
               (unsigned long long)st->reloads_ok);
    printf_buf(out, "wsserver_reloads_total{result=\"failed\"} %llu\n",
               (unsigned long long)st->reloads_failed);

    header(out, "wsserver_handler_duration_seconds", "histogram",
           "Time spent in Lua handler calls.");
    unsigned long long cumulative = 0;
    for (int i = 0; i < WS_STATS_LATENCY_BUCKETS; i++) {
        cumulative += st->handler_buckets[i];
        if (i == WS_STATS_LATENCY_BUCKETS - 1)
            printf_buf(out, "wsserver_handler_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                       cumulative);
        else
            printf_buf(out, "wsserver_handler_duration_seconds_bucket{le=\"%g\"} %llu\n",
                       ws_stats_latency_bounds[i], cumulative);
    }
    printf_buf(out, "wsserver_handler_duration_seconds_sum %.9f\n", st->handler_seconds);
    printf_buf(out, "wsserver_handler_duration_seconds_count %llu\n",
               (unsigned long long)st->handler_calls);
}
