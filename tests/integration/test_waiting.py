"""Handlers that wait (SPEC §4a, README "Handlers that wait"): every handler is a coroutine on
the loop; ws.sleep waits without blocking anyone; one connection's events keep their order and
never overlap; a connection whose handler waits queues its messages up to max_pending_bytes and
then stops reading; close, reload and shutdown end waits; handler_timeout is a CPU budget per run
between waits; load cannot wait. Real servers on 127.0.0.1, real clients.
"""
import asyncio
import json
import random
import signal
import socket
import subprocess
import time

import pytest

import wsraw
from conftest import BINARY, under_asan
from wsclient import STEP, connect, raise_nofile, run, wait_for

raise_nofile(4 * 1000 + 256)

TEST_BUDGET = 90


async def recv(ws, timeout=STEP):
    return await asyncio.wait_for(ws.recv(), timeout)


ORDER_APP = """
return {
  message = function(conn, data)
    local ms = tonumber(data:match("^(%d+):")) or 0
    local ok = ws.sleep(ms / 1000)
    conn:send(data .. ":" .. tostring(ok))
  end,
}
"""


def test_sleep_keeps_per_connection_order_under_load(wsserver_factory):
    """1000 connections x 100 messages, the handler sleeping 0-5 ms at random: every reply comes
    back, once, in order."""
    server = wsserver_factory(app_source=ORDER_APP)
    conns, per = 1000, 100
    rng = random.Random(18)
    delays = [[rng.randint(0, 5) for _ in range(per)] for _ in range(conns)]

    async def one(i):
        async with connect(server.url) as ws:
            sent = [f"{delays[i][k]}:{i}:{k}" for k in range(per)]
            for m in sent:
                await ws.send(m)
            got = [await recv(ws, 20) for _ in range(per)]
            assert got == [m + ":true" for m in sent]

    async def main():
        await asyncio.gather(*(one(i) for i in range(conns)))

    run(main(), timeout=80)


def test_a_long_sleep_does_not_delay_other_connections(wsserver_factory):
    server = wsserver_factory(app_source=ORDER_APP)

    async def main():
        async with connect(server.url) as slow, connect(server.url) as fast:
            await slow.send("3000:slow")
            await asyncio.sleep(0.05)
            started = time.monotonic()
            for k in range(20):
                await fast.send(f"0:fast:{k}")
                assert await recv(fast) == f"0:fast:{k}:true"
            assert time.monotonic() - started < 1.0
            assert await recv(slow, 6) == "3000:slow:true"

    run(main())


def test_pending_queue_bound_stops_reading(wsserver_factory):
    """While the first message's handler sleeps, later messages queue up to max_pending_bytes;
    past it the server stops reading, so the client's writes stall (TCP back-pressure). Once
    the handler is done every message is handled, in order."""
    app = """
return {
  config = {max_message_size = 65536, max_pending_bytes = 262144},
  message = function(conn, data)
    if data:sub(1, 5) == "first" then ws.sleep(2) end
    conn:send(tostring(#data) .. ":" .. data:sub(1, 8))
  end,
}
"""
    server = wsserver_factory(app_source=app)
    client = wsraw.connect(server.port)
    client.send_text("first")
    time.sleep(0.1)
    sock = client.sock
    sock.setblocking(False)
    payload = b"x" * 60000
    frames = []
    sent = 0
    deadline = time.monotonic() + 1.5
    pending = b""
    n = 0
    # write as fast as the socket takes it for 1.5 s: without a bound this would be hundreds of MB
    while time.monotonic() < deadline:
        if not pending:
            body = b"%08d" % n + payload
            pending = wsraw.encode_frame(wsraw.OP_BINARY, body)
            frames.append(len(body))
            n += 1
        try:
            k = sock.send(pending)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += k
        pending = pending[k:]
    assert sent < 48 * 1024 * 1024, f"the server kept reading: {sent} bytes taken"
    sock.setblocking(True)
    if pending:
        sock.sendall(pending)  # complete the last frame
    sock.settimeout(STEP * 3)
    reply = client.recv_message(timeout=10)
    assert reply == (wsraw.OP_TEXT, b"5:first")
    for i, size in enumerate(frames):
        opcode, data = client.recv_message(timeout=10)
        assert data == f"{size}:{i:08d}".encode()
    client.close()


STATE_APP = """
local function note(s) local l = ws.state.log or {}; l[#l + 1] = s; ws.state.log = l end
return {
  message = function(conn, data)
    if data == "dump" then conn:send(ws.json.encode(ws.state.log or {})); return end
    if data == "wait" then
      local ok, err = ws.sleep(10)
      note("sleep:" .. tostring(ok) .. ":" .. tostring(err))
      note("send:" .. tostring(select(2, conn:send("late"))))
      note("sleep2:" .. tostring(select(2, ws.sleep(1))))
      return
    end
    note("msg:" .. data)
  end,
  close = function(conn, code) note("close:" .. code) end,
}
"""


def test_close_while_waiting_cancels_the_wait_then_runs_queued_messages_then_close(
        wsserver_factory):
    server = wsserver_factory(app_source=STATE_APP)

    async def main():
        ws = await connect(server.url)
        await ws.send("wait")
        await ws.send("after")
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await ws.close()
        async with connect(server.url) as probe:
            log = []
            while "close:1000" not in log:
                await probe.send("dump")
                log = json.loads(await recv(probe))
                assert time.monotonic() - started < 3, log
                await asyncio.sleep(0.05)
        assert log == ["sleep:nil:closed", "send:closed", "sleep2:closed", "msg:after",
                       "close:1000"]

    run(main())


def test_reload_lets_a_waiting_handler_finish_on_its_version(wsserver_factory, tmp_path):
    src = """
return {
  message = function(conn, data)
    if data == "wait" then ws.sleep(1) end
    conn:send("%s:" .. data)
  end,
}
"""
    server = wsserver_factory(app_source=src % "v1")

    async def main():
        async with connect(server.url) as ws:
            await ws.send("wait")
            await asyncio.sleep(0.2)
            with open(server.app, "w") as f:
                f.write(src % "v2")
            server.signal(signal.SIGHUP)
            wait_for(lambda: "generation=2" in server.log(), what="reload")
            assert await recv(ws, 5) == "v1:wait"
            await ws.send("now")
            assert await recv(ws) == "v2:now"

    run(main())


def test_shutdown_waits_for_waiting_handlers_then_cancels_them(wsserver_factory):
    app = """
return {
  config = {shutdown_timeout = 1},
  load = function()
    ws.after(0, function()
      local ok = ws.sleep(0.3)
      ws.log.info("short", {result = tostring(ok)})
    end)
    ws.after(0, function()
      local ok, err = ws.sleep(60)
      ws.log.info("long", {result = tostring(ok), err = tostring(err)})
    end)
  end,
}
"""
    server = wsserver_factory(app_source=app)
    time.sleep(0.1)
    started = time.monotonic()
    assert server.stop() == 0
    elapsed = time.monotonic() - started
    log = server.log()
    lines = log.splitlines()
    assert any('msg="short"' in l and 'result="true"' in l for l in lines), log
    assert any('msg="long"' in l and 'result="nil"' in l and 'err="shutdown"' in l
               for l in lines), log
    assert 0.9 < elapsed < 5, elapsed


def test_handler_timeout_is_a_budget_per_run_between_waits(wsserver_factory):
    app = """
return {
  config = {handler_timeout = 0.3},
  message = function(conn, data)
    if data == "waits" then
      for i = 1, 5 do ws.sleep(0.2) end -- 1 s in all, little of it CPU
      conn:send("done")
    else
      ws.sleep(0.01)
      local t = os.clock()
      while os.clock() - t < 2 do end -- 2 s of CPU between two waits
      conn:send("not interrupted")
    end
  end,
}
"""
    server = wsserver_factory(app_source=app)

    async def main():
        async with connect(server.url) as ws:
            await ws.send("waits")
            assert await recv(ws, 5) == "done"
        ws = await connect(server.url)
        started = time.monotonic()
        await ws.send("compute")
        try:
            while True:
                msg = await recv(ws, 5)
                assert msg != "not interrupted"
        except Exception:
            pass
        assert ws.close_code == 1011
        assert time.monotonic() - started < 1.5

    run(main())
    assert "handler exceeded handler_timeout" in server.log()


ONE_READ_APP = """
return {
  config = {handler_timeout = 0.25},
  message = function(conn, data, kind)
    if data == "ran" then conn:send(table.concat(ws.state.ran or {}, ",")); return end
    if data == "errors" then conn:send(tostring(ws.state.errors)); return end
    local ran = ws.state.ran or {}; ran[#ran + 1] = data; ws.state.ran = ran
    if data == "spin" then local t = os.clock(); while os.clock() - t < 0.15 do end end
    if data == "wait" then ws.sleep(0.05) end
    if data == "boom" then error("boom in one read") end
    if data == "close" then conn:close(4000, "asked") end
    conn:send(data, kind)
  end,
  error = function(message, conn) ws.state.errors = (ws.state.errors or 0) + 1 end,
}
"""


def handler_calls(port):
    from test_metrics import scrape, value
    return value(scrape(port)[0], "wsserver_handler_duration_seconds_count")


def test_messages_of_one_read_run_in_order_each_a_run_with_its_own_budget(wsserver_factory):
    """Many frames in one TCP write: the messages run one after another (the server may run
    them in one go), each a run with handler_timeout of its own, so three 0.15 s handlers in
    one read under a 0.25 s budget all finish; a ping between them is answered in its place, a
    handler that waits holds the rest behind it, and conn:close stops the read's messages."""
    ops = wsraw.free_port()
    server = wsserver_factory(app_source=ONE_READ_APP,
                              args=["--metrics-listen", f"127.0.0.1:{ops}"])

    def frames(*names, op=wsraw.OP_TEXT):
        return b"".join(wsraw.encode_frame(op, n) for n in names)

    burst = (frames(b"a", b"spin", b"spin", b"spin") + frames(b"p", op=wsraw.OP_PING) +
             frames(b"wait", b"b") + frames(b"c", op=wsraw.OP_BINARY))
    # the same burst in the request's own write too: its frames are read with the request head
    for first in (False, True):
        before = handler_calls(ops)
        client = wsraw.connect(server.port, first_bytes=burst if first else b"")
        if not first:
            client.send_raw(burst)
        for n in (b"a", b"spin", b"spin", b"spin"):
            client.expect_message(wsraw.OP_TEXT, n)
        client.expect_pong(b"p")
        client.expect_message(wsraw.OP_TEXT, b"wait")
        client.expect_message(wsraw.OP_TEXT, b"b")
        client.expect_message(wsraw.OP_BINARY, b"c")
        client.send_raw(frames(b"x", b"close", b"never"))
        client.expect_message(wsraw.OP_TEXT, b"x")
        client.expect_close(4000)  # "close" sends nothing after conn:close
        client.close()
        # a run per message, two for the one that waited; "never" came after our close frame
        wait_for(lambda: handler_calls(ops) - before == 10, timeout=STEP)
    client = wsraw.connect(server.port)
    client.send_text("ran")
    client.expect_message(wsraw.OP_TEXT, b",".join([b"a,spin,spin,spin,wait,b,c,x,close"] * 2))
    client.close()
    assert "handler_timeout" not in server.log()


def test_an_error_ends_the_messages_of_its_read_there(wsserver_factory):
    """A handler error in the middle of one read's messages closes the connection with 1011
    after app.error saw it once; the messages before it were answered, the ones after it do
    not run, and another connection is untouched."""
    server = wsserver_factory(app_source=ONE_READ_APP)
    other = wsraw.connect(server.port)
    client = wsraw.connect(server.port)
    client.send_raw(b"".join(wsraw.encode_frame(wsraw.OP_TEXT, n) for n in
                             (b"one", b"two", b"boom", b"three", b"four")))
    client.expect_message(wsraw.OP_TEXT, b"one")
    client.expect_message(wsraw.OP_TEXT, b"two")
    client.expect_close(1011)
    client.close()
    other.send_text("ran")
    other.expect_message(wsraw.OP_TEXT, b"one,two,boom")
    other.send_text("errors")
    other.expect_message(wsraw.OP_TEXT, b"1")
    other.close()
    log = server.log()
    assert log.count("boom in one read") == 1, log


def test_waiting_in_load_is_refused_with_a_clear_error(tmp_path):
    app = tmp_path / "app.lua"
    app.write_text("return { load = function() ws.sleep(1) end }\n")
    out = subprocess.run([BINARY, "--check", str(app)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0
    assert "ws.sleep cannot wait inside load" in out.stdout + out.stderr
    app.write_text("ws.sleep(1)\nreturn {}\n")
    out = subprocess.run([BINARY, "--check", str(app)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0
    assert "ws.sleep cannot wait inside load" in out.stdout + out.stderr


def test_misplaced_waits_raise(wsserver_factory):
    app = """
return {
  message = function(conn, data)
    local ok, err
    if data == "coroutine" then
      ok, err = pcall(coroutine.wrap(function() ws.sleep(0) end))
    elseif data == "sort" then
      ok, err = pcall(table.sort, {3, 2, 1}, function(a, b) ws.sleep(0) return a < b end)
    elseif data == "yield" then
      ok, err = pcall(coroutine.yield)
    elseif data == "yield!" then
      coroutine.yield()
    elseif data == "pcall" then
      ok, err = pcall(ws.sleep, 0.01)
      ok = tostring(ok) .. ":" .. tostring(err)
      err = nil
    end
    conn:send(tostring(ok) .. "|" .. tostring(err))
  end,
}
"""
    server = wsserver_factory(app_source=app)

    async def main():
        async with connect(server.url) as ws:
            await ws.send("coroutine")
            assert "cannot wait inside a coroutine the app created" in await recv(ws)
            await ws.send("sort")
            assert "ws.sleep cannot wait here" in await recv(ws)
            await ws.send("pcall")
            assert await recv(ws) == "true:true|nil"  # pcall may wait
            await ws.send("yield")
            assert await recv(ws) == "false|attempt to yield from outside a coroutine"
        ws = await connect(server.url)
        await ws.send("yield!")
        with pytest.raises(Exception):
            await recv(ws)
        assert ws.close_code == 1011

    run(main())
    assert "attempt to yield from outside a coroutine" in server.log()


# ---- ws.http against a Python http.server started by the test ----

import http.server
import threading
import urllib.request

from wsclient import fd_count


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/ok":
            self.reply(200, b"hello", [("X-Test", "yes"), ("Set-Cookie", "a=1"),
                                       ("Set-Cookie", "b=2")])
        elif path == "/slow":
            time.sleep(2)
            self.reply(200, b"late")
        elif path == "/short":
            time.sleep(0.3)
            self.reply(200, b"short")
        elif path == "/hang":
            Upstream.release.wait(30)
        elif path == "/huge":
            size = 20 * 1024 * 1024
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            try:
                for _ in range(size // 65536):
                    self.wfile.write(b"x" * 65536)
            except OSError:
                pass
        elif path == "/redirect":
            self.reply(302, b"", [("Location", "/ok")])
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"one,", b"two,", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.reply(404, b"nothing here")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.reply(200, b"%s %s %s" % (self.command.encode(), self.headers.get("X-Who", "").encode(),
                                       body))

    do_PUT = do_POST


@pytest.fixture
def upstream():
    Upstream.release.clear()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    Upstream.release.set()
    srv.shutdown()
    srv.server_close()


HTTP_APP = """
return {
  config = {metrics = true},
  message = function(conn, data)
    local req = ws.json.decode(data)
    if req.many then
      local left, results = req.many, {}
      for i = 1, req.many do
        ws.after(0, function()
          local r, err = ws.http.get(req.url, {timeout = req.timeout})
          results[#results + 1] = err or r.status
          left = left - 1
          if left == 0 then
            collectgarbage()
            conn:send(ws.json.encode(results))
          end
        end)
      end
      return
    end
    local r, err
    if req.post then
      r, err = ws.http.post(req.url, req.post, {headers = {["X-Who"] = "me"}})
    else
      r, err = ws.http.request(req)
    end
    if not r then conn:send(ws.json.encode({err = err})) return end
    conn:send(ws.json.encode({status = r.status, headers = r.headers, body = r.body,
                               size = #r.body}))
  end,
}
"""


async def ask(ws, **req):
    """One request through HTTP_APP: its answer (status, headers, body) or {"err": ...}."""
    await ws.send(json.dumps(req))
    return json.loads(await recv(ws, 15))


def test_http_client(wsserver_factory, upstream):
    server = wsserver_factory(app_source=HTTP_APP)
    refused = wsraw.free_port()

    async def main():
        async with connect(server.url) as ws:
            r = await ask(ws, url=upstream + "/ok")
            assert r["status"] == 200 and r["body"] == "hello"
            assert r["headers"]["x-test"] == "yes"
            assert r["headers"]["set-cookie"] == "a=1, b=2"
            r = await ask(ws, url=upstream + "/missing")
            assert r["status"] == 404 and r["body"] == "nothing here"
            started = time.monotonic()
            r = await ask(ws, url=upstream + "/slow", timeout=0.5)
            assert r == {"err": "timeout"}
            assert time.monotonic() - started < 1.5
            r = await ask(ws, url=upstream + "/hang?secret=42", timeout=0.5)
            assert r == {"err": "timeout"}
            r = await ask(ws, url=upstream + "/huge", max_body=1048576)
            assert r["err"].startswith("response too large"), r
            r = await ask(ws, url=f"http://127.0.0.1:{refused}/")
            assert str(refused) in r["err"], r
            r = await ask(ws, url=upstream + "/redirect")
            assert r["status"] == 302
            r = await ask(ws, url=upstream + "/redirect", follow=True)
            assert r["status"] == 200 and r["body"] == "hello"
            r = await ask(ws, url=upstream + "/chunked")
            assert r["body"] == "one,two,three"
            r = await ask(ws, url=upstream + "/echo", post="payload")
            assert r["body"] == "POST me payload"
            r = await ask(ws, url=upstream + "/echo", method="PUT", body="x")
            assert r["body"] == "PUT  x"

    run(main())
    log = server.log()
    assert "event=http_failed" in log and "/hang" in log and "secret" not in log
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert 'wsserver_http_client_requests_total{result="timeout"} 2' in metrics
    assert 'wsserver_http_client_requests_total{result="error"} 2' in metrics, metrics
    assert "wsserver_handlers_waiting 0" in metrics


@pytest.fixture
def https_upstream(tmp_path):
    """The same upstream over TLS, with a certificate from a throwaway CA (gen-test-cert.sh)."""
    import ssl
    from conftest import ROOT
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-test-cert.sh"), str(tmp_path)],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    srv.daemon_threads = True
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{srv.server_address[1]}", str(tmp_path / "ca.pem")
    srv.shutdown()
    srv.server_close()


def test_https_verifies_certificates_by_default(wsserver_factory, https_upstream):
    url, ca = https_upstream
    server = wsserver_factory(app_source=HTTP_APP)

    async def main():
        async with connect(server.url) as ws:
            r = await ask(ws, url=url + "/ok")
            assert "certificate" in r["err"].lower(), r  # an unknown CA is refused
            r = await ask(ws, url=url + "/ok", ca_file=ca)
            assert (r["status"], r["body"]) == (200, "hello"), r
            r = await ask(ws, url=url + "/ok", insecure=True)
            assert (r["status"], r["body"]) == (200, "hello"), r
            r = await ask(ws, url=url.replace("127.0.0.1", "localhost") + "/chunked", ca_file=ca)
            assert r["body"] == "one,two,three", r

    run(main())


def test_http_misuse_raises(wsserver_factory):
    app = """
return {
  message = function(conn, data)
    local calls = {
      function() return ws.http.request("http://x") end,
      function() return ws.http.request({}) end,
      function() return ws.http.request({url = "ftp://x/"}) end,
      function() return ws.http.request({url = "http://x/", timeout = -1}) end,
      function() return ws.http.request({url = "http://x/", headers = {["a\\r\\nb"] = "c"}}) end,
      function() return ws.http.request({url = "http://x/", method = "GE T"}) end,
    }
    local out = {}
    for i, f in ipairs(calls) do
      local ok, err = pcall(f)
      out[i] = ok and "no error" or err
    end
    conn:send(ws.json.encode(out))
  end,
}
"""
    server = wsserver_factory(app_source=app)

    async def main():
        async with connect(server.url) as ws:
            await ws.send("go")
            out = json.loads(await recv(ws))
            assert all(e != "no error" for e in out), out
            assert "ws.http" in out[2] and "url must be" in out[2]

    run(main())


def test_many_hanging_requests_time_out_and_leave_no_descriptors(wsserver_factory, upstream):
    server = wsserver_factory(app_source=HTTP_APP)

    async def main():
        async with connect(server.url) as ws:
            await ws.send(json.dumps({"url": upstream + "/ok"}))
            await recv(ws)  # the client is up
            before = fd_count(server.pid)
            rss = []
            for _ in range(6):
                await ws.send(json.dumps({"many": 10000, "url": upstream + "/hang",
                                          "timeout": 1}))
                results = json.loads(await recv(ws, 30))
                assert results == ["timeout"] * 10000
                wait_for(lambda: fd_count(server.pid) <= before + 2, what="descriptors back")
                rss.append(rss_kib(server.pid))
            # the first rounds grow the heap to its working size; later ones reuse it
            if not under_asan(server.pid):
                assert rss[-1] - rss[1] < 1024, f"RSS grew round after round: {rss} KiB"

    run(main())


def test_http_concurrency_cap_makes_calls_wait_their_turn(wsserver_factory, upstream):
    server = wsserver_factory(app_source=HTTP_APP.replace(
        "config = {metrics = true}", "config = {http_max_concurrent = 4}"))

    async def main():
        async with connect(server.url) as ws:
            started = time.monotonic()
            await ws.send(json.dumps({"many": 12, "url": upstream + "/short", "timeout": 5}))
            results = json.loads(await recv(ws, 15))
            assert results == [200] * 12
            assert time.monotonic() - started >= 0.85  # 3 rounds of 0.3 s

    run(main())


# ---- upgrade and http routes that wait: the answer goes out when they return ----

FRONT_APP = """
return {
  config = {handshake_timeout = 1},
  upgrade = function(req)
    local ms = tonumber(req.query.ms) or 0
    ws.sleep(ms / 1000)
    if req.query.fail then error("boom after a wait") end
    if req.query.refuse then
      return false, 401, "no after " .. ms, {["WWW-Authenticate"] = "Bearer"}
    end
    return {protocol = req.protocols[1], data = {ms = ms}}
  end,
  open = function(conn)
    ws.state.opens = (ws.state.opens or 0) + 1
    conn:send("open " .. conn.data.ms .. " " .. tostring(conn.protocol))
  end,
  message = function(conn, data) conn:send("echo " .. data) end,
  http = {
    ["GET /opens"] = function() return 200, tostring(ws.state.opens or 0) end,
    ["POST /slow"] = function(req)
      ws.sleep(0.2)
      return 201, "got " .. req.body, {["X-After"] = "wait"}
    end,
    ["GET /slow"] = function()
      ws.sleep(0.2)
      return 200, "slow get", {["Content-Type"] = "text/x-test"}
    end,
    ["GET /fail"] = function() ws.sleep(0.05); error("route boom") end,
    ["GET /bad"] = function() ws.sleep(0.05); return "x" end,
  },
}
"""


def opens(server):
    return int(wsraw.http_exchange(server.port, b"GET /opens HTTP/1.1\r\nHost: x\r\n\r\n").body)


def test_upgrade_waits_while_other_connections_are_served(wsserver_factory):
    server = wsserver_factory(app_source=FRONT_APP)

    async def main():
        slow = asyncio.ensure_future(
            connect(server.url + "?ms=600", subprotocols=["chat"], open_timeout=5))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        async with connect(server.url) as fast:
            assert await recv(fast) == "open 0 nil"
            await fast.send("x")
            assert await recv(fast) == "echo x"
        assert time.monotonic() - t0 < 0.45, "a waiting upgrade delayed another connection"
        assert not slow.done()
        ws = await slow
        assert ws.subprotocol == "chat"
        assert await recv(ws) == "open 600 chat"
        await ws.close()

    run(main())


def test_upgrade_refuses_or_fails_after_a_wait(wsserver_factory):
    server = wsserver_factory(app_source=FRONT_APP)
    resp = wsraw.http_exchange(server.port, wsraw.build_request("/?ms=100&refuse=1"))
    assert resp.status == 401
    assert resp.body == b"no after 100\n"
    assert resp.header("WWW-Authenticate") == "Bearer"
    resp = wsraw.http_exchange(server.port, wsraw.build_request("/?ms=50&fail=1"))
    assert resp.status == 500
    wait_for(lambda: "boom after a wait" in server.log(), what="the upgrade's error logged")
    assert opens(server) == 0


def test_frames_sent_before_a_waiting_upgrade_is_decided_are_kept(wsserver_factory):
    server = wsserver_factory(app_source=FRONT_APP)
    early = wsraw.encode_frame(wsraw.OP_TEXT, b"early") * 3
    with wsraw.connect(server.port, path="/?ms=200", first_bytes=early) as c:
        c.expect_message(wsraw.OP_TEXT, b"open 200 nil")
        for _ in range(3):
            c.expect_message(wsraw.OP_TEXT, b"echo early")
        c.send_text("late")
        c.expect_message(wsraw.OP_TEXT, b"echo late")


def test_a_client_that_leaves_while_upgrade_waits_is_never_opened(wsserver_factory):
    server = wsserver_factory(app_source=FRONT_APP)
    assert opens(server) == 0
    time.sleep(0.2)  # that request's socket is closed by now
    before = fd_count(server.pid)
    socks = []
    for _ in range(50):
        s = socket.create_connection((server.host, server.port), timeout=STEP)
        s.sendall(wsraw.build_request("/?ms=300"))
        socks.append(s)
    wait_for(lambda: fd_count(server.pid) >= before + 50, what="the connections accepted")
    for s in socks:
        s.close()
    time.sleep(0.6)  # the upgrades have returned by now
    assert opens(server) == 0
    wait_for(lambda: fd_count(server.pid) <= before, what="descriptors back")
    # handshake_timeout (1 s) still applies to an upgrade that waits longer
    s = socket.create_connection((server.host, server.port), timeout=STEP)
    s.sendall(wsraw.build_request("/?ms=3000"))
    t0 = time.monotonic()
    assert s.recv(4096) == b""  # dropped without a 101
    assert 0.8 < time.monotonic() - t0 < 2.5
    s.close()
    time.sleep(2.3)  # past the upgrade's end: it finds its connection gone
    assert opens(server) == 0
    assert "handler_error" not in server.log()


def test_http_routes_wait_then_answer(wsserver_factory):
    server = wsserver_factory(app_source=FRONT_APP)
    body = b"x" * 100000
    req = (b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    resp = wsraw.http_exchange(server.port, req)
    assert resp.status == 201
    assert resp.body == b"got " + body
    assert resp.header("X-After") == "wait"
    chunked = b"POST /slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" \
              b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert wsraw.http_exchange(server.port, chunked).body == b"got abcde"
    resp = wsraw.http_exchange(server.port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (resp.status, resp.body, resp.header("Content-Type")) == (200, b"slow get", "text/x-test")
    resp = wsraw.http_exchange(server.port, b"HEAD /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (resp.status, resp.body, resp.header("Content-Length")) == (200, b"", "8")
    for path, error in (("/fail", "route boom"), ("/bad", "must return a status number")):
        resp = wsraw.http_exchange(server.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        assert resp.status == 500, path
        wait_for(lambda: error in server.log(), what=f"{path}'s error logged")
