"""ws.connect (docs/client.md): the server as a WebSocket client of real upstream servers — Python
`websockets` and Node.js `ws` started by the tests, wsserver itself, and raw-socket servers that
check the client role byte by byte (a fresh masking key per frame; masked server frames, a bad
Sec-WebSocket-Accept, an unrequested extension or subprotocol refused). A driver app runs each
scripted exchange in a handler and answers with what happened, as JSON.
"""
import asyncio
import base64
import hashlib
import json
import os
import pathlib
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import wsraw
from conftest import ROOT
from wsclient import STEP, connect, run, terminate, wait_for

TEST_BUDGET = 60
HERE = pathlib.Path(__file__).resolve().parent
TESTS = HERE.parent
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Runs one scripted exchange per message: {"url", "opts", "send": [[data, kind]...], "receive": n,
# "rtimeout", "close": [code, reason] | true, "ping": payload} -> JSON of what happened.
DRIVER = r"""
local json = ws.json
local function v(x) if x == nil then return json.null end return x end
return {
  config = {metrics = true},
  message = function(conn, data)
    local cmd = json.decode(data)
    local opts = cmd.opts or {}
    if opts.protocols == json.null then opts.protocols = nil end
    local cl, err, status, body = ws.connect(cmd.url, opts)
    if not cl then
      conn:send(json.encode({ok = false, err = v(err), status = v(status), body = v(body)}))
      return
    end
    local out = {ok = true, protocol = v(cl.protocol), got = {}, sent = {}}
    if cmd.ping then out.ping = cl:ping(cmd.ping) end
    for _, m in ipairs(cmd.send or {}) do
      local data = m[1]
      if m[3] then data = string.rep(m[1], m[3]) end
      local r, e = cl:send(data, m[2])
      out.sent[#out.sent + 1] = v(r or e)
    end
    for _ = 1, cmd.receive or 0 do
      local d, k, code, reason = cl:receive(cmd.rtimeout or 5)
      if d and #d > 200 then d = "len:" .. #d end
      out.got[#out.got + 1] = {v(d), v(k), v(code), v(reason)}
      if not d then break end
    end
    if cmd.close then
      if cmd.close == true then cl:close() else cl:close(cmd.close[1], cmd.close[2]) end
      local d, k, code, reason = cl:receive(5)
      out.closed = {v(d), v(k), v(code), v(reason)}
    end
    out.open = cl:is_open()
    conn:send(json.encode(out))
  end,
}
"""


def drive(server, cmd, timeout=20):
    async def go():
        async with connect(server.url) as ws:
            await ws.send(json.dumps(cmd))
            return json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return run(go(), timeout + 5)


@pytest.fixture
def driver(wsserver_factory):
    return wsserver_factory(app_source=DRIVER)


class Upstream:
    """A server process started by a test; stopped (by PID) when the test ends."""

    def __init__(self, cmd, cwd=None, env=None, port=None):
        self.port = port or wsraw.free_port()
        self.lines = []
        self.proc = subprocess.Popen([*cmd, str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: "READY" in self.lines or self.proc.poll() is not None, STEP,
                 "the upstream to listen")
        assert self.proc.poll() is None, "\n".join(self.lines)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def url(self, path="/echo"):
        return f"ws://127.0.0.1:{self.port}{path}"

    def saw(self, line, timeout=STEP):
        wait_for(lambda: line in self.lines, timeout, lambda: f"{line!r} in {self.lines}")

    def stop(self):
        terminate(self.proc, 5)


@pytest.fixture
def py_upstream():
    u = Upstream(["/usr/bin/python3", str(HERE / "upstream_py.py")])
    yield u
    u.stop()


@pytest.fixture
def node_upstream():
    if not (TESTS / "node_modules" / "ws" / "package.json").is_file():
        pytest.fail("tests/node_modules/ws is missing: run `npm install` in tests/")
    u = Upstream(["node", str(HERE / "node" / "upstream.js")], cwd=str(TESTS))
    yield u
    u.stop()


@pytest.fixture(params=["python", "node"])
def upstream(request):
    return request.getfixturevalue("py_upstream" if request.param == "python" else "node_upstream")


# --- echo, close, subprotocol, compression, refusal: websockets and ws --------------------------


def test_echo_text_and_binary_then_close(driver, upstream):
    r = drive(driver, {"url": upstream.url(), "send": [["héllo", "text"], ["\x00\x01bin", "binary"]],
                       "receive": 2, "close": [1000, "done"]})
    assert r["ok"], r
    assert r["got"] == [["héllo", "text", None, None], ["\x00\x01bin", "binary", None, None]]
    assert r["closed"] == [None, "closed", 1000, "done"]
    assert r["open"] is False
    upstream.saw("CLOSE 1000")


def test_large_message_both_ways(driver, upstream):
    r = drive(driver, {"url": upstream.url(), "send": [["0123456789", "binary", 30000]],
                       "receive": 1, "close": True})
    assert r["got"] == [["len:300000", "binary", None, None]], r


def test_subprotocol_is_the_one_the_server_picked(driver, upstream):
    r = drive(driver, {"url": upstream.url(), "opts": {"protocols": ["chat.v1", "chat.v2"]},
                       "send": [["__info__"]], "receive": 1, "close": True})
    assert r["ok"], r
    # the server decides (websockets weighs both lists, ws takes its own first): the client
    # reports what it answered
    assert r["protocol"] in ("chat.v1", "chat.v2")
    assert json.loads(r["got"][0][0])["subprotocol"] == r["protocol"]
    r = drive(driver, {"url": upstream.url(), "close": True})
    assert r["protocol"] is None


def test_permessage_deflate_when_asked(driver, upstream):
    r = drive(driver, {"url": upstream.url(), "opts": {"compression": True},
                       "send": [["__info__"], ["abcabcabc", "text", 2000], ["z", "text", 10]],
                       "receive": 3, "close": True})
    assert r["ok"], r
    assert json.loads(r["got"][0][0])["extensions"] == ["permessage-deflate"]
    assert r["got"][1] == ["len:18000", "text", None, None]
    assert r["got"][2] == ["z" * 10, "text", None, None]
    # not asked: not offered
    r = drive(driver, {"url": upstream.url(), "send": [["__info__"]], "receive": 1, "close": True})
    assert json.loads(r["got"][0][0])["extensions"] == []


def test_refusal_returns_status_and_body(driver, py_upstream, node_upstream):
    r = drive(driver, {"url": py_upstream.url("/refuse")})
    assert r["ok"] is False
    assert r["status"] == 403 and r["body"] == "go away\n", r
    assert "403" in r["err"]
    r = drive(driver, {"url": node_upstream.url("/refuse")})
    assert r["status"] == 401 and "no entry" in r["body"], r


def test_abrupt_close_is_1006(driver, upstream):
    r = drive(driver, {"url": upstream.url("/abrupt"), "send": [["boom"]], "receive": 1})
    assert r["got"][0][:3] == [None, "closed", 1006], r
    assert r["open"] is False


def test_server_close_is_echoed_and_reported(driver, py_upstream):
    r = drive(driver, {"url": py_upstream.url("/close"), "send": [["x"]], "receive": 1,
                       "opts": {"headers": {"X-Test": "extra header", "X-Num": 7}}})
    assert r["got"] == [[None, "closed", 4000, "bye"]], r
    py_upstream.saw("OPEN /close extra header")
    py_upstream.saw("CLOSE 4000")


def test_oversize_message_closes_1009(driver, py_upstream):
    r = drive(driver, {"url": py_upstream.url("/big"), "opts": {"max_message_size": 1000},
                       "send": [["1000"], ["1001"]], "receive": 2})
    assert r["got"][0] == ["len:1000", "text", None, None], r
    assert r["got"][1][:3] == [None, "closed", 1009], r
    py_upstream.saw("CLOSE 1009")


def test_slow_server_times_out(driver, py_upstream):
    t0 = time.monotonic()
    r = drive(driver, {"url": py_upstream.url("/slowhs"), "opts": {"timeout": 0.5}})
    assert r == {"ok": False, "err": "timeout", "status": None, "body": None}
    assert time.monotonic() - t0 < 2.5
    r = drive(driver, {"url": py_upstream.url("/silent"), "send": [["hello?"]], "receive": 1,
                       "rtimeout": 0.3, "close": True})
    assert r["got"] == [[None, "timeout", None, None]], r
    assert r["closed"][:3] == [None, "closed", 1000]


def test_connection_refused_and_bad_urls(driver, wsserver_factory):
    port = wsraw.free_port()
    r = drive(driver, {"url": f"ws://127.0.0.1:{port}/"})
    assert r["ok"] is False and "cannot connect" in r["err"] and "refused" in r["err"], r
    r = drive(driver, {"url": "ws://no-such-host.invalid/"})
    assert r["ok"] is False and "cannot resolve" in r["err"], r
    # misuse raises: the handler fails, so nothing is answered and the error is logged
    for url in ("http://127.0.0.1/", "ws://127.0.0.1/#frag", "ws://u@127.0.0.1/"):
        async def go():
            async with connect(driver.url) as ws:
                await ws.send(json.dumps({"url": url}))
                return await asyncio.wait_for(ws.recv(), STEP)
        with pytest.raises(Exception):
            run(go(), 10)
    assert "ws.connect:" in driver.log()


def test_wsserver_against_itself(driver, wsserver_factory):
    up = wsserver_factory()  # examples/echo.lua
    r = drive(driver, {"url": up.url, "opts": {"compression": True},
                       "send": [["one"], ["two", "binary"], ["é", "text", 5000]], "receive": 3,
                       "ping": "p", "close": [4001, "bye"]})
    assert r["ok"] and r["ping"] is True, r
    assert [g[:2] for g in r["got"]] == [["one", "text"], ["two", "binary"], ["len:10000", "text"]]
    # the code and reason are the server's answer: wsserver echoes the code only
    assert r["closed"] == [None, "closed", 4001, ""]
    wait_for(lambda: "code=4001" in up.log(), STEP, "the upstream to log the close")


def test_metrics_count_outbound_connections(driver, py_upstream):
    drive(driver, {"url": py_upstream.url(), "send": [["a"]], "receive": 1, "close": True})
    drive(driver, {"url": py_upstream.url("/refuse")})
    body = wsraw.http_exchange(driver.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body
    text = body.decode()
    assert 'wsserver_wsclient_connects_total{result="ok"} 1' in text, text
    assert 'wsserver_wsclient_connects_total{result="refused"} 1' in text
    assert "wsserver_wsclient_messages_sent_total 1" in text
    assert "wsserver_wsclient_connections_open 0" in text


# --- the event style: examples/feed-bridge.lua ---------------------------------------------------


def ticks(msgs):
    return [int(m.split()[1]) for m in msgs if m.startswith("tick ")]


def test_feed_bridge_republishes_and_reconnects(wsserver_factory, monkeypatch):
    up = Upstream(["/usr/bin/python3", str(HERE / "upstream_py.py")])
    monkeypatch.setenv("UPSTREAM", up.url("/feed"))
    bridge = wsserver_factory(app=ROOT / "examples" / "feed-bridge.lua")

    async def browsers():
        async with connect(bridge.url) as a, connect(bridge.url) as b:
            first = json.loads(await asyncio.wait_for(a.recv(), STEP))
            assert first["type"] == "bridge"
            got_a, got_b = [], []
            while len(ticks(got_a)) < 20:
                got_a.append(await asyncio.wait_for(a.recv(), STEP))
            while len(ticks(got_b)) < 20:
                got_b.append(await asyncio.wait_for(b.recv(), STEP))
            # every tick, in order, to both
            ta, tb = ticks(got_a), ticks(got_b)
            assert ta == list(range(ta[0], ta[0] + len(ta))), ta
            assert tb == list(range(tb[0], tb[0] + len(tb))), tb
            # the upstream restarts on the same port: the browsers stay, the ticks come back
            up.stop()
            down = None
            while down is None:
                m = await asyncio.wait_for(a.recv(), STEP)
                if m.startswith("{"):
                    down = json.loads(m)
            assert down["upstream"] == "down"
            return a, b

    try:
        run(browsers(), 30)
        up2 = Upstream(["/usr/bin/python3", str(HERE / "upstream_py.py")], port=up.port)
        try:
            async def back():
                async with connect(bridge.url) as c:
                    seen = []
                    while len(ticks(seen)) < 5:
                        seen.append(await asyncio.wait_for(c.recv(), STEP))
                    return seen
            seen = run(back(), 20)
            # the new upstream counts from 1 again
            assert ticks(seen)[0] < 50, seen
            wait_for(lambda: bridge.log().count('msg="upstream_open"') >= 2, STEP,
                     "the bridge to reconnect")
            assert 'msg="upstream_closed"' in bridge.log()
            # a reload: the old version's connection closes (1001), the new version opens one
            bridge.signal(signal.SIGHUP)
            up2.saw("CLOSE 1001")
            wait_for(lambda: up2.lines.count("OPEN /feed") >= 2, STEP, lambda: up2.lines)
        finally:
            up2.stop()
    finally:
        up.stop()
    assert bridge.stop() == 0


# --- raw upstreams: the client role byte by byte ------------------------------------------------


class RawUpstream:
    """One-connection-at-a-time TCP server in a thread: answers the handshake as told, then
    records the client's frames (unmasked, with their keys) and runs the test's script."""

    def __init__(self, answer=None, script=None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(STEP)
        self.port = self.sock.getsockname()[1]
        self.answer = answer or (lambda key: default_answer(key))
        self.script = script
        self.frames = []
        self.request = b""
        self.eof = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def url(self, path="/"):
        return f"ws://127.0.0.1:{self.port}{path}"

    def _run(self):
        try:
            conn, _ = self.sock.accept()
            conn.settimeout(STEP)
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                self.request, _, rest = buf.partition(b"\r\n\r\n")
                key = [l.split(b":", 1)[1].strip() for l in self.request.split(b"\r\n")
                       if l.lower().startswith(b"sec-websocket-key:")][0]
                conn.sendall(self.answer(key))
                self.conn, self.buf = conn, rest
                if self.script:
                    self.script(self)
        except Exception as e:  # reported by the test through .error
            self.error = e
        finally:
            self.eof.set()

    def read_frame(self):
        """The client's next frame: (opcode, payload, mask key), or None at end of stream."""
        def need(n):
            while len(self.buf) < n:
                chunk = self.conn.recv(65536)
                if not chunk:
                    return False
                self.buf += chunk
            return True
        if not need(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            need(4)
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            need(10)
            n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
        masked = bool(b1 & 0x80)
        need(off + (4 if masked else 0) + n)
        key = self.buf[off:off + 4] if masked else None
        off += 4 if masked else 0
        payload = bytes(self.buf[off:off + n])
        if masked:
            payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
        self.buf = self.buf[off + n:]
        frame = (b0 & 0x0F, payload, key, b0 & 0x70)
        self.frames.append(frame)
        return frame

    def send(self, data):
        self.conn.sendall(data)

    def close(self):
        self.sock.close()


def accept_of(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def default_answer(key, extra=b"", accept=None):
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + (accept or accept_of(key)) + b"\r\n" + extra + b"\r\n")


def unmasked(opcode, payload=b"", mask=False):
    return wsraw.encode_frame(opcode, payload, mask=mask)


def test_every_frame_has_a_fresh_masking_key(driver):
    def script(up):
        while True:
            f = up.read_frame()
            if f is None:
                return
            if f[0] == 0x8:
                up.send(unmasked(0x8, f[1]))
                return
    up = RawUpstream(script=script)
    r = drive(driver, {"url": up.url(), "send": [[str(i)] for i in range(200)], "close": True})
    up.eof.wait(STEP)
    assert up.error is None, up.error
    data = [f for f in up.frames if f[0] == 0x1]
    assert [f[1].decode() for f in data] == [str(i) for i in range(200)]
    keys = [f[2] for f in up.frames]
    assert all(k is not None for k in keys), "a client frame was not masked"
    assert len(set(keys)) == len(keys), "a masking key was used twice"
    assert r["closed"][:3] == [None, "closed", 1000]
    # the request itself: RFC 6455 §4.1
    req = up.request.decode()
    assert req.startswith("GET / HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{up.port}" in req and "Sec-WebSocket-Version: 13" in req
    key = [l.split(": ")[1] for l in req.split("\r\n") if l.startswith("Sec-WebSocket-Key")][0]
    assert len(base64.b64decode(key)) == 16


def test_masked_server_frame_is_refused_with_1002(driver):
    def script(up):
        up.send(unmasked(0x1, b"masked!", mask=True))
        while (f := up.read_frame()) is not None and f[0] != 0x8:
            pass
        up.close_code = struct.unpack(">H", f[1][:2])[0] if f else None
    up = RawUpstream(script=script)
    r = drive(driver, {"url": up.url(), "receive": 1})
    up.eof.wait(STEP)
    assert r["got"][0][:3] == [None, "closed", 1002], r
    assert up.close_code == 1002


@pytest.mark.parametrize("answer,why", [
    (lambda key: default_answer(key, accept=base64.b64encode(b"x" * 20)), "Sec-WebSocket-Accept"),
    (lambda key: default_answer(key, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"),
     "extension"),
    (lambda key: default_answer(key, b"Sec-WebSocket-Extensions: x-unknown\r\n"), "extension"),
    (lambda key: default_answer(key, b"Sec-WebSocket-Protocol: other\r\n"), "subprotocol"),
    (lambda key: b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n", "Upgrade"),
    (lambda key: b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc", "200"),
    (lambda key: b"garbage\r\n\r\n", "not HTTP"),
])
def test_bad_answers_are_refused(driver, answer, why):
    up = RawUpstream(answer=answer)
    r = drive(driver, {"url": up.url(), "opts": {"protocols": ["mine"]}})
    up.eof.wait(STEP)
    assert r["ok"] is False and why in r["err"], r


def test_ping_is_answered_and_tcp_closed_after_the_server(driver):
    def script(up):
        up.send(unmasked(0x9, b"are you there"))
        f = up.read_frame()
        up.pong = f
        up.send(unmasked(0x8, struct.pack(">H", 1001) + b"going"))
        up.reply = up.read_frame()
        # the client waits for the server to close TCP first (RFC 6455 §7.1.1)
        up.conn.settimeout(0.3)
        try:
            up.early_eof = up.conn.recv(1) == b""
        except socket.timeout:
            up.early_eof = False
    up = RawUpstream(script=script)
    r = drive(driver, {"url": up.url(), "receive": 1})
    up.eof.wait(STEP)
    assert up.error is None, up.error
    assert up.pong[:2] == (0xA, b"are you there")
    assert up.reply[0] == 0x8 and up.reply[1][:2] == struct.pack(">H", 1001)
    assert up.early_eof is False
    assert r["got"] == [[None, "closed", 1001, "going"]], r


def test_invalid_utf8_from_the_server_closes_1007(driver):
    def script(up):
        up.send(unmasked(0x1, b"\xff\xfe"))
        while (f := up.read_frame()) is not None and f[0] != 0x8:
            pass
        up.code = struct.unpack(">H", f[1][:2])[0]
    up = RawUpstream(script=script)
    r = drive(driver, {"url": up.url(), "receive": 1})
    up.eof.wait(STEP)
    assert r["got"][0][:3] == [None, "closed", 1007] and up.code == 1007, r


# --- wss: verification by default, ca_file, insecure ---------------------------------------------


def test_wss_verifies_the_certificate(driver, wsserver_factory, tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-test-cert.sh"), str(tmp_path)], check=True,
                   capture_output=True, timeout=30)
    up = wsserver_factory(args=["--tls-cert", str(tmp_path / "server.pem"),
                                "--tls-key", str(tmp_path / "server.key")])
    url = f"wss://127.0.0.1:{up.port}/"
    # the test CA is not in the system's store: refused, saying why
    r = drive(driver, {"url": url})
    assert r["ok"] is False and "certificate verification" in r["err"], r
    r = drive(driver, {"url": url, "opts": {"ca_file": str(tmp_path / "ca.pem")},
                       "send": [["over tls"]], "receive": 1, "close": True})
    assert r["ok"] and r["got"][0][:2] == ["over tls", "text"], r
    # by name too (SNI and the host check): the certificate names localhost
    r = drive(driver, {"url": f"wss://localhost:{up.port}/",
                       "opts": {"ca_file": str(tmp_path / "ca.pem")}, "close": True})
    assert r["ok"], r
    r = drive(driver, {"url": url, "opts": {"insecure": True}, "close": True})
    assert r["ok"] and r["closed"][:3] == [None, "closed", 1000], r
    r = drive(driver, {"url": url, "opts": {"ca_file": str(tmp_path / "missing.pem")}})
    assert r["ok"] is False and "CA file" in r["err"], r


def test_wss_refuses_a_certificate_for_another_host(driver, wsserver_factory, tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-test-cert.sh"), str(tmp_path),
                    "other.example"], check=True, capture_output=True, timeout=30)
    up = wsserver_factory(args=["--tls-cert", str(tmp_path / "server.pem"),
                                "--tls-key", str(tmp_path / "server.key")])
    r = drive(driver, {"url": f"wss://127.0.0.1:{up.port}/",
                       "opts": {"ca_file": str(tmp_path / "ca.pem")}})
    assert r["ok"] is False and "mismatch" in r["err"], r


# --- scripts/autobahn-client.lua: the fuzzingserver driver, against a stand-in ------------------


def test_autobahn_driver_runs_every_case_and_exits(wsserver_factory, py_upstream, monkeypatch):
    monkeypatch.setenv("AUTOBAHN", f"ws://127.0.0.1:{py_upstream.port}")
    monkeypatch.setenv("AGENT", "wsserver-test")
    # the driver may be done and the server gone before its port could be seen listening
    srv = wsserver_factory(app=ROOT / "scripts" / "autobahn-client.lua", ready=False)
    wait_for(lambda: not srv.alive(), 20, lambda: "the driver to finish:\n" + srv.log())
    assert srv.proc.returncode == 0
    for n in (1, 2, 3):
        assert f"CASE {n} OK" in py_upstream.lines, py_upstream.lines
    assert "REPORTS wsserver-test" in py_upstream.lines
    assert 'msg="autobahn_done"' in srv.log() and "cases=3" in srv.log()


EVENT_APP = r"""
local got = {}
ws.connect(os.getenv("UPSTREAM"), {
  open = function(cl)
    for i = 1, 5 do cl:send("m" .. i) end
  end,
  -- later messages wait for this one: the sleeps get shorter, the order must not change
  message = function(cl, data)
    ws.sleep(0.04 * (6 - tonumber(data:sub(2))))
    got[#got + 1] = data
    ws.state.order = table.concat(got, ",")
  end,
})
return {
  message = function(conn)
    conn:send(ws.state.order or "pending")
  end,
}
"""


def test_callbacks_run_in_order_and_shutdown_closes_1001(wsserver_factory, py_upstream,
                                                          monkeypatch):
    monkeypatch.setenv("UPSTREAM", py_upstream.url())
    srv = wsserver_factory(app_source=EVENT_APP)

    async def order():
        async with connect(srv.url) as ws:
            while True:
                await ws.send("?")
                reply = await asyncio.wait_for(ws.recv(), STEP)
                if reply.count(",") == 4:
                    return reply
                await asyncio.sleep(0.05)

    assert run(order(), 20) == "m1,m2,m3,m4,m5"
    assert srv.stop() == 0
    py_upstream.saw("CLOSE 1001")


FLOOD_APP = r"""
return {
  config = {max_pending_bytes = 16384},
  message = function(conn, url)
    local cl = assert(ws.connect(url))
    ws.sleep(0.5) -- the upstream floods meanwhile: past 16 KiB queued the socket is not read
    local n, bad = 0, 0
    while true do
      local data, kind, code = cl:receive(5)
      if not data then
        conn:send(string.format("%d %d %s %s", n, bad, kind, tostring(code)))
        return
      end
      if tonumber(data:sub(1, 4)) ~= n or #data ~= 1000 then bad = bad + 1 end
      n = n + 1
    end
  end,
}
"""


def test_unread_messages_hold_the_socket_and_none_is_lost(wsserver_factory, py_upstream):
    srv = wsserver_factory(app_source=FLOOD_APP)

    async def go():
        async with connect(srv.url) as ws:
            await ws.send(py_upstream.url("/flood"))
            return await asyncio.wait_for(ws.recv(), 30)

    assert run(go(), 40) == "2000 0 closed 1000"


def test_frames_right_behind_the_101_are_kept(driver):
    up = RawUpstream(answer=lambda key: default_answer(key) + unmasked(0x1, b"early") +
                     unmasked(0x2, b"\x00bin"))
    r = drive(driver, {"url": up.url(), "receive": 2})
    assert r["got"] == [["early", "text", None, None], ["\x00bin", "binary", None, None]], r
