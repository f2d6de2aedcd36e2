/* The systemd service notification protocol (sd_notify(3)), written by hand: one datagram of
 * "KEY=VALUE" lines to the unix socket named by $NOTIFY_SOCKET ('@' first: an abstract name).
 * Without $NOTIFY_SOCKET every call does nothing, so it is safe outside systemd. Knows nothing
 * of the server; no libsystemd. */
#ifndef WS_NOTIFY_H
#define WS_NOTIFY_H

#include <stdbool.h>

/* True when $NOTIFY_SOCKET names a socket to notify. */
bool ws_notify_enabled(void);

/* Sends state (newline-separated assignments, e.g. "READY=1") as one datagram. Returns 0 when it
 * was sent or when there is nobody to notify, WS_E_INVAL when $NOTIFY_SOCKET is not a usable
 * unix socket path, WS_E_IO when the socket cannot be created or the send fails. */
int ws_notify_send(const char *state);

/* The service is ready: "READY=1". Same returns as ws_notify_send. */
int ws_notify_ready(void);

/* A reload begins: "RELOADING=1" with MONOTONIC_USEC (systemd >= 253 wants it); the reload ends
 * with ws_notify_ready(). Same returns as ws_notify_send. */
int ws_notify_reloading(void);

/* A graceful shutdown begins: "STOPPING=1". Same returns as ws_notify_send. */
int ws_notify_stopping(void);

#endif
