/* Outbound HTTP on the loop: libcurl's multi-socket API (curl's docs/examples/evhiperfifo.c is
 * the model) with one ev_io per socket curl wants watched and one ev_timer for curl's timeouts.
 * Requests past the concurrency cap wait in a FIFO. No Lua, no knowledge of who waits. */
#include "ws/http_client.h"

#include "ws/buf.h"
#include "ws/clock.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ws_http_req {
    struct ws_http_client *hc;
    CURL *easy;
    struct curl_slist *headers;
    ws_http_done_fn done;
    void *ud;
    struct ws_http_result res;
    size_t max_body;
    bool too_large;
    bool started; /* added to the multi handle (else queued) */
    double started_at;
    char errbuf[CURL_ERROR_SIZE];
    struct ws_http_req *prev, *next; /* the queue, or the active list */
};

struct ws_http_client {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer timer;
    size_t max_concurrent;
    size_t nactive, nqueued;
    struct ws_http_req *active;
    struct ws_http_req *queue_head, *queue_tail;
};

/* One socket curl asked us to watch. */
struct sock {
    ev_io io;
    struct ws_http_client *hc;
    curl_socket_t fd;
};

static bool global_done;

static void check_done(struct ws_http_client *hc);
static void start_queued(struct ws_http_client *hc);

static void on_sock(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct sock *s = (struct sock *)w;
    struct ws_http_client *hc = s->hc;
    int action =
        (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running = 0;
    curl_multi_socket_action(hc->multi, s->fd, action, &running);
    check_done(hc);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_http_client *hc = w->data;
    int running = 0;
    curl_multi_socket_action(hc->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(hc);
}

/* CURLMOPT_SOCKETFUNCTION: watch fd for what curl wants, or stop. */
static int sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    struct ws_http_client *hc = userp;
    struct sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            ev_io_stop(hc->loop, &s->io);
            curl_multi_assign(hc->multi, fd, NULL);
            free(s);
        }
        return 0;
    }
    int events = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (!s) {
        s = ws_xcalloc(1, sizeof(*s));
        s->hc = hc;
        s->fd = fd;
        ev_io_init(&s->io, on_sock, fd, events);
        curl_multi_assign(hc->multi, fd, s);
    } else {
        ev_io_stop(hc->loop, &s->io);
        ev_io_set(&s->io, fd, events);
    }
    ev_io_start(hc->loop, &s->io);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: curl wants to be called in timeout_ms (-1: never). Never calls curl
 * back from inside: a 0 timeout fires on the next iteration. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct ws_http_client *hc = userp;
    ws_timer_stop(hc->loop, &hc->timer);
    if (timeout_ms >= 0)
        ws_timer_start(hc->loop, &hc->timer, (double)timeout_ms / 1000.0, 0);
    return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    struct ws_http_req *r = ud;
    size_t len = size * n;
    if (r->res.body.len + len > r->max_body) {
        r->too_large = true;
        return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
    }
    ws_buf_append(&r->res.body, p, len);
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    struct ws_http_req *r = ud;
    size_t len = size * n;
    /* a new status line: a redirect or a 100 Continue came before; keep the last response's */
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0)
        r->res.headers.len = 0;
    if (r->res.headers.len + len > 256 * 1024)
        return 0; /* absurd header block */
    ws_buf_append(&r->res.headers, p, len);
    return len;
}

struct ws_http_client *ws_http_client_new(struct ev_loop *loop, size_t max_concurrent)
{
    if (!global_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return NULL;
        global_done = true;
    }
    CURLM *multi = curl_multi_init();
    if (!multi)
        return NULL;
    struct ws_http_client *hc = ws_xcalloc(1, sizeof(*hc));
    hc->loop = loop;
    hc->multi = multi;
    hc->max_concurrent = max_concurrent ? max_concurrent : 1;
    ev_init(&hc->timer, on_timer);
    hc->timer.data = hc;
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, hc);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, hc);
    return hc;
}

void ws_http_client_set_max(struct ws_http_client *hc, size_t max_concurrent)
{
    hc->max_concurrent = max_concurrent ? max_concurrent : 1;
    start_queued(hc);
}

static void unlink_req(struct ws_http_req *r)
{
    struct ws_http_client *hc = r->hc;
    struct ws_http_req **head = r->started ? &hc->active : &hc->queue_head;
    if (r->prev)
        r->prev->next = r->next;
    else
        *head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else if (!r->started)
        hc->queue_tail = r->prev;
    r->prev = r->next = NULL;
    if (r->started)
        hc->nactive--;
    else
        hc->nqueued--;
}

static void free_req(struct ws_http_req *r)
{
    if (r->started)
        curl_multi_remove_handle(r->hc->multi, r->easy);
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    ws_http_result_free(&r->res);
    free(r);
}

void ws_http_client_free(struct ws_http_client *hc)
{
    if (!hc)
        return;
    while (hc->active) {
        struct ws_http_req *r = hc->active;
        unlink_req(r);
        free_req(r);
    }
    while (hc->queue_head) {
        struct ws_http_req *r = hc->queue_head;
        unlink_req(r);
        free_req(r);
    }
    ws_timer_stop(hc->loop, &hc->timer);
    curl_multi_cleanup(hc->multi); /* removes the remaining sockets through sock_cb */
    free(hc);
}

/* Moves queued requests into the multi handle while there is room. */
static void start_queued(struct ws_http_client *hc)
{
    while (hc->queue_head && hc->nactive < hc->max_concurrent) {
        struct ws_http_req *r = hc->queue_head;
        unlink_req(r);
        r->started = true;
        r->started_at = ws_clock_now(hc->loop);
        r->prev = NULL;
        r->next = hc->active;
        if (hc->active)
            hc->active->prev = r;
        hc->active = r;
        hc->nactive++;
        if (curl_multi_add_handle(hc->multi, r->easy) != CURLM_OK) {
            /* reported from the loop like any other failure */
            snprintf(r->errbuf, sizeof(r->errbuf), "cannot start the request");
            curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, 1L);
        }
    }
}

/* Hands every finished transfer to its callback. */
static void check_done(struct ws_http_client *hc)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(hc->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct ws_http_req *r = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        CURLcode rc = m->data.result;
        struct ws_http_result *res = &r->res;
        res->seconds = ws_clock_now(hc->loop) - r->started_at;
        if (rc == CURLE_OK) {
            res->ok = true;
            curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &res->status);
        } else if (r->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
            snprintf(res->err, sizeof(res->err), "response too large (max_body %zu bytes)",
                     r->max_body);
        } else if (rc == CURLE_OPERATION_TIMEDOUT) {
            res->timed_out = true;
            snprintf(res->err, sizeof(res->err), "timeout");
        } else {
            snprintf(res->err, sizeof(res->err), "%s",
                     r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
        }
        unlink_req(r);
        struct ws_http_result out = *res;
        memset(res, 0, sizeof(*res)); /* the buffers now belong to the callback */
        ws_http_done_fn done = r->done;
        void *ud = r->ud;
        free_req(r);
        done(ud, &out);
    }
    start_queued(hc);
}

struct ws_http_req *ws_http_client_request(struct ws_http_client *hc, const struct ws_http_opts *o,
                                           ws_http_done_fn done, void *ud, char *err, size_t errlen)
{
    CURL *easy = curl_easy_init();
    if (!easy) {
        snprintf(err, errlen, "cannot create the request (out of memory)");
        return NULL;
    }
    struct ws_http_req *r = ws_xcalloc(1, sizeof(*r));
    r->hc = hc;
    r->easy = easy;
    r->done = done;
    r->ud = ud;
    r->max_body = o->max_body;
    ws_buf_init(&r->res.headers);
    ws_buf_init(&r->res.body);
    const char *method = o->method ? o->method : "GET";
    curl_easy_setopt(easy, CURLOPT_URL, o->url);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, r);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, r);
    /* the caller's own timer is the timeout that counts; this one is a backstop */
    long ms = (long)(o->timeout * 1000.0) + 1000;
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, ms > 0 ? ms : 1000L);
    if (o->max_body < (size_t)1 << 62)
        curl_easy_setopt(easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_body);
    if (o->follow) {
        curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(easy, CURLOPT_MAXREDIRS, 10L);
    }
    if (o->ca_file)
        curl_easy_setopt(easy, CURLOPT_CAINFO, o->ca_file);
    if (o->insecure) {
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET") != 0 || o->body) {
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
    }
    if (o->body) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
        curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, o->body);
    }
    for (size_t i = 0; i < o->nheaders; i++)
        r->headers = curl_slist_append(r->headers, o->headers[i]);
    /* no "Expect: 100-continue" round trip for bodies */
    r->headers = curl_slist_append(r->headers, "Expect:");
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, r->headers);
    r->prev = hc->queue_tail;
    if (hc->queue_tail)
        hc->queue_tail->next = r;
    else
        hc->queue_head = r;
    hc->queue_tail = r;
    hc->nqueued++;
    start_queued(hc);
    return r;
}

void ws_http_client_cancel(struct ws_http_req *r)
{
    struct ws_http_client *hc = r->hc;
    bool was_active = r->started;
    unlink_req(r);
    free_req(r);
    if (was_active)
        start_queued(hc);
}

size_t ws_http_client_active(const struct ws_http_client *hc)
{
    return hc->nactive;
}

size_t ws_http_client_queued(const struct ws_http_client *hc)
{
    return hc->nqueued;
}

void ws_http_result_free(struct ws_http_result *res)
{
    ws_buf_reset(&res->headers);
    ws_buf_reset(&res->body);
}

const struct ws_http_client_ops ws_http_client_libcurl = {
    ws_http_client_request,
    ws_http_client_cancel,
    ws_http_client_set_max,
    ws_http_client_free,
};
