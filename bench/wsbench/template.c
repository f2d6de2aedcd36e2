/* What we send: the message template of a run (its per-message span, the rest masked once and
 * compressed once with --deflate), client frame headers and masking, the span's hex fields.
 * Bytes only: nothing here queues or writes. */
#include "wsbench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char HEX[] = "0123456789abcdef";

/* RFC 6455 §5.3: the client masks every frame; the key is fixed so payloads are masked once. */
static const uint8_t MASK[4] = {0x37, 0xfa, 0x21, 0x3d};

static void hex_put(uint8_t *dst, uint64_t v, unsigned digits)
{
    for (unsigned i = digits; i-- > 0; v >>= 4)
        dst[i] = (uint8_t)HEX[v & 15];
}

bool wb_hex_get(const uint8_t *src, unsigned digits, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < digits; i++) {
        uint8_t ch = src[i];
        unsigned d;
        if (ch >= '0' && ch <= '9')
            d = ch - '0';
        else if (ch >= 'a' && ch <= 'f')
            d = ch - 'a' + 10u;
        else
            return false;
        v = v << 4 | d;
    }
    *out = v;
    return true;
}

size_t wb_frame_head(uint8_t *h, uint8_t opcode, uint64_t len)
{
    size_t n;
    h[0] = (uint8_t)(0x80u | opcode);
    if (len < 126) {
        h[1] = (uint8_t)(0x80u | len);
        n = 2;
    } else if (len <= 0xffff) {
        h[1] = 0x80 | 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        n = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    memcpy(h + n, MASK, 4);
    return n + 4;
}

void wb_mask_copy(uint8_t *dst, const uint8_t *src, size_t len, size_t off)
{
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i] ^ MASK[(off + i) & 3];
}

void wb_span_put(const struct bench *b, uint8_t *dst, uint64_t seq, uint64_t ts, uint64_t from)
{
    memcpy(dst, b->payload, b->span);
    hex_put(dst + b->seq_off, seq, 8);
    if (b->ts_off >= 0)
        hex_put(dst + b->ts_off, ts, 16);
    if (b->from_off >= 0)
        hex_put(dst + b->from_off, from, 5);
}

bool wb_span_get(const struct bench *b, const uint8_t *got, uint64_t *seq, uint64_t *ts)
{
    uint8_t want[WB_PREFIX_MAX];
    *ts = 0;
    if (!wb_hex_get(got + b->seq_off, 8, seq) ||
        (b->ts_off >= 0 && !wb_hex_get(got + b->ts_off, 16, ts)))
        return false;
    wb_span_put(b, want, *seq, *ts, 0);
    return memcmp(want, got, b->span) == 0;
}

/* Text for --json and chat messages: ordinary chat prose, no quotes, backslashes or slashes
 * (nothing a JSON encoder escapes), distinct sentences so that 1 KiB does not repeat itself. */
static const char CHAT_TEXT[] =
    "Morning all, quick update on the release: the build went green around midnight and the "
    "staging deploy finished without complaints. Could someone from the mobile team check "
    "whether the login screen still flickers on older Android phones? I saw it twice on a "
    "Pixel 3 yesterday, but never on anything newer. Also, the meeting moved to Thursday at "
    "half past two because half of the design people are travelling on Wednesday. If you have "
    "questions about the new pricing page, Maria wrote a short summary in the wiki, with "
    "screenshots of both variants and the numbers from last week. Remember that the coffee "
    "machine on the fourth floor is broken again; the one near the lifts works fine. Thanks to "
    "everyone who stayed late on Friday to fix the payment webhook, that was a nasty one and "
    "customers noticed nothing. Next on my list: cleaning up old feature flags, upgrading the "
    "database driver, and writing the postmortem for the outage in October. Ping me here if "
    "anything blocks you, or just grab me after lunch. Happy to pair on the search indexing "
    "work too, it looks like the queue backs up whenever the nightly import runs late. ";

/* Fills DST[0..n) with the text, starting at OFF in it, wrapping around. */
static void text_fill(uint8_t *dst, size_t n, size_t off)
{
    size_t len = sizeof CHAT_TEXT - 1;
    for (size_t i = 0; i < n; i++)
        dst[i] = (uint8_t)CHAT_TEXT[(off + i) % len];
}

void wb_build_templates(struct bench *b)
{
    const struct opts *o = &b->o;
    size_t size = o->size;
    uint8_t *p = b->payload = wb_xcalloc(size, 1);
    b->ts_off = b->from_off = -1;
    if (o->mode == MODE_CHAT) {
        /* examples/chat: {"type":"say","text":"FFFFF SSSSSSSS TTTTTTTTTTTTTTTT ..."} */
        static const char head[] = "{\"type\":\"say\",\"text\":\"00000 00000000 0000000000000000 ";
        b->span = sizeof head - 1;
        b->from_off = 22;
        b->seq_off = 28;
        b->ts_off = 37;
        memcpy(p, head, b->span);
        text_fill(p + b->span, size - b->span - 2, 0);
        memcpy(p + size - 2, "\"}", 2);
    } else if (o->json) {
        /* the message of the examples/chat protocol, plus our sequence number (and time) */
        const char *head = o->mode == MODE_BROADCAST
                               ? "{\"seq\":\"00000000\",\"ts\":\"0000000000000000\","
                               : "{\"seq\":\"00000000\",";
        static const char mid[] = "\"type\":\"message\",\"room\":\"lobby\",\"id\":48213,"
                                  "\"nick\":\"margaret.h\",\"ts_ms\":1764000000000,\"text\":\"";
        b->span = strlen(head);
        b->seq_off = 8;
        if (o->mode == MODE_BROADCAST)
            b->ts_off = 24;
        memcpy(p, head, b->span);
        memcpy(p + b->span, mid, sizeof mid - 1);
        size_t at = b->span + sizeof mid - 1;
        text_fill(p + at, size - at - 2, 0);
        memcpy(p + size - 2, "\"}", 2);
    } else {
        /* printable ASCII (valid UTF-8 for text messages) that changes along the payload, so
         * a misplaced or repeated chunk does not compare equal */
        for (size_t i = 0; i < size; i++)
            p[i] = (uint8_t)('a' + (i * 7 + (i >> 6)) % 26);
        b->span = o->mode == MODE_BROADCAST ? 24 : 8;
        b->seq_off = 0;
        if (o->mode == MODE_BROADCAST)
            b->ts_off = 8;
    }
    const uint8_t *rest = p + b->span;
    size_t rest_len = size - b->span;
    uint8_t *comp = NULL;
    b->wire_pre_len = b->span;
    if (o->deflate) {
        z_stream z = {0};
        if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) !=
            Z_OK) {
            fprintf(stderr, "wsbench: deflateInit2 failed\n");
            exit(1);
        }
        size_t cap = deflateBound(&z, rest_len) + 64;
        comp = wb_xcalloc(cap, 1);
        z.next_in = (Bytef *)(uintptr_t)rest;
        z.avail_in = (uInt)rest_len;
        z.next_out = comp;
        z.avail_out = (uInt)cap;
        int rc = deflate(&z, Z_SYNC_FLUSH);
        size_t clen = cap - z.avail_out;
        if (rc != Z_OK || z.avail_in != 0 || clen < 4 ||
            memcmp(comp + clen - 4, "\x00\x00\xff\xff", 4) != 0) {
            fprintf(stderr, "wsbench: compressing the template failed\n");
            exit(1);
        }
        deflateEnd(&z);
        rest = comp;
        rest_len = clen - 4;
        b->wire_pre_len = WB_STORED_HEAD + b->span;
        b->zout = wb_xcalloc(WB_ZOUT_BYTES, 1);
    }
    b->wire_tail_len = rest_len;
    b->wire_len = b->wire_pre_len + rest_len;
    b->wire_tail = wb_xcalloc(rest_len, 1);
    wb_mask_copy(b->wire_tail, rest, rest_len, b->wire_pre_len);
    free(comp);
    b->head_len = wb_frame_head(b->head, b->opcode, b->wire_len);
    if (o->deflate)
        b->head[0] |= 0x40; /* RSV1: RFC 7692 §6 */
}
