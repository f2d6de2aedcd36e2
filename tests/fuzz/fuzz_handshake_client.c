/* Fuzz target for the client side of the opening handshake (src/proto/handshake_client.c and
 * ws_http_parse_response). The input is a server's answer head, or (first byte 'w') a URL.
 * Checks that:
 *   - ws_http_parse_response never reads past the input and, on success, reports a status
 *     100..999 and a head inside the input;
 *   - ws_handshake_client_check accepts only a 101 with Upgrade websocket, Connection upgrade
 *     and exactly one Sec-WebSocket-Accept equal to the key's (computed here), a subprotocol
 *     that was offered (or none), and deflate parameters in range (our compressor 9..15, our
 *     inflater 8..15) only when offered; a refusal always has a reason;
 *   - ws_url_parse gives a host, a port 1..65535 and a target starting with "/", and the upgrade
 *     request built from it (when it can be) parses back and passes the server's own checks. */
#include "fuzz.h"

#include "ws/err.h"
#include "ws/handshake.h"
#include "ws/handshake_client.h"
#include "ws/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static const char *const offered[] = {"chat", "v2.json"};

static void check_url(const uint8_t *data, size_t size)
{
    char *url = fuzz_malloc(size + 1);
    memcpy(url, data, size);
    url[size] = '\0';
    struct ws_url u;
    const char *why = NULL;
    if (ws_url_parse(url, &u, &why) == 0) {
        FUZZ_CHECK(u.host[0] != '\0' && u.port >= 1 && u.port <= 65535 && u.target[0] == '/');
        struct ws_handshake_client_request r = {.host = u.host,
                                                .port = u.port,
                                                .tls = u.tls,
                                                .target = u.target,
                                                .key = KEY,
                                                .protocols = offered,
                                                .nprotocols = 2,
                                                .deflate = true};
        char out[8192];
        size_t n = ws_handshake_client_request(out, sizeof out, &r);
        if (n > 0) {
            struct ws_http_request req;
            size_t scanned = 0;
            FUZZ_CHECK(ws_http_parse(out, n, sizeof out, &scanned, &req) == 0);
            FUZZ_CHECK(req.head_len == n);
            struct ws_handshake hs;
            FUZZ_CHECK(ws_handshake_check(&req, &hs) == 0);
            FUZZ_CHECK(strcmp(hs.accept, ACCEPT) == 0);
        }
    } else {
        FUZZ_CHECK(why != NULL);
    }
    free(url);
}

static void check_answer(const uint8_t *data, size_t size, bool deflate)
{
    char *buf = fuzz_malloc(size);
    memcpy(buf, data, size);
    struct ws_http_request resp;
    size_t scanned = 0;
    int rc = ws_http_parse_response(buf, size, 8192, &scanned, &resp);
    if (rc == 0) {
        FUZZ_CHECK(resp.status >= 100 && resp.status <= 999);
        FUZZ_CHECK(resp.head_len <= size);
        struct ws_handshake_client_result hr;
        int ok = ws_handshake_client_check(&resp, KEY, offered, 2, deflate, &hr);
        if (ok == 0) {
            FUZZ_CHECK(resp.status == 101);
            FUZZ_CHECK(ws_http_header_has_token(&resp, "Upgrade", "websocket"));
            FUZZ_CHECK(ws_http_header_has_token(&resp, "Connection", "upgrade"));
            FUZZ_CHECK(ws_http_header_count(&resp, "Sec-WebSocket-Accept") == 1);
            const struct ws_span *a = ws_http_header(&resp, "Sec-WebSocket-Accept");
            FUZZ_CHECK(a->n == 28 && memcmp(a->p, ACCEPT, 28) == 0);
            if (hr.protocol.n) {
                bool found = false;
                for (size_t i = 0; i < 2; i++)
                    found = found || (hr.protocol.n == strlen(offered[i]) &&
                                      memcmp(hr.protocol.p, offered[i], hr.protocol.n) == 0);
                FUZZ_CHECK(found);
            }
            FUZZ_CHECK(deflate || !hr.deflate);
            if (hr.deflate) {
                FUZZ_CHECK(hr.params.server_max_window_bits >= 9 &&
                           hr.params.server_max_window_bits <= 15);
                FUZZ_CHECK(hr.params.client_max_window_bits >= 8 &&
                           hr.params.client_max_window_bits <= 15);
            }
        } else {
            FUZZ_CHECK(ok == WS_E_HANDSHAKE && hr.reason != NULL);
        }
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 0 && data[0] == 'w') {
        check_url(data, size);
        return 0;
    }
    check_answer(data, size, size > 0 && (data[size - 1] & 1));
    return 0;
}
