/* Frames encoded once and shared by many send queues. No connection state, no I/O. */
#include "ws/frameset.h"

#include "ws/frame.h"

#include <assert.h>
#include <string.h>

void ws_frameset_init(struct ws_frameset *set, uint8_t opcode, const void *data, size_t len,
                      struct ws_deflate_shared *deflate, struct ws_buf *scratch)
{
    memset(set, 0, sizeof(*set));
    set->opcode = opcode;
    set->data = data;
    set->len = len;
    set->deflate = deflate;
    set->scratch = scratch;
}

void ws_frameset_free(struct ws_frameset *set)
{
    ws_shared_unref(set->plain);
    for (size_t i = 0; i < sizeof(set->deflated) / sizeof(set->deflated[0]); i++)
        ws_shared_unref(set->deflated[i]);
    memset(set, 0, sizeof(*set));
}

struct ws_shared *ws_frameset_encode(uint8_t opcode, uint8_t rsv, const void *data, size_t len)
{
    uint8_t hdr[WS_FRAME_MAX_HEADER];
    size_t hlen = ws_frame_encode_header(hdr, true, rsv, opcode, len, NULL);
    struct ws_shared *s = ws_shared_new(hlen + len);
    memcpy(s->data, hdr, hlen);
    if (len)
        memcpy(s->data + hlen, data, len);
    return s;
}

struct ws_shared *ws_frameset_plain(struct ws_frameset *set)
{
    if (!set->plain)
        set->plain = ws_frameset_encode(set->opcode, 0, set->data, set->len);
    return set->plain;
}

struct ws_shared *ws_frameset_deflated(struct ws_frameset *set, int bits)
{
    assert(set->deflate && set->scratch && bits > 0 && bits <= WS_DEFLATE_MAX_WINDOW_BITS);
    if (!set->deflated[bits]) {
        struct ws_buf *z = set->scratch;
        z->len = 0;
        ws_deflate_shared_compress(set->deflate, bits, set->data, set->len, z);
        /* RFC 7692 §7.2.1: the compressed payload, RSV1 on the (only) frame */
        set->deflated[bits] = ws_frameset_encode(set->opcode, WS_FRAME_RSV1, z->data, z->len);
    }
    return set->deflated[bits];
}
