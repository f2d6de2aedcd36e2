/* The kit for runtime unit tests: the test app with an env (or a server on a unix listener) on a
 * fresh loop, bounded loop pumping, and a client end that speaks the handshake and masked frames
 * over a socketpair. Tests only. */
#ifndef TESTKIT_H
#define TESTKIT_H

#include "testapp.h"

#include "ws/buf.h"
#include "ws/config.h"
#include "ws/conn.h"
#include "ws/env.h"
#include "ws/server.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* ---- The kit: a loop, an env or a server, and the app ---- */

struct testkit {
    struct ev_loop *loop;
    struct ws_env *env;    /* &own, or the server's */
    struct ws_server *srv; /* NULL unless started by testkit_init_server */
    struct ws_env own;
    struct testapp app;
    char dir[64]; /* temporary folder for unix sockets, or "" */
};

/* ws_config_init with values for tests: short close timeout, no pings. */
void testkit_config(struct ws_config *cfg);

/* Sets an option by name from text (the value must be valid). */
void testkit_set(struct ws_config *cfg, const char *name, const char *value);

/* A fresh loop, the app and an env with a copy of cfg. */
void testkit_init(struct testkit *k, const struct ws_config *cfg);

/* A fresh loop, the app and a server listening on a unix socket in a temporary folder (its path
 * in *path when path is not NULL, cap bytes). */
void testkit_init_server(struct testkit *k, const struct ws_config *cfg, char *path, size_t cap);

/* Drops what is left, frees the env or server, the app and the loop. */
void testkit_free(struct testkit *k);

/* testkit_init and testkit_init_server on a kit allocated here and kept in *state (a cmocka
 * test's), so that testkit_teardown frees it even when the test fails half-way. */
struct testkit *testkit_new(void **state, const struct ws_config *cfg);
struct testkit *testkit_new_server(void **state, const struct ws_config *cfg, char *path,
                                   size_t cap);

/* A cmocka teardown: frees the kit in *state, if any, and clears it. Tests may call it early. */
int testkit_teardown(void **state);

/* A few loop iterations without waiting, each followed by the per-iteration pass
 * (ws_conn_run_pending; a server's prepare watcher does it itself). */
void testkit_pump(struct testkit *k);

/* Runs the loop for about seconds of real time (bounded). */
void testkit_run_for(struct testkit *k, double seconds);

/* The connection with id if it is still in the registry (possibly CLOSED), else NULL. */
struct ws_conn *testkit_conn(struct testkit *k, uint64_t id);

/* Connections in the registry in state. */
size_t testkit_count_state(struct testkit *k, enum ws_conn_state state);

/* ---- The client end ---- */

struct testclient {
    int fd;               /* our end; -1 once closed */
    uint64_t id;          /* the server's connection */
    struct ws_conn *conn; /* the server's connection; valid until it is freed */
    struct ws_buf in;     /* bytes read and not yet taken; a NUL follows them */
    bool eof;             /* the server closed its sending side */
};

/* A socketpair (type: SOCK_STREAM or SOCK_SEQPACKET) whose server end becomes a connection of
 * k's env with peer address sa (NULL: an AF_UNIX peer). */
void testclient_pair(struct testkit *k, struct testclient *cl, int type, const struct sockaddr *sa,
                     socklen_t salen);

/* Connects to the server's unix listener and waits until it accepted. */
void testclient_dial(struct testkit *k, struct testclient *cl, const char *path);

/* testclient_pair (stream, AF_UNIX), the handshake for "/" and its 101 taken off the input. */
void testclient_open(struct testkit *k, struct testclient *cl);

/* Closes our end (no close frame) and frees the input. */
void testclient_close(struct testclient *cl);

/* Makes the socket buffers between the connection and cl small, to fill them quickly. */
void testclient_shrink(struct testclient *cl);

/* Writes all n bytes, pumping the loop while the socket is full. */
void testclient_write(struct testkit *k, struct testclient *cl, const void *p, size_t n);

/* An opening handshake for target, with the RFC 6455 §1.3 sample key and protocols (NULL: no
 * Sec-WebSocket-Protocol field) appended to b. */
void testclient_add_request(struct ws_buf *b, const char *target, const char *protocols);

/* One masked client frame (RFC 6455 §5.3) appended to b. */
void testclient_add_frame(struct ws_buf *b, bool fin, uint8_t opcode, const void *p, size_t n);

/* A close frame with code (0: empty payload) and reason appended to b. */
void testclient_add_close(struct ws_buf *b, int code, const char *reason);

/* Writes one masked frame. */
void testclient_send(struct testkit *k, struct testclient *cl, uint8_t opcode, const void *p,
                     size_t n);

/* Pumps the loop and reads whatever arrived (bounded). Returns the bytes read. */
size_t testclient_read(struct testkit *k, struct testclient *cl);

/* Takes a complete HTTP response head off the input, reading as needed; returns its status and
 * copies the head (NUL-terminated) into head when it is not NULL. Fails the test when none
 * comes. */
int testclient_head(struct testkit *k, struct testclient *cl, char *head, size_t cap);

/* A server frame as received. */
struct testframe {
    bool fin;
    uint8_t rsv;
    uint8_t opcode;
    bool masked;
    uint8_t *data; /* payload (owned, a NUL after it) */
    size_t len;
    int code; /* close: the code, 1005 without one */
};

/* Takes one complete frame off the input without reading. False when there is none yet. */
bool testclient_take_frame(struct testclient *cl, struct testframe *f);

/* Takes the next frame, reading as needed; fails the test when none comes. */
void testclient_frame(struct testkit *k, struct testclient *cl, struct testframe *f);

/* True when a frame or bytes are waiting, after reading what arrived. */
bool testclient_has_input(struct testkit *k, struct testclient *cl);

/* Reads until the server closed its sending side (bounded); true when it did. */
bool testclient_wait_eof(struct testkit *k, struct testclient *cl);

void testframe_free(struct testframe *f);

/* A listening TCP socket on 127.0.0.1 (any free port, backlog 16); *port gets its port. For the
 * tests of the outbound clients (HTTP, Redis), whose peers are canned servers in the test. */
int testkit_listen_tcp(int *port);

#endif
