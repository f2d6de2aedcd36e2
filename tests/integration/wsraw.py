"""A small raw-socket WebSocket client (RFC 6455) for conformance tests.

Standard library only. Unlike a real client it lets a test build any frame, valid or not (reserved
bits, reserved opcodes, unmasked frames, non-minimal or lying length fields) and send any bytes in
any split, and it checks what the server sends back strictly: server frames must be unmasked, use
the minimal length encoding, and control frames must be final and at most 125 bytes.
"""
import asyncio
import base64
import hashlib
import os
import select
import socket
import struct
import time
from collections import namedtuple

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFAULT_TIMEOUT = 5.0  # every wait in this module is bounded by at most this much

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

OPCODE_NAMES = {OP_CONT: "cont", OP_TEXT: "text", OP_BINARY: "binary", OP_CLOSE: "close",
                OP_PING: "ping", OP_PONG: "pong"}

Frame = namedtuple("Frame", "fin rsv opcode payload")


class ConnectionClosed(Exception):
    """The server closed the TCP connection (EOF or reset) while a frame was expected."""


class Timeout(AssertionError):
    """Nothing (or not enough) arrived within the time limit."""


class ServerViolation(AssertionError):
    """The server sent something RFC 6455 forbids a server to send."""


def accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    if isinstance(key, bytes):
        key = key.decode("ascii")
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def new_key():
    return base64.b64encode(os.urandom(16)).decode("ascii")


def mask_payload(payload, key):
    """XOR payload with the 4-byte mask key (RFC 6455 §5.3)."""
    n = len(payload)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def frame_header(opcode, length, fin=True, rsv=0, mask_key=None, length_form=None):
    """Encodes a frame header declaring `length` payload bytes.

    rsv: the three RSV bits as a number 0..7 (4 = RSV1, 2 = RSV2, 1 = RSV3).
    mask_key: 4 bytes, or None for an unmasked frame.
    length_form: None (minimal), 7, 16 or 64 to force an encoding (7 only for length < 126).
    """
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    mbit = 0x80 if mask_key is not None else 0
    if length_form is None:
        length_form = 7 if length < 126 else (16 if length < 65536 else 64)
    if length_form == 7:
        assert length < 126
        head = struct.pack("!BB", b0, mbit | length)
    elif length_form == 16:
        head = struct.pack("!BBH", b0, mbit | 126, length)
    elif length_form == 64:
        head = struct.pack("!BBQ", b0, mbit | 127, length)
    else:
        raise ValueError(length_form)
    if mask_key is not None:
        head += mask_key
    return head


def encode_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, mask_key=None,
                 length=None, length_form=None):
    """A whole client frame. `length` overrides the declared length (the payload is sent as is)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if mask and mask_key is None:
        mask_key = os.urandom(4)
    if not mask:
        mask_key = None
    declared = len(payload) if length is None else length
    head = frame_header(opcode, declared, fin=fin, rsv=rsv, mask_key=mask_key,
                        length_form=length_form)
    body = mask_payload(payload, mask_key) if mask_key is not None else payload
    return head + body


def close_payload(code=None, reason=b""):
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    if code is None:
        return b""
    return struct.pack("!H", code) + reason


class Client:
    """One open WebSocket connection seen from the client side."""

    def __init__(self, sock, buffered=b"", response=None):
        self.sock = sock
        self.buf = bytearray(buffered)
        self.response = response
        self.eof = False

    # -- sending ---------------------------------------------------------------------------
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_raw_tolerant(self, data):
        """Sends what the server still accepts; a server that already closed is not an error
        here (the test then checks what the server said before closing). Returns True if all
        bytes were written."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return False
        except socket.timeout:
            return False

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, mask=True, mask_key=None,
                   length=None, length_form=None, tolerant=False):
        data = encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask, mask_key=mask_key,
                            length=length, length_form=length_form)
        if tolerant:
            return self.send_raw_tolerant(data)
        self.send_raw(data)
        return True

    def send_chunked(self, data, chunk=1, delay=0.002):
        """Sends data in pieces of `chunk` bytes with a pause between them."""
        for i in range(0, len(data), chunk):
            self.sock.sendall(data[i:i + chunk])
            if delay:
                time.sleep(delay)

    def send_text(self, text, fin=True):
        self.send_frame(OP_TEXT, text, fin=fin)

    def send_binary(self, data, fin=True):
        self.send_frame(OP_BINARY, data, fin=fin)

    def send_close(self, code=None, reason=b"", tolerant=False):
        return self.send_frame(OP_CLOSE, close_payload(code, reason), tolerant=tolerant)

    # -- receiving -------------------------------------------------------------------------
    def _fill(self, n, deadline):
        """Reads until the buffer holds n bytes. Raises ConnectionClosed / Timeout."""
        while len(self.buf) < n:
            if self.eof:
                raise ConnectionClosed(f"EOF with {len(self.buf)} of {n} bytes buffered: "
                                       f"{bytes(self.buf[:64])!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"timed out waiting for {n} bytes, have {len(self.buf)}: "
                              f"{bytes(self.buf[:64])!r}")
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                continue
            try:
                data = self.sock.recv(1 << 20)
            except (ConnectionResetError, ConnectionAbortedError):
                data = b""
            if not data:
                self.eof = True
            else:
                self.buf += data

    def _take(self, n):
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def recv_frame(self, timeout=DEFAULT_TIMEOUT):
        """Next frame as Frame(fin, rsv, opcode, payload). Raises ConnectionClosed on EOF,
        Timeout when nothing complete arrives in time, ServerViolation on a frame a server must
        never send (masked, non-minimal length, fragmented or oversized control frame)."""
        deadline = time.monotonic() + min(timeout, DEFAULT_TIMEOUT)
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        fin = bool(b0 & 0x80)
        rsv = (b0 >> 4) & 7
        opcode = b0 & 0x0F
        masked = bool(b1 & 0x80)
        length = b1 & 0x7F
        hlen = 2
        if length == 126:
            self._fill(4, deadline)
            length = struct.unpack("!H", bytes(self.buf[2:4]))[0]
            hlen = 4
            if length < 126:
                raise ServerViolation(f"server used the 16-bit length form for {length} bytes")
        elif length == 127:
            self._fill(10, deadline)
            length = struct.unpack("!Q", bytes(self.buf[2:10]))[0]
            hlen = 10
            if length < 65536:
                raise ServerViolation(f"server used the 64-bit length form for {length} bytes")
            if length >> 63:
                raise ServerViolation("server sent a 64-bit length with the top bit set")
        header = bytes(self.buf[:hlen])
        if masked:
            raise ServerViolation(f"server frame is masked (RFC 6455 §5.1): header {header.hex()}")
        if opcode >= 8 and (not fin or length > 125):
            raise ServerViolation(f"server control frame fin={fin} length={length}")
        self._fill(hlen + length, deadline)
        self._take(hlen)
        payload = self._take(length)
        return Frame(fin, rsv, opcode, payload)

    def recv_message(self, timeout=DEFAULT_TIMEOUT):
        """Next data message as (opcode, payload), reassembling fragments the server may send.
        Any control frame, RSV bit or framing error before the message completes is an
        AssertionError naming it."""
        deadline = time.monotonic() + min(timeout, DEFAULT_TIMEOUT)
        first = self.recv_frame(max(0.0, deadline - time.monotonic()))
        describe = _describe(first)
        assert first.opcode in (OP_TEXT, OP_BINARY), f"expected a data message, got {describe}"
        assert first.rsv == 0, f"server set RSV bits without an extension: {describe}"
        parts = [first.payload]
        frame = first
        while not frame.fin:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            assert frame.opcode == OP_CONT, \
                f"expected a continuation frame, got {_describe(frame)}"
            assert frame.rsv == 0, f"server set RSV bits: {_describe(frame)}"
            parts.append(frame.payload)
        return first.opcode, b"".join(parts)

    def expect_message(self, opcode, payload, timeout=DEFAULT_TIMEOUT):
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        got_op, got = self.recv_message(timeout)
        assert got_op == opcode, \
            f"expected {OPCODE_NAMES[opcode]} message, got {OPCODE_NAMES.get(got_op, got_op)}"
        assert got == payload, (f"payload differs: expected {len(payload)} bytes "
                                f"{payload[:40]!r}, got {len(got)} bytes {got[:40]!r}")
        return got

    def expect_pong(self, payload, timeout=DEFAULT_TIMEOUT):
        frame = self.recv_frame(timeout)
        assert frame.opcode == OP_PONG, f"expected pong, got {_describe(frame)}"
        assert frame.rsv == 0, f"RSV bits set on pong: {_describe(frame)}"
        assert frame.payload == payload, \
            f"pong payload {frame.payload!r} differs from ping payload {payload!r}"
        return frame

    def expect_close(self, code=None, timeout=DEFAULT_TIMEOUT, reply=True,
                     eof_timeout=1.0, allow_empty=False):
        """Expects the next frame to be a close frame, then the end of the TCP connection.

        code: the expected close code (an int, a collection of ints, or None for any code).
        allow_empty: an empty close payload is accepted too (reported as code None).
        reply: answer a server-initiated close with a close frame first (RFC 6455 §5.5.1), so a
        server that waits for the reply can finish the handshake; leave it False when the
        server's close is itself the reply to ours.
        Returns (code, reason_bytes)."""
        frame = self.recv_frame(timeout)
        assert frame.opcode == OP_CLOSE, f"expected close {code}, got {_describe(frame)}"
        assert frame.rsv == 0, f"RSV bits on close frame: {_describe(frame)}"
        payload = frame.payload
        assert len(payload) != 1, f"server close frame has a 1-byte payload {payload!r}"
        if payload:
            got_code = struct.unpack("!H", payload[:2])[0]
            reason = payload[2:]
            try:
                reason.decode("utf-8")
            except UnicodeDecodeError:
                raise ServerViolation(f"server close reason is not UTF-8: {reason!r}")
            assert got_code not in (1005, 1006, 1015), f"server sent reserved code {got_code}"
        else:
            got_code, reason = None, b""
        if got_code is None:
            assert allow_empty or code is None, \
                f"expected close code {code}, got a close frame with an empty payload"
        elif isinstance(code, int):
            assert got_code == code, f"expected close code {code}, got {got_code} {reason!r}"
        elif code is not None:
            assert got_code in code, f"expected close code in {sorted(code)}, got {got_code} {reason!r}"
        if reply:
            self.send_close(got_code if got_code is not None else 1000, tolerant=True)
        self.expect_eof(eof_timeout)
        return got_code, reason

    def expect_eof(self, timeout=DEFAULT_TIMEOUT):
        """Asserts that nothing more arrives and the server closes the TCP connection."""
        deadline = time.monotonic() + min(timeout, DEFAULT_TIMEOUT)
        try:
            self._fill(len(self.buf) + 1, deadline)
        except ConnectionClosed:
            return
        except Timeout:
            raise Timeout(f"server did not close the TCP connection within {timeout} s")
        raise AssertionError(f"server sent bytes after its close frame: {bytes(self.buf[:64])!r}")

    def expect_silence(self, duration):
        """Asserts nothing arrives (and no EOF) for `duration` seconds."""
        deadline = time.monotonic() + duration
        try:
            self._fill(len(self.buf) + 1, deadline)
        except Timeout:
            return
        except ConnectionClosed:
            raise AssertionError("server closed the connection")
        raise AssertionError(f"unexpected bytes from server: {bytes(self.buf[:64])!r}")

    def echo_roundtrip(self, text="still alive"):
        """Sends a text message and expects the echo: proves the connection is open and idle."""
        self.send_text(text)
        self.expect_message(OP_TEXT, text)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _describe(frame):
    name = OPCODE_NAMES.get(frame.opcode, hex(frame.opcode))
    p = frame.payload
    extra = ""
    if frame.opcode == OP_CLOSE and len(p) >= 2:
        extra = f" code={struct.unpack('!H', p[:2])[0]} reason={p[2:]!r}"
    return f"{name} frame (fin={int(frame.fin)} rsv={frame.rsv} len={len(p)} {p[:40]!r}{extra})"


# -- HTTP handshake -------------------------------------------------------------------------

class Response:
    """An HTTP response head (and, for rejections, the body up to the end of the connection)."""

    def __init__(self, status_line, headers, body=b"", closed=False, raw=b""):
        self.status_line = status_line
        parts = status_line.split(" ", 2)
        self.version = parts[0]
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        self.reason = parts[2] if len(parts) > 2 else ""
        self.header_list = headers  # [(name, value)] as sent
        self.body = body
        self.closed = closed
        self.raw = raw

    def header(self, name, default=None):
        """All values of a header joined by ', ' (names are case-insensitive), or default."""
        vals = [v for n, v in self.header_list if n.lower() == name.lower()]
        return ", ".join(vals) if vals else default

    def header_count(self, name):
        return sum(1 for n, _ in self.header_list if n.lower() == name.lower())

    def __repr__(self):
        return f"<Response {self.raw[:300]!r}>"


def build_request(path="/", host="127.0.0.1", key=None, version="13", method="GET",
                  http_version="HTTP/1.1", upgrade="websocket", connection="Upgrade",
                  extra=(), omit=()):
    """Builds a handshake request. Any standard header can be left out by name in `omit`
    (case-insensitive) or replaced by passing None for its value; `extra` adds (name, value)."""
    if key is None:
        key = new_key()
    headers = [("Host", host), ("Upgrade", upgrade), ("Connection", connection),
               ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version)]
    omit = {o.lower() for o in omit}
    lines = [f"{method} {path} {http_version}"]
    for name, value in headers:
        if value is None or name.lower() in omit:
            continue
        lines.append(f"{name}: {value}")
    for name, value in extra:
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc, port, timeout=10.0, host="127.0.0.1"):
    """Waits until host:port accepts a connection. Raises RuntimeError when proc (the server's
    Popen) exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"wsserver exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("wsserver did not start listening") from None
            time.sleep(0.02)


async def open_stream(port, tls_ctx=None, rcvbuf=None, limit=2 ** 16):
    """An asyncio (reader, writer) pair on 127.0.0.1:port with TCP_NODELAY, over TLS when
    tls_ctx is given; rcvbuf sets SO_RCVBUF before connecting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls_ctx is not None:
        return await asyncio.open_connection(sock=sock, ssl=tls_ctx,
                                             server_hostname="127.0.0.1", limit=limit)
    return await asyncio.open_connection(sock=sock, limit=limit)


def open_socket(port, timeout=DEFAULT_TIMEOUT, host="127.0.0.1"):
    sock = socket.create_connection((host, port), timeout=min(timeout, DEFAULT_TIMEOUT))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(min(timeout, DEFAULT_TIMEOUT))
    return sock


def read_head(sock, deadline, limit=65536):
    """Reads an HTTP response head. Returns (status_line, headers, leftover, raw_head).
    Raises ConnectionClosed if the connection ends first, Timeout if it does not come."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout(f"no complete HTTP response head in time: {bytes(data[:200])!r}")
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            continue
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            chunk = b""
        if not chunk:
            raise ConnectionClosed(f"connection closed before a full response head: "
                                   f"{bytes(data[:200])!r}")
        data += chunk
        if len(data) > limit:
            raise AssertionError("response head too large")
    end = data.index(b"\r\n\r\n")
    head = bytes(data[:end]).decode("latin-1")
    leftover = bytes(data[end + 4:])
    lines = head.split("\r\n")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        assert sep, f"malformed response header line {line!r}"
        headers.append((name.strip(), value.strip()))
    return lines[0], headers, leftover, bytes(data[:end + 4])


def http_exchange(port, request, timeout=DEFAULT_TIMEOUT, chunk=None, delay=0.0):
    """Sends raw request bytes and reads the response to the end of the connection (for
    rejections). Returns a Response whose .closed tells whether the server closed the connection
    within the timeout; .body is the Content-Length body if given, else everything until EOF."""
    sock = open_socket(port, timeout)
    try:
        deadline = time.monotonic() + min(timeout, DEFAULT_TIMEOUT)
        try:
            if chunk:
                for i in range(0, len(request), chunk):
                    sock.sendall(request[i:i + chunk])
                    if delay:
                        time.sleep(delay)
            else:
                sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything
        status_line, headers, rest, raw = read_head(sock, deadline)
        rest = bytearray(rest)
        closed = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([sock], [], [], left)
            if not r:
                continue
            try:
                chunk_data = sock.recv(65536)
            except (ConnectionResetError, ConnectionAbortedError):
                chunk_data = b""
            if not chunk_data:
                closed = True
                break
            rest += chunk_data
        resp = Response(status_line, headers, raw=raw + bytes(rest), closed=closed)
        cl = resp.header("Content-Length")
        if cl is not None and cl.strip().isdigit():
            resp.body = bytes(rest[:int(cl)])
            resp.trailing = bytes(rest[int(cl):])
        else:
            resp.body = bytes(rest)
            resp.trailing = b""
        return resp
    finally:
        sock.close()


def handshake(port, request, timeout=DEFAULT_TIMEOUT, first_bytes=b"", chunk=None, delay=0.0):
    """Sends a raw request (plus first_bytes in the same write) and reads the response head.
    Returns (Response, socket, leftover_bytes); the caller owns the socket."""
    sock = open_socket(port, timeout)
    deadline = time.monotonic() + min(timeout, DEFAULT_TIMEOUT)
    data = request + first_bytes
    try:
        if chunk:
            for i in range(0, len(data), chunk):
                sock.sendall(data[i:i + chunk])
                if delay:
                    time.sleep(delay)
        else:
            sock.sendall(data)
        status_line, headers, leftover, raw = read_head(sock, deadline)
    except BaseException:
        sock.close()
        raise
    return Response(status_line, headers, raw=raw), sock, leftover


def check_101(resp, key):
    """Asserts a correct 101 answer for `key` (RFC 6455 §4.2.2)."""
    assert resp.status_line == "HTTP/1.1 101 Switching Protocols", \
        f"expected 101, got {resp.status_line!r}: {resp.raw!r}"
    upgrade = resp.header("Upgrade")
    assert upgrade is not None and upgrade.lower() == "websocket", f"Upgrade header {upgrade!r}"
    conn = resp.header("Connection") or ""
    assert "upgrade" in [t.strip().lower() for t in conn.split(",")], f"Connection header {conn!r}"
    assert resp.header_count("Sec-WebSocket-Accept") == 1, resp.raw
    assert resp.header("Sec-WebSocket-Accept") == accept_key(key.strip()), \
        f"Sec-WebSocket-Accept {resp.header('Sec-WebSocket-Accept')!r} for key {key!r}"


def connect(port, path="/", key=None, extra=(), first_bytes=b"", timeout=DEFAULT_TIMEOUT,
            request=None, chunk=None, delay=0.0):
    """Opens a WebSocket connection (asserting a correct 101) and returns a Client.
    first_bytes are sent in the same write as the request head."""
    if key is None:
        key = new_key()
    if request is None:
        request = build_request(path=path, key=key, extra=extra)
    resp, sock, leftover = handshake(port, request, timeout=timeout, first_bytes=first_bytes,
                                     chunk=chunk, delay=delay)
    try:
        check_101(resp, key)
    except BaseException:
        sock.close()
        raise
    return Client(sock, leftover, resp)
