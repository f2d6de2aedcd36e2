/* Outbound HTTP requests on the server's libev loop: libcurl's multi-socket API driven by ev_io
 * and ev_timer watchers, at most max_concurrent transfers in flight (later ones wait their turn
 * in arrival order). Callback-based; knows nothing of Lua or of what waits for the answer. */
#ifndef WS_HTTP_CLIENT_H
#define WS_HTTP_CLIENT_H

#include "ws/buf.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

struct ws_http_client;
struct ws_http_req;

#define WS_HTTP_MAX_HEADERS 64

/* One request. Every pointer is read during ws_http_client_request only (copied). */
struct ws_http_opts {
    const char *url;
    const char *method;                       /* "GET" when NULL */
    const char *headers[WS_HTTP_MAX_HEADERS]; /* "Name: value" lines */
    size_t nheaders;
    const char *body; /* NULL: no body */
    size_t body_len;
    double timeout;  /* seconds for the whole transfer, queueing excluded */
    size_t max_body; /* response body bytes at most */
    bool follow;     /* follow redirects (at most 10) */
    const char *ca_file;
    bool insecure; /* do not verify the peer's certificate */
};

/* What came back. ok false: err says why ("response too large", "timeout", or the transport's
 * message naming the host and port). The buffers belong to the callback, which frees them
 * (ws_http_result_free). */
struct ws_http_result {
    bool ok;
    bool timed_out;
    long status;
    struct ws_buf headers; /* the final response's header lines, CRLF-terminated */
    struct ws_buf body;
    char err[256];
    double seconds; /* from the start of the transfer (after any queueing) */
};

typedef void (*ws_http_done_fn)(void *ud, struct ws_http_result *res);

/* A client on loop; max_concurrent >= 1. Returns NULL when libcurl cannot start. */
struct ws_http_client *ws_http_client_new(struct ev_loop *loop, size_t max_concurrent);

/* Changes the concurrency cap (a reload); queued requests start if it grew. */
void ws_http_client_set_max(struct ws_http_client *hc, size_t max_concurrent);

/* Aborts every request (no callback runs) and frees the client; NULL is a no-op. */
void ws_http_client_free(struct ws_http_client *hc);

/* Starts (or queues) a request; done runs once, from the loop, never from inside this call.
 * Returns the request, or NULL with err filled when it cannot be made (no memory in libcurl). */
struct ws_http_req *ws_http_client_request(struct ws_http_client *hc, const struct ws_http_opts *o,
                                           ws_http_done_fn done, void *ud, char *err,
                                           size_t errlen);

/* Aborts r; its callback does not run. r is freed. */
void ws_http_client_cancel(struct ws_http_req *r);

/* Transfers in flight and waiting their turn. */
size_t ws_http_client_active(const struct ws_http_client *hc);
size_t ws_http_client_queued(const struct ws_http_client *hc);

/* The calls a client answers to, so that a stand-in can take the place of libcurl's (the testing
 * kit answers requests itself): lb_app keeps the client and a pointer to its ops. The clients of
 * other outside services (Redis, Postgres, upstream WebSockets) are swapped the same way. */
struct ws_http_client_ops {
    struct ws_http_req *(*request)(struct ws_http_client *hc, const struct ws_http_opts *o,
                                   ws_http_done_fn done, void *ud, char *err, size_t errlen);
    void (*cancel)(struct ws_http_req *r);
    void (*set_max)(struct ws_http_client *hc, size_t max_concurrent);
    void (*free)(struct ws_http_client *hc);
};

/* The functions above: the client ws_http_client_new makes. */
extern const struct ws_http_client_ops ws_http_client_libcurl;

/* Frees what a result holds. */
void ws_http_result_free(struct ws_http_result *res);

#endif
