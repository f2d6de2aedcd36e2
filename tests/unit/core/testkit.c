/* The kit around the test app: a fresh loop with an env or a server, bounded pumping, and a client
 * end over a socketpair or the server's unix listener that speaks the handshake and masked frames.
 * Every wait is bounded by iterations and real time, so a broken core fails a test instead of
 * hanging it. */
#include "testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/err.h"
#include "ws/frame.h"
#include "ws/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#define PUMP_ROUNDS 8
#define READ_ROUNDS 200

/* ---- The kit ---- */

void testkit_config(struct ws_config *cfg)
{
    ws_config_init(cfg);
    cfg->ping_interval = 0;
    cfg->close_timeout = 1;
    cfg->handshake_timeout = 2;
    cfg->shutdown_timeout = 2;
}

void testkit_set(struct ws_config *cfg, const char *name, const char *value)
{
    char err[256];
    const struct ws_option *opt = ws_config_find(name, false);
    assert_non_null(opt);
    if (ws_config_set(cfg, opt, value, false, err, sizeof(err)) != 0)
        fail_msg("%s", err);
}

static void kit_begin(struct testkit *k)
{
    memset(k, 0, sizeof(*k));
    ws_log_setup(WS_LOG_ERROR, WS_LOG_TEXT); /* the refusals tests provoke are not news */
    k->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(k->loop);
    testapp_init(&k->app);
}

void testkit_init(struct testkit *k, const struct ws_config *cfg)
{
    kit_begin(k);
    ws_env_init(&k->own, k->loop, cfg, &testapp_ops, &k->app);
    k->env = &k->own;
}

void testkit_init_server(struct testkit *k, const struct ws_config *cfg, char *path, size_t cap)
{
    kit_begin(k);
    snprintf(k->dir, sizeof(k->dir), "/tmp/wsunit.XXXXXX");
    assert_non_null(mkdtemp(k->dir));
    struct ws_config c;
    ws_config_copy(&c, cfg);
    char addr[128];
    snprintf(addr, sizeof(addr), "unix:%s/s", k->dir);
    testkit_set(&c, "listen", addr);
    char err[512];
    k->srv = ws_server_new(k->loop, &c, &testapp_ops, &k->app, err, sizeof(err));
    ws_config_free(&c);
    if (!k->srv)
        fail_msg("%s", err);
    k->env = &k->srv->env;
    k->app.srv = k->srv;
    if (path)
        snprintf(path, cap, "%s", addr + 5);
}

struct testkit *testkit_new(void **state, const struct ws_config *cfg)
{
    struct testkit *k = ws_xcalloc(1, sizeof(*k));
    *state = k;
    testkit_init(k, cfg);
    return k;
}

struct testkit *testkit_new_server(void **state, const struct ws_config *cfg, char *path,
                                   size_t cap)
{
    struct testkit *k = ws_xcalloc(1, sizeof(*k));
    *state = k;
    testkit_init_server(k, cfg, path, cap);
    return k;
}

int testkit_teardown(void **state)
{
    struct testkit *k = *state;
    *state = NULL;
    if (k && k->loop)
        testkit_free(k);
    free(k);
    return 0;
}

void testkit_free(struct testkit *k)
{
    if (k->srv) {
        ws_server_free(k->srv);
    } else {
        for (struct ws_registry_node *n = k->env->conns.head; n; n = n->next)
            ws_conn_abort((struct ws_conn *)n, 1006, NULL);
        ws_conn_run_pending(k->env);
        ws_env_free(k->env);
    }
    if (k->dir[0]) {
        char p[128];
        snprintf(p, sizeof(p), "%s/s", k->dir);
        unlink(p);
        rmdir(k->dir);
    }
    testapp_free(&k->app);
    ev_loop_destroy(k->loop);
}

void testkit_pump(struct testkit *k)
{
    for (int i = 0; i < PUMP_ROUNDS; i++) {
        ev_run(k->loop, EVRUN_NOWAIT);
        if (!k->srv)
            ws_conn_run_pending(k->env);
    }
}

static void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    *(bool *)w->data = true;
}

void testkit_run_for(struct testkit *k, double seconds)
{
    bool done = false;
    ev_timer guard;
    ev_now_update(k->loop);
    ev_timer_init(&guard, on_guard, seconds, 0);
    guard.data = &done;
    ev_timer_start(k->loop, &guard);
    for (int i = 0; i < 100000 && !done; i++) {
        ev_run(k->loop, EVRUN_ONCE);
        if (!k->srv)
            ws_conn_run_pending(k->env);
    }
    ev_timer_stop(k->loop, &guard);
    assert_true(done);
}

struct ws_conn *testkit_conn(struct testkit *k, uint64_t id)
{
    return (struct ws_conn *)ws_registry_get(&k->env->conns, id);
}

size_t testkit_count_state(struct testkit *k, enum ws_conn_state state)
{
    size_t n = 0;
    for (struct ws_registry_node *node = k->env->conns.head; node; node = node->next)
        n += ((struct ws_conn *)node)->state == state;
    return n;
}

/* ---- The client end ---- */

static void client_begin(struct testclient *cl, int fd)
{
    memset(cl, 0, sizeof(*cl));
    cl->fd = fd;
    ws_buf_init(&cl->in);
    ws_buf_reserve(&cl->in, 1);
    cl->in.data[0] = 0;
}

void testclient_pair(struct testkit *k, struct testclient *cl, int type, const struct sockaddr *sa,
                     socklen_t salen)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    client_begin(cl, sv[0]);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    if (!sa) {
        sa = (const struct sockaddr *)&un;
        salen = sizeof(un);
    }
    ev_now_update(k->loop);
    cl->conn = ws_conn_new(k->env, sv[1], sa, salen, &ws_transport_plain, NULL);
    cl->id = cl->conn->node.id;
}

void testclient_dial(struct testkit *k, struct testclient *cl, const char *path)
{
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof(un.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&un, sizeof(un)), 0);
    client_begin(cl, fd);
    uint64_t before = k->env->next_id;
    for (int i = 0; i < READ_ROUNDS && k->env->next_id == before; i++)
        testkit_pump(k);
    assert_int_equal(k->env->next_id, before + 1);
    cl->id = k->env->next_id;
    cl->conn = testkit_conn(k, cl->id);
    assert_non_null(cl->conn);
}

void testclient_open(struct testkit *k, struct testclient *cl)
{
    testclient_pair(k, cl, SOCK_STREAM, NULL, 0);
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_request(&b, "/", NULL);
    testclient_write(k, cl, b.data, b.len);
    ws_buf_reset(&b);
    assert_int_equal(testclient_head(k, cl, NULL, 0), 101);
    assert_int_equal(testapp_count(&k->app, TA_OPEN, cl->id), 1);
}

void testclient_close(struct testclient *cl)
{
    if (cl->fd >= 0)
        close(cl->fd);
    cl->fd = -1;
    ws_buf_reset(&cl->in);
}

void testclient_shrink(struct testclient *cl)
{
    int small = 4096;
    assert_int_equal(setsockopt(cl->conn->wire.io.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)),
                     0);
    assert_int_equal(setsockopt(cl->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
}

void testclient_write(struct testkit *k, struct testclient *cl, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (int i = 0; n > 0 && i < 10000; i++) {
        ssize_t w = send(cl->fd, b, n, MSG_NOSIGNAL);
        if (w < 0) {
            assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
            testkit_pump(k);
            continue;
        }
        b += w;
        n -= (size_t)w;
    }
    assert_int_equal(n, 0);
}

void testclient_add_request(struct ws_buf *b, const char *target, const char *protocols)
{
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                     target, protocols ? "Sec-WebSocket-Protocol: " : "",
                     protocols ? protocols : "", protocols ? "\r\n" : "");
    assert_true(n > 0 && (size_t)n < sizeof(req));
    ws_buf_append(b, req, (size_t)n);
}

void testclient_add_frame(struct ws_buf *b, bool fin, uint8_t opcode, const void *p, size_t n)
{
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t hdr[WS_FRAME_MAX_HEADER];
    size_t h = ws_frame_encode_header(hdr, fin, 0, opcode, n, mask);
    ws_buf_append(b, hdr, h);
    if (n == 0)
        return;
    size_t at = b->len;
    ws_buf_append(b, p, n);
    ws_frame_mask(b->data + at, n, mask, 0);
}

void testclient_add_close(struct ws_buf *b, int code, const char *reason)
{
    uint8_t p[WS_FRAME_MAX_CONTROL_PAYLOAD];
    size_t n = 0;
    if (code) {
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        n = 2 + strlen(reason);
        assert_true(n <= sizeof(p));
        memcpy(p + 2, reason, n - 2);
    }
    testclient_add_frame(b, true, WS_OP_CLOSE, p, n);
}

void testclient_send(struct testkit *k, struct testclient *cl, uint8_t opcode, const void *p,
                     size_t n)
{
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_frame(&b, true, opcode, p, n);
    testclient_write(k, cl, b.data, b.len);
    ws_buf_reset(&b);
}

size_t testclient_read(struct testkit *k, struct testclient *cl)
{
    size_t total = 0;
    ws_buf_reserve(&cl->in, 1);
    testkit_pump(k);
    for (int i = 0; i < 10000 && cl->fd >= 0 && !cl->eof; i++) {
        ws_buf_reserve(&cl->in, 65536 + 1);
        ssize_t r = recv(cl->fd, cl->in.data + cl->in.len, 65536, 0);
        if (r == 0)
            cl->eof = true;
        if (r <= 0)
            break;
        cl->in.len += (size_t)r;
        total += (size_t)r;
        testkit_pump(k); /* the server may have more for the room just made */
    }
    cl->in.data[cl->in.len] = 0;
    return total;
}

int testclient_head(struct testkit *k, struct testclient *cl, char *head, size_t cap)
{
    char *end = NULL;
    for (int i = 0; i < READ_ROUNDS; i++) {
        end = strstr((char *)cl->in.data, "\r\n\r\n");
        if (end || cl->eof)
            break;
        testclient_read(k, cl);
    }
    if (!end)
        fail_msg("no response head; got \"%s\"", (char *)cl->in.data);
    size_t n = (size_t)(end - (char *)cl->in.data) + 4;
    int status = 0;
    assert_int_equal(sscanf((char *)cl->in.data, "HTTP/1.1 %d ", &status), 1);
    if (head) {
        assert_true(n < cap);
        memcpy(head, cl->in.data, n);
        head[n] = 0;
    }
    ws_buf_consume(&cl->in, n);
    cl->in.data[cl->in.len] = 0;
    return status;
}

bool testclient_take_frame(struct testclient *cl, struct testframe *f)
{
    const uint8_t *p = cl->in.data;
    size_t avail = cl->in.len;
    if (avail < 2)
        return false;
    memset(f, 0, sizeof(*f));
    f->fin = p[0] & 0x80;
    f->rsv = (p[0] >> 4) & 0x7;
    f->opcode = p[0] & 0x0f;
    f->masked = p[1] & 0x80;
    uint64_t len = p[1] & 0x7f;
    size_t h = 2;
    if (len == 126) {
        if (avail < 4)
            return false;
        len = (uint64_t)p[2] << 8 | p[3];
        h = 4;
    } else if (len == 127) {
        if (avail < 10)
            return false;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        h = 10;
    }
    if (f->masked)
        h += 4;
    if (avail < h || avail - h < len)
        return false;
    f->len = (size_t)len;
    f->data = ws_xmalloc(f->len + 1);
    memcpy(f->data, p + h, f->len);
    f->data[f->len] = 0;
    if (f->opcode == WS_OP_CLOSE)
        f->code = f->len >= 2 ? f->data[0] << 8 | f->data[1] : 1005;
    ws_buf_consume(&cl->in, h + f->len);
    cl->in.data[cl->in.len] = 0;
    return true;
}

void testclient_frame(struct testkit *k, struct testclient *cl, struct testframe *f)
{
    for (int i = 0; i < READ_ROUNDS; i++) {
        if (testclient_take_frame(cl, f))
            return;
        if (cl->eof)
            break;
        testclient_read(k, cl);
    }
    fail_msg("no frame came (%zu bytes waiting, eof %d)", cl->in.len, cl->eof);
}

bool testclient_has_input(struct testkit *k, struct testclient *cl)
{
    testclient_read(k, cl);
    return cl->in.len > 0;
}

bool testclient_wait_eof(struct testkit *k, struct testclient *cl)
{
    for (int i = 0; i < READ_ROUNDS && !cl->eof; i++)
        testclient_read(k, cl);
    return cl->eof;
}

void testframe_free(struct testframe *f)
{
    free(f->data);
    f->data = NULL;
}

int testkit_listen_tcp(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t len = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *port = ntohs(sa.sin_port);
    return fd;
}
