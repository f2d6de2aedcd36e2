/* One connection's life on the loop: the non-blocking connect, the libev callback that takes it
 * through TLS, the handshake and open traffic, reading (plain or TLS), its end (killed, or failed
 * with the error counted). What is read goes to handshake.c or parser.c; writing is output.c's. */
#include "wsbench.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/x509v3.h>

const char *const ERR_NAMES[] = {
#define X(id, name) name,
    WB_ERRORS(X)
#undef X
};

void wb_err_add(struct bench *b, enum wb_err e, struct conn *c, const char *what)
{
    if (b->errors[e]++ < 5)
        fprintf(stderr, "wsbench: %s error on connection %ld: %s\n", ERR_NAMES[e],
                c ? (long)(c - b->conns) : -1L, what);
}

void wb_conn_kill(struct conn *c)
{
    struct bench *b = c->b;
    if (c->ssl) { /* no close_notify: the server closes first, or we are giving up */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    c->tout_len = c->tout_off = 0;
    c->read_wants_write = false;
    if (c->inf)
        inflateReset(c->inf);
    c->zmsg_len = 0;
    c->zstream = false;
    if (c->fd >= 0) {
        ev_io_stop(b->loop, &c->io);
        close(c->fd);
        c->fd = -1;
    }
    if (c->state == CS_CONNECTING || c->state == CS_TLS || c->state == CS_HANDSHAKE)
        b->opening--;
    c->state = CS_DEAD;
    c->events = 0;
    c->raw_len = 0;
    c->q_len = 0;
    c->q_off = 0;
    if (c->role == ROLE_SUB && c->subscribed) {
        b->subs_live--;
        c->subscribed = false;
        wb_pub_send_more(b); /* fewer acknowledgements are now enough */
    }
}

void wb_conn_fail(struct conn *c, enum wb_err e, const char *what)
{
    struct bench *b = c->b;
    wb_err_add(b, e, c, what);
    wb_conn_kill(c);
    if (c->role == ROLE_CYCLE && b->running && !b->finished)
        wb_conn_start(b, c);
}

/* The server ended the stream (FIN, or TLS close_notify). */
static void on_eof(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    if (c->role == ROLE_CYCLE && c->got_close) {
        /* RFC 6455 §7.1.1: the server closes the TCP connection first */
        if (b->measuring)
            b->win_msgs++;
        b->recv_total++;
        wb_progress(b, t);
        wb_conn_kill(c);
        if (c == b->warm)
            wb_warm_done(b);
        else if (b->running && !b->finished)
            wb_conn_start(b, c);
    } else {
        wb_conn_fail(c, ERR_CLOSED, "connection closed by the server");
    }
}

/* Received bytes (plaintext with --tls). Returns -1 when the connection is gone. */
static int on_bytes(struct conn *c, size_t n, uint64_t t)
{
    struct bench *b = c->b;
    if (b->measuring)
        b->win_in += n;
    return c->state == CS_HANDSHAKE ? wb_handshake_input(c, b->rbuf, n, t)
                                    : wb_parse(c, b->rbuf, n, t);
}

static void on_readable(struct conn *c)
{
    struct bench *b = c->b;
    if (c->ssl) {
        /* until SSL_read wants more from the socket: a record it holds would not wake us */
        c->read_wants_write = false;
        for (;;) {
            int n = SSL_read(c->ssl, b->rbuf, WB_RBUF_BYTES);
            if (n <= 0) {
                int e = SSL_get_error(c->ssl, n);
                if (e == SSL_ERROR_WANT_READ)
                    break;
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->read_wants_write = true;
                    wb_io_want(c, EV_READ | EV_WRITE);
                    break;
                }
                if (e == SSL_ERROR_ZERO_RETURN) /* close_notify, or EOF (IGNORE_UNEXPECTED_EOF) */
                    on_eof(c, wb_now_ns());
                else
                    wb_conn_fail(c, ERR_CLOSED,
                                 e == SSL_ERROR_SYSCALL ? strerror(errno)
                                                        : wb_tls_error("SSL_read"));
                return;
            }
            if (on_bytes(c, (size_t)n, wb_now_ns()) < 0)
                return;
        }
    } else {
        for (;;) {
            ssize_t n = recv(c->fd, b->rbuf, WB_RBUF_BYTES, 0);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                    wb_conn_fail(c, ERR_CLOSED, strerror(errno));
                return;
            }
            if (n == 0) {
                on_eof(c, wb_now_ns());
                return;
            }
            if (on_bytes(c, (size_t)n, wb_now_ns()) < 0)
                return;
            if ((size_t)n < WB_RBUF_BYTES)
                break;
        }
    }
    if (wb_has_output(c))
        wb_flush(c);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = w->data;
    struct bench *b = c->b;
    (void)loop;
    if (c->state == CS_CONNECTING) {
        /* Writable: connected, or failed, which the first send reports (no SO_ERROR call:
         * connect mode pays every system call once per cycle). */
        if (b->ssl_ctx) {
            c->ssl = SSL_new(b->ssl_ctx);
            if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
                fprintf(stderr, "wsbench: %s\n", wb_tls_error("SSL_new failed"));
                exit(1);
            }
            SSL_set_connect_state(c->ssl);
            if (b->o.tls_ca) /* the certificate must name the address we connect to */
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), b->o.host);
            c->state = CS_TLS;
            if (wb_tls_step(c) < 0)
                wb_open_more(b);
            return;
        }
        c->state = CS_HANDSHAKE;
        wb_io_want(c, EV_READ);
        if (wb_flush(c) < 0)
            wb_open_more(b);
        return;
    }
    if (c->state == CS_TLS) {
        if (wb_tls_step(c) < 0)
            wb_open_more(b);
        return;
    }
    unsigned gen = c->gen;
    if ((revents & EV_READ) || (c->read_wants_write && (revents & EV_WRITE)))
        on_readable(c);
    if (c->gen == gen && c->state != CS_DEAD && (revents & EV_WRITE))
        wb_flush(c);
    if (b->next_open < b->nconns || !b->running)
        wb_open_more(b);
}

void wb_conn_start(struct bench *b, struct conn *c)
{
    wb_parser_reset(&c->p);
    c->gen++;
    c->hs_len = 0;
    c->raw_len = 0;
    c->got_close = false;
    c->t_connect_ns = wb_now_ns();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        wb_err_add(b, ERR_CONNECT, c, strerror(errno));
        c->state = CS_DEAD;
        return;
    }
    /* Pipelined messages must not wait for ACKs (Nagle); a connect cycle writes one frame at a
     * time, each after the server's answer, so it spares the call. */
    int one = 1;
    if (c->role != ROLE_CYCLE || b->ssl_ctx) /* TLS: Finished and the request go back to back */
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    wb_raw_append(c, b->request, b->request_len);
    b->opening++;
    c->state = CS_CONNECTING;
    c->events = EV_WRITE;
    ev_io_init(&c->io, on_io, c->fd, EV_WRITE);
    c->io.data = c;
    ev_io_start(b->loop, &c->io);
    if (connect(c->fd, (struct sockaddr *)&b->o.addr, sizeof b->o.addr) < 0 &&
        errno != EINPROGRESS) {
        wb_err_add(b, ERR_CONNECT, c, strerror(errno)); /* no restart here: no retry loop */
        wb_conn_kill(c);
    }
}
