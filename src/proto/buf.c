/* Byte buffers and aborting allocators. Pure: no I/O beyond the abort message. */
#include "ws/buf.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(size_t n)
{
    fprintf(stderr, "wsserver: out of memory allocating %zu bytes\n", n);
    abort();
}

void *ws_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *ws_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

void *ws_xcalloc(size_t count, size_t n)
{
    void *p = calloc(count ? count : 1, n ? n : 1);
    if (!p)
        oom(count * n);
    return p;
}

char *ws_xstrndup(const char *s, size_t n)
{
    char *p = ws_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void ws_buf_init(struct ws_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void ws_buf_reset(struct ws_buf *b)
{
    free(b->data);
    ws_buf_init(b);
}

void ws_buf_reserve(struct ws_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return;
    size_t want = b->len + extra;
    if (want < b->len)
        oom(SIZE_MAX);
    size_t cap = b->cap ? b->cap : 64;
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    b->data = ws_xrealloc(b->data, cap);
    b->cap = cap;
}

void ws_buf_append(struct ws_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    ws_buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void ws_buf_consume(struct ws_buf *b, size_t n)
{
    assert(n <= b->len);
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}
