/* Unit tests for log lines (src/core/log.c), captured by pointing stderr at a temporary file: the
 * text and JSON layouts, escaping of every byte value (decoded back from the JSON), keys escaped
 * too, the level filter, the worker field, flood control and its report, and lines cut at the line
 * size that must still be one well-formed line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/log.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int file_fd = -1; /* where stderr goes while capturing */
static int saved_stderr = -1;
static char out[1 << 16];
static size_t out_len;

static int group_setup(void **state)
{
    (void)state;
    char path[] = "/tmp/ws_log_XXXXXX";
    file_fd = mkstemp(path);
    if (file_fd < 0)
        return -1;
    unlink(path);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    close(file_fd);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    ws_log_setup(WS_LOG_INFO, WS_LOG_TEXT);
    ws_log_set_worker(0);
    return 0;
}

static void capture_begin(void)
{
    assert_int_equal(ftruncate(file_fd, 0), 0);
    assert_int_equal(lseek(file_fd, 0, SEEK_SET), 0);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_int_equal(dup2(file_fd, STDERR_FILENO), STDERR_FILENO);
}

/* Restores stderr (so failures print) and reads what was written into out, NUL-terminated. */
static void capture_end(void)
{
    assert_int_equal(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
    close(saved_stderr);
    ssize_t n = pread(file_fd, out, sizeof(out) - 1, 0);
    assert_true(n >= 0);
    out_len = (size_t)n;
    out[out_len] = '\0';
}

static size_t count_lines(const char *s, size_t n)
{
    size_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += s[i] == '\n';
    return lines;
}

/* The text line after its timestamp "YYYY-MM-DDTHH:MM:SS.mmmZ ". */
static const char *after_text_ts(const char *line)
{
    const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ ";
    for (size_t i = 0; shape[i]; i++) {
        if (shape[i] == 'd')
            assert_true(isdigit((unsigned char)line[i]));
        else
            assert_int_equal(line[i], shape[i]);
    }
    return line + strlen(shape);
}

/* ---- a checker for the flat JSON objects the log writes ---- */

struct json_field {
    char key[64];
    size_t key_len;
    char value[4096]; /* decoded */
    size_t len;
    bool is_string;
};

static bool json_string(const char **p, const char *end, char *dst, size_t cap, size_t *len)
{
    const char *s = *p;
    *len = 0;
    if (s >= end || *s++ != '"')
        return false;
    while (s < end && *s != '"') {
        unsigned char ch = (unsigned char)*s++;
        if (ch < 0x20)
            return false; /* raw control bytes are not allowed in JSON strings */
        if (ch == '\\') {
            if (s >= end)
                return false;
            char e = *s++;
            if (e == 'u') {
                if (end - s < 4)
                    return false;
                unsigned v = 0;
                for (int i = 0; i < 4; i++) {
                    if (!isxdigit((unsigned char)s[i]))
                        return false;
                    v = v * 16 + (unsigned)(isdigit((unsigned char)s[i])
                                                ? s[i] - '0'
                                                : (s[i] | 0x20) - 'a' + 10);
                }
                s += 4;
                if (v > 0xff)
                    return false; /* the log only escapes single bytes */
                ch = (unsigned char)v;
            } else if (e == '"' || e == '\\' || e == '/') {
                ch = (unsigned char)e;
            } else if (e == 'n' || e == 't' || e == 'r' || e == 'b' || e == 'f') {
                ch = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'b' ? '\b' : '\f';
            } else {
                return false;
            }
        }
        if (*len < cap)
            dst[*len] = (char)ch;
        (*len)++;
    }
    if (s >= end)
        return false;
    *p = s + 1;
    return *len <= cap;
}

/* Parses one line "{...}\n" of string and number fields; false when it is not valid JSON. */
static bool json_parse(const char *line, size_t n, struct json_field *f, size_t max, size_t *nf)
{
    const char *p = line, *end = line + n;
    *nf = 0;
    if (n < 3 || end[-1] != '\n' || *p++ != '{')
        return false;
    end--; /* the newline */
    for (;;) {
        if (*nf == max)
            return false;
        struct json_field *x = &f[(*nf)++];
        if (!json_string(&p, end, x->key, sizeof(x->key), &x->key_len))
            return false;
        if (p >= end || *p++ != ':')
            return false;
        if (p < end && *p == '"') {
            x->is_string = true;
            if (!json_string(&p, end, x->value, sizeof(x->value), &x->len))
                return false;
        } else {
            x->is_string = false;
            const char *start = p;
            if (p < end && *p == '-')
                p++;
            if (p >= end || !isdigit((unsigned char)*p))
                return false;
            while (p < end && (isdigit((unsigned char)*p) || *p == '.'))
                p++;
            x->len = (size_t)(p - start);
            memcpy(x->value, start, x->len);
        }
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        return p + 1 == end && *p == '}';
    }
}

static const struct json_field *json_find(const struct json_field *f, size_t nf, const char *key)
{
    for (size_t i = 0; i < nf; i++)
        if (f[i].key_len == strlen(key) && memcmp(f[i].key, key, f[i].key_len) == 0)
            return &f[i];
    return NULL;
}

/* ---- tests ---- */

static void test_text_line(void **state)
{
    (void)state;
    struct ws_log_line l;
    capture_begin();
    ws_log_begin(&l, WS_LOG_INFO, "t_text");
    ws_log_u64(&l, "conn", UINT64_MAX);
    ws_log_i64(&l, "code", -5);
    ws_log_cstr(&l, "peer", "1.2.3.4:5");
    ws_log_cstr(&l, "none", NULL);
    ws_log_ms(&l, "ms", 0.0125);
    ws_log_end(&l);
    ws_log_end(&l); /* a second end writes nothing */
    capture_end();
    assert_int_equal(count_lines(out, out_len), 1);
    assert_string_equal(after_text_ts(out), "level=info event=t_text conn=18446744073709551615 "
                                            "code=-5 peer=\"1.2.3.4:5\" none=\"\" ms=12.500\n");
}

static void test_json_line(void **state)
{
    (void)state;
    ws_log_setup(WS_LOG_INFO, WS_LOG_JSON);
    struct ws_log_line l;
    capture_begin();
    ws_log_begin(&l, WS_LOG_WARN, "t_json");
    ws_log_u64(&l, "conn", 42);
    ws_log_i64(&l, "code", -1001);
    ws_log_cstr(&l, "peer", "[::1]:80");
    ws_log_ms(&l, "ms", 1.5);
    ws_log_end(&l);
    capture_end();
    struct json_field f[16];
    size_t nf;
    assert_true(json_parse(out, out_len, f, 16, &nf));
    assert_int_equal(nf, 7);
    assert_string_equal(f[0].key, "ts");
    assert_int_equal(f[0].len, 24);
    assert_memory_equal(json_find(f, nf, "level")->value, "warn", 4);
    assert_memory_equal(json_find(f, nf, "event")->value, "t_json", 6);
    assert_memory_equal(json_find(f, nf, "conn")->value, "42", 2);
    assert_false(json_find(f, nf, "conn")->is_string);
    assert_memory_equal(json_find(f, nf, "code")->value, "-1001", 5);
    assert_memory_equal(json_find(f, nf, "peer")->value, "[::1]:80", 8);
    assert_memory_equal(json_find(f, nf, "ms")->value, "1500.000", 8);
    assert_non_null(strstr(out, "\"level\":\"warn\",\"event\":\"t_json\",\"conn\":42,"));
}

/* Every byte value a peer may send, in both formats: one line, no raw control byte, and in
 * JSON the value decodes back to the very bytes given. */
static void test_escaping_every_byte(void **state)
{
    (void)state;
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    struct ws_log_line l;

    capture_begin();
    ws_log_begin(&l, WS_LOG_INFO, "t_escape_text");
    ws_log_str(&l, "reason", all, sizeof(all));
    ws_log_end(&l);
    capture_end();
    assert_int_equal(count_lines(out, out_len), 1);
    for (size_t i = 0; i + 1 < out_len; i++)
        assert_true((unsigned char)out[i] >= 0x20 && (unsigned char)out[i] < 0x7f);
    assert_non_null(strstr(out, " reason=\"\\x00\\x01"));
    assert_non_null(strstr(out, "\\x1f !\\\"#"));   /* 0x1f, space, !, quote, # */
    assert_non_null(strstr(out, "[\\\\]"));         /* backslash */
    assert_non_null(strstr(out, "~\\x7f\\x80"));    /* DEL and the first high byte */
    assert_non_null(strstr(out, "\\xfe\\xff\"\n")); /* the end, closed */

    ws_log_setup(WS_LOG_INFO, WS_LOG_JSON);
    capture_begin();
    ws_log_begin(&l, WS_LOG_INFO, "t_escape_json");
    ws_log_str(&l, "reason", all, sizeof(all));
    ws_log_str(&l, "utf8", "caf\xc3\xa9\n", 6);
    ws_log_end(&l);
    capture_end();
    assert_int_equal(count_lines(out, out_len), 1);
    struct json_field f[16];
    size_t nf;
    assert_true(json_parse(out, out_len, f, 16, &nf));
    const struct json_field *r = json_find(f, nf, "reason");
    assert_non_null(r);
    assert_int_equal(r->len, 256);
    assert_memory_equal(r->value, all, 256);
    r = json_find(f, nf, "utf8");
    assert_int_equal(r->len, 6);
    assert_memory_equal(r->value, "caf\xc3\xa9\n", 6);
}

/* Keys come from the app too (ws.log's field table): they cannot break the line either. */
static void test_keys_escaped(void **state)
{
    (void)state;
    ws_log_setup(WS_LOG_INFO, WS_LOG_JSON);
    struct ws_log_line l;
    capture_begin();
    ws_log_begin(&l, WS_LOG_INFO, "t_keys");
    ws_log_i64(&l, "a\"b\nc", 1);
    ws_log_cstr(&l, "x\\", "v");
    ws_log_end(&l);
    capture_end();
    assert_int_equal(count_lines(out, out_len), 1);
    struct json_field f[16];
    size_t nf;
    assert_true(json_parse(out, out_len, f, 16, &nf));
    assert_non_null(json_find(f, nf, "a\"b\nc"));
    assert_non_null(json_find(f, nf, "x\\"));

    ws_log_setup(WS_LOG_INFO, WS_LOG_TEXT);
    capture_begin();
    ws_log_begin(&l, WS_LOG_INFO, "t_keys");
    ws_log_i64(&l, "evil\nlevel", 1);
    ws_log_end(&l);
    capture_end();
    assert_int_equal(count_lines(out, out_len), 1);
}

static void test_level_filter(void **state)
{
    (void)state;
    ws_log_setup(WS_LOG_WARN, WS_LOG_TEXT);
    assert_false(ws_log_enabled(WS_LOG_DEBUG));
    assert_false(ws_log_enabled(WS_LOG_INFO));
    assert_true(ws_log_enabled(WS_LOG_WARN));
    assert_true(ws_log_enabled(WS_LOG_ERROR));
    struct ws_log_line l;
    capture_begin();
    ws_log_begin(&l, WS_LOG_INFO, "t_filtered");
    assert_false(l.active);
    ws_log_cstr(&l, "peer", "x"); /* field calls on a filtered line do nothing */
    ws_log_u64(&l, "conn", 1);
    assert_int_equal(l.len, 0);
    ws_log_end(&l);
    ws_log_msg(WS_LOG_DEBUG, "t_filtered", "no");
    ws_log_msg(WS_LOG_ERROR, "t_passed", "yes \"quoted\"");
    ws_log_msg(WS_LOG_WARN, "t_passed", "also");
    capture_end();
    assert_int_equal(count_lines(out, out_len), 2);
    assert_null(strstr(out, "t_filtered"));
    assert_non_null(strstr(out, "level=error event=t_passed msg=\"yes \\\"quoted\\\"\"\n"));
    assert_non_null(strstr(out, "level=warn event=t_passed msg=\"also\"\n"));

    ws_log_setup(WS_LOG_DEBUG, WS_LOG_TEXT);
    assert_true(ws_log_enabled(WS_LOG_DEBUG));
    capture_begin();
    ws_log_msg(WS_LOG_DEBUG, "t_debug", "shown");
    capture_end();
    assert_non_null(strstr(out, "level=debug event=t_debug msg=\"shown\"\n"));
}

static void test_parse_names(void **state)
{
    (void)state;
    assert_int_equal(ws_log_level_parse("debug"), WS_LOG_DEBUG);
    assert_int_equal(ws_log_level_parse("info"), WS_LOG_INFO);
    assert_int_equal(ws_log_level_parse("warn"), WS_LOG_WARN);
    assert_int_equal(ws_log_level_parse("error"), WS_LOG_ERROR);
    assert_int_equal(ws_log_level_parse("warning"), -1);
    assert_int_equal(ws_log_level_parse("INFO"), -1);
    assert_int_equal(ws_log_level_parse(""), -1);
    assert_int_equal(ws_log_format_parse("text"), WS_LOG_TEXT);
    assert_int_equal(ws_log_format_parse("json"), WS_LOG_JSON);
    assert_int_equal(ws_log_format_parse("JSON"), -1);
    assert_int_equal(ws_log_format_parse("logfmt"), -1);
}

static void test_worker_field(void **state)
{
    (void)state;
    ws_log_set_worker(3);
    capture_begin();
    ws_log_msg(WS_LOG_INFO, "t_worker", "a");
    ws_log_set_worker(0);
    ws_log_msg(WS_LOG_INFO, "t_worker", "b");
    capture_end();
    assert_non_null(strstr(out, "event=t_worker worker=3 msg=\"a\"\n"));
    assert_non_null(strstr(out, "event=t_worker msg=\"b\"\n"));
}

/* Waits, if needed, so that the next ~200 ms stay within one wall-clock second. */
static void start_of_second(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_nsec > 800000000L) {
        struct timespec nap = {0, 1000000000L - ts.tv_nsec + 1000000L};
        nanosleep(&nap, NULL);
    }
}

static void test_flood_control(void **state)
{
    (void)state;
    start_of_second();
    capture_begin();
    for (int i = 0; i < 150; i++)
        ws_log_msg(WS_LOG_INFO, "t_flood", "again");
    capture_end();
    assert_int_equal(count_lines(out, out_len), 100); /* at most 100 a second */

    capture_begin();
    ws_log_flush();
    ws_log_flush(); /* told once */
    capture_end();
    assert_int_equal(count_lines(out, out_len), 1);
    assert_non_null(strstr(out, " level=warn event=suppressed of=\"t_flood\" lines=50\n"));

    /* the budget is per second, not per report; other events are not held back */
    capture_begin();
    ws_log_msg(WS_LOG_INFO, "t_flood", "still over");
    ws_log_msg(WS_LOG_INFO, "t_other", "fine");
    ws_log_flush();
    capture_end();
    assert_null(strstr(out, "still over"));
    assert_non_null(strstr(out, "event=t_other msg=\"fine\"\n"));
    assert_non_null(strstr(out, "of=\"t_flood\" lines=1\n"));
}

/* A value longer than the line is cut, marked with "...", and the line stays one well-formed
 * line: the string closed, no escape split, the JSON object closed, nothing past
 * WS_LOG_LINE_MAX. */
static void test_long_values_cut_cleanly(void **state)
{
    (void)state;
    static char quotes[5000], controls[3000];
    memset(quotes, '"', sizeof(quotes));
    memset(controls, '\x01', sizeof(controls));

    ws_log_setup(WS_LOG_INFO, WS_LOG_JSON);
    for (size_t pad = 0; pad < 8; pad++) { /* cut at each offset within an escape */
        struct ws_log_line l;
        capture_begin();
        ws_log_begin(&l, WS_LOG_INFO, "t_long_json");
        ws_log_str(&l, "pad", "xxxxxxx", pad);
        ws_log_str(&l, pad % 2 ? "path" : "reason", pad % 2 ? quotes : controls,
                   pad % 2 ? sizeof(quotes) : sizeof(controls));
        ws_log_u64(&l, "conn", 7); /* no room left: dropped whole, not cut */
        ws_log_end(&l);
        capture_end();
        assert_true(out_len <= WS_LOG_LINE_MAX);
        assert_int_equal(count_lines(out, out_len), 1);
        struct json_field f[16];
        size_t nf;
        assert_true(json_parse(out, out_len, f, 16, &nf));
        const struct json_field *v = json_find(f, nf, pad % 2 ? "path" : "reason");
        assert_non_null(v);
        assert_true(v->len > 300); /* cut, not dropped */
        assert_memory_equal(v->value + v->len - 3, "...", 3);
        for (size_t i = 0; i < v->len - 3; i++)
            assert_int_equal(v->value[i], pad % 2 ? '"' : '\x01');
    }

    ws_log_setup(WS_LOG_INFO, WS_LOG_TEXT);
    for (size_t pad = 0; pad < 8; pad++) {
        struct ws_log_line l;
        capture_begin();
        ws_log_begin(&l, WS_LOG_INFO, "t_long_text");
        ws_log_str(&l, "pad", "xxxxxxx", pad);
        ws_log_str(&l, "reason", controls, sizeof(controls));
        ws_log_end(&l);
        capture_end();
        assert_true(out_len <= WS_LOG_LINE_MAX);
        assert_int_equal(count_lines(out, out_len), 1);
        /* ends with whole \x01 escapes, the cut mark and the closing quote */
        assert_true(out_len > 9);
        assert_memory_equal(out + out_len - 9, "\\x01...\"\n", 9);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_text_line, setup),
        cmocka_unit_test_setup(test_json_line, setup),
        cmocka_unit_test_setup(test_escaping_every_byte, setup),
        cmocka_unit_test_setup(test_keys_escaped, setup),
        cmocka_unit_test_setup(test_level_filter, setup),
        cmocka_unit_test_setup(test_parse_names, setup),
        cmocka_unit_test_setup(test_worker_field, setup),
        cmocka_unit_test_setup(test_flood_control, setup),
        cmocka_unit_test_setup(test_long_values_cut_cleanly, setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
