#!/usr/bin/env python3
"""Writes the committed seed corpora tests/fuzz/corpus/<target>/ from the unit-test vectors.

Run from the repository root: python3 tests/fuzz/make_corpus.py
Frame and session seeds start with the two control bytes the targets read (chunk size class and
seed; see the target's header comment), then the client byte stream.
"""
import os
import random
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])  # RFC 6455 §5.7

# ---------------------------------------------------------------------------------------------


def frame(op, payload=b"", fin=True, mask=MASK, rsv=0, length=None):
    """One frame with the minimal length encoding (or a forced 7-bit length byte)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv << 4 | op
    m = 0x80 if mask else 0
    if length is not None and length >= 126 and length <= 127:
        hdr = bytes([b0, m | length])
    elif n < 126:
        hdr = bytes([b0, m | n])
    elif n <= 0xFFFF:
        hdr = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask:
        hdr += mask
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return hdr + payload


def close(code, reason=b""):
    return frame(0x8, struct.pack(">H", code) + reason)


RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def request(fields, line=b"GET /chat HTTP/1.1"):
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


GOOD = [
    b"Host: server.example.com",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: " + RFC_KEY,
    b"Sec-WebSocket-Version: 13",
]

# ---------------------------------------------------------------------------------------------

HTTP = {
    "rfc_handshake": request(GOOD + [b"Origin: http://example.com"]),
    "no_fields": b"GET / HTTP/1.1\r\n\r\n",
    "http10_query": b"HEAD /index.html?a=1&b=%20 HTTP/1.0\r\nHost: a\r\n\r\n",
    "ows_and_lists": request([b"Host:x", b"Accept:\t a, b ,,c\t", b"X-Empty:", b"x-CASE: V"]),
    "pipelined": request([b"Host: a"]) + request([b"Host: b"], b"OPTIONS * HTTP/1.1") + b"GET",
    "incomplete": b"GET /chat HTTP/1.1\r\nHost: exam",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare_cr": b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n",
    "version2": b"GET / HTTP/2.0\r\n\r\n",
    "too_many_fields": request([b"X-%d: %d" % (i, i) for i in range(65)]),
    "nul_in_value": b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    "tls_hello": bytes([0x16, 0x03, 0x01, 0x00, 0xA5, 0x01, 0x00, 0x00, 0xA1, 0x03, 0x03]),
    "utf8_target": "GET /caf\u00e9?q=\u2603 HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
}

HANDSHAKE = {
    "rfc": request(GOOD),
    "protocols": request(GOOD + [b"Sec-WebSocket-Protocol: mqtt, superchat", b"Sec-WebSocket-Protocol: chat"]),
    "deflate_offers": request(
        GOOD
        + [
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, "
            b"permessage-deflate; server_max_window_bits=\"10\"; server_no_context_takeover",
            b"Sec-WebSocket-Extensions: x-webkit-deflate-frame, permessage-deflate; "
            b"client_max_window_bits=15; client_no_context_takeover; bogus",
        ]
    ),
    "deflate_bad_params": request(
        GOOD
        + [
            b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=08, "
            b"permessage-deflate; server_max_window_bits, permessage-deflate; a=\"x\\\"y,z\", "
            b"permessage-deflate;;"
        ]
    ),
    "lists_and_case": request(
        [
            b"host: h",
            b"upgrade: h2c, WebSocket",
            b"connection: keep-alive, UPGRADE",
            b"sec-websocket-key: AQIDBAUGBwgJCgsMDQ4PEA==",
            b"sec-websocket-version: 13",
        ],
        b"GET /a?b=c HTTP/1.1",
    ),
    "version_8": request(GOOD[:4] + [b"Sec-WebSocket-Version: 8"]),
    "post": request(GOOD, b"POST /chat HTTP/1.1"),
    "http10": request(GOOD, b"GET /chat HTTP/1.0"),
    "missing_key": request(GOOD[:3] + GOOD[4:]),
    "bad_key_bits": request(GOOD[:3] + [b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==", GOOD[4]]),
    "duplicate_host": request(GOOD + [b"Host: other"]),
    "hostile_tail": request(GOOD + [b"Sec-WebSocket-Protocol: chat"]) + b"\x04chat\r\nX: y\r\n\r\nperm\x01",
}

# Frame target: control bytes (class in bits 0-2, bit 3 RSV1 allowed, bit 4 client side too).
FRAME = {
    "rfc_masked_hello": b"\x00\x01" + frame(0x1, b"Hello"),
    "rfc_masked_fragments": b"\x01\x07" + frame(0x1, b"Hel", fin=False) + frame(0x0, b"lo"),
    "rfc_masked_pong": b"\x02\x11" + frame(0xA, b"Hello"),
    "rfc_unmasked_client": b"\x13\x00" + frame(0x1, b"Hello", mask=None) + frame(0x9, b"Hello", mask=None),
    "len16_binary": b"\x06\x22" + frame(0x2, bytes(range(256)) + bytes(44)),
    "len64_header_only": b"\x05\x33" + frame(0x2, b"", length=0)[:1] + bytes([0xFF]) + struct.pack(">Q", 1 << 20) + MASK,
    "empty_frames": b"\x04\x44" + frame(0x1) + frame(0x9) + frame(0x2, fin=False) + frame(0x0),
    "close": b"\x03\x55" + close(1000, b"bye") + frame(0x8),
    "rsv1_allowed": b"\x0f\x66" + frame(0x1, b"compressed", rsv=4),
    "rsv2": b"\x07\x77" + frame(0x1, b"x", rsv=2),
    "reserved_opcode": b"\x00\x88" + frame(0x3, b"x"),
    "control_fragmented": b"\x01\x99" + frame(0x9, b"p", fin=False),
    "control_126": b"\x02\xaa" + bytes([0x89, 0xFE, 0x00, 0x7E]) + MASK,
    "not_minimal_16": b"\x03\xbb" + bytes([0x82, 0xFE, 0x00, 0x05]) + MASK + b"hello",
    "not_minimal_64": b"\x04\xcc" + bytes([0x82, 0xFF]) + struct.pack(">Q", 300) + MASK,
    "top_bit": b"\x05\xdd" + bytes([0x82, 0xFF, 0x80]) + bytes(7) + MASK,
}

UTF = "caf\u00e9 \U0001F600".encode()
SESSION = {
    "text_binary": b"\x00\x01" + frame(0x1, b"hello") + frame(0x2, b"\xff\x00\x80"),
    "fragments_with_ping": b"\x01\x02"
    + frame(0x1, b"caf\xc3", fin=False)
    + frame(0x9, b"ping!")
    + frame(0x0, b"\xa9 ", fin=False)
    + frame(0xA)
    + frame(0x0, b"\xf0\x9f\x98\x80"),
    "unit_stream": b"\x05\x10"
    + frame(0x1, b"first")
    + frame(0x2, bytes(b"A"[0] + i % 26 for i in range(130)), fin=False)
    + frame(0x9, b"ping!")
    + frame(0x0, fin=False)
    + frame(0x0, bytes(b"A"[0] + i % 26 for i in range(130, 300)))
    + frame(0x1)
    + frame(0x2, b"ABCDEFG")
    + close(4000, b"done")
    + frame(0x1, b"after close"),
    "close_empty": b"\x02\x20" + frame(0x8) + frame(0x1, b"ignored"),
    "close_bad_code": b"\x03\x30" + close(1005),
    "close_one_byte": b"\x04\x40" + frame(0x8, b"\x03"),
    "close_bad_reason": b"\x06\x50" + close(1000, b"\xc3\x28"),
    "utf8_fail_fast": b"\x07\x60" + frame(0x1, b"ok \xed\xa0\x80 never", fin=False) + frame(0x0, b"x"),
    "utf8_truncated": b"\x00\x70" + frame(0x1, b"\xe2\x82"),
    "too_big_fragments": b"\x09\x80" + frame(0x2, bytes(40), fin=False) + frame(0x0, bytes(40)),
    "too_big_header": b"\x01\x90" + bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 32) + MASK,
    "unexpected_continuation": b"\x02\xa0" + frame(0x0, b"x"),
    "expected_continuation": b"\x03\xb0" + frame(0x1, b"a", fin=False) + frame(0x1, b"b"),
    "utf8_message": b"\x04\xc0" + frame(0x1, UTF * 20),
}

# RFC 7692 §7.2.3 payloads (the 0x00 0x00 0xff 0xff tail stripped).
HELLO_Z = bytes([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])
HELLO_AGAIN_Z = bytes([0xF2, 0x00, 0x11, 0x00, 0x00])
HELLO_STORED = bytes([0x00, 0x05, 0x00, 0xFA, 0xFF, 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x00])
HELLO_BFINAL = bytes([0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00])
HELLO_TWO_BLOCKS = bytes([0xF2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xCA, 0xC9, 0xC9, 0x07, 0x00])
EMPTY_Z = b"\x00"


def deflate_msgs(msgs, wbits=15, level=6):
    """A client's payloads: raw deflate, sync flush, tail stripped (RFC 7692 §7.2.1)."""
    c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
    out = []
    for m in msgs:
        z = c.compress(m) + c.flush(zlib.Z_SYNC_FLUSH)
        assert z.endswith(b"\x00\x00\xff\xff")
        out.append(z[:-4])
    return out


def tlv(msgs):
    """fuzz_deflate's message list: a length byte, then the bytes (255: the rest)."""
    out = b""
    for i, m in enumerate(msgs):
        assert len(m) < 255 or i == len(msgs) - 1
        out += bytes([255 if len(m) >= 255 else len(m)]) + m
    return out


_RNG = random.Random(99)
BLOB = bytes(_RNG.randrange(256) for _ in range(600))
CHAT = b'{"user":"alice","text":"hello","room":"lobby"}'

# fuzz_deflate control byte 0: class 0-2, bit 3 round trip, bit 4 no context takeover, bit 5
# shared set, bit 6 64-byte limit; byte 1: window 8 + bits 5-7, level 1 + bits 0-2.
DEFLATE = {
    "rfc_hello_takeover": b"\x01\xe0" + tlv([HELLO_Z, HELLO_AGAIN_Z]),
    "rfc_stored_bfinal_blocks": b"\x12\xe1" + tlv([HELLO_STORED, HELLO_BFINAL, HELLO_TWO_BLOCKS, EMPTY_Z]),
    "bfinal_takeover": b"\x03\xe2" + tlv([HELLO_BFINAL, HELLO_AGAIN_Z]),
    "chat_takeover": b"\x04\xa3" + tlv(deflate_msgs([CHAT, CHAT, CHAT[:20]], wbits=13)),
    "far_reference": b"\x05\xe4" + tlv(deflate_msgs([BLOB + BLOB])),
    "bomb_small_limit": b"\x46\xe5" + tlv(deflate_msgs([bytes(60000)])),
    "corrupt": b"\x17\xe6" + tlv([b"\xff\xff\xff", HELLO_Z[:4], b""]),
    "round_trip_takeover": b"\x0b\x45" + tlv([CHAT, CHAT, b"", "caf\u00e9".encode() * 10]),
    "round_trip_shared": b"\x3c\x26" + tlv([CHAT, BLOB[:200], CHAT]),
}

# Session with permessage-deflate (byte 0 bit 4); byte 1: window 8 + bits 5-7, bit 4 client
# no context takeover, bit 3 a shared set.
SESSION.update(
    {
        "deflate_hello": b"\x10\xe0" + frame(0x1, HELLO_Z, rsv=4) + frame(0x1, HELLO_AGAIN_Z, rsv=4) + frame(0x1, b"plain"),
        "deflate_fragmented": b"\x13\xf8"
        + frame(0x1, HELLO_TWO_BLOCKS[:6], fin=False, rsv=4)
        + frame(0x9, b"p")
        + frame(0x0, HELLO_TWO_BLOCKS[6:])
        + frame(0x2, EMPTY_Z, rsv=4),
        "deflate_rsv1_continuation": b"\x14\xe0" + frame(0x1, HELLO_Z[:3], fin=False, rsv=4) + frame(0x0, HELLO_Z[3:], rsv=4),
        "deflate_rsv1_ping": b"\x15\xe0" + frame(0x9, b"x", rsv=4),
        "deflate_bad_utf8": b"\x16\xe0" + frame(0x1, deflate_msgs([b"ok \xc3\x28"])[0], rsv=4),
        # regressions found by fuzz_session (see tests/unit/test_session.c test_fuzz_*)
        "deflate_empty_text": b"\x10\xe0" + frame(0x1, b"", rsv=4),
        "deflate_utf8_then_bad_block": b"\x10\xe0" + frame(0x1, deflate_msgs([b"\xffabc"])[0] + b"\x00\x00\xff\xff\x07", rsv=4),
        "deflate_too_big": b"\x18\xe0" + frame(0x2, deflate_msgs([bytes(5000)])[0], rsv=4),
    }
)

UTF8 = {
    "ascii": b"Hello, world! 0123456789 abcdefghijklmnopqrstuvwxyz",
    "kosme": "\u03ba\u1f79\u03c3\u03bc\u03b5".encode(),
    "boundaries": "\u0080\u07ff\u0800\uffff\U00010000\U0010ffff\ud7ff\ue000".encode("utf-8", "surrogatepass"),
    "mixed_long": ("ascii " * 5 + "caf\u00e9 \u2603 \U0001F600 ").encode() * 4,
    "overlong_slash": b"\xc0\xaf \xe0\x80\xaf \xf0\x80\x80\xaf",
    "overlong_max": b"\xc1\xbf \xe0\x9f\xbf \xf0\x8f\xbf\xbf",
    "surrogates": b"\xed\xa0\x80 \xed\xbf\xbf",
    "above_max": b"\xf4\x90\x80\x80 \xf5\x80\x80\x80",
    "truncated": b"\xe2\x82",
    "lone_continuation": b"abc\x80def",
    "invalid_bytes": b"\xfe\xff",
    "autobahn_6_3_1": b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
}


def main():
    total = 0
    for target, seeds in (
        ("fuzz_http", HTTP),
        ("fuzz_handshake", HANDSHAKE),
        ("fuzz_frame", FRAME),
        ("fuzz_session", SESSION),
        ("fuzz_utf8", UTF8),
        ("fuzz_deflate", DEFLATE),
    ):
        d = os.path.join(ROOT, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            total += len(data)
    print("wrote %d bytes" % total)


if __name__ == "__main__":
    main()
