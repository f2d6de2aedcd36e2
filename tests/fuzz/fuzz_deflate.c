/* Fuzz target for permessage-deflate (src/proto/deflate.c). Input: two control bytes, then
 * messages, each a length byte (255: the rest of the input) and that many bytes. Control byte 0:
 * bits 0-2 chunk size class, bit 3 round-trip mode, bit 4 no context takeover, bit 5 a shared set,
 * bit 6 a 64-byte output limit (else 4096); control byte 1: bits 5-7 window bits (8 + value; 9 at
 * least for our compressor), bits 0-2 compression level, and with byte 0 the chunk-size seed.
 * Inflate mode (the messages are a client's compressed payloads):
 *   - inflating each message whole and in spans (sizes from the input, empty spans too, last only
 *     on the final one) gives the same output and result, message after message. Exception, see
 *     README "Known issues": with a client window under 15 bits, zlib checks back-references
 *     against the window only across inflate() calls, so a reference beyond the negotiated window
 *     may pass whole and fail split; that one divergence (one side WS_E_COMPRESSION) is tolerated
 *     and ends the comparison;
 *   - the output never passes the limit (+1 byte on WS_E_MESSAGE_TOO_BIG); only 0,
 *     WS_E_MESSAGE_TOO_BIG or WS_E_COMPRESSION come back, and errors are sticky;
 *   - without context takeover, a plain zlib raw inflater (payload plus 0x00 0x00 0xff 0xff,
 *     RFC 7692 §7.2.2) agrees on every message it can judge on its own: on everything with a
 *     15-bit window, on the output of messages both accept with a smaller one.
 * Round-trip mode (the messages are plain data):
 *   - ws_deflate_compress output inflates back to the message through ws_deflate_inflate (in
 *     spans) and through plain zlib, with or without context takeover;
 *   - without context takeover the shared set's output equals a connection's own compressor's. */
#include "fuzz.h"

#include "ws/buf.h"
#include "ws/deflate.h"
#include "ws/err.h"

#define ZLIB_CONST
#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MESSAGES 24

static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};

struct msg {
    const uint8_t *p;
    size_t n;
};

static size_t split_messages(const uint8_t *p, size_t n, struct msg *m)
{
    size_t count = 0, i = 0;
    while (i < n && count < MAX_MESSAGES) {
        size_t len = p[i++];
        if (len == 255 || len > n - i)
            len = n - i;
        m[count++] = (struct msg){p + i, len};
        i += len;
    }
    return count;
}

/* One connection's inflating side: its ws_deflate and, when asked, its own shared set. */
struct rx {
    struct ws_deflate d;
    struct ws_deflate_shared *shared;
};

static void rx_init(struct rx *r, bool nct, int bits, bool use_shared)
{
    struct ws_deflate_params p = {
        .server_no_context_takeover = true,
        .client_no_context_takeover = nct,
        .server_max_window_bits = 15,
        .client_max_window_bits = bits,
        .mem_level = 8,
        .level = 6,
        .compress_min_size = 0,
    };
    r->shared = use_shared ? ws_deflate_shared_new(8, 6) : NULL;
    ws_deflate_init(&r->d, &p, r->shared);
}

static void rx_free(struct rx *r)
{
    ws_deflate_reset(&r->d);
    FUZZ_CHECK(ws_deflate_memory(&r->d) == 0);
    ws_deflate_shared_free(r->shared);
}

/* Inflates one message, whole (ch NULL) or in spans from ch, each from an exact-size copy. */
static int inflate_msg(struct ws_deflate *d, const uint8_t *p, size_t n, struct fuzz_chunker *ch,
                       struct ws_buf *out, size_t max_out)
{
    ws_deflate_inflate_begin(d);
    size_t off = 0;
    int rc = 0;
    for (;;) {
        size_t k = ch ? fuzz_chunker_next(ch) : n;
        if (k > n - off)
            k = n - off;
        bool last = off + k == n;
        uint8_t *span = fuzz_dup(p + off, k);
        rc = ws_deflate_inflate(d, span, k, last, out, max_out);
        free(span);
        off += k;
        FUZZ_CHECK(rc == 0 || rc == WS_E_MESSAGE_TOO_BIG || rc == WS_E_COMPRESSION);
        FUZZ_CHECK(out->len <= max_out + (rc == WS_E_MESSAGE_TOO_BIG));
        if (rc < 0 || last)
            break;
    }
    if (rc < 0) {
        /* Sticky: the message is abandoned and so is every later one. */
        FUZZ_CHECK(ws_deflate_inflate(d, p, n, true, out, max_out) == rc);
    }
    return rc;
}

/* Plain zlib: inflates p[0..n) plus the tail on z, at most max_out + 1 bytes into out. Returns 1
 * when the message is judged valid, 0 when judged invalid (a data error, or not ending between
 * blocks), -1 when the reference cannot judge (a BFINAL block ends the stream: the module then
 * starts a new one; or the output passes the limit). */
static int ref_inflate(z_stream *z, const uint8_t *p, size_t n, struct ws_buf *out, size_t max_out)
{
    for (int part = 0; part < 2; part++) {
        z->next_in = part == 0 ? p : tail;
        z->avail_in = part == 0 ? (uInt)n : sizeof tail;
        for (;;) {
            uint8_t tmp[1024];
            z->next_out = tmp;
            z->avail_out = sizeof tmp;
            int rc = inflate(z, Z_NO_FLUSH);
            ws_buf_append(out, tmp, sizeof tmp - z->avail_out);
            if (out->len > max_out || rc == Z_STREAM_END)
                return -1;
            if (rc == Z_DATA_ERROR)
                return 0;
            if (z->avail_out != 0)
                break;
        }
    }
    /* RFC 7692 §7.2.1: a message ends with an empty stored block, so with the tail the stream
     * stands between blocks. */
    return z->avail_in == 0 && (z->data_type & 128) ? 1 : 0;
}

static void inflate_mode(const struct msg *m, size_t count, uint8_t c0, uint8_t c1)
{
    bool nct = c0 & 0x10, use_shared = c0 & 0x20;
    size_t max_out = c0 & 0x40 ? 64 : 4096;
    int bits = 8 + (c1 >> 5);
    struct rx whole, split;
    rx_init(&whole, nct, bits, use_shared);
    rx_init(&split, nct, bits, use_shared);
    struct fuzz_chunker ch;
    fuzz_chunker_init(&ch, c0, c1);
    struct ws_buf a, b, r;
    ws_buf_init(&a);
    ws_buf_init(&b);
    ws_buf_init(&r);
    for (size_t i = 0; i < count; i++) {
        a.len = b.len = r.len = 0;
        int ra = inflate_msg(&whole.d, m[i].p, m[i].n, NULL, &a, max_out);
        int rb = inflate_msg(&split.d, m[i].p, m[i].n, &ch, &b, max_out);
        bool same = ra == rb && a.len == b.len && (a.len == 0 || !memcmp(a.data, b.data, a.len));
        if (!same && bits < 15) {
            /* The known window divergence (README): one side found a reference beyond the window
             * sooner or only; nothing else may differ. */
            FUZZ_CHECK(ra == WS_E_COMPRESSION || rb == WS_E_COMPRESSION);
            break;
        }
        FUZZ_CHECK(ra == rb);
        FUZZ_CHECK(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0));
        if (m[i].n == 0) /* an empty payload is an empty message */
            FUZZ_CHECK(ra == 0 && a.len == 0);
        if (nct && m[i].n > 0) {
            /* RFC 7692 §7.2.2: without context takeover each message stands alone. */
            z_stream z;
            memset(&z, 0, sizeof z);
            FUZZ_CHECK(inflateInit2(&z, -bits) == Z_OK);
            int judged = ref_inflate(&z, m[i].p, m[i].n, &r, max_out);
            inflateEnd(&z);
            if (judged == 1 && (bits == 15 || ra == 0))
                FUZZ_CHECK(ra == 0 && a.len == r.len &&
                           (r.len == 0 || memcmp(a.data, r.data, r.len) == 0));
            else if (judged == 0 && bits == 15)
                FUZZ_CHECK(ra == WS_E_COMPRESSION);
        }
        if (ra < 0)
            break;
    }
    ws_buf_reset(&a);
    ws_buf_reset(&b);
    ws_buf_reset(&r);
    rx_free(&whole);
    rx_free(&split);
}

static void round_trip_mode(const struct msg *m, size_t count, uint8_t c0, uint8_t c1)
{
    bool nct = c0 & 0x10, use_shared = c0 & 0x20;
    int bits = 8 + (c1 >> 5);
    if (bits < WS_DEFLATE_MIN_SERVER_WINDOW_BITS)
        bits = WS_DEFLATE_MIN_SERVER_WINDOW_BITS;
    int level = 1 + (c1 & 7);
    struct ws_deflate_params p = {
        .server_no_context_takeover = nct,
        .client_no_context_takeover = true,
        .server_max_window_bits = bits,
        .client_max_window_bits = 15,
        .mem_level = 8,
        .level = level,
        .compress_min_size = 0,
    };
    struct ws_deflate_shared *shared = use_shared ? ws_deflate_shared_new(8, level) : NULL;
    struct ws_deflate tx, own;
    ws_deflate_init(&tx, &p, shared);
    ws_deflate_init(&own, &p, NULL);
    FUZZ_CHECK(ws_deflate_broadcast_bits(&tx) == (nct && shared ? bits : 0));
    FUZZ_CHECK(ws_deflate_should_compress(&tx, 0));

    /* The receiving end: our inflater with the matching window, and plain zlib. */
    struct rx rx;
    rx_init(&rx, nct, bits, use_shared);
    z_stream z;
    memset(&z, 0, sizeof z);
    FUZZ_CHECK(inflateInit2(&z, -bits) == Z_OK);
    struct fuzz_chunker ch;
    fuzz_chunker_init(&ch, c0, c1);

    struct ws_buf c, c2, out, ref;
    ws_buf_init(&c);
    ws_buf_init(&c2);
    ws_buf_init(&out);
    ws_buf_init(&ref);
    for (size_t i = 0; i < count; i++) {
        c.len = c2.len = out.len = ref.len = 0;
        FUZZ_CHECK(ws_deflate_compress(&tx, m[i].p, m[i].n, &c) == 0);
        FUZZ_CHECK(c.len > 0); /* RFC 7692 §7.2.3.6: even an empty message has a payload */
        if (nct) {
            /* The output depends on the message alone: the shared set's equals our own. */
            FUZZ_CHECK(ws_deflate_compress(&own, m[i].p, m[i].n, &c2) == 0);
            FUZZ_CHECK(c2.len == c.len && memcmp(c2.data, c.data, c.len) == 0);
        }
        FUZZ_CHECK(inflate_msg(&rx.d, c.data, c.len, &ch, &out, m[i].n) == 0);
        FUZZ_CHECK(out.len == m[i].n && (m[i].n == 0 || memcmp(out.data, m[i].p, m[i].n) == 0));
        FUZZ_CHECK(ref_inflate(&z, c.data, c.len, &ref, m[i].n) == 1);
        FUZZ_CHECK(ref.len == m[i].n && (m[i].n == 0 || memcmp(ref.data, m[i].p, m[i].n) == 0));
        if (nct)
            FUZZ_CHECK(inflateReset(&z) == Z_OK);
    }
    inflateEnd(&z);
    ws_buf_reset(&c);
    ws_buf_reset(&c2);
    ws_buf_reset(&out);
    ws_buf_reset(&ref);
    rx_free(&rx);
    ws_deflate_reset(&tx);
    ws_deflate_reset(&own);
    ws_deflate_shared_free(shared);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t c0 = data[0], c1 = data[1];
    struct msg m[MAX_MESSAGES];
    size_t count = split_messages(data + 2, size - 2, m);
    if (c0 & 0x08)
        round_trip_mode(m, count, c0, c1);
    else
        inflate_mode(m, count, c0, c1);
    return 0;
}
