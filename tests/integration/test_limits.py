"""Every configurable limit against the real binary: each test makes one limit bite and checks
that the connections around it (already open, from another address, well-behaved) are not hurt.

test_hostile.py already covers the handshake timeout for single peers, a 64 KiB head, absurd
declared lengths, one slow consumer closed with 1008, Lua errors, the pong and close timeouts and
the basic max_connections 503. This file covers the rest: the global and per-address connection
caps with bystanders, the exact header-size boundary, a slowloris crowd, the message-size boundary
(single frame, fragmented, compressed), back-pressure by dropping, the all-connections queue cap,
the Lua heap cap, the handler time budget, the idle timeout and the /metrics counters after a
known workload.

Sockets here use timeouts (poll) rather than select(), so descriptors above 1024 are fine.
"""
import http.client
import select
import signal
import socket
import struct
import time
import zlib

import pytest
from prometheus_client.parser import text_string_to_metric_families
from wsclient import (KiB, MiB, Closed, RawPeer, fd_count, frame, new_key, raise_nofile,
                      request_head, rss_bytes)
from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, accept_key,
                   close_payload)

SLOWLORIS = 1000

# The slowloris test holds 1000 sockets here and the server (our child: it inherits the limit)
# holds as many.
raise_nofile(2 * SLOWLORIS + 512)


# --- a raw client -------------------------------------------------------------------------------


class CloseFrame(Exception):
    def __init__(self, code, reason):
        super().__init__(f"close {code} {reason!r}")
        self.code, self.reason = code, reason


class Peer(RawPeer):
    """A RawPeer with TCP_NODELAY that answers pings and reads whole HTTP responses."""

    def __init__(self, port, **kw):
        super().__init__(port, **kw)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # reading

    def read_response(self, timeout=5.0):
        """(status, headers, body) of an HTTP response; the body per Content-Length."""
        deadline = time.monotonic() + timeout
        status, headers = self._read_head(deadline)
        body = b""
        if status != 101 and "content-length" in headers:
            body = self._take(int(headers["content-length"]), deadline)
        return status, headers, body

    def recv_message(self, timeout=5.0):
        """Next data message as (opcode, payload); pings are answered, pongs skipped; a close
        frame raises CloseFrame."""
        deadline = time.monotonic() + timeout
        parts, first = [], None
        while True:
            fin, rsv, opcode, payload = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                raise CloseFrame(code, payload[2:])
            if opcode == OP_PING:
                self.send_quietly(frame(OP_PONG, payload))
                continue
            if opcode == OP_PONG:
                continue
            if first is None:
                first = opcode
            parts.append(payload)
            if fin:
                return first, b"".join(parts)

    def expect_close(self, timeout=5.0, reply=True):
        """Skips data frames until the server's close frame; returns (code, reason), or
        (None, b"") when the TCP connection ended without one. Answers the close."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.recv_message(max(0.01, deadline - time.monotonic()))
        except CloseFrame as c:
            if reply:
                self.send_quietly(frame(OP_CLOSE, close_payload(c.code)))
            return c.code, c.reason
        except Closed:
            return None, b""

    # writing

    def upgrade(self, path="/", extra=b""):
        """Sends a handshake; returns (status, headers, body) and checks the accept value."""
        key = new_key()
        self.send(request_head(key, path, extra))
        status, headers, body = self.read_response()
        if status == 101:
            assert headers.get("sec-websocket-accept") == accept_key(key)
        return status, headers, body

    def echo(self, text, timeout=3.0):
        """Sends text and waits for it to come back; returns the seconds it took."""
        started = time.monotonic()
        self.send(frame(OP_TEXT, text))
        opcode, payload = self.recv_message(timeout)
        assert (opcode, payload) == (OP_TEXT, text.encode()), f"echo of {text!r}: {payload[:60]!r}"
        return time.monotonic() - started

    def request(self, text, timeout=3.0):
        """Sends text and returns the next text message as a str."""
        self.send(frame(OP_TEXT, text))
        opcode, payload = self.recv_message(timeout)
        return payload.decode()

    def goodbye(self):
        """A polite close: send 1000, wait for the reply and the end of TCP."""
        if self.send_quietly(frame(OP_CLOSE, close_payload(1000))):
            self.expect_close(reply=False, timeout=3.0)
            self.wait_eof(3.0)
        self.close()


@pytest.fixture
def peers():
    """peers(server, upgrade=True, **kw) -> Peer; all are closed at the end of the test."""
    opened = []

    def new(server, upgrade=True, **kw):
        p = Peer(server.port, **kw)
        opened.append(p)
        if upgrade:
            status, _, body = p.upgrade()
            assert status == 101, f"handshake answered {status}: {body!r}"
        return p

    yield new
    for p in opened:
        p.close()


# --- process and metrics probes -----------------------------------------------------------------


def http_get(server, path, timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def scrape(server):
    """/metrics parsed by prometheus_client: {(sample name, ((label, value), ...)): value}."""
    status, text = http_get(server, "/metrics")
    assert status == 200, text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(metrics, name, **labels):
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def assert_serving(server, peers, within=1.0):
    """Alive, and a brand-new client gets its echo promptly."""
    assert server.alive(), f"wsserver died:\n{server.log()[-4000:]}"
    p = peers(server)
    took = p.echo("are you there?")
    assert took < within, f"a fresh echo took {took:.2f} s"
    p.goodbye()


# --- max_connections / max_connections_per_ip ---------------------------------------------------


def test_max_connections_503_while_existing_connections_keep_working(wsserver_factory, peers):
    server = wsserver_factory(args=["--max-connections", "20", "--metrics"])
    held = [peers(server) for _ in range(20)]
    for attempt in range(3):
        extra = peers(server, upgrade=False)
        status, headers, body = extra.upgrade()
        assert status == 503, f"connection 21 answered {status}"
        retry = headers.get("retry-after")
        assert retry is not None and retry.isdigit() and int(retry) >= 1, \
            f"503 without a usable Retry-After: {headers}"
        assert extra.wait_eof(3.0), "the refused client was kept connected"
        # Every admitted connection is still served, promptly, while the server is full.
        for i, p in enumerate(held):
            took = p.echo(f"held {i} round {attempt}")
            assert took < 1.0, f"held connection {i} waited {took:.2f} s"
    # Plain HTTP (health checks, metrics) is still answered while every WebSocket slot is taken.
    assert http_get(server, "/healthz") == (200, "ok\n")
    m = scrape(server)
    assert sample(m, "wsserver_connections_open") == 20
    assert sample(m, "wsserver_handshake_rejections_total", status="503") == 3
    for p in held:
        p.goodbye()
    assert_serving(server, peers)


def test_max_connections_per_ip(wsserver_factory, peers):
    server = wsserver_factory(args=["--max-connections-per-ip", "3"])
    first = [peers(server, source="127.0.0.1") for _ in range(3)]
    over = peers(server, upgrade=False, source="127.0.0.1")
    status, headers, _ = over.upgrade()
    assert status == 503, f"a 4th connection from 127.0.0.1 answered {status}"
    assert "retry-after" in headers
    assert over.wait_eof(3.0)
    # Another address has its own budget: the cap is per client address, not global.
    second = [peers(server, source="127.0.0.2") for _ in range(3)]
    for i, p in enumerate(second):
        assert p.sock.getsockname()[0] == "127.0.0.2"
        assert p.echo(f"second address {i}") < 1.0
    over2 = peers(server, upgrade=False, source="127.0.0.2")
    assert over2.upgrade()[0] == 503
    for i, p in enumerate(first):
        assert p.echo(f"first address {i}") < 1.0, "an admitted connection was slowed"
    # Closing one connection of 127.0.0.1 gives its slot back to that address.
    first[0].goodbye()
    deadline = time.monotonic() + 3.0
    while True:
        again = peers(server, upgrade=False, source="127.0.0.1")
        status = again.upgrade()[0]
        if status == 101 or time.monotonic() > deadline:
            break
        again.close()
        time.sleep(0.05)
    assert status == 101, f"the freed per-address slot was not reusable (got {status})"
    assert again.echo("made it") < 1.0
    # A refused handshake must not have used up a slot: the 503s above leaked nothing.
    extra = peers(server, upgrade=False, source="127.0.0.1")
    assert extra.upgrade()[0] == 503


def test_per_ip_limit_also_bounds_handshaking_sockets(wsserver_factory, peers):
    server = wsserver_factory(args=["--max-connections", "20", "--max-connections-per-ip", "5",
                                    "--handshake-timeout", "5"])
    crowd = []
    try:
        for _ in range(300):  # one address, heads never finished
            s = socket.create_connection(("127.0.0.1", server.port), timeout=2)
            s.sendall(b"GET / HTTP/1.1\r\n")
            crowd.append(s)
        time.sleep(0.2)
        other = peers(server, upgrade=False, source="127.0.0.2")
        status, _, _ = other.upgrade()
        assert status == 101, f"another address was answered {status}"
    finally:
        for s in crowd:
            s.close()


# --- max_header_size ------------------------------------------------------------------------------


def padded_head(total):
    """A valid upgrade request head of exactly `total` bytes (the final CRLF CRLF included)."""
    key = new_key()
    bare = request_head(key, extra=b"X-Pad: \r\n")
    pad = total - len(bare)
    assert pad >= 0
    return key, request_head(key, extra=b"X-Pad: " + b"p" * pad + b"\r\n")


@pytest.mark.parametrize("limit", [8192, 1024], ids=["default-8192", "configured-1024"])
def test_max_header_size_boundary(wsserver_factory, peers, limit):
    args = [] if limit == 8192 else ["--max-header-size", str(limit)]
    server = wsserver_factory(args=args)
    bystander = peers(server)

    # Exactly at the limit: accepted, whether it comes in one write or in small pieces.
    for chunk in (None, 97):
        key, head = padded_head(limit)
        assert len(head) == limit
        p = peers(server, upgrade=False)
        if chunk:
            for i in range(0, len(head), chunk):
                p.send(head[i:i + chunk])
                time.sleep(0.001)
        else:
            p.send(head)
        status, headers, body = p.read_response()
        assert status == 101, f"a {limit}-byte head (the limit) answered {status}: {body!r}"
        assert headers["sec-websocket-accept"] == accept_key(key)
        assert p.echo("head at the limit") < 1.0

    # One byte over: 431, and the connection ends.
    for chunk in (None, 97):
        _, head = padded_head(limit + 1)
        p = peers(server, upgrade=False)
        try:
            if chunk:
                for i in range(0, len(head), chunk):
                    p.send(head[i:i + chunk])
            else:
                p.send(head)
        except OSError:
            pass  # the server may answer and close before the last bytes
        status, _, body = p.read_response()
        assert status == 431, f"a {limit + 1}-byte head answered {status}: {body!r}"
        assert p.wait_eof(3.0), "the connection stayed open after 431"

    assert bystander.echo("unaffected by the big heads") < 1.0
    assert_serving(server, peers)


def test_too_many_header_fields_is_431(echo_server, peers):
    """Small fields, but more of them than the parser keeps (64): 431, not a silent drop."""
    p = peers(echo_server, upgrade=False)
    extra = b"".join(b"X-F%d: v\r\n" % i for i in range(70))
    status, _, _ = p.upgrade(extra=extra)
    assert status == 431
    assert p.wait_eof(3.0)
    assert_serving(echo_server, peers)


# --- slowloris ------------------------------------------------------------------------------------


def test_slowloris_crowd_is_cut_at_the_handshake_timeout(wsserver_factory, peers):
    """1000 sockets each send one byte of a request head per second; with a 2 s handshake
    timeout every one is closed around 2 s after it connected, and a normal client connecting
    in the middle of the attack is served at once."""
    server = wsserver_factory(args=["--handshake-timeout", "2"])
    time.sleep(0.1)
    fds_before = fd_count(server.pid)
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    socks, opened_at, closed_at = {}, {}, {}
    poller = select.poll()
    started = time.monotonic()
    try:
        for _ in range(SLOWLORIS):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2.0)
            s.connect(("127.0.0.1", server.port))
            s.setblocking(False)
            s.send(head[:1])
            socks[s.fileno()] = s
            opened_at[s.fileno()] = time.monotonic()
            poller.register(s.fileno(), select.POLLIN)
        connect_time = time.monotonic() - started
        assert connect_time < 5.0, f"opening {SLOWLORIS} sockets took {connect_time:.1f} s"

        normal, normal_took = None, None
        sent_bytes = 1
        next_drip = started + 1.0
        deadline = time.monotonic() + 6.0
        while len(closed_at) < SLOWLORIS and time.monotonic() < deadline:
            now = time.monotonic()
            if normal is None and now - started >= 1.0:
                # In the middle of the attack: a whole handshake and an echo, promptly.
                t0 = time.monotonic()
                normal = peers(server)
                normal.echo("during the attack")
                normal_took = time.monotonic() - t0
            if now >= next_drip and sent_bytes < len(head):
                for fd, s in socks.items():
                    if fd not in closed_at:
                        try:
                            s.send(head[sent_bytes:sent_bytes + 1])
                        except OSError:
                            pass
                sent_bytes += 1
                next_drip += 1.0
            for fd, _ in poller.poll(50):
                try:
                    data = socks[fd].recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                assert not data, f"the server answered a slowloris socket with {data[:80]!r}"
                closed_at[fd] = time.monotonic()
                poller.unregister(fd)
    finally:
        for s in socks.values():
            s.close()

    assert len(closed_at) == SLOWLORIS, \
        f"{SLOWLORIS - len(closed_at)} slowloris sockets still open after the handshake timeout"
    lifetimes = sorted(closed_at[fd] - opened_at[fd] for fd in closed_at)
    assert lifetimes[0] >= 1.5, f"a slowloris socket was closed after {lifetimes[0]:.2f} s (< 2 s)"
    assert lifetimes[-1] <= 4.0, f"a slowloris socket lived {lifetimes[-1]:.2f} s (timeout 2 s)"
    assert normal_took is not None and normal_took < 1.0, \
        f"a normal client took {normal_took} s to connect and get an echo during the attack"
    # The normal client outlived the handshake timeout: its timer ended with its handshake.
    assert normal.echo("after the attack") < 1.0
    normal.goodbye()
    deadline = time.monotonic() + 5
    while fd_count(server.pid) > fds_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fd_count(server.pid) <= fds_before, "descriptors still held after the attack"
    assert_serving(server, peers)


# --- max_message_size -----------------------------------------------------------------------------

SIZE_APP = r"""
return {
  config = { max_message_size = 65536, compression = "on" },
  message = function(conn, data, kind)
    if kind == "text" and #data < 100 then conn:send(data) else conn:send(#data .. ":" .. kind) end
  end,
}
"""
LIMIT = 65536
DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"


def deflate(data):
    """RFC 7692 §7.2.1: raw DEFLATE, sync-flushed, without the trailing 00 00 ff ff."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def send_message(p, shape, size):
    """Sends one binary message of `size` bytes shaped as asked."""
    body = b"\xa5" * size
    if shape == "single":
        p.send(frame(OP_BINARY, body))
    elif shape == "fragmented":
        # four fragments (the last one carries what is left), a ping between two of them
        q = size // 4
        pieces = [body[:q], body[q:2 * q], body[2 * q:3 * q], body[3 * q:]]
        p.send(frame(OP_BINARY, pieces[0], fin=False))
        p.send(frame(OP_CONT, pieces[1], fin=False) + frame(OP_PING, b"between"))
        p.send(frame(OP_CONT, pieces[2], fin=False))
        p.send_quietly(frame(OP_CONT, pieces[3], fin=True))
    elif shape == "deflate":
        p.send(frame(OP_BINARY, deflate(body), rsv=4))
    else:
        raise ValueError(shape)


@pytest.mark.parametrize("shape", ["single", "fragmented", "deflate"])
def test_max_message_size_boundary(wsserver_factory, peers, shape):
    server = wsserver_factory(app_source=SIZE_APP)
    bystander = peers(server)

    def client():
        p = peers(server, upgrade=False)
        status, headers, _ = p.upgrade(extra=DEFLATE_OFFER if shape == "deflate" else b"")
        assert status == 101
        if shape == "deflate":
            assert "permessage-deflate" in headers.get("sec-websocket-extensions", "")
        return p

    at = client()
    send_message(at, shape, LIMIT)
    assert at.recv_message() == (OP_TEXT, f"{LIMIT}:binary".encode()), "a message at the limit"
    assert at.echo("and still open") < 1.0

    over = client()
    send_message(over, shape, LIMIT + 1)
    code, _ = over.expect_close()
    assert code == 1009, f"{shape} message of limit + 1 bytes: close {code}, want 1009"
    assert over.wait_eof(3.0)

    assert bystander.echo("unaffected") < 1.0
    assert at.echo("unaffected too") < 1.0
    assert_serving(server, peers)


def test_fragment_over_the_limit_is_refused_at_its_header(wsserver_factory, peers):
    """The size check comes at the frame header: a continuation that would cross the limit is
    refused before its payload arrives (we never send it)."""
    server = wsserver_factory(app_source=SIZE_APP)
    p = peers(server)
    p.send(frame(OP_TEXT, b"a" * 30000, fin=False) + frame(OP_CONT, b"b" * 30000, fin=False))
    # 60000 so far; this header declares 5537 more (1 over) and no payload follows.
    p.send(frame(OP_CONT, b"", fin=True, length=LIMIT + 1 - 60000))
    code, _ = p.expect_close(timeout=3.0)
    assert code == 1009


def test_compression_bomb_is_1009_without_growth(wsserver_factory, peers):
    """64 MiB of zeros deflate to ~64 KiB: the inflated size is checked as it grows."""
    server = wsserver_factory(app_source=SIZE_APP.replace("65536", str(1 * MiB)))
    bystander = peers(server)
    p = peers(server, upgrade=False)
    assert p.upgrade(extra=DEFLATE_OFFER)[0] == 101
    bomb = deflate(b"\x00" * (64 * MiB))
    assert len(bomb) < 100 * KiB
    time.sleep(0.1)
    before = rss_bytes(server.pid)
    p.send_quietly(frame(OP_BINARY, bomb, rsv=4))
    code, _ = p.expect_close()
    assert code == 1009
    grown = rss_bytes(server.pid) - before
    assert grown < 8 * MiB, f"server RSS grew by {grown / MiB:.1f} MiB inflating a bomb"
    assert bystander.echo("unaffected") < 1.0


# --- back-pressure: max_buffered with backpressure = "drop", max_buffered_total ----------------

FLOOD_APP = r"""
local CHUNK = string.rep("x", 16384)
return {
  config = { backpressure = "%(mode)s" },
  message = function(conn, data, kind)
    local n = data:match("^flood (%%d+)$")
    if n then
      local st = ws.state.counts or {sent = 0, dropped = 0, refused = 0}
      ws.state.counts = st
      for _ = 1, tonumber(n) do
        local ok, err = conn:send(CHUNK, "binary")
        if ok then st.sent = st.sent + 1
        elseif err == "dropped" then st.dropped = st.dropped + 1
        else st.refused = st.refused + 1; break end
      end
      return
    end
    local big = data:match("^big (%%d+)$")
    if big then conn:send(string.rep("y", tonumber(big)), "binary"); return end
    conn:send(data, kind)
  end,
  http = {
    ["GET /counts"] = function()
      local st = ws.state.counts or {sent = 0, dropped = 0, refused = 0}
      return 200, string.format("%%d %%d %%d", st.sent, st.dropped, st.refused)
    end,
  },
}
"""
CHUNK = 16384
FRAME_OVERHEAD = 14


def counts(server):
    status, body = http_get(server, "/counts")
    assert status == 200
    return tuple(int(x) for x in body.split())


def drain_binary(p, expected, timeout=10.0):
    """Reads `expected` 16 KiB binary messages of "x" and nothing else."""
    for i in range(expected):
        opcode, payload = p.recv_message(timeout)
        assert opcode == OP_BINARY and payload == b"x" * CHUNK, \
            f"message {i}: {opcode} {len(payload)} bytes {payload[:20]!r}"


def test_max_buffered_drop_keeps_the_connection(wsserver_factory, peers):
    server = wsserver_factory(app_source=FLOOD_APP % {"mode": "drop"},
                              args=["--max-buffered", str(256 * KiB), "--metrics"])
    bystander = peers(server)
    slow = peers(server, rcvbuf=4096)
    # 15.6 MiB owed to a client that is not reading: far more than the kernel's socket buffers
    slow.send(frame(OP_TEXT, "flood 1000"))
    deadline = time.monotonic() + 5
    while sum(counts(server)) < 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    sent, dropped, refused = counts(server)
    assert (sent + dropped, refused) == (1000, 0), (sent, dropped, refused)
    assert dropped > 0, "nothing was dropped: the queue was not bounded"
    m = scrape(server)
    assert sample(m, "wsserver_messages_dropped_total") == dropped
    queued = sample(m, "wsserver_send_queue_bytes")
    assert queued <= 256 * KiB + CHUNK + FRAME_OVERHEAD, f"{queued} bytes queued for one client"
    # Others are served while the slow client's queue is full.
    assert bystander.echo("unaffected") < 1.0
    # The slow client was not closed: it gets exactly the accepted messages, intact, in order,
    # and then its connection is as good as new.
    drain_binary(slow, sent)
    assert slow.echo("still open after the drops") < 1.0
    # One message of any size may enter an empty queue, even 4 x max_buffered.
    slow.send(frame(OP_TEXT, f"big {1 * MiB}"))
    assert slow.recv_message(timeout=10) == (OP_BINARY, b"y" * MiB)
    assert slow.echo("and still open") < 1.0
    m2 = scrape(server)
    assert sample(m2, "wsserver_messages_dropped_total") == dropped
    assert_serving(server, peers)


def flood_total_server(wsserver_factory, mode, total_cap):
    # Per-connection cap (4 MiB) above the total cap, so only the total can bite.
    return wsserver_factory(
        app_source=FLOOD_APP % {"mode": mode},
        args=["--max-buffered", str(4 * MiB), "--max-buffered-total", str(total_cap),
              "--metrics", "--close-timeout", "30"])


SLOW_READERS = 12
FLOOD = 640  # 10 MiB owed to each: more than the kernel's socket buffers take (tcp_wmem max 4 MiB)


def flood_and_watch(server, slow, seconds=2.0):
    """Every slow reader asks for FLOOD messages; returns (peak queued bytes, peak RSS growth)."""
    rss_before = rss_bytes(server.pid)
    for p in slow:
        p.send(frame(OP_TEXT, f"flood {FLOOD}"))
    peak_queue, peak_rss = 0, rss_before
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak_queue = max(peak_queue, sample(scrape(server), "wsserver_send_queue_bytes"))
        peak_rss = max(peak_rss, rss_bytes(server.pid))
        time.sleep(0.05)
    return peak_queue, peak_rss - rss_before


@pytest.mark.parametrize("mode", ["drop", "close"])
def test_max_buffered_total_bounds_all_queues(wsserver_factory, peers, mode):
    """12 readers that never read are each owed 10 MiB under a 4 MiB per-connection cap: without
    the all-connections cap 48 MiB would queue. With max_buffered_total = 2 MiB the queues stay
    near 2 MiB, RSS stays flat, and a client that reads is still served."""
    total_cap = 2 * MiB
    server = flood_total_server(wsserver_factory, mode, total_cap)
    bystander = peers(server)
    slow = [peers(server, rcvbuf=4096) for _ in range(SLOW_READERS)]
    time.sleep(0.1)
    peak_queue, rss_growth = flood_and_watch(server, slow)
    sent, dropped, refused = counts(server)
    # Today's bound: the cap, plus one message for each connection whose queue was empty (one
    # message may always enter an empty queue), so readers keep being served while slow ones are cut
    # test below.
    assert peak_queue <= total_cap + SLOW_READERS * (CHUNK + FRAME_OVERHEAD), \
        f"{peak_queue} bytes queued in all (cap {total_cap})"
    assert peak_queue >= total_cap // 2, f"the queues never filled (peak {peak_queue} bytes)"
    assert rss_growth < 16 * MiB, f"server RSS grew by {rss_growth / MiB:.1f} MiB"
    assert bystander.echo("a reader is still served") < 1.0
    if mode == "drop":
        assert refused == 0 and dropped > 0, (sent, dropped, refused)
        m = scrape(server)
        assert sample(m, "wsserver_messages_dropped_total") == dropped
        assert sample(m, "wsserver_connections_open") == SLOW_READERS + 1, "drop mode closed"
    else:
        # Connections refused over the total cap are told why (1008) once they read.
        assert refused > 0, (sent, dropped, refused)
        told = 0
        for p in slow:
            code, reason = p.expect_close(timeout=10)
            assert code in (None, 1008), f"close {code} {reason!r}"
            told += code == 1008
        assert told == refused, f"{refused} refused, {told} told 1008 slow consumer"
    for p in slow:
        p.rst()
    deadline = time.monotonic() + 5
    while sample(scrape(server), "wsserver_send_queue_bytes") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sample(scrape(server), "wsserver_send_queue_bytes") == 0, "queues not released"
    assert_serving(server, peers)


# --- Lua: heap cap and time budget --------------------------------------------------------------

MEMORY_APP = r"""
return {
  config = { lua_memory_limit = 8 * 1024 * 1024, max_message_size = 16 * 1024 * 1024 },
  message = function(conn, data, kind)
    if data == "rep" then                       -- one 64 MiB allocation
      conn:send(tostring(#string.rep("x", 64 * 1024 * 1024)))
    elseif data == "double" then                -- a string doubled up to 64 MiB
      local s = "0123456789abcdef"
      while #s < 64 * 1024 * 1024 do s = s .. s end
      conn:send(tostring(#s))
    elseif data == "pieces" then                -- 64 MiB in 1 KiB pieces, all kept alive
      local t = {}
      for i = 1, 64 * 1024 do t[i] = string.rep("y", 1000) .. i end
      conn:send(tostring(#t))
    elseif data:match("^alloc %d+$") then
      conn:send("allocated " .. #string.rep("z", tonumber(data:sub(7))))
    elseif kind == "binary" then
      conn:send(tostring(#data))
    else
      conn:send(data, kind)
    end
  end,
}
"""


@pytest.mark.parametrize("how", ["rep", "double", "pieces", "peer-message"])
def test_lua_memory_limit_fails_only_that_connection(wsserver_factory, peers, how):
    server = wsserver_factory(app_source=MEMORY_APP)
    bystander = peers(server)
    victim = peers(server)
    time.sleep(0.1)
    before = rss_bytes(server.pid)
    if how == "peer-message":
        # The peer's own message (9 MiB, under max_message_size) does not fit the 8 MiB heap.
        victim.send_quietly(frame(OP_BINARY, b"\x00" * (9 * MiB)))
    else:
        victim.send(frame(OP_TEXT, how))
    code, _ = victim.expect_close(timeout=10)
    assert code == 1011, f"{how}: close {code}, want 1011"
    assert victim.wait_eof(3.0)
    grown = rss_bytes(server.pid) - before
    assert grown < 40 * MiB, f"server RSS grew by {grown / MiB:.1f} MiB under an 8 MiB Lua cap"
    assert bystander.echo("unaffected") < 1.0
    # The heap is usable again: a later message allocating 2 MiB works, on both connections.
    assert bystander.request("alloc 2097152") == "allocated 2097152"
    later = peers(server)
    assert later.request("alloc 2097152") == "allocated 2097152"
    assert_serving(server, peers)
    assert "not enough memory" in server.log()


SPIN_APP = r"""
return {
  config = { handler_timeout = 0.5 },
  message = function(conn, data, kind)
    if data == "spin" then
      while true do end
    elseif data == "pcall" then                  -- a handler that swallows errors (5 s)
      for _ = 1, 100000 do pcall(function() while true do end end) end
    elseif data == "xpcall" then                 -- an error handler that takes 3 s
      xpcall(function() while true do end end, function(m)
        local t = os.clock()
        while os.clock() - t < 3 do end
        return m
      end)
    elseif data == "coroutine" then
      coroutine.wrap(function() while true do end end)()
    elseif data == "resume" then                 -- swallows the error coroutine.resume returns
      while true do coroutine.resume(coroutine.create(function() while true do end end)) end
    elseif data == "old-coroutine" then          -- a coroutine made by an earlier run
      conn.data.co = conn.data.co or coroutine.create(function()
        coroutine.yield()
        while true do end
      end)
      coroutine.resume(conn.data.co)
      if coroutine.status(conn.data.co) == "suspended" then conn:send("made") end
    elseif data == "timer" then                  -- not tied to this connection
      ws.after(0, function() while true do end end)
      conn:send("armed")
    else
      conn:send(data, kind)
    end
  end,
}
"""
BUDGET = 0.5


@pytest.mark.parametrize("how", [
    "spin", "coroutine", "resume", "old-coroutine", "timer", "pcall",
    "xpcall",
])
def test_handler_timeout_interrupts_and_others_wait_at_most_the_budget(wsserver_factory, peers,
                                                                       how):
    server = wsserver_factory(app_source=SPIN_APP)
    bystander = peers(server)
    victim = peers(server)
    if how == "old-coroutine":
        victim.send(frame(OP_TEXT, how))
        assert victim.recv_message() == (OP_TEXT, b"made")
    started = time.monotonic()
    victim.send(frame(OP_TEXT, how))
    time.sleep(0.05)
    # While the handler spins the loop is blocked; the bystander waits at most about the budget.
    took = bystander.echo("waiting behind a spinning handler", timeout=5)
    assert took < BUDGET + 0.75, f"a bystander waited {took:.2f} s (handler_timeout {BUDGET} s)"
    if how == "timer":
        assert victim.recv_message() == (OP_TEXT, b"armed")
        assert victim.echo("the timer failed, not me") < 1.0
    else:
        code, _ = victim.expect_close(timeout=5)
        ended = time.monotonic() - started
        assert code == 1011, f"{how}: close {code}, want 1011"
        assert BUDGET * 0.7 <= ended <= BUDGET + 1.0, \
            f"{how}: closed after {ended:.2f} s (handler_timeout {BUDGET} s)"
    assert bystander.echo("fast again") < 0.5
    assert_serving(server, peers, within=0.5)
    assert "handler_timeout" in server.log()


# --- idle_timeout -------------------------------------------------------------------------------


def test_idle_timeout(wsserver_factory, peers):
    """--idle-timeout 1: a silent client and one that only pings are closed with 1001 after
    ~1 s; a client sending a data message every 0.25 s stays open."""
    server = wsserver_factory(args=["--idle-timeout", "1"])
    idle, pinger, chatty = peers(server), peers(server), peers(server)
    started = time.monotonic()
    ended = {}
    i = 0
    while time.monotonic() - started < 2.6:
        i += 1
        assert chatty.echo(f"chat {i}") < 0.5
        if "pinger" not in ended:
            pinger.send_quietly(frame(OP_PING, b"p%d" % i))
            try:
                fin, rsv, opcode, payload = pinger.recv_frame(timeout=0.5)
                if opcode == OP_CLOSE:
                    ended["pinger"] = (time.monotonic() - started,
                                       struct.unpack("!H", payload[:2])[0])
                    pinger.send_quietly(frame(OP_CLOSE, payload[:2]))
                else:
                    assert (opcode, payload) == (OP_PONG, b"p%d" % i)
            except Closed:
                ended["pinger"] = (time.monotonic() - started, None)
        if "idle" not in ended:
            readable, _, _ = select.select([idle.sock], [], [], 0)
            if readable:
                code, _ = idle.expect_close(timeout=1.0)
                ended["idle"] = (time.monotonic() - started, code)
        time.sleep(0.2)
    for name in ("idle", "pinger"):
        assert name in ended, f"the {name} client was not closed by the 1 s idle timeout"
        at, code = ended[name]
        assert code == 1001, f"{name}: close {code}, want 1001"
        assert 0.8 <= at <= 2.0, f"{name}: closed after {at:.2f} s (idle timeout 1 s)"
    assert chatty.echo("still here after 2.6 s") < 0.5
    assert_serving(server, peers)


# --- /metrics after a known workload --------------------------------------------------------------

METRICS_APP = r"""
return {
  upgrade = function(req)
    if req.path == "/forbidden" then return false, 403, "no" end
  end,
  message = function(conn, data, kind)
    if data == "close-me" then conn:close(4001, "bye")
    elseif data == "boom" then error("boom")
    else conn:send(data, kind) end
  end,
}
"""


def test_metrics_after_known_workload(wsserver_factory, peers):
    server = wsserver_factory(app_source=METRICS_APP, args=["--metrics"])
    # The baseline: whatever the harness did to see the port open, and this scrape.
    base = sample(scrape(server), "wsserver_connections_total")
    scrapes = 0

    def refused(path="/", extra=b"", head=None):
        p = peers(server, upgrade=False)
        if head is None:
            status, _, _ = p.upgrade(path=path, extra=extra)
        else:
            p.send(head)
            status, _, _ = p.read_response()
        p.wait_eof(3.0)
        p.close()
        return status

    # Handshake rejections: 2 x 400, 1 x 426, 1 x 403 (the app), 1 x 431.
    bad_key = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n")
    assert refused(head=bad_key) == 400
    assert refused(head=bad_key.replace(b"Sec-WebSocket-Key: short\r\n", b"")) == 400
    assert refused(head=bad_key.replace(b"Version: 13", b"Version: 8")) == 426
    assert refused(path="/forbidden") == 403
    assert refused(extra=b"X-Big: " + b"b" * 9000 + b"\r\n") == 431

    a, b, c, d, e, f = (peers(server) for _ in range(6))
    for i in range(5):
        assert a.echo(f"a{i}") < 1.0                      # 5 in, 5 out
    for i in range(3):
        b.send(frame(OP_BINARY, bytes([i]) * 100))        # 3 in, 3 out
        assert b.recv_message() == (OP_BINARY, bytes([i]) * 100)
    c.send(frame(OP_TEXT, "close-me"))                   # 1 in; closed by the app: 4001
    assert c.expect_close()[0] == 4001
    d.send(frame(OP_TEXT, b"\xce\xba\xff"))              # not a message: 1007
    assert d.expect_close()[0] == 1007
    f.send(frame(OP_TEXT, "boom"))                       # 1 in; handler error: 1011
    assert f.expect_close()[0] == 1011
    a.goodbye()                                          # the client closes: 1000
    b.send(frame(OP_CLOSE, close_payload(1001)))         # going away: 1001
    assert b.expect_close(reply=False)[0] == 1001
    b.close()
    for i in range(2):
        assert e.echo(f"e{i}") < 1.0                      # 2 in, 2 out; e stays open
    for p in (c, d, f):
        assert p.wait_eof(3.0)
        p.close()

    want_closes = {"1000": 1, "1001": 1, "1007": 1, "1011": 1, "4001": 1}
    deadline = time.monotonic() + 3.0
    while True:
        m = scrape(server)
        scrapes += 1
        closes = {labels[0][1]: v for (name, labels), v in m.items()
                  if name == "wsserver_closes_total"}
        if closes == want_closes or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert closes == want_closes
    assert sample(m, "wsserver_connections_open") == 1
    # Every TCP connection is counted: 5 refused, 6 upgraded, and each scrape since the base.
    assert sample(m, "wsserver_connections_total") == base + 5 + 6 + scrapes
    assert sample(m, "wsserver_messages_received_total") == 5 + 3 + 1 + 1 + 2
    assert sample(m, "wsserver_messages_sent_total") == 5 + 3 + 2
    rejections = {labels[0][1]: v for (name, labels), v in m.items()
                  if name == "wsserver_handshake_rejections_total"}
    assert rejections == {"400": 2, "403": 1, "426": 1, "431": 1}
    assert sample(m, "wsserver_handler_errors_total") == 1
    assert sample(m, "wsserver_messages_dropped_total") == 0
    assert sample(m, "wsserver_send_queue_bytes") == 0
    assert sample(m, "wsserver_handler_duration_seconds_count") >= 12
    assert sample(m, "wsserver_reloads_total", result="ok") == 0
    # Counters survive a reload; the reload itself is counted.
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 3.0
    while sample(scrape(server), "wsserver_reloads_total", result="ok") < 1:
        assert time.monotonic() < deadline, "SIGHUP reload not counted"
        time.sleep(0.05)
    m = scrape(server)
    assert sample(m, "wsserver_messages_received_total") == 12
    assert sample(m, "wsserver_closes_total", code="1000") == 1
    assert e.echo("after the reload") < 1.0
    e.goodbye()
