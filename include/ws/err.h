/* Error codes shared by every module: one X-macro table generates enum ws_err, ws_strerror(),
 * and the mapping to WebSocket close codes and HTTP statuses. Functions return 0 or a negative
 * WS_E_*; this header holds no state. */
#ifndef WS_ERR_H
#define WS_ERR_H

/* X(NAME, close code sent for it (0: none), HTTP status answered for it (0: none), text) */
#define WS_ERR_LIST(X)                                                                             \
    X(AGAIN, 0, 0, "need more data")                                                               \
    X(NOMEM, 1011, 500, "out of memory")                                                           \
    X(RSV, 1002, 0, "reserved bits set without a negotiated extension")                            \
    X(OPCODE, 1002, 0, "unknown opcode")                                                           \
    X(UNMASKED, 1002, 0, "client frame not masked")                                                \
    X(MASKED, 1002, 0, "server frame masked")                                                      \
    X(CONTROL_FRAGMENTED, 1002, 0, "fragmented control frame")                                     \
    X(CONTROL_TOO_BIG, 1002, 0, "control frame payload over 125 bytes")                            \
    X(LENGTH_NOT_MINIMAL, 1002, 0, "payload length not minimally encoded")                         \
    X(LENGTH_TOP_BIT, 1002, 0, "64-bit payload length with the top bit set")                       \
    X(UNEXPECTED_CONTINUATION, 1002, 0, "continuation frame without a message in progress")        \
    X(EXPECTED_CONTINUATION, 1002, 0, "new data frame while a message is in progress")             \
    X(UTF8, 1007, 0, "invalid UTF-8 in text message")                                              \
    X(MESSAGE_TOO_BIG, 1009, 0, "message too big")                                                 \
    X(CLOSE_PAYLOAD, 1002, 0, "close frame with a 1-byte payload")                                 \
    X(CLOSE_CODE, 1002, 0, "close code not allowed on the wire")                                   \
    X(CLOSE_REASON_UTF8, 1007, 0, "close reason is not valid UTF-8")                               \
    X(COMPRESSION, 1007, 0, "invalid compressed data")                                             \
    X(HTTP_BAD, 0, 400, "malformed request")                                                       \
    X(HTTP_TOO_LARGE, 0, 431, "request header fields too large")                                   \
    X(HTTP_METHOD, 0, 405, "method not allowed")                                                   \
    X(HTTP_VERSION, 0, 505, "HTTP version not supported")                                          \
    X(HTTP_BODY_TOO_LARGE, 0, 413, "request body too large")                                       \
    X(HANDSHAKE, 0, 400, "bad WebSocket handshake")                                                \
    X(WS_VERSION, 0, 426, "unsupported Sec-WebSocket-Version")                                     \
    X(CLOSED, 0, 0, "connection closed")                                                           \
    X(LIMIT, 0, 0, "limit exceeded")                                                               \
    X(INVAL, 0, 0, "invalid argument")                                                             \
    X(IO, 0, 0, "I/O error")                                                                       \
    X(WANT_WRITE, 0, 0, "the transport must write before it can go on")                            \
    X(TLS, 0, 0, "TLS error")

enum ws_err_index {
#define WS_ERR_INDEX(name, close, status, text) WS_ERR_INDEX_##name,
    WS_ERR_LIST(WS_ERR_INDEX)
#undef WS_ERR_INDEX
        WS_ERR_COUNT
};

enum ws_err {
    WS_OK = 0,
#define WS_ERR_ENUM(name, close, status, text) WS_E_##name = -1 - WS_ERR_INDEX_##name,
    WS_ERR_LIST(WS_ERR_ENUM)
#undef WS_ERR_ENUM
};

/* Text for err (0 or a WS_E_*); "unknown error" for anything else. Static storage. */
const char *ws_strerror(int err);

/* Close code to send for err (RFC 6455 §7.4.1), 1011 for errors without one. */
int ws_err_close_code(int err);

/* HTTP status to answer for err, 500 for errors without one. */
int ws_err_http_status(int err);

#endif
