/* How a connection moves bytes: plain TCP or TLS behind one small vtable, so the connection's
 * state machine, queue and timers are the same for ws:// and wss://. Also the TLS context: the
 * certificate and key loaded once and swappable on reload. */
#ifndef WS_TRANSPORT_H
#define WS_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

struct ws_tls_ctx;

struct ws_transport_ops {
    /* Finishes the transport's own handshake. 0 when done, WS_E_AGAIN (wants to read),
     * WS_E_WANT_WRITE, or WS_E_TLS/WS_E_IO. */
    int (*handshake)(void *t);
    /* Reads up to n bytes: > 0 bytes read, 0 at end of stream, WS_E_AGAIN, WS_E_WANT_WRITE,
     * WS_E_IO/WS_E_TLS. */
    ssize_t (*read)(void *t, int fd, void *buf, size_t n);
    /* Writes from iov: bytes written (> 0), WS_E_AGAIN, WS_E_IO/WS_E_TLS. */
    ssize_t (*writev)(void *t, int fd, const struct iovec *iov, int n);
    /* True when bytes are buffered inside the transport (read them without waiting). */
    bool (*pending)(void *t);
    /* Ends our sending side (TLS close_notify, then TCP FIN). */
    void (*shutdown)(void *t, int fd);
    void (*free)(void *t);
    /* Optional (NULL: writev serves): writes from iov as writev does, the last bytes before the
     * socket is half-closed; they may be held back so that the shutdown sends them with the FIN
     * in one segment. */
    ssize_t (*writev_last)(void *t, int fd, const struct iovec *iov, int n);
    /* Nothing of the peer's can follow its close frame at this layer (no TLS close_notify): the
     * server closes as soon as both close frames have passed. */
    bool close_at_once;
};

extern const struct ws_transport_ops ws_transport_plain;
extern const struct ws_transport_ops ws_transport_tls;

/* Loads cert (PEM chain) and key into a new TLS context (TLS 1.2+, modern ciphers). Returns
 * NULL with a message naming the file and the problem in err. */
struct ws_tls_ctx *ws_tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen);

/* Loads cert and key again; on success connections accepted from now on use them (open ones
 * keep theirs). On failure the old ones stay and err says why. Returns 0 or WS_E_TLS. */
int ws_tls_ctx_reload(struct ws_tls_ctx *ctx, const char *cert, const char *key, char *err,
                      size_t errlen);

void ws_tls_ctx_free(struct ws_tls_ctx *ctx);

/* A TLS session for a new accepted socket (the transport state for ws_transport_tls). */
void *ws_tls_session_new(struct ws_tls_ctx *ctx, int fd);

/* A TLS client session on the connected socket fd (the transport state for ws_transport_tls):
 * TLS 1.2+, SNI with host unless it is an address literal, and unless insecure the server's
 * certificate verified against ca_file (PEM; NULL: the system's store) and checked to name host.
 * Returns NULL with a message in err when the context cannot be made (ca_file unreadable). */
void *ws_tls_client_new(int fd, const char *host, const char *ca_file, bool insecure, char *err,
                        size_t errlen);

/* After a failed handshake of a client session: why the certificate was refused, or NULL when
 * verification was not the problem. Static storage. */
const char *ws_tls_verify_error(void *t);

#endif
