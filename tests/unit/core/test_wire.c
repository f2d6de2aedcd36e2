/* Unit tests for the wire (src/core/wire.c) over a socketpair with the plain transport: the
 * watcher following reads, pauses and stuck output, direct writes and what a full socket leaves
 * queued, flushing in order with byte accounting, reads and end of stream, the half-close that
 * drops later output, and close. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/err.h"
#include "ws/outq.h"
#include "ws/transport.h"
#include "ws/wire.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BIG (1024 * 1024)

static struct ev_loop *loop;
static struct ws_chunk_pool pool;
static struct ws_wire wire;
static int fd, peer; /* fd is the wire's side */
static bool wire_open;

static int marker; /* what the callback must get in io->data */
static int calls, revents_seen;

static void on_io(struct ev_loop *l, ev_io *io, int revents)
{
    assert_ptr_equal(l, loop);
    assert_ptr_equal(io, &wire.io);
    assert_ptr_equal(io->data, &marker);
    calls++;
    revents_seen |= revents;
}

static void nonblocking(int s)
{
    int flags = fcntl(s, F_GETFL);
    assert_true(flags >= 0);
    assert_int_equal(fcntl(s, F_SETFL, flags | O_NONBLOCK), 0);
}

static int setup(void **state)
{
    (void)state;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return -1;
    fd = sv[0];
    peer = sv[1];
    nonblocking(fd);
    nonblocking(peer);
    loop = ev_loop_new(EVFLAG_AUTO);
    ws_chunk_pool_init(&pool, 4);
    calls = revents_seen = 0;
    ws_wire_init(&wire, loop, fd, &ws_transport_plain, NULL, on_io, &marker);
    wire_open = true;
    return loop ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (wire_open)
        ws_wire_close(&wire, loop, &pool);
    ws_wire_free(&wire, &pool);
    assert_int_equal(pool.queued, 0);
    ws_chunk_pool_free(&pool);
    if (peer >= 0)
        close(peer);
    ev_loop_destroy(loop);
    return 0;
}

static void secure(void)
{
    assert_int_equal(ws_wire_secure(&wire, loop), 0);
    assert_true(wire.secured);
}

/* What the watcher asks for: EV_READ | EV_WRITE bits, 0 when stopped. */
static int watching(void)
{
    return ev_is_active(&wire.io) ? wire.io.events & (EV_READ | EV_WRITE) : 0;
}

/* One non-blocking pass of the loop; returns the events delivered. */
static int poll_once(void)
{
    calls = revents_seen = 0;
    ev_run(loop, EVRUN_NOWAIT);
    return revents_seen;
}

/* Reads what the peer can read now into buf at *got; more than cap bytes fails. */
static void drain_peer(uint8_t *buf, size_t cap, size_t *got)
{
    for (;;) {
        uint8_t extra;
        ssize_t n = *got < cap ? read(peer, buf + *got, cap - *got) : read(peer, &extra, 1);
        if (n < 0) {
            assert_int_equal(errno, EAGAIN);
            return;
        }
        assert_true(n > 0);
        assert_true(*got < cap);
        *got += (size_t)n;
    }
}

/* Writes junk straight into the socket until it is full; returns how much went in. */
static size_t fill_socket(void)
{
    static uint8_t junk[4096];
    memset(junk, 'j', sizeof(junk));
    size_t total = 0;
    for (;;) {
        ssize_t n = send(fd, junk, sizeof(junk), MSG_DONTWAIT);
        if (n < 0) {
            assert_int_equal(errno, EAGAIN);
            return total;
        }
        total += (size_t)n;
    }
}

static void small_sndbuf(void)
{
    int size = 4096;
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)), 0);
}

static uint8_t *pattern(size_t len)
{
    uint8_t *p = malloc(len);
    assert_non_null(p);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(i * 7 + i / 251);
    return p;
}

static void test_init_watches_reads(void **state)
{
    (void)state;
    assert_int_equal(wire.io.fd, fd);
    assert_ptr_equal(wire.transport, &ws_transport_plain);
    assert_ptr_equal(wire.io.data, &marker);
    assert_int_equal(wire.io.fd, fd);
    assert_int_equal(watching(), EV_READ);
    assert_false(wire.secured);
    assert_false(wire.reading_paused);
    assert_false(wire.wr_shut);
    assert_int_equal(wire.out.bytes, 0);

    /* nothing to read: no event; bytes from the peer: EV_READ reaches the callback */
    assert_int_equal(poll_once(), 0);
    assert_int_equal(write(peer, "hi", 2), 2);
    assert_int_equal(poll_once(), EV_READ);
    assert_int_equal(calls, 1);

    /* the plain transport's handshake is done at once; no write interest without output */
    secure();
    assert_int_equal(watching(), EV_READ);
    assert_int_equal(ws_wire_secure(&wire, loop), 0);
    assert_false(ws_wire_pending(&wire));
}

static void test_read_and_eof(void **state)
{
    (void)state;
    secure();
    uint8_t buf[64];
    assert_int_equal(ws_wire_read(&wire, loop, buf, sizeof(buf)), WS_E_AGAIN);
    assert_int_equal(write(peer, "hello", 5), 5);
    assert_int_equal(ws_wire_read(&wire, loop, buf, 3), 3);
    assert_memory_equal(buf, "hel", 3);
    assert_int_equal(ws_wire_read(&wire, loop, buf, sizeof(buf)), 2);
    assert_memory_equal(buf, "lo", 2);
    assert_int_equal(ws_wire_read(&wire, loop, buf, sizeof(buf)), WS_E_AGAIN);
    assert_int_equal(shutdown(peer, SHUT_WR), 0);
    assert_int_equal(ws_wire_read(&wire, loop, buf, sizeof(buf)), 0);
    assert_int_equal(ws_wire_read(&wire, loop, buf, sizeof(buf)), 0);
}

static void test_write_direct(void **state)
{
    (void)state;
    secure();
    uint64_t bytes_out = 100;
    ws_wire_write(&wire, &pool, (const uint8_t *)"\x81\x05", 2, (const uint8_t *)"hello", 5,
                  &bytes_out);
    assert_int_equal(bytes_out, 107);
    assert_int_equal(wire.out.bytes, 0);
    assert_int_equal(pool.queued, 0);
    uint8_t buf[64];
    size_t got = 0;
    drain_peer(buf, sizeof(buf), &got);
    assert_int_equal(got, 7);
    assert_memory_equal(buf, "\x81\x05hello", 7);
    /* an empty queue flushes to 0 at once */
    assert_int_equal(ws_wire_flush(&wire, loop, &pool, &bytes_out), 0);
    assert_int_equal(bytes_out, 107);
}

static void test_write_before_secured_queues(void **state)
{
    (void)state;
    uint64_t bytes_out = 0;
    ws_wire_write(&wire, &pool, (const uint8_t *)"AB", 2, (const uint8_t *)"cdef", 4, &bytes_out);
    assert_int_equal(bytes_out, 0);
    assert_int_equal(wire.out.bytes, 6);
    uint8_t buf[16];
    size_t got = 0;
    drain_peer(buf, sizeof(buf), &got);
    assert_int_equal(got, 0);
    /* once secured, write interest follows the queue; the flush sends it */
    secure();
    assert_int_equal(watching(), EV_READ | EV_WRITE);
    assert_int_equal(ws_wire_flush(&wire, loop, &pool, &bytes_out), 0);
    assert_int_equal(bytes_out, 6);
    assert_int_equal(wire.out.bytes, 0);
    drain_peer(buf, sizeof(buf), &got);
    assert_int_equal(got, 6);
    assert_memory_equal(buf, "ABcdef", 6);
}

/* A big write on a small socket buffer: part goes out, the rest is queued; flushing while the
 * peer reads delivers every byte once, in order, and counts each. */
static void test_write_partial_then_flush(void **state)
{
    (void)state;
    small_sndbuf();
    secure();
    uint8_t *data = pattern(BIG);
    const uint8_t hdr[4] = {0x82, 0x7f, 0xaa, 0xbb};
    uint64_t bytes_out = 0;
    ws_wire_write(&wire, &pool, hdr, sizeof(hdr), data, BIG, &bytes_out);
    assert_true(bytes_out > 0);
    assert_true(bytes_out < BIG);
    assert_int_equal(bytes_out + wire.out.bytes, BIG + sizeof(hdr));
    assert_int_equal(pool.queued, wire.out.bytes);

    uint8_t *got_buf = malloc(BIG + sizeof(hdr));
    assert_non_null(got_buf);
    size_t got = 0;
    int again = 0, rc;
    while ((rc = ws_wire_flush(&wire, loop, &pool, &bytes_out)) == WS_E_AGAIN) {
        again++;
        assert_true(wire.out.bytes > 0);
        assert_int_equal(watching(), EV_READ | EV_WRITE);
        /* nothing is writable until the peer reads */
        assert_int_equal(poll_once() & EV_WRITE, 0);
        drain_peer(got_buf, BIG + sizeof(hdr), &got);
        assert_int_equal(poll_once() & EV_WRITE, EV_WRITE);
        assert_int_equal(got, bytes_out);
    }
    assert_int_equal(rc, 0);
    assert_true(again > 0);
    assert_int_equal(wire.out.bytes, 0);
    assert_int_equal(pool.queued, 0);
    assert_int_equal(bytes_out, BIG + sizeof(hdr));
    drain_peer(got_buf, BIG + sizeof(hdr), &got);
    assert_int_equal(got, BIG + sizeof(hdr));
    assert_memory_equal(got_buf, hdr, sizeof(hdr));
    assert_memory_equal(got_buf + sizeof(hdr), data, BIG);

    /* drained: the owner drops write interest */
    ws_wire_watch(&wire, loop, false);
    assert_int_equal(watching(), EV_READ);
    free(got_buf);
    free(data);
}

/* A socket already full: nothing is written, the header and data are queued whole and go out
 * after what was already in the socket. */
static void test_write_on_full_socket(void **state)
{
    (void)state;
    small_sndbuf();
    secure();
    size_t junk = fill_socket();
    assert_true(junk > 0);
    uint64_t bytes_out = 0;
    ws_wire_write(&wire, &pool, (const uint8_t *)"HD", 2, (const uint8_t *)"payload", 7,
                  &bytes_out);
    assert_int_equal(bytes_out, 0);
    assert_int_equal(wire.out.bytes, 9);
    assert_int_equal(ws_wire_flush(&wire, loop, &pool, &bytes_out), WS_E_AGAIN);
    assert_int_equal(watching(), EV_READ | EV_WRITE);
    assert_int_equal(bytes_out, 0);

    uint8_t *buf = malloc(junk + 9);
    assert_non_null(buf);
    size_t got = 0;
    drain_peer(buf, junk + 9, &got);
    assert_int_equal(got, junk);
    assert_int_equal(ws_wire_flush(&wire, loop, &pool, &bytes_out), 0);
    assert_int_equal(bytes_out, 9);
    drain_peer(buf, junk + 9, &got);
    assert_int_equal(got, junk + 9);
    assert_memory_equal(buf + junk, "HDpayload", 9);
    free(buf);
}

static void test_reading_paused(void **state)
{
    (void)state;
    secure();
    wire.reading_paused = true;
    ws_wire_watch(&wire, loop, false);
    assert_int_equal(watching(), 0);
    assert_int_equal(write(peer, "x", 1), 1);
    assert_int_equal(poll_once(), 0); /* the bytes wait */

    /* paused reading with stuck output: write interest only */
    ws_wire_watch(&wire, loop, true);
    assert_int_equal(watching(), EV_WRITE);
    assert_int_equal(poll_once(), EV_WRITE);

    wire.reading_paused = false;
    ws_wire_watch(&wire, loop, false);
    assert_int_equal(watching(), EV_READ);
    assert_int_equal(poll_once(), EV_READ);
    /* the same wish twice changes nothing */
    ws_wire_watch(&wire, loop, false);
    assert_int_equal(watching(), EV_READ);
}

static void test_shutdown_half_closes(void **state)
{
    (void)state;
    small_sndbuf();
    secure();
    size_t junk = fill_socket();
    uint64_t bytes_out = 0;
    ws_wire_write(&wire, &pool, (const uint8_t *)"late", 4, (const uint8_t *)"", 0, &bytes_out);
    assert_int_equal(wire.out.bytes, 4);

    ws_wire_shutdown(&wire);
    assert_true(wire.wr_shut);
    /* the queue is dropped instead of sent */
    assert_int_equal(ws_wire_flush(&wire, loop, &pool, &bytes_out), 0);
    assert_int_equal(wire.out.bytes, 0);
    assert_int_equal(pool.queued, 0);
    assert_int_equal(bytes_out, 0);

    /* the peer reads what was in the socket, then end of stream */
    uint8_t *buf = malloc(junk + 16);
    assert_non_null(buf);
    size_t got = 0;
    for (;;) {
        ssize_t n = read(peer, buf + got, junk + 16 - got);
        if (n == 0)
            break;
        assert_true(n > 0);
        got += (size_t)n;
    }
    assert_int_equal(got, junk);
    free(buf);

    /* reading goes on */
    assert_int_equal(write(peer, "more", 4), 4);
    uint8_t in[8];
    assert_int_equal(ws_wire_read(&wire, loop, in, sizeof(in)), 4);
    assert_memory_equal(in, "more", 4);
    assert_int_equal(watching(), EV_READ);
}

static void test_shutdown_empty_queue_eof(void **state)
{
    (void)state;
    secure();
    ws_wire_shutdown(&wire);
    uint8_t buf[4];
    assert_int_equal(read(peer, buf, sizeof(buf)), 0);
    uint64_t bytes_out = 0;
    assert_int_equal(ws_wire_flush(&wire, loop, &pool, &bytes_out), 0);
}

static void test_close(void **state)
{
    (void)state;
    small_sndbuf();
    secure();
    fill_socket();
    uint64_t bytes_out = 0;
    ws_wire_write(&wire, &pool, (const uint8_t *)"queued", 6, (const uint8_t *)"", 0, &bytes_out);
    assert_true(pool.queued > 0);
    ws_wire_watch(&wire, loop, true);

    ws_wire_close(&wire, loop, &pool);
    wire_open = false;
    assert_int_equal(wire.io.fd, -1);
    assert_false(ev_is_active(&wire.io));
    assert_int_equal(wire.out.bytes, 0);
    assert_int_equal(pool.queued, 0);
    /* the descriptor is closed */
    errno = 0;
    assert_int_equal(fcntl(fd, F_GETFD), -1);
    assert_int_equal(errno, EBADF);
    /* watching a closed wire is a no-op */
    ws_wire_watch(&wire, loop, true);
    assert_false(ev_is_active(&wire.io));
    assert_int_equal(poll_once(), 0);

    /* the peer sees the end after the bytes that were in the socket */
    uint8_t buf[4096];
    ssize_t n;
    while ((n = read(peer, buf, sizeof(buf))) > 0)
        ;
    assert_int_equal(n, 0);
}

/* The peer went away: a flush reports the transport's error (and no SIGPIPE kills us). */
static void test_flush_error(void **state)
{
    (void)state;
    small_sndbuf();
    secure();
    fill_socket();
    uint64_t bytes_out = 0;
    ws_wire_write(&wire, &pool, (const uint8_t *)"x", 1, (const uint8_t *)"", 0, &bytes_out);
    close(peer);
    peer = -1;
    assert_int_equal(ws_wire_flush(&wire, loop, &pool, &bytes_out), WS_E_IO);
    assert_int_equal(bytes_out, 0);
    /* a direct write fails the same way and queues */
    ws_wire_write(&wire, &pool, (const uint8_t *)"y", 1, (const uint8_t *)"z", 1, &bytes_out);
    assert_int_equal(bytes_out, 0);
    assert_int_equal(wire.out.bytes, 3);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_init_watches_reads),
        T(test_read_and_eof),
        T(test_write_direct),
        T(test_write_before_secured_queues),
        T(test_write_partial_then_flush),
        T(test_write_on_full_socket),
        T(test_reading_paused),
        T(test_shutdown_half_closes),
        T(test_shutdown_empty_queue_eof),
        T(test_close),
        T(test_flush_error),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
