/* Fuzz target for the message layer (src/proto/session.c). Input: two control bytes, then the byte
 * stream a client would send. Control byte 0: bits 0-2 chunk size class, bit 3 lowers
 * max_message_bytes from 4096 to 64, bit 4 negotiates permessage-deflate (control byte 1 then
 * picks client_no_context_takeover, bit 4, and a shared set, bit 3; the client's window stays at
 * 15 bits, see README "Known issues"); both control bytes seed the chunk sizes. Checks:
 *   - split independence: feeding the stream whole and in chunks (exact-size heap copies, freed
 *     after each chunk so ASan catches an event pointing into an old chunk) gives the same events
 *     and the same final error, and both match a reference built from RFC 6455 §5.2-5.6 and §7
 *     over the reference frame parser and the reference UTF-8 validator (with deflate, up to the
 *     first compressed message: RSV1 only on a data message's first frame, RFC 7692 §6.1);
 *   - every message is at most max_message_bytes, text messages and close reasons are valid
 *     UTF-8, close codes are 1005 (no payload) or allowed on the wire, control payloads <= 125;
 *   - the feed contract: *used <= len, WS_E_AGAIN consumes everything, event data points into the
 *     caller's chunk or the session's own buffers, errors are sticky, bytes after the peer's close
 *     are consumed and ignored;
 *   - ws_close_payload truncates at a code point boundary and round-trips through a session. */
#include "fuzz.h"

#include "ws/deflate.h"
#include "ws/err.h"
#include "ws/frame.h"
#include "ws/session.h"
#include "ws/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct rec {
    enum ws_session_event_type type;
    uint8_t opcode;
    uint16_t code;
    struct fuzz_bytes data;
};

struct log {
    struct rec *ev;
    size_t n, cap;
    int rc;       /* WS_E_AGAIN when the stream ended cleanly, else the error */
    bool unknown; /* the reference stopped at a compressed message it does not model */
};

static void record(struct log *l, enum ws_session_event_type type, uint8_t opcode, uint16_t code,
                   const uint8_t *p, size_t n)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->ev = realloc(l->ev, l->cap * sizeof *l->ev);
        if (!l->ev)
            abort();
    }
    struct rec *r = &l->ev[l->n++];
    memset(r, 0, sizeof *r);
    r->type = type;
    r->opcode = opcode;
    r->code = code;
    fuzz_bytes_add(&r->data, p, n);
}

static void log_free(struct log *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->ev[i].data.p);
    free(l->ev);
    memset(l, 0, sizeof *l);
}

/* The first n events of a and b are the same. */
static void check_events(const struct log *a, const struct log *b, size_t n)
{
    FUZZ_CHECK(a->n >= n && b->n >= n);
    for (size_t i = 0; i < n; i++) {
        const struct rec *x = &a->ev[i], *y = &b->ev[i];
        FUZZ_CHECK(x->type == y->type);
        FUZZ_CHECK(x->opcode == y->opcode);
        FUZZ_CHECK(x->code == y->code);
        FUZZ_CHECK(x->data.n == y->data.n);
        FUZZ_CHECK(x->data.n == 0 || memcmp(x->data.p, y->data.p, x->data.n) == 0);
    }
}

static void check_same(const struct log *a, const struct log *b)
{
    FUZZ_CHECK(a->rc == b->rc);
    FUZZ_CHECK(a->n == b->n);
    check_events(a, b, a->n);
}

/* RFC 6455 §7.4.1-7.4.2 and the IANA registry, restated: codes a peer may put on the wire. */
static bool ref_code_ok(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* The reference session: whole stream, frames from the reference parser, naive unmasking. With
 * deflate it checks where RSV1 may appear and gives up at the first compressed message. */
static void run_ref(const uint8_t *s, size_t len, size_t max, bool deflate, struct log *l)
{
    uint8_t msg_op = 0;
    struct fuzz_bytes msg = {0};
    size_t pos = 0;
    for (;;) {
        struct fuzz_ref_header h;
        size_t c;
        int rc = fuzz_ref_header(s + pos, len - pos, true, deflate ? WS_FRAME_RSV1 : 0, &h, &c);
        if (rc < 0) {
            l->rc = rc;
            break;
        }
        bool rsv1 = h.rsv & WS_FRAME_RSV1;
        /* RFC 7692 §6.1: never on control frames, never on continuations. */
        if (rsv1 && h.opcode >= 8) {
            l->rc = WS_E_RSV;
            break;
        }
        pos += h.size;
        size_t take = h.length < len - pos ? (size_t)h.length : len - pos;
        bool complete = take == h.length;
        uint8_t *p = fuzz_malloc(take);
        for (size_t i = 0; i < take; i++)
            p[i] = s[pos + i] ^ h.mask[i % 4];
        pos += take;
        rc = WS_E_AGAIN;
        size_t bad;
        if (h.opcode >= 8) {
            /* RFC 6455 §5.5: control frames, whole, may come between fragments. */
            if (!complete) {
            } else if (h.opcode != WS_OP_CLOSE) {
                record(l, h.opcode == WS_OP_PING ? WS_SESSION_PING : WS_SESSION_PONG, h.opcode, 0,
                       p, take);
                rc = 0;
            } else if (take == 1) {
                rc = WS_E_CLOSE_PAYLOAD;
            } else if (take >= 2 && !ref_code_ok((unsigned)(p[0] << 8 | p[1]))) {
                rc = WS_E_CLOSE_CODE;
            } else if (take >= 2 && fuzz_ref_utf8(p + 2, take - 2, &bad) != 1) {
                rc = WS_E_CLOSE_REASON_UTF8;
            } else if (take >= 2) {
                record(l, WS_SESSION_CLOSE, WS_OP_CLOSE, (uint16_t)(p[0] << 8 | p[1]), p + 2,
                       take - 2);
            } else {
                record(l, WS_SESSION_CLOSE, WS_OP_CLOSE, 1005, NULL, 0);
            }
            /* After a valid close everything else is ignored: rc stays WS_E_AGAIN. */
        } else if (h.opcode == WS_OP_CONTINUATION && !msg_op) {
            rc = WS_E_UNEXPECTED_CONTINUATION; /* RFC 6455 §5.4 */
        } else if (h.opcode != WS_OP_CONTINUATION && msg_op) {
            rc = WS_E_EXPECTED_CONTINUATION; /* RFC 6455 §5.4 */
        } else if (rsv1 && h.opcode == WS_OP_CONTINUATION) {
            rc = WS_E_RSV;
        } else if (rsv1) {
            l->unknown = true;
            rc = WS_E_AGAIN;
        } else {
            if (h.opcode != WS_OP_CONTINUATION) {
                msg_op = h.opcode;
                msg.n = 0;
            }
            if (h.length > max - msg.n) {
                rc = WS_E_MESSAGE_TOO_BIG; /* checked before any payload byte */
            } else {
                fuzz_bytes_add(&msg, p, take);
                int u = fuzz_ref_utf8(msg.p, msg.n, &bad);
                if (msg_op == WS_OP_TEXT && u < 0) {
                    rc = WS_E_UTF8; /* RFC 6455 §8.1: fail fast */
                } else if (complete && h.fin) {
                    if (msg_op == WS_OP_TEXT && u != 1) {
                        rc = WS_E_UTF8;
                    } else {
                        record(l, WS_SESSION_MESSAGE, msg_op, 0, msg.p, msg.n);
                        msg_op = 0;
                        msg.n = 0;
                        rc = 0;
                    }
                } else if (complete) {
                    rc = 0;
                }
            }
        }
        free(p);
        if (rc != 0) {
            l->rc = rc;
            break;
        }
    }
    free(msg.p);
}

static bool points_into(const uint8_t *p, size_t n, const uint8_t *base, size_t len)
{
    return p >= base && n <= len && (size_t)(p - base) <= len - n;
}

static void check_event(const struct ws_session *s, const struct ws_session_event *ev,
                        const uint8_t *chunk, size_t n, size_t max)
{
    if (ev->len > 0)
        FUZZ_CHECK(points_into(ev->data, ev->len, chunk, n) ||
                   points_into(ev->data, ev->len, s->msg.data, s->msg.len) ||
                   points_into(ev->data, ev->len, s->ctl, sizeof s->ctl));
    switch (ev->type) {
    case WS_SESSION_MESSAGE:
        FUZZ_CHECK(ev->opcode == WS_OP_TEXT || ev->opcode == WS_OP_BINARY);
        FUZZ_CHECK(ev->len <= max);
        if (ev->opcode == WS_OP_TEXT)
            FUZZ_CHECK(ws_utf8_validate(ev->data, ev->len) == 0);
        break;
    case WS_SESSION_PING:
    case WS_SESSION_PONG:
        FUZZ_CHECK(ev->opcode == (ev->type == WS_SESSION_PING ? WS_OP_PING : WS_OP_PONG));
        FUZZ_CHECK(ev->len <= WS_FRAME_MAX_CONTROL_PAYLOAD);
        break;
    case WS_SESSION_CLOSE:
        FUZZ_CHECK(ev->opcode == WS_OP_CLOSE);
        FUZZ_CHECK(ev->len <= WS_FRAME_MAX_CONTROL_PAYLOAD - 2);
        FUZZ_CHECK((ev->code == 1005 && ev->len == 0) || ws_close_code_valid(ev->code));
        FUZZ_CHECK(ws_utf8_validate(ev->data, ev->len) == 0);
        FUZZ_CHECK(s->close_state == WS_CLOSE_RECEIVED);
        break;
    default:
        FUZZ_CHECK(!"unknown event type");
    }
}

/* The negotiated permessage-deflate of one connection. */
struct pmd {
    bool on;
    struct ws_deflate d;
    struct ws_deflate_shared *shared;
};

static void pmd_init(struct pmd *p, uint8_t c0, uint8_t c1)
{
    memset(p, 0, sizeof *p);
    p->on = c0 & 0x10;
    if (!p->on)
        return;
    struct ws_deflate_params params = {
        .server_no_context_takeover = true,
        .client_no_context_takeover = c1 & 0x10,
        .server_max_window_bits = 15,
        .client_max_window_bits = 15,
        .mem_level = 8,
        .level = 6,
        .compress_min_size = 128,
    };
    p->shared = c1 & 0x08 ? ws_deflate_shared_new(8, 6) : NULL;
    ws_deflate_init(&p->d, &params, p->shared);
}

static void pmd_free(struct pmd *p)
{
    if (!p->on)
        return;
    ws_deflate_reset(&p->d);
    ws_deflate_shared_free(p->shared);
}

/* Feeds s[0..len) to a fresh session like a connection does, in chunks from ch (NULL: whole). */
static void run_session(const uint8_t *s, size_t len, size_t max, struct pmd *pmd,
                        struct fuzz_chunker *ch, struct log *l)
{
    struct ws_session ss;
    ws_session_init(&ss, max);
    if (pmd->on)
        ws_session_set_deflate(&ss, &pmd->d);
    size_t pos = 0, events = 0;
    bool closed = false;
    l->rc = WS_E_AGAIN;
    for (;;) {
        size_t n = ch ? fuzz_chunker_next(ch) : len - pos;
        if (n > len - pos)
            n = len - pos;
        uint8_t *chunk = fuzz_dup(s + pos, n);
        size_t off = 0;
        for (;;) {
            struct ws_session_event ev;
            size_t used = 12345;
            int rc = ws_session_feed(&ss, chunk + off, n - off, &used, &ev);
            FUZZ_CHECK(used <= n - off);
            off += used;
            if (rc == 0) {
                FUZZ_CHECK(!closed);
                /* Each event needs at least its frame's last header byte: no endless loop. */
                FUZZ_CHECK(++events <= len);
                FUZZ_CHECK(used > 0);
                check_event(&ss, &ev, chunk, n, max);
                record(l, ev.type, ev.opcode, ev.code, ev.data, ev.len);
                closed = ev.type == WS_SESSION_CLOSE;
                continue;
            }
            if (rc == WS_E_AGAIN) {
                FUZZ_CHECK(off == n);
                break;
            }
            FUZZ_CHECK(rc < 0 && ws_err_close_code(rc) != 1011);
            FUZZ_CHECK(!closed);
            l->rc = rc;
            /* Sticky: the same error, nothing consumed. */
            FUZZ_CHECK(ws_session_feed(&ss, chunk + off, n - off, &used, &ev) == rc);
            FUZZ_CHECK(used == 0);
            break;
        }
        pos += n;
        free(chunk);
        if (l->rc != WS_E_AGAIN || pos == len)
            break;
    }
    FUZZ_CHECK(ss.close_state == (closed ? WS_CLOSE_RECEIVED : WS_CLOSE_NONE));
    if (closed && l->rc == WS_E_AGAIN) {
        /* RFC 6455 §5.5.1: after the peer's close, input is consumed and ignored. */
        struct ws_session_event ev;
        size_t used = 0;
        uint8_t *copy = fuzz_dup(s, len);
        FUZZ_CHECK(ws_session_feed(&ss, copy, len, &used, &ev) == WS_E_AGAIN && used == len);
        FUZZ_CHECK(ws_session_close_sent(&ss) == WS_CLOSE_DONE);
        FUZZ_CHECK(ws_session_feed(&ss, copy, len, &used, &ev) == WS_E_AGAIN && used == len);
        free(copy);
    }
    ws_session_reset(&ss);
}

/* ws_close_payload with a reason from the input, then through a session as a masked frame. */
static void check_close_payload(const uint8_t *s, size_t len, uint8_t pick)
{
    static const int codes[] = {1000, 1001, 1002, 1003, 1007, 1008, 1011, 1014, 3000, 4999};
    int code = codes[pick % (sizeof codes / sizeof codes[0])];
    uint8_t out[WS_FRAME_MAX_CONTROL_PAYLOAD];
    size_t n = ws_close_payload(out, code, (const char *)s, len);
    FUZZ_CHECK(n >= 2 && n <= WS_FRAME_MAX_CONTROL_PAYLOAD);
    FUZZ_CHECK((out[0] << 8 | out[1]) == code);
    size_t r = n - 2;
    FUZZ_CHECK(r <= len && (r == 0 || memcmp(out + 2, s, r) == 0));
    if (len <= WS_FRAME_MAX_CONTROL_PAYLOAD - 2)
        FUZZ_CHECK(r == len);
    size_t bad;
    if (fuzz_ref_utf8(s, len, &bad) != 1)
        return;
    /* RFC 6455 §5.5.1: a valid reason is cut only before a byte that starts a code point, so at
     * most 3 bytes short of the room there is, and stays valid. */
    if (r < len)
        FUZZ_CHECK((s[r] & 0xC0) != 0x80 && r + 3 >= WS_FRAME_MAX_CONTROL_PAYLOAD - 2);
    FUZZ_CHECK(ws_utf8_validate(out + 2, r) == 0);

    static const uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};
    uint8_t frame[WS_FRAME_MAX_HEADER + WS_FRAME_MAX_CONTROL_PAYLOAD];
    size_t h = ws_frame_encode_header(frame, true, 0, WS_OP_CLOSE, n, mask);
    memcpy(frame + h, out, n);
    ws_frame_mask(frame + h, n, mask, 0);
    struct ws_session ss;
    ws_session_init(&ss, 0);
    struct ws_session_event ev;
    size_t used;
    FUZZ_CHECK(ws_session_feed(&ss, frame, h + n, &used, &ev) == 0 && used == h + n);
    FUZZ_CHECK(ev.type == WS_SESSION_CLOSE && ev.code == code && ev.len == r);
    FUZZ_CHECK(r == 0 || memcmp(ev.data, s, r) == 0);
    ws_session_reset(&ss);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t c0 = data[0], c1 = data[1];
    const uint8_t *s = data + 2;
    size_t len = size - 2;
    size_t max = c0 & 0x08 ? 64 : 4096;

    struct log ref = {0}, whole = {0}, chunked = {0};
    struct pmd pa, pb;
    pmd_init(&pa, c0, c1);
    pmd_init(&pb, c0, c1);
    run_ref(s, len, max, pa.on, &ref);
    run_session(s, len, max, &pa, NULL, &whole);
    struct fuzz_chunker ch;
    fuzz_chunker_init(&ch, c0, c1);
    run_session(s, len, max, &pb, &ch, &chunked);
    pmd_free(&pa);
    pmd_free(&pb);
    if (ref.unknown) /* up to the compressed message the reference knows, events agree */
        check_events(&ref, &whole, ref.n);
    else
        check_same(&ref, &whole);
    check_same(&whole, &chunked);
    log_free(&ref);
    log_free(&whole);
    log_free(&chunked);

    check_close_payload(s, len, c1);
    return 0;
}
