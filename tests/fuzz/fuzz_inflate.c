/* Fuzz target for the receive side of permessage-deflate (src/proto/deflate.c: ws_deflate_inflate).
 *
 * Input: two control bytes, then records that make the spans of one connection's messages.
 *   byte 0: bits 0-2 the client's window (4-7: 15 bits; 0-3: 8, 9, 10, 12 bits), bit 3
 *           client_no_context_takeover, bit 4 a shared set, bits 5-6 max_out (65536, 4096,
 *           300, 1), bit 7 compress mode (below);
 *   byte 1: seeds the re-chunking of the third run; in compress mode also the zlib level (1-9),
 *           strategy and memLevel of the client's compressor;
 *   record: a byte h (bit 7: the span ends its message, i.e. FIN; bits 0-6: length, 127 means a
 *           16-bit little-endian length follows), then that many payload bytes (fewer at the end).
 *   A message still open when the input ends is abandoned (the connection closes mid-message).
 *   Compress mode: each span's bytes are the plain text of one fragment, which a zlib client
 *   compresses with a sync flush (context takeover unless client_no_context_takeover; within
 *   the window it promised: Huffman-only or RLE for 8 bits, which zlib cannot compress with), the
 *   last fragment's 0x00 0x00 0xff 0xff stripped (RFC 7692 §7.2.1), so valid streams reach
 *   every path.
 *
 * The connection is run three times: with the spans as given; with each message as one span;
 * and with each message re-cut into chunks of 0..17 bytes (empty spans included). Checks:
 *   - out->len never passes max_out + 1, and a message that succeeds is at most max_out bytes;
 *   - every message has the same result in the three runs (the same error, or the same bytes);
 *     errors are sticky: the connection is over after the first one (as the session closes it).
 *     With a window under 15 bits the runs may part at a message that refers further back than
 *     the window: zlib resolves such a reference from the output of the same inflate() call, so
 *     whether it is caught (1007) depends on where the spans were cut (see docs/compression.md,
 *     "Known issues"). There a difference is allowed only as one run's WS_E_COMPRESSION,
 *     and the runs are not compared after it; two successes must still give the same bytes;
 *   - with a 15-bit window (no window limit to enforce) the results match a reference: plain
 *     zlib on the whole message plus 0x00 0x00 0xff 0xff (RFC 7692 §7.2.2) with an output limit
 *     of max_out + 1, until a message uses BFINAL (§7.2.3.4; not modelled);
 *   - compress mode: a complete message inflates to exactly its plain text, or is
 *     WS_E_MESSAGE_TOO_BIG when that is longer than max_out;
 *   - memory: d's own streams stay within an inflater's size, none at all after a message when a
 *     shared set serves client_no_context_takeover, and ws_deflate_reset frees everything,
 *     including in the middle of a message.
 * Each span is an exact-size heap copy freed right after the call, so ASan catches any read past
 * its end or any use of it after the call. */
#include "ws/buf.h"
#include "ws/deflate.h"
#include "ws/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) ((cond) ? (void)0 : check_failed(#cond, __LINE__))

static void check_failed(const char *what, int line)
{
    fprintf(stderr, "fuzz_inflate.c:%d: invariant broken: %s\n", line, what);
    abort();
}

#define MAX_MESSAGES 64
#define MAX_SPANS 256

struct span {
    const uint8_t *p;
    size_t n;
};

struct message {
    struct span spans[MAX_SPANS];
    size_t nspans;
    bool complete; /* its last span carried FIN */
    size_t total;
    uint8_t *plain; /* compress mode: the message as the client meant it */
    size_t plain_len;
};

/* The result of one message in one run. */
struct result {
    int rc;       /* 0 or the error */
    bool done;    /* reached: the connection had not failed before */
    uint8_t *out; /* copy of the message (rc == 0 and complete) */
    size_t len;
};

struct conn_input {
    struct message msgs[MAX_MESSAGES];
    size_t n;
    int window_bits;
    bool cnct;
    bool shared;
    size_t max_out;
    uint32_t seed;
    bool compress;  /* the records hold plain text that zlib compresses (byte 0 bit 7) */
    uint8_t *arena; /* compress mode: the compressed spans */
};

static void parse(const uint8_t *data, size_t size, struct conn_input *in)
{
    static const size_t max_outs[4] = {65536, 4096, 300, 1};
    memset(in, 0, sizeof *in);
    static const int small_windows[4] = {8, 9, 10, 12};
    in->window_bits = data[0] & 4 ? 15 : small_windows[data[0] & 3];
    in->cnct = data[0] & 8;
    in->shared = data[0] & 16;
    in->max_out = max_outs[(data[0] >> 5) & 3];
    in->seed = (uint32_t)data[1] * 2654435761u ^ 0x9E3779B9u;
    if (in->seed == 0)
        in->seed = 1;
    size_t i = 2;
    struct message *m = NULL;
    while (i < size && in->n <= MAX_MESSAGES) {
        uint8_t h = data[i++];
        size_t len = h & 0x7f;
        if (len == 127) {
            len = 0;
            if (i < size)
                len = data[i++];
            if (i < size)
                len |= (size_t)data[i++] << 8;
        }
        if (len > size - i)
            len = size - i;
        if (!m) {
            if (in->n == MAX_MESSAGES)
                break;
            m = &in->msgs[in->n++];
        }
        if (m->nspans < MAX_SPANS) {
            m->spans[m->nspans].p = data + i;
            m->spans[m->nspans].n = len;
            m->nspans++;
            m->total += len;
        }
        i += len;
        if (h & 0x80 || m->nspans == MAX_SPANS) {
            m->complete = true;
            m = NULL;
        }
    }
}

/* Compress mode: replaces every span by its compressed form (see the header). */
static void compress_spans(struct conn_input *in, uint8_t ctl)
{
    static const int strategies[4] = {Z_DEFAULT_STRATEGY, Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE};
    int strategy = strategies[(ctl >> 4) & 3];
    int bits = in->window_bits;
    if (bits == 8) {
        bits = 9; /* no back-references beyond 256 bytes: RLE refers 1 byte back */
        if (strategy != Z_RLE)
            strategy = Z_HUFFMAN_ONLY;
    }
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 1 + ctl % 9, Z_DEFLATED, -bits, 1 + (ctl >> 6) * 2, strategy) != Z_OK)
        abort();
    size_t cap = 0;
    for (size_t i = 0; i < in->n; i++)
        for (size_t k = 0; k < in->msgs[i].nspans; k++)
            cap += deflateBound(&z, in->msgs[i].spans[k].n) + 64;
    in->arena = malloc(cap ? cap : 1);
    if (!in->arena)
        abort();
    size_t used = 0;
    for (size_t i = 0; i < in->n; i++) {
        struct message *m = &in->msgs[i];
        m->plain = malloc(m->total ? m->total : 1);
        if (!m->plain)
            abort();
        m->plain_len = 0;
        m->total = 0;
        for (size_t k = 0; k < m->nspans; k++) {
            struct span *sp = &m->spans[k];
            if (sp->n)
                memcpy(m->plain + m->plain_len, sp->p, sp->n);
            m->plain_len += sp->n;
            z.next_in = (Bytef *)sp->p;
            z.avail_in = (uInt)sp->n;
            z.next_out = in->arena + used;
            z.avail_out = (uInt)(cap - used);
            int rc = deflate(&z, Z_SYNC_FLUSH);
            if (rc != Z_OK && rc != Z_BUF_ERROR) /* Z_BUF_ERROR: nothing new to flush */
                abort();
            if (z.avail_in != 0 || z.avail_out == 0) /* the room is deflateBound's */
                abort();
            size_t n = cap - used - z.avail_out;
            bool last = m->complete && k + 1 == m->nspans;
            if (last && n >= 4 && memcmp(in->arena + used + n - 4, "\x00\x00\xff\xff", 4) == 0) {
                n -= 4; /* RFC 7692 §7.2.1 */
            } else if (last) {
                /* nothing new since the last flush (zlib skips a repeated one): the message must
                 * still end with an empty stored block minus its last 4 bytes (§7.2.1 step 2) */
                in->arena[used + n++] = 0x00;
            }
            sp->p = in->arena + used;
            sp->n = n;
            used += n;
            m->total += n;
        }
        if (in->cnct && deflateReset(&z) != Z_OK)
            abort();
    }
    deflateEnd(&z);
}

static uint32_t xorshift(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

/* One call of ws_deflate_inflate on an exact-size copy of p[0..n). */
static int feed(struct ws_deflate *d, const uint8_t *p, size_t n, bool last, struct ws_buf *out,
                size_t max_out)
{
    uint8_t *copy = malloc(n ? n : 1);
    if (!copy)
        abort();
    if (n)
        memcpy(copy, p, n);
    size_t before = out->len;
    CHECK(before <= max_out);
    int rc = ws_deflate_inflate(d, n ? copy : NULL, n, last, out, max_out);
    free(copy);
    CHECK(rc == 0 || rc == WS_E_MESSAGE_TOO_BIG || rc == WS_E_COMPRESSION);
    CHECK(out->len <= max_out + 1);
    CHECK(out->len >= before);
    CHECK(out->len <= out->cap);
    /* the byte past the limit proves it (or nothing happened: a sticky error) */
    if (rc == WS_E_MESSAGE_TOO_BIG)
        CHECK(out->len == max_out + 1 || out->len == before);
    if (rc == 0)
        CHECK(out->len <= max_out);
    return rc;
}

enum mode { AS_GIVEN, WHOLE, RECHUNKED };

/* Runs the connection once; res[i] gets message i's result. */
static void run(const struct conn_input *in, enum mode mode, struct ws_deflate_shared *shared,
                struct result *res)
{
    struct ws_deflate_params p = {
        .server_no_context_takeover = true,
        .client_no_context_takeover = in->cnct,
        .server_max_window_bits = 15,
        .client_max_window_bits = in->window_bits,
        .mem_level = 8,
        .level = 6,
        .compress_min_size = 128,
    };
    memset(res, 0, MAX_MESSAGES * sizeof *res);
    struct ws_deflate d;
    ws_deflate_init(&d, &p, shared);
    struct ws_buf out;
    ws_buf_init(&out);
    uint32_t x = in->seed;
    /* the inflater's window plus zlib's inflate state (~7 KiB) and the z_stream */
    const size_t inflater_max = ((size_t)1 << in->window_bits) + 16384;
    int failed = 0;
    for (size_t i = 0; i < in->n; i++) {
        const struct message *m = &in->msgs[i];
        struct result *r = &res[i];
        memset(r, 0, sizeof *r);
        if (failed)
            break; /* the session closes the connection at the first error */
        r->done = true;
        out.len = 0; /* the session keeps its buffer between messages */
        ws_deflate_inflate_begin(&d);
        int rc = 0;
        if (mode == AS_GIVEN) {
            for (size_t s = 0; s < m->nspans && rc == 0; s++) {
                bool last = m->complete && s + 1 == m->nspans;
                rc = feed(&d, m->spans[s].p, m->spans[s].n, last, &out, in->max_out);
            }
        } else {
            uint8_t *whole = malloc(m->total ? m->total : 1);
            if (!whole)
                abort();
            size_t at = 0;
            for (size_t s = 0; s < m->nspans; s++) {
                if (m->spans[s].n)
                    memcpy(whole + at, m->spans[s].p, m->spans[s].n);
                at += m->spans[s].n;
            }
            if (mode == WHOLE) {
                rc = feed(&d, whole, m->total, m->complete, &out, in->max_out);
            } else {
                /* chunks of 0..17 bytes; the FIN sometimes on an extra empty span */
                bool fin_apart = m->complete && (xorshift(&x) & 1);
                size_t off = 0;
                do {
                    size_t n = xorshift(&x) % 18;
                    if (n > m->total - off)
                        n = m->total - off;
                    bool last = m->complete && !fin_apart && off + n == m->total;
                    rc = feed(&d, whole + off, n, last, &out, in->max_out);
                    off += n;
                } while (rc == 0 && off < m->total);
                if (rc == 0 && fin_apart)
                    rc = feed(&d, NULL, 0, true, &out, in->max_out);
            }
            free(whole);
        }
        r->rc = rc;
        if (in->compress && m->complete) {
            if (m->plain_len > in->max_out) {
                CHECK(rc == WS_E_MESSAGE_TOO_BIG);
            } else {
                CHECK(rc == 0);
                CHECK(out.len == m->plain_len);
                CHECK(out.len == 0 || memcmp(out.data, m->plain, out.len) == 0);
            }
        }
        if (rc == 0 && m->complete) {
            r->len = out.len;
            r->out = malloc(out.len ? out.len : 1);
            if (!r->out)
                abort();
            if (out.len)
                memcpy(r->out, out.data, out.len);
        }
        if (rc != 0) {
            failed = rc;
            /* sticky: any further span answers the same error */
            out.len = 0;
            CHECK(feed(&d, (const uint8_t *)"\x00", 1, true, &out, in->max_out) == rc);
        }
        CHECK(ws_deflate_memory(&d) <= inflater_max);
        if (m->complete && in->cnct && shared)
            CHECK(ws_deflate_memory(&d) == 0);
        if (!m->complete)
            break; /* the connection closes mid-message */
    }
    ws_deflate_reset(&d);
    CHECK(ws_deflate_memory(&d) == 0);
    ws_buf_reset(&out);
}

/* The reference for 15-bit windows: zlib on whole messages. Returns how many messages it
 * models (it stops at the first message that ends a deflate stream with BFINAL). */
static size_t reference(const struct conn_input *in, struct result *res)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -15) != Z_OK)
        abort();
    uint8_t *out = malloc(in->max_out + 1);
    if (!out)
        abort();
    size_t modelled = 0;
    for (size_t i = 0; i < in->n; i++) {
        const struct message *m = &in->msgs[i];
        if (!m->complete)
            break;
        struct result *r = &res[i];
        memset(r, 0, sizeof *r);
        r->done = true;
        size_t total = m->total + (m->total ? 4 : 0);
        uint8_t *msg = malloc(total ? total : 1);
        if (!msg)
            abort();
        size_t off = 0;
        for (size_t s = 0; s < m->nspans; s++) {
            if (m->spans[s].n)
                memcpy(msg + off, m->spans[s].p, m->spans[s].n);
            off += m->spans[s].n;
        }
        if (m->total)
            memcpy(msg + off, "\x00\x00\xff\xff", 4);
        size_t len = 0;
        int zrc = Z_OK;
        if (m->total) {
            z.next_in = msg;
            z.avail_in = (uInt)total;
            z.next_out = out;
            z.avail_out = (uInt)(in->max_out + 1);
            zrc = inflate(&z, Z_SYNC_FLUSH);
            len = in->max_out + 1 - z.avail_out;
        }
        free(msg);
        if (zrc == Z_STREAM_END)
            break; /* BFINAL: the module restarts on the same window; not modelled */
        if (zrc == Z_NEED_DICT || zrc == Z_STREAM_ERROR || zrc == Z_MEM_ERROR)
            abort();
        modelled = i + 1;
        if (len > in->max_out) {
            r->rc = WS_E_MESSAGE_TOO_BIG;
        } else if (zrc == Z_DATA_ERROR) {
            r->rc = WS_E_COMPRESSION;
        } else if (m->total && (z.avail_in != 0 || !(z.data_type & 128))) {
            /* input left with room to spare cannot happen; a message not ending between two
             * blocks is truncated */
            r->rc = WS_E_COMPRESSION;
        } else {
            r->rc = 0;
            r->len = len;
            r->out = malloc(len ? len : 1);
            if (!r->out)
                abort();
            if (len)
                memcpy(r->out, out, len);
        }
        if (r->rc != 0)
            break;
        if (in->cnct && inflateReset(&z) != Z_OK)
            abort();
    }
    inflateEnd(&z);
    free(out);
    return modelled;
}

static void same(const struct result *a, const struct result *b)
{
    CHECK(a->done == b->done);
    if (!a->done)
        return;
    CHECK(a->rc == b->rc);
    CHECK((a->out == NULL) == (b->out == NULL));
    if (a->out) {
        CHECK(a->len == b->len);
        CHECK(a->len == 0 || memcmp(a->out, b->out, a->len) == 0);
    }
}

/* Compares the runs a and b message by message; see the header for the small-window rule. */
static void compare(const struct result *a, const struct result *b, size_t n, bool strict)
{
    for (size_t i = 0; i < n; i++) {
        if (!strict && a[i].done && b[i].done && a[i].rc != b[i].rc) {
            CHECK(a[i].rc == WS_E_COMPRESSION || b[i].rc == WS_E_COMPRESSION);
            return;
        }
        same(&a[i], &b[i]);
    }
}

static void free_results(struct result *res, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(res[i].out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static struct conn_input in;
    static struct result res[3][MAX_MESSAGES], ref[MAX_MESSAGES];
    parse(data, size, &in);
    in.compress = data[0] & 0x80;
    if (in.compress)
        compress_spans(&in, data[1]);

    /* one shared set for the three runs, as one per event loop is shared by all connections */
    struct ws_deflate_shared *shared = in.shared ? ws_deflate_shared_new(8, 6) : NULL;
    run(&in, AS_GIVEN, shared, res[0]);
    run(&in, WHOLE, shared, res[1]);
    run(&in, RECHUNKED, shared, res[2]);
    if (shared) {
        /* whatever the connections did, the shared inflater is the only stream it holds */
        CHECK(ws_deflate_shared_memory(shared) <= (size_t)32768 + 16384);
        ws_deflate_shared_free(shared);
    }
    compare(res[0], res[1], in.n, in.window_bits == 15);
    compare(res[0], res[2], in.n, in.window_bits == 15);

    if (in.window_bits == 15) {
        size_t modelled = reference(&in, ref);
        for (size_t i = 0; i < modelled; i++)
            same(&res[0][i], &ref[i]);
        free_results(ref, modelled);
    }
    for (int k = 0; k < 3; k++)
        free_results(res[k], in.n);
    if (in.compress) {
        for (size_t i = 0; i < in.n; i++)
            free(in.msgs[i].plain);
        free(in.arena);
    }
    return 0;
}
