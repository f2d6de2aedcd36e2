/* Unit tests for permessage-deflate: the RFC 7692 §7.2.3 byte examples both ways, every split
 * of a compressed message, the negotiation matrix, a zip bomb against the output limit, corrupt
 * and truncated streams, round trips checked against plain zlib, and the memory each setting
 * holds. No sockets: the module is pure. */
#include "ws/deflate.h"
#include "ws/err.h"
#include "ws/http.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ZLIB_CONST
#include <zlib.h>

#define BYTES(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})

static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};

/* RFC 7692 §7.2.3.1: "Hello" in one fixed-Huffman block, flushed. */
static const uint8_t hello_z[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
/* §7.2.3.2: the second "Hello" with context takeover: one back-reference. */
static const uint8_t hello_again_z[] = {0xf2, 0x00, 0x11, 0x00, 0x00};
/* §7.2.3.3: "Hello" in a stored block. */
static const uint8_t hello_stored[] = {0x00, 0x05, 0x00, 0xfa, 0xff, 0x48,
                                       0x65, 0x6c, 0x6c, 0x6f, 0x00};
/* §7.2.3.4: "Hello" in a block with BFINAL set, then the start of an empty stored block. */
static const uint8_t hello_bfinal[] = {0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00};
/* §7.2.3.5: "He" and "llo" in two blocks of one message. */
static const uint8_t hello_two_blocks[] = {0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff,
                                           0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00};

static void params_init(struct ws_deflate_params *p, bool server_nct, bool client_nct,
                        int server_bits, int client_bits)
{
    p->server_no_context_takeover = server_nct;
    p->client_no_context_takeover = client_nct;
    p->server_max_window_bits = server_bits;
    p->client_max_window_bits = client_bits;
    p->mem_level = 8;
    p->level = 6;
    p->compress_min_size = 128;
}

static void assert_bytes(const struct ws_buf *b, const uint8_t *want, size_t n)
{
    assert_int_equal(b->len, n);
    if (n > 0)
        assert_memory_equal(b->data, want, n);
}

/* Inflates one whole message given as one span; returns the result code. */
static int inflate_one(struct ws_deflate *d, const uint8_t *p, size_t n, struct ws_buf *out,
                       size_t max_out)
{
    ws_deflate_inflate_begin(d);
    return ws_deflate_inflate(d, p, n, true, out, max_out);
}

/* A reference client on plain zlib: raw deflate, sync flush, tail stripped (RFC 7692 §7.2.1). */
static void ref_compress(z_stream *z, const uint8_t *in, size_t n, struct ws_buf *out)
{
    uint8_t tmp[4096];
    z->next_in = in;
    z->avail_in = (uInt)n;
    do {
        z->next_out = tmp;
        z->avail_out = sizeof tmp;
        int rc = deflate(z, Z_SYNC_FLUSH);
        assert_true(rc == Z_OK || rc == Z_BUF_ERROR);
        ws_buf_append(out, tmp, sizeof tmp - z->avail_out);
    } while (z->avail_out == 0);
    assert_true(out->len >= 4);
    assert_memory_equal(out->data + out->len - 4, tail, 4);
    out->len -= 4;
}

/* A reference receiver on plain zlib: appends the tail and inflates (RFC 7692 §7.2.2). */
static void ref_inflate(z_stream *z, const uint8_t *in, size_t n, struct ws_buf *out)
{
    uint8_t tmp[4096];
    for (int part = 0; part < 2; part++) {
        z->next_in = part == 0 ? in : tail;
        z->avail_in = part == 0 ? (uInt)n : 4;
        do {
            z->next_out = tmp;
            z->avail_out = sizeof tmp;
            int rc = inflate(z, Z_SYNC_FLUSH);
            assert_true(rc == Z_OK || rc == Z_BUF_ERROR);
            ws_buf_append(out, tmp, sizeof tmp - z->avail_out);
        } while (z->avail_out == 0 || z->avail_in > 0);
    }
}

/* Deterministic text that compresses like chat/JSON traffic: repeated keys, varying values. */
static void make_text(uint8_t *p, size_t n, uint32_t seed)
{
    static const char *const words[] = {"{\"user\":", "\"alice\"", ",\"text\":", "\"hello\"",
                                        "\"world\"",  ",\"ts\":",  "1712345678", "},",
                                        " ",          "\"room\":", "\"lobby\"",  "\u00e9t\u00e9"};
    size_t i = 0;
    while (i < n) {
        seed = seed * 1103515245u + 12345u;
        const char *w = words[(seed >> 16) % (sizeof words / sizeof words[0])];
        size_t k = strlen(w);
        if (k > n - i)
            k = n - i;
        memcpy(p + i, w, k);
        i += k;
        if ((seed >> 8) % 7 == 0 && i < n)
            p[i++] = (uint8_t)('0' + (seed >> 20) % 10);
    }
}

static void make_random(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

/* --- RFC 7692 §7.2.3 examples ------------------------------------------------------------------
 */

static void test_rfc_compress_no_takeover(void **state)
{
    (void)state;
    struct ws_deflate_params p;
    params_init(&p, true, false, 15, 15);
    struct ws_deflate d;
    ws_deflate_init(&d, &p, NULL);
    struct ws_buf out;
    ws_buf_init(&out);
    for (int i = 0; i < 3; i++) {
        out.len = 0;
        assert_int_equal(ws_deflate_compress(&d, (const uint8_t *)"Hello", 5, &out), 0);
        assert_bytes(&out, hello_z, sizeof hello_z); /* §7.2.3.1, every time */
    }
    ws_buf_reset(&out);
    ws_deflate_reset(&d);
}

static void test_rfc_compress_takeover(void **state)
{
    (void)state;
    struct ws_deflate_params p;
    params_init(&p, false, false, 15, 15);
    struct ws_deflate d;
    ws_deflate_init(&d, &p, NULL);
    struct ws_buf out;
    ws_buf_init(&out);
    ws_deflate_compress(&d, (const uint8_t *)"Hello", 5, &out);
    assert_bytes(&out, hello_z, sizeof hello_z);
    out.len = 0;
    ws_deflate_compress(&d, (const uint8_t *)"Hello", 5, &out);
    assert_bytes(&out, hello_again_z, sizeof hello_again_z); /* §7.2.3.2 */
    ws_buf_reset(&out);
    ws_deflate_reset(&d);
}

static void test_rfc_inflate_examples(void **state)
{
    (void)state;
    struct {
        const uint8_t *p;
        size_t n;
    } cases[] = {
        {hello_z, sizeof hello_z},
        {hello_stored, sizeof hello_stored},
        {hello_bfinal, sizeof hello_bfinal},
        {hello_two_blocks, sizeof hello_two_blocks},
    };
    for (int takeover = 0; takeover < 2; takeover++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            struct ws_deflate_params p;
            params_init(&p, true, !takeover, 15, 15);
            struct ws_deflate d;
            ws_deflate_init(&d, &p, NULL);
            struct ws_buf out;
            ws_buf_init(&out);
            /* twice on one connection: the stream is left ready for the next message */
            for (int rep = 0; rep < 2; rep++) {
                out.len = 0;
                assert_int_equal(inflate_one(&d, cases[i].p, cases[i].n, &out, 100), 0);
                assert_bytes(&out, (const uint8_t *)"Hello", 5);
            }
            ws_buf_reset(&out);
            ws_deflate_reset(&d);
        }
    }
}

static void test_rfc_inflate_takeover_pair(void **state)
{
    (void)state;
    struct ws_deflate_params p;
    params_init(&p, true, false, 15, 15);
    struct ws_deflate d;
    ws_deflate_init(&d, &p, NULL);
    struct ws_buf out;
    ws_buf_init(&out);
    assert_int_equal(inflate_one(&d, hello_z, sizeof hello_z, &out, 100), 0);
    out.len = 0;
    assert_int_equal(inflate_one(&d, hello_again_z, sizeof hello_again_z, &out, 100), 0);
    assert_bytes(&out, (const uint8_t *)"Hello", 5);

    /* without context takeover the same reference points before the stream: corrupt */
    ws_deflate_reset(&d);
    params_init(&p, true, true, 15, 15);
    ws_deflate_init(&d, &p, NULL);
    out.len = 0;
    assert_int_equal(inflate_one(&d, hello_z, sizeof hello_z, &out, 100), 0);
    out.len = 0;
    assert_int_equal(inflate_one(&d, hello_again_z, sizeof hello_again_z, &out, 100),
                     WS_E_COMPRESSION);
    ws_buf_reset(&out);
    ws_deflate_reset(&d);
}

/* §7.2.3.1's fragmented form: 0xf2 0x48 0xcd in one frame, 0xc9 0xc9 0x07 0x00 in the next. */
static void test_rfc_fragmented(void **state)
{
    (void)state;
    struct ws_deflate_params p;
    params_init(&p, true, false, 15, 15);
    struct ws_deflate d;
    ws_deflate_init(&d, &p, NULL);
    struct ws_buf out;
    ws_buf_init(&out);
    ws_deflate_inflate_begin(&d);
    assert_int_equal(ws_deflate_inflate(&d, hello_z, 3, false, &out, 100), 0);
    assert_int_equal(ws_deflate_inflate(&d, hello_z + 3, 4, true, &out, 100), 0);
    assert_bytes(&out, (const uint8_t *)"Hello", 5);
    ws_buf_reset(&out);
    ws_deflate_reset(&d);
}

/* --- splits --------------------------------------------------------------------------------------
 */

/* Inflates msg on a fresh connection as spans cut at a and b (a <= b), plus empty spans. */
static void inflate_split(const uint8_t *msg, size_t n, size_t a, size_t b, bool shared_nct,
                          struct ws_deflate_shared *shared, struct ws_buf *out)
{
    struct ws_deflate_params p;
    params_init(&p, true, shared_nct, 15, 15);
    struct ws_deflate d;
    ws_deflate_init(&d, &p, shared);
    out->len = 0;
    ws_deflate_inflate_begin(&d);
    assert_int_equal(ws_deflate_inflate(&d, msg, 0, false, out, 1 << 20), 0);
    assert_int_equal(ws_deflate_inflate(&d, msg, a, false, out, 1 << 20), 0);
    assert_int_equal(ws_deflate_inflate(&d, msg + a, b - a, false, out, 1 << 20), 0);
    assert_int_equal(ws_deflate_inflate(&d, msg + b, n - b, true, out, 1 << 20), 0);
    if (shared)
        assert_int_equal(ws_deflate_memory(&d), 0); /* no inflater left behind */
    ws_deflate_reset(&d);
}

static void test_every_split(void **state)
{
    (void)state;
    /* a message with several blocks: compressed text made by our own compressor */
    uint8_t text[3000];
    make_text(text, sizeof text, 7);
    struct ws_deflate_params p;
    params_init(&p, true, false, 15, 15);
    struct ws_deflate c;
    ws_deflate_init(&c, &p, NULL);
    struct ws_buf big, out;
    ws_buf_init(&big);
    ws_buf_init(&out);
    ws_deflate_compress(&c, text, sizeof text, &big);
    ws_deflate_reset(&c);

    struct {
        const uint8_t *p;
        size_t n;
        const uint8_t *want;
        size_t want_len;
    } cases[] = {
        {hello_z, sizeof hello_z, (const uint8_t *)"Hello", 5},
        {hello_stored, sizeof hello_stored, (const uint8_t *)"Hello", 5},
        {hello_bfinal, sizeof hello_bfinal, (const uint8_t *)"Hello", 5},
        {hello_two_blocks, sizeof hello_two_blocks, (const uint8_t *)"Hello", 5},
        {big.data, big.len, text, sizeof text},
    };
    struct ws_deflate_shared *shared = ws_deflate_shared_new(8, 6);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = cases[i].n;
        for (size_t a = 0; a <= n; a++) {
            /* every two-way split; every three-way split for the short examples */
            size_t bmax = n <= 16 ? n : a;
            for (size_t b = a; b <= bmax; b++) {
                inflate_split(cases[i].p, n, a, b, false, NULL, &out);
                assert_bytes(&out, cases[i].want, cases[i].want_len);
                inflate_split(cases[i].p, n, a, b, true, shared, &out);
                assert_bytes(&out, cases[i].want, cases[i].want_len);
            }
        }
        /* byte by byte */
        struct ws_deflate d;
        ws_deflate_init(&d, &p, NULL);
        out.len = 0;
        ws_deflate_inflate_begin(&d);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(ws_deflate_inflate(&d, cases[i].p + k, 1, false, &out, 1 << 20), 0);
        assert_int_equal(ws_deflate_inflate(&d, NULL, 0, true, &out, 1 << 20), 0);
        assert_bytes(&out, cases[i].want, cases[i].want_len);
        ws_deflate_reset(&d);
    }
    ws_deflate_shared_free(shared);
    ws_buf_reset(&big);
    ws_buf_reset(&out);
}

/* --- empty messages ----------------------------------------------------------------------------
 */

static void test_empty_messages(void **state)
{
    (void)state;
    struct ws_deflate_params p;
    params_init(&p, false, false, 15, 15);
    struct ws_deflate d, r;
    ws_deflate_init(&d, &p, NULL);
    ws_deflate_init(&r, &p, NULL);
    struct ws_buf z, out;
    ws_buf_init(&z);
    ws_buf_init(&out);

    /* first message empty, then "Hello", then empty after data (no duplicate flush marker) */
    ws_deflate_compress(&d, NULL, 0, &z);
    assert_bytes(&z, BYTES(0x00));
    assert_int_equal(inflate_one(&r, z.data, z.len, &out, 10), 0);
    assert_int_equal(out.len, 0);

    z.len = 0;
    ws_deflate_compress(&d, (const uint8_t *)"Hello", 5, &z);
    assert_bytes(&z, hello_z, sizeof hello_z);
    assert_int_equal(inflate_one(&r, z.data, z.len, &out, 10), 0);
    assert_bytes(&out, (const uint8_t *)"Hello", 5);

    z.len = 0;
    ws_deflate_compress(&d, NULL, 0, &z);
    assert_bytes(&z, BYTES(0x00));
    out.len = 0;
    assert_int_equal(inflate_one(&r, z.data, z.len, &out, 10), 0);
    assert_int_equal(out.len, 0);

    /* an empty payload (some senders flush nothing) is an empty message and breaks nothing */
    assert_int_equal(inflate_one(&r, NULL, 0, &out, 10), 0);
    assert_int_equal(out.len, 0);
    ws_deflate_inflate_begin(&r);
    assert_int_equal(ws_deflate_inflate(&r, NULL, 0, false, &out, 10), 0);
    assert_int_equal(ws_deflate_inflate(&r, NULL, 0, true, &out, 10), 0);
    assert_int_equal(out.len, 0);

    z.len = 0;
    ws_deflate_compress(&d, (const uint8_t *)"Hello", 5, &z);
    assert_bytes(&z, hello_again_z, sizeof hello_again_z); /* the window survived */
    assert_int_equal(inflate_one(&r, z.data, z.len, &out, 10), 0);
    assert_bytes(&out, (const uint8_t *)"Hello", 5);

    ws_buf_reset(&z);
    ws_buf_reset(&out);
    ws_deflate_reset(&d);
    ws_deflate_reset(&r);
}

/* --- BFINAL (RFC 7692 §7.2.3.4) with context takeover ----------------------------------------- */

/* A sender that ends each message with BFINAL and keeps its window: zlib's Z_FINISH, then a new
 * stream primed with everything sent so far. with_pad adds the §7.2.1 empty-block byte. */
static void test_bfinal_takeover(void **state)
{
    (void)state;
    for (int with_pad = 0; with_pad < 2; with_pad++) {
        z_stream z;
        memset(&z, 0, sizeof z);
        assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
        struct ws_deflate_params p;
        params_init(&p, true, false, 15, 15);
        struct ws_deflate d;
        ws_deflate_init(&d, &p, NULL);
        struct ws_buf out;
        ws_buf_init(&out);
        uint8_t sent[4096];
        size_t sent_len = 0;
        for (int m = 0; m < 4; m++) {
            uint8_t msg[600];
            make_text(msg, sizeof msg, 100 + (uint32_t)(m % 2)); /* repeats: back-references */
            uint8_t wire[2048];
            z.next_in = msg;
            z.avail_in = sizeof msg;
            z.next_out = wire;
            z.avail_out = sizeof wire;
            assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
            size_t n = sizeof wire - z.avail_out;
            if (with_pad)
                wire[n++] = 0x00;
            out.len = 0;
            assert_int_equal(inflate_one(&d, wire, n, &out, 1 << 20), 0);
            assert_bytes(&out, msg, sizeof msg);
            memcpy(sent + sent_len, msg, sizeof msg);
            sent_len += sizeof msg;
            assert_int_equal(deflateReset(&z), Z_OK);
            assert_int_equal(deflateSetDictionary(&z, sent, (uInt)sent_len), Z_OK);
        }
        deflateEnd(&z);
        ws_buf_reset(&out);
        ws_deflate_reset(&d);
    }
}

/* --- negotiation ------------------------------------------------------------------------------ */

/* One negotiation: offers as "|"-separated lists of snct, cnct, s=N, c and c=N (values outside
 * the parser's ranges included on purpose); want as "<S|-><C|-> server-bits client-bits". */
struct nego_case {
    int cfg; /* 0: defaults; 1: takeover allowed; 2: 1 + windows 12/10; 3: 1 + client nct */
    const char *offers;
    const char *want;     /* NULL: declined */
    const char *response; /* the Sec-WebSocket-Extensions value */
};

#define PMD "permessage-deflate"

static const struct nego_case nego_cases[] = {
    /* defaults: server takeover off, so server_no_context_takeover is always answered */
    {0, "", "S- 15 15", PMD "; server_no_context_takeover"},
    {1, "", "-- 15 15", PMD},
    {1, "snct", "S- 15 15", PMD "; server_no_context_takeover"},
    {1, "cnct", "-C 15 15", PMD "; client_no_context_takeover"},
    {1, "s=10", "-- 10 15", PMD "; server_max_window_bits=10"},
    {1, "s=15", "-- 15 15", PMD "; server_max_window_bits=15"},
    {1, "s=9", "-- 9 15", PMD "; server_max_window_bits=9"},
    /* client_max_window_bits without a value: nothing to limit at 15, so nothing answered */
    {1, "c", "-- 15 15", PMD},
    {1, "c=12", "-- 15 12", PMD "; client_max_window_bits=12"},
    {1, "c=15", "-- 15 15", PMD},
    /* a client window of 8 can be inflated (zlib's raw inflate takes 8) */
    {1, "c=8", "-- 15 8", PMD "; client_max_window_bits=8"},
    /* a server window of 8 cannot be produced (zlib's raw deflate refuses 8): declined */
    {1, "s=8", NULL, NULL},
    {1, "snct s=8 c | cnct c", "-C 15 15", PMD "; client_no_context_takeover"},
    {1, "snct cnct s=9 c=9", "SC 9 9",
     PMD "; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; "
         "client_max_window_bits=9"},
    /* server config with smaller windows: server_max_window_bits may be answered unasked,
     * client_max_window_bits only when offered */
    {2, "", "-- 12 15", PMD "; server_max_window_bits=12"},
    {2, "s=14", "-- 12 15", PMD "; server_max_window_bits=12"},
    {2, "s=10", "-- 10 15", PMD "; server_max_window_bits=10"},
    {2, "c", "-- 12 10", PMD "; server_max_window_bits=12; client_max_window_bits=10"},
    {2, "c=9", "-- 12 9", PMD "; server_max_window_bits=12; client_max_window_bits=9"},
    {2, "c=13", "-- 12 10", PMD "; server_max_window_bits=12; client_max_window_bits=10"},
    /* config asks client_no_context_takeover of every client */
    {3, "", "-C 15 15", PMD "; client_no_context_takeover"},
    {3, "c=15 snct", "SC 15 15", PMD "; server_no_context_takeover; client_no_context_takeover"},
    /* values outside struct ws_deflate_offer's ranges: declined, never answered */
    {1, "s=7", NULL, NULL},
    {1, "s=16", NULL, NULL},
    {1, "s=-1", NULL, NULL},
    {1, "c=7", NULL, NULL},
    {1, "c=16", NULL, NULL},
    {1, "c=-2", NULL, NULL},
    {1, "s=16 | c=99 | s=8 | s=11", "-- 11 15", PMD "; server_max_window_bits=11"},
    {1, "s=8 | s=8", NULL, NULL},
    {1, NULL, NULL, NULL}, /* no offer at all */
};

/* Parses a case's offers into o[]; returns how many. */
static size_t parse_offers(const char *spec, struct ws_deflate_offer *o, size_t max)
{
    if (!spec)
        return 0;
    size_t n = 1;
    memset(&o[0], 0, sizeof o[0]);
    char tok[16];
    int used = 0;
    while (sscanf(spec, " %15s%n", tok, &used) == 1) {
        spec += used;
        if (strcmp(tok, "|") == 0) {
            assert_true(n < max);
            memset(&o[n++], 0, sizeof o[0]);
        } else if (strcmp(tok, "snct") == 0) {
            o[n - 1].server_no_context_takeover = true;
        } else if (strcmp(tok, "cnct") == 0) {
            o[n - 1].client_no_context_takeover = true;
        } else if (strcmp(tok, "c") == 0) {
            o[n - 1].client_max_window_bits = -1;
        } else if (strncmp(tok, "s=", 2) == 0) {
            o[n - 1].server_max_window_bits = atoi(tok + 2);
        } else {
            assert_true(strncmp(tok, "c=", 2) == 0);
            o[n - 1].client_max_window_bits = atoi(tok + 2);
        }
    }
    return n;
}

static void nego_config(struct ws_deflate_config *cfg, int which)
{
    ws_deflate_config_init(cfg);
    cfg->enabled = true;
    if (which >= 1)
        cfg->server_context_takeover = true;
    if (which == 2) {
        cfg->server_max_window_bits = 12;
        cfg->client_max_window_bits = 10;
    }
    if (which == 3)
        cfg->client_no_context_takeover = true;
}

static void test_negotiate_matrix(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof nego_cases / sizeof nego_cases[0]; i++) {
        const struct nego_case *c = &nego_cases[i];
        struct ws_deflate_config cfg;
        nego_config(&cfg, c->cfg);
        struct ws_deflate_offer offers[WS_HANDSHAKE_MAX_OFFERS];
        size_t n = parse_offers(c->offers, offers, WS_HANDSHAKE_MAX_OFFERS);
        struct ws_deflate_params p;
        memset(&p, 0x5a, sizeof p);
        char resp[WS_DEFLATE_RESPONSE_MAX] = "untouched";
        int rc = ws_deflate_negotiate(&cfg, offers, n, &p, resp, sizeof resp);
        if (rc != (c->want != NULL))
            print_error("case %zu (%s): rc %d\n", i, c->offers, rc);
        assert_int_equal(rc, c->want != NULL);
        if (rc == 0) {
            assert_string_equal(resp, "untouched");
            continue;
        }
        char got[32];
        snprintf(got, sizeof got, "%c%c %d %d", p.server_no_context_takeover ? 'S' : '-',
                 p.client_no_context_takeover ? 'C' : '-', p.server_max_window_bits,
                 p.client_max_window_bits);
        if (strcmp(resp, c->response) != 0 || strcmp(got, c->want) != 0)
            print_error("case %zu (%s): %s / %s\n", i, c->offers, got, resp);
        assert_string_equal(got, c->want);
        assert_string_equal(resp, c->response);
        assert_int_equal(p.mem_level, 8);
        assert_int_equal(p.level, 6);
        assert_int_equal(p.compress_min_size, 128);
        /* RFC 7692 §7.1.2.2: never client_max_window_bits unless offered */
        bool client_offered = false;
        for (size_t k = 0; k < n; k++)
            client_offered |= offers[k].client_max_window_bits != 0;
        if (!client_offered)
            assert_null(strstr(resp, "client_max_window_bits"));
    }
}

/* Real clients' offers through the handshake parser, our answer through the 101 writer. */
static void test_negotiate_real_offers(void **state)
{
    (void)state;
    static const struct {
        const char *offer;
        const char *response;
    } cases[] = {
        /* Chrome, Firefox (and Safari) */
        {PMD "; client_max_window_bits", PMD "; server_no_context_takeover"},
        {PMD, PMD "; server_no_context_takeover"},
        /* Node ws default */
        {PMD "; client_max_window_bits", PMD "; server_no_context_takeover"},
        /* Autobahn-style: first offer asks a window of 8, the fallback is taken */
        {PMD "; server_max_window_bits=8, " PMD
             "; client_max_window_bits; server_max_window_bits=13",
         PMD "; server_no_context_takeover; server_max_window_bits=13"},
    };
    struct ws_deflate_config cfg;
    ws_deflate_config_init(&cfg);
    cfg.enabled = true;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[1024];
        int n = snprintf(text, sizeof text,
                         "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: %s\r\n\r\n",
                         cases[i].offer);
        assert_true(n > 0 && (size_t)n < sizeof text);
        struct ws_http_request req;
        size_t scanned = 0;
        assert_int_equal(ws_http_parse(text, (size_t)n, sizeof text, &scanned, &req), 0);
        struct ws_handshake hs;
        assert_int_equal(ws_handshake_check(&req, &hs), 0);
        struct ws_deflate_params p;
        char ext[WS_DEFLATE_RESPONSE_MAX];
        assert_int_equal(ws_deflate_negotiate(&cfg, hs.offers, hs.noffers, &p, ext, sizeof ext), 1);
        assert_string_equal(ext, cases[i].response);
        char resp[512], want[256];
        size_t len = ws_handshake_response(resp, sizeof resp, &hs, NULL, 0, ext);
        assert_true(len > 0);
        snprintf(want, sizeof want, "\r\nSec-WebSocket-Extensions: %s\r\n", ext);
        assert_non_null(memmem(resp, len, want, strlen(want)));
    }
}

static void test_negotiate_disabled_and_longest(void **state)
{
    (void)state;
    struct ws_deflate_config cfg;
    ws_deflate_config_init(&cfg);
    assert_false(cfg.enabled);
    assert_int_equal(cfg.server_max_window_bits, 15);
    assert_int_equal(cfg.mem_level, 8);
    struct ws_deflate_offer o = {false, false, 0, 0};
    struct ws_deflate_params p;
    char resp[WS_DEFLATE_RESPONSE_MAX] = "";
    assert_int_equal(ws_deflate_negotiate(&cfg, &o, 1, &p, resp, sizeof resp), 0);
    assert_string_equal(resp, "");

    /* the longest answer fits the documented room */
    cfg.enabled = true;
    cfg.client_max_window_bits = 14;
    struct ws_deflate_offer all = {true, true, 15, 15};
    assert_int_equal(ws_deflate_negotiate(&cfg, &all, 1, &p, resp, sizeof resp), 1);
    assert_string_equal(resp, "permessage-deflate; server_no_context_takeover; "
                              "client_no_context_takeover; server_max_window_bits=15; "
                              "client_max_window_bits=14");
    assert_true(strlen(resp) < WS_DEFLATE_RESPONSE_MAX);
}

/* --- limits and corrupt input --------------------------------------------------------------------
 */

/* A stream of 64 MiB of zeros, about 64 KiB compressed (DEFLATE's ratio tops out near 1032:1,
 * so a 1 KiB stream cannot reach more than about 1 MiB; this one is 1000 times that). */
static void make_bomb(struct ws_buf *out, size_t expanded)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -15, 9, Z_RLE), Z_OK);
    static const uint8_t zeros[65536];
    uint8_t tmp[65536];
    for (size_t done = 0; done < expanded; done += sizeof zeros) {
        z.next_in = zeros;
        z.avail_in = sizeof zeros;
        int flush = done + sizeof zeros >= expanded ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        do {
            z.next_out = tmp;
            z.avail_out = sizeof tmp;
            deflate(&z, flush);
            ws_buf_append(out, tmp, sizeof tmp - z.avail_out);
        } while (z.avail_out == 0);
    }
    deflateEnd(&z);
    assert_memory_equal(out->data + out->len - 4, tail, 4);
    out->len -= 4;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_zip_bomb(void **state)
{
    (void)state;
    const size_t max_out = 1 << 20;
    struct ws_buf bomb, out;
    ws_buf_init(&bomb);
    ws_buf_init(&out);
    make_bomb(&bomb, (size_t)64 << 20);
    print_message("zip bomb: %zu compressed bytes for 64 MiB\n", bomb.len);
    assert_true(bomb.len < 80 * 1024);

    struct ws_deflate_params p;
    params_init(&p, true, false, 15, 15);
    struct ws_deflate d;
    ws_deflate_init(&d, &p, NULL);

    /* whole */
    double t0 = now_s();
    assert_int_equal(inflate_one(&d, bomb.data, bomb.len, &out, max_out), WS_E_MESSAGE_TOO_BIG);
    double t1 = now_s();
    assert_true(out.len <= max_out + 1);
    assert_true(out.cap <= max_out + 1);
    print_message("zip bomb: failed after %zu bytes out in %.1f ms\n", out.len, (t1 - t0) * 1e3);
    assert_true(t1 - t0 < 1.0);
    /* sticky */
    ws_deflate_inflate_begin(&d);
    assert_int_equal(ws_deflate_inflate(&d, hello_z, sizeof hello_z, true, &out, max_out),
                     WS_E_MESSAGE_TOO_BIG);
    ws_deflate_reset(&d);

    /* as 1 KiB frames: fails within the first couple of KiB of input */
    ws_deflate_init(&d, &p, NULL);
    ws_buf_reset(&out);
    ws_deflate_inflate_begin(&d);
    size_t off = 0;
    int rc = 0;
    while (rc == 0 && off < bomb.len) {
        size_t k = bomb.len - off < 1024 ? bomb.len - off : 1024;
        rc = ws_deflate_inflate(&d, bomb.data + off, k, off + k == bomb.len, &out, max_out);
        off += k;
    }
    assert_int_equal(rc, WS_E_MESSAGE_TOO_BIG);
    assert_true(out.len <= max_out + 1);
    print_message("zip bomb in 1 KiB frames: failed after %zu input bytes\n", off);
    assert_true(off <= 3 * 1024);
    ws_deflate_reset(&d);

    /* on the shared inflater too, which is then clean for the next connection */
    struct ws_deflate_shared *shared = ws_deflate_shared_new(8, 6);
    params_init(&p, true, true, 15, 15);
    ws_deflate_init(&d, &p, shared);
    ws_buf_reset(&out);
    assert_int_equal(inflate_one(&d, bomb.data, bomb.len, &out, max_out), WS_E_MESSAGE_TOO_BIG);
    ws_deflate_reset(&d);
    ws_deflate_init(&d, &p, shared);
    out.len = 0;
    assert_int_equal(inflate_one(&d, hello_z, sizeof hello_z, &out, max_out), 0);
    assert_bytes(&out, (const uint8_t *)"Hello", 5);
    assert_int_equal(ws_deflate_memory(&d), 0);
    ws_deflate_reset(&d);
    ws_deflate_shared_free(shared);

    ws_buf_reset(&bomb);
    ws_buf_reset(&out);
}

static void test_limit_exact(void **state)
{
    (void)state;
    uint8_t text[5000];
    make_text(text, sizeof text, 3);
    struct ws_deflate_params p;
    params_init(&p, true, true, 15, 15);
    struct ws_deflate c, d;
    ws_deflate_init(&c, &p, NULL);
    struct ws_buf z, out;
    ws_buf_init(&z);
    ws_buf_init(&out);
    ws_deflate_compress(&c, text, sizeof text, &z);

    ws_deflate_init(&d, &p, NULL);
    assert_int_equal(inflate_one(&d, z.data, z.len, &out, sizeof text), 0); /* exactly the limit */
    assert_bytes(&out, text, sizeof text);
    ws_deflate_reset(&d);

    ws_deflate_init(&d, &p, NULL);
    out.len = 0;
    assert_int_equal(inflate_one(&d, z.data, z.len, &out, sizeof text - 1), WS_E_MESSAGE_TOO_BIG);
    assert_int_equal(out.len, sizeof text);
    ws_deflate_reset(&d);

    /* the limit counts what out already held (the message so far) */
    ws_deflate_init(&d, &p, NULL);
    out.len = 0;
    ws_buf_append(&out, "0123456789", 10);
    assert_int_equal(inflate_one(&d, z.data, z.len, &out, sizeof text + 9), WS_E_MESSAGE_TOO_BIG);
    ws_deflate_reset(&d);
    ws_deflate_init(&d, &p, NULL);
    out.len = 10;
    assert_int_equal(inflate_one(&d, z.data, z.len, &out, sizeof text + 10), 0);
    assert_int_equal(out.len, sizeof text + 10);
    assert_memory_equal(out.data, "0123456789", 10);
    assert_memory_equal(out.data + 10, text, sizeof text);
    ws_deflate_reset(&d);

    /* max_out 0: only an empty message fits */
    ws_deflate_init(&d, &p, NULL);
    ws_buf_reset(&out);
    assert_int_equal(inflate_one(&d, BYTES(0x00), &out, 0), 0);
    assert_int_equal(out.len, 0);
    assert_int_equal(inflate_one(&d, hello_z, sizeof hello_z, &out, 0), WS_E_MESSAGE_TOO_BIG);
    assert_int_equal(out.len, 1);
    ws_deflate_reset(&d);

    ws_deflate_reset(&c);
    ws_buf_reset(&z);
    ws_buf_reset(&out);
}

static void test_corrupt(void **state)
{
    (void)state;
    struct {
        const char *what;
        uint8_t p[16];
        size_t n;
    } cases[] = {
        {"reserved block type 11", {0x07}, 1},
        {"stored block LEN != ~NLEN", {0x00, 0x05, 0x00, 0xfa, 0xfe, 'H', 'e', 'l', 'l', 'o'}, 10},
        {"distance before the stream start", {0xf2, 0x00, 0x11, 0x00, 0x00}, 5},
        {"truncated block", {0xf2, 0x48, 0xcd}, 3},
        {"stored block cut short", {0x00, 0x05, 0x00, 0xfa, 0xff, 'H', 'e'}, 7},
        {"dynamic block with 288 length codes", {0xfd, 0xff, 0xff, 0xff, 0xff, 0xff}, 6},
        {"garbage", {0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0}, 8},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int shared_on = 0; shared_on < 2; shared_on++) {
            struct ws_deflate_shared *shared = shared_on ? ws_deflate_shared_new(8, 6) : NULL;
            struct ws_deflate_params p;
            params_init(&p, true, shared_on, 15, 15);
            struct ws_deflate d;
            ws_deflate_init(&d, &p, shared);
            struct ws_buf out;
            ws_buf_init(&out);
            int rc = inflate_one(&d, cases[i].p, cases[i].n, &out, 1 << 20);
            if (rc != WS_E_COMPRESSION)
                print_error("%s: %d\n", cases[i].what, rc);
            assert_int_equal(rc, WS_E_COMPRESSION);
            /* sticky, with or without a new message */
            assert_int_equal(ws_deflate_inflate(&d, hello_z, sizeof hello_z, true, &out, 100),
                             WS_E_COMPRESSION);
            ws_deflate_inflate_begin(&d);
            assert_int_equal(ws_deflate_inflate(&d, hello_z, sizeof hello_z, true, &out, 100),
                             WS_E_COMPRESSION);
            assert_int_equal(ws_deflate_memory(&d), 0); /* the broken inflater is gone */
            ws_deflate_reset(&d);
            if (shared) {
                /* the shared inflater is clean again */
                ws_deflate_init(&d, &p, shared);
                out.len = 0;
                assert_int_equal(inflate_one(&d, hello_z, sizeof hello_z, &out, 100), 0);
                assert_bytes(&out, (const uint8_t *)"Hello", 5);
                ws_deflate_reset(&d);
            }
            ws_buf_reset(&out);
            ws_deflate_shared_free(shared);
        }
    }
}

/* A reference older than the agreed client window is refused across messages. */
static void test_window_enforced(void **state)
{
    (void)state;
    uint8_t blob[4000];
    make_random(blob, sizeof blob, 99);
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    struct ws_buf m1, m2, out;
    ws_buf_init(&m1);
    ws_buf_init(&m2);
    ws_buf_init(&out);
    ref_compress(&z, blob, sizeof blob, &m1);
    ref_compress(&z, blob, sizeof blob, &m2); /* refers 4000 bytes back */
    deflateEnd(&z);
    assert_true(m2.len < 100);

    for (int bits = 9; bits <= 15; bits++) {
        struct ws_deflate_params p;
        params_init(&p, true, false, 15, bits);
        struct ws_deflate d;
        ws_deflate_init(&d, &p, NULL);
        out.len = 0;
        assert_int_equal(inflate_one(&d, m1.data, m1.len, &out, 1 << 20), 0);
        out.len = 0;
        int rc = inflate_one(&d, m2.data, m2.len, &out, 1 << 20);
        if (bits >= 12) {
            assert_int_equal(rc, 0); /* 4096-byte window or more */
            assert_bytes(&out, blob, sizeof blob);
        } else {
            assert_int_equal(rc, WS_E_COMPRESSION);
        }
        ws_deflate_reset(&d);
    }
    ws_buf_reset(&m1);
    ws_buf_reset(&m2);
    ws_buf_reset(&out);
}

/* --- round trips ----------------------------------------------------------------------------- */

/* Our compressor against a zlib receiver, and a zlib sender against our inflater, for many
 * messages on one connection, for every window and both context takeover settings. */
static void test_round_trips(void **state)
{
    (void)state;
    enum { NMSG = 120 };
    uint8_t *msg = malloc(70000);
    assert_non_null(msg);
    struct ws_deflate_shared *shared = ws_deflate_shared_new(8, 6);
    for (int bits = 9; bits <= 15; bits++) {
        for (int nct = 0; nct < 2; nct++) {
            for (int use_shared = 0; use_shared < 2; use_shared++) {
                struct ws_deflate_params p;
                params_init(&p, nct, nct, bits, bits);
                struct ws_deflate d;
                ws_deflate_init(&d, &p, use_shared ? shared : NULL);
                z_stream zi, zd;
                memset(&zi, 0, sizeof zi);
                memset(&zd, 0, sizeof zd);
                assert_int_equal(inflateInit2(&zi, -bits), Z_OK);
                assert_int_equal(deflateInit2(&zd, 6, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY),
                                 Z_OK);
                struct ws_buf z, out;
                ws_buf_init(&z);
                ws_buf_init(&out);
                size_t total_in = 0, total_z = 0;
                for (uint32_t m = 0; m < NMSG; m++) {
                    size_t n = (m * 7919u) % (m % 10 == 9 ? 70000 : 2000);
                    if (m % 13 == 5)
                        make_random(msg, n, m);
                    else
                        make_text(msg, n, m % 5);
                    /* server -> client */
                    z.len = 0;
                    out.len = 0;
                    assert_int_equal(ws_deflate_compress(&d, msg, n, &z), 0);
                    if (nct)
                        inflateReset(&zi);
                    ref_inflate(&zi, z.data, z.len, &out);
                    assert_bytes(&out, msg, n);
                    total_in += n;
                    total_z += z.len;
                    /* client -> server, in frames of m % 3 + 1 spans */
                    z.len = 0;
                    out.len = 0;
                    if (nct)
                        deflateReset(&zd);
                    if (n > 0)
                        ref_compress(&zd, msg, n, &z);
                    size_t parts = m % 3 + 1, off = 0;
                    ws_deflate_inflate_begin(&d);
                    for (size_t k = 1; k <= parts; k++) {
                        size_t end = z.len * k / parts;
                        assert_int_equal(ws_deflate_inflate(&d, z.data + off, end - off, k == parts,
                                                            &out, 1 << 20),
                                         0);
                        off = end;
                    }
                    assert_bytes(&out, msg, n);
                }
                if (bits == 15 && !use_shared)
                    print_message("round trip window 15 %s: %zu -> %zu bytes\n",
                                  nct ? "no takeover" : "takeover", total_in, total_z);
                inflateEnd(&zi);
                deflateEnd(&zd);
                ws_buf_reset(&z);
                ws_buf_reset(&out);
                ws_deflate_reset(&d);
            }
        }
    }
    ws_deflate_shared_free(shared);
    free(msg);
}

/* Context takeover must compress a repeated message far better than without. */
static void test_takeover_helps(void **state)
{
    (void)state;
    uint8_t text[1000];
    make_random(text, sizeof text, 5);
    size_t len[2];
    for (int nct = 0; nct < 2; nct++) {
        struct ws_deflate_params p;
        params_init(&p, nct, false, 15, 15);
        struct ws_deflate d;
        ws_deflate_init(&d, &p, NULL);
        struct ws_buf z;
        ws_buf_init(&z);
        ws_deflate_compress(&d, text, sizeof text, &z);
        z.len = 0;
        ws_deflate_compress(&d, text, sizeof text, &z);
        len[nct] = z.len;
        ws_buf_reset(&z);
        ws_deflate_reset(&d);
    }
    assert_true(len[0] < 20);
    assert_true(len[1] > 1000);
}

/* --- shared compressor and memory ---------------------------------------------------------- */

static void test_shared_matches_own(void **state)
{
    (void)state;
    struct ws_deflate_shared *shared = ws_deflate_shared_new(8, 6);
    uint8_t text[20000];
    make_text(text, sizeof text, 11);
    for (int bits = 9; bits <= 15; bits++) {
        struct ws_deflate_params p;
        params_init(&p, true, false, bits, 15);
        struct ws_deflate own, via;
        ws_deflate_init(&own, &p, NULL);
        ws_deflate_init(&via, &p, shared);
        assert_int_equal(ws_deflate_broadcast_bits(&own), 0);
        assert_int_equal(ws_deflate_broadcast_bits(&via), bits);
        struct ws_buf a, b, c;
        ws_buf_init(&a);
        ws_buf_init(&b);
        ws_buf_init(&c);
        for (int rep = 0; rep < 2; rep++) {
            a.len = b.len = c.len = 0;
            ws_deflate_compress(&own, text, sizeof text, &a);
            ws_deflate_compress(&via, text, sizeof text, &b);
            ws_deflate_shared_compress(shared, bits, text, sizeof text, &c);
            assert_int_equal(a.len, b.len);
            assert_memory_equal(a.data, b.data, a.len);
            assert_int_equal(a.len, c.len);
            assert_memory_equal(a.data, c.data, a.len);
        }
        assert_int_equal(ws_deflate_memory(&via), 0);
        assert_true(ws_deflate_memory(&own) > 0);
        ws_buf_reset(&a);
        ws_buf_reset(&b);
        ws_buf_reset(&c);
        ws_deflate_reset(&own);
        ws_deflate_reset(&via);
    }
    /* takeover connections never use the shared set */
    struct ws_deflate_params p;
    params_init(&p, false, false, 15, 15);
    struct ws_deflate d;
    ws_deflate_init(&d, &p, shared);
    assert_int_equal(ws_deflate_broadcast_bits(&d), 0);
    ws_deflate_reset(&d);
    print_message("shared set after windows 9..15: %zu bytes\n", ws_deflate_shared_memory(shared));
    ws_deflate_shared_free(shared);
}

static void test_should_compress(void **state)
{
    (void)state;
    struct ws_deflate_params p;
    params_init(&p, true, false, 15, 15);
    struct ws_deflate d;
    ws_deflate_init(&d, &p, NULL);
    assert_false(ws_deflate_should_compress(&d, 127));
    assert_true(ws_deflate_should_compress(&d, 128));
    ws_deflate_reset(&d);
}

/* Memory held per connection, measured through the counting allocator. zlib 1.2.13: a deflater
 * takes (1 << (w + 2)) + (1 << (m + 9)) bytes plus its ~5.8 KiB state, an inflater 1 << w (its
 * window, allocated at first output) plus its ~7 KiB state; each also a 112-byte z_stream. */
static void measure(const char *what, int sbits, int cbits, int mem, bool nct, bool use_shared,
                    size_t *def_bytes, size_t *inf_bytes)
{
    struct ws_deflate_shared *shared = use_shared ? ws_deflate_shared_new(mem, 6) : NULL;
    struct ws_deflate_params p;
    params_init(&p, nct, nct, sbits, cbits);
    p.mem_level = mem;
    struct ws_deflate d;
    ws_deflate_init(&d, &p, shared);
    assert_int_equal(ws_deflate_memory(&d), 0); /* nothing until first use */
    uint8_t text[3000];
    make_text(text, sizeof text, 1);
    struct ws_buf z, out;
    ws_buf_init(&z);
    ws_buf_init(&out);
    ws_deflate_compress(&d, text, sizeof text, &z);
    *def_bytes = ws_deflate_memory(&d);
    assert_int_equal(inflate_one(&d, z.data, z.len, &out, 1 << 20), 0);
    *inf_bytes = ws_deflate_memory(&d) - *def_bytes;
    print_message("%-40s deflate %7zu  inflate %6zu  total %7zu bytes%s\n", what, *def_bytes,
                  *inf_bytes, ws_deflate_memory(&d),
                  use_shared ? " (+ shared set, once per server)" : "");
    if (shared)
        print_message("%-40s shared set now %zu bytes\n", "", ws_deflate_shared_memory(shared));
    ws_buf_reset(&z);
    ws_buf_reset(&out);
    ws_deflate_reset(&d);
    assert_int_equal(ws_deflate_memory(&d), 0);
    ws_deflate_shared_free(shared);
}

static void test_memory(void **state)
{
    (void)state;
    size_t def, inf;
    const size_t zs = sizeof(z_stream);

    measure("window 15, memLevel 8, takeover", 15, 15, 8, false, false, &def, &inf);
    assert_in_range(def, zs + 262144, zs + 262144 + 8192);
    assert_in_range(inf, zs + 32768, zs + 32768 + 8192);

    measure("window 10, memLevel 4, takeover", 10, 10, 4, false, false, &def, &inf);
    assert_in_range(def, zs + 12288, zs + 12288 + 8192);
    assert_in_range(inf, zs + 1024, zs + 1024 + 8192);

    /* no context takeover, no shared set: the streams stay, reset per message */
    measure("window 15, memLevel 8, no takeover", 15, 15, 8, true, false, &def, &inf);
    assert_in_range(def, zs + 262144, zs + 262144 + 8192);

    /* the shared set: nothing per connection */
    measure("window 15, memLevel 8, shared", 15, 15, 8, true, true, &def, &inf);
    assert_int_equal(def, 0);
    assert_int_equal(inf, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_compress_no_takeover),
        cmocka_unit_test(test_rfc_compress_takeover),
        cmocka_unit_test(test_rfc_inflate_examples),
        cmocka_unit_test(test_rfc_inflate_takeover_pair),
        cmocka_unit_test(test_rfc_fragmented),
        cmocka_unit_test(test_every_split),
        cmocka_unit_test(test_empty_messages),
        cmocka_unit_test(test_bfinal_takeover),
        cmocka_unit_test(test_negotiate_matrix),
        cmocka_unit_test(test_negotiate_real_offers),
        cmocka_unit_test(test_negotiate_disabled_and_longest),
        cmocka_unit_test(test_zip_bomb),
        cmocka_unit_test(test_limit_exact),
        cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_window_enforced),
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_takeover_helps),
        cmocka_unit_test(test_shared_matches_own),
        cmocka_unit_test(test_should_compress),
        cmocka_unit_test(test_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
