/* RFC 6455 §5 framing: an incremental frame decoder that accepts any split of the byte stream and
 * a header encoder. The decoder never allocates and never buffers payload: it unmasks payload in
 * place and hands it back as spans of the caller's buffer. Messages, fragmentation and UTF-8 are
 * the session's job, not this module's. */
#ifndef WS_FRAME_H
#define WS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ws_opcode {
    WS_OP_CONTINUATION = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

#define WS_FRAME_RSV1 0x4 /* permessage-deflate (RFC 7692 §6) */
#define WS_FRAME_RSV2 0x2
#define WS_FRAME_RSV3 0x1
#define WS_FRAME_MAX_HEADER 14           /* 2 + 8 extended length + 4 mask */
#define WS_FRAME_MAX_CONTROL_PAYLOAD 125 /* RFC 6455 §5.5 */

struct ws_frame_header {
    bool fin;
    uint8_t rsv; /* WS_FRAME_RSV* bits as found */
    uint8_t opcode;
    bool masked;
    uint8_t mask[4];
    uint64_t length;
};

enum ws_frame_event_type {
    WS_FRAME_HEADER,  /* ev.header is complete and valid */
    WS_FRAME_PAYLOAD, /* ev.data/ev.len: next unmasked payload bytes; ev.last ends the frame */
};

struct ws_frame_event {
    enum ws_frame_event_type type;
    struct ws_frame_header header; /* the current frame's header, on every event */
    uint8_t *data;                 /* into the caller's buffer */
    size_t len;
    bool last; /* WS_FRAME_PAYLOAD: this span completes the frame's payload */
};

enum ws_frame_decoder_state {
    WS_FRAME_STATE_HEADER,
    WS_FRAME_STATE_PAYLOAD,
    WS_FRAME_STATE_ERROR,
};

struct ws_frame_decoder {
    enum ws_frame_decoder_state state;
    uint8_t hdr[WS_FRAME_MAX_HEADER]; /* header bytes gathered so far */
    uint8_t hdr_len;
    bool require_mask; /* server side: client frames must be masked */
    uint8_t rsv_allowed;
    int err;
    struct ws_frame_header header;
    uint64_t remaining; /* payload bytes still to come */
    uint64_t offset;    /* payload bytes already delivered (mask position) */
};

/* Starts a decoder. require_mask: reject unmasked frames (the server side) and masked ones when
 * false (the client side). rsv_allowed: RSV bits a negotiated extension permits. */
void ws_frame_decoder_init(struct ws_frame_decoder *d, bool require_mask, uint8_t rsv_allowed);

/* Decodes from data[0..len). Sets *used to the bytes consumed and returns:
 *   0            one event in *ev (payload unmasked in place inside data; zero-length frames
 *                give one WS_FRAME_PAYLOAD event with len 0 and last set, which needs no bytes:
 *                it comes even from a call with len 0, right after the header event);
 *   WS_E_AGAIN   all len bytes consumed without completing an event (len 0: *used is 0);
 *   WS_E_*       a protocol violation (RSV, OPCODE, UNMASKED, MASKED, CONTROL_FRAGMENTED,
 *                CONTROL_TOO_BIG, LENGTH_NOT_MINIMAL, LENGTH_TOP_BIT); sticky until init.
 * Any split of a byte stream into calls yields the same header events and the same payload
 * bytes. A payload event covers min(payload remaining, len) bytes: nothing is buffered. */
int ws_frame_decode(struct ws_frame_decoder *d, uint8_t *data, size_t len, size_t *used,
                    struct ws_frame_event *ev);

/* The common case in one step: when the decoder is between frames and data starts with a whole
 * unfragmented text or binary frame with a 7-bit length of at most max, no RSV bit and masked as
 * the role requires, unmasks its payload in place, sets *opcode, *payload and *plen and returns the
 * frame's size; otherwise returns 0 and changes nothing (ws_frame_decode takes it). The decoder
 * stays between frames: the answer is the one ws_frame_decode's events would give. */
size_t ws_frame_take_whole(const struct ws_frame_decoder *d, uint8_t *data, size_t len, size_t max,
                           uint8_t *opcode, uint8_t **payload, size_t *plen);

/* True when the decoder is between frames (no header byte gathered, no payload pending). */
static inline bool ws_frame_between(const struct ws_frame_decoder *d)
{
    return d->state == WS_FRAME_STATE_HEADER && d->hdr_len == 0;
}

/* Writes a frame header for a payload of len bytes into out; returns its size (2..14). mask is
 * NULL for server frames (never masked, RFC 6455 §5.1). */
size_t ws_frame_encode_header(uint8_t out[WS_FRAME_MAX_HEADER], bool fin, uint8_t rsv,
                              uint8_t opcode, uint64_t len, const uint8_t *mask);

/* XORs n bytes at p with mask, starting at mask position offset (RFC 6455 §5.3). Works a word
 * at a time at any alignment. */
void ws_frame_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset);

/* True for opcodes 0x8-0xF (RFC 6455 §5.5). */
bool ws_frame_is_control(uint8_t opcode);

#endif
