"""Hostile peers against the real binary, over raw sockets.

Slow and stalled handshakes, oversized heads, absurd frame lengths, garbage after the upgrade,
clients that stop reading, floods, Lua handlers that fail, and a thousand peers that vanish with
an RST in the middle of a message. After every case the server process must still be alive and
serving, and its memory and file descriptors must stay bounded.
"""
import errno
import select
import struct
import time

import pytest
from wsclient import (KiB, MiB, Closed, RawPeer, fd_count, frame, new_key, raise_nofile,
                      request_head, rss_bytes)
from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, accept_key,
                   close_payload)

DROPPED = 1000

raise_nofile(4 * DROPPED + 256)


# --- raw wire helpers --------------------------------------------------------------------------


class Peer(RawPeer):
    """A RawPeer that answers nothing by itself; frames come as (fin, opcode, payload)."""

    def recv_frame(self, timeout=5.0):
        """(fin, opcode, payload), or None when the server closed or reset the TCP connection."""
        try:
            fin, _, opcode, payload = super().recv_frame(timeout)
        except Closed:
            return None
        return fin, opcode, payload

    def expect_close(self, timeout=5.0, reply=True):
        """Skip data and control frames until the close frame; return its code (None: TCP ended
        without a close frame). Answers the close so the server can finish promptly."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if f is None:
                return None
            fin, opcode, payload = f
            if opcode == OP_CLOSE:
                assert len(payload) != 1, "a 1-byte close payload is malformed"
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                if reply:
                    self.send_quietly(frame(OP_CLOSE, payload[:2]))
                return code

    def recv_message(self, timeout=5.0):
        """Next data message as (opcode, payload), answering nothing; pongs are skipped."""
        deadline = time.monotonic() + timeout
        parts, first = [], None
        while True:
            f = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if f is None:
                raise Closed("connection closed while waiting for a message")
            fin, opcode, payload = f
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                raise Closed(f"close {code} while waiting for a message")
            if opcode in (OP_PING, OP_PONG):
                continue
            if first is None:
                first = opcode
            parts.append(payload)
            if fin:
                return first, b"".join(parts)

    def handshake(self, path="/", timeout=5.0):
        key = new_key()
        self.sock.sendall(request_head(key, path))
        status, headers = self.read_head(timeout)
        assert status == 101, f"handshake answered {status}"
        assert headers.get("sec-websocket-accept") == accept_key(key)
        return self

    def echo(self, text, timeout=2.0):
        """Send a text message and return (echo payload, seconds it took)."""
        started = time.monotonic()
        self.send(frame(OP_TEXT, text.encode()))
        opcode, payload = self.recv_message(timeout)
        assert opcode == OP_TEXT
        return payload.decode(), time.monotonic() - started


@pytest.fixture
def peers(wsserver_factory):
    """Tracks raw peers so they are all closed before their server is stopped."""
    opened = []

    def new(server, handshake=True, **kw):
        p = Peer(server.port, **kw)
        opened.append(p)
        return p.handshake() if handshake else p

    yield new
    for p in opened:
        p.close()


def assert_serving(server, peers):
    """The process is alive and a brand-new client gets an echo promptly."""
    assert server.alive(), f"wsserver died:\n{server.log()[-4000:]}"
    p = peers(server)
    got, took = p.echo("are you there?", timeout=3.0)
    assert got == "are you there?"
    assert took < 1.0, f"a fresh echo took {took:.2f} s"
    p.send_quietly(frame(OP_CLOSE, close_payload(1000)))
    p.close()


def send_for(sock, chunk, seconds, limit):
    """Send `chunk` repeatedly without reading, for at most `seconds` or `limit` bytes, never
    blocking; returns bytes sent. Stops quietly when the server closes or resets."""
    sock.setblocking(False)
    sent, deadline = 0, time.monotonic() + seconds
    try:
        while sent < limit and time.monotonic() < deadline:
            _, writable, _ = select.select([], [sock], [], 0.05)
            if not writable:
                continue
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET):
                    break
                raise
    finally:
        sock.setblocking(True)
    return sent


# --- handshakes that never finish ---------------------------------------------------------------

PARTIAL_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upg"
FULL_HEAD = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


@pytest.mark.parametrize("how", ["half-head", "silent", "drip"])
def test_handshake_timeout(wsserver_factory, peers, how):
    server = wsserver_factory(args=["--handshake-timeout", "1"])
    good = peers(server)  # upgraded before the others: its handshake timer must be gone
    stalled = peers(server, handshake=False)
    started = time.monotonic()
    if how == "half-head":
        stalled.send(PARTIAL_HEAD)
    ended = None
    if how == "drip":
        # One byte every 200 ms: the deadline is for the whole head, not per read.
        for byte in FULL_HEAD[:-4]:
            if not stalled.send_quietly(bytes([byte])):
                break
            readable, _, _ = select.select([stalled.sock], [], [], 0.2)
            if readable and stalled.wait_eof(0.05):
                break
            if time.monotonic() - started > 4:
                break
    if stalled.wait_eof(max(0.1, 4.0 - (time.monotonic() - started))):
        ended = time.monotonic() - started
    assert ended is not None, "server kept the stalled handshake open past 4 s"
    assert 0.5 <= ended <= 3.0, f"stalled handshake closed after {ended:.2f} s (timeout is 1 s)"
    # The upgraded connection outlived the handshake timeout.
    got, _ = good.echo("alive after the handshake timeout")
    assert got == "alive after the handshake timeout"
    assert_serving(server, peers)


# --- oversized and near-limit heads -----------------------------------------------------------


def test_64k_header_is_431(echo_server, peers):
    p = peers(echo_server, handshake=False)
    head = FULL_HEAD[:-2] + b"X-Filler: " + b"a" * (64 * KiB) + b"\r\n\r\n"
    # Write in slices while watching for the answer: the server may reply (and close) long
    # before the whole head is sent, and that must not be an error on our side.
    for i in range(0, len(head), 4 * KiB):
        if not p.send_quietly(head[i:i + 4 * KiB]):
            break
        readable, _, _ = select.select([p.sock], [], [], 0)
        if readable:
            break
    try:
        status, _ = p.read_head(timeout=3.0)
    except Closed:
        pytest.fail("server closed the connection without answering 431")
    assert status == 431
    assert p.wait_eof(3.0), "server kept the connection after 431"
    assert_serving(echo_server, peers)


def test_head_under_limit_is_accepted(echo_server, peers):
    p = peers(echo_server, handshake=False)
    filler = b"X-Filler: " + b"a" * 6000 + b"\r\n"  # ~6.2 KiB head, under the 8 KiB default
    p.send(FULL_HEAD[:-2] + filler + b"\r\n")
    status, headers = p.read_head()
    assert status == 101
    # FULL_HEAD carries the RFC 6455 §1.3 key; this is its accept value.
    assert headers.get("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    got, _ = p.echo("big head, small message")
    assert got == "big head, small message"


# --- absurd lengths ---------------------------------------------------------------------------


@pytest.mark.parametrize("declared,code", [
    (2 ** 62, 1009),
    (1 * MiB + 1, 1009),  # just over the default --max-message-size
    (2 ** 63 + 5, 1002),  # RFC 6455 §5.2: the most significant bit must be 0
], ids=["2^62", "limit+1", "top-bit"])
def test_declared_length_rejected_before_buffering(echo_server, peers, declared, code):
    p = peers(echo_server)
    time.sleep(0.1)
    before = rss_bytes(echo_server.pid)
    p.send(frame(OP_BINARY, b"", length=declared))
    # Keep streaming "payload": a server that buffers before checking would grow by ~8 MiB.
    send_for(p.sock, b"\x00" * (64 * KiB), seconds=1.0, limit=8 * MiB)
    got = p.expect_close(timeout=5.0)
    assert got == code, f"declared length {declared}: close {got}, want {code}"
    after = rss_bytes(echo_server.pid)
    assert after - before < 3 * MiB, f"server RSS grew by {(after - before) / MiB:.1f} MiB"
    assert p.wait_eof(3.0), "server did not close TCP after the close handshake"
    assert_serving(echo_server, peers)


def test_fragments_summing_over_limit_are_1009(wsserver_factory, peers):
    server = wsserver_factory(args=["--max-message-size", str(1 * MiB)])
    p = peers(server)
    piece = b"\x01" * (700 * KiB)  # each fragment is fine alone; together they are not
    p.send(frame(OP_BINARY, piece, fin=False))
    p.send_quietly(frame(OP_CONT, piece, fin=True))
    assert p.expect_close(timeout=5.0) == 1009
    assert_serving(server, peers)


# --- garbage after the upgrade -----------------------------------------------------------------

GARBAGE = {
    "rsv-bits": frame(OP_TEXT, b"hello", rsv=0b111),
    "unknown-opcode": frame(0x3, b"hello"),
    "unmasked": frame(OP_TEXT, b"hello", mask=False),
    "ascii-text": b"hello, this is not a websocket frame\r\n" * 4,
    "zeros": b"\x00" * 64,
    "high-bytes": b"\xff\xfe\xfd\xfc" * 16,
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_after_upgrade_is_1002(echo_server, peers, name):
    p = peers(echo_server)
    got, _ = p.echo("before")
    assert got == "before"
    p.send_quietly(GARBAGE[name])
    assert p.expect_close(timeout=3.0) == 1002
    assert p.wait_eof(3.0), "server did not close TCP after the protocol error"
    assert_serving(echo_server, peers)


# --- slow consumers and floods -----------------------------------------------------------------

FLOOD_APP = r"""
return {
  message = function(conn, data, kind)
    local times = (#data >= 65536) and 400 or 1
    for _ = 1, times do
      if not conn:send(data, kind) then break end
    end
  end,
}
"""


def test_client_that_stops_reading_is_cut_off(wsserver_factory, peers):
    server = wsserver_factory(app_source=FLOOD_APP, args=["--max-buffered", str(1 * MiB)])
    bystander = peers(server)
    slow = peers(server, rcvbuf=4096)
    time.sleep(0.1)
    before = rss_bytes(server.pid)
    # 400 echoes of 64 KiB = 25 MiB owed to a client that never reads.
    slow.send(frame(OP_BINARY, b"\x07" * (64 * KiB)))
    worst, peak = 0.0, before
    for i in range(20):
        got, took = bystander.echo(f"tick {i}")
        assert got == f"tick {i}"
        worst = max(worst, took)
        peak = max(peak, rss_bytes(server.pid))
        time.sleep(0.05)
    assert worst < 0.5, f"a well-behaved client waited {worst:.2f} s behind a slow one"
    assert peak - before < 10 * MiB, f"server RSS grew by {(peak - before) / MiB:.1f} MiB"
    # Now read what the slow client was given: far less than 25 MiB, then the end.
    received, close_code = 0, None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        f = slow.recv_frame(timeout=max(0.01, deadline - time.monotonic()))
        if f is None:
            break
        fin, opcode, payload = f
        if opcode == OP_CLOSE:
            close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
            slow.send_quietly(frame(OP_CLOSE, payload[:2]))
        else:
            received += len(payload)
    else:
        pytest.fail("the slow client's connection was never closed")
    assert slow.eof
    assert received < 400 * 64 * KiB, "everything was delivered: nothing bounded the queue"
    assert close_code in (None, 1008), f"slow consumer closed with {close_code}, want 1008"
    assert_serving(server, peers)


@pytest.mark.parametrize("kind", ["pings", "messages"])
def test_flood_without_reading_stays_bounded(echo_server, peers, kind):
    """A fast client that never reads replies can't make the server buffer without bound:
    pongs coalesce or the connection is closed (1008), or reading is paused."""
    bystander = peers(echo_server)
    flooder = peers(echo_server, rcvbuf=4096)
    time.sleep(0.1)
    before = rss_bytes(echo_server.pid)
    if kind == "pings":
        unit = frame(OP_PING, b"p" * 125)
    else:
        unit = frame(OP_TEXT, b"m" * 1000)
    chunk = unit * (64 * KiB // len(unit))
    sent = send_for(flooder.sock, chunk, seconds=3.0, limit=32 * MiB)
    assert sent > 0
    grown = rss_bytes(echo_server.pid) - before
    assert grown < 10 * MiB, f"server RSS grew by {grown / MiB:.1f} MiB after {sent} flood bytes"
    got, took = bystander.echo("unaffected", timeout=3.0)
    assert took < 1.0, f"the bystander's echo took {took:.2f} s"
    flooder.rst()
    assert_serving(echo_server, peers)


# --- failing Lua handlers ---------------------------------------------------------------------

ERROR_APP = r"""
return {
  message = function(conn, data, kind)
    if data == "boom" then error("boom") end
    if data == "table" then error({}) end
    if data == "nil" then error(nil) end
    if data == "spin" then while true do end end
    conn:send(data, kind)
  end,
}
"""


@pytest.mark.parametrize("trigger", ["boom", "table", "nil"])
def test_lua_error_closes_only_that_client_1011(wsserver_factory, peers, trigger):
    server = wsserver_factory(app_source=ERROR_APP)
    bystander = peers(server)
    victim = peers(server)
    victim.send(frame(OP_TEXT, trigger.encode()))
    assert victim.expect_close(timeout=3.0) == 1011
    assert victim.wait_eof(3.0)
    got, took = bystander.echo("unaffected")
    assert got == "unaffected" and took < 1.0
    assert_serving(server, peers)


def test_handler_that_never_returns_is_interrupted(wsserver_factory, peers):
    """Pitfall: a handler that blocks the loop stalls everybody; handler_timeout (1 s) cuts it."""
    server = wsserver_factory(app_source=ERROR_APP)
    bystander = peers(server)
    victim = peers(server)
    started = time.monotonic()
    victim.send(frame(OP_TEXT, b"spin"))
    assert victim.expect_close(timeout=5.0) == 1011
    assert time.monotonic() - started < 4.0
    got, _ = bystander.echo("after the spin", timeout=3.0)
    assert got == "after the spin"
    assert_serving(server, peers)


# --- peers that stop answering -------------------------------------------------------------------

CLOSER_APP = r"""
return {
  message = function(conn, data, kind)
    if data == "close-me" then conn:close(4001, "go away") else conn:send(data, kind) end
  end,
}
"""


def test_peer_that_never_pongs_is_closed_1001(wsserver_factory, peers):
    server = wsserver_factory(args=["--ping-interval", "0.5", "--pong-timeout", "0.5"])
    deaf = peers(server)
    polite = peers(server)
    started = time.monotonic()
    pings_answered = 0
    deaf_code = deaf_at = None
    # The polite peer answers every ping; the deaf one reads but never answers.
    while time.monotonic() - started < 3.5:
        readable, _, _ = select.select([deaf.sock, polite.sock], [], [], 0.1)
        if polite.sock in readable or polite.buf:
            f = polite.recv_frame(1.0)
            assert f is not None, "the peer answering pings was disconnected"
            if f[1] == OP_PING:
                polite.send(frame(OP_PONG, f[2]))
                pings_answered += 1
        if deaf_code is None and (deaf.sock in readable or deaf.buf):
            f = deaf.recv_frame(1.0)
            if f is None or f[1] == OP_CLOSE:
                deaf_at = time.monotonic() - started
                deaf_code = struct.unpack("!H", f[2][:2])[0] if f and f[2] else None
                if f is not None:
                    deaf.send_quietly(frame(OP_CLOSE, f[2][:2]))
    assert deaf_at is not None, "a peer that never answers pings was kept open"
    assert deaf_code == 1001, f"dead peer closed with {deaf_code}, want 1001"
    assert deaf_at < 3.0, f"dead peer detected after {deaf_at:.2f} s"
    assert pings_answered >= 2, f"the idle polite peer saw {pings_answered} pings in 3.5 s"
    got, _ = polite.echo("still open")
    assert got == "still open"
    assert_serving(server, peers)


@pytest.mark.parametrize("reply", [False, True], ids=["no-reply", "reply-but-keep-tcp"])
def test_peer_that_never_finishes_close_is_dropped(wsserver_factory, peers, reply):
    """The server may half-close after its close frame, but it must release the connection
    within close_timeout even if the peer never answers; a peer that answers has completed the
    close handshake, and the server then closes TCP at once whether or not the peer does."""
    server = wsserver_factory(app_source=CLOSER_APP, args=["--close-timeout", "0.5"])
    p = peers(server)
    assert p.echo("warm-up")[0] == "warm-up"
    fds_open = fd_count(server.pid)
    p.send(frame(OP_TEXT, b"close-me"))
    started = time.monotonic()
    f = p.recv_frame(3.0)
    assert f is not None and f[1] == OP_CLOSE, f"expected a close frame, got {f!r}"
    assert f[2] == close_payload(4001, b"go away")
    if reply:
        p.send(frame(OP_CLOSE, f[2][:2]))
    # Our socket stays open: only the server's timer can end this connection.
    while fd_count(server.pid) >= fds_open and time.monotonic() - started < 4.0:
        time.sleep(0.02)
    took = time.monotonic() - started
    assert fd_count(server.pid) < fds_open, "server held the connection for more than 4 s"
    if reply:
        assert took < 0.3, f"connection released {took:.2f} s after the reply, not at once"
        assert p.wait_eof(1.0), "the server did not close TCP after the close handshake"
    else:
        assert 0.3 <= took <= 2.5, f"connection released {took:.2f} s after the close (timeout 0.5 s)"
    assert_serving(server, peers)


def test_max_connections_503_then_slot_released(wsserver_factory, peers):
    server = wsserver_factory(args=["--max-connections", "10"])
    held = [peers(server) for _ in range(10)]
    extra = peers(server, handshake=False)
    extra.send(FULL_HEAD)
    status, headers = extra.read_head()
    assert status == 503
    assert "retry-after" in headers, "503 without Retry-After"
    assert extra.wait_eof(3.0)
    # Releasing one slot lets the next client in.
    held[0].send(frame(OP_CLOSE, close_payload(1000)))
    assert held[0].expect_close(reply=False) == 1000
    assert held[0].wait_eof(3.0)
    held[0].close()
    deadline = time.monotonic() + 2.0
    while True:
        newcomer = peers(server, handshake=False)
        newcomer.send(FULL_HEAD)
        status, _ = newcomer.read_head()
        if status == 101 or time.monotonic() > deadline:
            break
        newcomer.close()
        time.sleep(0.05)
    assert status == 101, f"the released slot was not reusable within 2 s (got {status})"
    got, _ = newcomer.echo("made it")
    assert got == "made it"
    for p in held[1:]:
        p.send_quietly(frame(OP_CLOSE, close_payload(1000)))


# --- peers that vanish --------------------------------------------------------------------------


def test_1000_connections_reset_mid_message(echo_server, peers):
    server = echo_server
    time.sleep(0.1)
    fds_before = fd_count(server.pid)
    doomed, half_handshakes = [], []
    try:
        for start in range(0, DROPPED, 100):  # waves keep the accept backlog short
            wave = [Peer(server.port, rcvbuf=4096) for _ in range(100)]
            doomed += wave
            for p in wave:
                p.sock.sendall(FULL_HEAD)
            for p in wave:
                status, _ = p.read_head()
                assert status == 101
        half_handshakes = [Peer(server.port) for _ in range(100)]
        for p in half_handshakes:
            p.send(PARTIAL_HEAD)
        held = fd_count(server.pid) - fds_before
        assert held >= DROPPED, f"server holds {held} descriptors for {DROPPED} connections"
        body = b"\x05" * (128 * KiB)
        for i, p in enumerate(doomed):
            k = i % 4
            if k == 0:  # half of an extended length
                p.send(b"\x82\xfe\x01")
            elif k == 1:  # header, key and half of the payload
                p.send(frame(OP_BINARY, b"\x01" * 1000)[:8 + 500])
            elif k == 2:  # a whole first fragment, then a cut continuation
                p.send(frame(OP_TEXT, b"part one ", fin=False) + frame(OP_CONT, b"x" * 300)[:100])
            else:  # a whole message whose echo the server will be writing when we vanish
                p.send(frame(OP_BINARY, body))
    finally:
        for p in doomed + half_handshakes:
            p.rst()
    assert server.alive(), f"wsserver died:\n{server.log()[-4000:]}"
    assert_serving(server, peers)
    # Every reset connection is reclaimed: no leaked descriptors.
    deadline = time.monotonic() + 10
    while fd_count(server.pid) > fds_before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    leaked = fd_count(server.pid) - fds_before
    assert leaked <= 2, f"{leaked} descriptors still open after the resets"
    assert server.alive()
