/* Unit tests for static files (src/static.c) over a real temporary tree: index and content types,
 * traversal in every encoding, hidden files, symlinks out of and inside the root, odd file types,
 * If-Modified-Since in the three date formats, and random targets that must never crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/http.h"
#include "ws/static.h"

#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110 §5.6.7's example) */
#define MTIME 784111777

static char base[64];  /* base/root is served; base/secret sits beside it */
static char other[64]; /* another temp dir: symlinks point here */
static char root[PATH_MAX];

static struct ws_http_request req;
static struct ws_static_reply reply;

/* ---- the tree ---- */

static void path_in(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char p[PATH_MAX];
    path_in(p, sizeof(p), dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static void make_dir(const char *dir, const char *name)
{
    char p[PATH_MAX];
    path_in(p, sizeof(p), dir, name);
    assert_int_equal(mkdir(p, 0755), 0);
}

static void make_link(const char *target, const char *name)
{
    char p[PATH_MAX];
    path_in(p, sizeof(p), root, name);
    assert_int_equal(symlink(target, p), 0);
}

static void set_mtime(const char *name, time_t t)
{
    char p[PATH_MAX];
    path_in(p, sizeof(p), root, name);
    struct timespec ts[2] = {{t, 0}, {t, 0}};
    assert_int_equal(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static int setup(void **state)
{
    (void)state;
    strcpy(base, "/tmp/ws_static_XXXXXX");
    strcpy(other, "/tmp/ws_static_other_XXXXXX");
    if (!mkdtemp(base) || !mkdtemp(other))
        return -1;
    path_in(root, sizeof(root), base, "root");
    make_dir(base, "root");
    write_file(base, "secret", "outside root\n");
    write_file(other, "secret.txt", "other dir\n");

    write_file(root, "index.html", "<h1>hi</h1>\n");
    set_mtime("index.html", MTIME);
    make_dir(root, "sub");
    write_file(root, "sub/file.css", "body { color: red }\n");
    write_file(root, "sub/app.MJS", "export {};\n");
    make_dir(root, "withindex");
    write_file(root, "withindex/index.html", "<p>folder</p>\n");
    make_dir(root, "empty");
    write_file(root, ".hidden", "hidden\n");
    make_dir(root, ".git");
    write_file(root, ".git/config", "[core]\n");
    write_file(root, "zero.txt", "");
    write_file(root, "noext", "data\n");

    char p[PATH_MAX];
    path_in(p, sizeof(p), other, "secret.txt");
    make_link(p, "out.txt");                /* absolute, leads out */
    make_link(other, "outdir");             /* a folder outside */
    make_link("../secret", "up.txt");       /* relative, leads out */
    make_link("sub/file.css", "alias.css"); /* relative, stays inside */
    path_in(p, sizeof(p), root, "index.html");
    make_link(p, "abs.html");         /* absolute, stays inside */
    make_link("sub", "subdir");       /* a folder inside */
    make_link(".hidden", "peek.txt"); /* inside, but onto a hidden file */
    make_link("loop", "loop");        /* ELOOP */
    make_link("nowhere", "dangling"); /* ENOENT */

    path_in(p, sizeof(p), root, "fifo");
    assert_int_equal(mkfifo(p, 0644), 0);
    path_in(p, sizeof(p), root, "big.bin");
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)WS_STATIC_MAX_FILE + 1), 0); /* sparse: costs nothing */
    close(fd);
    path_in(p, sizeof(p), root, "max.bin");
    fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)WS_STATIC_MAX_FILE), 0);
    close(fd);
    return 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int teardown(void **state)
{
    (void)state;
    ws_static_reply_free(&reply);
    int a = nftw(base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    int b = nftw(other, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return a || b ? -1 : 0;
}

/* ---- requests ---- */

static struct ws_span span(const char *s)
{
    return (struct ws_span){s, strlen(s)};
}

static void add(const char *name, const char *value)
{
    assert_true(req.nheaders < WS_HTTP_MAX_HEADERS);
    req.headers[req.nheaders].name = span(name);
    req.headers[req.nheaders].value = span(value);
    req.nheaders++;
}

static void start(const char *method, const char *target)
{
    ws_static_reply_free(&reply);
    memset(&req, 0, sizeof(req));
    req.method = span(method);
    req.target = span(target);
    req.version_minor = 1;
}

static int run(void)
{
    ws_static_serve(root, &req, &reply);
    return reply.status;
}

static int get(const char *target)
{
    start("GET", target);
    return run();
}

static int get_since(const char *target, const char *date)
{
    start("GET", target);
    add("If-Modified-Since", date);
    return run();
}

static void assert_body(const char *text)
{
    assert_int_equal(reply.body_len, strlen(text));
    assert_non_null(reply.body);
    assert_memory_equal(reply.body, text, reply.body_len);
}

static void assert_has_header(const char *line)
{
    assert_non_null(strstr(reply.headers, line));
}

/* ---- serving ---- */

static void test_index(void **state)
{
    (void)state;
    assert_int_equal(get("/"), 200);
    assert_string_equal(reply.content_type, "text/html; charset=utf-8");
    assert_body("<h1>hi</h1>\n");
    assert_has_header("Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n");
    assert_has_header("Cache-Control: no-cache\r\n");
    assert_has_header("X-Content-Type-Options: nosniff\r\n");

    assert_int_equal(get("/index.html"), 200);
    assert_body("<h1>hi</h1>\n");
    assert_int_equal(get("//./index.html"), 200);
    assert_body("<h1>hi</h1>\n");
}

static void test_sub_file(void **state)
{
    (void)state;
    assert_int_equal(get("/sub/file.css"), 200);
    assert_string_equal(reply.content_type, "text/css; charset=utf-8");
    assert_body("body { color: red }\n");
    assert_int_equal(get("//sub///file.css"), 200);
    assert_int_equal(get("/%73ub/file%2Ecss"), 200); /* unreserved, needlessly encoded */
    assert_body("body { color: red }\n");
    assert_int_equal(get("/sub/app.MJS"), 200);
    assert_string_equal(reply.content_type, "text/javascript; charset=utf-8");
    assert_int_equal(get("/noext"), 200);
    assert_string_equal(reply.content_type, "application/octet-stream");
}

static void test_query_and_fragment(void **state)
{
    (void)state;
    assert_int_equal(get("/sub/file.css?v=3&x=/../../secret"), 200);
    assert_body("body { color: red }\n");
    assert_int_equal(get("/?%zz"), 200); /* the query is not decoded */
    assert_body("<h1>hi</h1>\n");
    assert_int_equal(get("/index.html#top"), 200);
    assert_int_equal(get("/sub/file.css?"), 200);
}

static void test_head(void **state)
{
    (void)state;
    start("HEAD", "/sub/file.css");
    assert_int_equal(run(), 200);
    assert_int_equal(reply.body_len, strlen("body { color: red }\n"));
    assert_string_equal(reply.content_type, "text/css; charset=utf-8");
    assert_has_header("Last-Modified: ");
    ws_static_reply_free(&reply);
    assert_null(reply.body);
}

static void test_methods(void **state)
{
    (void)state;
    const char *methods[] = {"POST", "PUT", "DELETE", "OPTIONS", "get", "Head", "GETX", ""};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        start(methods[i], "/index.html");
        assert_int_equal(run(), 405);
        assert_null(reply.body);
        assert_has_header("Allow: GET, HEAD\r\n"); /* RFC 9110 §15.5.6 */
    }
}

static void test_zero_and_max_size(void **state)
{
    (void)state;
    assert_int_equal(get("/zero.txt"), 200);
    assert_int_equal(reply.body_len, 0);
    assert_string_equal(reply.content_type, "text/plain; charset=utf-8");

    assert_int_equal(get("/big.bin"), 413);
    assert_null(reply.body);
    start("HEAD", "/big.bin");
    assert_int_equal(run(), 413);
    start("HEAD", "/max.bin");
    assert_int_equal(run(), 200);
    assert_int_equal(reply.body_len, WS_STATIC_MAX_FILE);
    assert_null(reply.body);
}

/* ---- escaping the root ---- */

static void test_traversal(void **state)
{
    (void)state;
    const char *targets[] = {
        "/../secret",
        "/sub/../../secret",
        "/%2e%2e/secret",
        "/%2E%2E%2Fsecret",
        "/..%2fsecret",
        "/.%2e/secret",
        "/%2e./secret",
        "/sub/%2e%2e/%2e%2e/secret",
        "/..",
        "/../",
        "/sub/..",
        "/sub/../index.html",
        "/..%2F..%2Fetc/passwd",
        "/%2e%2e%5csecret",
    };
    for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
        int status = get(targets[i]);
        if (status != 404 && status != 403)
            fail_msg("%s answered %d", targets[i], status);
        assert_null(reply.body);
    }
}

static void test_hidden(void **state)
{
    (void)state;
    assert_int_equal(get("/.hidden"), 404);
    assert_int_equal(get("/%2ehidden"), 404);
    assert_int_equal(get("/.git/config"), 404);
    assert_int_equal(get("/sub/../.git/config"), 404);
    assert_int_equal(get("/peek.txt"), 404); /* a symlink onto a hidden file */
}

static void test_symlinks(void **state)
{
    (void)state;
    const char *out[] = {"/out.txt", "/up.txt", "/outdir/secret.txt", "/outdir/", "/outdir"};
    for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++) {
        int status = get(out[i]);
        if (status == 200)
            fail_msg("%s was served", out[i]);
        assert_null(reply.body);
    }
    assert_int_equal(get("/alias.css"), 200);
    assert_body("body { color: red }\n");
    assert_string_equal(reply.content_type, "text/css; charset=utf-8");
    assert_int_equal(get("/abs.html"), 200);
    assert_body("<h1>hi</h1>\n");
    assert_int_equal(get("/subdir/file.css"), 200);
    assert_int_equal(get("/loop"), 404);
    assert_int_equal(get("/dangling"), 404);
}

static void test_not_found(void **state)
{
    (void)state;
    assert_int_equal(get("/missing.html"), 404);
    assert_int_equal(get("/sub/missing/x.css"), 404);
    assert_int_equal(get("/index.html/x"), 404);
    assert_int_equal(get("/index.html/"), 404); /* a file named as a folder */
    assert_int_equal(get("/fifo"), 404);        /* and it must not block on open */
    assert_int_equal(get("/sub"), 404);         /* folder without index.html */
    assert_int_equal(get("/empty/"), 404);
    assert_null(reply.body);
}

static void test_folder_index(void **state)
{
    (void)state;
    assert_int_equal(get("/withindex/"), 200);
    assert_body("<p>folder</p>\n");
    assert_string_equal(reply.content_type, "text/html; charset=utf-8");
    assert_int_equal(get("/withindex"), 200);
    assert_body("<p>folder</p>\n");
}

static void test_bad_targets(void **state)
{
    (void)state;
    const char *bad[] = {"/%zz",       "/%2",         "/abc%",
                         "/%",         "/%g0",        "/%0g",
                         "/%00",       "/a%00.html",  "/index.html%00.css",
                         "index.html", "*",           "http://example.com/index.html",
                         "",           "?/index.html"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int status = get(bad[i]);
        if (status != 400)
            fail_msg("\"%s\" answered %d", bad[i], status);
        assert_null(reply.body);
    }
    /* A NUL in the raw target too. */
    static const char raw[] = "/index.html\0.css";
    start("GET", "");
    req.target = (struct ws_span){raw, sizeof(raw) - 1};
    assert_int_equal(run(), 400);
}

static void test_long_target(void **state)
{
    (void)state;
    size_t n = 3 * PATH_MAX;
    char *t = malloc(n + 1);
    assert_non_null(t);
    for (size_t i = 0; i < n; i++)
        t[i] = i % 2 ? 'a' : '/';
    t[n] = '\0';
    assert_int_equal(get(t), 404);
    memset(t + 1, 'a', n - 1);
    assert_int_equal(get(t), 404);
    memcpy(t + n - 3, "%zz", 3);
    assert_int_equal(get(t), 400);
    free(t);
}

/* ---- If-Modified-Since (RFC 9110 §13.1.3) ---- */

static void test_not_modified(void **state)
{
    (void)state;
    assert_int_equal(get_since("/index.html", "Sun, 06 Nov 1994 08:49:37 GMT"), 304);
    assert_null(reply.body);
    assert_int_equal(reply.body_len, strlen("<h1>hi</h1>\n"));
    assert_string_equal(reply.content_type, "text/html; charset=utf-8");
    assert_has_header("Cache-Control: no-cache\r\n");
    assert_has_header("Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n");

    assert_int_equal(get_since("/", "Sun, 06 Nov 1994 08:49:38 GMT"), 304);
    assert_int_equal(get_since("/", "Fri, 31 Dec 9999 23:59:59 GMT"), 304);
    assert_int_equal(get_since("/", "Mon, 07 Nov 1994 00:00:00 GMT"), 304);
    /* the obsolete formats a recipient MUST accept (§5.6.7) */
    assert_int_equal(get_since("/", "Sunday, 06-Nov-94 08:49:37 GMT"), 304);
    assert_int_equal(get_since("/", "Sun Nov  6 08:49:37 1994"), 304);
    assert_int_equal(get_since("/", "Sun Nov  6 08:49:36 1994"), 200);

    start("HEAD", "/");
    add("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_int_equal(run(), 304);
}

static void test_modified(void **state)
{
    (void)state;
    assert_int_equal(get_since("/index.html", "Sun, 06 Nov 1994 08:49:36 GMT"), 200);
    assert_body("<h1>hi</h1>\n");
    assert_int_equal(get_since("/", "Thu, 01 Jan 1970 00:00:00 GMT"), 200);
    assert_int_equal(get_since("/", "Sunday, 06-Nov-94 08:49:36 GMT"), 200);

    const char *garbage[] = {
        "yesterday",
        "",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 GMT ",
        "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
        "sun, 06 nov 1994 08:49:37 gmt",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Sun, 29 Feb 1995 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49 GMT",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 99999 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "784111777",
    };
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        int status = get_since("/", garbage[i]);
        if (status != 200)
            fail_msg("\"%s\" answered %d", garbage[i], status);
        assert_body("<h1>hi</h1>\n");
    }

    /* §13.1.3: ignored beside If-None-Match, and when it has more than one member */
    start("GET", "/");
    add("If-None-Match", "\"x\"");
    add("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_int_equal(run(), 200);
    start("GET", "/");
    add("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT");
    add("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_int_equal(run(), 200);
}

static void test_modified_now(void **state)
{
    (void)state;
    /* a file written just now is newer than a date in 1994 */
    assert_int_equal(get_since("/sub/file.css", "Sun, 06 Nov 1994 08:49:37 GMT"), 200);
    assert_body("body { color: red }\n");
}

/* ---- content types, replies, robustness ---- */

static void test_content_types(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"a.html", "text/html; charset=utf-8"},
        {"a.HTM", "text/html; charset=utf-8"},
        {"a.css", "text/css; charset=utf-8"},
        {"a.js", "text/javascript; charset=utf-8"},
        {"a.mjs", "text/javascript; charset=utf-8"},
        {"a.json", "application/json"},
        {"a.txt", "text/plain; charset=utf-8"},
        {"a.svg", "image/svg+xml"},
        {"a.PNG", "image/png"},
        {"a.jpg", "image/jpeg"},
        {"a.Jpeg", "image/jpeg"},
        {"a.gif", "image/gif"},
        {"favicon.ico", "image/x-icon"},
        {"a.webp", "image/webp"},
        {"a.wasm", "application/wasm"},
        {"a.woff2", "font/woff2"},
        {"app.js.map", "application/json"},
        {"/x/y/a.min.css", "text/css; charset=utf-8"},
        {"a.tar.gz", "application/octet-stream"},
        {"a.woff", "application/octet-stream"},
        {"a.", "application/octet-stream"},
        {"README", "application/octet-stream"},
        {"dir.css/file", "application/octet-stream"},
        {"a.htmlx", "application/octet-stream"},
        {"", "application/octet-stream"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_string_equal(ws_static_content_type(cases[i][0]), cases[i][1]);
}

static void test_reply_free(void **state)
{
    (void)state;
    struct ws_static_reply r;
    memset(&r, 0, sizeof(r));
    ws_static_reply_free(&r);
    ws_static_reply_free(NULL);
    start("GET", "/");
    ws_static_serve(root, &req, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(r.body);
    ws_static_reply_free(&r);
    assert_null(r.body);
    ws_static_reply_free(&r);
}

static void test_missing_root(void **state)
{
    (void)state;
    char gone[PATH_MAX];
    path_in(gone, sizeof(gone), base, "no-such-root");
    start("GET", "/index.html");
    ws_static_serve(gone, &req, &reply);
    assert_int_equal(reply.status, 500);
    assert_null(reply.body);
}

static void test_random_targets(void **state)
{
    (void)state;
    static const char alphabet[] = "/./..%2e%2E%2f%00%zz?#ab.html.hidden\\ \x80\xff";
    char t[64];
    srand(12345);
    for (int round = 0; round < 20000; round++) {
        size_t n = (size_t)(rand() % (int)sizeof(t));
        for (size_t i = 0; i < n; i++)
            t[i] = alphabet[rand() % (int)(sizeof(alphabet) - 1)];
        start(rand() % 8 ? "GET" : "HEAD", "");
        req.target = (struct ws_span){t, n};
        int status = run();
        assert_true(status == 200 || status == 400 || status == 403 || status == 404);
        assert_non_null(reply.content_type);
        if (status != 200)
            assert_null(reply.body);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index),
        cmocka_unit_test(test_sub_file),
        cmocka_unit_test(test_query_and_fragment),
        cmocka_unit_test(test_head),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_zero_and_max_size),
        cmocka_unit_test(test_traversal),
        cmocka_unit_test(test_hidden),
        cmocka_unit_test(test_symlinks),
        cmocka_unit_test(test_not_found),
        cmocka_unit_test(test_folder_index),
        cmocka_unit_test(test_bad_targets),
        cmocka_unit_test(test_long_target),
        cmocka_unit_test(test_not_modified),
        cmocka_unit_test(test_modified),
        cmocka_unit_test(test_modified_now),
        cmocka_unit_test(test_content_types),
        cmocka_unit_test(test_reply_free),
        cmocka_unit_test(test_missing_root),
        cmocka_unit_test(test_random_targets),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
