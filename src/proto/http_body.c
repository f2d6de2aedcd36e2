/* An HTTP/1.1 message body's framing (RFC 9112 §6: Transfer-Encoding chunked, a Content-Length
 * or none) from a parsed head, and the in-place chunked decoder (§7.1). It reads no bytes off a
 * connection and keeps no body: the caller owns the buffer and its limits. Pure. */
#include "ws/http.h"

#include "ws/err.h"

#include <stdint.h>
#include <string.h>

/* One Content-Length value: 1 to 19 digits (RFC 9110 §8.6). */
static int parse_length(struct ws_span v, uint64_t *out)
{
    if (v.n == 0 || v.n > 19)
        return WS_E_HTTP_BAD;
    uint64_t n = 0;
    for (size_t i = 0; i < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return WS_E_HTTP_BAD;
        n = n * 10 + (uint64_t)(v.p[i] - '0');
    }
    *out = n;
    return 0;
}

int ws_http_framing(const struct ws_http_request *req, struct ws_http_framing *out)
{
    out->chunked = false;
    out->length = 0;
    bool te = false, cl = false;
    size_t codings = 0;
    bool last_chunked = false;
    if (!req->field_count[WS_HTTP_TRANSFER_ENCODING] && !req->field_count[WS_HTTP_CONTENT_LENGTH])
        return 0; /* no body: nearly every GET */
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct ws_http_header *h = &req->headers[i];
        if (ws_span_ieq(h->name, "Transfer-Encoding")) {
            te = true;
            struct ws_span list = h->value, tok;
            while (ws_http_next_token(&list, &tok)) {
                codings++;
                last_chunked = ws_span_ieq(tok, "chunked");
            }
        } else if (ws_span_ieq(h->name, "Content-Length")) {
            /* RFC 9110 §8.6: a list of identical values may stand for one */
            struct ws_span list = h->value, tok;
            bool any = false;
            while (ws_http_next_token(&list, &tok)) {
                uint64_t n;
                if (parse_length(tok, &n) < 0 || (cl && n != out->length))
                    return WS_E_HTTP_BAD;
                out->length = n;
                cl = any = true;
            }
            if (!any)
                return WS_E_HTTP_BAD;
        }
    }
    /* RFC 9112 §6.1: both is a smuggling attempt; only chunked alone is a coding we decode */
    if (te && (cl || codings != 1 || !last_chunked))
        return WS_E_HTTP_BAD;
    out->chunked = te;
    return 0;
}

enum {
    CH_SIZE,
    CH_EXT,
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER,
    CH_TRAILER_LINE,
    CH_TRAILER_LF,
    CH_END_LF,
    CH_DONE,
};

void ws_http_chunked_init(struct ws_http_chunked *d)
{
    memset(d, 0, sizeof(*d));
}

int ws_http_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* RFC 9112 §7.1: chunked-body = *chunk last-chunk trailer-section CRLF, chunk = chunk-size
 * [ chunk-ext ] CRLF chunk-data CRLF. Bare LF is refused, as in the head (§2.2). */
int ws_http_chunked_decode(struct ws_http_chunked *d, uint8_t *buf, size_t len, uint64_t max_bytes)
{
    size_t i = d->in;
    /* endless extensions or trailers are no body either: the coding's own bytes are bounded */
    uint64_t max_total = max_bytes * 8 + 65536;
    while (i < len && d->state != CH_DONE) {
        if (d->total + (i - d->in) >= max_total)
            return WS_E_HTTP_BODY_TOO_LARGE;
        uint8_t ch = buf[i];
        switch (d->state) {
        case CH_SIZE: {
            int v = ws_http_hexval(ch);
            if (v < 0) {
                if (!d->digits)
                    return WS_E_HTTP_BAD;
                d->state = CH_EXT; /* this byte is looked at again there */
                break;
            }
            if (++d->digits > 16)
                return WS_E_HTTP_BAD;
            d->remaining = d->remaining * 16 + (uint64_t)v;
            i++;
            break;
        }
        case CH_EXT: /* chunk extensions are skipped up to the line's end */
            if (ch == '\r')
                d->state = CH_SIZE_LF;
            else if (ch == '\n' || (ch < 0x20 && ch != '\t') || ch == 0x7f)
                return WS_E_HTTP_BAD;
            i++;
            break;
        case CH_SIZE_LF:
            if (ch != '\n')
                return WS_E_HTTP_BAD;
            i++;
            if (d->remaining == 0) {
                d->state = CH_TRAILER;
            } else {
                if (d->remaining > max_bytes - d->out)
                    return WS_E_HTTP_BODY_TOO_LARGE;
                d->state = CH_DATA;
            }
            break;
        case CH_DATA: {
            size_t n = len - i;
            if (n > d->remaining)
                n = (size_t)d->remaining;
            memmove(buf + d->out, buf + i, n);
            d->out += n;
            i += n;
            d->remaining -= n;
            if (!d->remaining)
                d->state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
        case CH_TRAILER_LF:
        case CH_END_LF:
        case CH_DATA_LF: {
            uint8_t want = d->state == CH_DATA_CR ? '\r' : '\n';
            if (ch != want)
                return WS_E_HTTP_BAD;
            i++;
            if (d->state == CH_DATA_CR) {
                d->state = CH_DATA_LF;
            } else if (d->state == CH_DATA_LF) {
                d->state = CH_SIZE;
                d->digits = 0;
            } else {
                d->state = d->state == CH_END_LF ? CH_DONE : CH_TRAILER;
            }
            break;
        }
        case CH_TRAILER: /* an empty line ends the body; anything else is a trailer field */
            if (ch == '\r') {
                d->state = CH_END_LF;
                i++;
            } else {
                d->state = CH_TRAILER_LINE;
            }
            break;
        case CH_TRAILER_LINE:
            if (ch == '\n')
                return WS_E_HTTP_BAD;
            if (ch == '\r')
                d->state = CH_TRAILER_LF;
            i++;
            break;
        }
    }
    d->total += i - d->in;
    d->in = i;
    return d->state == CH_DONE ? 0 : WS_E_AGAIN;
}
