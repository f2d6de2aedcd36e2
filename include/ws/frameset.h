/* One message encoded for many recipients (ws.broadcast, ws.publish): the whole frame plain
 * once, and compressed once per window size for recipients whose compression resets per
 * message (RFC 7692 §7.1.1.1 lets a server reset its context per message). Frames are made on
 * first need and shared by reference from every recipient's send queue. It knows nothing of
 * connections: the caller says which encoding a recipient needs. */
#ifndef WS_FRAMESET_H
#define WS_FRAMESET_H

#include "ws/buf.h"
#include "ws/deflate.h"
#include "ws/outq.h"

#include <stddef.h>
#include <stdint.h>

struct ws_frameset {
    uint8_t opcode;
    const uint8_t *data; /* borrowed: must outlive the set */
    size_t len;
    struct ws_deflate_shared *deflate; /* borrowed compressors, NULL without compression */
    struct ws_buf *scratch;            /* borrowed compression buffer */
    struct ws_shared *plain;
    struct ws_shared *deflated[WS_DEFLATE_MAX_WINDOW_BITS + 1];
};

/* Starts a set for one message; deflate and scratch may be NULL when nobody compresses. */
void ws_frameset_init(struct ws_frameset *set, uint8_t opcode, const void *data, size_t len,
                      struct ws_deflate_shared *deflate, struct ws_buf *scratch);

/* Drops the set's references; queues that took a frame keep theirs. */
void ws_frameset_free(struct ws_frameset *set);

/* The uncompressed frame (owned by the set: take a reference to keep it). */
struct ws_shared *ws_frameset_plain(struct ws_frameset *set);

/* The frame compressed with a window of bits (9..15), RSV1 set (owned by the set). The set must
 * have compressors. */
struct ws_shared *ws_frameset_deflated(struct ws_frameset *set, int bits);

/* Encodes a whole unfragmented server frame into a new shared string (one reference, the
 * caller's). */
struct ws_shared *ws_frameset_encode(uint8_t opcode, uint8_t rsv, const void *data, size_t len);

#endif
