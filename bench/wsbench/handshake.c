/* The opening handshake (RFC 6455 §4): the accept value, the server's 101 checked, then each
 * role's first step once open. The request is written in main.c; the extension answer is
 * checked in deflate.c. */
#include "wsbench.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

/* RFC 6455 §4.1: any 16-byte nonce, base64; fixed, its accept value is computed once. */
const char KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static void on_open(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    c->state = CS_OPEN;
    b->opening--;
    b->opened++;
    wb_progress(b, t);
    if ((b->o.mode == MODE_IDLE && c != b->warm) || (b->measuring && b->o.mode == MODE_CONNECT))
        wb_hist_add(&b->hist, t - c->t_connect_ns);
    switch (c->role) {
    case ROLE_SUB: {
        static const uint8_t sub[] = "sub";
        wb_raw_frame(c, 0x1, sub, 3);
        wb_flush(c);
        break;
    }
    case ROLE_CYCLE: {
        static const uint8_t code[2] = {0x03, 0xe8}; /* 1000 */
        wb_raw_frame(c, 0x8, code, 2);
        wb_flush(c);
        break;
    }
    case ROLE_PUB:
        if (b->subs_ready == b->nconns - 1 && !b->running)
            wb_run_start(b);
        break;
    case ROLE_CHAT:
        wb_chat_join_more(b);
        break;
    default:
        break;
    }
}

const char *wb_header_value(const char *head, size_t len, const char *name, size_t *vlen)
{
    size_t name_len = strlen(name);
    const char *end = head + len;
    for (const char *line = head; line < end;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl)
            break;
        if ((size_t)(nl - line) > name_len && strncasecmp(line, name, name_len) == 0) {
            const char *v = line + name_len, *ve = nl;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = nl + 1;
    }
    return NULL;
}

/* RFC 6455 §4.2.2: Sec-WebSocket-Accept carries the value computed from our key. */
static bool accept_ok(struct bench *b, const char *head, size_t len)
{
    size_t vl;
    const char *v = wb_header_value(head, len, "sec-websocket-accept:", &vl);
    return v && vl == strlen(b->accept) && memcmp(v, b->accept, vl) == 0;
}

int wb_handshake_input(struct conn *c, const uint8_t *data, size_t len, uint64_t t)
{
    struct bench *b = c->b;
    size_t room = WB_HS_BYTES - 1 - c->hs_len, take = len < room ? len : room;
    size_t old = c->hs_len;
    memcpy(c->hs + c->hs_len, data, take);
    c->hs_len += take;
    size_t from = old > 3 ? old - 3 : 0;
    char *e = memmem(c->hs + from, c->hs_len - from, "\r\n\r\n", 4);
    if (!e) {
        if (c->hs_len == WB_HS_BYTES - 1) {
            wb_conn_fail(c, ERR_HANDSHAKE, "response head too large");
            return -1;
        }
        return 0;
    }
    size_t head_len = (size_t)(e - c->hs) + 4;
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0 || !accept_ok(b, c->hs, head_len)) {
        char line[80];
        size_t ll = 0;
        while (ll < head_len && ll < sizeof line - 1 && c->hs[ll] != '\r' && c->hs[ll] != '\n')
            ll++;
        snprintf(line, sizeof line, "%.*s", (int)ll, c->hs);
        wb_conn_fail(c, ERR_HANDSHAKE, line);
        return -1;
    }
    const char *why = wb_extensions_ok(c, c->hs, head_len);
    if (why) {
        wb_conn_fail(c, ERR_HANDSHAKE, why);
        return -1;
    }
    c->hs_len = 0;
    on_open(c, t);
    if (c->state != CS_OPEN)
        return -1;
    size_t used = head_len - old; /* bytes of DATA that belonged to the head */
    return wb_parse(c, data + used, len - used, t);
}

void wb_compute_accept(char out[32])
{
    char in[128];
    unsigned char digest[SHA_DIGEST_LENGTH];
    int n = snprintf(in, sizeof in, "%s%s", KEY, GUID);
    SHA1((const unsigned char *)in, (size_t)n, digest);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
}
