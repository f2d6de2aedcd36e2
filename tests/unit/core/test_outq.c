/* Unit tests for the send queue (src/core/outq.c): coalescing into pooled chunks, big appends,
 * shared frames referenced without copying and counted once in pool.queued, order kept across
 * owned and shared chunks, a frame's header and payload in one step, the iovec limit, partial
 * writes across chunk boundaries checked against a byte model, and clear returning chunks to the
 * pool up to its limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/outq.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK WS_OUTQ_CHUNK_BYTES

static uint8_t pattern(size_t i)
{
    return (uint8_t)(i * 31 + 7);
}

/* The unwritten bytes as ws_outq_iov hands them out, concatenated; checks their total is q->bytes.
 * Returns the number of iovecs. */
static int gather(const struct ws_outq *q, uint8_t *out, size_t cap)
{
    static struct iovec iov[1024];
    int n = ws_outq_iov(q, iov, 1024);
    assert_true(n < 1024);
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        assert_true(iov[i].iov_len > 0); /* no empty iovecs */
        assert_true(len + iov[i].iov_len <= cap);
        memcpy(out + len, iov[i].iov_base, iov[i].iov_len);
        len += iov[i].iov_len;
    }
    assert_int_equal(len, q->bytes);
    return n;
}

static size_t put(uint8_t *dst, size_t at, const void *p, size_t n)
{
    memcpy(dst + at, p, n);
    return at + n;
}

static struct ws_shared *shared_of(size_t len, uint8_t seed)
{
    struct ws_shared *s = ws_shared_new(len);
    assert_int_equal(s->refs, 1);
    assert_int_equal(s->len, len);
    for (size_t i = 0; i < len; i++)
        s->data[i] = (uint8_t)(seed + i);
    return s;
}

static void test_small_appends_coalesce(void **state)
{
    (void)state;
    struct ws_chunk_pool pool;
    struct ws_outq q;
    ws_chunk_pool_init(&pool, 4);
    ws_outq_init(&q);

    struct iovec iov[4];
    assert_int_equal(ws_outq_iov(&q, iov, 4), 0);
    ws_outq_append(&q, &pool, "x", 0); /* nothing */
    assert_null(q.head);
    assert_int_equal(pool.queued, 0);

    uint8_t src[1000];
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = pattern(i);
    for (size_t i = 0; i < 10; i++)
        ws_outq_append(&q, &pool, src + i * 100, 100);
    assert_int_equal(q.bytes, 1000);
    assert_int_equal(pool.queued, 1000);
    uint8_t out[1000];
    assert_int_equal(gather(&q, out, sizeof(out)), 1); /* one chunk, one iovec */
    assert_memory_equal(out, src, 1000);

    ws_outq_consume(&q, &pool, 1000);
    assert_int_equal(q.bytes, 0);
    assert_int_equal(pool.queued, 0);
    assert_null(q.head);
    assert_null(q.tail);
    assert_int_equal(pool.nfree, 1); /* the chunk went back to the pool */

    /* and comes out again for the next append */
    ws_outq_append(&q, &pool, "hello", 5);
    assert_int_equal(pool.nfree, 0);
    assert_int_equal(gather(&q, out, sizeof(out)), 1);
    assert_memory_equal(out, "hello", 5);
    ws_outq_clear(&q, &pool);
    ws_chunk_pool_free(&pool);
    assert_int_equal(pool.nfree, 0);
}

static void test_append_fills_chunk_then_spills(void **state)
{
    (void)state;
    struct ws_chunk_pool pool;
    struct ws_outq q;
    ws_chunk_pool_init(&pool, 8);
    ws_outq_init(&q);
    static uint8_t src[3 * CHUNK], out[3 * CHUNK];
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = pattern(i);

    ws_outq_append(&q, &pool, src, CHUNK - 10);
    ws_outq_append(&q, &pool, src + CHUNK - 10, 30); /* 10 fill the chunk, 20 spill */
    struct iovec iov[4];
    assert_int_equal(ws_outq_iov(&q, iov, 4), 2);
    assert_int_equal(iov[0].iov_len, CHUNK);
    assert_int_equal(iov[1].iov_len, 20);
    assert_int_equal(gather(&q, out, sizeof(out)), 2);
    assert_memory_equal(out, src, CHUNK + 20);

    /* exactly one chunk's worth more: fills the second chunk's room, then a third */
    ws_outq_append(&q, &pool, src + CHUNK + 20, CHUNK);
    assert_int_equal(gather(&q, out, sizeof(out)), 3);
    assert_memory_equal(out, src, 2 * CHUNK + 20);
    assert_int_equal(pool.queued, 2 * CHUNK + 20);
    ws_outq_clear(&q, &pool);
    assert_int_equal(pool.queued, 0);
    assert_int_equal(pool.nfree, 3);
    ws_chunk_pool_free(&pool);
}

static void test_big_append(void **state)
{
    (void)state;
    struct ws_chunk_pool pool;
    struct ws_outq q;
    ws_chunk_pool_init(&pool, 8);
    ws_outq_init(&q);
    enum { BIG = 5 * CHUNK + 123 };
    uint8_t *src = malloc(BIG + 10), *out = malloc(BIG + 10);
    assert_non_null(src);
    assert_non_null(out);
    for (size_t i = 0; i < BIG + 10; i++)
        src[i] = pattern(i);

    ws_outq_append(&q, &pool, src, BIG); /* one chunk sized to fit */
    ws_outq_append(&q, &pool, src + BIG, 10);
    assert_int_equal(gather(&q, out, BIG + 10), 2);
    assert_memory_equal(out, src, BIG + 10);
    assert_int_equal(pool.queued, BIG + 10);

    /* written in pieces that straddle the end of the big chunk */
    ws_outq_consume(&q, &pool, BIG - 3);
    assert_int_equal(q.bytes, 13);
    assert_int_equal(pool.queued, 13);
    assert_int_equal(gather(&q, out, BIG + 10), 2);
    assert_memory_equal(out, src + BIG - 3, 13);
    ws_outq_consume(&q, &pool, 5);
    assert_int_equal(gather(&q, out, BIG + 10), 1);
    assert_memory_equal(out, src + BIG + 2, 8);
    assert_int_equal(pool.nfree, 0); /* the big chunk is freed, not pooled */
    ws_outq_consume(&q, &pool, 8);
    assert_int_equal(pool.nfree, 1);
    assert_int_equal(pool.queued, 0);
    assert_null(q.head);
    free(src);
    free(out);
    ws_chunk_pool_free(&pool);
}

/* One frame queued for three connections: no copies, one count in pool.queued, freed when the
 * last queue is done with it, whatever order they finish in. */
static void test_shared_frame_refs_and_accounting(void **state)
{
    (void)state;
    struct ws_chunk_pool pool;
    struct ws_outq q[3];
    ws_chunk_pool_init(&pool, 8);
    for (int i = 0; i < 3; i++)
        ws_outq_init(&q[i]);
    enum { LEN = 4096 };
    struct ws_shared *s = shared_of(LEN, 1);

    for (int i = 0; i < 3; i++)
        ws_outq_append_shared(&q[i], &pool, s);
    assert_int_equal(s->refs, 4);
    assert_int_equal(pool.queued, LEN); /* counted once */
    for (int i = 0; i < 3; i++) {
        struct iovec iov[2];
        assert_int_equal(ws_outq_iov(&q[i], iov, 2), 1);
        assert_ptr_equal(iov[0].iov_base, s->data); /* referenced, not copied */
        assert_int_equal(iov[0].iov_len, LEN);
        assert_int_equal(q[i].bytes, LEN);
    }
    ws_shared_unref(s); /* the broadcaster lets go */
    assert_int_equal(s->refs, 3);

    ws_outq_consume(&q[0], &pool, LEN); /* written whole */
    assert_int_equal(s->refs, 2);
    ws_outq_clear(&q[1], &pool); /* connection closed */
    assert_int_equal(s->refs, 1);
    assert_int_equal(pool.queued, LEN); /* still in memory */

    ws_outq_consume(&q[2], &pool, 1000); /* a partial write */
    struct iovec iov[2];
    assert_int_equal(ws_outq_iov(&q[2], iov, 2), 1);
    assert_ptr_equal(iov[0].iov_base, s->data + 1000);
    assert_int_equal(iov[0].iov_len, LEN - 1000);
    assert_int_equal(q[2].bytes, LEN - 1000);
    assert_int_equal(pool.queued, LEN);
    ws_outq_consume(&q[2], &pool, LEN - 1000); /* the last reference: freed (ASan checks) */
    assert_int_equal(pool.queued, 0);
    assert_null(q[2].head);
    ws_shared_unref(NULL);
    ws_chunk_pool_free(&pool);
}

static void test_small_shared_is_copied(void **state)
{
    (void)state;
    struct ws_chunk_pool pool;
    struct ws_outq q;
    ws_chunk_pool_init(&pool, 8);
    ws_outq_init(&q);
    struct ws_shared *s = shared_of(WS_OUTQ_SHARE_MIN - 1, 9);
    ws_outq_append(&q, &pool, "ab", 2);
    ws_outq_append_shared(&q, &pool, s);
    assert_int_equal(s->refs, 1); /* no reference kept */
    assert_null(s->pool);
    uint8_t expect[WS_OUTQ_SHARE_MIN + 1];
    memcpy(expect, "ab", 2);
    memcpy(expect + 2, s->data, s->len);
    ws_shared_unref(s); /* the queue must not depend on it */
    uint8_t out[WS_OUTQ_SHARE_MIN + 1];
    assert_int_equal(gather(&q, out, sizeof(out)), 1); /* coalesced with "ab" */
    assert_memory_equal(out, expect, WS_OUTQ_SHARE_MIN + 1);
    assert_int_equal(pool.queued, WS_OUTQ_SHARE_MIN + 1);

    /* exactly SHARE_MIN is shared */
    s = shared_of(WS_OUTQ_SHARE_MIN, 3);
    ws_outq_append_shared(&q, &pool, s);
    assert_int_equal(s->refs, 2);
    ws_shared_unref(s);
    ws_outq_clear(&q, &pool);
    assert_int_equal(pool.queued, 0);
    ws_chunk_pool_free(&pool);
}

/* Bytes appended after a shared frame go after it, not into the owned chunk before it. */
static void test_order_across_owned_and_shared(void **state)
{
    (void)state;
    struct ws_chunk_pool pool;
    struct ws_outq q;
    ws_chunk_pool_init(&pool, 8);
    ws_outq_init(&q);
    struct ws_shared *a = shared_of(2000, 50), *b = shared_of(3000, 90);
    ws_outq_append(&q, &pool, "abc", 3);
    ws_outq_append_shared(&q, &pool, a);
    ws_outq_append(&q, &pool, "def", 3);
    ws_outq_append_shared(&q, &pool, b);
    ws_outq_append_shared(&q, &pool, a); /* the same frame twice in one queue */
    ws_outq_append(&q, &pool, "g", 1);
    assert_int_equal(pool.queued, 3 + 2000 + 3 + 3000 + 1);
    assert_int_equal(a->refs, 3);

    static uint8_t expect[8007], out[8007];
    size_t n = 0;
    n = put(expect, n, "abc", 3);
    n = put(expect, n, a->data, 2000);
    n = put(expect, n, "def", 3);
    n = put(expect, n, b->data, 3000);
    n = put(expect, n, a->data, 2000);
    n = put(expect, n, "g", 1);
    assert_int_equal(n, q.bytes);
    assert_int_equal(gather(&q, out, sizeof(out)), 6);
    assert_memory_equal(out, expect, n);

    /* the iovec limit: the first max pieces, in order */
    struct iovec iov[6];
    assert_int_equal(ws_outq_iov(&q, iov, 0), 0);
    assert_int_equal(ws_outq_iov(&q, iov, 2), 2);
    assert_int_equal(iov[0].iov_len, 3);
    assert_ptr_equal(iov[1].iov_base, a->data);

    ws_shared_unref(a);
    ws_shared_unref(b);
    ws_outq_consume(&q, &pool, 2004); /* through "abc", a, and into "def" */
    assert_int_equal(gather(&q, out, sizeof(out)), 4);
    assert_memory_equal(out, expect + 2004, n - 2004);
    assert_int_equal(a->refs, 1);
    ws_outq_clear(&q, &pool);
    assert_int_equal(pool.queued, 0);
    ws_chunk_pool_free(&pool);
}

static void test_clear_returns_chunks_to_pool(void **state)
{
    (void)state;
    struct ws_chunk_pool pool;
    struct ws_outq q;
    ws_chunk_pool_init(&pool, 2);
    ws_outq_init(&q);
    static uint8_t src[4 * CHUNK];
    memset(src, 'z', sizeof(src));
    ws_outq_append(&q, &pool, src, 3 * CHUNK + 1); /* one big chunk */
    ws_outq_clear(&q, &pool);
    assert_int_equal(pool.nfree, 0); /* not a standard chunk */

    for (int i = 0; i < 4; i++) /* four standard chunks, the first part written */
        ws_outq_append(&q, &pool, src, CHUNK);
    ws_outq_consume(&q, &pool, 100);
    struct ws_shared *s = shared_of(5000, 0);
    ws_outq_append_shared(&q, &pool, s);
    ws_outq_consume(&q, &pool, CHUNK); /* the first chunk goes back */
    assert_int_equal(pool.nfree, 1);
    ws_outq_clear(&q, &pool);
    assert_int_equal(pool.nfree, 2); /* capped at max_free */
    assert_int_equal(q.bytes, 0);
    assert_null(q.head);
    assert_null(q.tail);
    assert_int_equal(s->refs, 1);
    assert_int_equal(pool.queued, 5000); /* the frame still lives */
    ws_shared_unref(s);
    assert_int_equal(pool.queued, 0);

    /* cleared queue works as new, and the pooled chunks are reused */
    ws_outq_append(&q, &pool, "again", 5);
    assert_int_equal(pool.nfree, 1);
    uint8_t out[8];
    assert_int_equal(gather(&q, out, sizeof(out)), 1);
    assert_memory_equal(out, "again", 5);
    ws_outq_clear(&q, &pool);
    ws_outq_clear(&q, &pool); /* twice: nothing to do */
    ws_chunk_pool_free(&pool);

    /* a pool that keeps nothing */
    ws_chunk_pool_init(&pool, 0);
    ws_outq_append(&q, &pool, "x", 1);
    ws_outq_consume(&q, &pool, 1);
    assert_int_equal(pool.nfree, 0);
    assert_null(pool.free);
    ws_chunk_pool_free(&pool);
}

/* Random appends (small, chunk-sized, big, shared) and writes of random sizes, checked after every
 * step against a byte model, with pool.queued = unwritten owned bytes + every live shared frame. */
static void test_random_against_model(void **state)
{
    (void)state;
    enum { MODEL = 1 << 21, ROUNDS = 4000, MAXSEG = 256 };
    uint8_t *model = malloc(MODEL), *out = malloc(MODEL);
    assert_non_null(model);
    assert_non_null(out);
    /* segments appended, to know what is counted */
    struct seg {
        bool shared;
        size_t end; /* offset in model just past its bytes */
        size_t len;
    } *segs = calloc(ROUNDS, sizeof(*segs));
    assert_non_null(segs);
    size_t head = 0, tail = 0, nseg = 0, first_seg = 0;
    struct ws_chunk_pool pool;
    struct ws_outq q;
    ws_chunk_pool_init(&pool, 4);
    ws_outq_init(&q);
    srand(13);
    for (int round = 0; round < ROUNDS; round++) {
        int op = rand() % 10;
        if (op < 5 && tail + 3 * CHUNK < MODEL && nseg - first_seg < MAXSEG) {
            size_t len;
            int kind = rand() % 8;
            if (kind < 4)
                len = (size_t)(rand() % 200) + 1;
            else if (kind < 6)
                len = (size_t)(rand() % (2 * CHUNK)) + 1;
            else
                len = WS_OUTQ_SHARE_MIN + (size_t)(rand() % (2 * CHUNK));
            bool share = kind >= 6;
            for (size_t i = 0; i < len; i++)
                model[tail + i] = (uint8_t)rand();
            if (share) {
                struct ws_shared *s = ws_shared_new(len);
                memcpy(s->data, model + tail, len);
                ws_outq_append_shared(&q, &pool, s);
                ws_shared_unref(s);
            } else {
                ws_outq_append(&q, &pool, model + tail, len);
            }
            tail += len;
            segs[nseg++] = (struct seg){share, tail, len};
        } else if (tail > head) {
            size_t avail = tail - head;
            size_t n = rand() % 3 ? (size_t)rand() % (avail < 3000 ? avail + 1 : 3000)
                                  : (size_t)rand() % (avail + 1);
            ws_outq_consume(&q, &pool, n);
            head += n;
            while (first_seg < nseg && segs[first_seg].end <= head)
                first_seg++;
        }
        if (head == tail && rand() % 4 == 0) { /* drained: start the model over */
            head = tail = 0;
            nseg = first_seg = 0;
        }
        assert_int_equal(q.bytes, tail - head);
        gather(&q, out, MODEL);
        assert_memory_equal(out, model + head, tail - head);
        size_t queued = 0;
        for (size_t i = first_seg; i < nseg; i++) {
            size_t start = segs[i].end - segs[i].len;
            queued += segs[i].shared ? segs[i].len : segs[i].end - (start > head ? start : head);
        }
        assert_int_equal(pool.queued, queued);
        assert_true(pool.nfree <= pool.max_free);
    }
    ws_outq_clear(&q, &pool);
    assert_int_equal(pool.queued, 0);
    ws_chunk_pool_free(&pool);
    free(segs);
    free(model);
    free(out);
}

/* ws_outq_append2 (a frame's header and payload) gives the bytes of the two appends it stands for:
 * into an empty queue, into a tail with room, past a full tail, after a shared chunk, and a pair
 * larger than a chunk. */
static void test_append2_as_two_appends(void **state)
{
    (void)state;
    static uint8_t big[CHUNK + 100], want[3 * CHUNK + 400], got[3 * CHUNK + 400];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = pattern(i);
    struct ws_chunk_pool pool;
    struct ws_outq q;
    ws_chunk_pool_init(&pool, 4);
    ws_outq_init(&q);
    size_t n = 0;
    ws_outq_append2(&q, &pool, "\x81\x03", 2, "abc", 3); /* empty queue */
    n = put(want, n,
            "\x81\x03"
            "abc",
            5);
    ws_outq_append2(&q, &pool, "\x82\x00", 2, NULL, 0); /* empty payload */
    n = put(want, n, "\x82\x00", 2);
    ws_outq_append2(&q, &pool, "HH", 2, big, CHUNK - 10); /* past the tail's room */
    n = put(want, n, "HH", 2);
    n = put(want, n, big, CHUNK - 10);
    struct ws_shared *s = shared_of(WS_OUTQ_SHARE_MIN, 9); /* a shared tail */
    ws_outq_append_shared(&q, &pool, s);
    n = put(want, n, s->data, s->len);
    ws_shared_unref(s);
    ws_outq_append2(&q, &pool, "\x81\x01", 2, "z", 1);
    n = put(want, n,
            "\x81\x01"
            "z",
            3);
    ws_outq_append2(&q, &pool, "LONG", 4, big, sizeof(big)); /* more than a chunk */
    n = put(want, n, "LONG", 4);
    n = put(want, n, big, sizeof(big));
    assert_int_equal(q.bytes, n);
    gather(&q, got, sizeof(got));
    assert_memory_equal(got, want, n);
    ws_outq_clear(&q, &pool);
    assert_int_equal(pool.queued, 0);
    ws_chunk_pool_free(&pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_appends_coalesce),
        cmocka_unit_test(test_append_fills_chunk_then_spills),
        cmocka_unit_test(test_big_append),
        cmocka_unit_test(test_shared_frame_refs_and_accounting),
        cmocka_unit_test(test_small_shared_is_copied),
        cmocka_unit_test(test_order_across_owned_and_shared),
        cmocka_unit_test(test_clear_returns_chunks_to_pool),
        cmocka_unit_test(test_random_against_model),
        cmocka_unit_test(test_append2_as_two_appends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
