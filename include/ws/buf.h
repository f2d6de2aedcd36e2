/* Growable byte buffer and the allocation wrappers every module uses. Allocation failure aborts
 * (ws_xmalloc); sizes a peer controls must be checked against a limit before they reach here. */
#ifndef WS_BUF_H
#define WS_BUF_H

#include <stddef.h>
#include <stdint.h>

struct ws_buf {
    uint8_t *data; /* owned; NULL while cap == 0 */
    size_t len;
    size_t cap;
};

/* malloc/realloc/calloc that abort the process with a message when memory is exhausted. */
void *ws_xmalloc(size_t n);
void *ws_xrealloc(void *p, size_t n);
void *ws_xcalloc(size_t count, size_t n);
char *ws_xstrndup(const char *s, size_t n);

/* An empty buffer that owns nothing. */
void ws_buf_init(struct ws_buf *b);

/* Frees the storage and leaves an empty buffer; safe on an empty one. */
void ws_buf_reset(struct ws_buf *b);

/* Makes room for extra more bytes (grows geometrically). Aborts on exhaustion. */
void ws_buf_reserve(struct ws_buf *b, size_t extra);

/* Appends n bytes copied from p. */
void ws_buf_append(struct ws_buf *b, const void *p, size_t n);

/* Removes the first n bytes (n <= len), keeping the storage. */
void ws_buf_consume(struct ws_buf *b, size_t n);

#endif
