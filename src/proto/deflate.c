/* permessage-deflate (RFC 7692) on zlib: the negotiation answer, whole-message compression with
 * the flush marker stripped, and span-by-span inflation that stops at the output limit. zlib
 * allocates through a counting allocator so each connection's memory can be reported. No I/O,
 * no frames: RSV1 and fragmentation are the callers'. */
#include "ws/deflate.h"

#include "ws/err.h"

#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZLIB_CONST
#include <zlib.h>

/* RFC 7692 §7.2.1-7.2.2: the empty stored block a sync flush ends with; senders strip it and
 * receivers put it back. */
static const uint8_t flush_tail[4] = {0x00, 0x00, 0xff, 0xff};

/* RFC 7692 §7.2.3.6: an empty stored block minus those 4 bytes, the payload of an empty message
 * (our streams are byte-aligned on a block boundary between messages). */
static const uint8_t empty_payload = 0x00;

#define NDEFLATERS (WS_DEFLATE_MAX_WINDOW_BITS - WS_DEFLATE_MIN_SERVER_WINDOW_BITS + 1)

struct ws_deflate_shared {
    z_stream *def[NDEFLATERS]; /* [bits - 9]: compressors reset after every message */
    z_stream *inf;             /* window 15: inflates whole messages without context takeover */
    int mem_level;
    int level;
    size_t memory;
};

/* --- counting allocator ---------------------------------------------------------------------- */

/* Each block remembers its size so zfree can subtract it; the union keeps zlib's alignment. */
union block_head {
    max_align_t align;
    size_t size;
};

static voidpf count_alloc(voidpf opaque, uInt items, uInt size)
{
    size_t *counter = opaque;
    size_t n = (size_t)items * size; /* both are 32-bit: no overflow in size_t */
    /* zlib's requests depend on our window and memLevel, never on peer input: abort on failure */
    union block_head *h = ws_xmalloc(sizeof *h + n);
    h->size = n;
    *counter += n;
    return h + 1;
}

static void count_free(voidpf opaque, voidpf p)
{
    size_t *counter = opaque;
    union block_head *h = (union block_head *)p - 1;
    *counter -= h->size;
    free(h);
}

static z_stream *new_stream(size_t *counter)
{
    z_stream *z = ws_xcalloc(1, sizeof *z);
    z->zalloc = count_alloc;
    z->zfree = count_free;
    z->opaque = counter;
    *counter += sizeof *z;
    return z;
}

static z_stream *new_deflater(size_t *counter, int window_bits, int mem_level, int level)
{
    assert(window_bits >= WS_DEFLATE_MIN_SERVER_WINDOW_BITS &&
           window_bits <= WS_DEFLATE_MAX_WINDOW_BITS);
    z_stream *z = new_stream(counter);
    /* negative windowBits: raw DEFLATE without the zlib header (RFC 7692 §7.2.1) */
    int rc = deflateInit2(z, level, Z_DEFLATED, -window_bits, mem_level, Z_DEFAULT_STRATEGY);
    assert(rc == Z_OK); /* only bad arguments fail: the allocator aborts */
    (void)rc;
    return z;
}

static z_stream *new_inflater(size_t *counter, int window_bits)
{
    assert(window_bits >= WS_DEFLATE_MIN_CLIENT_WINDOW_BITS &&
           window_bits <= WS_DEFLATE_MAX_WINDOW_BITS);
    z_stream *z = new_stream(counter);
    int rc = inflateInit2(z, -window_bits);
    assert(rc == Z_OK);
    (void)rc;
    return z;
}

static void free_deflater(z_stream **zp, size_t *counter)
{
    if (!*zp)
        return;
    deflateEnd(*zp);
    free(*zp);
    *counter -= sizeof **zp;
    *zp = NULL;
}

static void free_inflater(z_stream **zp, size_t *counter)
{
    if (!*zp)
        return;
    inflateEnd(*zp);
    free(*zp);
    *counter -= sizeof **zp;
    *zp = NULL;
}

/* --- negotiation ------------------------------------------------------------------------------ */

void ws_deflate_config_init(struct ws_deflate_config *cfg)
{
    cfg->enabled = false;
    cfg->server_max_window_bits = WS_DEFLATE_MAX_WINDOW_BITS;
    cfg->client_max_window_bits = WS_DEFLATE_MAX_WINDOW_BITS;
    cfg->mem_level = 8;
    cfg->level = 6;
    cfg->server_context_takeover = false;
    cfg->client_no_context_takeover = false;
    cfg->compress_min_size = 128;
}

static bool in_range(int v, int lo, int hi)
{
    return v >= lo && v <= hi;
}

static int min_int(int a, int b)
{
    return a < b ? a : b;
}

/* The parameters cfg agrees to for offer o, or false when it cannot honour o. *say_server and
 * *say_client tell whether the answer carries the window parameters. */
static bool accept_offer(const struct ws_deflate_config *cfg, const struct ws_deflate_offer *o,
                         struct ws_deflate_params *p, bool *say_server, bool *say_client)
{
    p->mem_level = cfg->mem_level;
    p->level = cfg->level;
    p->compress_min_size = cfg->compress_min_size;

    /* RFC 7692 §7.1.2.1: an offered server_max_window_bits is accepted by answering it with the
     * same or a smaller value, or the offer is declined; we may also limit ourselves unasked.
     * zlib refuses a raw 256-byte window, so an offer of 8 is one we cannot honour. */
    p->server_max_window_bits = cfg->server_max_window_bits;
    if (o->server_max_window_bits != 0) {
        if (!in_range(o->server_max_window_bits, WS_DEFLATE_MIN_SERVER_WINDOW_BITS,
                      WS_DEFLATE_MAX_WINDOW_BITS))
            return false;
        p->server_max_window_bits = min_int(p->server_max_window_bits, o->server_max_window_bits);
    }
    *say_server =
        o->server_max_window_bits != 0 || p->server_max_window_bits < WS_DEFLATE_MAX_WINDOW_BITS;

    /* RFC 7692 §7.1.2.2: client_max_window_bits may be answered only when offered. A value in
     * the offer already binds the client to that window (raw inflate accepts 8, so 8 is fine);
     * without one the client uses up to 15 unless we answer a smaller value. */
    p->client_max_window_bits = WS_DEFLATE_MAX_WINDOW_BITS;
    *say_client = false;
    if (o->client_max_window_bits == -1) {
        p->client_max_window_bits = cfg->client_max_window_bits;
    } else if (o->client_max_window_bits != 0) {
        if (!in_range(o->client_max_window_bits, WS_DEFLATE_MIN_CLIENT_WINDOW_BITS,
                      WS_DEFLATE_MAX_WINDOW_BITS))
            return false;
        p->client_max_window_bits = min_int(o->client_max_window_bits, cfg->client_max_window_bits);
    }
    if (o->client_max_window_bits != 0)
        *say_client = p->client_max_window_bits < WS_DEFLATE_MAX_WINDOW_BITS;

    /* RFC 7692 §7.1.1.1: an offered server_no_context_takeover must be answered; the server may
     * also add it unasked. §7.1.1.2: the server may add client_no_context_takeover unasked, and
     * answering an offered one turns the client's hint into an agreement. */
    p->server_no_context_takeover = o->server_no_context_takeover || !cfg->server_context_takeover;
    p->client_no_context_takeover =
        o->client_no_context_takeover || cfg->client_no_context_takeover;
    return true;
}

int ws_deflate_negotiate(const struct ws_deflate_config *cfg, const struct ws_deflate_offer *offers,
                         size_t n, struct ws_deflate_params *out, char *response, size_t cap)
{
    assert(cap >= WS_DEFLATE_RESPONSE_MAX);
    assert(in_range(cfg->server_max_window_bits, WS_DEFLATE_MIN_SERVER_WINDOW_BITS,
                    WS_DEFLATE_MAX_WINDOW_BITS));
    assert(in_range(cfg->client_max_window_bits, WS_DEFLATE_MIN_SERVER_WINDOW_BITS,
                    WS_DEFLATE_MAX_WINDOW_BITS));
    assert(in_range(cfg->mem_level, 1, 9) && in_range(cfg->level, 1, 9));
    if (!cfg->enabled)
        return 0;
    for (size_t i = 0; i < n; i++) {
        struct ws_deflate_params p;
        bool say_server, say_client;
        if (!accept_offer(cfg, &offers[i], &p, &say_server, &say_client))
            continue;
        /* RFC 7692 §5: the element name, then the agreed parameters */
        int len = snprintf(response, cap, "permessage-deflate%s%s",
                           p.server_no_context_takeover ? "; server_no_context_takeover" : "",
                           p.client_no_context_takeover ? "; client_no_context_takeover" : "");
        if (say_server)
            len += snprintf(response + len, cap - (size_t)len, "; server_max_window_bits=%d",
                            p.server_max_window_bits);
        if (say_client)
            len += snprintf(response + len, cap - (size_t)len, "; client_max_window_bits=%d",
                            p.client_max_window_bits);
        assert(len > 0 && (size_t)len < WS_DEFLATE_RESPONSE_MAX);
        *out = p;
        return 1;
    }
    return 0;
}

/* --- compression ------------------------------------------------------------------------------ */

/* Compresses in[0..n) (n > 0) on z and appends it with Z_SYNC_FLUSH, minus the flush's trailing
 * 0x00 0x00 0xff 0xff (RFC 7692 §7.2.1). */
static void run_deflate(z_stream *z, const uint8_t *in, size_t n, struct ws_buf *out)
{
    assert(n > 0);
    size_t start = out->len;
    size_t first = n < 65536 ? n : 65536;
    ws_buf_reserve(out, deflateBound(z, first) + 16);
    z->next_in = in;
    z->avail_in = 0;
    for (;;) {
        if (z->avail_in == 0 && n > 0) {
            uInt chunk = n > UINT_MAX ? UINT_MAX : (uInt)n;
            z->avail_in = chunk;
            n -= chunk;
        }
        /* zlib asks for more than 6 bytes of room around a flush, lest it repeat the marker */
        if (out->cap - out->len < 64)
            ws_buf_reserve(out, out->len - start > 4096 ? out->len - start : 4096);
        size_t room = out->cap - out->len;
        uInt avail = room > UINT_MAX ? UINT_MAX : (uInt)room;
        z->next_out = out->data + out->len;
        z->avail_out = avail;
        int flush = n == 0 ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        int rc = deflate(z, flush);
        assert(rc == Z_OK || rc == Z_BUF_ERROR); /* Z_BUF_ERROR: nothing left to do */
        (void)rc;
        out->len += avail - z->avail_out;
        /* a sync flush is complete once deflate returns with output room to spare */
        if (flush == Z_SYNC_FLUSH && z->avail_out != 0)
            break;
    }
    assert(out->len - start >= sizeof flush_tail &&
           memcmp(out->data + out->len - sizeof flush_tail, flush_tail, sizeof flush_tail) == 0);
    out->len -= sizeof flush_tail;
}

struct ws_deflate_shared *ws_deflate_shared_new(int mem_level, int level)
{
    assert(in_range(mem_level, 1, 9) && in_range(level, 1, 9));
    struct ws_deflate_shared *s = ws_xcalloc(1, sizeof *s);
    s->mem_level = mem_level;
    s->level = level;
    return s;
}

void ws_deflate_shared_free(struct ws_deflate_shared *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < NDEFLATERS; i++)
        free_deflater(&s->def[i], &s->memory);
    free_inflater(&s->inf, &s->memory);
    assert(s->memory == 0);
    free(s);
}

int ws_deflate_shared_compress(struct ws_deflate_shared *s, int window_bits, const uint8_t *in,
                               size_t n, struct ws_buf *out)
{
    assert(in_range(window_bits, WS_DEFLATE_MIN_SERVER_WINDOW_BITS, WS_DEFLATE_MAX_WINDOW_BITS));
    if (n == 0) {
        ws_buf_append(out, &empty_payload, 1);
        return 0;
    }
    z_stream **z = &s->def[window_bits - WS_DEFLATE_MIN_SERVER_WINDOW_BITS];
    if (!*z)
        *z = new_deflater(&s->memory, window_bits, s->mem_level, s->level);
    run_deflate(*z, in, n, out);
    /* RFC 7692 §7.1.1.1: without context takeover every message starts on an empty window */
    deflateReset(*z);
    return 0;
}

size_t ws_deflate_shared_memory(const struct ws_deflate_shared *s)
{
    return s->memory;
}

void ws_deflate_init(struct ws_deflate *d, const struct ws_deflate_params *params,
                     struct ws_deflate_shared *shared)
{
    assert(in_range(params->server_max_window_bits, WS_DEFLATE_MIN_SERVER_WINDOW_BITS,
                    WS_DEFLATE_MAX_WINDOW_BITS));
    assert(in_range(params->client_max_window_bits, WS_DEFLATE_MIN_CLIENT_WINDOW_BITS,
                    WS_DEFLATE_MAX_WINDOW_BITS));
    memset(d, 0, sizeof *d);
    d->params = *params;
    d->shared = shared;
}

void ws_deflate_reset(struct ws_deflate *d)
{
    if (d->cur && d->cur != d->inf)
        inflateReset(d->cur); /* a shared inflater left mid-message */
    free_deflater(&d->def, &d->memory);
    free_inflater(&d->inf, &d->memory);
    assert(d->memory == 0);
    d->cur = NULL;
    d->in_message = false;
    d->ended = false;
    d->msg_in = 0;
    d->err = 0;
}

bool ws_deflate_should_compress(const struct ws_deflate *d, size_t len)
{
    return len >= d->params.compress_min_size;
}

int ws_deflate_broadcast_bits(const struct ws_deflate *d)
{
    if (d->params.server_no_context_takeover && d->shared)
        return d->params.server_max_window_bits;
    return 0;
}

int ws_deflate_compress(struct ws_deflate *d, const uint8_t *in, size_t n, struct ws_buf *out)
{
    if (ws_deflate_broadcast_bits(d))
        return ws_deflate_shared_compress(d->shared, d->params.server_max_window_bits, in, n, out);
    if (n == 0) {
        /* not through zlib: a sync flush with no new input since the last one emits nothing */
        ws_buf_append(out, &empty_payload, 1);
        return 0;
    }
    if (!d->def)
        d->def = new_deflater(&d->memory, d->params.server_max_window_bits, d->params.mem_level,
                              d->params.level);
    run_deflate(d->def, in, n, out);
    if (d->params.server_no_context_takeover)
        deflateReset(d->def);
    return 0;
}

/* --- decompression ---------------------------------------------------------------------------- */

void ws_deflate_inflate_begin(struct ws_deflate *d)
{
    assert(!d->in_message);
    d->in_message = true;
    d->msg_in = 0;
    d->ended = false;
    d->cur = NULL;
}

/* Starts z's next deflate stream on the window the last one left. RFC 7692 §7.2.3.4: a peer may
 * end its blocks with BFINAL set; with context takeover its later blocks may still refer back. */
static void restart(z_stream *z)
{
    uint8_t *window = ws_xmalloc((size_t)1 << WS_DEFLATE_MAX_WINDOW_BITS);
    uInt len = 0;
    int rc = inflateGetDictionary(z, window, &len);
    assert(rc == Z_OK);
    rc = inflateReset(z);
    assert(rc == Z_OK);
    if (len > 0) {
        rc = inflateSetDictionary(z, window, len); /* raw inflate: allowed at any time */
        assert(rc == Z_OK);
    }
    (void)rc;
    free(window);
}

/* Gives out room for at least one byte without letting its capacity pass len + limit. */
static void grow(struct ws_buf *out, size_t limit)
{
    if (out->cap > out->len)
        return;
    size_t want = out->cap < 2048 ? 4096 : out->cap > SIZE_MAX / 2 ? SIZE_MAX : out->cap * 2;
    if (want - out->len > limit)
        want = out->len + limit;
    out->data = ws_xrealloc(out->data, want);
    out->cap = want;
}

/* Inflates in[0..n) on d->cur into out. peer: the bytes are the peer's (after a BFINAL block they
 * start a new stream), else our flush tail (after a BFINAL block it is padding). Never lets
 * out->len pass max_out + 1: each inflate() call gets at most the room left plus one byte, the
 * byte that proves the message too big. */
static int run_inflate(struct ws_deflate *d, const uint8_t *in, size_t n, bool peer,
                       struct ws_buf *out, size_t max_out)
{
    z_stream *z = d->cur;
    z->next_in = in;
    z->avail_in = 0;
    for (;;) {
        if (z->avail_in == 0 && n > 0) {
            uInt chunk = n > UINT_MAX ? UINT_MAX : (uInt)n;
            z->avail_in = chunk;
            n -= chunk;
        }
        if (d->ended) {
            if (!peer || z->avail_in == 0)
                return 0;
            restart(z);
            d->ended = false;
        }
        size_t room = max_out - out->len;
        size_t limit = room < SIZE_MAX ? room + 1 : room;
        grow(out, limit);
        size_t space = out->cap - out->len;
        if (space > limit)
            space = limit;
        uInt avail = space > UINT_MAX ? UINT_MAX : (uInt)space;
        z->next_out = out->data + out->len;
        z->avail_out = avail;
        int rc = inflate(z, Z_NO_FLUSH);
        out->len += avail - z->avail_out;
        if (out->len > max_out)
            return WS_E_MESSAGE_TOO_BIG; /* SPEC §3: the limit applies after decompression */
        if (rc == Z_STREAM_END) {
            d->ended = true;
            continue;
        }
        if (rc == Z_DATA_ERROR)
            return WS_E_COMPRESSION;
        assert(rc == Z_OK || rc == Z_BUF_ERROR); /* Z_BUF_ERROR: no progress possible */
        if (z->avail_out == 0)
            continue; /* more output may be waiting */
        if (z->avail_in == 0 && n == 0)
            return 0;
    }
}

/* Chooses the message's inflater: the shared one when the message arrives whole and the window
 * is not kept between messages, else d's own (created on first use). */
static z_stream *pick_inflater(struct ws_deflate *d, bool whole)
{
    if (whole && d->shared && d->params.client_no_context_takeover) {
        if (!d->shared->inf)
            d->shared->inf = new_inflater(&d->shared->memory, WS_DEFLATE_MAX_WINDOW_BITS);
        return d->shared->inf;
    }
    if (!d->inf)
        d->inf = new_inflater(&d->memory, d->params.client_max_window_bits);
    return d->inf;
}

static void end_message(struct ws_deflate *d, int rc)
{
    z_stream *z = d->cur;
    if (z && z != d->inf) {
        inflateReset(z); /* the shared inflater starts clean for the next connection */
    } else if (z && rc < 0) {
        free_inflater(&d->inf, &d->memory); /* never used again: the error is sticky */
    } else if (z) {
        /* RFC 7692 §7.2.2: without client context takeover the next message starts on an empty
         * window. With a shared set, a fragmented message's own inflater goes away again. */
        if (d->params.client_no_context_takeover && d->shared)
            free_inflater(&d->inf, &d->memory);
        else if (d->params.client_no_context_takeover)
            inflateReset(z);
        else if (d->ended)
            restart(z);
    }
    d->cur = NULL;
    d->ended = false;
    d->in_message = false;
    d->msg_in = 0;
    if (rc < 0)
        d->err = rc;
}

int ws_deflate_inflate(struct ws_deflate *d, const uint8_t *in, size_t n, bool last,
                       struct ws_buf *out, size_t max_out)
{
    if (d->err)
        return d->err;
    assert(d->in_message);
    assert(out->len <= max_out);
    int rc = 0;
    if (n > 0) {
        if (!d->cur)
            d->cur = pick_inflater(d, last);
        d->msg_in += n;
        rc = run_inflate(d, in, n, true, out, max_out);
    }
    /* An empty payload carries no block at all: some senders flush nothing for an empty message
     * after a sync flush, and the tail alone would leave the inflater inside a stored block. */
    if (rc == 0 && last && d->msg_in > 0) {
        /* RFC 7692 §7.2.2: append 0x00 0x00 0xff 0xff, then inflate */
        rc = run_inflate(d, flush_tail, sizeof flush_tail, false, out, max_out);
        /* RFC 7692 §7.2.1: a message ends with an empty stored block, so with the tail back the
         * inflater stands between blocks (zlib's data_type bit 128); anything else is truncated */
        if (rc == 0 && !d->ended && !(d->cur->data_type & 128))
            rc = WS_E_COMPRESSION;
    }
    if (rc < 0 || last)
        end_message(d, rc);
    return rc;
}

size_t ws_deflate_memory(const struct ws_deflate *d)
{
    return d->memory;
}
