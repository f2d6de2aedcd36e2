/* Plain TCP and TLS transports. TLS records cannot use writev, so queued chunks are gathered
 * into one buffer of up to a record's size per SSL_write; a write that must be retried is
 * retried with the same bytes and length, as OpenSSL requires. */
#include "ws/transport.h"

#include "ws/buf.h"
#include "ws/err.h"
#include "ws/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TLS_WRITE_MAX 16384 /* one TLS record */

/* ---- plain TCP ---- */

static int plain_handshake(void *t)
{
    (void)t;
    return 0;
}

static ssize_t plain_read(void *t, int fd, void *buf, size_t n)
{
    (void)t;
    ssize_t r = recv(fd, buf, n, 0);
    if (r >= 0)
        return r;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return WS_E_AGAIN;
    return WS_E_IO;
}

static ssize_t send_iov(int fd, const struct iovec *iov, int n, int flags)
{
    struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
    ssize_t w = sendmsg(fd, &msg, flags | MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w >= 0)
        return w;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return WS_E_AGAIN;
    return WS_E_IO;
}

static ssize_t plain_writev(void *t, int fd, const struct iovec *iov, int n)
{
    (void)t;
    return send_iov(fd, iov, n, 0);
}

/* MSG_MORE holds the bytes back (TCP_NODELAY is on): the half-close that follows sends them
 * with its FIN, one segment instead of two. */
static ssize_t plain_writev_last(void *t, int fd, const struct iovec *iov, int n)
{
    (void)t;
    return send_iov(fd, iov, n, MSG_MORE);
}

static bool plain_pending(void *t)
{
    (void)t;
    return false;
}

static void plain_shutdown(void *t, int fd)
{
    (void)t;
    shutdown(fd, SHUT_WR);
}

static void plain_free(void *t)
{
    (void)t;
}

const struct ws_transport_ops ws_transport_plain = {
    plain_handshake, plain_read, plain_writev,      plain_pending,
    plain_shutdown,  plain_free, plain_writev_last, true,
};

/* ---- TLS ---- */

struct ws_tls_ctx {
    SSL_CTX *ssl;
};

struct tls_session {
    SSL *ssl;
    size_t retry_len; /* a write that wanted a retry: its length, else 0 */
};

/* Where queued chunks are gathered for one SSL_write. One per process (one loop per process):
 * a retried write gathers the same bytes again from the queue, which SSL_MODE_ACCEPT_MOVING_
 * WRITE_BUFFER allows, so no connection needs a buffer of its own. */
static uint8_t gather[TLS_WRITE_MAX];

static void openssl_error(char *err, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char reason[256];
    ERR_error_string_n(e, reason, sizeof(reason));
    snprintf(err, errlen, "%s %s: %s", what, file, e ? reason : strerror(errno));
    ERR_clear_error();
}

static SSL_CTX *load(const char *cert, const char *key, char *err, size_t errlen)
{
    SSL_CTX *ssl = SSL_CTX_new(TLS_server_method());
    if (!ssl) {
        openssl_error(err, errlen, "TLS:", "context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ssl, TLS1_2_VERSION);
    /* modern policy: forward secrecy and AEAD ciphers only for TLS 1.2; 1.3 suites default */
    SSL_CTX_set_cipher_list(ssl, "ECDHE+AESGCM:ECDHE+CHACHA20");
    SSL_CTX_set_options(ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ssl, cert) != 1) {
        openssl_error(err, errlen, "cannot load the TLS certificate", cert);
    } else if (SSL_CTX_use_PrivateKey_file(ssl, key, SSL_FILETYPE_PEM) != 1) {
        openssl_error(err, errlen, "cannot load the TLS key", key);
    } else if (SSL_CTX_check_private_key(ssl) != 1) {
        snprintf(err, errlen, "TLS key %s does not match the certificate %s", key, cert);
        ERR_clear_error();
    } else {
        return ssl;
    }
    SSL_CTX_free(ssl);
    return NULL;
}

struct ws_tls_ctx *ws_tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen)
{
    SSL_CTX *ssl = load(cert, key, err, errlen);
    if (!ssl)
        return NULL;
    struct ws_tls_ctx *ctx = ws_xcalloc(1, sizeof(*ctx));
    ctx->ssl = ssl;
    return ctx;
}

int ws_tls_ctx_reload(struct ws_tls_ctx *ctx, const char *cert, const char *key, char *err,
                      size_t errlen)
{
    SSL_CTX *ssl = load(cert, key, err, errlen);
    if (!ssl)
        return WS_E_TLS;
    /* sessions hold their own reference: open connections keep the old certificate */
    SSL_CTX_free(ctx->ssl);
    ctx->ssl = ssl;
    return 0;
}

void ws_tls_ctx_free(struct ws_tls_ctx *ctx)
{
    if (!ctx)
        return;
    SSL_CTX_free(ctx->ssl);
    free(ctx);
}

/* The transport state for ssl on fd, in the server's role or the client's. */
static struct tls_session *session_on(SSL *ssl, int fd, bool server)
{
    SSL_set_fd(ssl, fd);
    if (server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    struct tls_session *s = ws_xmalloc(sizeof(*s));
    s->ssl = ssl;
    s->retry_len = 0;
    return s;
}

void *ws_tls_session_new(struct ws_tls_ctx *ctx, int fd)
{
    SSL *ssl = SSL_new(ctx->ssl);
    return ssl ? session_on(ssl, fd, true) : NULL;
}

void *ws_tls_client_new(int fd, const char *host, const char *ca_file, bool insecure, char *err,
                        size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        openssl_error(err, errlen, "TLS:", "client context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL *ssl = NULL;
    int ok = insecure  ? 1
             : ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                       : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        openssl_error(err, errlen, "cannot load the CA file", ca_file ? ca_file : "(system)");
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* the session holds its own reference */
    if (!ssl) {
        openssl_error(err, errlen, "TLS:", "session");
        return NULL;
    }
    /* RFC 6066 §3: SNI carries a name, never an address; RFC 6125: the certificate must name the
     * host (or hold the address) we asked for */
    struct in6_addr a6;
    struct in_addr a4;
    bool literal = inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
    if ((!literal && SSL_set_tlsext_host_name(ssl, host) != 1) ||
        (!insecure && (literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host)
                               : SSL_set1_host(ssl, host)) != 1)) {
        openssl_error(err, errlen, "TLS: cannot set the host name", host);
        SSL_free(ssl);
        return NULL;
    }
    return session_on(ssl, fd, false);
}

const char *ws_tls_verify_error(void *t)
{
    struct tls_session *s = t;
    long v = SSL_get_verify_result(s->ssl);
    return v == X509_V_OK ? NULL : X509_verify_cert_error_string(v);
}

/* Maps an SSL_* result to ours; the OpenSSL error queue is cleared either way. */
static int tls_result(SSL *ssl, int rc)
{
    int e = SSL_get_error(ssl, rc);
    ERR_clear_error();
    switch (e) {
    case SSL_ERROR_WANT_READ:
        return WS_E_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        return WS_E_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        return errno == EAGAIN || errno == EINTR ? WS_E_AGAIN : WS_E_IO;
    default:
        return WS_E_TLS;
    }
}

static int tls_handshake(void *t)
{
    struct tls_session *s = t;
    int rc = SSL_do_handshake(s->ssl);
    if (rc == 1)
        return 0;
    int r = tls_result(s->ssl, rc);
    return r == 0 ? WS_E_TLS : r;
}

static ssize_t tls_read(void *t, int fd, void *buf, size_t n)
{
    (void)fd;
    struct tls_session *s = t;
    int cap = n > INT32_MAX ? INT32_MAX : (int)n;
    int rc = SSL_read(s->ssl, buf, cap);
    if (rc > 0)
        return rc;
    return tls_result(s->ssl, rc);
}

static ssize_t tls_writev(void *t, int fd, const struct iovec *iov, int n)
{
    (void)fd;
    struct tls_session *s = t;
    size_t len = 0;
    for (int i = 0; i < n && len < TLS_WRITE_MAX; i++) {
        size_t k = iov[i].iov_len < TLS_WRITE_MAX - len ? iov[i].iov_len : TLS_WRITE_MAX - len;
        memcpy(gather + len, iov[i].iov_base, k);
        len += k;
    }
    if (s->retry_len && len > s->retry_len)
        len = s->retry_len; /* same length as the attempt that must be repeated */
    if (len == 0)
        return 0;
    int rc = SSL_write(s->ssl, gather, (int)len);
    if (rc > 0) {
        s->retry_len = 0;
        return rc;
    }
    s->retry_len = len;
    int r = tls_result(s->ssl, rc);
    return r == WS_E_WANT_WRITE || r == 0 ? WS_E_AGAIN : r;
}

static bool tls_pending(void *t)
{
    struct tls_session *s = t;
    return SSL_pending(s->ssl) > 0;
}

static void tls_shutdown(void *t, int fd)
{
    struct tls_session *s = t;
    SSL_shutdown(s->ssl); /* close_notify, best effort: the socket is non-blocking */
    ERR_clear_error();
    shutdown(fd, SHUT_WR);
}

static void tls_free(void *t)
{
    struct tls_session *s = t;
    SSL_free(s->ssl);
    free(s);
}

const struct ws_transport_ops ws_transport_tls = {
    tls_handshake, tls_read, tls_writev, tls_pending, tls_shutdown, tls_free, NULL, false,
};
