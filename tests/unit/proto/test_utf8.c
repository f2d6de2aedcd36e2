/* Unit tests for the incremental UTF-8 validator: boundaries, the Autobahn 6.x cases, every
 * truncation and split, fail-fast positions, and an exhaustive cross-check of short sequences
 * against a slow reference written from RFC 3629's code point rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ws/err.h"
#include "ws/utf8.h"

#define VALID (-1)      /* complete, valid UTF-8 */
#define INCOMPLETE (-2) /* every byte fine, but a sequence is left open */

/* Reference: is p[0..n) a prefix of valid UTF-8? Works on code point ranges, not byte tables:
 * an open sequence is fine while some completion of it is a scalar value of the right length
 * (RFC 3629 §3: no overlongs, no surrogates, nothing above U+10FFFF). */
static bool ref_prefix_ok(const uint8_t *p, size_t n, bool *complete)
{
    size_t i = 0;

    while (i < n) {
        uint8_t b = p[i];
        size_t len;
        uint32_t cp, min;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xE0) == 0xC0) {
            len = 2, cp = b & 0x1F, min = 0x80;
        } else if ((b & 0xF0) == 0xE0) {
            len = 3, cp = b & 0x0F, min = 0x800;
        } else if ((b & 0xF8) == 0xF0) {
            len = 4, cp = b & 0x07, min = 0x10000;
        } else {
            return false;
        }
        size_t have = n - i < len ? n - i : len;
        for (size_t j = 1; j < have; j++) {
            if ((p[i + j] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + j] & 0x3F);
        }
        unsigned missing = (unsigned)(len - have);
        uint32_t lo = cp << (6 * missing), hi = lo | ((1u << (6 * missing)) - 1);
        if (lo < min)
            lo = min;
        if (hi > 0x10FFFF)
            hi = 0x10FFFF;
        if (lo > hi || (lo >= 0xD800 && hi <= 0xDFFF))
            return false;
        if (missing) {
            *complete = false;
            return true;
        }
        i += len;
    }
    *complete = true;
    return true;
}

/* Expected outcome from the reference: the index of the first impossible byte, or VALID or
 * INCOMPLETE. */
static long ref_outcome(const uint8_t *p, size_t n)
{
    bool complete = true;
    for (size_t k = 1; k <= n; k++)
        if (!ref_prefix_ok(p, k, &complete))
            return (long)k - 1;
    return complete ? VALID : INCOMPLETE;
}

/* Feeds byte by byte: the index of the call that failed, or VALID or INCOMPLETE. Also checks
 * that the error stays. */
static long bytewise_outcome(const uint8_t *p, size_t n)
{
    struct ws_utf8 v;
    ws_utf8_init(&v);
    for (size_t i = 0; i < n; i++) {
        if (ws_utf8_feed(&v, p + i, 1) != 0) {
            assert_int_equal(v.state, WS_UTF8_REJECT);
            assert_int_equal(ws_utf8_feed(&v, (const uint8_t *)"a", 1), WS_E_UTF8);
            assert_int_equal(ws_utf8_feed(&v, NULL, 0), WS_E_UTF8);
            assert_false(ws_utf8_complete(&v));
            return (long)i;
        }
    }
    return ws_utf8_complete(&v) ? VALID : INCOMPLETE;
}

/* One call over an exact-size heap copy of p[0..n), so ASan catches any over-read of the
 * word-at-a-time path: 0, or WS_E_UTF8, and *complete. */
static int feed_copy(const uint8_t *p, size_t n, bool *complete)
{
    uint8_t *copy = malloc(n ? n : 1);
    struct ws_utf8 v;
    int rc;

    assert_non_null(copy);
    if (n)
        memcpy(copy, p, n);
    ws_utf8_init(&v);
    rc = ws_utf8_feed(&v, copy, n);
    *complete = ws_utf8_complete(&v);
    assert_int_equal(ws_utf8_validate(copy, n), rc == 0 && *complete ? 0 : WS_E_UTF8);
    free(copy);
    return rc;
}

/* Outcome of single calls: the failing index is the shortest prefix whose one call fails. */
static long whole_outcome(const uint8_t *p, size_t n)
{
    bool complete;

    if (feed_copy(p, n, &complete) == 0)
        return complete ? VALID : INCOMPLETE;
    for (size_t k = 1; k < n; k++)
        if (feed_copy(p, k, &complete) != 0)
            return (long)k - 1;
    return (long)n - 1;
}

static void expect_outcome(const char *s, size_t n, long want)
{
    const uint8_t *p = (const uint8_t *)s;
    long got = bytewise_outcome(p, n);
    if (got != want)
        fail_msg("byte-wise outcome %ld, want %ld (input of %zu bytes)", got, want, n);
    assert_int_equal(ref_outcome(p, n), want);
    assert_int_equal(whole_outcome(p, n), want);
}

#define EXPECT(lit, want) expect_outcome(lit, sizeof(lit) - 1, want)

static void test_valid_lengths_and_boundaries(void **state)
{
    (void)state;
    EXPECT("", VALID);
    EXPECT("plain ASCII, long enough for several words of the fast path.", VALID);
    EXPECT("\x00", VALID);
    EXPECT("\x7f", VALID);                                  /* U+007F */
    EXPECT("\xc2\x80", VALID);                              /* U+0080 */
    EXPECT("\xdf\xbf", VALID);                              /* U+07FF */
    EXPECT("\xe0\xa0\x80", VALID);                          /* U+0800 */
    EXPECT("\xef\xbf\xbf", VALID);                          /* U+FFFF */
    EXPECT("\xf0\x90\x80\x80", VALID);                      /* U+10000 */
    EXPECT("\xf4\x8f\xbf\xbf", VALID);                      /* U+10FFFF */
    EXPECT("\xed\x9f\xbf", VALID);                          /* U+D7FF, just below the surrogates */
    EXPECT("\xee\x80\x80", VALID);                          /* U+E000, just above them */
    EXPECT("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", VALID); /* 1, 2, 3, 4 bytes */
}

static void test_overlong(void **state)
{
    (void)state;
    EXPECT("\xc0\x80", 0);             /* NUL in 2 */
    EXPECT("\xc1\xbf", 0);             /* U+007F in 2 */
    EXPECT("\xe0\x80\x80", 1);         /* NUL in 3 */
    EXPECT("\xe0\x9f\xbf", 1);         /* U+07FF in 3 */
    EXPECT("\xf0\x80\x80\x80", 1);     /* NUL in 4 */
    EXPECT("\xf0\x8f\xbf\xbf", 1);     /* U+FFFF in 4 */
    EXPECT("abcdefgh\xc0\xaf", 8);     /* '/' in 2, after a word of ASCII */
    EXPECT("abcdefgh\xe0\x80\xaf", 9); /* '/' in 3 */
}

static void test_surrogates_and_above_max(void **state)
{
    (void)state;
    EXPECT("\xed\xa0\x80", 1); /* U+D800 */
    EXPECT("\xed\xbf\xbf", 1); /* U+DFFF */
    EXPECT("\xed\xa0\x80\xed\xb0\x80", 1);
    EXPECT("\xf4\x90\x80\x80", 1); /* U+110000 */
    EXPECT("\xf5\x80\x80\x80", 0);
    EXPECT("\xf7\xbf\xbf\xbf", 0);
    EXPECT("\xf8\x88\x80\x80\x80", 0);     /* 5-byte form */
    EXPECT("\xfc\x84\x80\x80\x80\x80", 0); /* 6-byte form */
    EXPECT("\xfe", 0);
    EXPECT("\xff", 0);
}

static void test_lone_continuation_bytes(void **state)
{
    (void)state;
    for (unsigned b = 0x80; b <= 0xBF; b++) {
        uint8_t s[3] = {'a', (uint8_t)b, 'a'};
        assert_int_equal(bytewise_outcome(s, 3), 1);
        assert_int_equal(bytewise_outcome(s + 1, 2), 0);
    }
    EXPECT("\xc3\xa9\xa9", 2); /* one continuation too many */
}

/* Every proper prefix of a valid sequence is fine but incomplete; cutting it short by a
 * non-continuation byte fails at that byte. */
static void test_every_truncation(void **state)
{
    static const char *const seqs[] = {
        "\xc2\x80",         "\xdf\xbf",         "\xe0\xa0\x80",     "\xe1\x80\x80",
        "\xed\x9f\xbf",     "\xef\xbf\xbf",     "\xf0\x90\x80\x80", "\xf1\x80\x80\x80",
        "\xf3\xbf\xbf\xbf", "\xf4\x8f\xbf\xbf",
    };
    (void)state;
    for (size_t i = 0; i < sizeof seqs / sizeof seqs[0]; i++) {
        size_t len = strlen(seqs[i]);
        uint8_t buf[16] = "0123456789";
        for (size_t cut = 1; cut < len; cut++) {
            struct ws_utf8 v;
            ws_utf8_init(&v);
            assert_int_equal(ws_utf8_feed(&v, (const uint8_t *)seqs[i], cut), 0);
            assert_false(ws_utf8_complete(&v));
            assert_int_equal(ws_utf8_validate((const uint8_t *)seqs[i], cut), WS_E_UTF8);
            /* After ASCII, through the fast path. */
            memcpy(buf + 10, seqs[i], cut);
            assert_int_equal(whole_outcome(buf, 10 + cut), INCOMPLETE);
            /* Interrupted by ASCII: fails at that byte. */
            buf[10 + cut] = 'x';
            assert_int_equal(bytewise_outcome(buf, 10 + cut + 1), (long)(10 + cut));
        }
    }
}

static const char mixed[] = "ASCII run of some length \xc2\x80\xdf\xbf|\xe0\xa0\x80\xef\xbf\xbf"
                            "\xed\x9f\xbf\xee\x80\x80|\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"
                            " \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5 and more ASCII text"
                            "\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xe2\x82\xac\xe2\x82\xac\x7f";

/* Any split into two or three chunks gives the result of one call. */
static void test_every_split(void **state)
{
    const uint8_t *p = (const uint8_t *)mixed;
    size_t n = sizeof mixed - 1;
    (void)state;
    assert_int_equal(ws_utf8_validate(p, n), 0);
    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            struct ws_utf8 v;
            ws_utf8_init(&v);
            assert_int_equal(ws_utf8_feed(&v, p, i), 0);
            assert_int_equal(ws_utf8_feed(&v, p + i, j - i), 0);
            assert_int_equal(ws_utf8_feed(&v, p + j, n - j), 0);
            assert_true(ws_utf8_complete(&v));
        }
    }
    /* Each alignment of the fast path, with an exact-size heap copy. */
    for (size_t off = 0; off < 16; off++)
        assert_int_equal(whole_outcome(p + off, n - off), VALID);
}

/* The error comes from the feed call holding the first impossible byte, never later. */
static void test_fail_fast(void **state)
{
    static const char s[] = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"
                            "edited";
    const uint8_t *p = (const uint8_t *)s;
    size_t n = sizeof s - 1;
    (void)state;
    assert_int_equal(bytewise_outcome(p, n), 12); /* the 0xA0 */
    for (size_t i = 0; i <= n; i++) {
        struct ws_utf8 v;
        ws_utf8_init(&v);
        assert_int_equal(ws_utf8_feed(&v, p, i), i > 12 ? WS_E_UTF8 : 0);
        if (i <= 12)
            assert_int_equal(ws_utf8_feed(&v, p + i, n - i), WS_E_UTF8);
    }
    /* Init clears the sticky error. */
    struct ws_utf8 v;
    ws_utf8_init(&v);
    assert_int_equal(ws_utf8_feed(&v, p, n), WS_E_UTF8);
    ws_utf8_init(&v);
    assert_int_equal(ws_utf8_feed(&v, p, 11), 0);
    assert_true(ws_utf8_complete(&v));
}

/* A single non-ASCII byte at every position of every word, with ASCII around it: the word loop
 * must notice it wherever it sits, and report it in the right call. */
static void test_fast_path_positions(void **state)
{
    static const uint8_t odd[] = {0x80, 0xBF, 0xC0, 0xC3, 0xE0, 0xED, 0xF0, 0xF4, 0xFF};
    uint8_t buf[80]; /* past two 32-byte steps of the ASCII fast path */
    (void)state;
    for (size_t n = 1; n <= sizeof buf; n++) {
        for (size_t pos = 0; pos < n; pos++) {
            for (size_t o = 0; o < sizeof odd; o++) {
                memset(buf, 'a', n);
                buf[pos] = odd[o];
                long want = ref_outcome(buf, n);
                assert_int_equal(whole_outcome(buf, n), want);
                assert_int_equal(bytewise_outcome(buf, n), want);
            }
            /* And a valid two-byte sequence. */
            if (pos + 1 < n) {
                memset(buf, 'a', n);
                buf[pos] = 0xC3;
                buf[pos + 1] = 0xA9;
                assert_int_equal(whole_outcome(buf, n), VALID);
            }
        }
    }
}

/* Autobahn TestSuite section 6 (UTF-8 handling), case by case where the outcome differs. */
static void test_autobahn_6(void **state)
{
    (void)state;
    /* 6.1, 6.2 */
    EXPECT("", VALID);
    EXPECT("Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!", VALID);
    /* 6.3 */
    EXPECT("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", VALID);
    EXPECT("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64", 12);
    /* 6.4 fail fast */
    EXPECT("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64",
           12);
    EXPECT("\x80\x65\x64\x69\x74\x65\x64", 0);
    /* 6.5, 6.7, 6.9: first and last sequences of each length */
    EXPECT("\x00", VALID);
    EXPECT("\xc2\x80", VALID);
    EXPECT("\xe0\xa0\x80", VALID);
    EXPECT("\xf0\x90\x80\x80", VALID);
    EXPECT("\x7f", VALID);
    EXPECT("\xdf\xbf", VALID);
    EXPECT("\xef\xbf\xbf", VALID);
    EXPECT("\xf4\x8f\xbf\xbf", VALID);
    /* 6.8, 6.10: 5- and 6-byte forms and beyond U+10FFFF */
    EXPECT("\xf8\x88\x80\x80\x80", 0);
    EXPECT("\xfc\x84\x80\x80\x80\x80", 0);
    EXPECT("\xf7\xbf\xbf\xbf", 0);
    EXPECT("\xfb\xbf\xbf\xbf\xbf", 0);
    EXPECT("\xfd\xbf\xbf\xbf\xbf\xbf", 0);
    /* 6.11 other boundaries */
    EXPECT("\xed\x9f\xbf", VALID);
    EXPECT("\xee\x80\x80", VALID);
    EXPECT("\xef\xbf\xbd", VALID);
    EXPECT("\xf4\x90\x80\x80", 1);
    /* 6.12 unexpected continuation bytes */
    EXPECT("\x80", 0);
    EXPECT("\xbf", 0);
    EXPECT("\x80\xbf", 0);
    EXPECT("\x80\xbf\x80\xbf\x80\xbf\x80", 0);
    /* 6.13 lonely start bytes followed by a space */
    EXPECT("\xc0\x20", 0);
    EXPECT("\xc2\x20", 1);
    EXPECT("\xdf\x20", 1);
    EXPECT("\xe0\x20", 1);
    EXPECT("\xef\x20", 1);
    EXPECT("\xf0\x20", 1);
    EXPECT("\xf4\x20", 1);
    EXPECT("\xf5\x20", 0);
    EXPECT("\xf8\x20", 0);
    EXPECT("\xfc\x20", 0);
    /* 6.14 last continuation byte missing (at the end of the message) */
    EXPECT("\xc0", 0);
    EXPECT("\xe0\x80", 1);
    EXPECT("\xf0\x80\x80", 1);
    EXPECT("\xdf", INCOMPLETE);
    EXPECT("\xef\xbf", INCOMPLETE);
    EXPECT("\xf4\x8f\xbf", INCOMPLETE);
    EXPECT("\xf7\xbf\xbf", 0);
    /* 6.15 concatenated incomplete sequences */
    EXPECT("\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf", 0);
    EXPECT("\xdf\xef\xbf\xf7\xbf\xbf", 1);
    /* 6.16 impossible bytes */
    EXPECT("\xfe", 0);
    EXPECT("\xff", 0);
    EXPECT("\xfe\xfe\xff\xff", 0);
    /* 6.17, 6.18, 6.19 overlongs */
    EXPECT("\xc0\xaf", 0);
    EXPECT("\xe0\x80\xaf", 1);
    EXPECT("\xf0\x80\x80\xaf", 1);
    EXPECT("\xf8\x80\x80\x80\xaf", 0);
    EXPECT("\xc1\xbf", 0);
    EXPECT("\xe0\x9f\xbf", 1);
    EXPECT("\xf0\x8f\xbf\xbf", 1);
    EXPECT("\xc0\x80", 0);
    EXPECT("\xe0\x80\x80", 1);
    EXPECT("\xf0\x80\x80\x80", 1);
    /* 6.20 single surrogates */
    EXPECT("\xed\xa0\x80", 1);
    EXPECT("\xed\xad\xbf", 1);
    EXPECT("\xed\xae\x80", 1);
    EXPECT("\xed\xaf\xbf", 1);
    EXPECT("\xed\xb0\x80", 1);
    EXPECT("\xed\xbe\x80", 1);
    EXPECT("\xed\xbf\xbf", 1);
    /* 6.21 paired surrogates */
    EXPECT("\xed\xa0\x80\xed\xb0\x80", 1);
    EXPECT("\xed\xaf\xbf\xed\xbf\xbf", 1);
    /* 6.22 noncharacters are valid UTF-8 */
    EXPECT("\xef\xbf\xbe", VALID);
    EXPECT("\xef\xb7\x90", VALID);
    EXPECT("\xf0\x9f\xbf\xbe", VALID);
    EXPECT("\xf4\x8f\xbf\xbe", VALID);
    /* 6.23 U+FFFD and friends */
    EXPECT("\xef\xbf\xbd", VALID);
    EXPECT("\xef\xbb\xbf", VALID);
}

/* Bytes that cover every class boundary of the DFA. */
static const uint8_t probe[] = {0x00, 0x41, 0x7F, 0x80, 0x81, 0x8F, 0x90, 0x9F, 0xA0,
                                0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED,
                                0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF};
#define NPROBE (sizeof probe)

static void check_against_ref(const uint8_t *s, size_t n)
{
    long want = ref_outcome(s, n), got = bytewise_outcome(s, n);
    if (got != want)
        fail_msg("%02x %02x %02x %02x (n=%zu): got %ld, want %ld", s[0], n > 1 ? s[1] : 0,
                 n > 2 ? s[2] : 0, n > 3 ? s[3] : 0, n, got, want);
    struct ws_utf8 v;
    ws_utf8_init(&v);
    int rc = ws_utf8_feed(&v, s, n);
    assert_int_equal(rc, want >= 0 ? WS_E_UTF8 : 0);
    if (rc == 0)
        assert_int_equal(ws_utf8_complete(&v), want == VALID);
}

/* Every 1- and 2-byte string, every 3-byte string whose last byte is a probe, and 4-byte strings
 * over probes, checked byte-wise and whole against the reference. */
static void test_exhaustive_against_reference(void **state)
{
    uint8_t s[4];
    (void)state;
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        check_against_ref(s, 1);
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            check_against_ref(s, 2);
            for (size_t c = 0; c < NPROBE; c++) {
                s[2] = probe[c];
                check_against_ref(s, 3);
            }
        }
        for (size_t b = 0; b < NPROBE; b++) {
            s[1] = probe[b];
            for (size_t c = 0; c < NPROBE; c++) {
                s[2] = probe[c];
                for (size_t d = 0; d < NPROBE; d++) {
                    s[3] = probe[d];
                    check_against_ref(s, 4);
                }
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_lengths_and_boundaries),
        cmocka_unit_test(test_overlong),
        cmocka_unit_test(test_surrogates_and_above_max),
        cmocka_unit_test(test_lone_continuation_bytes),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_every_split),
        cmocka_unit_test(test_fail_fast),
        cmocka_unit_test(test_fast_path_positions),
        cmocka_unit_test(test_autobahn_6),
        cmocka_unit_test(test_exhaustive_against_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
