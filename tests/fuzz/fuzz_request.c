/* Fuzz target for reading a whole request (src/proto/request.c: head, framing, body, the chunked
 * decoder in src/proto/http_body.c). Input: a control byte (the split size), a second (the body
 * limit), then the request bytes. Checks that:
 *   - feeding the bytes in reads of the largest size (the slack) and in chunks of the chosen
 *     size gives the same result and, on success, the same head length and body bytes;
 *   - a body never exceeds the limit and lies inside the buffer;
 *   - a Content-Length body is exactly the bytes after the head;
 *   - a chunked body equals what a simple reference decoder makes of the same bytes. */
#include "fuzz.h"

#include "ws/err.h"
#include "ws/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The reference: the chunk data of buf[0..n), or -1 when malformed or incomplete. */
static long reference_chunked(const uint8_t *buf, size_t n, uint8_t *out)
{
    size_t i = 0, o = 0;
    for (;;) {
        uint64_t size = 0;
        size_t digits = 0;
        while (i < n && strchr("0123456789abcdefABCDEF", buf[i]) && buf[i]) {
            int v = buf[i] <= '9' ? buf[i] - '0' : (buf[i] | 0x20) - 'a' + 10;
            size = size * 16 + (uint64_t)v;
            if (++digits > 16)
                return -1;
            i++;
        }
        if (!digits)
            return -1;
        while (i < n && buf[i] != '\r') { /* extensions */
            if (buf[i] == '\n' || (buf[i] < 0x20 && buf[i] != '\t') || buf[i] == 0x7f)
                return -1;
            i++;
        }
        if (i + 1 >= n || buf[i + 1] != '\n')
            return -1;
        i += 2;
        if (size == 0)
            break;
        if (size > n - i || n - i - size < 2)
            return -1;
        memcpy(out + o, buf + i, (size_t)size);
        o += (size_t)size;
        i += (size_t)size;
        if (buf[i] != '\r' || buf[i + 1] != '\n')
            return -1;
        i += 2;
    }
    for (;;) { /* trailer lines, then the empty line */
        if (i + 1 < n && buf[i] == '\r' && buf[i + 1] == '\n')
            return (long)o;
        while (i < n && buf[i] != '\r') {
            if (buf[i] == '\n')
                return -1;
            i++;
        }
        if (i + 1 >= n || buf[i + 1] != '\n')
            return -1;
        i += 2;
    }
}

static int feed(const uint8_t *req, size_t n, size_t step, const struct ws_request_limits *lim,
                struct ws_request *r, struct ws_http_request *out)
{
    ws_request_init(r);
    int rc = WS_E_AGAIN;
    for (size_t off = 0; off < n && rc == WS_E_AGAIN; off += step) {
        size_t k = n - off < step ? n - off : step;
        rc = ws_request_feed(r, req + off, k, lim, out);
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t step = (size_t)(data[0] % 23) + 1;
    struct ws_request_limits lim = {512, (size_t)data[1] * 4, 64};
    const uint8_t *req = data + 2;
    size_t n = size - 2;

    struct ws_request whole, split;
    struct ws_http_request a, b;
    int rc1 = feed(req, n, lim.slack, &lim, &whole, &a); /* reads of the largest size */
    int rc2 = feed(req, n, step, &lim, &split, &b);
    FUZZ_CHECK(rc1 == rc2);
    if (rc1 == 0) {
        FUZZ_CHECK(a.head_len == b.head_len);
        FUZZ_CHECK(a.body.n == b.body.n);
        FUZZ_CHECK(a.body.n == 0 || memcmp(a.body.p, b.body.p, a.body.n) == 0);
        FUZZ_CHECK(a.body.n <= lim.max_body_bytes);
        if (a.body.p) {
            const uint8_t *base = whole.in.data;
            FUZZ_CHECK((const uint8_t *)a.body.p >= base + a.head_len);
            FUZZ_CHECK((const uint8_t *)a.body.p + a.body.n <= base + whole.in.len);
        }
        if (whole.framing.chunked) {
            uint8_t *ref = fuzz_malloc(n);
            long got = reference_chunked(req + a.head_len, n - a.head_len, ref);
            FUZZ_CHECK(got == (long)a.body.n);
            FUZZ_CHECK(a.body.n == 0 || memcmp(ref, a.body.p, a.body.n) == 0);
            free(ref);
        } else if (whole.framing.length) {
            FUZZ_CHECK(a.body.n == whole.framing.length);
            FUZZ_CHECK(memcmp(a.body.p, req + a.head_len, a.body.n) == 0);
        }
    }
    ws_request_reset(&whole);
    ws_request_reset(&split);
    return 0;
}
