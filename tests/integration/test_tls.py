"""wss:// (TLS) against the real binary: interop (Python `websockets`, node `ws`, `openssl
s_client`), plain and TLS listeners side by side, protocol versions and ciphers, hostile TLS peers
(truncated/stalled/trickled handshakes, garbage, resets), back-pressure and the close handshake over
TLS, heartbeats, certificate reload on SIGHUP under load, and start-up errors for bad files.

Certificates come from scripts/gen-test-cert.sh, run once per session into a temporary folder
(two independent CAs, so reload tests can tell the old certificate from the new one).
"""
import asyncio
import json
import os
import pathlib
import random
import resource
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from types import SimpleNamespace

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

import wsraw
from wsclient import run

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BINARY = os.environ.get("WSSERVER", str(ROOT / "build" / "wsserver"))
GEN_CERT = ROOT / "scripts" / "gen-test-cert.sh"
ECHO_APP = ROOT / "examples" / "echo.lua"
NODE_CLIENT = HERE / "node" / "tls_client.js"
MiB = 1024 * 1024
BIG_MESSAGES = ["--max-message-size", str(8 * MiB), "--max-buffered", str(16 * MiB)]
STEP = 10.0  # seconds any single network step may take

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft != resource.RLIM_INFINITY and _soft < 4096:
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (4096 if _hard == resource.RLIM_INFINITY else min(4096, _hard), _hard))


TEST_BUDGET = 45  # seconds per test (conftest enforces it)


def gen_cert(folder, *names):
    subprocess.run(["bash", str(GEN_CERT), str(folder), *names], check=True,
                   capture_output=True, timeout=30)
    c = SimpleNamespace(dir=pathlib.Path(folder))
    c.ca, c.cert, c.key = c.dir / "ca.pem", c.dir / "server.pem", c.dir / "server.key"
    for f in (c.ca, c.cert, c.key):
        assert f.is_file() and f.stat().st_size > 0, f"gen-test-cert.sh did not write {f}"
    return c


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """Two independent CA + server certificate pairs (for localhost, 127.0.0.1 and ::1)."""
    base = tmp_path_factory.mktemp("tls-certs")
    return SimpleNamespace(one=gen_cert(base / "one"), two=gen_cert(base / "two"))


def tls_args(c):
    return ["--tls-cert", str(c.cert), "--tls-key", str(c.key)]


def client_ctx(ca, minimum=None, maximum=None):
    ctx = ssl.create_default_context(cafile=str(ca))  # verifies the chain and the host name
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def wss_url(port, host="127.0.0.1"):
    return f"wss://{host}:{port}/"


def connect(url, ca=None, ctx=None, **kw):
    kw.setdefault("max_size", None)
    kw.setdefault("compression", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("open_timeout", STEP)
    if url.startswith("wss:"):
        kw["ssl"] = ctx or client_ctx(ca)
    return websockets.connect(url, **kw)


def text_of(size):
    unit = "a\u00e9\u20ac\U0001d11e"  # 1 + 2 + 3 + 4 UTF-8 bytes
    s = unit * (size // 10)
    s += "x" * (size - len(s.encode("utf-8")))
    return s


def bytes_of(size):
    return random.Random(size).randbytes(size)


def client_hello(ca):
    """The bytes of a real TLS ClientHello, captured with a MemoryBIO (nothing is sent)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16 and len(hello) > 100, hello[:16]
    return hello


def rst(sock):
    """Closes with a TCP reset (SO_LINGER 0): the peer 'vanishes'."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def read_to_end(sock, timeout):
    """Reads until EOF/reset or timeout. Returns (bytes, 'eof'|'reset'|'timeout', seconds)."""
    start = time.monotonic()
    deadline = start + timeout
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(data), "timeout", time.monotonic() - start
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
        if not pending:
            r, _, _ = select.select([sock], [], [], left)
            if not r:
                continue
        try:
            chunk = sock.recv(1 << 20)
        except ssl.SSLWantReadError:
            continue
        except (ConnectionResetError, ConnectionAbortedError):
            return bytes(data), "reset", time.monotonic() - start
        except ssl.SSLError as e:  # e.g. a TLS alert: the server refused us
            return bytes(data) + f"<{e}>".encode(), "eof", time.monotonic() - start
        if not chunk:
            return bytes(data), "eof", time.monotonic() - start
        data += chunk


class TlsClient(wsraw.Client):
    """wsraw's strict frame client over an ssl.SSLSocket (select() does not see data already
    decrypted inside the SSL object, so SSL_pending is checked first)."""

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            if self.eof:
                raise wsraw.ConnectionClosed(f"EOF with {len(self.buf)} of {n} bytes buffered: "
                                             f"{bytes(self.buf[:64])!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise wsraw.Timeout(f"timed out waiting for {n} bytes, have {len(self.buf)}: "
                                    f"{bytes(self.buf[:64])!r}")
            if not self.sock.pending():
                r, _, _ = select.select([self.sock], [], [], left)
                if not r:
                    continue
            try:
                data = self.sock.recv(1 << 20)
            except ssl.SSLWantReadError:
                continue
            except (ConnectionResetError, ConnectionAbortedError, ssl.SSLError):
                data = b""
            if not data:
                self.eof = True
            else:
                self.buf += data


def tls_socket(port, ca, rcvbuf=None, host="127.0.0.1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5.0)
    sock.connect((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client_ctx(ca).wrap_socket(sock, server_hostname=host)


def wss_raw(port, ca, rcvbuf=None, path="/"):
    """A raw WebSocket client over TLS that completed the opening handshake."""
    s = tls_socket(port, ca, rcvbuf)
    key = wsraw.new_key()
    s.sendall(wsraw.build_request(path=path, key=key))
    head = bytearray()
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in head:
        assert time.monotonic() < deadline, f"no 101 in time: {bytes(head)!r}"
        chunk = s.recv(65536)
        assert chunk, f"connection closed before the 101: {bytes(head)!r}"
        head += chunk
    end = head.index(b"\r\n\r\n")
    lines = bytes(head[:end]).decode("latin-1").split("\r\n")
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    resp = wsraw.Response(lines[0], headers, raw=bytes(head[:end + 4]))
    wsraw.check_101(resp, key)
    return TlsClient(s, bytes(head[end + 4:]), resp)


async def echo_ok(ws, data, timeout=5.0):
    await ws.send(data)
    got = await asyncio.wait_for(ws.recv(), timeout)
    assert got == data, f"echo differs: sent {len(data)} bytes, got {len(got)}"


def assert_serving(server, ca):
    """The server is alive and a fresh wss client still gets an echo."""
    assert server.alive(), f"server died:\n{server.log()}"

    async def go():
        async with connect(wss_url(server.port), ca) as ws:
            await echo_ok(ws, "still serving")

    run(go(), 15)


# ---------------------------------------------------------------------------------------------
# 1. Interop over wss://
# ---------------------------------------------------------------------------------------------

def test_python_echo_sizes_fragments_ping_close(wsserver_factory, certs):
    server = wsserver_factory(args=[*tls_args(certs.one), *BIG_MESSAGES])
    sizes = [0, 1, 125, 126, 65535, 65536, MiB, 4 * MiB]

    async def go():
        failures = []
        async with connect(wss_url(server.port), certs.one.ca) as ws:
            assert ws.transport.get_extra_info("ssl_object") is not None
            for size in sizes:
                for data in (text_of(size), bytes_of(size)):
                    await ws.send(data)
                    got = await asyncio.wait_for(ws.recv(), STEP)
                    if type(got) is not type(data) or got != data:
                        failures.append(f"{type(data).__name__} {size}: got "
                                        f"{type(got).__name__} of {len(got)}")
            # fragmented sends (websockets sends an iterable as one fragmented message)
            parts = ["\u20ac" * 1000, "", "x" * 70000, "end"]
            await ws.send(parts)
            assert await asyncio.wait_for(ws.recv(), STEP) == "".join(parts)
            bparts = [bytes_of(100), bytes_of(65536), b"\x00"]
            await ws.send(bparts)
            assert await asyncio.wait_for(ws.recv(), STEP) == b"".join(bparts)
            # ping/pong with payloads
            for payload in (b"", b"p", bytes(range(125))):
                waiter = await ws.ping(payload)
                await asyncio.wait_for(waiter, 5)
            # client close: the server echoes the code and ends the connection promptly
            t0 = time.monotonic()
            await ws.close(4000, "py bye")
            elapsed = time.monotonic() - t0
            assert ws.close_code == 4000, ws.close_code
            assert elapsed < 2.5, f"closing handshake over TLS took {elapsed:.2f} s"
        assert not failures, "\n".join(failures)
        for code in (1000, 1001):
            async with connect(wss_url(server.port), certs.one.ca) as ws:
                await echo_ok(ws, "warm")
                await ws.close(code)
                assert ws.close_code == code

    run(go())
    assert server.alive()


def test_protocol_errors_over_tls(wsserver_factory, certs):
    """Framing checks are the same over TLS: invalid UTF-8 → 1007, unmasked frame → 1002."""
    server = wsserver_factory(args=tls_args(certs.one))
    with wss_raw(server.port, certs.one.ca) as c:
        c.echo_roundtrip("hello over tls")
        c.send_frame(wsraw.OP_TEXT, b"ok \xff")
        c.expect_close(1007, eof_timeout=2.0)
    with wss_raw(server.port, certs.one.ca) as c:
        c.send_frame(wsraw.OP_TEXT, b"unmasked", mask=False)
        c.expect_close(1002, eof_timeout=2.0)
    with wss_raw(server.port, certs.one.ca) as c:
        c.send_close(1000, b"raw bye")
        code, _ = c.expect_close(1000, reply=False, eof_timeout=2.0)
    assert_serving(server, certs.one.ca)


def test_slow_reader_gets_every_byte(wsserver_factory, certs):
    """The server's TLS writes hit EAGAIN (tiny receive buffer, client not reading) while more
    messages are queued behind the blocked record: the stream must still arrive intact."""
    server = wsserver_factory(args=[*tls_args(certs.one), *BIG_MESSAGES])
    msgs = [bytes_of(MiB), bytes_of(300_000), b"small", bytes_of(70_000)]
    with wss_raw(server.port, certs.one.ca, rcvbuf=4096) as c:
        c.send_binary(msgs[0])
        c.send_binary(msgs[1])
        time.sleep(0.5)  # the server is now blocked mid-record
        c.send_binary(msgs[2])
        c.send_binary(msgs[3])
        time.sleep(0.2)
        for m in msgs:
            c.expect_message(wsraw.OP_BINARY, m, timeout=5)
        c.echo_roundtrip("after the big ones")
    assert server.alive()


def test_100_concurrent_python_wss_clients(wsserver_factory, certs):
    server = wsserver_factory(args=tls_args(certs.one))
    n, per = 100, 5

    async def one(i):
        async with connect(wss_url(server.port), certs.one.ca) as ws:
            for k in range(per):
                data = f"client {i} message {k} " + "z" * ((i * 37 + k) % 5000)
                await echo_ok(ws, data if k % 2 == 0 else data.encode(), STEP)
            return per

    async def go():
        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)

    results = run(go(), 40)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} of {n} clients failed: {errors[:5]}"
    assert sum(results) == n * per
    assert server.alive()


@pytest.fixture(scope="module")
def node():
    path = shutil.which("node")
    assert path, "node is not on PATH (scripts/install-deps.sh installs nodejs)"
    assert (HERE.parent / "node_modules" / "ws" / "package.json").is_file(), \
        "tests/node_modules/ws is missing: run `npm install` in tests/"
    return path


def node_drive(node, url, ca, mode, timeout=40):
    proc = subprocess.run([node, str(NODE_CLIENT), url, str(ca), mode], capture_output=True,
                          timeout=timeout, cwd=str(HERE / "node"))
    out = proc.stdout.decode(errors="replace").strip()
    try:
        return json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        pytest.fail(f"node tls_client exited {proc.returncode} without a result:\n{out}\n"
                    f"{proc.stderr.decode(errors='replace')}")


def test_node_ws_basics_over_wss(node, wsserver_factory, certs):
    server = wsserver_factory(args=[*tls_args(certs.one), *BIG_MESSAGES])
    result = node_drive(node, wss_url(server.port), certs.one.ca, "basics")
    assert result["ok"], "node ws over wss:\n" + "\n".join(result["failures"])
    assert result["echoed"] == 16
    result = node_drive(node, wss_url(server.port, "localhost"), certs.one.ca, "concurrent")
    assert result["ok"], "node concurrent over wss:\n" + "\n".join(result["failures"])
    assert result["echoed"] == 250
    assert server.alive()


def test_node_rejects_untrusted_certificate(node, wsserver_factory, certs):
    server = wsserver_factory(args=tls_args(certs.one))
    result = node_drive(node, wss_url(server.port), certs.two.ca, "connect")
    assert not result["ok"] and not result["connected"], result
    assert "certificate" in " ".join(result["failures"]).lower() or result.get("code"), result
    assert server.alive()


def test_config_table_tls_and_ipv6(wsserver_factory, certs):
    """tls_cert/tls_key from the app's config table; a [::1] TLS listener next to it."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        try:
            s.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1")
        port6 = s.getsockname()[1]
    app = f"""
return {{
  config = {{ tls_cert = {json.dumps(str(certs.one.cert))},
             tls_key = {json.dumps(str(certs.one.key))} }},
  message = function(conn, data, kind) conn:send(data, kind) end,
}}
"""
    server = wsserver_factory(app_source=app, args=["-l", f"[::1]:{port6}"])

    async def go():
        async with connect(wss_url(server.port), certs.one.ca) as ws:
            await echo_ok(ws, "config tls")
        async with connect(f"wss://[::1]:{port6}/", certs.one.ca) as ws:
            await echo_ok(ws, "v6 tls")
        with pytest.raises((ConnectionClosed, OSError, asyncio.TimeoutError, EOFError,
                            websockets.exceptions.InvalidMessage)):
            async with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=3) as ws:
                await echo_ok(ws, "plain must not work here")

    run(go(), 30)
    assert server.alive()


# ---------------------------------------------------------------------------------------------
# 2. Plain and TLS listeners side by side
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def mixed(wsserver_factory, certs):
    """server.port is plain ws:// (the fixture's listener), server.tls_port is wss://."""
    tls_port = _free_port()
    server = wsserver_factory(args=[*tls_args(certs.one), "-l", f"tls:127.0.0.1:{tls_port}"])
    server.tls_port = tls_port
    return server


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plain_and_tls_listeners_side_by_side(mixed, certs):
    log = mixed.log()
    assert f'addr="127.0.0.1:{mixed.port}" scheme="ws"' in log, log
    assert f'addr="127.0.0.1:{mixed.tls_port}" scheme="wss"' in log, log

    async def go():
        async with connect(f"ws://127.0.0.1:{mixed.port}/") as plain, \
                connect(wss_url(mixed.tls_port), certs.one.ca) as secure:
            for i in range(20):
                await echo_ok(plain, f"plain {i}")
                await echo_ok(secure, f"secure {i}")
                await echo_ok(secure, bytes_of(70000 + i))
                await echo_ok(plain, bytes_of(70000 + i))

    run(go(), 30)


def test_plain_websocket_bytes_to_tls_port_are_refused(mixed, certs):
    req = wsraw.build_request()
    for payload in (req, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", req * 50):
        s = socket.create_connection(("127.0.0.1", mixed.tls_port), timeout=5)
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, how, secs = read_to_end(s, 5)
        s.close()
        assert how in ("eof", "reset"), f"TLS port kept a plain HTTP client open: {data[:200]!r}"
        assert b"101" not in data and b"HTTP/1.1" not in data, data[:200]
        assert secs < 3
    assert mixed.alive()

    async def go():
        async with connect(wss_url(mixed.tls_port), certs.one.ca) as ws:
            await echo_ok(ws, "tls port still fine")

    run(go(), 15)


def test_tls_client_hello_to_plain_port_gets_400(mixed, certs):
    hello = client_hello(certs.one.ca)
    s = socket.create_connection(("127.0.0.1", mixed.port), timeout=5)
    s.sendall(hello)
    data, how, secs = read_to_end(s, 5)
    s.close()
    assert data.startswith(b"HTTP/1.1 400 "), \
        f"plain port answered a ClientHello with {data[:200]!r}"
    assert how in ("eof", "reset") and secs < 3, (how, secs)
    # and a real TLS client on the plain port fails cleanly
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        tls_socket(mixed.port, certs.one.ca).close()
    assert mixed.alive()

    async def go():
        async with connect(f"ws://127.0.0.1:{mixed.port}/") as ws:
            await echo_ok(ws, "plain port still fine")

    run(go(), 15)


# ---------------------------------------------------------------------------------------------
# 3. Protocol versions and ciphers
# ---------------------------------------------------------------------------------------------

def s_client(port, ca, *flags, timeout=10):
    openssl = shutil.which("openssl")
    assert openssl, "openssl is not on PATH"
    proc = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile",
                           str(ca), "-servername", "localhost", "-verify_hostname", "localhost",
                           *flags], input=b"", capture_output=True, timeout=timeout)
    return proc.returncode, proc.stdout.decode(errors="replace") + proc.stderr.decode(
        errors="replace")


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_versions(wsserver_factory, certs, version):
    server = wsserver_factory(args=tls_args(certs.one))
    rc, out = s_client(server.port, certs.one.ca, version)
    assert "Verify return code: 0 (ok)" in out, out
    want = "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
    line = next((ln for ln in out.splitlines() if ln.startswith("New, ")), "")
    assert line.startswith(f"New, {want}, Cipher is "), out
    cipher = line.split("Cipher is ")[1].strip()
    if want == "TLSv1.2":
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    else:
        assert cipher in ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256",
                          "TLS_CHACHA20_POLY1305_SHA256"), cipher
    assert server.alive()


def test_tls11_and_weak_tls12_ciphers_refused(wsserver_factory, certs):
    server = wsserver_factory(args=tls_args(certs.one))
    # SECLEVEL=0 so the *client* is willing to offer TLS 1.1: the refusal must come from the server
    rc, out = s_client(server.port, certs.one.ca, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert rc != 0, out
    assert "alert protocol version" in out, f"TLS 1.1 not refused by the server:\n{out}"
    assert "Cipher is (NONE)" in out, out
    for weak in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-GCM-SHA256"):
        rc, out = s_client(server.port, certs.one.ca, "-tls1_2", "-cipher", weak)
        assert rc != 0 and "Cipher is (NONE)" in out, f"TLS 1.2 {weak} accepted:\n{out}"
    rc, out = s_client(server.port, certs.one.ca, "-tls1_2", "-cipher",
                       "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert "Cipher is ECDHE-ECDSA-CHACHA20-POLY1305" in out, out
    assert server.alive()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_websocket_echo_pinned_version(wsserver_factory, certs, version):
    server = wsserver_factory(args=[*tls_args(certs.one), *BIG_MESSAGES])
    v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    ctx = client_ctx(certs.one.ca, minimum=v, maximum=v)

    async def go():
        async with connect(wss_url(server.port), ctx=ctx) as ws:
            assert ws.transport.get_extra_info("ssl_object").version() == f"TLSv{version}"
            for size in (0, 16383, 16384, 16385, 100_000, 2 * MiB):
                await echo_ok(ws, bytes_of(size), STEP)

    run(go(), 30)


class BioTls:
    """A TLS client on MemoryBIOs: the test decides which TLS bytes leave in which TCP write
    (the client's Finished together with data, one record per byte, ...)."""

    def __init__(self, port, ca, version=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = client_ctx(ca, version, version)
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="127.0.0.1")

    def handshake(self):
        """Runs the handshake; returns the client's last flight *unsent* (TLS 1.3: Finished)."""
        deadline = time.monotonic() + 5
        while True:
            try:
                self.obj.do_handshake()
                return self.out.read()
            except ssl.SSLWantReadError:
                pass
            data = self.out.read()
            if data:
                self.sock.sendall(data)
            assert time.monotonic() < deadline, "TLS handshake did not finish"
            chunk = self.sock.recv(65536)
            assert chunk, "server closed during the TLS handshake"
            self.inc.write(chunk)

    def encrypt(self, data, record=None):
        """The TLS records for data: one per `record` bytes (one per write), not sent."""
        step = record or 16384
        for i in range(0, len(data), step):
            self.obj.write(data[i:i + step])
        return self.out.read()

    def send(self, data, record=None):
        self.sock.sendall(self.encrypt(data, record))

    def recv_plain(self, timeout):
        """Decrypted bytes; b'' at the end of the stream (close_notify, EOF, reset); None when
        nothing arrives within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self.obj.read(1 << 20)
                if data:
                    return data
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            try:
                raw = self.sock.recv(1 << 20)
            except (ConnectionResetError, ConnectionAbortedError):
                raw = b""
            if not raw:
                return b""
            self.inc.write(raw)


class BioClient(wsraw.Client):
    """wsraw's frame client on a BioTls stream."""

    def __init__(self, tls):
        super().__init__(tls.sock)
        self.tls = tls

    def send_raw(self, data):
        self.tls.send(data)

    def send_raw_tolerant(self, data):
        try:
            self.tls.send(data)
            return True
        except OSError:
            return False

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            if self.eof:
                raise wsraw.ConnectionClosed(f"EOF with {len(self.buf)} of {n} bytes buffered")
            left = deadline - time.monotonic()
            if left <= 0:
                raise wsraw.Timeout(f"timed out waiting for {n} bytes, have {len(self.buf)}: "
                                    f"{bytes(self.buf[:64])!r}")
            got = self.tls.recv_plain(left)
            if got == b"":
                self.eof = True
            elif got:
                self.buf += got

    def read_101(self, key):
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in self.buf:
            self._fill(len(self.buf) + 1, deadline)
        end = self.buf.index(b"\r\n\r\n")
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
        wsraw.check_101(wsraw.Response(lines[0], headers, raw=bytes(self.buf[:end + 4])), key)
        del self.buf[:end + 4]


def bio_ws(port, ca, version=None):
    tls = BioTls(port, ca, version)
    tls.sock.sendall(tls.handshake())
    c = BioClient(tls)
    key = wsraw.new_key()
    c.send_raw(wsraw.build_request(key=key))
    c.read_101(key)
    return c


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_finished_request_and_first_frame_in_one_segment(wsserver_factory, certs, version):
    """The client's last handshake flight, the upgrade request and the first frame arrive in
    one TCP write (and the request and frame in one TLS record)."""
    server = wsserver_factory(args=tls_args(certs.one))
    v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    tls = BioTls(server.port, certs.one.ca, v)
    last = tls.handshake()
    if version == "1.3":
        assert last, "expected the client Finished to be held back"
    key = wsraw.new_key()
    burst = wsraw.build_request(key=key) + wsraw.encode_frame(wsraw.OP_TEXT, b"first") + \
        wsraw.encode_frame(wsraw.OP_PING, b"pp")
    tls.sock.sendall(last + tls.encrypt(burst))
    c = BioClient(tls)
    c.read_101(key)
    c.expect_message(wsraw.OP_TEXT, b"first")
    c.expect_pong(b"pp")
    c.echo_roundtrip()
    c.close()
    assert server.alive()


def test_messages_in_tiny_and_packed_records(wsserver_factory, certs):
    server = wsserver_factory(args=tls_args(certs.one))
    c = bio_ws(server.port, certs.one.ca)
    # one whole fragmented message (with a ping between the fragments) in 1-byte TLS records,
    # all in one TCP write
    body = text_of(3000).encode()
    frames = (wsraw.encode_frame(wsraw.OP_TEXT, body[:1001], fin=False)
              + wsraw.encode_frame(wsraw.OP_PING, b"mid")
              + wsraw.encode_frame(wsraw.OP_CONT, body[1001:]))
    c.tls.send(frames, record=1)
    c.expect_pong(b"mid")
    c.expect_message(wsraw.OP_TEXT, body)
    # 500 small messages packed into as few records as possible
    many = b"".join(wsraw.encode_frame(wsraw.OP_BINARY, b"m%d" % i) for i in range(500))
    c.tls.send(many)
    for i in range(500):
        c.expect_message(wsraw.OP_BINARY, b"m%d" % i)
    c.echo_roundtrip()
    c.close()
    assert server.alive()


CLOSE_LOG_APP = r"""
return {
  message = function(conn, data, kind) conn:send(data, kind) end,
  close = function(conn, code, reason) ws.log.info("app_close", { code = code }) end,
}
"""


def test_client_close_notify_ends_the_connection(wsserver_factory, certs):
    """A TLS close_notify without a WebSocket close: the server ends the connection at once
    (the app sees 1006) and keeps serving."""
    server = wsserver_factory(app_source=CLOSE_LOG_APP, args=tls_args(certs.one))
    c = bio_ws(server.port, certs.one.ca)
    c.echo_roundtrip()
    with pytest.raises(ssl.SSLWantReadError):
        c.tls.obj.unwrap()
    c.tls.sock.sendall(c.tls.out.read())
    data, how, secs = read_to_end(c.tls.sock, 3)
    assert how in ("eof", "reset"), f"server kept the connection after close_notify ({how})"
    assert secs < 1.5, secs
    assert _wait_log(server, 'msg="app_close"', 1, 3), server.log()
    assert 'msg="app_close" code=1006' in server.log(), server.log()
    c.close()
    assert_serving(server, certs.one.ca)


def _s_client_session(port, ca, version, tmp_path, script):
    """Drives `openssl s_client` through stdin; script is a list of (bytes, wait_for) where
    wait_for is a bytes marker expected in its output before the next step (or None)."""
    out_path = tmp_path / f"s_client{version}.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                                 "-CAfile", str(ca), version], stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            for data, marker in script:
                try:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                except BrokenPipeError:
                    break
                deadline = time.monotonic() + 5
                while marker is not None and not (marker(out_path.read_bytes()) if callable(marker)
                                                  else marker in out_path.read_bytes()):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        break
                    time.sleep(0.02)
        finally:
            proc.kill()
            proc.wait()
    return out_path.read_bytes()


def test_tls13_key_update_mid_stream(wsserver_factory, certs, tmp_path):
    """openssl s_client's 'K' sends a KeyUpdate that requests ours: echo must continue."""
    server = wsserver_factory(args=tls_args(certs.one))
    script = [(b"", b"Verify return code"),
              (wsraw.build_request(), b"Sec-WebSocket-Accept"),
              (wsraw.encode_frame(wsraw.OP_TEXT, b"before"), b"before")]
    for i in range(3):
        script += [(b"K\n", lambda out, n=i + 1: out.count(b"KEYUPDATE") >= n),
                   (wsraw.encode_frame(wsraw.OP_TEXT, b"after%d" % i), b"after%d" % i)]
    out = _s_client_session(server.port, certs.one.ca, "-tls1_3", tmp_path, script)
    assert b"New, TLSv1.3" in out, out[-2000:]
    assert out.count(b"KEYUPDATE") == 3, out[-2000:]
    for word in (b"before", b"after0", b"after1", b"after2"):
        assert bytes([0x81, len(word)]) + word in out, f"no echo of {word!r}:\n{out[-1500:]!r}"
    assert server.alive()


def test_tls12_renegotiation_is_refused(wsserver_factory, certs, tmp_path):
    server = wsserver_factory(args=tls_args(certs.one))
    script = [(b"", b"Verify return code"),
              (wsraw.build_request(), b"Sec-WebSocket-Accept"),
              (b"R\n", b"no renegotiation")]
    out = _s_client_session(server.port, certs.one.ca, "-tls1_2", tmp_path, script)
    assert b"RENEGOTIATING" in out, out[-2000:]
    assert b"no renegotiation" in out, f"renegotiation was not refused:\n{out[-2000:]!r}"
    assert_serving(server, certs.one.ca)


# ---------------------------------------------------------------------------------------------
# 4. Hostile TLS peers
# ---------------------------------------------------------------------------------------------

def test_stalled_and_truncated_handshakes_time_out_without_hurting_others(wsserver_factory,
                                                                          certs):
    server = wsserver_factory(args=[*tls_args(certs.one), "--handshake-timeout", "1"])
    hello = client_hello(certs.one.ca)

    async def until_end(reader, t0):
        try:
            while await reader.read(65536):
                pass
        except (ConnectionResetError, ConnectionAbortedError):
            pass
        return time.monotonic() - t0

    async def trickle(writer, data, every):
        try:
            for b in data:
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(every)
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            pass

    async def go():
        loop = asyncio.get_running_loop()
        async with connect(wss_url(server.port), certs.one.ca) as ws:
            await echo_ok(ws, "before")
            t0 = time.monotonic()
            bad = {}
            tricklers = []
            for name in ("truncated", "silent", "trickled"):
                for i in range(5):
                    r, w = await asyncio.open_connection("127.0.0.1", server.port)
                    if name == "truncated":
                        w.write(hello[:50])
                    elif name == "trickled":  # a byte every 0.2 s: the deadline is absolute
                        tricklers.append(asyncio.ensure_future(trickle(w, hello, 0.2)))
                    bad[(name, i)] = (asyncio.ensure_future(until_end(r, t0)), w)
            # TLS completed, but no HTTP request (or a trickled one) follows
            tls_silent = await asyncio.open_connection("127.0.0.1", server.port,
                                                       ssl=client_ctx(certs.one.ca))
            bad[("tls-then-silent", 0)] = (asyncio.ensure_future(until_end(tls_silent[0], t0)),
                                           tls_silent[1])
            tls_trickle = await asyncio.open_connection("127.0.0.1", server.port,
                                                        ssl=client_ctx(certs.one.ca))
            tricklers.append(asyncio.ensure_future(
                trickle(tls_trickle[1], wsraw.build_request(), 0.2)))
            bad[("tls-then-trickled-http", 0)] = (
                asyncio.ensure_future(until_end(tls_trickle[0], t0)), tls_trickle[1])
            latencies = []
            while time.monotonic() - t0 < 2.5:
                s = loop.time()
                await echo_ok(ws, bytes_of(2000), 2)
                latencies.append(loop.time() - s)
                await asyncio.sleep(0.05)
            ends = {k: await asyncio.wait_for(t, 5) for k, (t, _) in bad.items()}
            for t in tricklers:
                t.cancel()
            for _, w in bad.values():
                w.transport.abort()
            await echo_ok(ws, "after")
        return ends, latencies

    ends, latencies = run(go(), 30)
    late = {k: round(v, 2) for k, v in ends.items() if not 0.7 <= v <= 2.3}
    assert not late, f"handshake-timeout 1 s, but these ended at (s): {late}"
    assert max(latencies) < 0.5, f"echo latency while handshakes stalled: {max(latencies):.3f} s"
    assert server.alive()
    assert "handshake_timeout" in server.log()


def test_garbage_to_tls_port(wsserver_factory, certs):
    server = wsserver_factory(args=[*tls_args(certs.one), "--handshake-timeout", "2"])
    rng = random.Random(1234)
    payloads = [bytes([0]) + rng.randbytes(4095),           # not a TLS record at all
                b"\x16\x03\x01\xff\xff" + rng.randbytes(200),  # a record header, junk body
                b"\x16\x03\x03\x00\x30" + rng.randbytes(0x30),  # handshake record, junk message
                b"\x80\x2e\x01\x03\x01" + rng.randbytes(100),    # SSLv2-style hello
                b"\x15\x03\x03\x00\x02\x02\x28"]                  # a bare fatal alert
    payloads += [rng.randbytes(rng.randrange(1, 3000)) for _ in range(20)]
    for p in payloads:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        try:
            s.sendall(p)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, how, secs = read_to_end(s, 4)
        s.close()
        assert how in ("eof", "reset"), f"garbage {p[:8].hex()} kept open ({how}, {data[:50]!r})"
        assert secs < 3.0, f"garbage {p[:8].hex()}: closed after {secs:.2f} s"
    assert_serving(server, certs.one.ca)


def test_tls_peers_that_vanish_with_rst(wsserver_factory, certs):
    server = wsserver_factory(args=[*tls_args(certs.one), *BIG_MESSAGES])
    hello = client_hello(certs.one.ca)
    for _ in range(5):
        # mid-handshake: ClientHello sent, the server's flight possibly in flight
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(hello)
        time.sleep(0.02)
        rst(s)
        # after the TLS handshake
        rst(tls_socket(server.port, certs.one.ca))
        # after the WebSocket handshake
        c = wss_raw(server.port, certs.one.ca)
        rst(c.sock)
        # while the server writes a 4 MiB echo into a small window
        c = wss_raw(server.port, certs.one.ca, rcvbuf=4096)
        c.send_binary(bytes_of(4 * MiB))
        time.sleep(0.1)
        c.sock.recv(1000)
        rst(c.sock)
        # half-way through the client's own 1 MiB message
        c = wss_raw(server.port, certs.one.ca)
        frame = wsraw.encode_frame(wsraw.OP_BINARY, bytes_of(MiB))
        c.sock.sendall(frame[:len(frame) // 2])
        rst(c.sock)
    time.sleep(0.3)
    assert_serving(server, certs.one.ca)
    # no SIGPIPE: the fixture also asserts a clean exit code at teardown


# ---------------------------------------------------------------------------------------------
# 5. Back-pressure, server close, graceful shutdown over TLS
# ---------------------------------------------------------------------------------------------

FLOOD_APP = r"""
local chunk = string.rep("x", 65536)
return {
  message = function(conn, data, kind)
    if data == "flood" then
      for i = 1, 400 do
        if not conn:send(chunk, "binary") then break end
      end
    elseif data == "close-me" then
      conn:close(4001, "bye")
    else
      conn:send(data, kind)
    end
  end,
}
"""


def test_slow_wss_consumer_is_closed_and_others_unaffected(wsserver_factory, certs):
    server = wsserver_factory(app_source=FLOOD_APP,
                              args=[*tls_args(certs.one), "--max-buffered", str(MiB),
                                    "--close-timeout", "2"])

    async def others(stop):
        latencies = []
        async with connect(wss_url(server.port), certs.one.ca) as ws:
            while not stop.is_set():
                t = time.monotonic()
                await echo_ok(ws, bytes_of(1000), 2)
                latencies.append(time.monotonic() - t)
                await asyncio.sleep(0.02)
        return latencies

    async def go():
        stop = asyncio.Event()
        task = asyncio.ensure_future(others(stop))
        await asyncio.sleep(0.2)
        slow = await asyncio.to_thread(wss_raw, server.port, certs.one.ca, 4096)
        await asyncio.to_thread(slow.send_text, "flood")
        await asyncio.sleep(1.0)  # not reading while the app floods
        t0 = time.monotonic()

        def drain():
            got, close = 0, None
            try:
                while True:
                    f = slow.recv_frame(5)
                    if f.opcode == wsraw.OP_CLOSE:
                        close = struct.unpack("!H", f.payload[:2])[0] if f.payload else None
                        slow.send_close(close or 1000, tolerant=True)
                        slow.expect_eof(3)
                        break
                    got += len(f.payload)
            except wsraw.ConnectionClosed:
                pass
            return got, close

        got, close = await asyncio.to_thread(drain)
        ended = time.monotonic() - t0
        slow.close()
        stop.set()
        latencies = await task
        return got, close, ended, latencies

    got, close, ended, latencies = run(go(), 30)
    assert close in (1008, None), f"slow consumer closed with {close}"
    assert got < 4 * MiB, f"server queued {got} bytes for a slow consumer (max-buffered 1 MiB)"
    assert ended < 4, f"slow consumer's connection ended {ended:.2f} s after it started reading"
    assert latencies and max(latencies) < 0.5, f"other client's echo latency {max(latencies):.3f}"
    assert server.alive()


def test_server_initiated_close_over_tls(wsserver_factory, certs):
    server = wsserver_factory(app_source=FLOOD_APP, args=tls_args(certs.one))
    # raw: close frame with code and reason, our reply, then the TLS/TCP connection ends
    with wss_raw(server.port, certs.one.ca) as c:
        c.echo_roundtrip("first")
        c.send_text("close-me")
        code, reason = c.expect_close(4001, reply=True, eof_timeout=1.5)
        assert reason == b"bye"

    async def go():
        async with connect(wss_url(server.port), certs.one.ca) as ws:
            await ws.send("close-me")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            t0 = time.monotonic()
            await asyncio.wait_for(ws.wait_closed(), 3)
            assert ws.close_code == 4001 and ws.close_reason == "bye", \
                (ws.close_code, ws.close_reason)
            return time.monotonic() - t0

    assert run(go(), 15) < 2.5
    assert server.alive()


def test_sigterm_sends_1001_to_wss_clients(wsserver_factory, certs):
    server = wsserver_factory(args=tls_args(certs.one))

    async def go():
        clients = [await connect(wss_url(server.port), certs.one.ca) for _ in range(5)]
        for i, ws in enumerate(clients):
            await echo_ok(ws, f"hi {i}")
        raw = await asyncio.to_thread(wss_raw, server.port, certs.one.ca)
        server.signal(signal.SIGTERM)
        codes = []
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(ws.wait_closed(), 5)
            codes.append(ws.close_code)
        raw_code, _ = await asyncio.to_thread(raw.expect_close, 1001, 5, True, 3.0)
        raw.close()
        return codes, raw_code

    codes, raw_code = run(go(), 20)
    assert codes == [1001] * 5, codes
    assert raw_code == 1001
    rc = server.proc.wait(10)
    assert rc == 0, f"exit code {rc} after SIGTERM:\n{server.log()}"


# ---------------------------------------------------------------------------------------------
# 6. Heartbeats over TLS
# ---------------------------------------------------------------------------------------------

def test_heartbeats_over_tls(wsserver_factory, certs):
    server = wsserver_factory(args=[*tls_args(certs.one), "--ping-interval", "0.5",
                                    "--pong-timeout", "0.5"])
    # a raw client that never reads nor answers
    deaf = wss_raw(server.port, certs.one.ca)
    # a raw client that reads but never answers: when does it end?
    mute = wss_raw(server.port, certs.one.ca)
    t0 = time.monotonic()

    def watch_mute():
        frames = []
        try:
            while time.monotonic() - t0 < 5:
                frames.append(mute.recv_frame(5))
        except wsraw.ConnectionClosed:
            pass
        return frames, time.monotonic() - t0

    async def go():
        mute_task = asyncio.ensure_future(asyncio.to_thread(watch_mute))
        async with connect(wss_url(server.port), certs.one.ca) as ws:
            await asyncio.sleep(3.0)  # websockets answers the server's pings by itself
            assert ws.open, f"well-behaved client closed: {ws.close_code} {ws.close_reason}"
            await echo_ok(ws, "still here after 3 s")
        return await mute_task

    (mute_frames, mute_end) = run(go(), 20)
    ops = [f.opcode for f in mute_frames]
    assert wsraw.OP_PING in ops, f"no ping reached the mute client: {ops}"
    assert ops[-1] == wsraw.OP_CLOSE, f"mute client: {ops}"
    assert struct.unpack("!H", mute_frames[-1].payload[:2])[0] == 1001
    assert mute_end < 3.0, f"mute client's connection ended after {mute_end:.2f} s"
    # the deaf one: everything (ping, close 1001, end of stream) is already there after ~3.1 s
    time.sleep(max(0.0, 3.1 - (time.monotonic() - t0)))
    frames = []
    try:
        while True:
            frames.append(deaf.recv_frame(0.5))
    except wsraw.ConnectionClosed:
        pass
    except wsraw.Timeout:
        pytest.fail(f"deaf client still connected ~3 s in; frames so far "
                    f"{[f.opcode for f in frames]}")
    ops = [f.opcode for f in frames]
    assert wsraw.OP_PING in ops and ops[-1] == wsraw.OP_CLOSE, ops
    assert struct.unpack("!H", frames[-1].payload[:2])[0] == 1001
    deaf.close()
    mute.close()
    assert server.alive()
    assert "pong_timeout" in server.log()


# ---------------------------------------------------------------------------------------------
# 7. Certificate reload on SIGHUP under load
# ---------------------------------------------------------------------------------------------

def _verify_fails(port, ca):
    try:
        tls_socket(port, ca).close()
    except ssl.SSLCertVerificationError:
        return True
    return False


def _wait_log(server, needle, count, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.log().count(needle) >= count:
            return True
        time.sleep(0.05)
    return False


def test_certificate_reload_under_load(wsserver_factory, certs, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.pem", live / "server.key"
    shutil.copy(certs.one.cert, cert)
    shutil.copy(certs.one.key, key)
    server = wsserver_factory(args=["--tls-cert", str(cert), "--tls-key", str(key)])
    old, new = certs.one, certs.two
    n = 20

    async def load(i, stop, counts, errors):
        try:
            async with connect(wss_url(server.port), old.ca) as ws:
                k = 0
                while not stop.is_set():
                    data = f"client {i} seq {k} " + "y" * ((i * 131 + k) % 3000)
                    await ws.send(data)
                    got = await asyncio.wait_for(ws.recv(), 5)
                    if got != data:
                        errors.append(f"client {i} seq {k}: wrong reply {got[:40]!r}")
                        return
                    counts[i] += 1
                    k += 1
                    await asyncio.sleep(0.005)
                assert ws.open
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {i}: {e!r}")

    async def new_client_ok(ca):
        async with connect(wss_url(server.port), ca) as ws:
            await echo_ok(ws, "fresh connection")
        return True

    async def go():
        stop = asyncio.Event()
        counts, errors = [0] * n, []
        tasks = [asyncio.ensure_future(load(i, stop, counts, errors)) for i in range(n)]
        await asyncio.sleep(0.7)
        steps = {}

        async def progress(label):
            before = list(counts)
            await asyncio.sleep(0.5)
            steps[label] = [b - a for a, b in zip(before, counts)]

        # (a) a certificate that does not match the key: refused, the old pair stays
        shutil.copy(new.cert, cert)
        server.signal(signal.SIGHUP)
        assert await asyncio.to_thread(_wait_log, server, "tls_reload_failed", 1), server.log()
        await progress("mismatch")
        assert await new_client_ok(old.ca)
        assert await asyncio.to_thread(_verify_fails, server.port, new.ca)
        # (b) the new pair: new connections get the new certificate
        shutil.copy(new.key, key)
        server.signal(signal.SIGHUP)
        assert await asyncio.to_thread(_wait_log, server, "tls_reloaded", 1), server.log()
        await progress("reloaded")
        assert await new_client_ok(new.ca)
        assert await asyncio.to_thread(_verify_fails, server.port, old.ca), \
            "a client trusting only the old CA still connected after the reload"
        # (c) garbage: the reload fails, the (new) certificate stays in service
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        key.write_bytes(os.urandom(300))
        server.signal(signal.SIGHUP)
        assert await asyncio.to_thread(_wait_log, server, "tls_reload_failed", 2), server.log()
        await progress("garbage")
        assert await new_client_ok(new.ca)
        assert await asyncio.to_thread(_verify_fails, server.port, old.ca)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return counts, errors, steps

    counts, errors, steps = run(go(), 40)
    assert not errors, "existing connections were hurt by the reloads:\n" + "\n".join(errors[:10])
    for label, deltas in steps.items():
        stalled = [i for i, d in enumerate(deltas) if d == 0]
        assert not stalled, f"after the {label} SIGHUP clients {stalled} made no progress"
    assert server.alive()
    log = server.log()
    assert log.count("tls_reload_failed") == 2 and log.count("tls_reloaded") == 1, log
    failed = [ln for ln in log.splitlines() if "tls_reload_failed" in ln]
    assert all(str(live) in ln for ln in failed), f"reload errors should name the file:\n{failed}"
    assert "level=error" in failed[0], failed


# ---------------------------------------------------------------------------------------------
# 8. Start-up errors
# ---------------------------------------------------------------------------------------------

def _bad_files(kind, certs, tmp):
    """Returns (cert, key, the path the message must name)."""
    c, k = str(certs.one.cert), str(certs.one.key)
    if kind == "missing-cert":
        return str(tmp / "nope.pem"), k, str(tmp / "nope.pem")
    if kind == "missing-key":
        return c, str(tmp / "nope.key"), str(tmp / "nope.key")
    if kind == "key-is-a-directory":
        return c, str(tmp), str(tmp)
    if kind == "cert-is-a-directory":
        return str(tmp), k, str(tmp)
    if kind == "garbage-key":
        (tmp / "g.key").write_bytes(os.urandom(500))
        return c, str(tmp / "g.key"), str(tmp / "g.key")
    if kind == "garbage-cert":
        (tmp / "g.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        return str(tmp / "g.pem"), k, str(tmp / "g.pem")
    if kind == "empty-cert":
        (tmp / "e.pem").write_bytes(b"")
        return str(tmp / "e.pem"), k, str(tmp / "e.pem")
    if kind == "key-does-not-match":
        return c, str(certs.two.key), str(certs.two.key)
    if kind == "cert-and-key-swapped":
        return k, c, k
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing-cert", "missing-key", "key-is-a-directory",
                                  "cert-is-a-directory", "garbage-key", "garbage-cert",
                                  "empty-cert", "key-does-not-match", "cert-and-key-swapped"])
@pytest.mark.parametrize("via", ["flags", "config"])
def test_startup_refuses_bad_tls_files(certs, tmp_path, kind, via):
    cert, key, named = _bad_files(kind, certs, tmp_path)
    port = _free_port()
    if via == "flags":
        args = ["--tls-cert", cert, "--tls-key", key, str(ECHO_APP)]
    else:
        app = tmp_path / "app.lua"
        app.write_text(f"return {{ config = {{ tls_cert = {json.dumps(cert)}, "
                       f"tls_key = {json.dumps(key)} }} }}\n")
        args = [str(app)]
    t0 = time.monotonic()
    try:
        proc = subprocess.run([BINARY, "-l", f"127.0.0.1:{port}", *args], capture_output=True,
                              timeout=5, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{kind}: the server started (or hung) instead of refusing the files")
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode > 0, f"{kind}: exit code {proc.returncode}\n{out}"
    assert time.monotonic() - t0 < 3
    assert named in out, f"{kind}: the message does not name {named}:\n{out}"


def test_startup_refuses_tls_listener_without_certificate(tmp_path):
    port, tls_port = _free_port(), _free_port()
    proc = subprocess.run([BINARY, "-l", f"127.0.0.1:{port}", "-l", f"tls:127.0.0.1:{tls_port}",
                           str(ECHO_APP)], capture_output=True, timeout=5, cwd=str(ROOT))
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode > 0, out
    assert f"tls:127.0.0.1:{tls_port}" in out and "tls_cert" in out, out


@pytest.mark.parametrize("given", ["cert", "key"])
def test_startup_refuses_half_a_pair(certs, given):
    flag = ["--tls-cert", str(certs.one.cert)] if given == "cert" else \
        ["--tls-key", str(certs.one.key)]
    proc = subprocess.run([BINARY, "-l", f"127.0.0.1:{_free_port()}", *flag, str(ECHO_APP)],
                          capture_output=True, timeout=5, cwd=str(ROOT))
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode > 0, out
    assert "tls_cert" in out and "tls_key" in out, out


@pytest.mark.parametrize("kind", ["missing-cert", "key-does-not-match"])
def test_check_reports_unusable_tls_files(certs, tmp_path, kind):
    cert, key, named = _bad_files(kind, certs, tmp_path)
    proc = subprocess.run([BINARY, "--check", "--tls-cert", cert, "--tls-key", key,
                           str(ECHO_APP)], capture_output=True, timeout=10, cwd=str(ROOT))
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 1 and named in out, f"--check exit {proc.returncode}:\n{out}"
