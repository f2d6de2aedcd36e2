"""RFC 6455 conformance of wsserver's wire protocol (SPEC.md section 3), driven by a raw client.

Every case starts its own echo server (examples/echo.lua: each message goes back with the same
kind) and asserts the exact reply: the echoed bytes, the pong payload, the HTTP status, or the
close code followed by the end of the TCP connection. Categories: handshake, framing and sizes,
splits of the byte stream, ping/pong, reserved bits, opcodes, masking, length encoding,
fragmentation, UTF-8 (valid, invalid, fail-fast), limits, close codes and reasons.
"""
import random
import struct
import time

import pytest

import wsraw
from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, build_request,
                   connect, encode_frame, frame_header, http_exchange)

MIB = 1048576
FAST = 1.0  # seconds within which a "fail at once" close must arrive


def payload_of(n, seed=0, text=False):
    """n deterministic bytes; for text, n bytes of valid UTF-8 mixing 1- and 2-byte sequences."""
    if text:
        unit = "aé"  # 3 bytes
        s = (unit * (n // 3 + 1)).encode("utf-8")[:n]
        if n % 3 == 2:  # cut in the middle of "é": end with ASCII instead
            s = s[:-1] + b"z"
        assert len(s) == n
        s.decode("utf-8")
        return s
    rnd = random.Random(seed * 7919 + n)
    return rnd.randbytes(n)


def ws(server, **kw):
    return connect(server.port, **kw)


# =========================================================================================
# Handshake (RFC 6455 §4.2)
# =========================================================================================

def test_handshake_rfc_vector(echo_server):
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    c = ws(echo_server, key=key)
    with c:
        assert c.response.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert c.buf == b"", f"server sent bytes right after the 101: {bytes(c.buf)!r}"
        # No extension or subprotocol was offered: none may be answered.
        assert c.response.header("Sec-WebSocket-Extensions") is None
        assert c.response.header("Sec-WebSocket-Protocol") is None
        c.echo_roundtrip()


@pytest.mark.parametrize("key", ["AAAAAAAAAAAAAAAAAAAAAA==", "/////////////////////w==",
                                 "x3JJHMbDL1EzLkh9GBhXDw==", "+/+/+/+/+/+/+/+/+/+/+w=="])
def test_handshake_accept_values(echo_server, key):
    with ws(echo_server, key=key) as c:
        c.echo_roundtrip()


ACCEPTED_VARIANTS = {
    "lowercase-header-names": dict(raw=lambda k: (
        "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
        f"sec-websocket-key: {k}\r\nsec-websocket-version: 13\r\n\r\n")),
    "uppercase-header-names": dict(raw=lambda k: (
        "GET / HTTP/1.1\r\nHOST: 127.0.0.1\r\nUPGRADE: WEBSOCKET\r\nCONNECTION: UPGRADE\r\n"
        f"SEC-WEBSOCKET-KEY: {k}\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n")),
    "upgrade-mixed-case": dict(upgrade="WebSocket"),
    "connection-list-keepalive-upgrade": dict(connection="keep-alive, Upgrade"),
    "connection-list-upgrade-first": dict(connection="Upgrade, HTTP2-Settings"),
    "connection-list-no-spaces": dict(connection="keep-alive,upgrade"),
    "ows-around-values": dict(raw=lambda k: (
        "GET / HTTP/1.1\r\nHost:   127.0.0.1  \r\nUpgrade:websocket\r\nConnection:  Upgrade \r\n"
        f"Sec-WebSocket-Key:   {k}   \r\nSec-WebSocket-Version:\t13\r\n\r\n")),
    "path-with-query": dict(path="/chat/room?id=42&x=%20y"),
    "extra-unknown-headers": dict(extra=[("User-Agent", "conformance/1.0"),
                                         ("X-Custom", "a" * 200), ("Cookie", "a=b; c=d")]),
    "origin-header": dict(extra=[("Origin", "http://example.com")]),
    "host-with-port": dict(host="localhost:8080"),
    "http-1.2": dict(http_version="HTTP/1.2"),
}


@pytest.mark.parametrize("variant", sorted(ACCEPTED_VARIANTS))
def test_handshake_accepted_variants(echo_server, variant):
    spec = dict(ACCEPTED_VARIANTS[variant])
    key = wsraw.new_key()
    raw = spec.pop("raw", None)
    request = raw(key).encode() if raw else build_request(key=key, **spec)
    with connect(echo_server.port, key=key, request=request) as c:
        c.echo_roundtrip()


def test_handshake_unsupported_extension_not_accepted(echo_server):
    with ws(echo_server, extra=[("Sec-WebSocket-Extensions", "x-webkit-foo; bar=1, x-other")]) as c:
        assert c.response.header("Sec-WebSocket-Extensions") is None, c.response.raw
        # RSV1 must still be a violation: nothing was negotiated.
        c.send_frame(OP_TEXT, "hi", rsv=4)
        c.expect_close(1002)


def test_handshake_subprotocol_not_configured(echo_server):
    with ws(echo_server, extra=[("Sec-WebSocket-Protocol", "chat, superchat")]) as c:
        assert c.response.header("Sec-WebSocket-Protocol") is None, c.response.raw
        c.echo_roundtrip()


def test_handshake_repeated_key_accepted(echo_server):
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    with ws(echo_server, key=key) as a, ws(echo_server, key=key) as b:
        a.echo_roundtrip("a")
        b.echo_roundtrip("b")


def test_handshake_large_head_under_limit(echo_server):
    key = wsraw.new_key()
    base = build_request(key=key, extra=[("X-Pad", "")])
    pad = 8000 - len(base)
    request = build_request(key=key, extra=[("X-Pad", "p" * pad)])
    assert len(request) == 8000
    with connect(echo_server.port, key=key, request=request) as c:
        c.echo_roundtrip()


@pytest.mark.parametrize("first", [
    pytest.param([("text", b"Hello")], id="one-text-frame"),
    pytest.param([("binary", bytes(range(256)) * 3)], id="one-binary-frame-16bit-len"),
    pytest.param([("ping", b"p"), ("text", b"a"), ("binary", b"b")], id="ping-and-two-messages"),
    pytest.param([("frag", b"Hel"), ("cont", b"lo")], id="fragmented-message"),
])
def test_handshake_frames_in_same_write(echo_server, first):
    """Bytes after the request head in the same write are the first frame bytes."""
    ops = {"text": (OP_TEXT, True), "binary": (OP_BINARY, True), "ping": (OP_PING, True),
           "frag": (OP_TEXT, False), "cont": (OP_CONT, True)}
    data = b"".join(encode_frame(ops[k][0], p, fin=ops[k][1]) for k, p in first)
    with ws(echo_server, first_bytes=data) as c:
        for kind, p in first:
            if kind == "ping":
                c.expect_pong(p)
            elif kind == "text":
                c.expect_message(OP_TEXT, p)
            elif kind == "binary":
                c.expect_message(OP_BINARY, p)
        if first[0][0] == "frag":
            c.expect_message(OP_TEXT, b"".join(p for _, p in first))
        c.echo_roundtrip()


def test_handshake_frame_and_partial_frame_in_same_write(echo_server):
    f1 = encode_frame(OP_TEXT, b"one")
    f2 = encode_frame(OP_BINARY, b"two-two")
    with ws(echo_server, first_bytes=f1 + f2[:5]) as c:
        c.expect_message(OP_TEXT, b"one")
        time.sleep(0.05)
        c.send_raw(f2[5:])
        c.expect_message(OP_BINARY, b"two-two")


def test_handshake_sent_byte_by_byte(echo_server):
    key = wsraw.new_key()
    request = build_request(key=key)
    with connect(echo_server.port, key=key, request=request, chunk=1, delay=0.001) as c:
        c.echo_roundtrip()


@pytest.mark.parametrize("cut", [1, 2, 3, 4], ids=lambda c: f"last-{c}-bytes-later")
def test_handshake_terminator_split(echo_server, cut):
    key = wsraw.new_key()
    request = build_request(key=key)
    sock = wsraw.open_socket(echo_server.port)
    try:
        sock.sendall(request[:-cut])
        time.sleep(0.1)
        sock.sendall(request[-cut:] + encode_frame(OP_TEXT, b"after"))
        resp_line, headers, leftover, raw = wsraw.read_head(sock, time.monotonic() + 5)
        resp = wsraw.Response(resp_line, headers, raw=raw)
        wsraw.check_101(resp, key)
        c = wsraw.Client(sock, leftover, resp)
        c.expect_message(OP_TEXT, b"after")
    finally:
        sock.close()


def _reject(server, request, status):
    resp = http_exchange(server.port, request)
    assert resp.status == status, f"expected {status}, got {resp.status_line!r}: {resp.raw[:400]!r}"
    assert resp.version.startswith("HTTP/1."), resp.status_line
    assert resp.header("Sec-WebSocket-Accept") is None, "a rejection must not carry an accept key"
    assert resp.closed, f"server did not close the connection after {status}"
    return resp


REJECT_400 = {
    "missing-host": build_request(omit=["Host"]),
    "missing-key": build_request(omit=["Sec-WebSocket-Key"]),
    "missing-version": build_request(omit=["Sec-WebSocket-Version"]),
    "connection-without-upgrade-token": build_request(connection="keep-alive"),
    "connection-upgrade-substring-only": build_request(connection="upgrade-insecure"),
    "key-empty": build_request(key=""),
    "key-8-bytes": build_request(key="AAAAAAAAAAA="),
    "key-32-bytes": build_request(key="A" * 43 + "="),
    "key-not-base64": build_request(key="!!!!!!!!!!!!!!!!!!!!!!=="),
    "http-1.0": build_request(http_version="HTTP/1.0"),
    "garbage-request-line": b"HELLO\r\n\r\n",
    "request-line-missing-version": b"GET /\r\nHost: x\r\n\r\n",
    "header-without-colon": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             b"Sec-WebSocket-Version: 13\r\n\r\n"),
    "nul-in-header": build_request(extra=[("X-Evil", "a\x00b")]),
}


@pytest.mark.parametrize("case", sorted(REJECT_400))
def test_handshake_rejected_400(echo_server, case):
    resp = _reject(echo_server, REJECT_400[case], 400)
    body = resp.body.decode("utf-8", "replace").strip()
    assert body, "a 400 must explain itself in a one-line body"
    assert "\n" not in body, f"400 body is not one line: {resp.body!r}"


@pytest.mark.parametrize("version", ["8", "12", "14", "0", "abc", "13, 8", "130"])
def test_handshake_wrong_version_426(echo_server, version):
    resp = _reject(echo_server, build_request(version=version), 426)
    assert resp.header("Sec-WebSocket-Version") == "13", resp.raw


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_handshake_non_get_405(echo_server, method):
    _reject(echo_server, build_request(method=method), 405)


def test_plain_get_without_upgrade_426(echo_server):
    _reject(echo_server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 426)


def test_plain_get_index_without_static_426(echo_server):
    _reject(echo_server, b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n", 426)


def test_handshake_head_over_limit_431(echo_server):
    request = build_request(extra=[("X-Pad", "p" * 9000)])
    _reject(echo_server, request, 431)


def test_handshake_many_headers_over_limit_431(echo_server):
    request = build_request(extra=[(f"X-H{i}", "v" * 50) for i in range(200)])
    assert len(request) > 8192
    _reject(echo_server, request, 431)


def test_handshake_unterminated_head_over_limit_431(echo_server):
    """A head that never ends must be refused once it passes the limit, not waited for."""
    request = build_request()[:-4] + b"\r\nX-Pad: " + b"p" * 9000
    _reject(echo_server, request, 431)


# =========================================================================================
# Framing: echo of every length class, masking
# =========================================================================================

SIZES = [0, 1, 125, 126, 127, 65535, 65536, MIB - 1, MIB]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_echo_sizes(echo_server, opcode, size):
    payload = payload_of(size, text=(opcode == OP_TEXT))
    with ws(echo_server) as c:
        c.send_frame(opcode, payload)
        c.expect_message(opcode, payload)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_message_over_default_max_1009(echo_server, opcode):
    payload = payload_of(MIB + 1, text=(opcode == OP_TEXT))
    with ws(echo_server) as c:
        c.send_frame(opcode, payload, tolerant=True)
        c.expect_close(1009)


@pytest.mark.parametrize("size", [2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65])
def test_unmask_odd_lengths(echo_server, size):
    payload = payload_of(size, seed=size)
    with ws(echo_server) as c:
        c.send_frame(OP_BINARY, payload, mask_key=b"\x81\x42\x0f\xf0")
        c.expect_message(OP_BINARY, payload)


@pytest.mark.parametrize("mask_key", [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x37\xfa\x21\x3d"],
                         ids=["zero-key", "ones-key", "rfc-key"])
def test_mask_keys(echo_server, mask_key):
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, b"Hello", mask_key=mask_key)
        c.expect_message(OP_TEXT, b"Hello")


def test_rfc_masked_hello_example(echo_server):
    """RFC 6455 §5.7: a single-frame masked text message containing "Hello"."""
    with ws(echo_server) as c:
        c.send_raw(bytes.fromhex("818537fa213d7f9f4d5158"))
        frame = c.recv_frame()
        assert frame == wsraw.Frame(True, 0, OP_TEXT, b"Hello")


def test_many_messages_in_one_write(echo_server):
    msgs = [(OP_TEXT if i % 2 else OP_BINARY, payload_of(i * 37 % 300, seed=i, text=bool(i % 2)))
            for i in range(50)]
    with ws(echo_server) as c:
        c.send_raw(b"".join(encode_frame(op, p) for op, p in msgs))
        for op, p in msgs:
            c.expect_message(op, p)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_in_random_chunks(echo_server, seed):
    rnd = random.Random(seed)
    msgs = []
    for i in range(30):
        op = rnd.choice([OP_TEXT, OP_BINARY])
        size = rnd.choice([0, 1, 5, 125, 126, 200, 70000])
        msgs.append((op, payload_of(size, seed=i, text=(op == OP_TEXT))))
    data = b"".join(encode_frame(op, p) for op, p in msgs)
    with ws(echo_server) as c:
        pos = 0
        while pos < len(data):
            n = rnd.choice([1, 2, 3, 7, 13, 100, 4096, 65536])
            c.send_raw(data[pos:pos + n])
            pos += n
        for op, p in msgs:
            c.expect_message(op, p)


# =========================================================================================
# Any split of the byte stream gives the same result
# =========================================================================================

SPLIT_FRAMES = {
    "text-7bit": encode_frame(OP_TEXT, "κόσμε".encode()),
    "binary-16bit": encode_frame(OP_BINARY, payload_of(300)),
    "binary-64bit": encode_frame(OP_BINARY, payload_of(65536)),
}
SPLIT_CASES = [(name, off) for name, frame in SPLIT_FRAMES.items()
               for off in range(1, {"text-7bit": len(frame), "binary-16bit": 9,
                                    "binary-64bit": 15}[name])]


@pytest.mark.parametrize("name,offset", SPLIT_CASES, ids=[f"{n}-at-{o}" for n, o in SPLIT_CASES])
def test_split_frame_at_offset(echo_server, name, offset):
    frame = SPLIT_FRAMES[name]
    op = OP_TEXT if name.startswith("text") else OP_BINARY
    expected = {"text-7bit": "κόσμε".encode(), "binary-16bit": payload_of(300),
                "binary-64bit": payload_of(65536)}[name]
    with ws(echo_server) as c:
        c.send_raw(frame[:offset])
        time.sleep(0.03)
        c.send_raw(frame[offset:])
        c.expect_message(op, expected)


BYTEWISE = {
    "text": [encode_frame(OP_TEXT, b"Hello, byte by byte")],
    "binary-16bit": [encode_frame(OP_BINARY, payload_of(130))],
    "ping": [encode_frame(OP_PING, b"ping!")],
    "fragmented-text": [encode_frame(OP_TEXT, "κό".encode()[:3], fin=False),
                        encode_frame(OP_CONT, "κό".encode()[3:], fin=False),
                        encode_frame(OP_CONT, "σμε".encode())],
    "close": [encode_frame(OP_CLOSE, wsraw.close_payload(1000, "bye"))],
    "controls-between-fragments": [encode_frame(OP_BINARY, b"\x01\x02", fin=False),
                                   encode_frame(OP_PING, b"mid-ping"),
                                   encode_frame(OP_PONG, b"mid-pong"),
                                   encode_frame(OP_CONT, b"\x03")],
    "close-invalid-reason": [encode_frame(OP_CLOSE, wsraw.close_payload(1000, b"ok\xed\xa0\x80"))],
}


@pytest.mark.parametrize("name", sorted(BYTEWISE))
def test_byte_by_byte(echo_server, name):
    with ws(echo_server) as c:
        c.send_chunked(b"".join(BYTEWISE[name]), chunk=1, delay=0.002)
        if name == "text":
            c.expect_message(OP_TEXT, b"Hello, byte by byte")
        elif name == "binary-16bit":
            c.expect_message(OP_BINARY, payload_of(130))
        elif name == "ping":
            c.expect_pong(b"ping!")
        elif name == "fragmented-text":
            c.expect_message(OP_TEXT, "κόσμε".encode())
        elif name == "controls-between-fragments":
            c.expect_pong(b"mid-ping")
            c.expect_message(OP_BINARY, b"\x01\x02\x03")
        elif name == "close-invalid-reason":
            c.expect_close(1007)
        else:
            c.expect_close(1000, reply=False)


# =========================================================================================
# Ping / pong (RFC 6455 §5.5.2, §5.5.3)
# =========================================================================================

PING_PAYLOADS = {
    "empty": b"",
    "1-byte": b"x",
    "2-bytes": b"\x00\xff",
    "text-hello": b"Hello",
    "text-utf8": "κόσμε ping".encode(),
    "invalid-utf8-is-fine": b"\xff\xfe\xed\xa0\x80",
    "binary-124": payload_of(124, seed=5),
    "binary-125": payload_of(125, seed=6),
    "all-zero-125": b"\x00" * 125,
    "text-125": payload_of(125, text=True),
}


@pytest.mark.parametrize("name", sorted(PING_PAYLOADS))
def test_ping_pong_payload(echo_server, name):
    payload = PING_PAYLOADS[name]
    with ws(echo_server) as c:
        c.send_frame(OP_PING, payload)
        c.expect_pong(payload)
        c.echo_roundtrip()


@pytest.mark.parametrize("size", [0, 10, 125])
def test_unsolicited_pong_ignored(echo_server, size):
    with ws(echo_server) as c:
        c.send_frame(OP_PONG, payload_of(size))
        # If the server answered the pong, that answer would come before the echo.
        c.echo_roundtrip("after pong")


def test_pings_one_after_another(echo_server):
    with ws(echo_server) as c:
        for i in range(10):
            c.send_frame(OP_PING, f"ping-{i}".encode())
            c.expect_pong(f"ping-{i}".encode())


def test_pings_in_one_write(echo_server):
    """A later ping's pong may replace an unsent one, but pongs come in order, each one answers
    a ping that was sent, and the last ping is answered."""
    sent = [f"burst-{i}".encode() for i in range(10)]
    with ws(echo_server) as c:
        c.send_raw(b"".join(encode_frame(OP_PING, p) for p in sent))
        c.send_text("end")
        idx = -1
        while True:
            f = c.recv_frame()
            if f.opcode == OP_TEXT:
                assert f.fin and f.payload == b"end", f
                break
            assert f.opcode == OP_PONG, f
            assert f.payload in sent, f"pong {f.payload!r} answers no ping"
            assert sent.index(f.payload) > idx, f"pong {f.payload!r} out of order"
            idx = sent.index(f.payload)
        assert idx == len(sent) - 1, "the last ping was not answered"


@pytest.mark.parametrize("size", [126, 200], ids=lambda n: f"ping-{n}")
def test_ping_too_large_1002(echo_server, size):
    with ws(echo_server) as c:
        c.send_frame(OP_PING, payload_of(size), tolerant=True)
        c.expect_close(1002)


@pytest.mark.parametrize("opcode", [OP_PONG, OP_CLOSE], ids=["pong", "close"])
def test_other_control_too_large_1002(echo_server, opcode):
    payload = payload_of(126) if opcode == OP_PONG else wsraw.close_payload(1000, "r" * 124)
    with ws(echo_server) as c:
        c.send_frame(opcode, payload, tolerant=True)
        c.expect_close(1002)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE], ids=["ping", "pong", "close"])
def test_control_frame_not_final_1002(echo_server, opcode):
    payload = wsraw.close_payload(1000) if opcode == OP_CLOSE else b"abc"
    with ws(echo_server) as c:
        c.send_frame(opcode, payload, fin=False)
        c.expect_close(1002)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG], ids=["ping", "pong"])
def test_control_frame_fragmented_by_continuation_1002(echo_server, opcode):
    """A control frame with FIN=0 followed by a continuation: the FIN=0 frame already fails."""
    with ws(echo_server) as c:
        c.send_raw(encode_frame(opcode, b"ab", fin=False) + encode_frame(OP_CONT, b"cd"))
        c.expect_close(1002)


# =========================================================================================
# Reserved bits (RFC 6455 §5.2: no extension negotiated)
# =========================================================================================

RSV_OPCODES = {"text": OP_TEXT, "binary": OP_BINARY, "ping": OP_PING, "pong": OP_PONG,
               "close": OP_CLOSE}


@pytest.mark.parametrize("rsv", range(1, 8), ids=lambda r: f"rsv{r:03b}")
@pytest.mark.parametrize("kind", sorted(RSV_OPCODES))
def test_reserved_bits_1002(echo_server, kind, rsv):
    opcode = RSV_OPCODES[kind]
    payload = wsraw.close_payload(1000) if opcode == OP_CLOSE else b"Hello"
    with ws(echo_server) as c:
        c.send_frame(opcode, payload, rsv=rsv)
        c.expect_close(1002)


@pytest.mark.parametrize("rsv", [1, 2, 4], ids=lambda r: f"rsv{r:03b}")
def test_reserved_bits_on_continuation_1002(echo_server, rsv):
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, b"Hel", fin=False)
        c.send_frame(OP_CONT, b"lo", rsv=rsv)
        c.expect_close(1002)


def test_reserved_bits_after_valid_message(echo_server):
    """The echo of the valid message comes first, then the close; nothing after it."""
    with ws(echo_server) as c:
        c.send_raw(encode_frame(OP_TEXT, b"valid") + encode_frame(OP_TEXT, b"bad", rsv=4)
                   + encode_frame(OP_PING, b"too late"))
        c.expect_message(OP_TEXT, b"valid")
        c.expect_close(1002)


# =========================================================================================
# Opcodes (RFC 6455 §5.2: 3-7 and 0xB-0xF are reserved)
# =========================================================================================

RESERVED_OPCODES = [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]


@pytest.mark.parametrize("opcode", RESERVED_OPCODES, ids=lambda o: f"op{o:#x}")
def test_reserved_opcode_empty_1002(echo_server, opcode):
    with ws(echo_server) as c:
        c.send_frame(opcode, b"")
        c.expect_close(1002)


@pytest.mark.parametrize("opcode", RESERVED_OPCODES, ids=lambda o: f"op{o:#x}")
def test_reserved_opcode_with_payload_1002(echo_server, opcode):
    with ws(echo_server) as c:
        c.send_frame(opcode, b"reserved opcode payload")
        c.expect_close(1002)


@pytest.mark.parametrize("opcode", [3, 7, 0xB, 0xF], ids=lambda o: f"op{o:#x}")
def test_reserved_opcode_inside_fragmented_message_1002(echo_server, opcode):
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, b"frag", fin=False)
        c.send_frame(opcode, b"x", fin=True)
        c.expect_close(1002)


def test_reserved_opcode_after_echo(echo_server):
    with ws(echo_server) as c:
        c.send_raw(encode_frame(OP_BINARY, b"\x01\x02") + encode_frame(5, b"") +
                   encode_frame(OP_TEXT, b"never echoed"))
        c.expect_message(OP_BINARY, b"\x01\x02")
        c.expect_close(1002)


# =========================================================================================
# Masking (RFC 6455 §5.1: client frames must be masked)
# =========================================================================================

@pytest.mark.parametrize("kind", ["text", "binary", "text-empty", "ping", "pong", "close",
                                  "continuation"])
def test_unmasked_client_frame_1002(echo_server, kind):
    with ws(echo_server) as c:
        if kind == "continuation":
            c.send_frame(OP_TEXT, b"masked start", fin=False)
            c.send_frame(OP_CONT, b"unmasked end", mask=False)
        else:
            opcode = {"text": OP_TEXT, "binary": OP_BINARY, "text-empty": OP_TEXT,
                      "ping": OP_PING, "pong": OP_PONG, "close": OP_CLOSE}[kind]
            payload = {"text-empty": b"", "close": wsraw.close_payload(1000)}.get(kind, b"Hello")
            c.send_frame(opcode, payload, mask=False)
        c.expect_close(1002)


# =========================================================================================
# Length encoding (RFC 6455 §5.2: minimal encoding, 64-bit top bit zero)
# =========================================================================================

NON_MINIMAL = [(16, 0), (16, 1), (16, 125), (64, 0), (64, 125), (64, 126), (64, 65535)]


@pytest.mark.parametrize("form,length", NON_MINIMAL, ids=[f"{f}bit-form-len{n}" for f, n in NON_MINIMAL])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_non_minimal_length_1002(echo_server, opcode, form, length):
    with ws(echo_server) as c:
        c.send_frame(opcode, payload_of(length, text=True), length_form=form, tolerant=True)
        c.expect_close(1002)


@pytest.mark.parametrize("form", [16, 64])
def test_non_minimal_length_on_ping_1002(echo_server, form):
    with ws(echo_server) as c:
        c.send_frame(OP_PING, b"abc", length_form=form)
        c.expect_close(1002)


@pytest.mark.parametrize("length", [1 << 63, (1 << 63) + 5, (1 << 64) - 1],
                         ids=["2^63", "2^63+5", "2^64-1"])
def test_length_top_bit_set_1002(echo_server, length):
    with ws(echo_server) as c:
        c.send_raw(frame_header(OP_BINARY, length, mask_key=b"abcd", length_form=64) + b"xyz")
        c.expect_close(1002, timeout=FAST)


@pytest.mark.parametrize("length", [1 << 62, (1 << 63) - 1, 1 << 40, 1 << 32, MIB + 1],
                         ids=["2^62", "2^63-1", "2^40", "2^32", "1MiB+1"])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_declared_length_over_max_1009_at_once(echo_server, opcode, length):
    """Checked before buffering: only the header is sent, the close must come at once."""
    with ws(echo_server) as c:
        c.send_raw(frame_header(opcode, length, mask_key=b"abcd"))
        c.expect_close(1009, timeout=FAST)


def test_length_form_64_minimal_accepted(echo_server):
    payload = payload_of(65536, seed=9)
    with ws(echo_server) as c:
        c.send_frame(OP_BINARY, payload, length_form=64)
        c.expect_message(OP_BINARY, payload)


# =========================================================================================
# Fragmentation (RFC 6455 §5.4)
# =========================================================================================

def _fragments(payload, n):
    """Splits payload into n pieces (some may be empty if payload is short)."""
    bounds = [len(payload) * i // n for i in range(n + 1)]
    return [payload[bounds[i]:bounds[i + 1]] for i in range(n)]


def _send_fragments(c, opcode, pieces, delay=0.0):
    for i, piece in enumerate(pieces):
        c.send_frame(opcode if i == 0 else OP_CONT, piece, fin=(i == len(pieces) - 1))
        if delay:
            time.sleep(delay)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 100])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_fragmented_echo(echo_server, opcode, n):
    payload = payload_of(1000, seed=n, text=(opcode == OP_TEXT))
    with ws(echo_server) as c:
        _send_fragments(c, opcode, _fragments(payload, n))
        c.expect_message(opcode, payload)
        c.echo_roundtrip()


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_fragments_of_one_byte(echo_server, opcode):
    payload = "Hello, wörld — κόσμε 😀".encode() if opcode == OP_TEXT else payload_of(64)
    with ws(echo_server) as c:
        _send_fragments(c, opcode, [payload[i:i + 1] for i in range(len(payload))])
        c.expect_message(opcode, payload)


def test_fragments_in_separate_writes(echo_server):
    payload = payload_of(300, text=True)
    with ws(echo_server) as c:
        _send_fragments(c, OP_TEXT, _fragments(payload, 5), delay=0.02)
        c.expect_message(OP_TEXT, payload)


EMPTY_PATTERNS = {
    "first-empty": [b"", b"abc", b"def"],
    "last-empty": [b"abc", b"def", b""],
    "middle-empty": [b"abc", b"", b"def"],
    "all-empty-3": [b"", b"", b""],
    "empty-then-fin-empty": [b"", b""],
    "many-empty-around": [b""] * 5 + [b"x"] + [b""] * 5,
}


@pytest.mark.parametrize("pattern", sorted(EMPTY_PATTERNS))
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_zero_length_fragments(echo_server, opcode, pattern):
    pieces = EMPTY_PATTERNS[pattern]
    with ws(echo_server) as c:
        _send_fragments(c, opcode, pieces)
        c.expect_message(opcode, b"".join(pieces))
        c.echo_roundtrip()


def test_two_fragmented_messages_back_to_back(echo_server):
    with ws(echo_server) as c:
        _send_fragments(c, OP_TEXT, [b"first ", b"message"])
        _send_fragments(c, OP_BINARY, [b"\x00second", b"\x01"])
        c.expect_message(OP_TEXT, b"first message")
        c.expect_message(OP_BINARY, b"\x00second\x01")


CONT_WITHOUT_MESSAGE = {
    "cont-fin": [(OP_CONT, b"abc", True)],
    "cont-not-fin": [(OP_CONT, b"abc", False)],
    "cont-empty": [(OP_CONT, b"", True)],
    "cont-after-complete-message": [(OP_TEXT, b"done", True), (OP_CONT, b"extra", True)],
    "cont-after-complete-fragmented": [(OP_TEXT, b"a", False), (OP_CONT, b"b", True),
                                       (OP_CONT, b"c", True)],
}


@pytest.mark.parametrize("case", sorted(CONT_WITHOUT_MESSAGE))
def test_continuation_without_message_1002(echo_server, case):
    frames = CONT_WITHOUT_MESSAGE[case]
    with ws(echo_server) as c:
        c.send_raw(b"".join(encode_frame(op, p, fin=fin) for op, p, fin in frames))
        if case == "cont-after-complete-message":
            c.expect_message(OP_TEXT, b"done")
        elif case == "cont-after-complete-fragmented":
            c.expect_message(OP_TEXT, b"ab")
        c.expect_close(1002)


@pytest.mark.parametrize("second_fin", [True, False], ids=["second-fin", "second-not-fin"])
@pytest.mark.parametrize("first,second", [(OP_TEXT, OP_TEXT), (OP_TEXT, OP_BINARY),
                                          (OP_BINARY, OP_TEXT), (OP_BINARY, OP_BINARY)],
                         ids=["text-text", "text-binary", "binary-text", "binary-binary"])
def test_new_message_during_fragmented_1002(echo_server, first, second, second_fin):
    with ws(echo_server) as c:
        c.send_frame(first, b"part one", fin=False)
        c.send_frame(second, b"intruder", fin=second_fin)
        c.expect_close(1002)


def test_ping_between_fragments(echo_server):
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, b"frag-1 ", fin=False)
        c.send_frame(OP_PING, b"in the middle")
        c.expect_pong(b"in the middle")  # handled at once, before the message ends
        c.send_frame(OP_CONT, b"frag-2")
        c.expect_message(OP_TEXT, b"frag-1 frag-2")


def test_ping_between_fragments_one_write(echo_server):
    with ws(echo_server) as c:
        c.send_raw(encode_frame(OP_BINARY, b"\x01", fin=False) + encode_frame(OP_PING, b"p1")
                   + encode_frame(OP_CONT, b"\x02", fin=False) + encode_frame(OP_CONT, b"\x03"))
        c.expect_pong(b"p1")
        c.expect_message(OP_BINARY, b"\x01\x02\x03")


def test_pings_between_every_fragment(echo_server):
    with ws(echo_server) as c:
        for i in range(5):
            c.send_frame(OP_TEXT if i == 0 else OP_CONT, f"{i}".encode(), fin=False)
            c.send_frame(OP_PING, f"p{i}".encode())
            c.expect_pong(f"p{i}".encode())
        c.send_frame(OP_CONT, b"end")
        c.expect_message(OP_TEXT, b"01234end")


def test_pong_between_fragments_ignored(echo_server):
    with ws(echo_server) as c:
        c.send_raw(encode_frame(OP_TEXT, b"a", fin=False) + encode_frame(OP_PONG, b"unsolicited")
                   + encode_frame(OP_CONT, b"b"))
        c.expect_message(OP_TEXT, b"ab")
        c.echo_roundtrip()


def test_ping_and_pong_between_fragments(echo_server):
    with ws(echo_server) as c:
        c.send_raw(encode_frame(OP_TEXT, b"x", fin=False) + encode_frame(OP_PONG, b"")
                   + encode_frame(OP_CONT, b"y", fin=False) + encode_frame(OP_PING, b"q")
                   + encode_frame(OP_CONT, b"z"))
        c.expect_pong(b"q")
        c.expect_message(OP_TEXT, b"xyz")


@pytest.mark.parametrize("code", [1000, 1001, None], ids=["1000", "1001", "empty"])
def test_close_between_fragments(echo_server, code):
    """The close is handled at once; the unfinished message is never delivered."""
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, b"never finished", fin=False)
        c.send_close(code)
        c.expect_close(code, reply=False, allow_empty=code is None)


# =========================================================================================
# UTF-8 (RFC 6455 §8.1; Autobahn 6.x)
# =========================================================================================

VALID_UTF8 = {
    "ascii": b"Hello-\x7f~ world",
    "mixed-latin": "Hello-µ@ßöäüàá-UTF-8!!".encode(),
    "kosme": "κόσμε".encode(),
    "nul": b"\x00",
    "nul-inside": b"a\x00b\x00",
    "U+007F": b"\x7f",
    "U+0080": b"\xc2\x80",
    "U+07FF": b"\xdf\xbf",
    "U+0800": b"\xe0\xa0\x80",
    "U+D7FF": b"\xed\x9f\xbf",
    "U+E000": b"\xee\x80\x80",
    "U+FFFD": b"\xef\xbf\xbd",
    "U+FFFE-noncharacter": b"\xef\xbf\xbe",
    "U+FFFF-noncharacter": b"\xef\xbf\xbf",
    "U+FDD0-noncharacter": b"\xef\xb7\x90",
    "U+10000": b"\xf0\x90\x80\x80",
    "U+1FFFF": b"\xf0\x9f\xbf\xbf",
    "U+10FFFF": b"\xf4\x8f\xbf\xbf",
    "U+10FFFE": b"\xf4\x8f\xbf\xbe",
    "bom": b"\xef\xbb\xbf",
    "bom-then-text": b"\xef\xbb\xbfabc",
    "emoji": "😀🎉👍🏽".encode(),
    "cjk": "漢字かなカナ한국어".encode(),
    "all-ascii": bytes(range(128)),
    "all-widths": "a\u00e9\u20ac\U0001F600".encode() * 50,
    "long-mixed": ("αβγ日本😀x" * 500).encode(),
}


@pytest.mark.parametrize("name", sorted(VALID_UTF8))
def test_utf8_valid_single_frame(echo_server, name):
    payload = VALID_UTF8[name]
    payload.decode("utf-8")  # the table itself must be right
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, payload)
        c.expect_message(OP_TEXT, payload)


@pytest.mark.parametrize("name", ["kosme", "U+10FFFF", "emoji", "all-widths", "long-mixed"])
def test_utf8_valid_one_byte_fragments(echo_server, name):
    payload = VALID_UTF8[name][:400]
    payload.decode("utf-8")
    with ws(echo_server) as c:
        c.send_raw(b"".join(encode_frame(OP_TEXT if i == 0 else OP_CONT, payload[i:i + 1],
                                         fin=(i == len(payload) - 1))
                            for i in range(len(payload))))
        c.expect_message(OP_TEXT, payload)


UTF8_SPLIT = ["κόσμε".encode(), "€".encode(), "\U0001F600!".encode(), b"\xf4\x8f\xbf\xbf"]
UTF8_SPLIT_CASES = [(i, off) for i, s in enumerate(UTF8_SPLIT) for off in range(1, len(s))]


@pytest.mark.parametrize("idx,offset", UTF8_SPLIT_CASES,
                         ids=[f"{UTF8_SPLIT[i].hex()}-at-{o}" for i, o in UTF8_SPLIT_CASES])
def test_utf8_split_across_fragments_valid(echo_server, idx, offset):
    payload = UTF8_SPLIT[idx]
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, payload[:offset], fin=False)
        c.send_frame(OP_CONT, payload[offset:])
        c.expect_message(OP_TEXT, payload)



@pytest.mark.parametrize("prefix", range(0, 9))
def test_utf8_valid_multibyte_at_every_alignment(echo_server, prefix):
    """Word-at-a-time validators: a 4-, 3- and 2-byte sequence after k ASCII bytes."""
    payload = b"a" * prefix + "😀€é".encode() + b"z" * 20 + "😀".encode() + b"tail" * 5
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, payload)
        c.expect_message(OP_TEXT, payload)


INVALID_OFFSETS = [0, 1, 3, 7, 8, 9, 15, 16, 31, 32, 1000, 4095]


@pytest.mark.parametrize("offset", INVALID_OFFSETS)
def test_utf8_invalid_byte_at_offset_1007(echo_server, offset):
    """One 0xFF byte at various alignments inside a 4096-byte ASCII text message."""
    payload = bytearray(b"x" * 4096)
    payload[offset] = 0xFF
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, bytes(payload))
        c.expect_close(1007)


def test_utf8_max_size_of_4byte_chars(echo_server):
    payload = "😀".encode() * (MIB // 4)
    assert len(payload) == MIB
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, payload)
        c.expect_message(OP_TEXT, payload)


@pytest.mark.parametrize("tail", [b"\xed\xa0\x80", b"\xc0\x80", b"\xf0\x9f\x98"],
                         ids=["surrogate", "overlong", "truncated"])
def test_utf8_invalid_at_end_of_large_text_1007(echo_server, tail):
    payload = "é😀".encode() * 100000 + tail
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, payload)
        c.expect_close(1007)

INVALID_UTF8 = {
    # lone continuation bytes
    "cont-80": b"\x80",
    "cont-bf": b"\xbf",
    "cont-80bf80bf": b"\x80\xbf\x80\xbf",
    "all-continuations": bytes(range(0x80, 0xc0)),
    "ascii-then-cont": b"abc\x80def",
    # lone start bytes followed by a space
    "c2-space": b"\xc2 ",
    "e0-space": b"\xe0 ",
    "f0-space": b"\xf0 ",
    "e1-80-space": b"\xe1\x80 ",
    # truncated at message end
    "trunc-c2": b"\xc2",
    "trunc-e0a0": b"\xe0\xa0",
    "trunc-f09080": b"\xf0\x90\x80",
    "trunc-kosme": "κόσμ".encode() + b"\xce",
    "trunc-emoji": "ok".encode() + "😀".encode()[:3],
    # overlong forms
    "overlong-c080": b"\xc0\x80",
    "overlong-c0af": b"\xc0\xaf",
    "overlong-c1bf": b"\xc1\xbf",
    "overlong-e08080": b"\xe0\x80\x80",
    "overlong-e080af": b"\xe0\x80\xaf",
    "overlong-e09fbf": b"\xe0\x9f\xbf",
    "overlong-f0808080": b"\xf0\x80\x80\x80",
    "overlong-f08fbfbf": b"\xf0\x8f\xbf\xbf",
    "overlong-f888808080": b"\xf8\x88\x80\x80\x80",
    "overlong-fc8480808080": b"\xfc\x84\x80\x80\x80\x80",
    # UTF-16 surrogates
    "surrogate-eda080": b"\xed\xa0\x80",
    "surrogate-edadbf": b"\xed\xad\xbf",
    "surrogate-edae80": b"\xed\xae\x80",
    "surrogate-edafbf": b"\xed\xaf\xbf",
    "surrogate-edb080": b"\xed\xb0\x80",
    "surrogate-edbe80": b"\xed\xbe\x80",
    "surrogate-edbfbf": b"\xed\xbf\xbf",
    "surrogate-pair": b"\xed\xa0\x80\xed\xb0\x80",
    # beyond U+10FFFF and impossible bytes
    "f4-90-80-80": b"\xf4\x90\x80\x80",
    "f7-bf-bf-bf": b"\xf7\xbf\xbf\xbf",
    "f5": b"\xf5\x80\x80\x80",
    "f8": b"\xf8",
    "fb": b"\xfb\xbf\xbf\xbf\xbf",
    "fc": b"\xfc",
    "fd": b"\xfd\xbf\xbf\xbf\xbf\xbf",
    "fe": b"\xfe",
    "ff": b"\xff",
    "fe-fe-ff-ff": b"\xfe\xfe\xff\xff",
    # valid text around an invalid sequence (Autobahn 6.3.1)
    "kosme-surrogate-edited": "κόσμε".encode() + b"\xed\xa0\x80" + b"edited",
}


@pytest.mark.parametrize("name", sorted(INVALID_UTF8))
def test_utf8_invalid_single_frame_1007(echo_server, name):
    payload = INVALID_UTF8[name]
    with pytest.raises(UnicodeDecodeError):
        payload.decode("utf-8")
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, payload)
        c.expect_close(1007)


@pytest.mark.parametrize("name", ["surrogate-eda080", "overlong-c080", "f4-90-80-80", "ff",
                                  "trunc-e0a0"])
def test_utf8_invalid_in_last_fragment_1007(echo_server, name):
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, b"valid start ", fin=False)
        c.send_frame(OP_CONT, b"valid middle ", fin=False)
        c.send_frame(OP_CONT, INVALID_UTF8[name])
        c.expect_close(1007)


@pytest.mark.parametrize("split", [1, 2], ids=["ed|a080", "eda0|80"])
def test_utf8_invalid_split_across_fragments_1007(echo_server, split):
    seq = b"\xed\xa0\x80"
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, b"x" + seq[:split], fin=False)
        c.send_frame(OP_CONT, seq[split:] + b"y")
        c.expect_close(1007)


def test_utf8_truncated_across_fragments_1007(echo_server):
    """Each fragment is a valid prefix, but the message ends inside a sequence."""
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, b"\xf0", fin=False)
        c.send_frame(OP_CONT, b"\x90", fin=False)
        c.send_frame(OP_CONT, b"\x80")
        c.expect_close(1007)


def test_invalid_utf8_in_binary_is_fine(echo_server):
    payload = b"\xff\xfe\xed\xa0\x80\xc0\x80"
    with ws(echo_server) as c:
        c.send_frame(OP_BINARY, payload)
        c.expect_message(OP_BINARY, payload)


FAIL_FAST = {
    "overlong-c080": b"\xc0\x80",
    "surrogate-eda080": b"\xed\xa0\x80",
    "above-max-f4908080": b"\xf4\x90\x80\x80",
    "lone-cont-80": b"\x80",
    "ff": b"\xff",
    "kosme-surrogate-edited": "κόσμε".encode() + b"\xed\xa0\x80edited",
    # impossible after two bytes although the sequence is unfinished
    "impossible-prefix-e080": b"\xe0\x80",
    "impossible-prefix-eda0": b"\xed\xa0",
    "impossible-prefix-f490": b"\xf4\x90",
    "impossible-prefix-f08f": b"\xf0\x8f",
}


@pytest.mark.parametrize("name", sorted(FAIL_FAST))
def test_utf8_fail_fast_first_fragment_1007(echo_server, name):
    """Invalid in the first fragment (FIN=0): 1007 without waiting for the rest."""
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, FAIL_FAST[name], fin=False)
        c.expect_close(1007, timeout=FAST)


def test_utf8_fail_fast_middle_fragment_1007(echo_server):
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, "κό".encode(), fin=False)
        c.send_frame(OP_CONT, b"ok\xc0\xaf", fin=False)
        c.expect_close(1007, timeout=FAST)


def test_utf8_fail_fast_inside_unfinished_frame_1007(echo_server):
    """SPEC 3: "fail as soon as the sequence is impossible". A single text frame declares 40
    bytes; only the first 12 (with a surrogate) are sent. Stricter than waiting for the frame."""
    body = "κόσμε".encode() + b"\xed\xa0\x80" + b"x" * 27
    assert len(body) == 40
    key = b"\x11\x22\x33\x44"
    with ws(echo_server) as c:
        c.send_raw(frame_header(OP_TEXT, 40, mask_key=key) + wsraw.mask_payload(body, key)[:16])
        c.expect_close(1007, timeout=FAST)


# =========================================================================================
# Limits (--max-message-size)
# =========================================================================================

@pytest.fixture
def small_server(wsserver_factory):
    return wsserver_factory(args=["--max-message-size", "1000"])


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_limit_exact_single_frame_ok(small_server, opcode):
    payload = payload_of(1000, text=(opcode == OP_TEXT))
    with ws(small_server) as c:
        c.send_frame(opcode, payload)
        c.expect_message(opcode, payload)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_limit_single_frame_over_1009(small_server, opcode):
    with ws(small_server) as c:
        c.send_frame(opcode, payload_of(1001, text=(opcode == OP_TEXT)), tolerant=True)
        c.expect_close(1009)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_limit_exact_fragmented_ok(small_server, opcode):
    payload = payload_of(1000, text=(opcode == OP_TEXT))
    with ws(small_server) as c:
        _send_fragments(c, opcode, _fragments(payload, 4))
        c.expect_message(opcode, payload)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_limit_fragmented_over_1009(small_server, opcode):
    payload = payload_of(1001, text=(opcode == OP_TEXT))
    with ws(small_server) as c:
        c.send_frame(opcode, payload[:500], fin=False)
        c.send_frame(OP_CONT, payload[500:], tolerant=True)
        c.expect_close(1009)


def test_limit_checked_before_buffering_fragment(small_server):
    """600 bytes are buffered; a continuation header declaring 600 more must fail at once,
    before its payload arrives."""
    with ws(small_server) as c:
        c.send_frame(OP_BINARY, payload_of(600), fin=False)
        c.send_raw(frame_header(OP_CONT, 600, mask_key=b"abcd"))
        c.expect_close(1009, timeout=FAST)


def test_limit_many_small_fragments_over_1009(small_server):
    with ws(small_server) as c:
        for i in range(10):
            c.send_frame(OP_TEXT if i == 0 else OP_CONT, b"a" * 100, fin=False)
        c.send_frame(OP_CONT, b"b", tolerant=True)
        c.expect_close(1009)


def test_limit_control_frames_do_not_count(small_server):
    payload = payload_of(1000, seed=3)
    with ws(small_server) as c:
        c.send_frame(OP_BINARY, payload[:500], fin=False)
        c.send_frame(OP_PING, b"p" * 125)
        c.expect_pong(b"p" * 125)
        c.send_frame(OP_CONT, payload[500:])
        c.expect_message(OP_BINARY, payload)


def test_limit_applies_per_message(small_server):
    with ws(small_server) as c:
        for i in range(3):
            p = payload_of(1000, seed=i)
            c.send_frame(OP_BINARY, p)
            c.expect_message(OP_BINARY, p)


# =========================================================================================
# Close frames (RFC 6455 §5.5.1, §7.4)
# =========================================================================================

VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                     3000, 3999, 4000, 4999]
REASONS = {"no-reason": b"", "ascii-reason": b"bye", "utf8-reason": "κόσμε 😀".encode()}


@pytest.mark.parametrize("reason", sorted(REASONS))
@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
def test_close_valid_code_echoed(echo_server, code, reason):
    with ws(echo_server) as c:
        c.send_close(code, REASONS[reason])
        got, _ = c.expect_close(code, reply=False)
        assert got == code


def test_close_empty_payload(echo_server):
    with ws(echo_server) as c:
        c.send_close(None)
        got, reason = c.expect_close(1000, reply=False, allow_empty=True)
        assert got in (None, 1000)


def test_close_max_reason_123_bytes(echo_server):
    with ws(echo_server) as c:
        c.send_close(1000, b"r" * 123)
        c.expect_close(1000, reply=False)


def test_close_reason_125_payload_multibyte(echo_server):
    reason = ("é" * 61 + "x").encode()  # 123 bytes
    assert len(reason) == 123
    with ws(echo_server) as c:
        c.send_close(4321, reason)
        c.expect_close(4321, reply=False)


def test_close_one_byte_payload_1002(echo_server):
    with ws(echo_server) as c:
        c.send_frame(OP_CLOSE, b"\x03")
        c.expect_close(1002)


INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
def test_close_invalid_code_1002(echo_server, code):
    with ws(echo_server) as c:
        c.send_close(code)
        c.expect_close(1002)


@pytest.mark.parametrize("code", [1004, 1016, 2999])
def test_close_invalid_code_with_reason_1002(echo_server, code):
    with ws(echo_server) as c:
        c.send_close(code, b"with a reason")
        c.expect_close(1002)


INVALID_REASONS = {
    "surrogate": b"\xed\xa0\x80",
    "overlong": b"\xc0\x80",
    "lone-cont": b"abc\x80",
    "ff": b"\xff",
    "truncated": "κόσμ".encode() + b"\xce",
    "above-max": b"\xf4\x90\x80\x80",
}


@pytest.mark.parametrize("name", sorted(INVALID_REASONS))
def test_close_reason_invalid_utf8_1007(echo_server, name):
    with ws(echo_server) as c:
        c.send_close(1000, INVALID_REASONS[name])
        c.expect_close(1007)


@pytest.mark.parametrize("after", ["text", "binary", "ping", "fragment"])
def test_data_after_close_ignored(echo_server, after):
    """After the client's close the server answers the close only; frames that follow it are
    ignored, and nothing comes after the server's close frame."""
    follow = {"text": encode_frame(OP_TEXT, b"ignored"),
              "binary": encode_frame(OP_BINARY, b"ignored"),
              "ping": encode_frame(OP_PING, b"ignored"),
              "fragment": encode_frame(OP_TEXT, b"ign", fin=False) + encode_frame(OP_CONT, b"ored")}
    with ws(echo_server) as c:
        c.send_raw(encode_frame(OP_CLOSE, wsraw.close_payload(1000, "bye")) + follow[after])
        c.expect_close(1000, reply=False)


def test_data_after_close_separate_writes(echo_server):
    with ws(echo_server) as c:
        c.send_close(1001)
        c.send_frame(OP_TEXT, b"too late", tolerant=True)
        c.send_frame(OP_PING, b"too late", tolerant=True)
        c.expect_close(1001, reply=False)


def test_echo_then_close_in_one_write(echo_server):
    with ws(echo_server) as c:
        c.send_raw(encode_frame(OP_TEXT, b"last words") + encode_frame(OP_CLOSE, wsraw.close_payload(1000)))
        c.expect_message(OP_TEXT, b"last words")
        c.expect_close(1000, reply=False)


def test_ping_then_close_in_one_write(echo_server):
    with ws(echo_server) as c:
        c.send_raw(encode_frame(OP_PING, b"p") + encode_frame(OP_CLOSE, wsraw.close_payload(3000)))
        c.expect_pong(b"p")
        c.expect_close(3000, reply=False)


def test_server_initiated_close_waits_for_no_more_than_reply(echo_server):
    """After a protocol error the server's close is followed by nothing but the end of TCP,
    even when the client keeps sending data before replying."""
    with ws(echo_server) as c:
        c.send_frame(OP_TEXT, b"bad", rsv=2)
        frame = c.recv_frame()
        assert frame.opcode == OP_CLOSE and struct.unpack("!H", frame.payload[:2])[0] == 1002, frame
        c.send_frame(OP_TEXT, b"ignored", tolerant=True)
        c.send_frame(OP_PING, b"ignored", tolerant=True)
        c.send_close(1002, tolerant=True)
        c.expect_eof()
