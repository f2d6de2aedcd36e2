/* Fuzz target for the request-head parser (src/proto/http.c). The whole input is the request bytes;
 * the first byte also picks a split position and a small head limit. For the default limit (8192)
 * and the small one, checks that:
 *   - one-shot parsing, two calls split at the chosen position (the first on an exact-size heap
 *     copy, carrying *scanned) and byte-by-byte growth give the same result and the same spans;
 *   - the result agrees with simple oracles: success means the head ends at the first CRLF CRLF
 *     within the limit; WS_E_AGAIN means no terminator yet, nothing invalid and room left;
 *     WS_E_HTTP_TOO_LARGE means the limit or the field count was reached;
 *   - on success every span lies inside the head, the spans rebuild the head line by line
 *     (method SP target SP HTTP/1.d CRLF, name ":" OWS value OWS CRLF ...), names and the method
 *     are tokens, values are trimmed and free of controls;
 *   - the list helpers (ws_http_next_token, has_token, header, header_count) agree with the spans;
 *   - bytes after the head (pipelined requests) parse the same way. */
#include "fuzz.h"

#include "ws/err.h"
#include "ws/http.h"

#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_HEAD 8192

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_tchar_ref(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c));
}

static bool span_in(struct ws_span s, const char *base, size_t len)
{
    return s.p >= base && s.n <= len && (size_t)(s.p - base) <= len - s.n;
}

/* Offset of the first CRLF CRLF ending within buf[0..len), plus 4; 0 when none. */
static size_t find_end(const char *buf, size_t len)
{
    for (size_t i = 3; i < len; i++) {
        if (buf[i - 3] == '\r' && buf[i - 2] == '\n' && buf[i - 1] == '\r' && buf[i] == '\n')
            return i + 1;
    }
    return 0;
}

/* True when buf[0..n) holds a byte the head may never contain: NUL, a CR not followed by LF
 * (inside the range), or an LF not preceded by CR. */
static bool has_bad_byte(const char *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '\0')
            return true;
        if (buf[i] == '\r' && i + 1 < n && buf[i + 1] != '\n')
            return true;
        if (buf[i] == '\n' && (i == 0 || buf[i - 1] != '\r'))
            return true;
    }
    return false;
}

static size_t count_lines(const char *buf, size_t head_len)
{
    size_t n = 0;
    for (size_t i = 0; i + 1 < head_len; i++)
        n += buf[i] == '\r' && buf[i + 1] == '\n';
    return n;
}

/* The list helpers over one field value. */
static void check_tokens(const struct ws_http_request *req, const struct ws_http_header *h)
{
    struct ws_span list = h->value, t;
    size_t count = 0;
    while (ws_http_next_token(&list, &t)) {
        FUZZ_CHECK(++count <= h->value.n);
        FUZZ_CHECK(span_in(t, h->value.p, h->value.n));
        FUZZ_CHECK(span_in(list, h->value.p, h->value.n));
        FUZZ_CHECK(t.n > 0 && !is_ows(t.p[0]) && !is_ows(t.p[t.n - 1]));
        FUZZ_CHECK(memchr(t.p, ',', t.n) == NULL);
        FUZZ_CHECK(list.p >= t.p + t.n);
        if (t.n < 64 && count <= 4) {
            char name[128], tok[64];
            size_t nn = h->name.n < sizeof name ? h->name.n : sizeof name - 1;
            memcpy(name, h->name.p, nn);
            name[nn] = 0;
            memcpy(tok, t.p, t.n);
            tok[t.n] = 0;
            if (nn == h->name.n)
                FUZZ_CHECK(ws_http_header_has_token(req, name, tok));
        }
    }
    FUZZ_CHECK(list.n == 0);
    /* A list without elements is only separators and whitespace. */
    if (count == 0) {
        for (size_t i = 0; i < h->value.n; i++)
            FUZZ_CHECK(h->value.p[i] == ',' || is_ows(h->value.p[i]));
    }
}

/* Invariants of a successful parse of buf[0..len). */
static void check_request(const char *buf, size_t len, const struct ws_http_request *req)
{
    size_t head = req->head_len;
    FUZZ_CHECK(head >= 4 && head <= len);
    FUZZ_CHECK(memcmp(buf + head - 4, "\r\n\r\n", 4) == 0);
    FUZZ_CHECK(req->nheaders <= WS_HTTP_MAX_HEADERS);
    FUZZ_CHECK(req->nheaders + 1 == count_lines(buf, head) - 1);

    /* RFC 9112 §3: request-line = method SP request-target SP HTTP-version CRLF. */
    FUZZ_CHECK(req->method.p == buf && req->method.n > 0);
    for (size_t i = 0; i < req->method.n; i++)
        FUZZ_CHECK(is_tchar_ref((unsigned char)req->method.p[i]));
    FUZZ_CHECK(buf[req->method.n] == ' ');
    FUZZ_CHECK(req->target.p == buf + req->method.n + 1 && req->target.n > 0);
    FUZZ_CHECK(span_in(req->target, buf, head));
    for (size_t i = 0; i < req->target.n; i++) {
        unsigned char c = (unsigned char)req->target.p[i];
        FUZZ_CHECK(c > 0x20 && c != 0x7f);
    }
    const char *p = req->target.p + req->target.n;
    FUZZ_CHECK((size_t)(p - buf) + 11 <= head);
    FUZZ_CHECK(memcmp(p, " HTTP/1.", 8) == 0 && p[8] - '0' == req->version_minor);
    FUZZ_CHECK(req->version_minor >= 0 && req->version_minor <= 9);
    FUZZ_CHECK(p[9] == '\r' && p[10] == '\n');
    p += 11;

    /* RFC 9112 §5: field-line = field-name ":" OWS field-value OWS CRLF. */
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct ws_http_header *h = &req->headers[i];
        FUZZ_CHECK(h->name.p == p && h->name.n > 0);
        FUZZ_CHECK(span_in(h->name, buf, head) && span_in(h->value, buf, head));
        for (size_t k = 0; k < h->name.n; k++)
            FUZZ_CHECK(is_tchar_ref((unsigned char)h->name.p[k]));
        p += h->name.n;
        FUZZ_CHECK(*p == ':');
        p++;
        FUZZ_CHECK(h->value.p >= p);
        for (; p < h->value.p; p++)
            FUZZ_CHECK(is_ows(*p));
        if (h->value.n > 0)
            FUZZ_CHECK(!is_ows(h->value.p[0]) && !is_ows(h->value.p[h->value.n - 1]));
        for (size_t k = 0; k < h->value.n; k++) {
            unsigned char c = (unsigned char)h->value.p[k];
            FUZZ_CHECK((c >= 0x20 || c == '\t') && c != 0x7f);
        }
        p = h->value.p + h->value.n;
        while (*p != '\r') {
            FUZZ_CHECK(is_ows(*p));
            p++;
        }
        FUZZ_CHECK(p[1] == '\n');
        p += 2;

        /* Lookups by name find this field or an earlier one of the same name. */
        char name[128];
        if (h->name.n < sizeof name) {
            memcpy(name, h->name.p, h->name.n);
            name[h->name.n] = 0;
            const struct ws_span *v = ws_http_header(req, name);
            FUZZ_CHECK(v != NULL && v <= &h->value);
            size_t same = 0;
            for (size_t k = 0; k < req->nheaders; k++)
                same += req->headers[k].name.n == h->name.n &&
                        strncasecmp(req->headers[k].name.p, name, h->name.n) == 0;
            FUZZ_CHECK(ws_http_header_count(req, name) == same);
        }
        check_tokens(req, h);
    }
    FUZZ_CHECK(p == buf + head - 2);

    /* The known fields' slots agree with the lookups by name. */
    for (int f = 0; f < WS_HTTP_FIELDS; f++) {
        const char *name = ws_http_field_name((enum ws_http_field)f);
        FUZZ_CHECK(ws_http_field(req, (enum ws_http_field)f) == ws_http_header(req, name));
        FUZZ_CHECK(ws_http_field_count(req, (enum ws_http_field)f) ==
                   ws_http_header_count(req, name));
    }
}

/* The parse's result, relative to its buffer so results from different copies compare. */
struct result {
    int rc;
    struct ws_http_request req;
    const char *base;
};

static bool span_same(struct ws_span a, const char *abase, struct ws_span b, const char *bbase)
{
    return a.n == b.n && (a.n == 0 || a.p - abase == b.p - bbase);
}

static void check_same(const struct result *a, const struct result *b)
{
    FUZZ_CHECK(a->rc == b->rc);
    if (a->rc != 0)
        return;
    const struct ws_http_request *x = &a->req, *y = &b->req;
    FUZZ_CHECK(x->head_len == y->head_len);
    FUZZ_CHECK(x->version_minor == y->version_minor);
    FUZZ_CHECK(span_same(x->method, a->base, y->method, b->base));
    FUZZ_CHECK(span_same(x->target, a->base, y->target, b->base));
    FUZZ_CHECK(x->nheaders == y->nheaders);
    for (size_t i = 0; i < x->nheaders; i++) {
        FUZZ_CHECK(span_same(x->headers[i].name, a->base, y->headers[i].name, b->base));
        FUZZ_CHECK(span_same(x->headers[i].value, a->base, y->headers[i].value, b->base));
    }
}

/* One-shot parse plus the oracles on its result. */
static void parse_whole(const char *buf, size_t len, size_t max, struct result *r)
{
    size_t scanned = 0;
    r->base = buf;
    r->rc = ws_http_parse(buf, len, max, &scanned, &r->req);
    size_t end = find_end(buf, len < max ? len : max);
    switch (r->rc) {
    case 0:
        FUZZ_CHECK(end > 0 && r->req.head_len == end && end <= max);
        FUZZ_CHECK(!has_bad_byte(buf, end));
        check_request(buf, len, &r->req);
        break;
    case WS_E_AGAIN:
        FUZZ_CHECK(end == 0 && len < max);
        FUZZ_CHECK(len == 0 || is_tchar_ref((unsigned char)buf[0]));
        FUZZ_CHECK(!has_bad_byte(buf, len));
        FUZZ_CHECK(scanned == len);
        break;
    case WS_E_HTTP_TOO_LARGE:
        if (end > 0)
            FUZZ_CHECK(count_lines(buf, end) - 2 > WS_HTTP_MAX_HEADERS);
        else
            FUZZ_CHECK(len >= max);
        break;
    case WS_E_HTTP_VERSION:
        FUZZ_CHECK(end > 0);
        break;
    default:
        FUZZ_CHECK(r->rc == WS_E_HTTP_BAD);
        break;
    }
}

/* Two calls: buf[0..cut) from its own exact-size copy, then buf[0..len) carrying *scanned. */
static void parse_split(const char *buf, size_t len, size_t cut, size_t max,
                        const struct result *whole)
{
    struct result r;
    size_t scanned = 0;
    char *copy = (char *)fuzz_dup(buf, cut);
    r.base = copy;
    r.rc = ws_http_parse(copy, cut, max, &scanned, &r.req);
    if (r.rc != WS_E_AGAIN) {
        /* Decided on the prefix: the whole input must decide the same way. */
        check_same(whole, &r);
        free(copy);
        return;
    }
    FUZZ_CHECK(scanned <= cut);
    free(copy);
    r.base = buf;
    r.rc = ws_http_parse(buf, len, max, &scanned, &r.req);
    check_same(whole, &r);
}

/* One byte more per call, like a peer trickling the head in. */
static void parse_trickle(const char *buf, size_t len, size_t max, const struct result *whole)
{
    struct result r;
    size_t scanned = 0;
    r.base = buf;
    r.rc = WS_E_AGAIN;
    for (size_t n = 1; n <= len && r.rc == WS_E_AGAIN; n++) {
        r.rc = ws_http_parse(buf, n, max, &scanned, &r.req);
        if (r.rc == WS_E_AGAIN)
            FUZZ_CHECK(scanned == n);
    }
    check_same(whole, &r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    size_t scanned = 0;
    struct ws_http_request req;
    if (size == 0) {
        FUZZ_CHECK(ws_http_parse(buf, 0, MAX_HEAD, &scanned, &req) == WS_E_AGAIN);
        return 0;
    }
    /* A split anywhere, scaled so the common leading letters still reach every position. */
    size_t cut = (size_t)(((uint64_t)data[0] * 0x9E3779B1u) % (size + 1));
    size_t limits[2] = {MAX_HEAD, 8 + (size_t)(data[0] & 0x3F) * 4};
    for (size_t i = 0; i < 2; i++) {
        struct result whole;
        parse_whole(buf, size, limits[i], &whole);
        parse_split(buf, size, cut, limits[i], &whole);
        parse_split(buf, size, size / 2, limits[i], &whole);
        parse_trickle(buf, size, limits[i], &whole);
    }

    /* Pipelined: what follows a head is the next request. */
    const char *p = buf;
    size_t left = size;
    for (int k = 0; k < 4 && left > 0; k++) {
        struct result r;
        parse_whole(p, left, MAX_HEAD, &r);
        if (r.rc != 0)
            break;
        p += r.req.head_len;
        left -= r.req.head_len;
    }
    return 0;
}
