"""The Lua application API (SPEC §4, README "Writing an app") through real clients.

Most conn/ws functions are driven through EVAL_APP: every text message is a Lua chunk run in the
message handler (with `conn` bound), and its results come back as one binary frame
"\\0EVAL" + JSON, so a test can call any API function on the live server and look at what it
returned. Events, errors, limits and HTTP routes use small dedicated apps.
"""
import asyncio
import http.client
import json
import os
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatusCode

import wsraw
from wsclient import MiB, STEP, connect, raise_nofile, run


# At import time so the server started by the fixture inherits the higher limit too.
raise_nofile(4 * 1000 + 256)


TEST_BUDGET = 90  # seconds per test (conftest enforces it)


async def recv(ws, timeout=STEP):
    return await asyncio.wait_for(ws.recv(), timeout)


async def closed_with(ws, timeout=STEP):
    """Waits for the server to close ws (reading and discarding messages); returns (code, reason)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason


async def no_message(ws, seconds):
    """Asserts nothing arrives on ws for `seconds`."""
    try:
        msg = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected message {msg!r}")


def http_get(server, path, method="GET", headers=None):
    """One plain HTTP request; returns (status, header message, body bytes)."""
    c = http.client.HTTPConnection(server.host, server.port, timeout=STEP)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.msg, r.read()
    finally:
        c.close()


# --- the eval app ------------------------------------------------------------------------------

EVAL_LUA = r"""
local json = ws.json

-- a JSON-safe picture of any Lua value (nil -> null, conns and functions -> tostring)
local function repr(v, depth)
  depth = depth or 0
  local t = type(v)
  if v == nil or v == json.null then
    return json.null
  elseif t == "boolean" then
    return v
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      return tostring(v)
    end
    return v
  elseif t == "string" then
    if utf8.len(v) then
      return v
    end
    return {bytes = #v}
  elseif (t == "table" or (t == "userdata" and pcall(pairs, v))) and depth < 6 then
    -- (read-only proxies such as ws.close_codes are userdata that pairs() can walk)
    local n = 0
    for _ in pairs(v) do
      n = n + 1
    end
    local len = t == "table" and #v or 0
    if n == len then
      local out = json.array()
      for i = 1, len do
        out[i] = repr(v[i], depth + 1)
      end
      return out
    end
    local out = {}
    for k, x in pairs(v) do
      out[tostring(k)] = repr(x, depth + 1)
    end
    return out
  end
  return tostring(v)
end

local function reply(conn, ok, ...)
  local n = select("#", ...)
  local values = json.array()
  for i = 1, n do
    values[i] = repr((select(i, ...)))
  end
  local s = json.encode({ok = ok, n = n, v = values})
  return conn:send("\0EVAL" .. s, "binary")
end

return {
  CONFIG
  message = function(conn, data, kind)
    if kind ~= "text" then
      return
    end
    local env = setmetatable({conn = conn, repr = repr}, {__index = _ENV})
    local fn, err = load(data, "=eval", "t", env)
    if not fn then
      return reply(conn, false, err)
    end
    reply(conn, pcall(fn))
  end,
  HANDLERS
}
"""


def eval_app(config="", handlers=""):
    cfg = f"config = {{{config}}}," if config else ""
    return EVAL_LUA.replace("CONFIG", cfg).replace("HANDLERS", handlers)


class EvalError(Exception):
    pass


class Client:
    """A websockets connection to EVAL_APP: `await c("return 1")` runs Lua on the server.
    Messages that are not eval replies are kept in order in .inbox."""

    def __init__(self, ws):
        self.ws = ws
        self.inbox = []

    async def call(self, code):
        """Runs code; returns (ok, values)."""
        await self.ws.send(code)
        while True:
            msg = await recv(self.ws)
            if isinstance(msg, bytes) and msg.startswith(b"\0EVAL"):
                r = json.loads(msg[5:])
                return r["ok"], r["v"]
            self.inbox.append(msg)

    async def __call__(self, code):
        """Runs code and returns its values (one value unwrapped); raises EvalError on error."""
        ok, values = await self.call(code)
        if not ok:
            raise EvalError(values[0] if values else "?")
        return values[0] if len(values) == 1 else values

    async def error(self, code):
        """Runs code that must raise; returns the error message."""
        ok, values = await self.call(code)
        assert not ok, f"{code!r} did not raise, returned {values!r}"
        return values[0]

    async def next(self, timeout=STEP):
        """The next non-eval message."""
        if self.inbox:
            return self.inbox.pop(0)
        msg = await recv(self.ws, timeout)
        assert not (isinstance(msg, bytes) and msg.startswith(b"\0EVAL")), "stray eval reply"
        return msg

    async def id(self):
        return await self("return conn.id")

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()


async def eval_client(server, path="/", **kw):
    ws = await connect(server.url.rstrip("/") + path, **kw)
    return Client(ws)


# --- upgrade -----------------------------------------------------------------------------------

UPGRADE_DUMP_APP = r"""
return {
  upgrade = function(req)
    return {data = {req = req}}
  end,
  open = function(conn)
    local req = conn.data.req
    req.protocols = ws.json.array(req.protocols)
    conn:send(ws.json.encode(req))
  end,
}
"""


def test_upgrade_request_table(wsserver_factory):
    server = wsserver_factory(app_source=UPGRADE_DUMP_APP)

    async def go():
        url = server.url + "chat/room?x=1&y=a%20b&x=2&plus=a+b&flag"
        headers = [("X-Custom", "Val"), ("X-Rep", "1"), ("X-Rep", "2"),
                   ("Cookie", "a=1; b=two; a=3")]
        async with connect(url, subprotocols=["p1", "p2"], origin="http://example.test",
                           extra_headers=headers) as ws:
            req = json.loads(await recv(ws))
            return req, ws.local_address

    req, local = run(go())
    assert req["method"] == "GET"
    assert req["path"] == "/chat/room"
    assert req["target"] == "/chat/room?x=1&y=a%20b&x=2&plus=a+b&flag"
    assert req["query_string"] == "x=1&y=a%20b&x=2&plus=a+b&flag"
    # decoded, first value of a repeated key wins, a bare key is ""
    assert req["query"] == {"x": "1", "y": "a b", "plus": "a b", "flag": ""}
    headers = req["headers"]
    assert all(k == k.lower() for k in headers), headers
    assert headers["x-custom"] == "Val"
    assert headers["x-rep"] == "1, 2"  # repeated fields joined (RFC 9110 §5.3)
    assert headers["upgrade"].lower() == "websocket"
    assert "sec-websocket-key" in headers and "host" in headers
    assert req["cookies"] == {"a": "1", "b": "two"}
    assert req["origin"] == "http://example.test"
    assert req["protocols"] == ["p1", "p2"]
    assert req["peer"] == f"127.0.0.1:{local[1]}"


def test_upgrade_request_without_query_cookies_or_origin(wsserver_factory):
    server = wsserver_factory(app_source=UPGRADE_DUMP_APP)

    async def go():
        async with connect(server.url) as ws:
            return json.loads(await recv(ws))

    req = run(go())
    assert req["path"] == "/"
    assert req["query"] == [] or req["query"] == {}  # an empty table
    assert req["cookies"] == [] or req["cookies"] == {}
    assert "origin" not in req
    assert req["protocols"] == []


REFUSE_APP = r"""
return {
  config = {handler_timeout = 0.3},
  upgrade = function(req)
    local mode = req.query.mode
    if mode == "401" then return false, 401, "need a token" end
    if mode == "bare" then return false end
    if mode == "status-only" then return false, 429 end
    if mode == "bad-status" then return false, 200, "not a refusal status" end
    if mode == "error" then error("upgrade exploded") end
    if mode == "spin" then while true do end end
    if mode == "bad-protocol" then return {protocol = "never-offered"} end
    if mode == "nil" then return nil end
    if mode == "true" then return true end
    if mode == "meta" then
      return setmetatable({}, {__index = function() error("metamethod exploded") end})
    end
    return {}
  end,
  message = function(conn, data) conn:send(data) end,
}
"""


@pytest.mark.parametrize("mode,status,body", [
    ("401", 401, b"need a token\n"),
    ("bare", 403, None),
    ("status-only", 429, None),
    ("bad-status", 403, None),
    ("error", 500, None),
    ("spin", 500, None),
    ("bad-protocol", 500, None),
    ("meta", 500, None),
])
def test_upgrade_refusal(wsserver_factory, mode, status, body):
    server = wsserver_factory(app_source=REFUSE_APP)
    resp = wsraw.http_exchange(server.port, wsraw.build_request(path=f"/?mode={mode}"))
    assert resp.status == status, resp.raw
    if body is not None:
        assert resp.body == body
    assert resp.closed
    # the server keeps serving
    with wsraw.connect(server.port, "/?mode=ok") as c:
        c.echo_roundtrip()
    if mode in ("error", "spin", "meta"):
        assert 'handler="upgrade"' in server.log()


@pytest.mark.parametrize("mode", ["nil", "true", "ok"])
def test_upgrade_accepts(wsserver_factory, mode):
    server = wsserver_factory(app_source=REFUSE_APP)
    with wsraw.connect(server.port, f"/?mode={mode}") as c:
        c.echo_roundtrip()


def test_upgrade_refusal_seen_by_a_real_client(wsserver_factory):
    server = wsserver_factory(app_source=REFUSE_APP)

    async def go():
        with pytest.raises(InvalidStatusCode) as e:
            async with connect(server.url + "?mode=401"):
                pass
        return e.value.status_code

    assert run(go()) == 401


ACCEPT_APP = r"""
return {
  upgrade = function(req)
    return {protocol = req.protocols[#req.protocols], data = {user = req.query.user, n = 1}}
  end,
  open = function(conn)
    conn:send_json({user = conn.data.user, n = conn.data.n, protocol = conn.protocol})
  end,
}
"""


def test_upgrade_accept_with_protocol_and_data(wsserver_factory):
    server = wsserver_factory(app_source=ACCEPT_APP)

    async def go():
        async with connect(server.url + "?user=ann", subprotocols=["chat.v1", "chat.v2"]) as ws:
            return ws.subprotocol, json.loads(await recv(ws))

    proto, hello = run(go())
    assert proto == "chat.v2"
    assert hello == {"user": "ann", "n": 1, "protocol": "chat.v2"}


def test_config_protocols_pick_in_server_order(wsserver_factory):
    server = wsserver_factory(app_source=eval_app('protocols = {"x", "y"}'))

    async def go():
        c = await eval_client(server, subprotocols=["z", "y", "x"])
        async with c:
            return c.ws.subprotocol, await c("return conn.protocol")

    assert run(go()) == ("x", "x")


# --- events ------------------------------------------------------------------------------------

EVENTS_APP = r"""
local S = ws.state
S.closed = S.closed or {}
return {
  open = function(conn)
    conn.data.opened = true
    conn:subscribe("t1")
    conn:subscribe("t2")
    conn:send("open " .. conn.id)
  end,
  message = function(conn, data, kind)
    if data == "report" then
      conn:send(ws.json.encode(S.closed))
      return
    end
    if data == "server-close" then
      conn:close(4002, "server says bye")
      return
    end
    if kind == "text" then
      conn.data.last = data
    end
    conn:send(kind .. ":" .. #data)
  end,
  close = function(conn, code, reason)
    local sent, why = conn:send("too late")
    S.closed[tostring(conn.id)] = {
      code = code, reason = reason, last = conn.data.last, opened = conn.data.opened,
      topics = conn:topics(), is_open = conn:is_open(), send = {tostring(sent), why},
      subscribers = ws.subscribers("t1"),
    }
  end,
}
"""


def test_open_message_close_events(wsserver_factory):
    server = wsserver_factory(app_source=EVENTS_APP)

    async def go():
        ids = {}
        a = await connect(server.url)
        ids["a"] = int((await recv(a)).split()[1])
        await a.send("hello")
        assert await recv(a) == "text:5"
        await a.send(b"\x00\x01\x02")
        assert await recv(a) == "binary:3"
        await a.close(4001, "bye")

        b = await connect(server.url)
        ids["b"] = int((await recv(b)).split()[1])
        await b.send("dropping")
        assert await recv(b) == "text:8"
        b.transport.abort()  # no close frame: 1006

        c = await connect(server.url)
        ids["c"] = int((await recv(c)).split()[1])
        await c.send("server-close")
        assert await closed_with(c) == (4002, "server says bye")

        reporter = await connect(server.url)
        await recv(reporter)
        for _ in range(100):
            await reporter.send("report")
            closed = json.loads(await recv(reporter))
            if all(str(i) in closed for i in ids.values()):
                break
            await asyncio.sleep(0.05)
        await reporter.close()
        return ids, closed

    ids, closed = run(go())
    a, b, c = (closed[str(ids[k])] for k in "abc")
    assert (a["code"], a["reason"], a["last"]) == (4001, "bye", "hello")
    assert (b["code"], b["last"]) == (1006, "dropping")  # dropped: no close frame
    assert (c["code"], c["reason"]) == (4002, "server says bye")
    for entry in (a, b, c):
        # SPEC §7: close runs with conn.data and the topics still attached
        assert entry["opened"] is True
        assert entry["topics"] == ["t1", "t2"]
        assert entry["is_open"] is False
        assert entry["send"] == ["nil", "closed"]
    assert ids["a"] < ids["b"] < ids["c"]


DRAIN_APP = r"""
return {
  config = {max_buffered = 16 * 1048576},
  message = function(conn, data)
    if data == "flood" then
      local chunk = string.rep("x", 65536)
      local r, n = nil, 0
      for _ = 1, 400 do
        r = conn:send(chunk)
        n = n + 1
        if r ~= "sent" then
          break
        end
      end
      conn:send(ws.json.encode({result = r, n = n, buffered = conn:buffered()}))
    elseif data == "small" then
      conn:send("small:" .. conn:send("tiny") .. ":" .. conn:buffered())
    end
  end,
  drain = function(conn)
    conn:send("drained " .. conn:buffered())
  end,
}
"""


def test_drain_fires_after_queued_and_buffered_counts(wsserver_factory):
    server = wsserver_factory(app_source=DRAIN_APP)

    async def go():
        async with connect(server.url, max_queue=1, read_limit=2 ** 16) as small:
            await small.send("small")
            assert await recv(small) == "tiny"
            # "sent": accepted below the low-water mark (it may wait for this iteration's flush)
            assert await recv(small) in ("small:sent:0", "small:sent:6")
            await no_message(small, 0.3)  # never above the low-water mark: no drain

        async with connect(server.url, max_queue=1, read_limit=2 ** 16) as ws:
            await ws.send("flood")
            await asyncio.sleep(0.5)  # let the server fill the socket and its queue
            report = None
            chunks = 0
            while True:
                msg = await recv(ws)
                if msg.startswith("{"):
                    report = json.loads(msg)
                elif msg.startswith("drained"):
                    return report, chunks, msg
                else:
                    chunks += 1

    report, chunks, drained = run(go())
    assert report["result"] == "queued"
    assert report["buffered"] > 0
    assert chunks == report["n"]
    assert drained == "drained 0"


def test_backpressure_drop_results(wsserver_factory):
    server = wsserver_factory(app_source=eval_app(
        'max_buffered = 262144, backpressure = "drop"'))

    async def go():
        c = await eval_client(server)
        flooded = await eval_client(server, max_queue=1, read_limit=2 ** 16)
        fid = await flooded.id()
        async with c, flooded:
            r = await c(f"""
              local f = ws.get({fid})
              local chunk = string.rep("x", 65536)
              local out = {{}}
              for _ = 1, 400 do
                local r, err = f:send(chunk)
                out[#out + 1] = tostring(r) .. "/" .. tostring(err)
                if r == nil then break end
              end
              return out, f:is_open(), ws.stats().dropped
            """)
            return r

    results, still_open, dropped = run(go())
    assert results[-1] == "nil/dropped"
    assert set(results[:-1]) <= {"sent/nil", "queued/nil"}
    assert "queued/nil" in results
    assert still_open is True  # "drop" keeps the connection
    assert dropped >= 1


# --- conn --------------------------------------------------------------------------------------


def test_conn_id_data_peer_path_protocol(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        a = await eval_client(server, "/some/path?q=1")
        b = await eval_client(server)
        async with a, b:
            ida, idb = await a.id(), await b.id()
            assert isinstance(ida, int) and idb > ida
            assert await a("return math.type(conn.id)") == "integer"
            assert await a("conn.data.x = 1; return conn.data.x") == 1
            assert await a("return conn.data.x") == 1  # kept between messages
            assert await b("return conn.data.x") is None  # per connection
            assert await a("conn.data = {y = 2}; return conn.data.y, conn.data.x") == [2, None]
            assert "read-only" in await a.error("conn.id = 5")
            assert "read-only" in await a.error("conn.peer = 'x'")
            assert await a("return conn.peer") == f"127.0.0.1:{a.ws.local_address[1]}"
            path = await a("return conn.path")
            assert await a("return conn.protocol") is None
            assert await a("return conn.nonexistent") is None
            assert await a("return tostring(conn)") == f"conn {ida}"
            assert await a(f"return conn == ws.get({ida}), conn == ws.get({idb})") == [True, False]
            # comparing a conn with another kind of userdata is false, not an error
            assert await a("local t = ws.after(10, print); t:cancel(); return conn == t") is False
            return path

    path = run(go())
    assert path.startswith("/some/path")


def test_conn_send_text_binary_and_results(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        c = await eval_client(server)
        async with c:
            assert await c('return conn:send("hello")') == "sent"
            assert await c.next() == "hello"
            assert await c('return conn:send("\\0\\255", "binary")') == "sent"
            assert await c.next() == b"\x00\xff"
            assert await c('return conn:send("text", "text")') == "sent"
            assert await c.next() == "text"
            assert await c('return conn:send(42)') == "sent"  # numbers are strings in Lua
            assert await c.next() == "42"
            assert await c('return conn:send("")') == "sent"
            assert await c.next() == ""
            assert "UTF-8" in await c.error('conn:send("\\255")')
            assert "invalid option" in await c.error('conn:send("x", "bogus")')
            await c.error("conn:send()")
            await c.error("conn:send({})")
            assert await c('return conn:send_json({a = 1, l = ws.json.array(), n = ws.json.null})') \
                == "sent"
            assert json.loads(await c.next()) == {"a": 1, "l": [], "n": None}
            assert await c("return conn:send_json('str')") == "sent"
            assert await c.next() == '"str"'
            assert await c("return conn:send_json(nil)") == "sent"
            assert await c.next() == "null"
            await c.error("conn:send_json()")
            assert "send_json" in await c.error("conn:send_json(function() end)")
            # lua-cjson passes bytes through: the frame would not be UTF-8
            assert "UTF-8" in await c.error('conn:send_json({s = "\\255"})')
            assert await c("return conn:is_open(), conn:buffered()") == [True, 0]
            await no_message(c.ws, 0.2)  # nothing was sent by the failed calls

    run(go())


def test_conn_close_with_code_reason_and_invalid_codes(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        c = await eval_client(server)
        bad = ["999", "1004", "1005", "1006", "1015", "1016", "2999", "5000", "-1",
               "1000, string.rep('x', 124)", "1000, '\\255'", "'abc'", "1000.5", "{}"]
        errors = await c("local out = {}\n" + "\n".join(
            f"out[#out + 1] = select(2, pcall(conn.close, conn, {args}))" for args in bad) +
            "\nreturn out, conn:is_open()")
        assert errors[1] is True, "an invalid close must not close"
        for args, err in zip(bad, errors[0]):
            assert isinstance(err, str), (args, err)
        await c.ws.send("conn:close(4000, 'bye')")  # no eval reply: the conn is closing
        return await closed_with(c.ws)

    assert run(go()) == (4000, "bye")


def test_conn_close_default_and_results(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        a = await eval_client(server)
        b = await eval_client(server)
        ida = await a.id()
        async with b:
            r = await b(f"local c = ws.get({ida}); return c:close(), c:close(), c:is_open()")
            code = await closed_with(a.ws)
            return r, code

    r, code = run(go())
    assert r == [True, None, False]  # the second close answers nil (, "closed")
    assert code == (1000, "")


def test_conn_close_reason_of_123_bytes(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        c = await eval_client(server)
        await c.ws.send("conn:close(3000, string.rep('r', 123))")
        return await closed_with(c.ws)

    assert run(go()) == (3000, "r" * 123)


def test_conn_ping(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())
    with wsraw.connect(server.port) as raw:
        raw.send_text('return conn:ping("abc"), conn:ping()')
        pong1 = raw.recv_frame()
        assert (pong1.opcode, pong1.payload) == (wsraw.OP_PING, b"abc")
        pong2 = raw.recv_frame()
        assert (pong2.opcode, pong2.payload) == (wsraw.OP_PING, b"")
        op, reply = raw.recv_message()
        assert json.loads(reply[5:]) == {"ok": True, "n": 2, "v": ["sent", "sent"]}
        raw.send_text('return pcall(conn.ping, conn, string.rep("x", 126))')
        op, reply = raw.recv_message()
        r = json.loads(reply[5:])
        assert r["v"][0] is False and "125" in r["v"][1]


def test_conn_topics_subscribe_publish(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        a = await eval_client(server)
        b = await eval_client(server)
        async with a, b:
            assert await a('return conn:subscribe("a"), conn:subscribe("a"), conn:subscribe("b")') \
                == [True, False, True]
            assert await a("return conn:topics()") == ["a", "b"]
            assert await a('return conn:unsubscribe("a"), conn:unsubscribe("a")') == [True, False]
            assert await a("return conn:topics()") == ["b"]
            assert await b('return conn:subscribe("b")') is True
            # publish reaches the topic's other subscribers, never the sender
            assert await a('return conn:publish("b", "pub-text")') == 1
            assert await b.next() == "pub-text"
            assert await a('return conn:publish("b", "\\1\\2", "binary")') == 1
            assert await b.next() == b"\x01\x02"
            assert await b('return conn:publish("b", "from b")') == 1
            assert await a.next() == "from b"
            # publishing to a topic the sender is not in still reaches its subscribers
            assert await a('return conn:publish("nobody", "x")') == 0
            assert "UTF-8" in await a.error('conn:publish("b", "\\255")')
            await a.error("conn:subscribe()")
            await a.error("conn:subscribe({})")
            # SPEC §7: subscribe then publish in one handler is immediate and in order
            assert await b('conn:subscribe("fresh"); return ws.publish("fresh", "1"), '
                           'ws.publish("fresh", "2")') == [1, 1]
            assert [await b.next(), await b.next()] == ["1", "2"]
            await no_message(a.ws, 0.2)

    run(go())


def test_stale_handle_after_close(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        a = await eval_client(server)
        b = await eval_client(server)
        ida = await a.id()
        await a('ws.state.saved = conn; conn:subscribe("s")')
        await a.ws.close()
        async with b:
            wait_for = "return ws.get(%d) == nil and ws.subscribers('s') == 0" % ida
            for _ in range(100):
                if await b(wait_for):
                    break
                await asyncio.sleep(0.05)
            r = await b("""
              local c = ws.state.saved
              local function both(...) return {n = select("#", ...), ...} end
              return {
                send = both(c:send("x")), send_json = both(c:send_json({})),
                close = both(c:close(1000)), ping = both(c:ping()),
                subscribe = both(c:subscribe("t")), unsubscribe = both(c:unsubscribe("t")),
                publish = both(c:publish("t", "x")), is_open = c:is_open(),
                buffered = c:buffered(), topics = #c:topics(), id = c.id,
                peer = c.peer == nil, path = c.path == nil, data = type(c.data),
                str = tostring(c),
              }
            """)
            return ida, r

    ida, r = run(go())
    for m in ("send", "send_json", "close", "ping", "subscribe", "unsubscribe", "publish"):
        assert r[m] in ([None, "closed"], {"n": 2, "2": "closed"}), (m, r[m])
    assert r["is_open"] is False
    assert r["buffered"] == 0
    assert r["topics"] == 0
    assert r["id"] == ida
    assert r["peer"] is True and r["path"] is True
    assert r["data"] == "table"
    assert r["str"] == f"conn {ida} (closed)"


# --- ws ----------------------------------------------------------------------------------------


def test_broadcast_except_filter_binary_and_count(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        e = await eval_client(server)
        others = [await eval_client(server) for _ in range(3)]
        try:
            ids = [await o.id() for o in others]
            await others[0]('conn.data.tag = "t"')
            await others[1]('conn.data.tag = "t"')
            assert await e('return ws.broadcast("all")') == 4
            for c in [e] + others:
                assert await c.next() == "all"
            assert await e('return ws.broadcast("not e", {except = conn})') == 3
            assert await e(f'return ws.broadcast("not 0", {{except = {ids[0]}}})') == 3
            for c in others:
                assert await c.next() == ("not e")
            for c in [e] + others[1:]:
                assert await c.next() == "not 0"
            assert await e('return ws.broadcast("tagged", '
                           '{filter = function(c) return c.data.tag == "t" end})') == 2
            assert await others[0].next() == "tagged"
            assert await others[1].next() == "tagged"
            assert await e('return ws.broadcast("\\0\\1", {binary = true, except = conn})') == 3
            for c in others:
                assert await c.next() == b"\x00\x01"
            # a failing filter raises in the caller, the server and connections are fine
            err = await e.error('ws.broadcast("boom", {filter = function(c) '
                                'error("filter failed") end})')
            assert "filter failed" in err
            assert "UTF-8" in await e.error('ws.broadcast("\\255")')
            await e.error('ws.broadcast("x", 5)')
            await e.error('ws.broadcast("x", {filter = 5})')
            await e.error('ws.broadcast()')
            assert await e('return ws.broadcast("after")') == 4
            for c in [e] + others:
                assert await c.next() == "after"  # "boom" was never delivered
        finally:
            for c in [e] + others:
                await c.ws.close()

    run(go())


def test_publish_subscribers_topics(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        e, a, b = [await eval_client(server) for _ in range(3)]
        async with e, a, b:
            ida = await a.id()
            await a('conn:subscribe("news")')
            await b('conn:subscribe("news"); conn:subscribe("sport")')
            assert await e('return ws.topics()') == ["news", "sport"]
            assert await e('return ws.subscribers("news"), ws.subscribers("sport"), '
                           'ws.subscribers("none")') == [2, 1, 0]
            assert await e('return ws.publish("news", "n1")') == 2
            assert await a.next() == "n1" and await b.next() == "n1"
            assert await e(f'return ws.publish("news", "n2", {{except = {ida}}})') == 1
            assert await b.next() == "n2"
            assert await e('return ws.publish("sport", "\\0", {binary = true})') == 1
            assert await b.next() == b"\x00"
            assert await e('return ws.publish("none", "x")') == 0
            await e.error('ws.publish("news")')
            assert "UTF-8" in await e.error('ws.publish("news", "\\255")')
            await a('conn:unsubscribe("news")')
            assert await e('return ws.subscribers("news")') == 1
            await no_message(a.ws, 0.2)

    run(go())


def test_connections_get_count(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        clients = [await eval_client(server) for _ in range(4)]
        e = clients[0]
        ids = [await c.id() for c in clients]
        assert await e("local ids = {} for c in ws.connections() do ids[#ids + 1] = c.id end "
                       "return ids, ws.count()") == [ids, 4]
        assert await e(f"return ws.get({ids[1]}).id") == ids[1]
        assert await e("return ws.get(999999), ws.get(0), ws.get(-1)") == [None, None, None]
        assert await e(f'return ws.get("{ids[2]}").id') == ids[2]  # numeric strings convert
        await e.error('ws.get("x")')
        await e.error('ws.get(1.5)')
        # closing inside the loop is safe: the iterator is a snapshot
        assert await e("local n = 0 for c in ws.connections() do n = n + 1 "
                       "if c ~= conn then c:close(4000) end end return n") == 4
        for c in clients[1:]:
            assert (await closed_with(c.ws))[0] == 4000
        for _ in range(100):
            if await e("return ws.count()") == 1:
                break
            await asyncio.sleep(0.05)
        assert await e("local n = 0 for c in ws.connections() do n = n + 1 end "
                       "return n, ws.count()") == [1, 1]
        await e.ws.close()

    run(go())


COUNT_IN_CLOSE_APP = eval_app(handlers=r"""
  close = function(conn)
    local n = 0
    for _ in ws.connections() do n = n + 1 end
    ws.state.in_close = {count = ws.count(), iterated = n}
  end,
""")


def test_count_inside_close_matches_connections(wsserver_factory):
    """ws.count() and ws.connections() agree, also while a close handler runs."""
    server = wsserver_factory(app_source=COUNT_IN_CLOSE_APP)

    async def go():
        a = await eval_client(server)
        b = await eval_client(server)
        await b.ws.close()
        async with a:
            for _ in range(100):
                r = await a("return ws.state.in_close")
                if r:
                    return r
                await asyncio.sleep(0.05)

    r = run(go())
    assert r["iterated"] == 1
    assert r["count"] == r["iterated"], f"ws.count() counts the connection being closed: {r}"


def test_timers_after_every_cancel(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        c = await eval_client(server)
        async with c:
            await c('ws.after(0.05, function() conn:send("after fired") end)')
            assert await c.next() == "after fired"
            assert await c('local t = ws.after(0.2, function() conn:send("must not") end) '
                           'return t:cancel(), t:cancel()') == [True, False]
            assert await c('local n = 0 local t t = ws.every(0.02, function() n = n + 1 '
                           'if n == 3 then conn:send("every " .. n .. " " .. tostring(t:cancel())) '
                           'end end) return true') is True
            assert await c.next() == "every 3 true"
            assert await c('local t = ws.after(0, function() conn:send("zero") end) '
                           'return type(t)') == "userdata"
            assert await c.next() == "zero"
            # a fired one-shot timer cannot be cancelled any more
            await c('ws.state.t = ws.after(0, function() end)')
            await asyncio.sleep(0.1)
            assert await c("return ws.state.t:cancel()") is False
            for bad in ["ws.every(0, print)", "ws.after(-1, print)", "ws.after(0/0, print)",
                        "ws.after(math.huge, print)", "ws.after(1, 'x')", "ws.after('x', print)",
                        "ws.every(0.0001, print)", "ws.after()"]:
                await c.error(bad)
            # a failing timer callback is logged; the timer and the server carry on
            await c('local n = 0 ws.state.bad = ws.every(0.02, function() n = n + 1 '
                    'if n == 3 then conn:send("still ticking") end error("timer boom") end)')
            assert await c.next() == "still ticking"
            assert await c("return ws.state.bad:cancel()") is True
            await no_message(c.ws, 0.4)  # the cancelled "must not" never fired

    run(go())
    log = server.log()
    assert "timer boom" in log and 'handler="every"' in log


def test_json_in_the_server(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        c = await eval_client(server)
        async with c:
            enc = json.loads(await c('return ws.json.encode({a = ws.json.null, '
                                     'b = ws.json.array(), c = {1, 2}})'))
            assert enc == {"a": None, "b": [], "c": [1, 2]}
            assert await c('local v = ws.json.decode(\'{"x":null}\') return v.x == ws.json.null') \
                is True
            r = await c('return ws.json.decode("[1")')
            assert r[0] is None and isinstance(r[1], str)
            assert (await c('return ws.json.decode(nil)'))[0] is None
            assert (await c('return ws.json.encode(print)'))[0] is None
            assert await c('return ws.json.is_array(ws.json.array())') is True
            assert await c("return require('ws.json') == ws.json") is True

    run(go())


def test_log_levels_fields_and_escaping(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        c = await eval_client(server)
        async with c:
            await c('ws.log.info("marker-info", {n = 7, s = "a b", f = 1.5, t = true})')
            await c('ws.log.debug("marker-debug")')
            await c('ws.log.warn("marker-warn")')
            await c('ws.log.error("marker-error\\nforged=line")')
            await c('ws.log.info("marker-nofields", "not a table")')
            await c.error("ws.log.info()")
            await c.error("ws.log.info({})")
            assert "read-only" in await c.error("ws.log.info = print")

    run(go())
    log = server.log()
    lines = log.splitlines()
    info = [ln for ln in lines if "marker-info" in ln]
    assert len(info) == 1
    assert "level=info" in info[0] and "event=app" in info[0]
    assert "n=7" in info[0] and "1.5" in info[0] and "a b" in info[0]
    assert "marker-debug" not in log  # default level is info
    assert any("level=warn" in ln and "marker-warn" in ln for ln in lines)
    err = [ln for ln in lines if "marker-error" in ln]
    assert len(err) == 1 and "level=error" in err[0]
    assert not any(ln.startswith("forged=line") for ln in lines), "a newline forged a log line"
    assert "marker-nofields" in log


def test_log_debug_shown_at_debug_level(wsserver_factory):
    server = wsserver_factory(app_source=eval_app(), args=["--log-level", "debug"])

    async def go():
        c = await eval_client(server)
        async with c:
            await c('ws.log.debug("marker-debug")')

    run(go())
    assert "marker-debug" in server.log()


def test_state_survives_connections_and_is_not_replaceable(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        a = await eval_client(server)
        async with a:
            await a("ws.state.x = 42")
            assert "read-only" in await a.error("ws.state = {}")
        b = await eval_client(server)
        async with b:
            return await b("return ws.state.x, type(ws.state)")

    assert run(go()) == [42, "table"]


def test_stats(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        a = await eval_client(server)
        b = await eval_client(server)
        async with a, b:
            s1 = await a("return ws.stats()")
            await a('conn:subscribe("x")')
            s2 = await a("return ws.stats()")
            return s1, s2

    s1, s2 = run(go())
    for key in ("connections", "connections_total", "messages_in", "messages_out", "bytes_in",
                "bytes_out", "handshake_rejections", "handler_errors", "dropped", "topics",
                "lua_memory", "generation", "reloads_ok", "reloads_failed"):
        assert isinstance(s1[key], int), key
    assert s1["connections"] == 2
    assert s1["connections_total"] >= 2
    assert s2["messages_in"] > s1["messages_in"]
    assert s2["topics"] == s1["topics"] + 1
    assert s1["lua_memory"] > 0
    assert s1["generation"] == 1


def test_now(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        c = await eval_client(server)
        async with c:
            t1 = await c("return ws.now()")
            await asyncio.sleep(0.3)
            t2 = await c("return ws.now()")
            # the loop's clock: constant within one handler (libev's cached time)
            same = await c("local a = ws.now() local x = 0 for i = 1, 3e6 do x = x + i end "
                           "return ws.now() - a")
            return t1, t2, same

    t1, t2, same = run(go())
    assert isinstance(t1, float)
    assert 0.2 < t2 - t1 < 5
    assert same == 0


def test_close_codes(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        c = await eval_client(server)
        async with c:
            codes = await c("local t = {} for k, v in pairs(ws.close_codes) do t[k] = v end "
                            "return t")
            assert "read-only" in await c.error("ws.close_codes.NORMAL = 1")
            return codes

    codes = run(go())
    assert codes["NORMAL"] == 1000
    assert codes["GOING_AWAY"] == 1001
    assert codes["PROTOCOL_ERROR"] == 1002
    assert codes["INVALID_DATA"] == 1007
    assert codes["POLICY"] == 1008
    assert codes["TOO_BIG"] == 1009
    assert codes["INTERNAL_ERROR"] == 1011


def test_ws_table_is_read_only(wsserver_factory):
    server = wsserver_factory(app_source=eval_app())

    async def go():
        c = await eval_client(server)
        async with c:
            for code in ["ws.foo = 1", "ws.broadcast = nil", "ws.state = {}", "ws.json = nil",
                         "ws.log = nil", "ws.close_codes = {}", "ws.log.warn = nil",
                         "ws.close_codes.X = 1"]:
                assert "read-only" in await c.error(code), code
            assert await c("return ws.foo, type(ws.broadcast), require('ws') == ws") == \
                [None, "function", True]
            names = await c("local t = {} for k in pairs(ws) do t[#t + 1] = k end "
                            "table.sort(t) return t")
            assert {"broadcast", "publish", "state", "json", "log", "close_codes"} <= set(names)
            # a global named ws in the app's environment does not break send_json
            assert await c('ws = nil; return conn:send_json({ok = true})') == "sent"
            assert json.loads(await c.next()) == {"ok": True}

    run(go())


SHUTDOWN_APP = eval_app(handlers=r"""
  shutdown = function(reason)
    ws.log.info("shutdown-called", {reason = reason, count = ws.count()})
  end,
""")


def test_shutdown(wsserver_factory):
    server = wsserver_factory(app_source=SHUTDOWN_APP)

    async def go():
        a = await eval_client(server)
        b = await eval_client(server)
        await a.ws.send("ws.shutdown()")
        return await closed_with(a.ws), await closed_with(b.ws)

    ca, cb = run(go())
    assert ca[0] == 1001 and cb[0] == 1001
    server.proc.wait(15)
    assert server.proc.returncode == 0
    log = server.log()
    assert "shutdown-called" in log and "ws.shutdown" in log


# --- http routes -------------------------------------------------------------------------------

HTTP_APP = r"""
return {
  http = {
    ["GET /hello"] = function(req)
      return 200, "hello " .. (req.query.name or "world"), {
        ["X-Test"] = "yes", ["X-Num"] = 5, ["Bad\r\nName"] = "x", ["X-Inject"] = "a\r\nSet-Cookie: evil=1",
        ["Bad:Name"] = "y",
      }
    end,
    ["POST /submit"] = function(req) return 201, "created " .. req.method end,
    ["GET /teapot"] = function() return 418, "short and stout" end,
    ["GET /error"] = function() error("route exploded") end,
    ["GET /empty"] = function() end,
    ["GET /badstatus"] = function() return 42, "x" end,
    ["GET /number"] = function() return 200, 12345 end,
    ["GET /req"] = function(req)
      return 200, ws.json.encode({method = req.method, path = req.path, query = req.query,
                                  peer = req.peer, agent = req.headers["x-agent"]})
    end,
    ["GET /ctype"] = function() return 200, "{}", {["Content-Type"] = "application/json"} end,
  },
  message = function(conn, data) conn:send(data) end,
}
"""


def test_http_routes_status_body_headers(wsserver_factory):
    server = wsserver_factory(app_source=HTTP_APP)
    status, headers, body = http_get(server, "/hello?name=ann")
    assert (status, body) == (200, b"hello ann")
    assert headers["X-Test"] == "yes"
    assert headers["X-Num"] == "5"
    assert headers["Content-Length"] == "9"
    assert "evil" not in str(headers) and headers.get("Set-Cookie") is None
    assert "Bad" not in str(headers)
    assert http_get(server, "/submit", method="POST")[::2] == (201, b"created POST")
    assert http_get(server, "/teapot")[::2] == (418, b"short and stout")
    assert http_get(server, "/error")[0] == 500
    # a route must return a status number and a string body (or nil): anything else is its bug,
    # logged as its error and answered 500
    assert http_get(server, "/empty")[::2] == (500, b"internal error\n")
    assert http_get(server, "/badstatus")[0] == 500
    assert http_get(server, "/number")[::2] == (500, b"internal error\n")
    status, headers, body = http_get(server, "/hello", method="HEAD")
    assert (status, body) == (200, b"") and headers["X-Test"] == "yes"
    status, _, body = http_get(server, "/req?a=1", headers={"X-Agent": "tester"})
    req = json.loads(body)
    assert req["method"] == "GET" and req["path"] == "/req" and req["query"] == {"a": "1"}
    assert req["agent"] == "tester" and req["peer"].startswith("127.0.0.1:")
    # SPEC §3: an app with routes answers 404 for a path none of them serves; a known path
    # with another method is not served either
    assert http_get(server, "/nope")[0] == 404
    assert http_get(server, "/hello", method="POST")[0] in (404, 405)
    log = server.log()
    assert "route exploded" in log
    assert 'http route \\"GET /empty\\" must return a status number from 100 to 599, got nil' in log
    assert 'http route \\"GET /badstatus\\" must return a status number from 100 to 599, got 42' in log
    assert 'http route \\"GET /number\\" must return a string body (or nil), got number' in log
    with wsraw.connect(server.port) as c:  # WebSocket still served on the same port
        c.echo_roundtrip()


def test_http_route_sets_its_content_type(wsserver_factory):
    server = wsserver_factory(app_source=HTTP_APP)
    status, headers, body = http_get(server, "/ctype")
    assert (status, body) == (200, b"{}")
    assert headers.get_all("Content-Type") == ["application/json"]  # replaces, not added
    assert http_get(server, "/hello")[1]["Content-Type"].startswith("text/plain")


ROUTER_APP = r"""
local router = require "ws.router"
local r = router.new()
r:get("/health", function() return 200, "ok" end)
r:get("/rooms/:name", function(req, p)
  return 200, "room " .. p.name .. " has " .. ws.subscribers("room:" .. p.name), {["X-Room"] = p.name}
end)
r:post("/rooms/:name", function(req, p) return 201, "made " .. req.params.name end)
r:get("/files/*rest", function(req, p) return 200, "file " .. p.rest end)
r:get("/boom/:x", function() error("router handler exploded") end)
return {
  http = r:handler(),
  open = function(conn) conn:subscribe("room:lobby") end,
  message = function(conn, data) conn:send(data) end,
}
"""


def test_http_router_through_the_server(wsserver_factory):
    server = wsserver_factory(app_source=ROUTER_APP)
    with wsraw.connect(server.port) as c:
        c.echo_roundtrip()
        assert http_get(server, "/health")[::2] == (200, b"ok")
        status, headers, body = http_get(server, "/rooms/lobby")
        assert (status, body) == (200, b"room lobby has 1") and headers["X-Room"] == "lobby"
        assert http_get(server, "/rooms/a%20b")[2] == b"room a b has 0"
        assert http_get(server, "/rooms/x", method="POST")[::2] == (201, b"made x")
        status, headers, _ = http_get(server, "/rooms/x", method="DELETE")
        assert status == 405 and headers["Allow"] == "GET, HEAD, POST"
        assert http_get(server, "/files/a/b.txt")[2] == b"file a/b.txt"
        assert http_get(server, "/rooms/lobby", method="HEAD")[::2] == (200, b"")
        assert http_get(server, "/boom/1")[0] == 500
        assert http_get(server, "/nothing/here")[0] == 404  # SPEC §3: routes, no match
        c.echo_roundtrip()
    assert "router handler exploded" in server.log()


# --- failures: errors, time and memory -----------------------------------------------------------

ERROR_APP = r"""
return {
  open = function(conn)
    if conn.path:find("open-fails", 1, true) then error("open exploded") end
  end,
  message = function(conn, data)
    if data == "boom" then error("kaboom " .. conn.id) end
    if data == "boom-table" then error({code = 1}) end
    if data == "errors?" then conn:send(ws.json.encode(ws.state.errors or {})) return end
    conn:send("echo " .. data)
  end,
  close = function(conn)
    if conn.data.close_fails then error("close exploded") end
  end,
  error = function(msg, conn)
    ws.state.errors = ws.state.errors or {}
    table.insert(ws.state.errors, {msg = msg, id = conn.id, open = conn:is_open()})
    if conn.data.error_fails then error("error handler exploded") end
  end,
}
"""


def test_handler_error_closes_only_that_connection(wsserver_factory):
    server = wsserver_factory(app_source=ERROR_APP)

    async def go():
        a = await connect(server.url)
        b = await connect(server.url)
        await a.send("boom")
        code = await closed_with(a)
        await b.send("still")
        assert await recv(b) == "echo still"
        c = await connect(server.url + "open-fails")
        code_open = await closed_with(c)
        d = await connect(server.url)
        await d.send("boom-table")
        code_table = await closed_with(d)
        await b.send("errors?")
        errors = json.loads(await recv(b))
        await b.close()
        return code, code_open, code_table, errors

    code, code_open, code_table, errors = run(go())
    assert code == (1011, "internal error")
    assert code_open[0] == 1011 and code_table[0] == 1011
    # app.error(message, conn) hears which handler failed and the error itself
    assert [e["msg"].split(":")[0] for e in errors] == ["message handler failed",
                                                        "open handler failed",
                                                        "message handler failed"]
    assert "boom" in errors[0]["msg"] and "open exploded" in errors[1]["msg"]
    assert all(e["open"] is True for e in errors)  # app.error runs before the 1011 close
    log = server.log()
    assert "kaboom" in log and "stack traceback" in log and "open exploded" in log
    assert 'handler="message"' in log and 'handler="open"' in log


def test_app_error_receives_the_error_message(wsserver_factory):
    """README: error(message, conn). The message should be the error, not just its handler."""
    server = wsserver_factory(app_source=ERROR_APP)

    async def go():
        a = await connect(server.url)
        b = await connect(server.url)
        await a.send("boom")
        await closed_with(a)
        await b.send("errors?")
        errors = json.loads(await recv(b))
        await b.close()
        return errors

    errors = run(go())
    assert "kaboom" in errors[0]["msg"], f"app.error lost the error text: {errors[0]['msg']!r}"


HANG_APP = r"""
return {
  config = {handler_timeout = 0.2},
  message = function(conn, data)
    if data == "spin" then
      while true do end
    elseif data == "spin-pcall" then
      while true do pcall(function() while true do end end) end
    elseif data == "spin-timer" then
      ws.after(0, function() while true do end end)
      conn:send("armed")
    else
      conn:send("echo " .. data)
    end
  end,
}
"""


def test_handler_that_never_returns_is_interrupted(wsserver_factory):
    server = wsserver_factory(app_source=HANG_APP)

    async def go():
        b = await connect(server.url)
        a = await connect(server.url)
        t0 = time.monotonic()
        await a.send("spin")
        code = await closed_with(a)
        elapsed = time.monotonic() - t0
        await b.send("alive")
        assert await recv(b) == "echo alive"
        await b.send("spin-timer")
        assert await recv(b) == "armed"
        await asyncio.sleep(0.5)
        await b.send("alive")
        assert await recv(b) == "echo alive"
        await b.close()
        return code, elapsed

    code, elapsed = run(go())
    assert code[0] == 1011
    assert elapsed < 3.0
    log = server.log()
    assert 'handler="message"' in log and 'handler="after"' in log
    assert "handler exceeded handler_timeout" in log, "the budget error text is lost"


def test_handler_pcall_loop_is_interrupted(tmp_path):
    """SPEC §4 / §7: `while true do pcall(spin) end` must be interrupted too. Run outside the
    fixture: when the budget fails the server hangs for good and has to be killed."""
    from conftest import ROOT, Server

    app = tmp_path / "hang.lua"
    app.write_text(HANG_APP)
    server = Server(app, [], cwd=str(ROOT))

    async def go():
        b = await connect(server.url)
        a = await connect(server.url)
        await a.send("spin-pcall")
        try:
            code = await closed_with(a, timeout=4)
        except asyncio.TimeoutError:
            a.transport.abort()
            b.transport.abort()
            return None
        await b.send("alive")
        assert await recv(b) == "echo alive"
        await b.close()
        return code

    code = None
    try:
        code = run(go())
    finally:
        if code is None:
            server.proc.kill()
        rc = server.stop()
        os.unlink(server.logfile.name)
    assert code is not None, "a pcall inside a loop swallowed every budget error: the server hung"
    assert code[0] == 1011
    assert rc == 0


MEMORY_APP = r"""
return {
  config = {lua_memory_limit = 16 * 1048576},
  open = function(conn) conn:send("hi") end,
  message = function(conn, data)
    if data == "big" then
      local s = string.rep("x", 64 * 1048576)
      conn:send("not reached " .. #s)
    elseif data == "big-pcall" then
      local ok, err = pcall(string.rep, "x", 64 * 1048576)
      conn:send(tostring(ok) .. " " .. tostring(err))
    elseif data == "table-bomb" then
      local t = {}
      for i = 1, 1e9 do t[i] = i end
    elseif data == "fill" then
      -- take the heap to its cap and keep it there; a timer armed first frees it later
      ws.after(1.0, function() ws.state.blobs = nil; collectgarbage() end)
      local blobs = {}
      ws.state.blobs = blobs
      local size = 65536
      local function grow()
        while true do
          blobs[#blobs + 1] = string.rep("y", size)
        end
      end
      while size >= 16 do
        pcall(grow)
        size = size // 2
      end
      conn:send("filled")
    elseif data == "mem" then
      conn:send(tostring(ws.stats().lua_memory))
    else
      conn:send("echo " .. #data)
    end
  end,
}
"""


def test_lua_heap_cap(wsserver_factory):
    server = wsserver_factory(app_source=MEMORY_APP)

    async def go():
        b = await connect(server.url)
        assert await recv(b) == "hi"
        out = {}
        for cmd in ("big", "table-bomb"):
            a = await connect(server.url)
            assert await recv(a) == "hi"
            await a.send(cmd)
            out[cmd] = await closed_with(a)
        await b.send("big-pcall")
        out["big-pcall"] = await recv(b)
        await b.send("mem")
        out["mem"] = int(await recv(b))
        await b.send("x" * 1000)
        assert await recv(b) == "echo 1000"
        await b.close()
        return out

    out = run(go())
    assert out["big"][0] == 1011
    assert out["table-bomb"][0] == 1011
    assert out["big-pcall"] == "false not enough memory"
    assert out["mem"] < 16 * MiB
    assert "not enough memory" in server.log()


def test_heap_at_its_cap_fails_events_not_the_process(wsserver_factory):
    """With the heap full, building a handler's arguments (a big message, a new conn) fails that
    call with 1011; it used to abort the whole process (unprotected Lua error)."""
    server = wsserver_factory(app_source=MEMORY_APP)

    async def go():
        a = await connect(server.url)
        assert await recv(a) == "hi"
        await a.send("fill")
        assert await recv(a) == "filled"
        # a message bigger than what is left of the heap
        await a.send("z" * 300000)
        code_msg = await closed_with(a)
        # a new connection: its open handler may or may not find room for its conn object,
        # either way it ends in "hi" or a 1011, never in a dead process
        c = await connect(server.url)
        try:
            code_open = await recv(c, 3)
            await c.close()
        except ConnectionClosed:
            code_open = c.close_code
        await asyncio.sleep(1.5)  # the timer frees the heap
        d = await connect(server.url)
        assert await recv(d) == "hi"
        await d.send("z" * 300000)
        assert await recv(d) == "echo 300000"
        await d.close()
        return code_msg, code_open

    code_msg, code_open = run(go())
    assert server.alive()
    assert code_msg[0] == 1011
    assert code_open in ("hi", 1011)


# --- scale: 1000 connections on 100 topics -------------------------------------------------------

TOPICS_APP = r"""
return {
  upgrade = function(req)
    return {data = {topics = req.query.t or ""}}
  end,
  open = function(conn)
    for t in conn.data.topics:gmatch("[^,]+") do
      conn:subscribe(t)
    end
    conn:send("ready")
  end,
  message = function(conn, data)
    local topic = data:match("^pub (.+)$")
    if topic then
      conn:send("count " .. topic .. " " .. ws.publish(topic, "msg:" .. topic) .. " " ..
                ws.subscribers(topic))
    elseif data == "end" then
      conn:send("broadcast " .. ws.broadcast("END", {except = conn}))
    end
  end,
}
"""


def test_thousand_connections_on_hundred_topics(wsserver_factory):
    server = wsserver_factory(app_source=TOPICS_APP)
    n_clients, n_topics = 1000, 100

    def topics_of(i):
        ts = {f"t{i % n_topics}"}
        if i % 3 == 0:
            ts.add(f"t{(i * 7 + 1) % n_topics}")
        return ts

    expected = {f"t{k}": set() for k in range(n_topics)}
    for i in range(n_clients):
        for t in topics_of(i):
            expected[t].add(i)

    async def go():
        sem = asyncio.Semaphore(100)

        async def open_one(i):
            async with sem:
                ws = await connect(server.url + "?t=" + ",".join(sorted(topics_of(i))))
                assert await recv(ws) == "ready"
                return ws

        clients = await asyncio.gather(*(open_one(i) for i in range(n_clients)))
        control = await connect(server.url)
        assert await recv(control) == "ready"
        try:
            for k in range(n_topics):
                await control.send(f"pub t{k}")
                n = len(expected[f"t{k}"])
                assert await recv(control) == f"count t{k} {n} {n}"
            await control.send("pub nobody")
            assert await recv(control) == "count nobody 0 0"
            await control.send("end")
            assert await recv(control) == f"broadcast {n_clients}"

            async def collect(i, ws):
                got = []
                while True:
                    msg = await recv(ws)
                    if msg == "END":
                        return i, got
                    got.append(msg)

            results = await asyncio.gather(*(collect(i, ws) for i, ws in enumerate(clients)))
        finally:
            await asyncio.gather(*(ws.close() for ws in clients), control.close(),
                                 return_exceptions=True)
        return results

    results = run(go(), timeout=80)
    for i, got in results:
        assert sorted(got) == sorted(f"msg:{t}" for t in topics_of(i)), (i, got)


# --- API fuzz ----------------------------------------------------------------------------------

FUZZ_APP = r"""
local json = ws.json

local function fuzz(conn)
  local huge = string.rep("\255", 1 << 20)
  local stale = ws.state.stale
  local timer = ws.after(3600, function() end)
  local names, V, N = {}, {}, 0
  local function add(name, v)
    N = N + 1
    names[N], V[N] = name, v
  end
  add("nil", nil); add("zero", 0); add("neg", -1); add("float", 1.5); add("inf", math.huge)
  add("-inf", -math.huge); add("nan", 0 / 0); add("maxint", math.maxinteger)
  add("minint", math.mininteger); add("empty", ""); add("huge", huge); add("utf8", "h\u{e9}llo")
  add("text", "text"); add("binary", "binary"); add("table", {}); add("list", {1, 2, 3})
  add("opts", {except = conn, filter = function() return true end, binary = true})
  add("badopts", {except = "x", filter = 5, binary = "yes"})
  add("fn", function() return true end); add("errfn", function() error("fuzz error") end)
  add("true", true); add("false", false); add("null", json.null)
  add("co", coroutine.create(function() end)); add("timer", timer); add("conn", conn)
  add("stale", stale)

  local report = {calls = 0, errors = 0, returns = 0, by = {}}
  local function try(label, f, ...)
    report.calls = report.calls + 1
    local r = table.pack(pcall(f, ...))
    local b = report.by[label] or {errors = 0, returns = 0}
    report.by[label] = b
    if r[1] then
      report.returns = report.returns + 1
      b.returns = b.returns + 1
      -- stop timers the fuzz managed to create
      for i = 2, r.n do
        local v = r[i]
        if type(v) == "userdata" then
          local ok, cancel = pcall(function() return v.cancel end)
          if ok and type(cancel) == "function" then v:cancel() end
        end
      end
    else
      report.errors = report.errors + 1
      b.errors = b.errors + 1
    end
  end

  local function sweep(label, f, arity)
    try(label, f)
    for i = 1, N do
      try(label, f, V[i])
    end
    if arity >= 2 then
      for i = 1, N do
        for j = 1, N do
          try(label, f, V[i], V[j])
        end
      end
    end
    if arity >= 3 then
      for i = 1, N, 3 do
        for j = 1, N, 2 do
          for k = 1, N do
            try(label, f, V[i], V[j], V[k])
          end
        end
      end
    end
  end

  -- conn methods, called on conn, on the stale handle and on wrong self values
  local methods = {send = 2, send_json = 1, ping = 1, buffered = 0, is_open = 0, subscribe = 1,
                   unsubscribe = 1, topics = 0, publish = 3}
  local order = {"send", "send_json", "ping", "buffered", "is_open", "subscribe", "unsubscribe",
                 "topics", "publish"}
  for _, m in ipairs(order) do
    local f = conn[m]
    sweep("conn:" .. m, function(...) return f(conn, ...) end, methods[m])
    sweep("stale:" .. m, function(...) return f(stale, ...) end, math.min(methods[m], 1))
    for i = 1, N do
      if V[i] ~= conn and V[i] ~= stale then
        try("badself:" .. m, f, V[i], "x")
      end
    end
  end
  -- fields
  for i = 1, N do
    try("conn[k]", function() return conn[V[i]] end)
    try("conn[k]=v", function() conn[V[i]] = V[i] end)
    try("stale[k]", function() return stale[V[i]] end)
  end
  try("conn.data=", function() conn.data = 5 end)
  try("conn.data=", function() conn.data = {} end)
  -- ws functions
  local fns = {
    {"broadcast", ws.broadcast, 2}, {"publish", ws.publish, 3},
    {"subscribers", ws.subscribers, 1}, {"topics", ws.topics, 1},
    {"connections", ws.connections, 1}, {"get", ws.get, 1}, {"count", ws.count, 1},
    {"after", ws.after, 2}, {"every", ws.every, 2}, {"stats", ws.stats, 1},
    {"now", ws.now, 1}, {"json.encode", ws.json.encode, 1}, {"json.decode", ws.json.decode, 1},
    {"json.array", ws.json.array, 1}, {"log.debug", ws.log.debug, 2},
    {"log.info", ws.log.info, 2}, {"timer:cancel", timer.cancel, 1},
  }
  for _, e in ipairs(fns) do
    sweep("ws." .. e[1], e[2], e[3])
  end
  for i = 1, N do
    try("ws[k]=v", function() ws[V[i]] = V[i] end)
    try("ws[k]", function() return ws[V[i]] end)
  end
  -- the one call that ends the connection goes last
  report.before_close = conn:is_open()
  conn:send("REPORT " .. json.encode(report))
  sweep("conn:close", function(...) return conn.close(conn, ...) end, 2)
  return report
end

return {
  config = {max_buffered = 256 * 1048576, handler_timeout = 60, max_message_size = 4096},
  upgrade = function(req)
    return {data = {role = req.query.role}}
  end,
  open = function(conn)
    if conn.data.role == "stale" then
      ws.state.stale = conn
      conn:close()
    elseif conn.data.role == "fuzz" then
      ws.state.final = fuzz(conn)
    end
  end,
  message = function(conn, data)
    if data == "final?" then
      conn:send(json.encode(ws.state.final or {}))
    else
      conn:send("echo " .. data)
    end
  end,
}
"""


def test_api_fuzz_wrong_types_never_hurt_the_process(wsserver_factory):
    server = wsserver_factory(app_source=FUZZ_APP)

    async def go():
        s = await connect(server.url + "?role=stale")
        await closed_with(s)
        f = await connect(server.url + "?role=fuzz", max_queue=None)
        report = None
        try:
            while True:
                msg = await recv(f, 60)
                if isinstance(msg, str) and msg.startswith("REPORT "):
                    report = json.loads(msg[7:])
        except ConnectionClosed:
            pass
        watcher = await connect(server.url)
        await watcher.send("final?")
        final = json.loads(await recv(watcher))
        # still serving: a fresh connection echoes
        async with connect(server.url) as fresh:
            await fresh.send("alive")
            assert await recv(fresh) == "echo alive"
        await watcher.send("alive")
        assert await recv(watcher) == "echo alive"
        await watcher.close()
        return report, final

    report, final = run(go(), timeout=85)
    print(json.dumps({k: v for k, v in final.items() if k != "by"}))
    assert report is not None, "the fuzz report never arrived"
    assert report["before_close"] is True
    assert report["calls"] == report["errors"] + report["returns"]
    assert report["errors"] > 1000 and report["returns"] > 1000, report
    by = final["by"]
    # wrong self values always raise; the stale handle never raises for well-typed calls
    for label, b in by.items():
        if label.startswith("badself:"):
            assert b["returns"] == 0, (label, b)
    assert by["ws.count"]["errors"] == 0 and by["ws.now"]["errors"] == 0
    assert by["json.decode"]["errors"] == 0 if "json.decode" in by else True
    assert by["ws.json.decode"]["errors"] == 0  # decode never raises
    assert final["calls"] == final["errors"] + final["returns"]
    assert server.alive()
    assert 'handler="open"' not in server.log(), "the fuzz itself must not escape its pcalls"
