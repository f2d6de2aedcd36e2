/* Static files for plain HTTP GET/HEAD (--static DIR): maps a request target to a file strictly
 * inside DIR (no "..", no encoded "%2e%2e", no symlink leading out), picks the content type,
 * answers 304 to a matching If-Modified-Since, and "/" (or a folder) serves its index.html.
 * Blocking file reads: meant for an app's own page and assets, not for bulk downloads. */
#ifndef WS_STATIC_H
#define WS_STATIC_H

#include "ws/http.h"

#include <stddef.h>

#define WS_STATIC_MAX_FILE (16u * 1024 * 1024)

struct ws_static_reply {
    int status;               /* 200, 304, 400, 403, 404, 405, 413 or 500 */
    const char *content_type; /* static string */
    char *body;               /* owned file contents (200 only) */
    size_t body_len;          /* the file's size (also for HEAD and 304) */
    char headers[256];        /* extra header lines, CRLF-terminated: Last-Modified, ... */
};

/* Serves req (GET or HEAD) from root. Never fails the process: every problem is a status. Free
 * with ws_static_reply_free. */
void ws_static_serve(const char *root, const struct ws_http_request *req,
                     struct ws_static_reply *reply);

void ws_static_reply_free(struct ws_static_reply *reply);

/* The content type for a file name by its extension ("application/octet-stream" by default). */
const char *ws_static_content_type(const char *name);

#endif
