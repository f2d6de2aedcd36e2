/* A connection's send queue: a chain of chunks that either own copied bytes (small frames are
 * coalesced into one chunk) or reference a shared, reference-counted frame (a broadcast encoded
 * once for every recipient). Chunks come from a pool so the steady path does not allocate.
 * No I/O: it hands out iovecs and is told how much was written. */
#ifndef WS_OUTQ_H
#define WS_OUTQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define WS_OUTQ_CHUNK_BYTES 16384
#define WS_OUTQ_SHARE_MIN 1024 /* shared frames smaller than this are copied instead */

struct ws_chunk_pool;

/* An immutable byte string shared by reference count (an encoded frame). */
struct ws_shared {
    uint32_t refs;
    size_t len;
    struct ws_chunk_pool *pool; /* counts len once while queued anywhere, or NULL */
    uint8_t data[];
};

struct ws_chunk {
    struct ws_chunk *next;
    struct ws_shared *shared; /* non-NULL: the bytes are shared->data[0..len) */
    size_t off;               /* bytes already written */
    size_t len;               /* bytes held */
    size_t cap;               /* owned storage size (0 for shared) */
    uint8_t bytes[];
};

struct ws_chunk_pool {
    struct ws_chunk *free; /* chunks of WS_OUTQ_CHUNK_BYTES */
    size_t nfree, max_free;
    size_t queued; /* memory of queued output: copied bytes, and each shared frame once */
};

struct ws_outq {
    struct ws_chunk *head, *tail;
    size_t bytes; /* unwritten bytes */
};

/* A shared string of len bytes with one reference; the caller fills data. */
struct ws_shared *ws_shared_new(size_t len);
struct ws_shared *ws_shared_ref(struct ws_shared *s);
/* Drops one reference; frees at zero. NULL is a no-op. */
void ws_shared_unref(struct ws_shared *s);

void ws_chunk_pool_init(struct ws_chunk_pool *pool, size_t max_free);
void ws_chunk_pool_free(struct ws_chunk_pool *pool);

void ws_outq_init(struct ws_outq *q);

/* Appends a copy of n bytes. */
void ws_outq_append(struct ws_outq *q, struct ws_chunk_pool *pool, const void *p, size_t n);

/* ws_outq_append of a[0..na) then b[0..nb) (a frame's header and payload) in one step. */
void ws_outq_append2(struct ws_outq *q, struct ws_chunk_pool *pool, const void *a, size_t na,
                     const void *b, size_t nb);

/* Appends a reference to s (s->len bytes); small strings are copied instead. */
void ws_outq_append_shared(struct ws_outq *q, struct ws_chunk_pool *pool, struct ws_shared *s);

/* Fills up to max iovecs with the unwritten bytes in order; returns how many. */
int ws_outq_iov(const struct ws_outq *q, struct iovec *iov, int max);

/* Marks n bytes written, releasing finished chunks. */
void ws_outq_consume(struct ws_outq *q, struct ws_chunk_pool *pool, size_t n);

/* Drops everything queued. */
void ws_outq_clear(struct ws_outq *q, struct ws_chunk_pool *pool);

#endif
