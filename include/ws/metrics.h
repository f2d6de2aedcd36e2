/* /metrics in the Prometheus text exposition format (version 0.0.4): every counter of SPEC §5
 * with HELP and TYPE lines. Renders from the server's counters; keeps no state of its own. */
#ifndef WS_METRICS_H
#define WS_METRICS_H

#include "ws/buf.h"

struct ws_server;

/* Appends the whole exposition for srv to out. */
void ws_metrics_render(const struct ws_server *srv, struct ws_buf *out);

#endif
