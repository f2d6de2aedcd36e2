/* HTTP/1.1 request-head parser (RFC 9112 §2-5) and comma-list helpers. It finds the end of the
 * head incrementally, then parses the request line and fields into spans of the caller's buffer.
 * It does not allocate, read bodies (http_body.c), decode the target or accept obs-fold. Pure. */
#include "ws/http.h"

#include "ws/err.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

/* RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 * "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA. A table: names are read a byte at a time. */
#define TCHAR_RANGE(a, b) [a... b] = true
static const bool tchar[256] = {
    TCHAR_RANGE('0', '9'), TCHAR_RANGE('a', 'z'), TCHAR_RANGE('A', 'Z'), ['!'] = true,
    ['#'] = true,          ['$'] = true,          ['%'] = true,          ['&'] = true,
    ['\''] = true,         ['*'] = true,          ['+'] = true,          ['-'] = true,
    ['.'] = true,          ['^'] = true,          ['_'] = true,          ['`'] = true,
    ['|'] = true,          ['~'] = true,
};

bool ws_http_is_tchar(unsigned char c)
{
    return tchar[c];
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* Looks at buf[from..to) for the CRLF CRLF ending the head, rejecting bytes that can never be part
 * of a head as early as possible (so a peer cannot keep us waiting with garbage). Sets *head_len
 * (0 when not found yet); returns 0 or WS_E_HTTP_BAD. */
static int scan(const char *buf, size_t from, size_t to, size_t *head_len)
{
    *head_len = 0;
    size_t i = from;
    /* a CR that ended the bytes of an earlier call */
    if (i > 0 && i < to && buf[i - 1] == '\r' && buf[i] != '\n')
        return WS_E_HTTP_BAD;
    /* a line at a time, with memchr and strnlen rather than a test per byte */
    while (i < to) {
        const char *nl = memchr(buf + i, '\n', to - i);
        size_t end = nl ? (size_t)(nl - buf) : to; /* the line's bytes before its LF */
        /* RFC 9112 §2.2: NUL never belongs in a head; a bare CR is invalid: a CR is only
         * allowed right before the LF (or as the last byte so far) */
        if (strnlen(buf + i, end - i) != end - i)
            return WS_E_HTTP_BAD;
        const char *cr = end > i ? memchr(buf + i, '\r', end - i) : NULL;
        if (cr && (size_t)(cr - buf) != end - 1)
            return WS_E_HTTP_BAD;
        if (!nl)
            return 0;
        /* RFC 9112 §2.2: we accept only CRLF line endings, not a bare LF. */
        if (end == 0 || buf[end - 1] != '\r')
            return WS_E_HTTP_BAD;
        if (end >= 3 && buf[end - 3] == '\r' && buf[end - 2] == '\n') {
            *head_len = end + 1;
            return 0;
        }
        i = end + 1;
    }
    return 0;
}

/* RFC 9112 §3: request-line = method SP request-target SP HTTP-version */
static int parse_request_line(const char *p, const char *eol, struct ws_http_request *req)
{
    const char *s = p;
    while (p < eol && tchar[(unsigned char)*p])
        p++;
    if (p == s || p == eol || *p != ' ')
        return WS_E_HTTP_BAD;
    req->method = (struct ws_span){s, (size_t)(p - s)};

    s = ++p;
    /* RFC 9112 §3.2: the target holds no whitespace or control characters. obs-text is let
     * through: some clients send raw UTF-8 paths, and the router decides what to make of them. */
    while (p < eol && (unsigned char)*p > 0x20 && *p != 0x7f)
        p++;
    if (p == s || p == eol || *p != ' ')
        return WS_E_HTTP_BAD;
    req->target = (struct ws_span){s, (size_t)(p - s)};

    s = ++p;
    /* RFC 9112 §2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive. */
    if (eol - s != 8 || memcmp(s, "HTTP/", 5) != 0 || s[5] < '0' || s[5] > '9' || s[6] != '.' ||
        s[7] < '0' || s[7] > '9')
        return WS_E_HTTP_BAD;
    /* RFC 9110 §2.5: a higher minor version of HTTP/1 is handled as the highest we know (1.1) */
    if (s[5] != '1')
        return WS_E_HTTP_VERSION;
    req->version_minor = s[7] - '0';
    return 0;
}

/* The names of enum ws_http_field, as they are usually written. */
static const struct {
    const char *name;
    size_t len;
} known[WS_HTTP_FIELDS] = {
#define F(id, s) [id] = {s, sizeof(s) - 1}
    F(WS_HTTP_HOST, "Host"),
    F(WS_HTTP_UPGRADE, "Upgrade"),
    F(WS_HTTP_CONNECTION, "Connection"),
    F(WS_HTTP_SEC_WEBSOCKET_KEY, "Sec-WebSocket-Key"),
    F(WS_HTTP_SEC_WEBSOCKET_VERSION, "Sec-WebSocket-Version"),
    F(WS_HTTP_SEC_WEBSOCKET_PROTOCOL, "Sec-WebSocket-Protocol"),
    F(WS_HTTP_SEC_WEBSOCKET_EXTENSIONS, "Sec-WebSocket-Extensions"),
    F(WS_HTTP_ORIGIN, "Origin"),
    F(WS_HTTP_USER_AGENT, "User-Agent"),
    F(WS_HTTP_X_FORWARDED_FOR, "X-Forwarded-For"),
    F(WS_HTTP_CONTENT_LENGTH, "Content-Length"),
    F(WS_HTTP_TRANSFER_ENCODING, "Transfer-Encoding"),
#undef F
};

static uint64_t load8(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint32_t load4(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* name[0..n) equals the known name k but for ASCII case, a word at a time. name holds tchars
 * only (parse_field checked them) and k letters and '-' only: with bit 0x20 set in both, no
 * other tchar becomes a letter or '-', so the folded bytes are equal exactly when the names
 * are. */
static bool known_ieq(const char *name, const char *k, size_t n)
{
    const uint64_t fold8 = 0x2020202020202020u;
    const uint32_t fold4 = 0x20202020u;
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8)
            if ((load8(name + i) | fold8) != (load8(k + i) | fold8))
                return false;
        return (load8(name + n - 8) | fold8) == (load8(k + n - 8) | fold8);
    }
    if (n >= 4)
        return (load4(name) | fold4) == (load4(k) | fold4) &&
               (load4(name + n - 4) | fold4) == (load4(k + n - 4) | fold4);
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)name[i] | 0x20) != ((unsigned char)k[i] | 0x20))
            return false;
    return true;
}

/* Which known field name is, or WS_HTTP_FIELDS: its length (and for two lengths its first
 * letter) leaves one candidate, and one comparison decides. */
static int classify(struct ws_span name)
{
    int f;
    switch (name.n) {
    case 4:
        f = WS_HTTP_HOST;
        break;
    case 6:
        f = WS_HTTP_ORIGIN;
        break;
    case 7:
        f = WS_HTTP_UPGRADE;
        break;
    case 10:
        f = lower((unsigned char)name.p[0]) == 'c' ? WS_HTTP_CONNECTION : WS_HTTP_USER_AGENT;
        break;
    case 14:
        f = WS_HTTP_CONTENT_LENGTH;
        break;
    case 15:
        f = WS_HTTP_X_FORWARDED_FOR;
        break;
    case 17:
        f = lower((unsigned char)name.p[0]) == 's' ? WS_HTTP_SEC_WEBSOCKET_KEY
                                                   : WS_HTTP_TRANSFER_ENCODING;
        break;
    case 21:
        f = WS_HTTP_SEC_WEBSOCKET_VERSION;
        break;
    case 22:
        f = WS_HTTP_SEC_WEBSOCKET_PROTOCOL;
        break;
    case 24:
        f = WS_HTTP_SEC_WEBSOCKET_EXTENSIONS;
        break;
    default:
        return WS_HTTP_FIELDS;
    }
    assert(known[f].len == name.n);
    return known_ieq(name.p, known[f].name, name.n) ? f : WS_HTTP_FIELDS;
}

/* True when p[0..n) holds a control character other than HTAB or a DEL (RFC 9110 §5.5: CR, LF
 * and NUL are invalid in a field value), 8 bytes at a time: a word with no byte below 0x20 and
 * none equal to 0x7f passes at once (the tests are exact for "some byte is"); from a word that
 * has one, often a HTAB, the bytes are looked at one by one. */
static bool has_ctl(const char *p, size_t n)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = load8(p + i);
        uint64_t del = v ^ (ones * 0x7f);
        if ((((v - ones * 0x20) & ~v) | ((del - ones) & ~del)) & highs)
            break;
    }
    for (; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return true;
    }
    return false;
}

/* RFC 9112 §5: field-line = field-name ":" OWS field-value OWS */
static int parse_field(const char *p, const char *eol, struct ws_http_header *h)
{
    /* RFC 9112 §5.2: obs-fold (a line starting with whitespace) is rejected with 400. */
    if (is_ows(*p))
        return WS_E_HTTP_BAD;
    const char *s = p;
    while (p < eol && tchar[(unsigned char)*p])
        p++;
    /* RFC 9112 §5.1: no whitespace between the name and the colon. */
    if (p == s || p == eol || *p != ':')
        return WS_E_HTTP_BAD;
    h->name = (struct ws_span){s, (size_t)(p - s)};

    p++;
    while (p < eol && is_ows(*p))
        p++;
    const char *e = eol;
    while (e > p && is_ows(e[-1]))
        e--;
    /* RFC 9110 §5.5: field-value is VCHAR / obs-text / SP / HTAB; CR, LF, NUL and other
     * controls are invalid. */
    if (has_ctl(p, (size_t)(e - p)))
        return WS_E_HTTP_BAD;
    h->value = (struct ws_span){p, (size_t)(e - p)};
    return 0;
}

/* RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]. The reason is
 * not kept: nothing may depend on it (RFC 9112 §4). */
static int parse_status_line(const char *p, const char *eol, struct ws_http_request *req)
{
    if (eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[7] < '0' || p[7] > '9' || p[8] != ' ')
        return eol - p >= 5 && memcmp(p, "HTTP/", 5) == 0 && p[5] != '1' ? WS_E_HTTP_VERSION
                                                                         : WS_E_HTTP_BAD;
    req->version_minor = p[7] - '0';
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9')
            return WS_E_HTTP_BAD;
        status = status * 10 + (p[i] - '0');
    }
    /* RFC 9112 §4 wants a space after the code even without a reason phrase; servers that end
     * the line right after the code are common, so that is taken too */
    if (eol - p > 12 && p[12] != ' ')
        return WS_E_HTTP_BAD;
    if (status < 100)
        return WS_E_HTTP_BAD;
    req->status = status;
    return 0;
}

/* Parses the complete head buf[0..head_len), which ends with CRLF CRLF: a request, or a
 * response when response is set. */
static int parse_head(const char *buf, size_t head_len, bool response, struct ws_http_request *req)
{
    const char *p = buf;
    const char *end = buf + head_len - 2; /* the final empty line's CRLF */
    bool first = true;
    while (p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol || eol[1] != '\n')
            return WS_E_HTTP_BAD;
        if (first) {
            int rc = response ? parse_status_line(p, eol, req) : parse_request_line(p, eol, req);
            if (rc < 0)
                return rc;
            first = false;
        } else {
            if (req->nheaders == WS_HTTP_MAX_HEADERS)
                return WS_E_HTTP_TOO_LARGE;
            int rc = parse_field(p, eol, &req->headers[req->nheaders]);
            if (rc < 0)
                return rc;
            int f = classify(req->headers[req->nheaders].name);
            req->nheaders++;
            if (f < WS_HTTP_FIELDS && req->field_count[f]++ == 0)
                req->field_first[f] = (uint8_t)req->nheaders;
        }
        p = eol + 2;
    }
    /* An empty request line ("\r\n\r\n"). */
    return first ? WS_E_HTTP_BAD : 0;
}

static int parse(const char *buf, size_t len, size_t max_head_bytes, size_t *scanned, bool response,
                 struct ws_http_request *req)
{
    assert(buf || len == 0);
    assert(scanned && req);
    if (len == 0)
        return WS_E_AGAIN;
    /* Fail fast on bytes that cannot start a request line (e.g. TLS sent to a plain port). */
    if (!tchar[(unsigned char)buf[0]])
        return WS_E_HTTP_BAD;

    /* Bytes before *scanned were checked by earlier calls. scan() looks back up to 3 bytes from
     * each new byte, so a terminator straddling the previous end is still found: feeding one byte
     * at a time stays linear. */
    size_t to = len < max_head_bytes ? len : max_head_bytes;
    size_t from = *scanned < to ? *scanned : to;
    size_t head_len;
    int rc = scan(buf, from, to, &head_len);
    if (rc < 0)
        return rc;
    if (head_len == 0) {
        if (len >= max_head_bytes)
            return WS_E_HTTP_TOO_LARGE;
        *scanned = len;
        return WS_E_AGAIN;
    }

    /* the fields, not the 64 header slots: only the first nheaders are read */
    req->method = req->target = req->body = (struct ws_span){NULL, 0};
    req->version_minor = req->status = 0;
    req->nheaders = 0;
    memset(req->field_first, 0, sizeof req->field_first);
    memset(req->field_count, 0, sizeof req->field_count);
    req->head_len = head_len;
    return parse_head(buf, req->head_len, response, req);
}

int ws_http_parse(const char *buf, size_t len, size_t max_head_bytes, size_t *scanned,
                  struct ws_http_request *req)
{
    return parse(buf, len, max_head_bytes, scanned, false, req);
}

int ws_http_parse_response(const char *buf, size_t len, size_t max_head_bytes, size_t *scanned,
                           struct ws_http_request *resp)
{
    return parse(buf, len, max_head_bytes, scanned, true, resp);
}

/* span equals s[0..n) but for ASCII case: the length decides most comparisons at once. */
static bool span_ieq_n(struct ws_span span, const char *s, size_t n)
{
    if (span.n != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = (unsigned char)span.p[i], b = (unsigned char)s[i];
        if (a != b && lower(a) != lower(b)) /* names mostly come in the case asked for */
            return false;
    }
    return true;
}

bool ws_span_ieq(struct ws_span span, const char *s)
{
    return span_ieq_n(span, s, strlen(s));
}

/* The lookups below measure name once, not once per field. */
const struct ws_span *ws_http_header(const struct ws_http_request *req, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++) {
        if (span_ieq_n(req->headers[i].name, name, n))
            return &req->headers[i].value;
    }
    return NULL;
}

size_t ws_http_header_count(const struct ws_http_request *req, const char *name)
{
    size_t n = strlen(name);
    size_t count = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (span_ieq_n(req->headers[i].name, name, n))
            count++;
    }
    return count;
}

/* RFC 9110 §5.6.1: #element lists skip empty elements and whitespace around commas. */
bool ws_http_next_token(struct ws_span *list, struct ws_span *token)
{
    const char *p = list->p;
    const char *end = list->p + list->n;
    while (p < end && (*p == ',' || is_ows(*p)))
        p++;
    if (p == end) {
        list->p = end;
        list->n = 0;
        return false;
    }
    const char *s = p;
    while (p < end && *p != ',')
        p++;
    const char *e = p;
    while (e > s && is_ows(e[-1]))
        e--;
    *token = (struct ws_span){s, (size_t)(e - s)};
    if (p < end)
        p++;
    list->p = p;
    list->n = (size_t)(end - p);
    return true;
}

bool ws_http_header_has_token(const struct ws_http_request *req, const char *name,
                              const char *token)
{
    /* RFC 9110 §5.3: repeated fields combine into one comma-separated list. */
    size_t n = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++) {
        if (!span_ieq_n(req->headers[i].name, name, n))
            continue;
        struct ws_span list = req->headers[i].value;
        struct ws_span t;
        while (ws_http_next_token(&list, &t)) {
            if (ws_span_ieq(t, token))
                return true;
        }
    }
    return false;
}

const struct ws_span *ws_http_field(const struct ws_http_request *req, enum ws_http_field f)
{
    assert(f < WS_HTTP_FIELDS);
    return req->field_first[f] ? &req->headers[req->field_first[f] - 1].value : NULL;
}

const char *ws_http_field_name(enum ws_http_field f)
{
    assert(f < WS_HTTP_FIELDS);
    return known[f].name;
}

size_t ws_http_field_count(const struct ws_http_request *req, enum ws_http_field f)
{
    assert(f < WS_HTTP_FIELDS);
    return req->field_count[f];
}

bool ws_http_field_has_token(const struct ws_http_request *req, enum ws_http_field f,
                             const char *token)
{
    assert(f < WS_HTTP_FIELDS);
    size_t left = req->field_count[f];
    size_t tn = strlen(token);
    /* RFC 9110 §5.3: repeated fields combine into one comma-separated list; the later ones
     * are found by name, from the first on */
    for (size_t i = req->field_first[f] ? req->field_first[f] - 1u : req->nheaders;
         left && i < req->nheaders; i++) {
        if (i + 1 != req->field_first[f] &&
            !span_ieq_n(req->headers[i].name, known[f].name, known[f].len))
            continue;
        left--;
        struct ws_span list = req->headers[i].value;
        if (span_ieq_n(list, token, tn)) /* the usual case: the token alone */
            return true;
        struct ws_span t;
        while (ws_http_next_token(&list, &t)) {
            if (span_ieq_n(t, token, tn))
                return true;
        }
    }
    return false;
}
