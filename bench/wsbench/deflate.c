/* --deflate on the receiving side (RFC 7692): the server's answer to our offer, the inflater, the
 * memo of compressed messages already inflated. What we send is compressed once, in
 * template.c. */
#include "wsbench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *wb_extensions_ok(struct conn *c, const char *head, size_t len)
{
    struct bench *b = c->b;
    size_t vl;
    const char *v = wb_header_value(head, len, "sec-websocket-extensions:", &vl);
    c->pmd = c->pmd_reset = false;
    if (!v)
        return b->o.deflate ? "the server declined permessage-deflate" : NULL;
    if (!b->o.deflate)
        return "an extension we did not offer";
    char ext[256];
    snprintf(ext, sizeof ext, "%.*s", (int)(vl < sizeof ext - 1 ? vl : sizeof ext - 1), v);
    char *save = NULL, *tok = strtok_r(ext, ";", &save);
    if (!tok || strcmp(tok, "permessage-deflate") != 0)
        return "an extension we did not offer";
    while ((tok = strtok_r(NULL, ";", &save)) != NULL) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        char *e = tok + strlen(tok);
        while (e > tok && (e[-1] == ' ' || e[-1] == '\t'))
            *--e = 0;
        int bits;
        if (strcmp(tok, "server_no_context_takeover") == 0) {
            c->pmd_reset = true;
        } else if (strcmp(tok, "client_no_context_takeover") == 0) {
            /* we compress every message on its own anyway */
        } else if (sscanf(tok, "server_max_window_bits=%d", &bits) == 1 && bits >= 8 &&
                   bits <= 15) {
            /* our inflater's window (15) holds any smaller one */
        } else if (sscanf(tok, "client_max_window_bits=%d", &bits) == 1 && bits >= 8 &&
                   bits <= 15) {
            /* a message never refers further back than its own start */
            if (b->o.size > ((size_t)1 << bits))
                return "client_max_window_bits smaller than our messages";
        } else {
            return "a permessage-deflate parameter we do not know";
        }
    }
    c->pmd = true;
    return NULL;
}

int wb_inflate_some(struct conn *c, const uint8_t *in, size_t n)
{
    struct bench *b = c->b;
    z_stream *z = c->inf;
    if (!z) {
        z = c->inf = calloc(1, sizeof *z);
        if (!z || inflateInit2(z, -15) != Z_OK) {
            fprintf(stderr, "wsbench: inflateInit2 failed\n");
            exit(1);
        }
    }
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)n;
    for (;;) {
        z->next_out = b->zout;
        z->avail_out = WB_ZOUT_BYTES;
        int rc = inflate(z, Z_SYNC_FLUSH);
        size_t got = WB_ZOUT_BYTES - z->avail_out;
        if (rc != Z_OK && rc != Z_STREAM_END && !(rc == Z_BUF_ERROR && got == 0)) {
            wb_conn_fail(c, ERR_PROTOCOL, z->msg ? z->msg : "invalid DEFLATE data");
            return -1;
        }
        if (got && wb_consume(c, b->zout, got) < 0)
            return -1;
        if (rc == Z_STREAM_END) /* RFC 7692 §7.2.3.4: a final block ends this stream only */
            inflateReset(z);
        if (z->avail_in == 0 && got < WB_ZOUT_BYTES)
            return 0;
        if (got == 0 && rc == Z_BUF_ERROR) {
            wb_conn_fail(c, ERR_PROTOCOL, "DEFLATE data that does not end");
            return -1;
        }
    }
}

uint64_t wb_memo_hash(const uint8_t *d, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, d + i, 8);
        h = (h ^ w) * 0x100000001b3u;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ d[i]) * 0x100000001b3u;
    return h ^ n;
}

int wb_compressed_in(struct conn *c, const uint8_t *data, size_t n)
{
    if (!c->zstream && c->pmd_reset && c->role != ROLE_CHAT && c->zmsg_len + n <= WB_MEMO_BYTES) {
        if (!c->zmsg)
            c->zmsg = wb_xcalloc(WB_MEMO_BYTES, 1);
        memcpy(c->zmsg + c->zmsg_len, data, n);
        c->zmsg_len += n;
        return 0;
    }
    if (!c->zstream) {
        c->zstream = true;
        size_t held = c->zmsg_len;
        c->zmsg_len = 0;
        if (held && wb_inflate_some(c, c->zmsg, held) < 0)
            return -1;
    }
    return wb_inflate_some(c, data, n);
}
