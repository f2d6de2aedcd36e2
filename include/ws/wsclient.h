/* Outbound WebSocket connections (the client role, RFC 6455 §4.1, §5.3) on the server's libev
 * loop: name lookup off the loop, TCP connect, TLS with certificate verification, the opening
 * handshake, then frames through the same session code the server uses, masked with a fresh key
 * per frame. Callback-based; knows nothing of Lua or of who waits for what. */
#ifndef WS_WSCLIENT_H
#define WS_WSCLIENT_H

#include "ws/buf.h"
#include "ws/deflate.h"
#include "ws/env.h"
#include "ws/handshake_client.h"
#include "ws/http.h"
#include "ws/session.h"
#include "ws/wire.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ws_client;
struct ws_transport_ops;

/* Where connections come from instead of the network (the testing kit's stand-in for upstream
 * servers): no lookup, no TCP, no TLS; the same handshake, frames and session on top. */
struct ws_client_net {
    /* Runs inside ws_client_connect for url: returns a descriptor for the client's watcher with
     * the transport that moves its bytes (*tops, *ts; the client owns both from now on), or -1
     * with err filled (ws_client_connect then fails with it). */
    int (*open)(void *ud, const char *url, const struct ws_transport_ops **tops, void **ts,
                char *err, size_t errlen);
    /* Right after the client took fd: the watcher the transport makes ready. */
    void (*attach)(void *ud, void *ts, struct ev_loop *loop, ev_io *io);
    void *ud;
};

/* One connection. Every pointer is read during ws_client_connect only (copied). */
struct ws_client_opts {
    const char *url;
    const char *const *protocols; /* subprotocols offered, in preference order */
    size_t nprotocols;
    const char *const *headers; /* extra "Name: value" request lines */
    size_t nheaders;
    double timeout;            /* seconds for lookup, connect, TLS and the handshake together */
    double close_timeout;      /* seconds the closing handshake may take */
    size_t max_message_bytes;  /* a larger message from the server closes with 1009 */
    size_t max_buffered_bytes; /* ws_client_send refuses while more than this waits to be sent */
    bool compression;          /* offer permessage-deflate */
    const char *ca_file;       /* PEM CA bundle for wss (NULL: the system's) */
    bool insecure;             /* wss without certificate verification */
    struct ws_stats *stats;    /* counted here when not NULL (/metrics) */
    const struct ws_client_net *net; /* NULL: the network (lookup, TCP, TLS) */
};

/* How a client ended: once, through ops->end. */
struct ws_client_end {
    bool opened; /* the handshake had completed */
    /* opened: the close code (the server's, ours when we failed the connection, 1006 when the
     * connection ended without a close frame) and its reason (not NUL-terminated) */
    int code;
    const char *reason;
    size_t reason_len;
    /* not opened: the server's HTTP status and body when it answered something else than 101,
     * else 0 and empty */
    int status;
    const uint8_t *body;
    size_t body_len;
    const char *err; /* what went wrong, or NULL after a clean close handshake */
    bool timed_out;  /* the connect timeout or the close timeout passed */
};

/* The owner's callbacks, run from the loop, never from inside a ws_client_* call. Inside them
 * the owner may send, close and free the client (a free then happens once the callback returns).
 * Pointers are valid during the call only. */
struct ws_client_ops {
    void (*open)(void *ud, struct ws_client *c);
    void (*message)(void *ud, struct ws_client *c, const uint8_t *data, size_t len, bool binary);
    void (*end)(void *ud, struct ws_client *c, const struct ws_client_end *e);
};

/* Starts connecting; ops->open or ops->end runs later from the loop. Returns the client, or NULL
 * with err filled (a bad URL (ws_url_parse) or header, no thread or socket for the lookup, or
 * o->net refused the URL). The
 * caller frees it with ws_client_free, after ops->end or to abort it (no callback runs then). */
struct ws_client *ws_client_connect(struct ev_loop *loop, const struct ws_client_opts *o,
                                    const struct ws_client_ops *ops, void *ud, char *err,
                                    size_t errlen);

/* Sends one text (binary false) or binary message of len bytes (copied). Returns 0, WS_E_CLOSED
 * when the client is not open (connecting, closing or ended), or WS_E_LIMIT when more than
 * max_buffered_bytes already wait to be sent. Text must be UTF-8: the caller checks. */
int ws_client_send(struct ws_client *c, const void *data, size_t len, bool binary);

/* Sends a ping with up to 125 bytes of payload. 0, WS_E_CLOSED or WS_E_INVAL (too long). */
int ws_client_ping(struct ws_client *c, const void *data, size_t len);

/* Starts the closing handshake (RFC 6455 §7.1.2) with code (0: no code; else one
 * ws_close_code_valid accepts) and reason (cut to fit); ops->end runs once the server has
 * answered and closed TCP, or close_timeout later. Returns 0 or WS_E_CLOSED when not open. */
int ws_client_close(struct ws_client *c, int code, const char *reason, size_t len);

/* True between ops->open and the start of the closing handshake. */
bool ws_client_is_open(const struct ws_client *c);

/* The subprotocol the server picked ("" for none); valid until ws_client_free. */
const char *ws_client_protocol(const struct ws_client *c);

/* Bytes waiting to be sent. */
size_t ws_client_buffered(const struct ws_client *c);

/* Stops (held true) or resumes reading the socket, so a server cannot make the owner queue
 * without bound: TCP flow control holds it back. Messages already read are still delivered. */
void ws_client_hold(struct ws_client *c, bool held);

/* Counts into stats from now on (NULL: nowhere), e.g. before the server's counters go away. */
void ws_client_set_stats(struct ws_client *c, struct ws_stats *stats);

/* Aborts (no callback runs; an open connection is dropped without a close frame) and frees c;
 * NULL is a no-op. From inside a callback the free happens when the callback returns. */
void ws_client_free(struct ws_client *c);

/* ---- internal: shared by wsclient.c, wsclient_frames.c and wsclient_handshake.c only ---- */
/* Not a contract: other modules treat struct ws_client as opaque and use the calls above only.
 * wsclient.c: the client's life (connect, the socket, the timer, the end, free);
 * wsclient_handshake.c: the server's answer to the upgrade; wsclient_frames.c: the open
 * connection (frames out, the session's events in, the closing handshake). */

struct ws_dial;

#define WS_CLIENT_READ_BYTES 16384

enum ws_client_state {
    WS_CLIENT_CONNECTING,
    WS_CLIENT_SECURING,
    WS_CLIENT_HANDSHAKE,
    WS_CLIENT_BODY, /* the server refused: reading its answer's body */
    WS_CLIENT_OPEN,
    WS_CLIENT_CLOSING, /* a close frame went out or came in: waiting for the server to close TCP */
    WS_CLIENT_ENDED,
};

struct ws_client {
    struct ev_loop *loop;
    enum ws_client_state state;
    const struct ws_client_ops *ops;
    void *ud;
    struct ws_url url;
    char log_url[256]; /* scheme, host and path, never the query */
    char *protocols[16];
    size_t nprotocols;
    char *request; /* the upgrade request, sent once connected */
    size_t request_len;
    char key[WS_HANDSHAKE_KEY_LEN + 1];
    char *ca_file;
    bool insecure, compression;
    double timeout, close_timeout;
    size_t max_message_bytes, max_buffered_bytes;
    struct ws_stats *stats;
    struct ws_dial *dial; /* while connecting */
    struct ws_wire wire;
    bool wired;
    struct ws_chunk_pool pool;
    ev_timer timer;
    struct ws_buf head; /* the answer's head (then the refusal's body after it) */
    size_t scanned;
    struct ws_http_request resp;
    struct ws_http_framing framing;
    struct ws_http_chunked chunked;
    size_t body_at; /* where the body starts in head */
    char protocol[128];
    struct ws_session session;
    bool session_ready;
    struct ws_deflate deflate;
    bool deflate_on;
    struct ws_buf tx, zbuf;
    bool close_sent, close_received;
    int end_code; /* the code ops->end reports */
    char end_reason[WS_FRAME_MAX_CONTROL_PAYLOAD];
    size_t end_reason_len;
    const char *end_err;
    int depth;         /* callbacks running */
    bool free_pending; /* ws_client_free from inside a callback */
    uint8_t rbuf[WS_CLIENT_READ_BYTES];
};

/* wsclient.c */

/* Counts one connection attempt's result into c->stats (when set). */
void ws_client_count_result(struct ws_client *c, enum ws_stats_wsclient_result r);

/* Ends the client with e (e->opened is filled here): everything stops, the end is logged and
 * counted, then ops->end runs last (it may free c). A no-op once c ended. */
void ws_client_finish(struct ws_client *c, struct ws_client_end *e);

/* ws_client_finish for a failure before the connection opened (err: why). */
void ws_client_fail(struct ws_client *c, const char *err, bool timed_out);

/* wsclient_handshake.c */

/* Handshake bytes arrived (the answer's head, or a refusal's body after it). A 101 that passes
 * the checks opens c: the session is set up, ops->open runs, frames behind the head are fed. Any
 * other status is a refusal whose body is read until complete (ws_client_refused); an answer
 * that is not HTTP/1.1 or fails the checks ends c (ws_client_fail). Returns false when c ended
 * or is being freed (the caller stops at once). */
bool ws_client_handshake_bytes(struct ws_client *c, const uint8_t *p, size_t n);

/* Ends a client the server refused (status other than 101) with the status and the body read so
 * far; err, when not NULL, replaces the default "refused the upgrade with status N". */
void ws_client_refused(struct ws_client *c, const char *err);

/* wsclient_frames.c */

/* Records the code, reason (cut to fit; copied) and err (not copied: a static string or one
 * that outlives c) that ops->end will report for an open connection. */
void ws_client_set_end(struct ws_client *c, int code, const char *reason, size_t len,
                       const char *err);

/* Feeds bytes read to the session and acts on its events (messages to ops->message, pings
 * answered, the closing handshake). Returns false once c ended or is being freed (the caller
 * stops at once). */
bool ws_client_feed(struct ws_client *c, uint8_t *p, size_t n);

#endif
