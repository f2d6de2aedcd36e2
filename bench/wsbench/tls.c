/* --tls: the client context, the non-blocking handshake, records written from the send queue,
 * OpenSSL's errors as text. No certificate check unless --tls-ca; reading is conn.c's. */
#include "wsbench.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

const char *wb_tls_error(const char *what)
{
    static char buf[200];
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    if (!last)
        return what;
    ERR_error_string_n(last, buf, sizeof buf);
    return buf;
}

int wb_flush_tls(struct conn *c)
{
    for (;;) {
        if (c->tout_off == c->tout_len) {
            struct iovec iov[WB_IOV_MAX];
            size_t raw_now, len = 0;
            int n = wb_build_iov(c, iov, &raw_now);
            if (n == 0) {
                if ((c->events & EV_WRITE) && !c->read_wants_write)
                    wb_io_want(c, EV_READ);
                return 0;
            }
            if (!c->tout)
                c->tout = malloc(WB_TLS_OUT);
            if (!c->tout) {
                fprintf(stderr, "wsbench: out of memory\n");
                exit(1);
            }
            for (int i = 0; i < n && len < WB_TLS_OUT; i++) {
                size_t k = iov[i].iov_len < WB_TLS_OUT - len ? iov[i].iov_len : WB_TLS_OUT - len;
                memcpy(c->tout + len, iov[i].iov_base, k);
                len += k;
            }
            wb_advance(c, raw_now, len);
            c->tout_off = 0;
            c->tout_len = len;
        }
        int w = SSL_write(c->ssl, c->tout + c->tout_off, (int)(c->tout_len - c->tout_off));
        if (w > 0) {
            c->tout_off += (size_t)w;
            continue;
        }
        int e = SSL_get_error(c->ssl, w);
        if (e == SSL_ERROR_WANT_WRITE) {
            wb_io_want(c, EV_READ | EV_WRITE);
            return 0;
        }
        if (e == SSL_ERROR_WANT_READ) { /* the next readable event retries */
            wb_io_want(c, EV_READ);
            return 0;
        }
        wb_conn_fail(c, ERR_CLOSED,
                     e == SSL_ERROR_SYSCALL ? strerror(errno) : wb_tls_error("SSL_write"));
        return -1;
    }
}

int wb_tls_step(struct conn *c)
{
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        c->state = CS_HANDSHAKE;
        wb_io_want(c, EV_READ);
        return wb_flush(c);
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) {
        wb_io_want(c, EV_READ);
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        wb_io_want(c, EV_WRITE);
        return 0;
    }
    int err = errno;
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        wb_conn_fail(c, err == ECONNREFUSED ? ERR_CONNECT : ERR_TLS,
                     err ? strerror(err) : "connection closed during the TLS handshake");
    else
        wb_conn_fail(c, ERR_TLS, wb_tls_error("TLS handshake failed"));
    return -1;
}

SSL_CTX *wb_tls_context(const struct opts *o)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        fprintf(stderr, "wsbench: %s\n", wb_tls_error("SSL_CTX_new failed"));
        exit(1);
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* retries may come from a moved buffer; partial writes are fine; read whole records ahead */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    /* a TCP FIN without close_notify is an end, not an error (the server may close first) */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* every connection makes a full handshake: connect mode measures those, not resumptions */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (o->tls_ca) {
        if (SSL_CTX_load_verify_locations(ctx, o->tls_ca, NULL) != 1) {
            fprintf(stderr, "wsbench: %s: %s\n", o->tls_ca, wb_tls_error("cannot load the CA"));
            exit(2);
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
}
