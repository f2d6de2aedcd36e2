/* The HTTP front: what to answer to one parsed request head. A request goes in; a decision comes
 * out: either an answer (a complete HTTP response, after which the connection closes) or an
 * upgrade (the 101 response, the chosen subprotocol and the permessage-deflate parameters). It
 * serves /healthz, /metrics, the app's http routes and static files, refuses with 405/426, and
 * decides the upgrade (RFC 6455 §4.2 checks, limits, the app's upgrade hook, subprotocol and
 * compression). It does no I/O of its own and knows nothing of sockets or connection state. */
#ifndef WS_FRONT_H
#define WS_FRONT_H

#include "ws/buf.h"
#include "ws/deflate.h"
#include "ws/env.h"
#include "ws/http.h"

#include <stdbool.h>
#include <sys/socket.h>

struct ws_conn;

enum ws_front_action {
    WS_FRONT_ANSWER,  /* send response, then close */
    WS_FRONT_UPGRADE, /* send response (the 101), then speak WebSocket */
    WS_FRONT_PENDING, /* the app decides later: ws_front_upgrade_decided / ws_front_http_answered */
};

struct ws_front_reply {
    enum ws_front_action action;
    int status;             /* the status answered (101 for an upgrade) */
    bool refused;           /* a WebSocket handshake refused: counts as a handshake rejection */
    char reason[256];       /* why it was refused, for the access log; empty when none */
    struct ws_buf response; /* the bytes to send: head and body (owned) */
    char *protocol;         /* upgrade: the chosen subprotocol (owned), or NULL */
    bool deflate;           /* upgrade: permessage-deflate negotiated with params */
    struct ws_deflate_params params;
};

/* Decides what to answer to req, received on c (handed to the app's hooks, never touched here).
 * Always fills *reply, which must be freed with ws_front_reply_free. */
void ws_front_handle(struct ws_env *env, struct ws_conn *c, const struct ws_http_request *req,
                     struct ws_front_reply *reply);

/* The rest of the decision on an upgrade request req whose app hook answered later: app is the
 * hook's reply (what it owns is taken or freed here). Fills *reply as ws_front_handle does. */
void ws_front_upgrade_decided(struct ws_env *env, const struct ws_http_request *req,
                              struct ws_upgrade_reply *app, struct ws_front_reply *reply);

/* The answer to a plain request req whose app route answered later (app: freed here). */
void ws_front_http_answered(const struct ws_http_request *req, struct ws_http_reply *app,
                            struct ws_front_reply *reply);

/* The metrics listener (metrics_listen): /metrics and /healthz only, never an upgrade. */
void ws_front_handle_ops(struct ws_env *env, const struct ws_http_request *req,
                         struct ws_front_reply *reply);

/* Fills *reply with an error answer: status, a one-line text body (the status text when body is
 * NULL; at most 1 KiB is kept) and extra header lines (each ending in CRLF, or NULL). refused
 * marks a refused WebSocket handshake. */
void ws_front_error(struct ws_front_reply *reply, int status, const char *body, size_t len,
                    const char *extra, bool refused);

/* Frees what a reply owns; the struct may be reused after. */
void ws_front_reply_free(struct ws_front_reply *reply);

/* True when sa is one of env's trusted_proxies. */
bool ws_front_trusted(const struct ws_env *env, const struct sockaddr *sa);

/* The client's address behind a trusted proxy: when peer (the socket's address) is in
 * trusted_proxies and the request carries X-Forwarded-For (else Forwarded: for=), the nearest
 * address in it that is not itself a trusted proxy, in *out (port 0). False otherwise: the
 * socket's address is the client's. */
bool ws_front_client_address(const struct ws_env *env, const struct sockaddr *peer,
                             const struct ws_http_request *req, struct sockaddr_storage *out);

#endif
