"""ws.redis (docs/redis.md) against real redis-server processes started here on 127.0.0.1 (free
ports, no persistence, stopped by PID), driven through the real binary by real WebSocket clients.

The app below turns each text message (JSON) into one waiting Redis call and answers with what
came back, so replies are checked value by value: strings, integers, ws.null, arrays, error
replies as nil, "ERR ...", pipelines in one round trip, subscriptions, and the operational
failures: Redis down, killed in the middle of a call, hung (timeouts), a full pool, and the
connection, reload and shutdown cancels. Descriptors are counted before and after outages.
"""
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from test_metrics import scrape, value
from test_scale import Redis
from wsclient import STEP, connect, fd_count, run, wait_for

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")

TEST_BUDGET = 90

APP = r"""
local json = ws.json
local clients = {}
local function client(url, opts)
  if opts == json.null then opts = nil end
  local key = url .. json.encode(opts or {})
  if not clients[key] then
    clients[key] = assert(ws.redis.connect(url, opts))
  end
  return clients[key]
end
local function encode(v, err)
  if v == nil then return json.encode({ err = err }) end
  return json.encode({ ok = v, kind = math.type(v) or type(v) })
end
local subs = {}
return {
  config = { shutdown_timeout = 2 },
  message = function(conn, data)
    local m = json.decode(data)
    local r = (m.op == "call" or m.op == "pipeline" or m.op == "subscribe" or m.op == "late")
      and client(m.url, m.opts)
    if m.op == "call" then
      conn:send(encode(r:call(table.unpack(m.args))))
    elseif m.op == "pipeline" then
      conn:send(encode(r:pipeline(function(p)
        for _, args in ipairs(m.cmds) do p:call(table.unpack(args)) end
      end)))
    elseif m.op == "subscribe" then
      subs[m.channel] = r:subscribe(m.channel, function(channel, message)
        conn:send(json.encode({ channel = channel, message = message, v = VERSION }))
      end)
      conn:send("subscribed")
    elseif m.op == "unsubscribe" then
      subs[m.channel]:unsubscribe()
      conn:send("unsubscribed")
    elseif m.op == "connect" then
      local c, err = ws.redis.connect(m.url, m.opts ~= json.null and m.opts or nil)
      conn:send(encode(c and "client", err))
    elseif m.op == "late" then
      -- waits, then answers on a fresh connection of the test's: proves the handler ran on
      local v, err = r:call(table.unpack(m.args))
      ws.state.late = encode(v, err)
    elseif m.op == "state" then
      conn:send(ws.state.late or "none")
    end
  end,
}
"""


def app_source(version="v1"):
    return f'local VERSION = "{version}"\n' + APP


async def ask(ws, msg, timeout=STEP):
    await ws.send(json.dumps(msg))
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def call(url, *args, opts=None):
    return {"op": "call", "url": url, "args": list(args), "opts": opts}


@pytest.fixture
def redis():
    r = Redis()
    yield r
    r.stop()


def test_replies_by_type(wsserver_factory, redis):
    server = wsserver_factory(app_source=app_source())
    u = redis.url

    async def main():
        async with connect(server.url) as ws:
            assert await ask(ws, call(u, "SET", "k", "v")) == {"ok": "OK", "kind": "string"}
            assert await ask(ws, call(u, "GET", "k")) == {"ok": "v", "kind": "string"}
            assert await ask(ws, call(u, "INCRBY", "n", 41)) == {"ok": 41, "kind": "integer"}
            assert await ask(ws, call(u, "INCR", "n")) == {"ok": 42, "kind": "integer"}
            # nil is ws.null (json null), not a missing value
            assert await ask(ws, call(u, "GET", "missing")) == {"ok": None, "kind": "userdata"}
            await ask(ws, call(u, "RPUSH", "l", "a", "b", 3))
            assert await ask(ws, call(u, "LRANGE", "l", 0, -1)) == {
                "ok": ["a", "b", "3"], "kind": "table"}
            assert await ask(ws, call(u, "LRANGE", "nothing", 0, -1)) == {"ok": {}, "kind": "table"}
            # nested arrays and nils inside them
            got = await ask(ws, call(u, "EVAL", "return {1, {'x', 2}, false, 'y'}", 0))
            assert got["ok"] == [1, ["x", 2], None, "y"]
            # binary-safe both ways
            assert (await ask(ws, call(u, "SET", "bin", "a\u0000b\r\n")))["ok"] == "OK"
            assert redis.command("GET", "bin") == b"a\x00b\r\n"
            assert (await ask(ws, call(u, "STRLEN", "bin")))["ok"] == 5
            # an error reply is nil, its text
            got = await ask(ws, call(u, "INCR", "k"))
            assert got == {"err": "ERR value is not an integer or out of range"}
            got = await ask(ws, call(u, "LPUSH", "k", "x"))
            assert got["err"].startswith("WRONGTYPE")
            got = await ask(ws, call(u, "NOSUCHCOMMAND"))
            assert got["err"].startswith("ERR unknown command")
            # a pipeline: replies in order, an error among them as {false, text}
            got = await ask(ws, {"op": "pipeline", "url": u, "cmds": [
                ["SET", "p", "1"], ["INCR", "p"], ["INCR", "k"], ["GET", "nope"], ["GET", "p"]]})
            assert got["ok"] == ["OK", 2, [False, "ERR value is not an integer or out of range"],
                                 None, "2"]
            got = await ask(ws, {"op": "pipeline", "url": u, "cmds": []})
            assert got == {"ok": {}, "kind": "table"}
            # misuse raises (the handler fails and the connection closes 1011)
            await ws.send(json.dumps(call(u, "SET", "k", {"a": 1})))
            with pytest.raises(Exception):
                await asyncio.wait_for(ws.recv(), STEP)
        assert "call: argument 3 must be a string or a number, got table" in server.log()

        async with connect(server.url) as ws:
            # bad URLs are nil, err from connect
            for bad in ("redis://", "redis://h:0", "redis://h:99999", "redis://h:1/x",
                        "unix:relative", "redis://user@h:1"):
                got = await ask(ws, {"op": "connect", "url": bad})
                assert got["err"].startswith("invalid Redis URL " + bad), got
            await ws.send(json.dumps({"op": "connect", "url": u, "opts": {"pool": 0}}))
            with pytest.raises(Exception):
                await asyncio.wait_for(ws.recv(), STEP)
        assert "opts.pool must be a whole number from 1 to 1024" in server.log()

    run(main())


def test_password_db_and_unix_socket(wsserver_factory, tmp_path):
    sock = tmp_path / "redis.sock"
    port = Redis(start=False).port
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--requirepass", "s3cret", "--unixsocket", str(sock),
         "--unixsocketperm", "700"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sock.exists(), 10, "the Unix socket")
        server = wsserver_factory(app_source=app_source())

        async def main():
            async with connect(server.url) as ws:
                u = f"redis://:s3cret@127.0.0.1:{port}/3"
                assert (await ask(ws, call(u, "SET", "where", "db3")))["ok"] == "OK"
                u0 = f"redis://:s3cret@127.0.0.1:{port}"
                assert (await ask(ws, call(u0, "GET", "where")))["ok"] is None
                # over the Unix socket: Redis itself answers (asking for the password)
                got = await ask(ws, call(f"unix:{sock}", "GET", "where"))
                assert got["err"].startswith("NOAUTH"), got
                got = await ask(ws, call(f"unix:{sock}?db=3", "GET", "where"))
                assert got["err"].startswith(f"redis {sock}: NOAUTH"), got
                got = await ask(ws, call(f"redis://:wrong@127.0.0.1:{port}", "PING"))
                assert "WRONGPASS" in got["err"] or "invalid password" in got["err"], got
                got = await ask(ws, call(f"redis://127.0.0.1:{port}", "PING"))
                assert got["err"].startswith("NOAUTH"), got

        run(main())
    finally:
        proc.terminate()
        proc.wait(10)


def test_subscribe_and_unsubscribe(wsserver_factory, redis):
    server = wsserver_factory(app_source=app_source())

    async def main():
        async with connect(server.url) as ws:
            await ws.send(json.dumps({"op": "subscribe", "url": redis.url, "channel": "news"}))
            assert await asyncio.wait_for(ws.recv(), STEP) == "subscribed"
            wait_for(lambda: redis.numsub("news") == 1, 5, "the subscription in Redis")
            for i in range(3):
                assert redis.command("PUBLISH", "news", f"m{i}\u00e9") == 1
            for i in range(3):
                got = json.loads(await asyncio.wait_for(ws.recv(), STEP))
                assert got == {"channel": "news", "message": f"m{i}\u00e9", "v": "v1"}
            # the subscription survives Redis restarting on the same port
            redis.kill()
            redis.start()
            wait_for(lambda: redis.numsub("news") == 1, 10, "the subscription restored")
            redis.command("PUBLISH", "news", "after")
            got = json.loads(await asyncio.wait_for(ws.recv(), STEP))
            assert got["message"] == "after"
            await ws.send(json.dumps({"op": "unsubscribe", "channel": "news",
                                      "url": redis.url}))
            assert await asyncio.wait_for(ws.recv(), STEP) == "unsubscribed"
            wait_for(lambda: redis.numsub("news") == 0, 5, "the unsubscription in Redis")
            # a reload ends the old version's subscriptions
            await ws.send(json.dumps({"op": "subscribe", "url": redis.url, "channel": "n2"}))
            assert await asyncio.wait_for(ws.recv(), STEP) == "subscribed"
            wait_for(lambda: redis.numsub("n2") == 1, 5, "n2 subscribed")
            server.signal(signal.SIGHUP)
            wait_for(lambda: redis.numsub("n2") == 0, 5, "n2 ended by the reload")

    run(main())


def test_redis_down_killed_and_back(wsserver_factory, redis):
    """Down: nil, err at once naming the server. Killed during a blocking call: nil, err well
    within the call's timeout. Back on the same port: the pool serves again. No descriptor
    leaks across outages."""
    server = wsserver_factory(app_source=app_source())
    u, opts = redis.url, {"timeout": 5, "pool": 4}

    async def main():
        async with connect(server.url) as ws:
            assert (await ask(ws, call(u, "PING", opts=opts)))["ok"] == "PONG"
            fds = fd_count(server.pid)
            for round_ in range(3):
                # a call blocked in Redis when Redis dies
                await ws.send(json.dumps(call(u, "BLPOP", "q", 30, opts=opts)))
                await asyncio.sleep(0.2)
                started = time.monotonic()
                redis.kill()
                got = json.loads(await asyncio.wait_for(ws.recv(), STEP))
                assert time.monotonic() - started < 1.0
                assert got["err"].startswith(f"redis 127.0.0.1:{redis.port}: "), got
                # while down: nil, err at once (no waiting for the timeout)
                started = time.monotonic()
                got = await ask(ws, call(u, "PING", opts=opts))
                assert time.monotonic() - started < 1.0
                assert got["err"].startswith(f"redis 127.0.0.1:{redis.port}: "), got
                assert "refused" in got["err"].lower(), got
                redis.start()
                deadline = time.monotonic() + 10
                while True:  # the back-off is at most 5 s
                    got = await ask(ws, call(u, "PING", opts=opts))
                    if got.get("ok") == "PONG" or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                assert got == {"ok": "PONG", "kind": "string"}
                assert (await ask(ws, call(u, "INCR", "c", opts=opts)))["ok"] == 1
            assert fd_count(server.pid) <= fds + 1

    run(main(), timeout=60)
    assert "redis_connect_failed" in server.log()


def test_timeouts_and_a_full_pool(wsserver_factory, redis):
    """A call Redis does not answer ends with nil, "timeout" at its timeout, and its connection
    is closed (the pool does not stay stuck behind it); a call waiting for a free connection of a
    full pool gives up at its own timeout."""
    server = wsserver_factory(app_source=app_source())
    u = redis.url

    async def main():
        async with connect(server.url) as a, connect(server.url) as b:
            one = {"timeout": 0.5, "pool": 1}
            longer = {"timeout": 2, "pool": 1}  # the same pool, a longer timeout
            await a.send(json.dumps(call(u, "BLPOP", "q", 10, opts=longer)))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            got = await ask(b, call(u, "GET", "x", opts=one), timeout=3)
            assert got == {"err": "timeout"}
            waited = time.monotonic() - started
            assert 0.4 < waited < 1.5, waited
            got = json.loads(await asyncio.wait_for(a.recv(), 3))
            assert got == {"err": "timeout"}
            # the pool serves at once afterwards, and the abandoned BLPOP is gone from Redis
            started = time.monotonic()
            assert (await ask(b, call(u, "PING", opts=one)))["ok"] == "PONG"
            assert time.monotonic() - started < 0.5
            redis.command("RPUSH", "q", "x")
            assert redis.command("LLEN", "q") == 1
            # pipelines time out the same way
            got = await ask(a, {"op": "pipeline", "url": u, "opts": one,
                                "cmds": [["PING"], ["BLPOP", "z", 5]]}, timeout=3)
            assert got == {"err": "timeout"}

    run(main())
    assert "redis_failed" in server.log() and 'error="timeout"' in server.log()


def test_close_reload_and_shutdown_while_waiting(wsserver_factory, redis):
    """The client closing while its handler waits: the wait ends, the late reply is swallowed
    and the connection serves again. A reload while a handler waits: it finishes on its own
    version with its reply, later calls use the same healthy pool. Shutdown while waiting: the
    server exits 0 within shutdown_timeout and a bit."""
    server = wsserver_factory(app_source=app_source())
    u, one = redis.url, {"timeout": 20, "pool": 1}

    async def main():
        async with connect(server.url) as ws:
            await ws.send(json.dumps(call(u, "BLPOP", "q1", 20, opts=one)))
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)  # the close reaches the server first
        redis.command("RPUSH", "q1", "late")  # the reply nobody waits for any more
        async with connect(server.url) as ws:
            assert (await ask(ws, call(u, "PING", opts=one)))["ok"] == "PONG"
            assert redis.command("LLEN", "q1") == 0  # the BLPOP did take it

            late = {"op": "late", "url": u, "opts": one, "args": ["BLPOP", "q2", 20]}
            await ws.send(json.dumps(late))
            await asyncio.sleep(0.2)
            server.signal(signal.SIGHUP)
            wait_for(lambda: "reload" in server.log(), 5, "the reload")
            redis.command("RPUSH", "q2", "after-reload")
            deadline = time.monotonic() + 5
            got = None
            while time.monotonic() < deadline:
                await ws.send(json.dumps({"op": "state", "url": u}))
                got = await asyncio.wait_for(ws.recv(), STEP)
                if got != "none":
                    break
            assert json.loads(got) == {"ok": ["q2", "after-reload"], "kind": "table"}
            assert (await ask(ws, call(u, "PING", opts=one)))["ok"] == "PONG"

            await ws.send(json.dumps(call(u, "BLPOP", "q3", 20, opts=one)))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            assert server.stop(timeout=10) == 0
            assert time.monotonic() - started < 5

    run(main())
    assert "Segmentation" not in server.log()


def test_metrics(wsserver_factory, redis):
    server = wsserver_factory(app_source=app_source(), args=["--metrics"])
    u = redis.url

    async def main():
        async with connect(server.url) as ws:
            for _ in range(5):
                await ask(ws, call(u, "INCR", "m"))
            await ask(ws, call(u, "INCR", "m", "extra"))
            await ask(ws, call(u, "BLPOP", "q", 5, opts={"timeout": 0.2}))
            await ask(ws, call(u, "GET", "m"))  # on a new connection: the other one timed out

    run(main())
    samples, families = scrape(server.port)
    assert families["wsserver_store_commands"] == "counter"
    assert value(samples, "wsserver_store_commands_total", store="redis", result="ok") == 6
    assert value(samples, "wsserver_store_commands_total", store="redis", result="error") == 1
    assert value(samples, "wsserver_store_commands_total", store="redis", result="timeout") == 1
    assert value(samples, "wsserver_store_duration_seconds_count", store="redis") == 8
    assert families["wsserver_store_pool_connections"] == "gauge"
    assert value(samples, "wsserver_store_pool_connections", store="redis", state="in_use") == 0
    assert value(samples, "wsserver_store_pool_connections", store="redis", state="open") == 1


CHAT = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "chat", "chat.lua")


async def chat_join(url, room, nick):
    ws = await connect(url).__aenter__()
    welcome = json.loads(await asyncio.wait_for(ws.recv(), STEP))
    assert welcome["type"] == "welcome" and welcome["scope"] == "redis"
    await ws.send(json.dumps({"type": "join", "room": room, "nick": nick}))
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), STEP))
        if m["type"] == "joined":
            return ws, m


async def chat_say(ws, text):
    await ws.send(json.dumps({"type": "say", "text": text}))
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), STEP))
        if m["type"] == "message" and m["text"] == text:
            return m


def test_chat_history_in_redis_survives_restart_and_is_shared(wsserver_factory, redis):
    """examples/chat with --redis: the history outlives the server and two nodes share it (and
    their ids); the last 50 per room; Redis down: messages still flow, the history comes back
    with Redis."""
    first = wsserver_factory(app=CHAT, args=["--redis", redis.url])

    async def before_restart():
        ws, joined = await chat_join(first.url, "lobby", "José")
        assert joined["history"] == []
        for i in range(3):
            assert (await chat_say(ws, f"m{i}"))["id"] == i + 1
        await ws.close()

    run(before_restart())
    assert first.stop() == 0
    assert redis.command("LLEN", "chat:room:lobby:history") == 3

    a = wsserver_factory(app=CHAT, args=["--redis", redis.url])
    b = wsserver_factory(app=CHAT, args=["--redis", redis.url])

    async def two_nodes():
        wa, joined = await chat_join(a.url, "lobby", "Мария")
        assert [m["text"] for m in joined["history"]] == ["m0", "m1", "m2"]
        assert joined["history"][0]["nick"] == "José"
        # 60 more from seven members of the lobby, at most nine each: with its join, within
        # each one's rate limit (a burst of ten)
        senders = [wa] + [(await chat_join(a.url, "lobby", f"u{k}"))[0] for k in range(6)]
        for i in range(60):
            await chat_say(senders[i // 9], f"n{i}")
        wb, joined = await chat_join(b.url, "lobby", "نور")
        history = joined["history"]
        assert len(history) == 50
        assert history[-1]["text"] == "n59" and history[-1]["id"] == 63
        assert history[0]["text"] == "n10"
        # the other room's history is its own
        wc, joined = await chat_join(b.url, "quiet", "李雷")
        assert joined["history"] == []
        # Redis down: the room still talks (across this node), history waits for Redis
        redis.kill()
        m = await chat_say(wc, "while down")
        assert m["room"] == "quiet" and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+-1", m["id"]), m
        redis.start()
        for w in senders + [wb, wc]:
            await w.close()

    run(two_nodes(), timeout=80)
    assert "chat history not saved" in b.log()
    assert "handler_error" not in a.log() + b.log()


def test_hung_redis_and_a_peer_that_never_answers(wsserver_factory, redis):
    """Redis stopped (SIGSTOP): calls end with nil, "timeout" at their timeout, their
    connections are closed; once it runs again (SIGCONT) the pool serves at once. A peer that
    accepts and never answers (AUTH/SELECT pending): calls end in time, and rounds of it leave
    no descriptor behind."""
    server = wsserver_factory(app_source=app_source())
    u, opts = redis.url, {"timeout": 0.3, "pool": 2}
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes handshakes; nobody ever reads
    mute = f"redis://127.0.0.1:{silent.getsockname()[1]}/1"

    async def main():
        async with connect(server.url) as ws:
            assert (await ask(ws, call(u, "PING", opts=opts)))["ok"] == "PONG"
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                for _ in range(3):
                    started = time.monotonic()
                    assert await ask(ws, call(u, "INCR", "h", opts=opts)) == {"err": "timeout"}
                    assert 0.25 < time.monotonic() - started < 1.0
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            started = time.monotonic()
            assert (await ask(ws, call(u, "GET", "h", opts=opts)))["ok"] in ("1", "2", "3", None)
            assert time.monotonic() - started < 0.5

            fds = fd_count(server.pid)
            for _ in range(5):
                started = time.monotonic()
                got = await ask(ws, call(mute, "PING", opts=opts))
                assert got["err"] in ("timeout", f"redis 127.0.0.1:{silent.getsockname()[1]}: "
                                      "connect timed out"), got
                assert time.monotonic() - started < 1.0
            await asyncio.sleep(1.2)  # the last connection attempt times out too
            assert fd_count(server.pid) <= fds

    try:
        run(main())
    finally:
        silent.close()


def test_commands_that_change_the_connection(wsserver_factory, redis):
    """MULTI ... EXEC works inside a pipeline (one connection); alone, or commands that would
    leave state on a pooled connection (SELECT, SUBSCRIBE, WATCH, ...), raise with what to do
    instead; the pool stays clean for the next call."""
    server = wsserver_factory(app_source=app_source())
    u, one = redis.url, {"pool": 1}

    async def main():
        async with connect(server.url) as ws:
            got = await ask(ws, {"op": "pipeline", "url": u, "opts": one, "cmds": [
                ["MULTI"], ["INCR", "t"], ["INCR", "t"], ["exec"]]})
            assert got["ok"] == ["OK", "QUEUED", "QUEUED", [1, 2]]
        for msg, text in [
            (call(u, "MULTI", opts=one), "call: MULTI changes the state of its connection: "
                                         "put MULTI ... EXEC in one client:pipeline"),
            (call(u, "select", 2, opts=one), "call: SELECT changes the state of its connection: "
                                             "put the db in the URL"),
            (call(u, "SUBSCRIBE", "x", opts=one), "SUBSCRIBE changes the state of its connection: "
                                                  "use client:subscribe"),
            (call(u, "WATCH", "t", opts=one), "WATCH changes the state"),
            ({"op": "pipeline", "url": u, "opts": one, "cmds": [["MULTI"], ["INCR", "t"]]},
             "pipeline: MULTI without EXEC or DISCARD"),
            ({"op": "pipeline", "url": u, "opts": one, "cmds": [["EXEC"]]},
             "pipeline: EXEC changes the state"),
        ]:
            async with connect(server.url) as ws:
                await ws.send(json.dumps(msg))
                with pytest.raises(Exception):
                    await asyncio.wait_for(ws.recv(), STEP)
            assert text in server.log(), text
        async with connect(server.url) as ws:
            # the one connection of the pool was never left inside a MULTI
            assert (await ask(ws, call(u, "INCR", "t", opts=one)))["ok"] == 3

    run(main())


def test_calls_share_the_pool_connections(wsserver_factory, redis):
    """Forty handlers calling at once through a pool of two: every call answered, the commands
    travel on two connections (CLIENT LIST), and a blocking command still gets a connection of
    its own (the others are not held up behind it)."""
    server = wsserver_factory(app_source=app_source())
    u, two = redis.url, {"pool": 2, "timeout": 5}

    async def main():
        socks = [await connect(server.url).__aenter__() for _ in range(40)]
        try:
            blocker = socks[0]
            await blocker.send(json.dumps(call(u, "BLPOP", "wake", 5, opts=two)))
            await asyncio.sleep(0.1)
            for ws in socks[1:]:
                await ws.send(json.dumps(call(u, "INCR", "shared", opts=two)))
            got = [json.loads(await asyncio.wait_for(ws.recv(), STEP)) for ws in socks[1:]]
            assert sorted(g["ok"] for g in got) == list(range(1, 40))
            clients = redis.command("CLIENT", "LIST").decode().count("\n")
            assert clients == 3, redis.command("CLIENT", "LIST")  # the pool's two, and this one
            redis.command("RPUSH", "wake", "now")
            got = json.loads(await asyncio.wait_for(blocker.recv(), STEP))
            assert got["ok"] == ["wake", "now"]
        finally:
            for ws in socks:
                await ws.close()

    run(main())
