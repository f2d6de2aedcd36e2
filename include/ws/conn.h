/* One client connection: socket I/O on libev, the CONNECTING -> OPEN -> CLOSING -> CLOSED state
 * machine, the opening handshake, frames in and out through the session, the send queue with
 * back-pressure, heartbeats and every per-connection timeout. Memory is freed only in the
 * server's sweep, never during a callback, so a conn pointer held by a callback stays valid. */
#ifndef WS_CONN_H
#define WS_CONN_H

#include "ws/buf.h"
#include "ws/deflate.h"
#include "ws/outq.h"
#include "ws/registry.h"
#include "ws/session.h"
#include "ws/topics.h"
#include "ws/transport.h"

#include <ev.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

struct ws_server;

enum ws_conn_state {
    WS_CONN_CONNECTING, /* reading the HTTP request */
    WS_CONN_OPEN,       /* WebSocket open */
    WS_CONN_CLOSING,    /* close frame or HTTP answer queued; waiting for the peer to finish */
    WS_CONN_CLOSED,     /* socket closed; waiting for the sweep to free it */
};

/* Results of ws_conn_send beyond 0-or-error. */
#define WS_CONN_SENT 0   /* accepted; queue below the low-water mark */
#define WS_CONN_QUEUED 1 /* accepted; queue above the low-water mark: wait for drain */

struct ws_conn {
    struct ws_registry_node node; /* node.id is the connection id */
    struct ws_subscriber sub;     /* topics */
    struct ws_server *srv;
    int fd;
    const struct ws_transport_ops *transport;
    void *transport_state;
    enum ws_conn_state state;
    ev_io io;
    ev_timer timer; /* the one timer: handshake, ping, pong, idle and close deadlines */
    struct ws_session session;
    struct ws_buf in; /* the request head while CONNECTING, then empty */
    size_t scanned;   /* request head bytes searched for its end */
    struct ws_outq out;
    ev_tstamp started;       /* accepted at */
    ev_tstamp last_read;     /* any bytes from the peer */
    ev_tstamp last_message;  /* last data message, for idle_timeout */
    ev_tstamp ping_sent;     /* 0: no ping outstanding */
    ev_tstamp closing_since; /* entered CLOSING */
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer;
    char *path;                 /* request target (owned) */
    char *protocol;             /* chosen subprotocol (owned) or NULL */
    struct ws_deflate *deflate; /* permessage-deflate state when negotiated (owned) */
    uint16_t close_code;        /* code to report to the app's close callback */
    char *close_reason;         /* owned, may be NULL */
    struct ws_conn *next_flush; /* pending-flush list */
    struct ws_conn *next_dead;  /* sweep list */
    bool in_flush_list;
    bool opened;    /* open() was called: close() is owed */
    bool above_low; /* queue went above the low-water mark: drain() is owed */
    bool reading_paused;
    bool wr_shut;    /* our side of TCP is shut (everything we send is sent) */
    bool ip_counted; /* counted in the per-IP table */
    bool secured;    /* the transport's own handshake (TLS) is done */
};

/* Sends one message (WS_OP_TEXT / WS_OP_BINARY) or control frame. Returns WS_CONN_SENT or
 * WS_CONN_QUEUED; WS_E_CLOSED when the connection is not open; WS_E_LIMIT when the message was
 * dropped under backpressure = "drop" (in "close" mode the connection starts closing with 1008
 * and WS_E_CLOSED is returned). */
int ws_conn_send(struct ws_conn *c, uint8_t opcode, const void *data, size_t len);

/* One message encoded for many recipients: plain once, and compressed once per window size for
 * those whose compression resets per message; connections that keep compression context get
 * their own encoding. Frames are made on first need. */
struct ws_frame_set {
    uint8_t opcode;
    const uint8_t *data; /* borrowed: must outlive the set */
    size_t len;
    struct ws_shared *plain;
    struct ws_shared *deflated[WS_DEFLATE_MAX_WINDOW_BITS + 1];
};

void ws_frame_set_init(struct ws_frame_set *set, uint8_t opcode, const void *data, size_t len);
void ws_frame_set_free(struct ws_frame_set *set);

/* Sends set's message to c in the encoding c needs. Results as ws_conn_send. */
int ws_conn_send_set(struct ws_conn *c, struct ws_frame_set *set);

/* Sends a frame encoded once for many recipients (see ws_conn_encode_shared). Same results. */
int ws_conn_send_shared(struct ws_conn *c, struct ws_shared *frame, bool is_data);

/* Encodes a whole unfragmented server frame into a new shared string (one reference). */
struct ws_shared *ws_conn_encode_shared(uint8_t opcode, uint8_t rsv, const void *data, size_t len);

/* Starts the close handshake with code (0: no code) and reason (truncated to fit). Returns 0, or
 * WS_E_CLOSED when it is already closing or closed. */
int ws_conn_close(struct ws_conn *c, int code, const char *reason, size_t len);

/* Drops the connection at once without a close handshake (reported as code). */
void ws_conn_abort(struct ws_conn *c, int code, const char *reason);

/* Sends a ping with payload (<= 125 bytes). 0, WS_E_CLOSED or WS_E_INVAL. */
int ws_conn_ping(struct ws_conn *c, const void *payload, size_t len);

/* Bytes in the send queue. */
size_t ws_conn_buffered(const struct ws_conn *c);

/* The peer address as text ("1.2.3.4:5678", "[::1]:5678" or "unix"), into out. */
const char *ws_conn_peer(const struct ws_conn *c, char *out, size_t cap);

/* Called by the server: a new accepted socket with its transport (state owned by the conn). */
struct ws_conn *ws_conn_new(struct ws_server *srv, int fd, const struct sockaddr *sa,
                            socklen_t salen, const struct ws_transport_ops *transport,
                            void *transport_state);

/* Called by the server's flush pass: writes what is queued. */
void ws_conn_flush(struct ws_conn *c);

/* Called by the server's sweep: reports the close to the app and frees c. */
void ws_conn_destroy(struct ws_conn *c);

/* Re-reads limits and timers from the server's current configuration (after a reload). */
void ws_conn_apply_config(struct ws_conn *c);

#endif
