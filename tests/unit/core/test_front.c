/* Unit tests for the HTTP front (src/core/front.c): parsed request heads in, answers and upgrades
 * out. /healthz, /metrics, HEAD, the app's routes, static files over a temp tree, 405/426
 * refusals, the upgrade checks, limits and the app's hook, subprotocols, permessage-deflate, and
 * ws_front_error's bodies; every reply is freed (ASan proves nothing leaks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/buf.h"
#include "ws/config.h"
#include "ws/env.h"
#include "ws/front.h"
#include "ws/http.h"

#include <ev.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RFC_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

#define HOST "Host: server.example.com\r\n"
#define UPGRADE_FIELDS                                                                             \
    HOST "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " RFC_KEY "\r\n"         \
         "Sec-WebSocket-Version: 13\r\n"

/* Sun, 06 Nov 1994 08:49:37 GMT */
#define MTIME 784111777

/* ---- the C test app: programmable hooks ---- */

static struct {
    int upgrade_calls, http_calls;
    struct ws_conn *conn_seen;
    /* upgrade(): refuse with status (0: accept), body, headers; or pick protocol */
    int refuse_status;
    const char *refuse_body;
    const char *refuse_headers;
    const char *protocol;
    /* http(): answer when route is set */
    bool route;
    int status;
    const char *body;
    const char *headers;
    const char *content_type;
} app;

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void app_upgrade(void *ctx, struct ws_conn *c, const struct ws_http_request *req,
                        struct ws_upgrade_reply *reply)
{
    assert_ptr_equal(ctx, &app);
    assert_non_null(req);
    /* the core zeroes the reply before the call */
    assert_int_equal(reply->status, 0);
    assert_null(reply->body);
    assert_null(reply->protocol);
    assert_null(reply->headers);
    app.upgrade_calls++;
    app.conn_seen = c;
    reply->status = app.refuse_status;
    reply->body = dup_or_null(app.refuse_body);
    reply->body_len = app.refuse_body ? strlen(app.refuse_body) : 0;
    reply->headers = dup_or_null(app.refuse_headers);
    reply->protocol = dup_or_null(app.protocol);
}

static bool app_http(void *ctx, struct ws_conn *c, const struct ws_http_request *req,
                     struct ws_http_reply *reply)
{
    assert_ptr_equal(ctx, &app);
    assert_non_null(req);
    app.http_calls++;
    app.conn_seen = c;
    if (!app.route)
        return false;
    reply->status = app.status;
    reply->body = dup_or_null(app.body);
    reply->body_len = app.body ? strlen(app.body) : 0;
    reply->headers = dup_or_null(app.headers);
    reply->content_type = dup_or_null(app.content_type);
    return true;
}

static const struct ws_app_ops ops = {.upgrade = app_upgrade, .http = app_http};
static const struct ws_app_ops no_ops = {0};

static void render_metrics(void *ctx, struct ws_buf *out)
{
    assert_ptr_equal(ctx, &app);
    const char *text = "ws_connections 3\n";
    ws_buf_append(out, text, strlen(text));
}

/* ---- the environment ---- */

static struct ev_loop *loop;
static struct ws_config cfg;
static struct ws_env env;
static bool env_up;
static struct ws_conn *const CONN = (struct ws_conn *)&app; /* never dereferenced by the front */

static char text[8192];
static struct ws_http_request req;
static struct ws_front_reply reply;
static char resp[65536]; /* the reply's bytes, NUL-terminated */

static char dir[64]; /* dir/root is served; dir/secret sits beside it */
static char root[PATH_MAX];

static void set_option(const char *name, const char *value)
{
    char err[256];
    const struct ws_option *opt = ws_config_find(name, false);
    assert_non_null(opt);
    assert_int_equal(ws_config_set(&cfg, opt, value, false, err, sizeof(err)), 0);
}

static void write_file(const char *path, const char *content)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, strlen(content), f), strlen(content));
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    (void)state;
    memset(&app, 0, sizeof(app));
    memset(&reply, 0, sizeof(reply));
    ws_config_init(&cfg);
    env_up = false;
    loop = ev_loop_new(EVFLAG_AUTO);
    return loop ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    ws_front_reply_free(&reply);
    if (env_up)
        ws_env_free(&env);
    ws_config_free(&cfg);
    ev_loop_destroy(loop);
    return 0;
}

/* Makes the env from cfg as it stands; hooks from app_ops. */
static void start_with(const struct ws_app_ops *app_ops)
{
    ws_env_init(&env, loop, &cfg, app_ops, &app);
    env_up = true;
}

static void start(void)
{
    start_with(&ops);
}

/* Parses request line plus CRLF-terminated fields, runs the front and keeps a NUL-terminated copy
 * of the response. Returns the status. */
static int handle(const char *line, const char *fields)
{
    int n = snprintf(text, sizeof(text), "%s\r\n%s\r\n", line, fields);
    assert_true(n > 0 && (size_t)n < sizeof(text));
    size_t scanned = 0;
    assert_int_equal(ws_http_parse(text, (size_t)n, sizeof(text), &scanned, &req), 0);
    ws_front_reply_free(&reply);
    ws_front_handle(&env, CONN, &req, &reply);
    assert_true(reply.response.len < sizeof(resp));
    memcpy(resp, reply.response.data, reply.response.len);
    resp[reply.response.len] = 0;
    return reply.status;
}

static int get(const char *target)
{
    char line[512];
    snprintf(line, sizeof(line), "GET %s HTTP/1.1", target);
    return handle(line, HOST);
}

static int upgrade_with(const char *fields)
{
    return handle("GET /chat HTTP/1.1", fields);
}

/* The response's status line parses to status. */
static void assert_status_line(int status)
{
    char want[32];
    snprintf(want, sizeof(want), "HTTP/1.1 %d ", status);
    assert_memory_equal(resp, want, strlen(want));
}

static const char *body(void)
{
    const char *end = strstr(resp, "\r\n\r\n");
    assert_non_null(end);
    return end + 4;
}

/* The value of header name in the response head, or NULL (in a static buffer). */
static const char *header(const char *name)
{
    static char value[1024];
    const char *end = strstr(resp, "\r\n\r\n");
    assert_non_null(end);
    size_t n = strlen(name);
    for (const char *p = strstr(resp, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n")) {
        const char *f = p + 2;
        if (strncasecmp(f, name, n) == 0 && f[n] == ':') {
            const char *v = f + n + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            assert_true((size_t)(e - v) < sizeof(value));
            memcpy(value, v, (size_t)(e - v));
            value[e - v] = 0;
            return value;
        }
    }
    return NULL;
}

static size_t header_count(const char *name)
{
    size_t count = 0, n = strlen(name);
    const char *end = strstr(resp, "\r\n\r\n");
    for (const char *p = strstr(resp, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n"))
        count += strncasecmp(p + 2, name, n) == 0 && p[2 + n] == ':';
    return count;
}

/* Content-Length agrees with the body actually sent (or, for HEAD, with expected). */
static void assert_length(size_t expected, bool head)
{
    const char *cl = header("Content-Length");
    assert_non_null(cl);
    assert_int_equal(strtoul(cl, NULL, 10), expected);
    assert_int_equal(strlen(body()), head ? 0 : expected);
}

static void assert_answer(int status)
{
    assert_int_equal(reply.action, WS_FRONT_ANSWER);
    assert_int_equal(reply.status, status);
    assert_status_line(status);
    assert_string_equal(header("Connection"), "close");
    assert_null(reply.protocol);
}

static void assert_refused(int status)
{
    assert_answer(status);
    assert_true(reply.refused);
    assert_true(reply.reason[0] != 0);
    assert_false(reply.deflate);
    assert_null(header("Sec-WebSocket-Accept"));
}

static void assert_upgraded(void)
{
    assert_int_equal(reply.action, WS_FRONT_UPGRADE);
    assert_int_equal(reply.status, 101);
    assert_false(reply.refused);
    assert_string_equal(reply.reason, "");
    assert_status_line(101);
    assert_string_equal(header("Sec-WebSocket-Accept"), RFC_ACCEPT);
    assert_string_equal(body(), "");
}

/* ---- built-in endpoints ---- */

static void test_healthz(void **state)
{
    (void)state;
    start();
    assert_int_equal(get("/healthz"), 200);
    assert_answer(200);
    assert_false(reply.refused);
    assert_string_equal(body(), "ok\n");
    assert_length(3, false);
    assert_int_equal(app.http_calls, 0); /* answered before the app's routes */

    assert_int_equal(get("/healthz?probe=1"), 200); /* the query is not part of the path */
    assert_int_equal(get("/healthzz"), 426);

    env.draining = true;
    assert_int_equal(get("/healthz"), 503);
    assert_answer(503);
    assert_string_equal(body(), "shutting down\n");
    assert_length(14, false);
}

static void test_head_has_length_not_body(void **state)
{
    (void)state;
    start();
    assert_int_equal(handle("HEAD /healthz HTTP/1.1", HOST), 200);
    assert_answer(200);
    assert_length(3, true);

    app.route = true;
    app.status = 201;
    app.body = "created\n";
    assert_int_equal(handle("HEAD /thing HTTP/1.1", HOST), 201);
    assert_length(8, true);
}

static void test_metrics(void **state)
{
    (void)state;
    /* off by default: /metrics goes on to the app and then the 426 */
    start();
    env.render_metrics = render_metrics;
    env.metrics_ctx = &app;
    assert_int_equal(get("/metrics"), 426);
    assert_int_equal(app.http_calls, 1);
    ws_env_free(&env);

    /* on, but nothing renders: not served */
    cfg.metrics = true;
    start();
    assert_int_equal(get("/metrics"), 426);
    env.render_metrics = render_metrics;
    env.metrics_ctx = &app;
    assert_int_equal(get("/metrics"), 200);
    assert_answer(200);
    assert_string_equal(header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    assert_string_equal(body(), "ws_connections 3\n");
    assert_length(17, false);
    assert_int_equal(handle("HEAD /metrics HTTP/1.1", HOST), 200);
    assert_length(17, true);
    assert_int_equal(handle("POST /metrics HTTP/1.1", HOST "Content-Length: 0\r\n"), 405);
}

/* ---- the app's routes ---- */

static void test_app_route(void **state)
{
    (void)state;
    start();
    app.route = true;
    app.status = 404;
    app.body = "{\"error\":\"none\"}";
    app.headers = "X-Test: yes\r\nCache-Control: no-store\r\n";
    app.content_type = "application/json";
    assert_int_equal(get("/api/thing"), 404);
    assert_answer(404);
    assert_false(reply.refused);
    assert_ptr_equal(app.conn_seen, CONN);
    assert_int_equal(app.http_calls, 1);
    assert_string_equal(header("Content-Type"), "application/json");
    assert_string_equal(header("X-Test"), "yes");
    assert_string_equal(header("Cache-Control"), "no-store");
    assert_string_equal(body(), "{\"error\":\"none\"}");
    assert_length(16, false);

    /* default content type; an empty body */
    app.status = 200;
    app.body = NULL;
    app.headers = NULL;
    app.content_type = NULL;
    assert_int_equal(get("/"), 200);
    assert_string_equal(header("Content-Type"), "text/plain; charset=utf-8");
    assert_length(0, false);

    /* routes see other methods too */
    app.body = "posted";
    assert_int_equal(handle("POST /form HTTP/1.1", HOST "Content-Length: 0\r\n"), 200);
    assert_string_equal(body(), "posted");
}

/* An app's headers too long for the response head: the status the front reports is the one it
 * sends, and no body follows a head that does not announce it. */
static void test_app_route_head_overflow(void **state)
{
    (void)state;
    start();
    static char big[2000];
    for (size_t i = 0; i < 99; i++)
        memcpy(big + i * 19, "X-Pad: aaaaaaaaaa\r\n", 19);
    big[99 * 19] = 0;
    app.route = true;
    app.status = 200;
    app.body = "secret body";
    app.headers = big;
    assert_int_equal(get("/big"), 500);
    assert_int_equal(reply.action, WS_FRONT_ANSWER);
    assert_status_line(500);
    assert_null(strstr(resp, "secret body"));
    assert_length(0, false);
}

/* ---- plain requests without routes ---- */

static void test_plain_get_426(void **state)
{
    (void)state;
    start_with(&no_ops);
    assert_int_equal(get("/"), 426);
    assert_answer(426);
    assert_false(reply.refused);
    assert_string_equal(header("Upgrade"), "websocket");
    assert_string_equal(body(), "this is a WebSocket endpoint: use a WebSocket client\n");
    assert_length(strlen(body()), false);
    ws_env_free(&env);

    /* an app whose http hook declines is the same */
    start();
    assert_int_equal(get("/"), 426);
    assert_int_equal(app.http_calls, 1);
}

static void test_non_get_405(void **state)
{
    (void)state;
    start_with(&no_ops);
    const char *methods[] = {"POST", "PUT", "DELETE", "OPTIONS", "get"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        char line[64];
        snprintf(line, sizeof(line), "%s / HTTP/1.1", methods[i]);
        assert_int_equal(handle(line, HOST "Content-Length: 0\r\n"), 405);
        assert_answer(405);
        assert_false(reply.refused);
        assert_string_equal(header("Allow"), "GET, HEAD");
        assert_int_equal(header_count("Allow"), 1);
        assert_string_equal(body(), "method not allowed\n");
    }
    /* even /healthz is GET/HEAD only */
    assert_int_equal(handle("POST /healthz HTTP/1.1", HOST "Content-Length: 0\r\n"), 405);
}

/* ---- static files ---- */

static void static_tree(void)
{
    strcpy(dir, "/tmp/ws_front_XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(root, sizeof(root), "%s/root", dir);
    assert_int_equal(mkdir(root, 0755), 0);
    char p[PATH_MAX + 32];
    snprintf(p, sizeof(p), "%s/index.html", root);
    write_file(p, "<h1>hi</h1>\n");
    struct timespec ts[2] = {{MTIME, 0}, {MTIME, 0}};
    assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
    snprintf(p, sizeof(p), "%s/app.js", root);
    write_file(p, "let x;\n");
    snprintf(p, sizeof(p), "%s/secret", dir);
    write_file(p, "outside root\n");
    set_option("static", root);
}

static void remove_tree(void)
{
    char p[PATH_MAX + 32];
    snprintf(p, sizeof(p), "%s/index.html", root);
    assert_int_equal(unlink(p), 0);
    snprintf(p, sizeof(p), "%s/app.js", root);
    assert_int_equal(unlink(p), 0);
    snprintf(p, sizeof(p), "%s/secret", dir);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(rmdir(root), 0);
    assert_int_equal(rmdir(dir), 0);
}

static void test_static_files(void **state)
{
    (void)state;
    static_tree();
    start();

    assert_int_equal(get("/"), 200);
    assert_answer(200);
    assert_false(reply.refused);
    assert_string_equal(header("Content-Type"), "text/html; charset=utf-8");
    assert_string_equal(header("Last-Modified"), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_string_equal(body(), "<h1>hi</h1>\n");
    assert_length(12, false);
    assert_int_equal(app.http_calls, 1); /* the app's routes come first */

    assert_int_equal(get("/app.js"), 200);
    assert_string_equal(header("Content-Type"), "text/javascript; charset=utf-8");
    assert_string_equal(body(), "let x;\n");

    assert_int_equal(handle("HEAD /index.html HTTP/1.1", HOST), 200);
    assert_length(12, true);

    /* 304: no body, Content-Length of the file */
    assert_int_equal(handle("GET /index.html HTTP/1.1",
                            HOST "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
                     304);
    assert_answer(304);
    assert_string_equal(body(), "");
    assert_int_equal(strtoul(header("Content-Length"), NULL, 10), 12);
    assert_int_equal(handle("GET /index.html HTTP/1.1",
                            HOST "If-Modified-Since: Sun, 06 Nov 1994 08:49:36 GMT\r\n"),
                     200);

    assert_int_equal(get("/missing.txt"), 404);
    assert_answer(404);
    assert_false(reply.refused);
    assert_length(strlen(body()), false);

    /* traversal in any spelling is refused and never shows the file beside the root */
    const char *probes[] = {"/../secret", "/%2e%2e/secret", "/..%2fsecret", "/a/../../secret",
                            "/%2E%2E%2Fsecret"};
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        int status = get(probes[i]);
        assert_true(status == 404 || status == 400);
        assert_answer(status);
        assert_null(strstr(resp, "outside root"));
    }

    /* the app's route wins over a file */
    app.route = true;
    app.status = 200;
    app.body = "from the app";
    assert_int_equal(get("/index.html"), 200);
    assert_string_equal(body(), "from the app");

    /* static files are GET/HEAD only */
    app.route = false;
    assert_int_equal(handle("POST /index.html HTTP/1.1", HOST "Content-Length: 0\r\n"), 405);
    assert_string_equal(body(), "method not allowed\n");
    remove_tree();
}

/* ---- the upgrade ---- */

static void test_upgrade_rfc_vector(void **state)
{
    (void)state;
    start();
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 101);
    assert_upgraded();
    assert_memory_equal(resp, "HTTP/1.1 101 Switching Protocols\r\n", 34);
    assert_string_equal(header("Upgrade"), "websocket");
    assert_null(reply.protocol);
    assert_null(header("Sec-WebSocket-Protocol"));
    assert_false(reply.deflate);
    assert_null(header("Sec-WebSocket-Extensions"));
    assert_int_equal(app.upgrade_calls, 1);
    assert_int_equal(app.http_calls, 0);
    assert_ptr_equal(app.conn_seen, CONN);

    /* without an upgrade hook the app accepts */
    ws_env_free(&env);
    start_with(&no_ops);
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 101);
    assert_upgraded();
}

static void test_upgrade_bad_headers_400(void **state)
{
    (void)state;
    start();
    const char *bad[] = {
        /* no key */
        HOST "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        /* key too short */
        HOST "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"
             "Sec-WebSocket-Version: 13\r\n",
        /* no Connection: Upgrade */
        HOST "Upgrade: websocket\r\nSec-WebSocket-Key: " RFC_KEY
             "\r\nSec-WebSocket-Version: 13\r\n",
        /* no version */
        HOST "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " RFC_KEY "\r\n",
        /* no Host */
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " RFC_KEY "\r\n"
        "Sec-WebSocket-Version: 13\r\n",
        /* two keys */
        UPGRADE_FIELDS "Sec-WebSocket-Key: " RFC_KEY "\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(upgrade_with(bad[i]), 400);
        assert_refused(400);
        /* the reason is the body's line, without its newline */
        char line[300];
        snprintf(line, sizeof(line), "%s\n", reply.reason);
        assert_string_equal(body(), line);
        assert_length(strlen(line), false);
    }
    assert_int_equal(app.upgrade_calls, 0);

    /* HTTP/1.0 cannot upgrade */
    assert_int_equal(handle("GET /chat HTTP/1.0", UPGRADE_FIELDS), 400);
    assert_refused(400);
}

static void test_upgrade_version_426(void **state)
{
    (void)state;
    start();
    assert_int_equal(upgrade_with(HOST "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                       "Sec-WebSocket-Key: " RFC_KEY "\r\n"
                                       "Sec-WebSocket-Version: 12\r\n"),
                     426);
    assert_refused(426);
    assert_string_equal(header("Sec-WebSocket-Version"), "13");
    assert_int_equal(app.upgrade_calls, 0);
}

static void test_upgrade_post_405(void **state)
{
    (void)state;
    start();
    assert_int_equal(handle("POST /chat HTTP/1.1", UPGRADE_FIELDS "Content-Length: 0\r\n"), 405);
    assert_refused(405);
    assert_non_null(header("Allow"));
    assert_int_equal(app.upgrade_calls, 0);
    assert_int_equal(app.http_calls, 0);
}

static void test_upgrade_server_full_503(void **state)
{
    (void)state;
    cfg.max_connections = 2;
    start();
    env.nupgraded = 1;
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 101);
    assert_upgraded();
    env.nupgraded = 2;
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 503);
    assert_refused(503);
    assert_string_equal(reply.reason, "server full");
    assert_string_equal(body(), "server full\n");
    assert_string_equal(header("Retry-After"), "5");
    assert_int_equal(app.upgrade_calls, 1); /* the app is not asked when full */
    env.nupgraded = 3;
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 503);
}

static void test_upgrade_app_refuses(void **state)
{
    (void)state;
    start();
    app.refuse_status = 403;
    app.refuse_body = "not you";
    app.refuse_headers = "X-Reason: test\r\nWWW-Authenticate: Bearer\r\n";
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 403);
    assert_refused(403);
    assert_string_equal(reply.reason, "not you");
    assert_string_equal(body(), "not you\n");
    assert_string_equal(header("X-Reason"), "test");
    assert_string_equal(header("WWW-Authenticate"), "Bearer");
    assert_length(8, false);
    assert_int_equal(app.upgrade_calls, 1);

    /* no body: the status text */
    app.refuse_body = NULL;
    app.refuse_headers = NULL;
    app.refuse_status = 401;
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 401);
    assert_refused(401);
    assert_string_equal(body(), "Unauthorized\n");
    assert_string_equal(reply.reason, "Unauthorized");

    /* a refusal also drops a protocol the app picked */
    app.protocol = "chat";
    assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Protocol: chat\r\n"), 401);
    assert_refused(401);
    assert_null(header("Sec-WebSocket-Protocol"));
}

/* A refusal that cannot be written (headers and body too long, a status not three digits): a
 * well-formed 500 rather than no bytes at all. */
static void test_upgrade_app_refuses_oversized(void **state)
{
    (void)state;
    start();
    static char big[2000];
    for (size_t i = 0; i < 99; i++)
        memcpy(big + i * 19, "X-Pad: aaaaaaaaaa\r\n", 19);
    big[99 * 19] = 0;
    static char long_body[1500];
    memset(long_body, 'b', sizeof(long_body) - 1);
    app.refuse_status = 403;
    app.refuse_body = long_body;
    app.refuse_headers = big;
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 500);
    assert_refused(500);
    assert_length(0, false);

    /* a status that is not three digits */
    app.refuse_headers = NULL;
    app.refuse_body = "odd";
    app.refuse_status = 1000;
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 500);
    assert_refused(500);
    assert_length(0, false);
}

static void test_protocol_app_choice(void **state)
{
    (void)state;
    set_option("protocols", "chat"); /* the app's choice wins over the configured list */
    start();
    app.protocol = "superchat";
    assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Protocol: chat, superchat\r\n"),
                     101);
    assert_upgraded();
    assert_string_equal(reply.protocol, "superchat");
    assert_string_equal(header("Sec-WebSocket-Protocol"), "superchat");
    assert_int_equal(header_count("Sec-WebSocket-Protocol"), 1);

    /* offered in a second field */
    app.protocol = "v2";
    assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Protocol: v1\r\n"
                                                 "Sec-WebSocket-Protocol: v2\r\n"),
                     101);
    assert_string_equal(reply.protocol, "v2");
    assert_string_equal(header("Sec-WebSocket-Protocol"), "v2");

    /* one the client did not offer (case counts): 500, nothing echoed */
    app.protocol = "Chat";
    assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Protocol: chat\r\n"), 500);
    assert_refused(500);
    assert_null(header("Sec-WebSocket-Protocol"));
    app.protocol = "chat";
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 500);
    assert_refused(500);
}

static void test_protocol_config_order(void **state)
{
    (void)state;
    set_option("protocols", "superchat");
    set_option("protocols", "chat");
    start();
    /* the server's order, not the client's */
    assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Protocol: chat, superchat\r\n"),
                     101);
    assert_upgraded();
    assert_string_equal(reply.protocol, "superchat");
    assert_string_equal(header("Sec-WebSocket-Protocol"), "superchat");
    assert_int_equal(header_count("Sec-WebSocket-Protocol"), 1);
    assert_null(strchr(header("Sec-WebSocket-Protocol"), ','));

    assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Protocol: other, chat\r\n"), 101);
    assert_string_equal(reply.protocol, "chat");
    assert_string_equal(header("Sec-WebSocket-Protocol"), "chat");

    /* nothing in common, or nothing offered: accepted without a protocol */
    assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Protocol: other\r\n"), 101);
    assert_upgraded();
    assert_null(reply.protocol);
    assert_null(header("Sec-WebSocket-Protocol"));
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 101);
    assert_null(reply.protocol);
    assert_null(header("Sec-WebSocket-Protocol"));
}

static void test_protocol_none_configured(void **state)
{
    (void)state;
    start();
    /* a client's list is never echoed back */
    assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Protocol: chat, superchat\r\n"),
                     101);
    assert_upgraded();
    assert_null(reply.protocol);
    assert_null(header("Sec-WebSocket-Protocol"));
}

#define DEFLATE_OFFER "Sec-WebSocket-Extensions: permessage-deflate\r\n"

static void test_deflate_off(void **state)
{
    (void)state;
    start();
    assert_int_equal(upgrade_with(UPGRADE_FIELDS DEFLATE_OFFER), 101);
    assert_upgraded();
    assert_false(reply.deflate);
    assert_null(header("Sec-WebSocket-Extensions"));
}

static void test_deflate_on(void **state)
{
    (void)state;
    set_option("compression", "on");
    start();
    assert_int_equal(upgrade_with(UPGRADE_FIELDS DEFLATE_OFFER), 101);
    assert_upgraded();
    assert_true(reply.deflate);
    assert_string_equal(header("Sec-WebSocket-Extensions"),
                        "permessage-deflate; server_no_context_takeover");
    assert_int_equal(header_count("Sec-WebSocket-Extensions"), 1);
    assert_true(reply.params.server_no_context_takeover);
    assert_int_equal(reply.params.server_max_window_bits, 15);
    assert_int_equal(reply.params.client_max_window_bits, 15);
    assert_int_equal(reply.params.compress_min_size, 128);

    /* no offer: none answered */
    assert_int_equal(upgrade_with(UPGRADE_FIELDS), 101);
    assert_false(reply.deflate);
    assert_null(header("Sec-WebSocket-Extensions"));

    /* server_max_window_bits=8 cannot be honoured: declined, the upgrade goes on */
    assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Extensions: permessage-deflate; "
                                                 "server_max_window_bits=8\r\n"),
                     101);
    assert_upgraded();
    assert_false(reply.deflate);
    assert_null(header("Sec-WebSocket-Extensions"));

    /* ... and the next offer is taken */
    assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Extensions: permessage-deflate; "
                                                 "server_max_window_bits=8, permessage-deflate; "
                                                 "server_max_window_bits=10\r\n"),
                     101);
    assert_true(reply.deflate);
    assert_int_equal(reply.params.server_max_window_bits, 10);
    assert_non_null(strstr(header("Sec-WebSocket-Extensions"), "server_max_window_bits=10"));

    /* a refusal negotiates nothing */
    app.refuse_status = 403;
    assert_int_equal(upgrade_with(UPGRADE_FIELDS DEFLATE_OFFER), 403);
    assert_refused(403);
    assert_null(header("Sec-WebSocket-Extensions"));
}

/* ---- ws_front_error ---- */

static void error_reply(int status, const char *b, size_t len, const char *extra, bool refused)
{
    ws_front_reply_free(&reply);
    ws_front_error(&reply, status, b, len, extra, refused);
    assert_true(reply.response.len < sizeof(resp));
    memcpy(resp, reply.response.data, reply.response.len);
    resp[reply.response.len] = 0;
}

static void test_error_bodies(void **state)
{
    (void)state;
    ws_buf_init(&reply.response);

    error_reply(400, "bad thing", 9, NULL, true);
    assert_answer(400);
    assert_true(reply.refused);
    assert_string_equal(reply.reason, "bad thing");
    assert_string_equal(body(), "bad thing\n");
    assert_length(10, false);

    /* a trailing newline is not doubled; the reason has none */
    error_reply(400, "line\n", 5, NULL, false);
    assert_false(reply.refused);
    assert_string_equal(body(), "line\n");
    assert_string_equal(reply.reason, "line");

    /* NULL body: the status text */
    error_reply(404, NULL, 0, "X-A: b\r\n", false);
    assert_answer(404);
    assert_string_equal(body(), "Not Found\n");
    assert_string_equal(reply.reason, "Not Found");
    assert_string_equal(header("X-A"), "b");

    /* len counts, not a NUL */
    error_reply(400, "abcdef", 3, NULL, true);
    assert_string_equal(body(), "abc\n");
    assert_string_equal(reply.reason, "abc");

    /* over 1 KiB: cut to 1024 bytes plus the newline; the reason to its field */
    static char big[3000];
    memset(big, 'x', sizeof(big));
    error_reply(400, big, sizeof(big), NULL, true);
    assert_answer(400);
    assert_length(1025, false);
    assert_int_equal(strspn(body(), "x"), 1024);
    assert_string_equal(body() + 1024, "\n");
    assert_int_equal(strlen(reply.reason), sizeof(reply.reason) - 1);

    /* exactly 1 KiB is kept whole */
    error_reply(400, big, 1024, NULL, true);
    assert_length(1025, false);
    big[1023] = '\n';
    error_reply(400, big, 1024, NULL, true);
    assert_length(1024, false);
}

/* The reply's bytes and protocol are freed and the struct reused (run under ASan: no leak). */
static void test_reply_free_and_reuse(void **state)
{
    (void)state;
    set_option("protocols", "chat");
    start();
    for (int i = 0; i < 3; i++) {
        assert_int_equal(upgrade_with(UPGRADE_FIELDS "Sec-WebSocket-Protocol: chat\r\n"), 101);
        assert_string_equal(reply.protocol, "chat");
        ws_front_reply_free(&reply);
        assert_null(reply.protocol);
        ws_front_reply_free(&reply); /* twice is harmless */
        assert_int_equal(get("/healthz"), 200);
    }
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_healthz),
        T(test_head_has_length_not_body),
        T(test_metrics),
        T(test_app_route),
        T(test_app_route_head_overflow),
        T(test_plain_get_426),
        T(test_non_get_405),
        T(test_static_files),
        T(test_upgrade_rfc_vector),
        T(test_upgrade_bad_headers_400),
        T(test_upgrade_version_426),
        T(test_upgrade_post_405),
        T(test_upgrade_server_full_503),
        T(test_upgrade_app_refuses),
        T(test_upgrade_app_refuses_oversized),
        T(test_protocol_app_choice),
        T(test_protocol_config_order),
        T(test_protocol_none_configured),
        T(test_deflate_off),
        T(test_deflate_on),
        T(test_error_bodies),
        T(test_reply_free_and_reuse),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
