/* One client connection: socket I/O on libev, the CONNECTING -> OPEN -> CLOSING -> CLOSED state
 * machine, the request head (answered as the front decides), frames in and out through the
 * session, the send queue with back-pressure, heartbeats and every per-connection timeout. A
 * connection lives in a struct ws_env it is given; memory is freed only by ws_conn_run_pending,
 * never during a callback, so a conn pointer held by a callback stays valid. */
#ifndef WS_CONN_H
#define WS_CONN_H

#include "ws/app.h"
#include "ws/buf.h"
#include "ws/deadlines.h"
#include "ws/deflate.h"
#include "ws/env.h"
#include "ws/frameset.h"
#include "ws/heartbeat.h"
#include "ws/outq.h"
#include "ws/registry.h"
#include "ws/request.h"
#include "ws/session.h"
#include "ws/topics.h"
#include "ws/transport.h"
#include "ws/wire.h"

#include <ev.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

enum ws_conn_state {
    WS_CONN_CONNECTING, /* reading the HTTP request */
    WS_CONN_OPEN,       /* WebSocket open */
    WS_CONN_CLOSING,    /* close frame or HTTP answer queued; waiting for the peer to finish */
    WS_CONN_CLOSED,     /* socket closed; waiting for the sweep to free it */
};

/* Results of ws_conn_send beyond 0-or-error. */
#define WS_CONN_SENT 0   /* accepted; queue below the low-water mark */
#define WS_CONN_QUEUED 1 /* accepted; queue above the low-water mark: wait for drain */

/* Who began the end of a WebSocket connection, for the close log. */
/* A request whose answer the app gives later (SPEC §4a: upgrade and http handlers may wait). */
enum ws_conn_decision {
    WS_CONN_DECIDED,          /* nothing deferred */
    WS_CONN_DECIDING_UPGRADE, /* waiting for ws_conn_upgrade_decided */
    WS_CONN_DECIDING_HTTP,    /* waiting for ws_conn_http_answered */
};

enum ws_conn_closer {
    WS_CONN_BY_NONE,   /* nobody sent a close frame: the connection dropped */
    WS_CONN_BY_SERVER, /* we sent the first close frame */
    WS_CONN_BY_PEER,   /* the peer did */
};

struct ws_conn {
    struct ws_registry_node node; /* node.id is the connection id */
    struct ws_subscriber sub;     /* topics */
    struct ws_env *env;
    struct ws_wire wire;         /* the socket, its transport, watcher and send queue */
    struct ws_deadline deadline; /* the one deadline (env->deadlines): handshake, ping, pong,
                                  * idle or close, whichever is first */
    struct ws_session session;   /* session.deflate: permessage-deflate when negotiated (owned) */
    struct ws_request *request;  /* the HTTP request while CONNECTING, then NULL */
    struct ws_heartbeat_clocks clock; /* what the timeouts are measured from */
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer;
    uint32_t messages_in; /* next to the 28-byte address: no padding */
    char *path;           /* request target (owned unless it is "/", which is shared) */
    char *protocol;       /* chosen subprotocol (owned) or NULL */
    uint32_t messages_out;
    uint16_t close_code; /* code to report to the app's close callback */
    /* the small enums and flags in the 16 bits left before the next pointer */
    unsigned state : 2;     /* enum ws_conn_state */
    unsigned closed_by : 2; /* enum ws_conn_closer */
    unsigned deciding : 2;  /* enum ws_conn_decision */
    bool in_flush_list : 1;
    bool opened : 1;     /* open() was called: close() is owed */
    bool ops_port : 1;   /* accepted on metrics_listen: served by ws_front_handle_ops */
    bool above_low : 1;  /* queue went above the low-water mark: drain() is owed */
    bool ip_counted : 1; /* counted in the per-IP table */
    bool held : 1;       /* CLOSED, kept for the app (ops->hold) until ws_conn_unhold */
    uint64_t bytes_in, bytes_out;
    char *close_reason;             /* owned, may be NULL */
    union {                         /* never both: a closed connection is in no flush list */
        struct ws_conn *next_flush; /* env->flush_head list, while in_flush_list */
        struct ws_conn *next_dead;  /* env->dead_head list, once CLOSED */
    };
    void *app_state; /* the app's own per-connection state; the core never touches it */
};

/* Sends one message (WS_OP_TEXT / WS_OP_BINARY) or control frame. Returns WS_CONN_SENT or
 * WS_CONN_QUEUED; WS_E_CLOSED when the connection is not open; WS_E_LIMIT when the message was
 * dropped under backpressure = "drop" (in "close" mode the connection starts closing with 1008
 * and WS_E_CLOSED is returned). */
int ws_conn_send(struct ws_conn *c, uint8_t opcode, const void *data, size_t len);

/* Sends set's message to c in the encoding c needs. Results as ws_conn_send. */
int ws_conn_send_set(struct ws_conn *c, struct ws_frameset *set);

/* Sends a frame encoded once for many recipients (ws_frameset_encode); the queue takes its own
 * reference. Same results. */
int ws_conn_send_shared(struct ws_conn *c, struct ws_shared *frame, bool is_data);

/* Starts the close handshake with code (0: no code) and reason (truncated to fit). Returns 0, or
 * WS_E_CLOSED when it is already closing or closed. */
int ws_conn_close(struct ws_conn *c, int code, const char *reason, size_t len);

/* Drops the connection at once without a close handshake (reported as code). */
void ws_conn_abort(struct ws_conn *c, int code, const char *reason);

/* Sends a ping with payload (<= 125 bytes). 0, WS_E_CLOSED or WS_E_INVAL. */
int ws_conn_ping(struct ws_conn *c, const void *payload, size_t len);

/* Bytes in the send queue. */
size_t ws_conn_buffered(const struct ws_conn *c);

/* One message taken by ws_conn_next_message; data is valid until the read's next message. */
struct ws_message {
    const uint8_t *data;
    size_t len;
    bool binary;
};

/* Inside ops->message: takes the next message of the same read when it is the next thing c's
 * peer sent, so the app may run it at once (counted as delivered, as ops->message is). False
 * when there is none, or a frame of another kind comes first (a ping, the close, an error):
 * that and everything after it go through the ops as usual, in order. */
bool ws_conn_next_message(struct ws_conn *c, struct ws_message *m);

/* A read being handled (env->feed): the bytes not yet fed to the session, and an event that
 * ws_conn_next_message took from them but left for the ops, in order. */
struct ws_feed {
    struct ws_conn *c;
    uint8_t *data;
    size_t len;
    bool held; /* rc and ev hold the next event */
    int rc;
    struct ws_session_event ev;
};

/* Inside ops->message: true when c's read holds more after this message (maybe a message for
 * ws_conn_next_message), false when the message was the read's last. */
static inline bool ws_conn_reading_more(const struct ws_conn *c)
{
    const struct ws_feed *f = c->env->feed;
    return f && f->c == c && (f->len || f->held);
}

/* A new accepted socket with its transport (state owned by the conn), registered in env. It may
 * be refused at once (per-address limit): it is then already CLOSED and queued for freeing. */
struct ws_conn *ws_conn_new(struct ws_env *env, int fd, const struct sockaddr *sa, socklen_t salen,
                            const struct ws_transport_ops *transport, void *transport_state);

/* Stops (held) or resumes reading the socket for the app: a connection whose handlers are
 * behind stops reading, so TCP pushes back on the peer (SPEC §4a). */
void ws_conn_hold_reading(struct ws_conn *c, bool held);

/* The app is done with a connection it held (ops->hold): the next pass reports its close and
 * frees it. No-op when it is not held. */
void ws_conn_unhold(struct ws_conn *c);

/* The app's decision on an upgrade request it deferred (reply->pending): the 101 (then open) or
 * the refusal goes out now. A connection that closed meanwhile (the client left,
 * handshake_timeout) gets nothing. What reply owns is taken or freed either way. */
void ws_conn_upgrade_decided(struct ws_conn *c, struct ws_upgrade_reply *reply);

/* The same for a plain request's route answer (reply->pending in ops->http). */
void ws_conn_http_answered(struct ws_conn *c, struct ws_http_reply *reply);

/* Writes what is queued now. */
void ws_conn_flush(struct ws_conn *c);

/* Reports the close to the app and frees c, which must be CLOSED. */
void ws_conn_destroy(struct ws_conn *c);

/* env->deadlines' callback: c's deadline fell due (a timeout, or a ping to send). */
void ws_conn_deadline_due(struct ws_deadlines *ds, struct ws_deadline *d);

/* Re-reads limits and timers from env's current configuration (after a reload). */
void ws_conn_apply_config(struct ws_conn *c);

/* The owner's once-per-iteration pass (an ev_prepare): flushes every connection written to and
 * frees every closed one, until neither list has anything left. */
void ws_conn_run_pending(struct ws_env *env);

/* ---- Within the module: conn.c (life, frames in, timeouts), conn_out.c (frames out, flushing)
 * and conn_http.c (the HTTP phase) call each other through these; nothing else does. ---- */

/* Reads of a connection still sending its request are at most this long, and a request may hold
 * this much past its limits (the bytes of one read); an open connection reads the whole buffer
 * (WS_ENV_READ_BYTES), so a large frame usually arrives whole and is not assembled by a copy. */
#define WS_CONN_REQUEST_READ_BYTES 65536

static inline const struct ws_config *ws_conn_cfg(const struct ws_conn *c)
{
    return &c->env->cfg;
}

/* Moves c to state to; an illegal transition is a bug (asserted). */
void ws_conn_set_state(struct ws_conn *c, enum ws_conn_state to);

/* Sets c's one deadline from its state and clocks (none once CLOSED). */
void ws_conn_rearm(struct ws_conn *c);

/* Counts c against max_connections_per_ip; false when that is one too many. */
bool ws_conn_take_ip_slot(struct ws_conn *c);

/* Feeds bytes from an open (or closing) connection to its session and acts on each event. */
void ws_conn_process_frames(struct ws_conn *c, uint8_t *data, size_t len);

/* Queues c for this iteration's flush pass; a closed connection has nothing to flush. */
void ws_conn_want_flush(struct ws_conn *c);

/* Queues one frame as it is (no back-pressure check). */
void ws_conn_queue_frame(struct ws_conn *c, uint8_t opcode, bool fin, uint8_t rsv, const void *data,
                         size_t len);

/* Queues our close frame and enters CLOSING: nothing is sent after it. */
void ws_conn_start_close(struct ws_conn *c, int code, const char *reason, size_t len);

/* Both close frames have passed on a plain socket: it closes once our last frame is out. */
bool ws_conn_closes_at_once(const struct ws_conn *c);

/* Request bytes from a CONNECTING connection: read under the limits, then decided. */
void ws_conn_read_request(struct ws_conn *c, const uint8_t *data, size_t len);

/* Bytes that come while the app decides on the request. */
void ws_conn_while_deciding(struct ws_conn *c, const uint8_t *data, size_t n);

/* Frees what the HTTP phase left: the request reader and the path. */
void ws_conn_free_http(struct ws_conn *c);

#endif
