#!/usr/bin/env python3
"""Soak test: thousands of connections churning against one wsserver for a while, good clients
and hostile ones mixed, the app reloaded every few seconds; the server's RSS and open descriptors
are sampled every second and must stay flat.

    make soak DURATION=60                 # or: python3 tests/soak/soak.py --duration 60
    make soak VALGRIND=1 DURATION=30      # the server under valgrind: a clean exit is required

Good clients: echo (text and binary, fragmented, with pings, some compressed, some over TLS),
rooms (subscribe, publish, JSON), idle ones answering pings, ones the app closes or fails.
Hostile ones: garbage frames, invalid UTF-8, oversized heads, oversized messages, slowloris
heads, abrupt resets mid-frame, clients that never read while asking for megabytes, deaf clients
that never answer a ping. Every session checks what the server answered (an echo must be exact, a
protocol error must be closed with the right code) and any wrong answer fails the run.

Pass criteria (exit status 0, else 1):
  - the server stays up and serves correct answers (no failed session, timeouts under 1 %);
  - RSS after warm-up is flat: the last quarter's average is within 10 % + 4 MiB of the second
    quarter's (not checked under valgrind, whose own heap grows);
  - open descriptors return to the pre-load baseline once the load stops;
  - every SIGHUP reload succeeded;
  - SIGTERM ends the server with exit status 0; under valgrind additionally no error and no
    definitely lost block.
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import pathlib
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = pathlib.Path(__file__).resolve().parent / "app.lua"
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import wsraw  # noqa: E402  (frames, free ports, waiting for the listener)
from wsraw import free_port  # noqa: E402
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KiB, MiB = 1024, 1024 * 1024
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Server limits for the run (hostile sessions are built against these numbers).
HANDSHAKE_TIMEOUT = 3
CLOSE_TIMEOUT = 2
PING_INTERVAL = 5
PONG_TIMEOUT = 5
MAX_BUFFERED = 256 * KiB
MAX_MESSAGE = 1 * MiB
MAX_HEADER = 8192


class Failure(Exception):
    """The server answered something it must not have."""


class Closed(Exception):
    """The connection ended (close frame or EOF) while a message was awaited."""

    def __init__(self, code=None):
        super().__init__(f"closed with {code}")
        self.code = code


# --- a small asyncio WebSocket client ------------------------------------------------------------


encode = wsraw.encode_frame  # a masked client frame: (opcode, payload, fin, rsv, length=...)


def request(key, path="/", extra=b""):
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key +
            b"\r\n" + extra + b"\r\n")


async def read_status(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers


class WS:
    def __init__(self, reader, writer, deflate):
        self.reader, self.writer, self.deflate = reader, writer, deflate
        self.closing = False  # we sent a close frame: the server's is the reply, not answered

    @classmethod
    async def connect(cls, run, deflate=False, tls=False, rcvbuf=None):
        reader, writer = await run.open(tls=tls, rcvbuf=rcvbuf)
        key = base64.b64encode(os.urandom(16))
        extra = (b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                 b"client_no_context_takeover\r\n") if deflate else b""
        writer.write(request(key, extra=extra))
        status, headers = await read_status(reader)
        if status != 101:
            writer.close()
            raise Failure(f"handshake answered {status}")
        if headers.get("sec-websocket-accept") != \
                base64.b64encode(hashlib.sha1(key + GUID).digest()).decode():
            raise Failure("wrong Sec-WebSocket-Accept")
        agreed = "permessage-deflate" in headers.get("sec-websocket-extensions", "")
        if deflate and not agreed:
            raise Failure("permessage-deflate offered with compression on, not agreed")
        return cls(reader, writer, agreed)

    def send(self, opcode, payload=b"", fin=True, rsv=0):
        self.writer.write(encode(opcode, payload, fin, rsv))

    def send_message(self, opcode, payload, pieces=1, ping=False):
        rsv = 0
        if self.deflate and len(payload) >= 16 and random.random() < 0.7:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            payload = (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
            rsv = 4
        if pieces <= 1 or len(payload) < pieces:
            self.send(opcode, payload, rsv=rsv)
            return
        cuts = sorted(random.sample(range(1, len(payload)), pieces - 1))
        parts = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
        for i, part in enumerate(parts):
            self.send(opcode if i == 0 else OP_CONT, part, fin=i == len(parts) - 1,
                      rsv=rsv if i == 0 else 0)
            if ping and i == 0:
                self.send(OP_PING, b"between fragments")

    async def recv_frame(self):
        b0, b1 = await self.reader.readexactly(2)
        if b1 & 0x80:
            raise Failure("masked server frame")
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        if n > 64 * MiB:
            raise Failure(f"server frame of {n} bytes")
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, await self.reader.readexactly(n)

    async def recv_message(self):
        """(opcode, payload); pings answered, pongs skipped; Closed on a close frame or EOF."""
        parts, first, compressed = [], None, False
        while True:
            try:
                fin, rsv, opcode, payload = await self.recv_frame()
            except (asyncio.IncompleteReadError, ConnectionError):
                raise Closed(None) from None
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                if len(payload) == 1:
                    raise Failure("close frame with a 1-byte payload")
                if not self.closing:
                    self.closing = True
                    self.writer.write(encode(OP_CLOSE, payload[:2]))
                raise Closed(code)
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if first is None:
                first, compressed = opcode, bool(rsv & 4)
                if rsv & 4 and not self.deflate:
                    raise Failure("RSV1 without permessage-deflate")
            elif opcode != OP_CONT:
                raise Failure(f"opcode {opcode} inside a fragmented message")
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                if compressed:
                    data = zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")
                return first, data

    async def expect_close(self, codes):
        """Waits for the server's close (skipping data); its code must be in `codes` (None: EOF
        without a close frame is acceptable too if None is in codes)."""
        while True:
            try:
                await self.recv_message()
            except Closed as c:
                if c.code not in codes:
                    raise Failure(f"closed with {c.code}, expected one of {sorted(codes, key=str)}")
                return c.code

    async def close(self, code=1000, pending=None):
        """Client-initiated close: the server must echo the code, then end TCP. `pending` is a
        recv_message() task already reading, which then sees the reply."""
        self.closing = True
        self.writer.write(encode(OP_CLOSE, struct.pack("!H", code)))
        if pending is not None:
            try:
                await pending
                raise Failure("a data message instead of the close reply")
            except Closed as c:
                if c.code != code:
                    raise Failure(f"close {code} answered with {c.code}") from None
            got = code
        else:
            got = await self.expect_close({code})
        if await self.reader.read(1):
            raise Failure("bytes after the close frame")
        self.writer.close()
        return got

    def abort(self, rst=True):
        transport = self.writer.transport
        sock = transport.get_extra_info("socket")
        if rst and sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()


# --- sessions: one connection's life each ---------------------------------------------------------


def random_text(n):
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 ,.-_éü€😀"
    return "e:" + "".join(random.choice(alphabet) for _ in range(n))


def random_size():
    r = random.random()
    if r < 0.70:
        return random.randint(0, 200)
    if r < 0.97:
        return random.randint(200, 8000)
    return random.randint(8000, 70000)


async def s_echo(run, deflate=False, tls=False):
    ws = await WS.connect(run, deflate=deflate, tls=tls)
    for _ in range(random.randint(1, 12)):
        if random.random() < 0.5:
            opcode, payload = OP_TEXT, random_text(random_size() // 2).encode()
        else:
            opcode, payload = OP_BINARY, os.urandom(random_size())
        pieces = random.choice([1, 1, 1, 2, 3, 4])
        ws.send_message(opcode, payload, pieces=pieces, ping=random.random() < 0.3)
        got = await ws.recv_message()
        if got != (opcode, payload):
            raise Failure(f"echo differs: sent {opcode}/{len(payload)} bytes, got "
                          f"{got[0]}/{len(got[1])} bytes")
        await asyncio.sleep(random.random() * 0.3)
    await ws.close(random.choice([1000, 1000, 1001, 4000]))


async def s_rooms(run):
    ws = await WS.connect(run)
    room = f"r{random.randint(0, 19)}"
    last_tick = 0

    async def until(expected):
        nonlocal last_tick
        while True:
            opcode, data = await ws.recv_message()
            text = data.decode()
            if text == expected:
                return
            if text.startswith("tick "):
                gen = int(text.split()[1])
                if gen < last_tick:
                    raise Failure(f"a timer of app generation {gen} ran after generation "
                                  f"{last_tick}: the old version's timers were not cancelled")
                last_tick = gen
                continue
            if text.startswith("{"):
                msg = json.loads(text)
                if msg.get("type") == "msg" and msg.get("room") == room:
                    continue
            raise Failure(f"unexpected message {text[:80]!r} waiting for {expected!r}")

    ws.send(OP_TEXT, f"join {room}".encode())
    await until(f"joined {room}")
    for _ in range(random.randint(1, 8)):
        token = base64.b32encode(os.urandom(5)).decode()
        ws.send(OP_TEXT, f"pub {room} {token}".encode())
        await until(f"ack {token}")
        await asyncio.sleep(random.random() * 0.5)
    doc = {"a": [1, 2, 3], "s": "ü", "n": random.randint(0, 10 ** 9)}
    ws.send(OP_TEXT, b"json " + json.dumps(doc).encode())
    while True:
        opcode, data = await ws.recv_message()
        if data.startswith(b"{") and b'"seen"' in data:
            break
    got = json.loads(data)
    if got != dict(doc, seen=True):
        raise Failure(f"json round trip: {got!r}")
    await ws.close()


async def s_idle(run):
    """Silent for a few seconds, answering the server's pings, then a normal close."""
    ws = await WS.connect(run)
    reading = asyncio.create_task(ws.recv_message())
    done, _ = await asyncio.wait({reading}, timeout=random.uniform(2, 7))
    if done:
        opcode, data = reading.result()
        raise Failure(f"an idle connection received a message: {data[:60]!r}")
    await ws.close(pending=reading)


async def s_deaf(run):
    """Never answers a ping: closed with 1001 after ping_interval + pong_timeout."""
    ws = await WS.connect(run)
    started = time.monotonic()
    while True:
        try:
            fin, rsv, opcode, payload = await ws.recv_frame()
        except (asyncio.IncompleteReadError, ConnectionError):
            raise Failure("a deaf client's connection ended without a close frame") from None
        if opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0]
            if code != 1001:
                raise Failure(f"a deaf client was closed with {code}, expected 1001")
            ws.writer.write(encode(OP_CLOSE, payload[:2]))
            break
    took = time.monotonic() - started
    if took < PING_INTERVAL:
        raise Failure(f"a deaf client was closed after {took:.1f} s")
    ws.abort(rst=False)


async def s_app_close(run):
    ws = await WS.connect(run)
    code = random.choice([4001, 4002, 1000])
    ws.send(OP_TEXT, f"close {code}".encode())
    await ws.expect_close({code})
    ws.abort(rst=False)


async def s_boom(run):
    ws = await WS.connect(run)
    ws.send(OP_TEXT, b"boom")
    await ws.expect_close({1011})
    ws.abort(rst=False)


GARBAGE = [
    encode(OP_TEXT, b"hello", rsv=7),                       # RSV bits without an extension
    encode(0x3, b"hello"),                                  # reserved opcode
    bytes([0x81, 0x05]) + b"hello",                         # unmasked
    encode(OP_PING, b"p" * 126),                            # control frame over 125 bytes
    encode(OP_PING, b"p", fin=False),                       # fragmented control frame
    encode(OP_CLOSE, b"\x03"),                              # 1-byte close payload
    encode(OP_CONT, b"orphan"),                             # continuation without a message
    encode(OP_TEXT, b"a", fin=False) + encode(OP_TEXT, b"b"),  # new message mid-message
    bytes([0x82, 0xFE, 0x00, 0x05]) + os.urandom(4) + b"short",  # non-minimal length
]


async def s_garbage(run):
    ws = await WS.connect(run)
    bad = random.choice(GARBAGE)
    ws.writer.write(bad + os.urandom(random.randint(0, 64)))
    await ws.expect_close({1002})
    ws.abort(rst=random.random() < 0.5)


async def s_bad_utf8(run):
    ws = await WS.connect(run)
    bad = random.choice([b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xff", b"\xe2\x82"])
    if random.random() < 0.5:
        ws.send(OP_TEXT, b"fine so far " + bad[:1], fin=False)
        ws.send(OP_CONT, bad[1:] + b" and more")
    else:
        ws.send(OP_TEXT, b"prefix " + bad)
    await ws.expect_close({1007})
    ws.abort(rst=random.random() < 0.5)


async def s_big_head(run):
    reader, writer = await run.open()
    key = base64.b64encode(os.urandom(16))
    writer.write(request(key, extra=b"X-Filler: " + b"f" * (MAX_HEADER + 2000) + b"\r\n"))
    try:
        status, _ = await read_status(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        raise Failure("an oversized head got no answer") from None
    if status != 431:
        raise Failure(f"an oversized head answered {status}, expected 431")
    writer.transport.abort()


async def s_big_message(run):
    ws = await WS.connect(run)
    ws.writer.write(encode(OP_BINARY, os.urandom(1000), length=random.choice(
        [MAX_MESSAGE + 1, 2 ** 33, 2 ** 62])))
    await ws.expect_close({1009})
    ws.abort(rst=random.random() < 0.5)


async def s_slowloris(run):
    started = time.monotonic()  # before connecting: our own loop may resume us late
    reader, writer = await run.open()
    head = request(base64.b64encode(os.urandom(16)))
    for i in range(len(head) - 2):
        writer.write(head[i:i + 1])
        try:
            data = await asyncio.wait_for(reader.read(1), timeout=0.4)
            if data:
                raise Failure(f"a slowloris head was answered: {data!r}")
            break  # EOF: cut at the handshake timeout
        except asyncio.TimeoutError:
            pass
        except ConnectionError:
            break
    else:
        raise Failure("a slowloris head was never cut")
    took = time.monotonic() - started
    if took < HANDSHAKE_TIMEOUT * 0.8 or took > HANDSHAKE_TIMEOUT + 3 * run.slow:
        raise Failure(f"slowloris cut after {took:.1f} s (handshake timeout {HANDSHAKE_TIMEOUT})")
    writer.transport.abort()


async def s_reset(run):
    """Vanishes with a RST: during the head, mid-frame, or mid-echo of a big message."""
    where = random.choice(["head", "frame", "echo"])
    if where == "head":
        reader, writer = await run.open()
        writer.write(request(base64.b64encode(os.urandom(16)))[:random.randint(1, 60)])
        await asyncio.sleep(random.random() * 0.2)
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return
    ws = await WS.connect(run)
    if where == "frame":
        whole = encode(OP_BINARY, os.urandom(3000))
        ws.writer.write(whole[:random.randint(1, len(whole) - 1)])
    else:
        ws.send(OP_BINARY, os.urandom(200 * KiB))
    await asyncio.sleep(random.random() * 0.2)
    ws.abort(rst=True)


async def s_never_reads(run):
    """Asks for 3 MiB and never reads: the server must cut it (1008) without growing."""
    ws = await WS.connect(run, rcvbuf=4096)
    ws.writer.transport.pause_reading()
    ws.send(OP_TEXT, b"flood 200")
    await asyncio.sleep(random.uniform(1, 4))
    ws.abort(rst=random.random() < 0.7)


async def s_http(run):
    reader, writer = await run.open()
    path, method, want = random.choice([
        ("/healthz", "GET", 200), ("/metrics", "GET", 200), ("/soak/state", "GET", 200),
        ("/", "GET", 426), ("/", "POST", 405)])
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    status, headers = await read_status(reader)
    if status != want:
        raise Failure(f"{method} {path} answered {status}, expected {want}")
    await reader.read()  # Connection: close
    writer.close()


SESSIONS = [  # (name, weight, good client?)
    ("echo", 22, True), ("echo-deflate", 6, True), ("echo-tls", 4, True), ("rooms", 16, True),
    ("idle", 12, True), ("deaf", 1, True), ("app-close", 3, True), ("boom", 2, True),
    ("http", 3, True),
    ("garbage", 5, False), ("bad-utf8", 5, False), ("big-head", 3, False),
    ("big-message", 3, False), ("slowloris", 4, False), ("reset", 7, False),
    ("never-reads", 4, False),
]
RUNNERS = {
    "echo": s_echo, "echo-deflate": lambda r: s_echo(r, deflate=True),
    "echo-tls": lambda r: s_echo(r, tls=True), "rooms": s_rooms, "idle": s_idle,
    "deaf": s_deaf, "app-close": s_app_close, "boom": s_boom, "http": s_http,
    "garbage": s_garbage, "bad-utf8": s_bad_utf8, "big-head": s_big_head,
    "big-message": s_big_message, "slowloris": s_slowloris, "reset": s_reset,
    "never-reads": s_never_reads,
}


# --- the run ------------------------------------------------------------------------------------


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    return 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Run:
    def __init__(self, args):
        self.args = args
        self.slow = 5 if args.valgrind else 1  # time-outs scale under valgrind
        self.port = free_port()
        self.tls_port = None
        self.tls_ctx = None
        self.stats = {name: {"ok": 0, "failed": 0, "timeout": 0} for name, _, _ in SESSIONS}
        self.failures = []
        self.samples = []  # (t, rss, fds, open connections, queued bytes)
        self.stop = asyncio.Event()
        self.proc = None
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="wsserver-soak-"))
        self.log_path = self.workdir / "server.log"
        self.vg_log = self.workdir / "valgrind.log"
        self.heap_before = self.heap_after = None
        self.reloads_sent = 0

    async def open(self, tls=False, rcvbuf=None):
        if tls:
            return await wsraw.open_stream(self.tls_port, self.tls_ctx, rcvbuf, limit=4 * MiB)
        return await wsraw.open_stream(self.port, None, rcvbuf, limit=4 * MiB)

    # the server

    def make_certs(self):
        script = ROOT / "scripts" / "gen-test-cert.sh"
        if not shutil.which("openssl") or not script.exists():
            return None
        certs = self.workdir / "certs"
        r = subprocess.run(["bash", str(script), str(certs)], capture_output=True)
        if r.returncode != 0:
            return None
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        self.tls_ctx = ctx
        self.tls_port = free_port()
        return certs

    def start_server(self):
        certs = self.make_certs()
        cmd = [self.args.binary, "-l", f"127.0.0.1:{self.port}", "--metrics",
               "--handshake-timeout", str(HANDSHAKE_TIMEOUT), "--close-timeout", str(CLOSE_TIMEOUT),
               "--ping-interval", str(PING_INTERVAL), "--pong-timeout", str(PONG_TIMEOUT),
               "--max-buffered", str(MAX_BUFFERED), "--max-message-size", str(MAX_MESSAGE),
               "--max-header-size", str(MAX_HEADER), "--compression", "on",
               "--log-level", "warn"]
        if certs:
            cmd += ["-l", f"tls:127.0.0.1:{self.tls_port}", "--tls-cert", str(certs / "server.pem"),
                    "--tls-key", str(certs / "server.key")]
        cmd.append(str(APP))
        if self.args.valgrind:
            cmd = ["valgrind", "--leak-check=full", "--show-leak-kinds=definite",
                   "--errors-for-leak-kinds=definite", "--error-exitcode=99",
                   "--track-fds=no", f"--log-file={self.vg_log}"] + cmd
        # Descriptors for thousands of connections (the server inherits our limit).
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        try:
            wsraw.wait_listening(self.proc, self.port, 60 if self.args.valgrind else 10)
        except RuntimeError as e:
            sys.exit(f"{e}:\n{self.log_tail()}")
        if not certs:
            SESSIONS[:] = [s for s in SESSIONS if s[0] != "echo-tls"]
            print("soak: no openssl, TLS sessions left out")

    def log_tail(self, n=4000):
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def get(self, path):
        """The body of a plain GET (the server closes after one answer)."""
        reader, writer = await asyncio.wait_for(self.open(), 5)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), 10 * self.slow)
        finally:
            writer.close()
        return data.split(b"\r\n\r\n", 1)[1].decode()

    async def lua_heap(self):
        return int(await self.get("/soak/heap"))

    async def scrape(self):
        out = {}
        body = await self.get("/metrics")
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    # load

    async def session(self, name):
        timeout = 30 * self.slow
        try:
            await asyncio.wait_for(RUNNERS[name](self), timeout)
            self.stats[name]["ok"] += 1
        except asyncio.TimeoutError:
            self.stats[name]["timeout"] += 1
        except asyncio.CancelledError:
            raise
        except Failure as e:
            self.stats[name]["failed"] += 1
            if len(self.failures) < 50:
                self.failures.append(f"{name}: {e}")
        except (Closed, ConnectionError, asyncio.IncompleteReadError, OSError,
                ssl.SSLError) as e:
            # A good client must never be cut off; a hostile one may be, in any of these ways.
            good = next(g for n, _, g in SESSIONS if n == name)
            if good:
                self.stats[name]["failed"] += 1
                if len(self.failures) < 50:
                    self.failures.append(f"{name}: connection lost: {e!r}")
            else:
                self.stats[name]["ok"] += 1

    def roles(self):
        """One kind of session per slot, in proportion to the weights: the mix (and so the
        memory the server needs for it) stays the same all through the run."""
        total = sum(w for _, w, _ in SESSIONS)
        roles = []
        for name, weight, _ in SESSIONS:
            roles += [name] * max(1, round(self.args.concurrency * weight / total))
        random.shuffle(roles)
        return roles

    async def slot(self, role, delay):
        await asyncio.sleep(delay)
        while not self.stop.is_set():
            await self.session(role)

    async def sampler(self, started):
        while True:
            t = time.monotonic() - started
            if self.proc.poll() is not None:
                return
            rss, fds = rss_bytes(self.proc.pid), fd_count(self.proc.pid)
            try:
                m = await self.scrape()
                conns = m.get("wsserver_connections_open")
                queued = m.get("wsserver_send_queue_bytes")
            except (OSError, asyncio.TimeoutError, IndexError, ValueError):
                conns = queued = None
            self.samples.append((t, rss, fds, conns, queued))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started - t)))

    async def reloader(self):
        while not self.stop.is_set():
            await asyncio.sleep(self.args.reload_every)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGHUP)
                self.reloads_sent += 1

    async def reporter(self, started):
        last_done, last_t = 0, 0.0
        while True:
            await asyncio.sleep(5)
            if not self.samples:
                continue
            t, rss, fds, conns, queued = self.samples[-1]
            done = sum(s["ok"] + s["failed"] + s["timeout"] for s in self.stats.values())
            failed = sum(s["failed"] for s in self.stats.values())
            rate = (done - last_done) / max(0.001, t - last_t)
            last_done, last_t = done, t
            print(f"  t={t:6.1f}s  rss={rss / MiB:7.1f} MiB  fds={fds:5d}  open={conns}  "
                  f"queued={queued}  sessions={done} ({rate:.0f}/s)  failed={failed}", flush=True)

    async def main(self):
        self.start_server()
        await asyncio.sleep(0.5 * self.slow)
        self.heap_before = await self.lua_heap()
        await asyncio.sleep(0.5)  # that request's connection is gone before the baseline
        baseline_fds = fd_count(self.proc.pid)
        baseline_rss = rss_bytes(self.proc.pid)
        print(f"soak: wsserver pid {self.proc.pid} on 127.0.0.1:{self.port}"
              f"{f' and tls:{self.tls_port}' if self.tls_port else ''}, "
              f"{self.args.concurrency} concurrent sessions for {self.args.duration} s"
              f"{' under valgrind' if self.args.valgrind else ''}; "
              f"baseline rss {baseline_rss / MiB:.1f} MiB, {baseline_fds} fds", flush=True)
        started = time.monotonic()
        ramp = min(5.0, self.args.duration / 10)
        roles = self.roles()
        slots = [asyncio.create_task(self.slot(role, ramp * i / len(roles)))
                 for i, role in enumerate(roles)]
        helpers = [asyncio.create_task(self.sampler(started)),
                   asyncio.create_task(self.reloader()),
                   asyncio.create_task(self.reporter(started))]
        while time.monotonic() - started < self.args.duration:
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.5)
        load_end = time.monotonic() - started
        self.stop.set()
        # Sessions finish their current life; stragglers are cancelled.
        done, pending = await asyncio.wait(slots, timeout=35 * self.slow)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        try:
            self.heap_after = await self.lua_heap()
        except (OSError, asyncio.TimeoutError, ValueError):
            self.heap_after = None
        # Let every connection the server still holds end (close and handshake timeouts).
        settle_deadline = time.monotonic() + 15 * self.slow
        while time.monotonic() < settle_deadline and self.proc.poll() is None:
            if fd_count(self.proc.pid) <= baseline_fds:
                break
            await asyncio.sleep(0.2)
        settled_at = time.monotonic() - started
        await asyncio.sleep(1.5)  # a couple of idle samples for the record
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        return self.verdict(baseline_fds, baseline_rss, load_end, settled_at)

    def verdict(self, baseline_fds, baseline_rss, load_end, settled_at):
        ok = True
        print("\nsoak: sessions by kind (ok / failed / timed out)")
        total = 0
        for name, _, good in SESSIONS:
            s = self.stats[name]
            total += s["ok"] + s["failed"] + s["timeout"]
            print(f"  {name:13s} {'good' if good else 'hostile':7s} "
                  f"{s['ok']:7d} / {s['failed']:4d} / {s['timeout']:4d}")
        failed = sum(s["failed"] for s in self.stats.values())
        timeouts = sum(s["timeout"] for s in self.stats.values())
        print(f"  total {total} sessions, {failed} failed, {timeouts} timed out")
        for f in self.failures[:20]:
            print(f"    ! {f}")
        if failed:
            ok = False
            print("FAIL: the server gave wrong answers (see above)")
        if timeouts > max(1, total // 100):
            ok = False
            print("FAIL: more than 1 % of the sessions timed out")

        alive = self.proc.poll() is None
        if not alive:
            print(f"FAIL: wsserver died with {self.proc.returncode}:\n{self.log_tail()}")
            return False

        # RSS and descriptors over time: one line per 5 s.
        print("\nsoak: server RSS and descriptors (one sample per second, every 5th shown)")
        print("     t      rss MiB   fds  open  queued")
        for t, rss, fds, conns, queued in self.samples[::5]:
            print(f"  {t:6.1f}  {rss / MiB:9.1f} {fds:5d} {conns if conns is not None else '-':>5} "
                  f"{queued if queued is not None else '-':>7}")
        d = load_end
        during = [s for s in self.samples if s[0] <= d]
        q2 = [s[1] for s in during if 0.25 * d <= s[0] < 0.5 * d]
        q4 = [s[1] for s in during if 0.75 * d <= s[0] <= d]
        peak_fds = max((s[2] for s in during), default=0)
        peak_rss = max((s[1] for s in during), default=0)
        final_fds = min(fd_count(self.proc.pid), min((s[2] for s in self.samples[-2:]),
                                                      default=1 << 30))
        final_rss = rss_bytes(self.proc.pid)
        report = {"duration": d, "concurrency": self.args.concurrency,
                  "valgrind": self.args.valgrind, "sessions": total, "failed": failed,
                  "timeouts": timeouts, "baseline_rss": baseline_rss, "baseline_fds": baseline_fds,
                  "peak_rss": peak_rss, "peak_fds": peak_fds, "final_rss": final_rss,
                  "final_fds": final_fds, "fds_settled_at": settled_at,
                  "q2_rss_avg": statistics.mean(q2) if q2 else None,
                  "q4_rss_avg": statistics.mean(q4) if q4 else None,
                  "samples": self.samples}
        print(f"\nsoak: baseline rss {baseline_rss / MiB:.1f} MiB / {baseline_fds} fds; "
              f"peak {peak_rss / MiB:.1f} MiB / {peak_fds} fds; after the load "
              f"{final_rss / MiB:.1f} MiB / {final_fds} fds")
        if q2 and q4:
            a2, a4 = statistics.mean(q2), statistics.mean(q4)
            limit = a2 * 1.10 + 4 * MiB
            print(f"soak: RSS average, 2nd quarter {a2 / MiB:.1f} MiB, last quarter "
                  f"{a4 / MiB:.1f} MiB (limit {limit / MiB:.1f} MiB)")
            if a4 > limit and not self.args.valgrind:
                ok = False
                print("FAIL: RSS kept growing after warm-up")
        else:
            print("soak: too short to compare RSS quarters")
        if self.heap_after is None:
            ok = False
            print("FAIL: the app's heap could not be read after the load")
        else:
            grown = self.heap_after - self.heap_before
            print(f"soak: Lua heap after a full GC: {self.heap_before / KiB:.0f} KiB before the "
                  f"load, {self.heap_after / KiB:.0f} KiB after it")
            if grown > 256 * KiB:
                ok = False
                print(f"FAIL: the Lua heap kept {grown / KiB:.0f} KiB (connections or reloads "
                      f"leave references behind)")
        report["lua_heap_before"], report["lua_heap_after"] = self.heap_before, self.heap_after
        if final_fds > baseline_fds:
            ok = False
            print(f"FAIL: {final_fds - baseline_fds} descriptors still open after the load")
        else:
            print(f"soak: descriptors back to the baseline {settled_at - d:.1f} s after the load")

        if self.args.report:
            pathlib.Path(self.args.report).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(self.args.report).write_text(json.dumps(report, indent=1))
        return ok

    def check_reloads(self, metrics):
        ok_reloads = metrics.get('wsserver_reloads_total{result="ok"}', 0)
        failed_reloads = metrics.get('wsserver_reloads_total{result="failed"}', 0)
        print(f"soak: reloads ok {ok_reloads:.0f}, failed {failed_reloads:.0f} "
              f"({self.reloads_sent} SIGHUPs sent, one every {self.args.reload_every} s)")
        # the last SIGHUP may still be in flight when /metrics is read
        return failed_reloads == 0 and ok_reloads >= max(1, self.reloads_sent - 1)

    def shutdown(self):
        """SIGTERM and the exit status; under valgrind, its verdict."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=120 if self.args.valgrind else 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            print("FAIL: wsserver did not exit after SIGTERM")
            return False
        ok = code == 0
        print(f"soak: wsserver exited with {code} after SIGTERM")
        if not ok:
            print(self.log_tail())
        # A sanitizer build (make soak BUILD=build/asan after make asan) reports into the log.
        log = self.log_path.read_text(errors="replace")
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in log:
                ok = False
                at = log.index(marker)
                print(f"FAIL: sanitizer report in the server log:\n{log[at:at + 4000]}")
                break
        if self.args.valgrind:
            text = self.vg_log.read_text(errors="replace")
            summary = re.search(r"ERROR SUMMARY: (\d+) errors", text)
            definite = re.search(r"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", text)
            errors = int(summary.group(1)) if summary else -1
            lost = int(definite.group(1).replace(",", "")) if definite else 0
            print(f"soak: valgrind: {errors} errors, {lost} bytes definitely lost")
            for pattern in (r"in use at exit: .*", r"total heap usage: .*", r"possibly lost: .*",
                            r"still reachable: .*"):
                found = re.search(pattern, text)
                if found:
                    print(f"soak: valgrind: {found.group(0)}")
            if errors != 0 or lost != 0 or code == 99:
                ok = False
                print(text[-6000:])
        return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=float(os.environ.get("DURATION") or 0))
    ap.add_argument("--concurrency", type=int, default=int(os.environ.get("CONCURRENCY") or 0))
    ap.add_argument("--valgrind", action="store_true",
                    default=os.environ.get("VALGRIND", "") not in ("", "0"))
    ap.add_argument("--binary",
                    default=os.environ.get("WSSERVER", str(ROOT / "build" / "wsserver")))
    ap.add_argument("--reload-every", type=float, default=5.0)
    ap.add_argument("--report", default=os.environ.get("SOAK_REPORT"),
                    help="write the samples and the numbers as JSON here")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if not args.duration:
        args.duration = 30.0 if args.valgrind else 60.0
    if not args.concurrency:
        args.concurrency = 150 if args.valgrind else 2000
    if args.valgrind and not shutil.which("valgrind"):
        sys.exit("soak: VALGRIND=1 needs valgrind (apt-get install valgrind)")
    random.seed(args.seed)
    run = Run(args)
    ok = False
    try:
        ok = asyncio.run(run.main())
        if run.proc.poll() is None:
            try:
                metrics = asyncio.run(run.scrape())
                ok = run.check_reloads(metrics) and ok
            except (OSError, asyncio.TimeoutError) as e:
                print(f"FAIL: /metrics unreachable after the load: {e!r}")
                ok = False
            ok = run.shutdown() and ok
    finally:
        if run.proc and run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    if ok:
        shutil.rmtree(run.workdir, ignore_errors=True)
    else:
        print(f"soak: server log and valgrind log kept in {run.workdir}")
    print("soak: PASS" if ok else "soak: FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
