/* Fuzz target for the UTF-8 validator (src/utf8.c). The whole input is the text. Checks that
 * ws_utf8_validate, whole-buffer ws_utf8_feed, byte-at-a-time feeding and feeding in chunks (sizes
 * derived from the input) at every word alignment agree with a slow reference built from RFC 3629
 * code point ranges, including the index of the first byte that fails (fail-fast) and stickiness.
 */
#include "fuzz.h"

#include "ws/err.h"
#include "ws/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t bad = 0;
    int ref = fuzz_ref_utf8(data, size, &bad);

    /* Whole. */
    FUZZ_CHECK((ws_utf8_validate(data, size) == 0) == (ref == 1));
    FUZZ_CHECK(ws_utf8_validate(data, size) == 0 || ws_utf8_validate(data, size) == WS_E_UTF8);
    struct ws_utf8 v;
    ws_utf8_init(&v);
    int rc = ws_utf8_feed(&v, data, size);
    FUZZ_CHECK(rc == (ref < 0 ? WS_E_UTF8 : 0));
    FUZZ_CHECK(ws_utf8_complete(&v) == (ref == 1));

    /* Byte at a time: the first failing byte is exactly the reference's. */
    ws_utf8_init(&v);
    size_t i;
    for (i = 0; i < size; i++) {
        if (ws_utf8_feed(&v, data + i, 1) < 0)
            break;
        /* Prefix completeness, sampled to keep the run linear on big inputs. */
        if (size <= 128 || i % 61 == 0) {
            size_t b2 = 0;
            int r2 = fuzz_ref_utf8(data, i + 1, &b2);
            FUZZ_CHECK(r2 >= 0 && ws_utf8_complete(&v) == (r2 == 1));
        }
    }
    if (ref < 0) {
        FUZZ_CHECK(i == bad);
        /* Sticky: nothing, not even valid ASCII or an empty feed, revives it. */
        FUZZ_CHECK(ws_utf8_feed(&v, (const uint8_t *)"a", 1) == WS_E_UTF8);
        FUZZ_CHECK(ws_utf8_feed(&v, NULL, 0) == WS_E_UTF8);
        FUZZ_CHECK(!ws_utf8_complete(&v));
    } else {
        FUZZ_CHECK(i == size);
    }

    /* Chunks at each alignment of the word-at-a-time ASCII path, from exact-size copies. */
    uint8_t c0 = size ? data[0] : 0, c1 = size > 1 ? data[size - 1] : 0;
    for (size_t align = 0; align < 8; align++) {
        uint8_t *copy = fuzz_malloc(size + align);
        if (size)
            memcpy(copy + align, data, size);
        struct fuzz_chunker ch;
        fuzz_chunker_init(&ch, (uint8_t)(c0 + align), c1);
        ws_utf8_init(&v);
        size_t off = 0;
        rc = 0;
        while (off < size) {
            size_t n = fuzz_chunker_next(&ch);
            if (n > size - off)
                n = size - off;
            rc = ws_utf8_feed(&v, copy + align + off, n);
            off += n;
            if (rc < 0) {
                /* Fails in the chunk holding the first bad byte, never earlier. */
                FUZZ_CHECK(ref < 0 && bad < off && bad >= off - n);
                break;
            }
        }
        if (rc == 0)
            FUZZ_CHECK(ref >= 0 && ws_utf8_complete(&v) == (ref == 1));
        free(copy);
    }
    return 0;
}
