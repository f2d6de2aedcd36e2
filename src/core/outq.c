/* Send queue chunks and shared frames. Owned chunks of the standard size are recycled through
 * the pool; larger ones (one big message) are sized to fit and freed after writing. */
#include "ws/outq.h"

#include "ws/buf.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

struct ws_shared *ws_shared_new(size_t len)
{
    struct ws_shared *s = ws_xmalloc(sizeof(*s) + len);
    s->refs = 1;
    s->len = len;
    s->pool = NULL;
    return s;
}

struct ws_shared *ws_shared_ref(struct ws_shared *s)
{
    s->refs++;
    return s;
}

void ws_shared_unref(struct ws_shared *s)
{
    if (s && --s->refs == 0) {
        if (s->pool)
            s->pool->queued -= s->len;
        free(s);
    }
}

void ws_chunk_pool_init(struct ws_chunk_pool *pool, size_t max_free)
{
    pool->free = NULL;
    pool->nfree = 0;
    pool->max_free = max_free;
    pool->queued = 0;
}

void ws_chunk_pool_free(struct ws_chunk_pool *pool)
{
    while (pool->free) {
        struct ws_chunk *c = pool->free;
        pool->free = c->next;
        free(c);
    }
    pool->nfree = 0;
}

static struct ws_chunk *chunk_get(struct ws_chunk_pool *pool, size_t need)
{
    struct ws_chunk *c;
    if (need <= WS_OUTQ_CHUNK_BYTES && pool->free) {
        c = pool->free;
        pool->free = c->next;
        pool->nfree--;
    } else {
        size_t cap = need <= WS_OUTQ_CHUNK_BYTES ? WS_OUTQ_CHUNK_BYTES : need;
        c = ws_xmalloc(sizeof(*c) + cap);
        c->cap = cap;
    }
    c->next = NULL;
    c->shared = NULL;
    c->off = 0;
    c->len = 0;
    return c;
}

static void chunk_put(struct ws_chunk_pool *pool, struct ws_chunk *c)
{
    if (c->shared) {
        ws_shared_unref(c->shared);
        free(c);
    } else if (c->cap == WS_OUTQ_CHUNK_BYTES && pool->nfree < pool->max_free) {
        c->next = pool->free;
        pool->free = c;
        pool->nfree++;
    } else {
        free(c);
    }
}

void ws_outq_init(struct ws_outq *q)
{
    q->head = q->tail = NULL;
    q->bytes = 0;
}

static void link_chunk(struct ws_outq *q, struct ws_chunk *c)
{
    if (q->tail)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
}

void ws_outq_append(struct ws_outq *q, struct ws_chunk_pool *pool, const void *p, size_t n)
{
    if (n == 0)
        return;
    q->bytes += n;
    pool->queued += n;
    struct ws_chunk *t = q->tail;
    if (t && !t->shared) {
        size_t room = t->cap - t->len;
        size_t k = room < n ? room : n;
        memcpy(t->bytes + t->len, p, k);
        t->len += k;
        p = (const uint8_t *)p + k;
        n -= k;
        if (n == 0)
            return;
    }
    struct ws_chunk *c = chunk_get(pool, n);
    memcpy(c->bytes, p, n);
    c->len = n;
    link_chunk(q, c);
}

void ws_outq_append2(struct ws_outq *q, struct ws_chunk_pool *pool, const void *a, size_t na,
                     const void *b, size_t nb)
{
    struct ws_chunk *t = q->tail;
    if (!t || t->shared || t->cap - t->len < na + nb) {
        if (na + nb > WS_OUTQ_CHUNK_BYTES) {
            ws_outq_append(q, pool, a, na);
            ws_outq_append(q, pool, b, nb);
            return;
        }
        t = chunk_get(pool, na + nb);
        link_chunk(q, t);
    }
    /* the common case, a small frame: both into one chunk */
    if (na)
        memcpy(t->bytes + t->len, a, na);
    if (nb)
        memcpy(t->bytes + t->len + na, b, nb);
    t->len += na + nb;
    q->bytes += na + nb;
    pool->queued += na + nb;
}

void ws_outq_append_shared(struct ws_outq *q, struct ws_chunk_pool *pool, struct ws_shared *s)
{
    if (s->len < WS_OUTQ_SHARE_MIN) {
        ws_outq_append(q, pool, s->data, s->len);
        return;
    }
    struct ws_chunk *c = ws_xmalloc(sizeof(*c));
    c->next = NULL;
    c->shared = ws_shared_ref(s);
    c->off = 0;
    c->len = s->len;
    c->cap = 0;
    link_chunk(q, c);
    q->bytes += s->len;
    if (!s->pool) {
        /* one frame in memory however many queues hold it: counted once */
        s->pool = pool;
        pool->queued += s->len;
    }
}

int ws_outq_iov(const struct ws_outq *q, struct iovec *iov, int max)
{
    int n = 0;
    for (const struct ws_chunk *c = q->head; c && n < max; c = c->next) {
        const uint8_t *base = c->shared ? c->shared->data : c->bytes;
        iov[n].iov_base = (void *)(base + c->off);
        iov[n].iov_len = c->len - c->off;
        n++;
    }
    return n;
}

void ws_outq_consume(struct ws_outq *q, struct ws_chunk_pool *pool, size_t n)
{
    assert(n <= q->bytes);
    q->bytes -= n;
    while (n > 0) {
        struct ws_chunk *c = q->head;
        size_t left = c->len - c->off;
        if (!c->shared)
            pool->queued -= n < left ? n : left;
        if (n < left) {
            c->off += n;
            return;
        }
        n -= left;
        q->head = c->next;
        if (!q->head)
            q->tail = NULL;
        chunk_put(pool, c);
    }
}

void ws_outq_clear(struct ws_outq *q, struct ws_chunk_pool *pool)
{
    while (q->head) {
        struct ws_chunk *c = q->head;
        q->head = c->next;
        if (!c->shared)
            pool->queued -= c->len - c->off;
        chunk_put(pool, c);
    }
    q->tail = NULL;
    q->bytes = 0;
}
