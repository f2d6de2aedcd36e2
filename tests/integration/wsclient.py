"""Client helpers shared by the integration tests: Python `websockets` (asyncio) clients, polling,
a raw-socket peer that speaks just enough HTTP and RFC 6455 to misbehave precisely, and probes of
the server process."""
import asyncio
import os
import resource
import signal
import socket
import struct
import subprocess
import time

import websockets

import wsraw

STEP = 10.0  # seconds any single network step may take

KiB = 1024
MiB = 1024 * KiB


def run(coro, timeout=60.0):
    """Runs coro to completion, failing after timeout seconds."""

    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def connect(url, **kw):
    """websockets.connect with the tests' defaults: no size cap, no compression, no client pings."""
    kw.setdefault("max_size", None)
    kw.setdefault("compression", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("open_timeout", STEP)
    return websockets.connect(url, **kw)


# --- polling -----------------------------------------------------------------------------------


def terminate(proc, timeout=15.0, sig=signal.SIGTERM):
    """Stops a process this test started: sig, then SIGKILL if it is still there after timeout.
    Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _timed_out(timeout, what):
    return AssertionError(f"timed out after {timeout} s waiting for "
                          f"{what() if callable(what) else what}")


def wait_for(predicate, timeout=5.0, what="condition", interval=0.02):
    """Polls predicate() every `interval` seconds until it returns something truthy and returns
    that; fails after `timeout` seconds naming `what` (a callable is called for the message)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what)
        time.sleep(interval)


async def wait_for_async(predicate, timeout=5.0, what="condition", interval=0.02):
    """wait_for for coroutines: the event loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what)
        await asyncio.sleep(interval)


# --- process probes ----------------------------------------------------------------------------


def raise_nofile(needed):
    """Raises this process's soft RLIMIT_NOFILE to `needed` (at most the hard limit). Call it at
    import time, so the servers the fixtures start (our children) inherit the limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise AssertionError("no VmRSS")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- a raw peer --------------------------------------------------------------------------------


# one client frame: (opcode, payload, fin, rsv, mask, length=); str payloads are sent as UTF-8
frame = wsraw.encode_frame


def request_head(key, path="/", extra=b""):
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key +
            b"\r\n" + extra + b"\r\n")


def new_key():
    """A Sec-WebSocket-Key, as bytes for request_head."""
    return wsraw.new_key().encode()


class Closed(Exception):
    """The server ended the TCP connection."""


class RawPeer:
    """One TCP connection reading HTTP heads and server frames strictly; the test files add the
    handshake and the message level they need on top."""

    def __init__(self, port, source=None, rcvbuf=None, timeout=5.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()
        self.eof = False

    # reading

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            if self.eof:
                raise Closed()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"waited for {n} bytes, have {len(self.buf)}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 * MiB)
            except socket.timeout:
                raise TimeoutError(f"waited for {n} bytes, have {len(self.buf)}") from None
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.eof = True
                raise Closed()
            self.buf += chunk

    def _take(self, n, deadline):
        self._fill(n, deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _read_head(self, deadline):
        while b"\r\n\r\n" not in self.buf:
            self._fill(len(self.buf) + 1, deadline)
        end = self.buf.index(b"\r\n\r\n")
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def read_head(self, timeout=5.0):
        """(status, headers) of an HTTP response head; headers are keyed in lower case."""
        return self._read_head(time.monotonic() + timeout)

    def recv_frame(self, timeout=5.0):
        """(fin, rsv, opcode, payload); raises Closed on EOF."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._take(2, deadline)
        assert not b1 & 0x80, "server frames must not be masked (RFC 6455 §5.1)"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2, deadline))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8, deadline))
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, self._take(n, deadline)

    def wait_eof(self, timeout=5.0):
        """True when the server ends the TCP connection within `timeout` (data is discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            self.buf.clear()
            try:
                self._fill(1, deadline)
            except Closed:
                return True
            except TimeoutError:
                return False

    # writing

    def send(self, data):
        self.sock.sendall(data)

    def send_quietly(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def rst(self):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
