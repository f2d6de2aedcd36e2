/* The message layer of one WebSocket connection (RFC 6455 §5.4-5.6, §7): reassembles
 * fragmented messages, lets control frames through between fragments, validates UTF-8 as text
 * arrives, enforces the message size limit before buffering and validates close frames. It does
 * no I/O and keeps no socket: the caller feeds bytes and acts on the events. */
#ifndef WS_SESSION_H
#define WS_SESSION_H

#include "ws/buf.h"
#include "ws/deflate.h"
#include "ws/frame.h"
#include "ws/utf8.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ws_session_event_type {
    WS_SESSION_MESSAGE, /* a whole text or binary message */
    WS_SESSION_PING,
    WS_SESSION_PONG,
    WS_SESSION_CLOSE, /* the peer's close frame, validated */
};

struct ws_session_event {
    enum ws_session_event_type type;
    uint8_t opcode;      /* WS_OP_TEXT or WS_OP_BINARY for messages */
    const uint8_t *data; /* message / ping / pong payload, or the close reason */
    size_t len;
    uint16_t code; /* close: the peer's code, 1005 when the frame had no payload */
};

/* Close handshake progress (RFC 6455 §7.1). */
enum ws_close_state {
    WS_CLOSE_NONE,     /* neither side has sent a close frame */
    WS_CLOSE_SENT,     /* we sent one and wait for the peer's */
    WS_CLOSE_RECEIVED, /* the peer sent one; ours is still to go */
    WS_CLOSE_DONE,     /* both sent: the TCP connection may close */
};

struct ws_session {
    struct ws_frame_decoder dec;
    struct ws_utf8 utf8;
    uint8_t msg_opcode;         /* WS_OP_TEXT/BINARY while a message is in progress, else 0 */
    bool msg_compressed;        /* the message in progress had RSV1 (RFC 7692 §6) */
    bool msg_done;              /* msg holds a message handed out by the last event */
    uint8_t ctl_len;            /* bytes of ctl gathered */
    struct ws_buf msg;          /* the message being assembled (empty when zero-copy) */
    struct ws_deflate *deflate; /* permessage-deflate when negotiated, else NULL (borrowed) */
    uint64_t msg_len;           /* bytes of the message so far */
    uint8_t *ctl; /* a control frame split across reads (WS_FRAME_MAX_CONTROL_PAYLOAD bytes,
                   * made by the first one, else NULL) */
    size_t max_message_bytes;
    enum ws_close_state close_state;
    int err; /* sticky */
};

/* Starts a session. max_message_bytes caps a reassembled message (1009 beyond it). */
void ws_session_init(struct ws_session *s, size_t max_message_bytes);

/* permessage-deflate was negotiated: RSV1 on a message's first frame now marks it compressed,
 * and its payload is inflated into the message (bounded by max_message_bytes as it inflates). */
void ws_session_set_deflate(struct ws_session *s, struct ws_deflate *d);

/* The client role: right after ws_session_init, the peer is a server, whose frames must not be
 * masked (WS_E_MASKED otherwise). Everything else is the same in both roles. */
void ws_session_set_client(struct ws_session *s);

/* Frees the message and control-frame buffers; the session may be initialised again. */
void ws_session_reset(struct ws_session *s);

/* Decodes from data[0..len) (unmasking in place). Sets *used to the bytes consumed and returns:
 *   0           one event in *ev; its pointers are valid until the next call and point into
 *               data or into the session's buffer;
 *   WS_E_AGAIN  all len bytes consumed without completing an event;
 *   WS_E_*      a violation: close with ws_err_close_code(err) (1002, 1007 or 1009). Sticky.
 * A message whose single frame lies wholly inside data is handed out without a copy. Once the
 * peer's close frame has arrived, further bytes are consumed and ignored. */
int ws_session_feed(struct ws_session *s, uint8_t *data, size_t len, size_t *used,
                    struct ws_session_event *ev);

/* Records that we sent a close frame; returns the new close state. */
enum ws_close_state ws_session_close_sent(struct ws_session *s);

/* True when code may be sent in a close frame (RFC 6455 §7.4): 1000-1003, 1007-1014, 3000-4999. */
bool ws_close_code_valid(int code);

/* Writes a close payload (2-byte code + reason truncated to fit 125 bytes at a UTF-8 boundary)
 * into out; returns its length. code 0 gives an empty payload. */
size_t ws_close_payload(uint8_t out[WS_FRAME_MAX_CONTROL_PAYLOAD], int code, const char *reason,
                        size_t reason_len);

#endif
