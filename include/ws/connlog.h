/* The log lines of a connection's life, formatted from its fields: one access line per HTTP
 * answer, one close line per WebSocket connection, and events with the connection's id and peer.
 * Peer-supplied strings are escaped by the log module; payloads are never logged. */
#ifndef WS_CONNLOG_H
#define WS_CONNLOG_H

#include "ws/conn.h"
#include "ws/http.h"
#include "ws/log.h"

#include <stddef.h>

/* The peer address as text ("1.2.3.4:5678", "[::1]:5678", without the port for an address a
 * trusted proxy forwarded, or "unix"), into out. */
const char *ws_connlog_peer(const struct ws_conn *c, char *out, size_t cap);

/* An event of c at level: code (0: none) and reason (NULL: none) as fields. */
void ws_connlog_event(struct ws_conn *c, enum ws_log_level level, const char *event, int code,
                      const char *reason);

/* The access line of an HTTP answer with status to req (NULL when it could not be parsed): peer,
 * path without the query, reason, user agent, bytes in and out, duration. Warn level for 5xx. */
void ws_connlog_access(struct ws_conn *c, int status, const char *reason,
                       const struct ws_http_request *req, size_t bytes_out);

/* The close line of a WebSocket connection: code, reason, who closed it, bytes and messages in
 * and out, duration. */
void ws_connlog_close(struct ws_conn *c, int code);

#endif
