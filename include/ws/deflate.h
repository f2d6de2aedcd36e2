/* permessage-deflate (RFC 7692): picks a client offer and writes the answer, compresses our
 * messages and inflates the client's under a hard output limit, with zlib. Pure: no I/O. It knows
 * nothing of frames — RSV1, fragmentation and size limits on the wire belong to the session and
 * conn layers, which feed it whole messages (send) or message payload spans (receive). */
#ifndef WS_DEFLATE_H
#define WS_DEFLATE_H

#include "ws/buf.h"
#include "ws/handshake.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct z_stream_s; /* zlib's z_stream; zlib.h stays out of this header */

/* Room ws_deflate_negotiate needs for the longest Sec-WebSocket-Extensions value, NUL included. */
#define WS_DEFLATE_RESPONSE_MAX 160

/* zlib cannot make a raw deflate stream with a 256-byte window (deflateInit2 rejects -8), so our
 * own compressor's window is 9..15 bits; inflating accepts 8..15. */
#define WS_DEFLATE_MIN_SERVER_WINDOW_BITS 9
#define WS_DEFLATE_MIN_CLIENT_WINDOW_BITS 8
#define WS_DEFLATE_MAX_WINDOW_BITS 15

/* The server's side of the negotiation; ws_deflate_config_init gives the defaults. */
struct ws_deflate_config {
    bool enabled;               /* false (default): never accept an offer */
    int server_max_window_bits; /* 9..15 (15): our compressor's window */
    int client_max_window_bits; /* 9..15 (15: ask nothing): window asked of clients that allow it */
    int mem_level;              /* 1..9 (8): zlib memLevel of our compressors */
    int level;                  /* 1..9 (6): zlib compression level */
    /* false (default): always answer server_no_context_takeover, so our compressors are reset
     * per message and can be shared (ws_deflate_shared) instead of held per connection */
    bool server_context_takeover;
    /* true: always answer client_no_context_takeover (RFC 7692 §7.1.1.2), so idle connections
     * need hold no inflater either (default false: clients compress better with their window) */
    bool client_no_context_takeover;
    size_t compress_min_size; /* messages shorter than this are sent uncompressed (128) */
};

/* The agreed parameters of one connection (RFC 7692 §7.1). */
struct ws_deflate_params {
    bool server_no_context_takeover; /* we reset our compressor after every message */
    bool client_no_context_takeover; /* the client resets; we reset our inflater per message */
    int server_max_window_bits;      /* 9..15: our compressor's window */
    int client_max_window_bits;      /* 8..15: the client's window, so our inflater's */
    int mem_level;                   /* 1..9 */
    int level;                       /* 1..9 */
    size_t compress_min_size;
};

/* Fills cfg with the defaults noted beside each field. */
void ws_deflate_config_init(struct ws_deflate_config *cfg);

/* RFC 7692 §7: accepts the first of offers[0..n) (the client's order, as ws_handshake_check
 * parsed them) that cfg can honour. An offer is declined when it asks server_max_window_bits=8
 * (zlib cannot deflate raw with a 256-byte window) or holds a value outside the ranges of
 * struct ws_deflate_offer. On acceptance fills *out and writes the NUL-terminated
 * Sec-WebSocket-Extensions value into response (cap >= WS_DEFLATE_RESPONSE_MAX), e.g.
 * "permessage-deflate; server_no_context_takeover; client_max_window_bits=12". The answer never
 * holds client_max_window_bits unless the offer did, and never a server_max_window_bits above
 * the offer's. Returns 1 when accepted, 0 when declined (disabled, no offer, none acceptable;
 * then the response carries no Sec-WebSocket-Extensions and out and response are untouched). */
int ws_deflate_negotiate(const struct ws_deflate_config *cfg, const struct ws_deflate_offer *offers,
                         size_t n, struct ws_deflate_params *out, char *response, size_t cap);

/* A server-wide set of compressors reset per message: every connection whose params say
 * server_no_context_takeover compresses through it, so none holds its own deflate state
 * (~262 KiB at window 15 / memLevel 8). One per window size 9..15, created on first use, plus
 * one inflater for client messages that arrive whole when client_no_context_takeover holds.
 * Not thread-safe: one per event loop. */
struct ws_deflate_shared;

/* A shared set using mem_level (1..9) and level (1..9); nothing is allocated until used. */
struct ws_deflate_shared *ws_deflate_shared_new(int mem_level, int level);

/* Frees s and its streams; NULL is a no-op. No ws_deflate may still refer to s. */
void ws_deflate_shared_free(struct ws_deflate_shared *s);

/* Compresses one whole message in[0..n) with a fresh window of window_bits (9..15) and appends
 * the payload to out, without the trailing 0x00 0x00 0xff 0xff (RFC 7692 §7.2.1). The result
 * depends only on the input, window_bits, mem_level and level: a broadcast compresses once per
 * window size for every recipient of ws_deflate_broadcast_bits() == window_bits. Returns 0. */
int ws_deflate_shared_compress(struct ws_deflate_shared *s, int window_bits, const uint8_t *in,
                               size_t n, struct ws_buf *out);

/* Bytes the shared streams hold (zlib's allocations and the z_stream structs). */
size_t ws_deflate_shared_memory(const struct ws_deflate_shared *s);

/* One connection's compression state. Streams are created on first use: a connection that
 * never sends or receives a compressed message holds no zlib memory. */
struct ws_deflate {
    struct ws_deflate_params params;
    struct ws_deflate_shared *shared; /* borrowed; NULL: every stream is the connection's own */
    struct z_stream_s *def;           /* our compressor (context takeover, or no shared set) */
    struct z_stream_s *inf;           /* the client's decompressor */
    struct z_stream_s *cur;           /* the inflater of the message in progress */
    size_t memory;                    /* bytes def and inf hold */
    uint64_t msg_in;                  /* compressed bytes of the message in progress */
    bool in_message;                  /* between inflate_begin and the last fragment */
    bool ended;                       /* cur's deflate stream ended (a block with BFINAL) */
    int err;                          /* sticky inflate error */
};

/* Starts d with the agreed params. shared (may be NULL; must outlive d) serves as the
 * compressor when params->server_no_context_takeover and as the inflater of whole messages when
 * params->client_no_context_takeover; without it d keeps its own streams and resets them per
 * message. zlib's allocator state points into d: d must not move while it holds streams. */
void ws_deflate_init(struct ws_deflate *d, const struct ws_deflate_params *params,
                     struct ws_deflate_shared *shared);

/* Frees d's streams; d may be initialised again. Safe on a zeroed struct. */
void ws_deflate_reset(struct ws_deflate *d);

/* True when a message of len bytes should be sent compressed (len >= compress_min_size). */
bool ws_deflate_should_compress(const struct ws_deflate *d, size_t len);

/* The window size whose ws_deflate_shared_compress output d can send as is (the connection
 * compresses without context takeover through d->shared), or 0 when d's compressed messages
 * depend on its history and must go through ws_deflate_compress. */
int ws_deflate_broadcast_bits(const struct ws_deflate *d);

/* Compresses one whole message in[0..n) for the client and appends the payload (to be sent with
 * RSV1 on its first frame) to out, without the trailing 0x00 0x00 0xff 0xff (RFC 7692 §7.2.1).
 * An empty message becomes the single byte 0x00. Uses d->shared when the params allow, else d's
 * own compressor (kept when context takeover holds, reset per message otherwise). Returns 0. */
int ws_deflate_compress(struct ws_deflate *d, const uint8_t *in, size_t n, struct ws_buf *out);

/* Starts inflating a message whose first frame had RSV1 set. No message may be in progress. */
void ws_deflate_inflate_begin(struct ws_deflate *d);

/* Inflates the next span in[0..n) of the message's payload, appending to out; last is the FIN of
 * the span's frame and ends the message (RFC 7692 §7.2.2: the 0x00 0x00 0xff 0xff tail is added
 * here). Spans may be split anywhere; only the check that back-references stay inside a
 * negotiated window below 15 bits is best-effort (zlib enforces it across calls, not within one),
 * which never yields wrong output, only a refusal that depends on the split. out->len never exceeds
 * max_out + 1: inflating stops as soon as it would pass max_out. Returns 0, or (sticky, the message
 * abandoned): WS_E_MESSAGE_TOO_BIG  out would exceed max_out bytes (close 1009); WS_E_COMPRESSION
 * not a valid DEFLATE stream, a reference beyond the negotiated window, or a message not ending on
 * a block boundary (close 1007). An empty payload inflates to an empty message. out->len <= max_out
 * on entry; in is the caller's. Data after a block with BFINAL set (§7.2.3.4) starts a new stream
 * on the same window. */
int ws_deflate_inflate(struct ws_deflate *d, const uint8_t *in, size_t n, bool last,
                       struct ws_buf *out, size_t max_out);

/* Bytes d's own streams hold now: zlib's allocations (the deflate state and window, hash
 * chains and pending buffer; the inflate state and window) and the z_stream structs. Shared
 * streams are not counted (see ws_deflate_shared_memory), nor struct ws_deflate itself. */
size_t ws_deflate_memory(const struct ws_deflate *d);

#endif
