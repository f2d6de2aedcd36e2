-- ws.testing (lua/ws/testing.lua): the real server in-process (ws.kitcore, on LUA_CPATH) that app
-- authors test their handlers with, on in-memory connections and a simulated clock. Its
-- transcripts are also compared with build/wsserver over sockets by
-- tests/integration/test_kit_conformance.py; this spec pins the kit's own API and the details.
local testing = require "ws.testing"
local json = require "ws.json"

local function load(src, opts)
  return testing.load(src, opts)
end

-- The error message of f(...), which must fail.
local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  assert(not ok, "expected an error")
  return e
end

local function texts(list)
  local out = {}
  for _, e in ipairs(list) do
    out[#out + 1] = e.kind == "close" and ("close " .. e.code .. " " .. e.reason) or e.data
  end
  return out
end

local ECHO = [[
return {
  message = function(conn, data, kind)
    conn:send(data, kind)
  end,
}
]]

-- The first two results (status and body of t:http).
local function two(a, b)
  return {a, b}
end

local CLOSE_CODE = "close code must be 1000-1003, 1007-1014 or 3000-4999"

describe("ws.testing", function()
  describe("loading", function()
    it("loads an app from a path", function()
      local t = load("examples/echo.lua")
      local c = t:connect()
      c:send("hi")
      assert.same({kind = "text", data = "hi"}, c:next())
      assert.is_nil(c:next())
    end)

    it("loads an app from source, named app.lua in error positions", function()
      local t = load("return { message = function(conn) error('boom') end }")
      local c = t:connect()
      c:send("x")
      assert.equal("app.lua:1: boom", t:errors()[1].message)
      assert.equal("message", t:errors()[1].handler)
    end)

    it("takes a chunk name for source", function()
      local t = load("return {\n open = function() error('x') end }", {name = "chat.lua"})
      t:connect()
      assert.equal("chat.lua:2: x", t:errors()[1].message)
    end)

    it("refuses what the server refuses, with the server's messages", function()
      local cases = {
        ["return { mesage = function() end }"] = "unknown app field 'mesage' (known: config, " ..
          "http, upgrade, open, message, close, drain, shutdown, load, error)",
        ["return { open = 5 }"] = "app.open must be a function, got number",
        ["return { http = 5 }"] = "app.http must be a table, got number",
        ["return 42"] = "the app must return a table, got number",
        ["local x = 1"] = "the app must return a table, got nil",
        ["return { [1] = print }"] = "unknown app field 'number' (known: config, http, upgrade, " ..
          "open, message, close, drain, shutdown, load, error)",
        ["return { config = { max_mesage_size = 1 } }"] = "unknown config key 'max_mesage_size'",
        ["return { config = { max_message_size = 0 } }"] =
          "invalid value for max_message_size: must be a whole number from 1 to 4294967296",
        ["return { config = { handler_timeout = 0 } }"] =
          "invalid value for handler_timeout: must be a number of seconds from 0.001 to 3600",
        ["return { config = { backpressure = 'wait' } }"] =
          "invalid value for backpressure: must be one of close, drop",
        ["return { config = { metrics = 'maybe' } }"] =
          "invalid value for metrics: must be true or false",
        ["return { config = { ping_interval = true } }"] =
          "invalid value for ping_interval: must be a number of seconds from 0 to 86400 " ..
          "(got a boolean)",
        ["return { config = { ping_interval = '20' } }"] =
          "invalid value for ping_interval: must be a number of seconds from 0 to 86400 " ..
          "(got a string)",
        ["return { config = { compression = true } }"] =
          "invalid value for compression: must be one of off, on (got a boolean)",
        ["return { config = { listen = ':99999' } }"] =
          "invalid value for listen: ':99999': the port must be a number from 1 to 65535",
        ["return { http = { ['/count'] = print } }"] =
          'app.http key "/count" must be "METHOD /path" (e.g. "GET /count")',
        ["return { http = { ['GET /healthz'] = print } }"] =
          'app.http key "GET /healthz" is a path the server answers itself (/healthz, ' ..
          '/metrics): pick another path',
        ["return { http = { ['GET /x'] = 'hi' } }"] = 'app.http["GET /x"] must be a function, got string',
        ["return setmetatable({}, {__index = function() error('x', 0) end})"] =
          "reading app.config failed: x",
        ["return { config = { protocols = {'a', 5} } }"] =
          "invalid value for protocols: a list of strings",
        ["return { config = { tls_cert = 'x.pem' } }"] =
          "invalid configuration: tls_cert and tls_key must be given together",
        ["local t = nil\nreturn t.x"] =
          "running the app failed: app.lua:2: attempt to index a nil value (local 't')",
      }
      for src, want in pairs(cases) do
        local e = err_of(testing.load, src)
        assert.equal("ws.testing.load: app.lua: the app failed to load: " .. want, e)
      end
      assert.matches("app.lua:1: .*near", err_of(testing.load, "return {"))
    end)

    it("runs load(state, info) at start and fails when it fails", function()
      local t = load([[return { load = function(state, info)
        state.info = info
      end }]])
      assert.same({generation = 1, previous = 0, file = "app.lua", trigger = "start"}, t.state.info)
      assert.equal("ws.testing.load: app.lua: load() failed: app.lua:1: no",
                   err_of(testing.load, "return { load = function() error('no') end }"))
    end)

    it("lets opts.config win over the app's config, and checks it", function()
      local t = load([[return { config = { max_message_size = 10, handler_timeout = 2 } }]],
                     {config = {max_message_size = 100}})
      assert.equal(100, t.config.max_message_size)
      assert.equal(2, t.config.handler_timeout)
      assert.equal("ws.testing.load: invalid value for max_message_size: must be a whole number " ..
                   "from 1 to 4294967296", err_of(testing.load, ECHO, {config = {max_message_size = -1}}))
      assert.equal("ws.testing.load: unknown config key 'nope'",
                   err_of(testing.load, ECHO, {config = {nope = 1}}))
    end)

    it("gives the app a fresh environment on the server's globals, not the test's", function()
      _G.leak_from_test = true
      local t = load([[
        app_global = 1
        ws.state.seen_test_global = leak_from_test
        ws.state.describe = describe
        ws.state.same_ws = require("ws") == ws and require("ws.json") == ws.json
        ws.state.G_is_env = _G.app_global
        return {}
      ]])
      _G.leak_from_test = nil
      assert.is_nil(t.state.seen_test_global)
      assert.is_nil(t.state.describe)
      assert.is_true(t.state.same_ws)
      assert.is_nil(t.state.G_is_env) -- globals live in the version's environment, not in _G
      assert.is_nil(rawget(_G, "app_global"))
    end)

    it("makes conns, timers and the ws table userdata, as on the server", function()
      local t = load([[return { open = function(conn)
        ws.state.types = {type(conn), type(ws), type(ws.log), type(ws.json), type(ws.after(1, print))}
        ws.state.mt = {getmetatable(conn), getmetatable(ws)}
      end }]])
      t:connect()
      assert.same({"userdata", "userdata", "userdata", "userdata", "userdata"}, t.state.types)
      assert.same({false, false}, t.state.mt)
    end)
  end)

  describe("connect and upgrade", function()
    local UPGRADE = [[
      return {
        config = { protocols = {"v2", "v1"} },
        upgrade = function(req)
          ws.state.req = req
          local q = req.query
          if q.refuse == "plain" then return false end
          if q.refuse == "status" then return false, 401, "who are you", {["WWW-Authenticate"] = "Token"} end
          if q.refuse == "range" then return false, 302, "moved" end
          if q.refuse == "error" then error("upgrade broke") end
          if q.pick then return {protocol = q.pick, data = {picked = true}} end
          return {data = {user = q.user}}
        end,
        open = function(conn)
          conn:send_json({user = conn.data.user, protocol = conn.protocol, path = conn.path,
                          target = conn.target, q = conn.query.user})
        end,
      }
    ]]

    it("refuses with the app's status, body (one line) and headers", function()
      local t = load(UPGRADE)
      local c, status, body, headers = t:connect{query = {refuse = "status"}}
      assert.is_nil(c)
      assert.equal(401, status)
      assert.equal("who are you\n", body)
      assert.equal("Token", headers["www-authenticate"])
      assert.same({403, "Forbidden\n"}, two(select(2, t:connect{query = {refuse = "plain"}})))
      local _, s2, b2 = t:connect{query = {refuse = "range"}}
      assert.same({403, "moved\n"}, {s2, b2})
      local _, s3, b3 = t:connect{query = {refuse = "error"}}
      assert.same({500, "Internal Server Error\n"}, {s3, b3})
      assert.equal("upgrade", t:errors()[1].handler)
      assert.equal(4, t:stats().handshake_rejections)
    end)

    it("hands upgrade the request as the server builds it", function()
      local t = load(UPGRADE)
      t:connect{path = "/room/1?a=1+2&b=%41&a=3&flag", cookies = {sid = "x y", theme = "dark"},
                origin = "https://example.com", headers = {["X-Thing"] = "yes"},
                protocols = {"v1", "v3"}, peer = "10.0.0.7:5555"}
      local req = t.state.req
      assert.equal("GET", req.method)
      assert.equal("/room/1", req.path)
      assert.equal("/room/1?a=1+2&b=%41&a=3&flag", req.target)
      assert.equal("a=1+2&b=%41&a=3&flag", req.query_string)
      assert.same({a = "1 2", b = "A", flag = ""}, req.query)
      assert.same({sid = "x y", theme = "dark"}, req.cookies)
      assert.equal("https://example.com", req.origin)
      assert.equal("yes", req.headers["x-thing"])
      assert.equal("websocket", req.headers.upgrade)
      assert.same({"v1", "v3"}, req.protocols)
      assert.equal("10.0.0.7:5555", req.peer)
    end)

    it("builds the query from a table and passes upgrade's data to open", function()
      local t = load(UPGRADE)
      local c = t:connect{path = "/x", query = {user = "ann marie"}}
      assert.same({user = "ann marie", path = "/x", target = "/x?user=ann%20marie",
                   q = "ann marie"}, c:next_json())
    end)

    it("picks a subprotocol: the app's (must be offered) or the config's preference", function()
      local t = load(UPGRADE)
      assert.equal("v2", t:connect{protocols = {"v1", "v2"}}.protocol)
      assert.equal("v1", t:connect{protocols = {"v1", "v9"}}.protocol)
      assert.is_nil(t:connect{protocols = {"v9"}}.protocol)
      local c = t:connect{query = {pick = "v9"}, protocols = {"v9"}}
      assert.equal("v9", c.protocol)
      assert.is_true(c:data().picked)
      local _, status, body = t:connect{query = {pick = "v8"}, protocols = {"v9"}}
      assert.same({500, "internal error\n"}, {status, body})
    end)

    it("answers 503 when full, counting connections until they are gone", function()
      local t = load(ECHO, {config = {max_connections = 2, max_connections_per_ip = 0}})
      local a = t:connect()
      t:connect()
      assert.same({503, "server full\n"}, two(select(2, t:connect())))
      a:close()
      assert.is_truthy(t:connect())
      local u = load(ECHO, {config = {max_connections_per_ip = 1}})
      u:connect{peer = "10.0.0.1"}
      assert.is_truthy(u:connect{peer = "10.0.0.2"})
      assert.same({503, "too many connections from this address\n"},
                  two(select(2, u:connect{peer = "10.0.0.1"})))
    end)

    it("gives ids in arrival order, HTTP requests and refusals included", function()
      local t = load(UPGRADE)
      assert.equal(1, t:connect().id)
      t:http("GET", "/")
      t:connect{query = {refuse = "plain"}}
      local c = t:connect()
      assert.equal(4, c.id)
      assert.equal(4, c.conn.id)
    end)
  end)

  describe("messages", function()
    it("delivers text and binary in order, and received()/next() consume", function()
      local t = load(ECHO)
      local c = t:connect()
      assert.is_true(c:send("one"))
      assert.is_true(c:send_binary("\0\1\255"))
      c:send("")
      assert.same({{kind = "text", data = "one"}, {kind = "binary", data = "\0\1\255"},
                   {kind = "text", data = ""}}, c:received())
      assert.same({}, c:received())
      assert.equal(3, #c:history())
    end)

    it("decodes JSON replies", function()
      local t = load([[return { message = function(conn, data)
        conn:send_json({got = data, list = ws.json.array()})
        conn:send("not json")
      end }]])
      local c = t:connect()
      c:send("a")
      assert.same({got = "a", list = {}}, c:next_json())
      assert.matches("not JSON", err_of(c.next_json, c))
      assert.same({kind = "text", data = "not json"}, c:next()) -- still there after the error
      c:send("b")
      assert.same({{got = "b", list = {}}}, c:received_json())
      assert.same({kind = "text", data = "not json"}, c:next())
      assert.matches("has no message waiting", err_of(c.next_json, c))
    end)

    it("answers sent, and nil, closed once the connection is gone", function()
      local t = load([[return { open = function(conn) ws.state.conn = conn
        ws.state.r = {conn:send("hi")} end }]])
      local c = t:connect()
      assert.same({"sent"}, t.state.r)
      c:close()
      local conn = t.state.conn
      assert.same({nil, "closed"}, {conn:send("x")})
      assert.same({nil, "closed"}, {conn:close()})
      assert.same({nil, "closed"}, {conn:subscribe("t")})
      assert.same({nil, "closed"}, {conn:publish("t", "x")})
      assert.same({nil, "closed"}, {conn:ping()})
      assert.is_false(conn:is_open())
      assert.equal(0, conn:buffered())
      assert.same({}, conn:topics())
      assert.equal("conn 1 (closed)", tostring(conn))
      assert.is_nil(conn.peer)
      assert.equal(1, conn.id)
      assert.same({nil, "closed"}, {c:send("after")})
    end)

    it("closes with 1009 above max_message_size and 1007 on invalid UTF-8 text", function()
      local t = load([[return {
        message = function(conn, data) conn:send("ok " .. #data) end,
        close = function(conn, code, reason) ws.state[conn.id] = {code, reason} end,
      }]], {config = {max_message_size = 4}})
      local a, b = t:connect(), t:connect()
      a:send("1234")
      a:send("12345")
      assert.same({"ok 4", "close 1009 message too big"}, texts(a:received()))
      assert.same({1009, "message too big"}, t.state[1])
      b:send("\255")
      assert.same({"close 1007 invalid UTF-8 in text message"}, texts(b:received()))
      assert.is_false(b:is_open())
    end)
  end)

  describe("the conn API", function()
    -- every call runs inside a message handler; the reply is the error message or the results
    local EVAL = [[
      return { message = function(conn, code)
        local f = assert(load(code, "=eval", "t", setmetatable({conn = conn}, {__index = _ENV})))
        local r = table.pack(pcall(f))
        local out = {}
        for i = 2, r.n do out[#out + 1] = tostring(r[i]) end
        conn:send((r[1] and "ok " or "error ") .. table.concat(out, " "))
      end }
    ]]
    local function eval(code)
      local t = load(EVAL)
      local c = t:connect()
      c:send(code)
      local got = c:received()
      return got[#got].data
    end

    it("checks arguments with the server's messages", function()
      local cases = {
        ["conn:close(5000)"] = "eval:1: bad argument #1 to 'close' (" .. CLOSE_CODE .. ")",
        ["conn.close(conn, 5000)"] = "eval:1: bad argument #2 to 'close' (" .. CLOSE_CODE .. ")",
        ["local f = conn.close; f(conn, 1005)"] =
          "eval:1: bad argument #2 to 'f' (" .. CLOSE_CODE .. ")",
        ["conn:close(1000.5)"] = "eval:1: bad argument #1 to 'close' (number has no integer representation)",
        ["conn:close('x')"] = "eval:1: bad argument #1 to 'close' (number expected, got string)",
        ["conn:close(1000, string.rep('x', 124))"] =
          "eval:1: bad argument #2 to 'close' (reason longer than 123 bytes)",
        ["conn:close(1000, '\\255')"] = "eval:1: bad argument #2 to 'close' (reason is not valid UTF-8)",
        ["conn.close()"] = "eval:1: bad argument #1 to 'close' (wsserver.conn expected, got no value)",
        ["conn:send()"] = "eval:1: bad argument #1 to 'send' (string expected, got no value)",
        ["conn:send({})"] = "eval:1: bad argument #1 to 'send' (string expected, got table)",
        ["conn:send('x', 'bin')"] = "eval:1: bad argument #2 to 'send' (invalid option 'bin')",
        ["conn:send('\\255')"] = 'eval:1: text message is not valid UTF-8 (send it as "binary")',
        ["conn:send_json()"] = "eval:1: bad argument #1 to 'send_json' (value expected)",
        ["conn:send_json(print)"] = "eval:1: send_json: Cannot serialise function: type not supported",
        ["conn:send_json({'\\255'})"] = "eval:1: send_json: a string in the value is not valid UTF-8",
        ["conn:ping(string.rep('x', 126))"] = "eval:1: bad argument #1 to 'ping' (ping payload over 125 bytes)",
        ["conn:subscribe()"] = "eval:1: bad argument #1 to 'subscribe' (string expected, got no value)",
        ["conn:publish('t')"] = "eval:1: bad argument #2 to 'publish' (string expected, got no value)",
        ["conn:publish('t', 'x', 'nope')"] = "eval:1: bad argument #3 to 'publish' (invalid option 'nope')",
        ["conn.buffered(5)"] = "eval:1: bad argument #1 to 'buffered' (wsserver.conn expected, got number)",
        ["conn.foo = 1"] = "eval:1: conn.foo is read-only (keep your own fields in conn.data)",
        ["local x, y, z = conn[{}], conn[1], conn.nothing error(tostring(x) .. tostring(y) .. tostring(z), 0)"] =
          "nilnilnil",
        ["pcall(conn.close, conn, 5000) error(select(2, pcall(conn.close, conn, 5000)), 0)"] =
          "bad argument #2 to '?' (" .. CLOSE_CODE .. ")",
      }
      for code, want in pairs(cases) do
        assert.equal("error " .. want, eval(code), code)
      end
    end)

    it("returns what the server returns", function()
      assert.equal("ok sent", eval("return conn:send('\\255', 'binary')"))
      assert.equal("ok sent", eval("local r = conn:send(42) return r"))
      assert.equal("ok true false", eval("return conn:subscribe('t'), conn:subscribe('t')"))
      assert.equal("ok true false", eval("conn:subscribe('t') return conn:unsubscribe('t'), conn:unsubscribe('t')"))
      assert.equal("ok 0", eval("return conn:publish('t', 'x')"))
    end)

    it("keeps the position of an error in a tail call (the API is C)", function()
      assert.equal("error eval:1: bad argument #1 to 'close' (" .. CLOSE_CODE .. ")",
                   eval("return conn:close(5000)"))
    end)

    it("has id, data, peer, path, target, query, protocol; only data can be set", function()
      local t = load([[return { open = function(conn)
        local d = conn.data
        d.x = 1
        ws.state.f = {conn.id, conn.data == d, conn.peer, conn.path, conn.target,
                      conn.query.a, conn.protocol, tostring(conn)}
        conn.data = {y = 2}
        ws.state.y = conn.data.y
        ws.state.same = ws.get(conn.id) == conn
      end }]])
      t:connect{path = "/p?a=b", peer = "10.1.2.3:999"}
      assert.same({1, true, "10.1.2.3:999", "/p", "/p?a=b", "b", nil, "conn 1"}, t.state.f)
      assert.equal(2, t.state.y)
      assert.is_true(t.state.same)
    end)

    it("keeps ping payloads the client got", function()
      local t = load("return { open = function(conn) conn:ping('are you there') end }")
      local c = t:connect()
      assert.same({"are you there"}, c.pings)
      assert.same({}, c:received())
    end)
  end)

  describe("the ws table", function()
    it("is read-only, and so are log, close_codes and json", function()
      local t = load(ECHO)
      local ws = t.ws
      assert.matches("the ws table is read%-only %(keep your data in ws.state%)$",
                     err_of(function() ws.x = 1 end))
      assert.matches("read%-only", err_of(function() ws.log.x = 1 end))
      assert.matches("read%-only", err_of(function() ws.json.x = 1 end))
      assert.matches("table expected, got userdata", err_of(rawset, ws, "x", 1))
      assert.equal(1000, ws.close_codes.NORMAL)
      assert.equal(1011, ws.close_codes.INTERNAL_ERROR)
      assert.equal(json.null, ws.json.null)
      assert.equal(json.null, ws.null)
      assert.equal('{"a":[1]}', ws.json.encode({a = {1}})) -- the app's own ws.json
      local n = 0
      for _ in pairs(ws) do
        n = n + 1
      end
      assert.equal(23, n) -- sleep, http, null, connect, pg and redis included
      t:eval("ws.state.x = 1") -- ws.state is the app's: t.state and t.ws.state are copies
      assert.equal(1, t.state.x)
    end)

    it("checks arguments with the server's messages", function()
      local ws = load(ECHO).ws
      local function msg(f)
        return (err_of(f):gsub("^[^:]*:%d+: ", ""))
      end
      assert.equal("bad argument #1 to 'broadcast' (string expected, got no value)",
                   msg(function() ws.broadcast() end))
      assert.equal("options must be a table, got number",
                   msg(function() ws.broadcast("x", 5) end))
      assert.equal("text message is not valid UTF-8 (pass {binary = true})",
                   msg(function() ws.broadcast("\255") end))
      assert.equal("opts.except must be a conn or a connection id, got string",
                   msg(function() ws.broadcast("x", {except = "a"}) end))
      assert.equal("opts.except must be a conn or a connection id, got boolean",
                   msg(function() ws.broadcast("x", {except = true}) end))
      assert.equal("opts.filter must be a function, got number",
                   msg(function() ws.broadcast("x", {filter = 5}) end))
      assert.equal("options must be a table, got string",
                   msg(function() ws.publish("t", "x", "y") end))
      assert.equal("bad argument #1 to 'get' (number has no integer representation)",
                   msg(function() ws.get(1.5) end))
      assert.equal("bad argument #1 to 'after' (seconds must be a number >= 0)",
                   msg(function() ws.after(-1, print) end))
      assert.equal("bad argument #1 to 'every' (ws.every needs at least 0.001 seconds)",
                   msg(function() ws.every(0, print) end))
      assert.equal("bad argument #2 to 'after' (function expected, got no value)",
                   msg(function() ws.after(1) end))
      assert.equal("bad argument #1 to 'cancel' (wsserver.timer expected, got no value)",
                   msg(function() ws.after(1, print).cancel() end))
      assert.equal("bad argument #1 to 'info' (string expected, got no value)",
                   msg(function() ws.log.info() end))
    end)

    it("captures ws.log lines at every level", function()
      local t = load([[
        ws.log.debug("loading")
        return { open = function(conn)
          ws.log.info("hello", {conn = conn.id, ratio = 0.5, [1] = "skipped", t = true})
          ws.log.warn(42)
        end }]])
      t:connect()
      assert.same({
        {level = "debug", msg = "loading", fields = {}},
        {level = "info", msg = "hello", fields = {conn = 1, ratio = "0.5", t = "true"}},
        {level = "warn", msg = "42", fields = {}},
      }, t:logs())
      assert.equal(1, #t:logs("warn"))
    end)

    it("broadcasts to every open connection, with except, filter and binary", function()
      local t = load([[return { message = function(conn, data)
        local seen = {}
        local n
        if data == "all" then n = ws.broadcast("all")
        elseif data == "others" then n = ws.broadcast("others", {except = conn})
        elseif data == "id" then n = ws.broadcast("not 1", {except = 1})
        elseif data == "bin" then n = ws.broadcast("\0\255", {binary = true})
        elseif data == "even" then
          n = ws.broadcast("even", {filter = function(c) seen[#seen + 1] = c.id return c.id % 2 == 0 end})
        end
        conn:send(n .. " " .. table.concat(seen, ","))
      end }]])
      local a, b, c = t:connect(), t:connect(), t:connect()
      a:send("all")
      assert.same({"all", "3 "}, texts(a:received()))
      assert.same({"all"}, texts(b:received()))
      b:send("others")
      assert.same({"2 "}, texts(b:received()))
      assert.same({"all", "others"}, texts(c:received()))
      c:send("id")
      assert.same({"others"}, texts(a:received())) -- not "not 1"
      assert.same({"not 1"}, texts(b:received()))
      c:send("even")
      assert.same({"not 1", "2 ", "1 1,2,3"}, texts(c:received()))
      assert.same({"even"}, texts(b:received()))
      a:send("bin")
      assert.same({kind = "binary", data = "\0\255"}, b:next())
      c:received()
      a:received()
      b:close()
      a:send("all")
      assert.same({"all", "2 "}, texts(a:received()))
    end)

    it("rethrows a filter's error after reaching the connections it already accepted", function()
      local t = load([[return { message = function(conn, data)
        ws.broadcast("x", {filter = function(c) if c.id == 2 then error("no", 0) end return true end})
      end }]])
      local a, b, c = t:connect(), t:connect(), t:connect()
      c:send("go")
      assert.same({"x"}, texts(a:received()))
      assert.same({}, texts(b:received()))
      assert.same({"close 1011 internal error"}, texts(c:received()))
      assert.equal("no", t:errors()[1].message)
    end)

    it("publishes to topic subscribers; conn:publish skips the sender", function()
      local t = load([[return { message = function(conn, data)
        local cmd, arg = data:match("^(%a+) ?(.*)$")
        if cmd == "sub" then conn:send(tostring(conn:subscribe(arg)))
        elseif cmd == "unsub" then conn:send(tostring(conn:unsubscribe(arg)))
        elseif cmd == "say" then conn:send("reached " .. conn:publish("room", arg))
        elseif cmd == "all" then conn:send("reached " .. ws.publish("room", arg))
        elseif cmd == "bin" then ws.publish("room", "\1", {binary = true, except = conn}) end
      end }]])
      local a, b, c = t:connect(), t:connect(), t:connect()
      a:send("sub room")
      b:send("sub room")
      b:send("sub room")
      assert.same({"true", "false"}, texts(b:received()))
      assert.equal(2, t:subscribers("room"))
      assert.same({"room"}, t:topics())
      assert.same({"room"}, a:topics())
      a:send("say hi")
      assert.same({"true", "reached 1"}, texts(a:received()))
      assert.same({"hi"}, texts(b:received()))
      c:send("all everyone")
      assert.same({"everyone"}, texts(a:received()))
      assert.same({"everyone"}, texts(b:received()))
      assert.same({"reached 2"}, texts(c:received()))
      a:send("bin")
      assert.same({kind = "binary", data = "\1"}, b:next())
      assert.same({}, a:received())
      a:send("unsub room")
      b:close()
      assert.equal(0, t:subscribers("room"))
      assert.same({}, t:topics())
    end)

    it("counts and lists open connections and finds them by id", function()
      local t = load([[return { message = function(conn)
        local ids = {}
        for c in ws.connections() do ids[#ids + 1] = c.id end
        conn:send(ws.count() .. " " .. table.concat(ids, ",") .. " " .. tostring(ws.get(conn.id) == conn))
      end }]])
      local a, b = t:connect(), t:connect()
      a:send("?")
      assert.same({"2 1,2 true"}, texts(a:received()))
      b:close()
      a:send("?")
      assert.same({"1 1 true"}, texts(a:received()))
      assert.is_nil(t:get(2))
      assert.equal(1, t:count())
    end)

    it("has stats", function()
      local t = load(ECHO)
      local c = t:connect()
      c:send("x")
      local s = t:stats()
      assert.equal(1, s.connections)
      assert.equal(1, s.connections_total)
      assert.equal(1, s.messages_in)
      assert.equal(1, s.messages_out)
      assert.equal(1, s.generation)
      assert.equal(0, s.reloads_ok)
    end)
  end)

  describe("handler errors", function()
    local APP = [[
      return {
        open = function(conn) if conn.path == "/bad" then error("bad open") end end,
        message = function(conn, data)
          if data == "boom" then conn:send("before") error("boom") end
          if data == "close-first" then conn:close(4000, "mine") error("late") end
          conn:send("echo " .. data)
        end,
        error = function(message, conn)
          ws.state.errors = ws.state.errors or {}
          table.insert(ws.state.errors, {message = message, id = conn.id, open = conn:is_open()})
        end,
        close = function(conn, code, reason)
          ws.state.closes = ws.state.closes or {}
          table.insert(ws.state.closes, {conn.id, code, reason})
          if reason == "fail" then error("close failed") end
        end,
      }
    ]]

    it("close only that connection with 1011, after app.error", function()
      local t = load(APP)
      local a, b = t:connect(), t:connect()
      a:send("boom")
      assert.same({"before", "close 1011 internal error"}, texts(a:received()))
      assert.is_false(a:is_open())
      local e = t.state.errors[1]
      assert.equal(1, e.id)
      assert.is_true(e.open)
      -- a handler the server calls directly (message, once the conn has a userdata): no C frame
      assert.equal("message handler failed: app.lua:4: boom\nstack traceback:\n" ..
                   "\t[C]: in function 'error'\n\tapp.lua:4: in function <app.lua:3>", e.message)
      assert.same({{1, 1011, "internal error"}}, t.state.closes)
      b:send("still")
      assert.same({"echo still"}, texts(b:received()))
      assert.equal(1, t:stats().handler_errors)
      assert.equal("app.lua:4: boom", t:errors()[1].message)
      assert.matches("stack traceback", t:errors()[1].traceback)
    end)

    it("in open close the connection after the 101", function()
      local t = load(APP)
      local c = t:connect{path = "/bad"}
      assert.is_truthy(c)
      assert.same({"close 1011 internal error"}, texts(c:received()))
      assert.equal("open handler failed: app.lua:2: bad open", t.state.errors[1].message:match("^[^\n]*"))
    end)

    it("keep a close the handler already started", function()
      local t = load(APP)
      local c = t:connect()
      c:send("close-first")
      assert.same({"close 4000 mine"}, texts(c:received()))
      assert.is_false(t.state.errors[1].open)
      assert.same({{1, 4000, "mine"}}, t.state.closes)
    end)

    it("in close are only logged", function()
      local t = load(APP)
      local c = t:connect()
      c:close(3000, "fail")
      assert.same({{1, 3000, "fail"}}, t.state.closes)
      assert.equal("close", t:errors()[1].handler)
      assert.is_nil(t.state.errors)
    end)

    it("of a yield inside a handler are the server's", function()
      local t = load([[return { message = function(conn)
        conn:send(tostring(select(2, pcall(coroutine.yield))))
        coroutine.yield()
      end }]])
      local c = t:connect()
      c:send("x")
      assert.same({"attempt to yield from outside a coroutine", "close 1011 internal error"},
                  texts(c:received()))
    end)
  end)

  describe("closing", function()
    local APP = [[
      return {
        open = function(conn) conn:subscribe("a") conn:subscribe("b") conn.data.name = "n" .. conn.id end,
        message = function(conn, data)
          if data == "kick" then conn:close(4001, "kicked") end
        end,
        close = function(conn, code, reason)
          local r1, r2 = conn:send("late")
          ws.state.seen = {
            code = code, reason = reason, topics = conn:topics(), name = conn.data.name,
            open = conn:is_open(), send = {r1, r2}, count = ws.count(), get = ws.get(conn.id),
            subscribers = ws.subscribers("a"), text = tostring(conn), path = conn.path,
          }
          ws.state.handle = conn
        end,
      }
    ]]

    it("runs close with the topics attached and conn.data readable, then unsubscribes", function()
      local t = load(APP)
      local a = t:connect{path = "/x"}
      t:connect()
      a:close(4000, "bye")
      assert.same({"close 4000 "}, texts(a:received())) -- the server echoes the code only
      assert.same({code = 4000, reason = "bye", topics = {"a", "b"}, name = "n1", open = false,
                   send = {nil, "closed"}, count = 1, subscribers = 2, text = "conn 1", path = "/x"},
                  t.state.seen)
      assert.equal(1, t:subscribers("a"))
      local h = t.state.handle
      assert.equal("conn 1 (closed)", tostring(h))
      assert.equal("n1", h.data.name)
      assert.same({nil, "closed"}, {h:send("x")})
    end)

    it("reports 1005 for a close without code, 1006 for a dropped connection", function()
      local t = load(APP)
      local a, b = t:connect(), t:connect()
      a:close()
      assert.same({"close 1005 "}, texts(a:received()))
      assert.equal(1005, t.state.seen.code)
      b:drop()
      assert.same({}, b:received())
      assert.same({1006, "connection dropped"}, {t.state.seen.code, t.state.seen.reason})
      assert.same({nil, "closed"}, {b:send("x")})
    end)

    it("closes from the server side with the code and reason the client sees", function()
      local t = load(APP)
      local a = t:connect()
      a:send("kick")
      assert.same({"close 4001 kicked"}, texts(a:received()))
      assert.same({4001, "kicked"}, {t.state.seen.code, t.state.seen.reason})
      assert.same({nil, "closed"}, {a:close()})
    end)

    it("refuses close codes a client may not send", function()
      local t = load(APP)
      local a = t:connect()
      assert.matches("a client may close with", err_of(a.close, a, 1005))
      assert.matches("needs a code", err_of(a.close, a, nil, "why"))
    end)
  end)

  describe("time", function()
    it("fires ws.after and ws.every as the virtual clock advances; ws.now follows it", function()
      local t = load([[
        ws.state.log = {}
        local function note(s) table.insert(ws.state.log, string.format("%s@%g", s, ws.now() - 1000)) end
        return { open = function(conn)
          ws.after(1.5, function() note("after") end)
          local n = 0
          local h
          h = ws.every(1, function() n = n + 1 note("every" .. n) if n == 3 then note(tostring(h:cancel())) end end)
        end }]], {now = 1000})
      assert.equal(1000, t:now())
      t:connect()
      t:advance(0.999)
      assert.same({}, t.state.log)
      t:advance(10)
      assert.same({"every1@1", "after@1.5", "every2@2", "every3@3", "true@3"}, t.state.log)
      assert.equal(1010.999, t:now())
    end)

    it("cancels: true while armed, false after", function()
      local t = load([[return { open = function(conn)
        local h = ws.after(1, function() conn:send("fired") end)
        local done = ws.after(0, function() end)
        ws.state.r = {h:cancel(), h:cancel()}
        ws.state.done = done
      end }]])
      local c = t:connect()
      t:advance(0)
      assert.is_false(t.state.done:cancel())
      t:advance(5)
      assert.same({true, false}, t.state.r)
      assert.same({}, c:received())
    end)

    it("logs a timer's error and keeps the timer", function()
      local t = load([[ws.state.n = 0
        ws.every(1, function() ws.state.n = ws.state.n + 1 error("tick") end)
        return {}]])
      t:advance(3)
      assert.equal(3, t.state.n)
      assert.equal(3, #t:errors())
      assert.equal("every", t:errors()[1].handler)
    end)

    it("closes idle connections after idle_timeout", function()
      local t = load(ECHO, {config = {idle_timeout = 10}})
      local c = t:connect()
      t:advance(9)
      c:send("x")
      t:advance(9)
      assert.is_true(c:is_open())
      t:advance(2)
      assert.same({"x", "close 1001 idle timeout"}, texts(c:received()))
    end)
  end)

  describe("back-pressure", function()
    local APP = [[
      return {
        message = function(conn, data)
          local results = {}
          for i = 1, tonumber(data) do results[#results + 1] = tostring(conn:send(string.rep("x", 1000))) end
          ws.state.results = results
          ws.state.buffered = conn:buffered()
        end,
        drain = function(conn) ws.state.drained = (ws.state.drained or 0) + 1 end,
        close = function(conn, code, reason) ws.state.closed = {code, reason} end,
      }
    ]]

    it("answers queued above the low-water mark and calls drain once the queue empties", function()
      -- frames of 1004 bytes; the low-water mark is min(max_buffered / 2, 64 KiB) = 4096
      local t = load(APP, {config = {max_buffered = 8192}})
      local c = t:connect()
      c:send("5")
      assert.same({"sent", "sent", "sent", "sent", "queued"}, t.state.results)
      assert.equal(1, t.state.drained)
      assert.equal(5, #c:received())
    end)

    it("keeps a paused client's messages queued and closes a slow consumer with 1008", function()
      local t = load(APP, {config = {max_buffered = 4096}})
      local c = t:connect()
      c:pause()
      c:send("3")
      assert.same({"sent", "sent", "queued"}, t.state.results)
      assert.is_true(t.state.buffered > 3000)
      assert.same({}, c:received())
      assert.is_nil(t.state.drained)
      c:resume()
      assert.equal(3, #c:received())
      assert.equal(1, t.state.drained)
      c:pause()
      c:send("6") -- max_buffered 4096: the fifth frame would make 5020 bytes
      assert.same({"sent", "sent", "queued", "queued", "nil", "nil"}, t.state.results)
      c:resume()
      local got = c:received()
      assert.equal(4 + 1, #got)
      assert.same({kind = "close", code = 1008, reason = "slow consumer"}, got[#got])
      assert.same({1008, "slow consumer"}, t.state.closed)
    end)

    it("drops data messages with backpressure = drop", function()
      local t = load([[return { message = function(conn)
        local r = {}
        for i = 1, 6 do local a, b = conn:send(string.rep("x", 1000)) r[#r + 1] = tostring(a or b) end
        ws.state.r = r
      end }]], {config = {max_buffered = 4096, backpressure = "drop"}})
      local c = t:connect()
      c:pause()
      c:send("go")
      assert.same({"sent", "sent", "queued", "queued", "dropped", "dropped"}, t.state.r)
      assert.equal(2, t:stats().dropped)
    end)

    it("gives up on a paused client that does not answer our close", function()
      local t = load([[return {
        message = function(conn) conn:close(4000, "bye") end,
        close = function(conn, code, reason) ws.state.closed = {code, reason, ws.now()} end,
      }]], {now = 0})
      local c = t:connect()
      c:pause()
      c:send("x")
      t:advance(4.9)
      assert.is_nil(t.state.closed)
      t:advance(0.2)
      assert.same({4000, "bye", 5}, t.state.closed)
    end)

    it("closes a paused client that never answers pings", function()
      local t = load(ECHO, {config = {ping_interval = 30, pong_timeout = 10}})
      local c = t:connect()
      c:pause()
      t:advance(39)
      assert.is_true(c.conn:is_open())
      t:advance(2)
      c:resume()
      assert.same({kind = "close", code = 1001, reason = "pong timeout"}, c:received()[1])
    end)
  end)

  describe("handler_timeout", function()
    it("interrupts a handler that runs too long, even through pcall", function()
      local t = load([[return { message = function(conn, data)
        if data == "loop" then while true do end end
        if data == "pcall" then while true do pcall(function() while true do end end) end end
        if data == "co" then coroutine.wrap(function() while true do end end)() end
        conn:send("fine")
      end }]], {config = {handler_timeout = 0.05}})
      for _, how in ipairs({"loop", "pcall", "co"}) do
        local c = t:connect()
        c:send(how)
        assert.same({"close 1011 internal error"}, texts(c:received()), how)
      end
      assert.equal("handler exceeded handler_timeout (0.05 s)",
                   t:errors()[1].message:gsub("^[^:]*:%d+: ", ""))
      local c = t:connect()
      c:send("ok")
      assert.same({"fine"}, texts(c:received()))
    end)

    it("turns a slow upgrade into 500", function()
      local t = load("return { upgrade = function() while true do end end }",
                     {config = {handler_timeout = 0.02}})
      assert.equal(500, select(2, t:connect()))
    end)
  end)

  describe("reload", function()
    local V1 = [[
      counter = (counter or 0) + 1
      ws.state.loads = (ws.state.loads or 0) + 1
      ws.every(1, function() ws.state.v1_ticks = (ws.state.v1_ticks or 0) + 1 end)
      return {
        open = function(conn) conn:subscribe("all") conn.data.v = 1 end,
        message = function(conn) conn:send("v1 " .. tostring(counter)) end,
      }
    ]]
    local V2 = [[
      return {
        load = function(state, info) state.info = info end,
        message = function(conn) conn:send("v2 " .. tostring(counter) .. " " .. conn.data.v
                                           .. " " .. ws.subscribers("all")) end,
      }
    ]]

    it("swaps the app in place, keeps ws.state, conn.data and topics, drops globals and timers", function()
      local t = load(V1)
      local c = t:connect()
      c:send("x")
      t:advance(1)
      assert.equal(1, t.state.v1_ticks)
      assert.is_true(t:reload(V2))
      c:send("x")
      assert.same({"v1 1", "v2 nil 1 1"}, texts(c:received()))
      t:advance(5)
      assert.equal(1, t.state.v1_ticks)
      assert.same({generation = 2, previous = 1, file = "app.lua", trigger = "SIGHUP"}, t.state.info)
      assert.equal(1, t:stats().reloads_ok)
      assert.equal(2, t:stats().generation)
    end)

    it("keeps the running version when the new one fails, with the reason", function()
      local t = load(V1)
      local c = t:connect()
      local cases = {
        ["return {"] = "^app.lua:1: .*near <eof>$",
        ["return { mesage = print }"] = "^unknown app field 'mesage'",
        ["return { message = 1 }"] = "^app.message must be a function, got number$",
        ["error('no')"] = "^running the app failed: app.lua:1: no$",
        ["return { config = { idle_timeout = -1 } }"] = "^invalid value for idle_timeout",
        ["ws.every(1, function() ws.state.bad_tick = true end) return { load = function() error('later') end }"] =
          "^load%(%) failed: app.lua:1: later$",
      }
      for src, pattern in pairs(cases) do
        local ok, err = t:reload(src)
        assert.is_false(ok)
        assert.matches(pattern, err)
      end
      t:advance(3)
      assert.is_nil(t.state.bad_tick) -- the failed version's timer was cancelled
      c:send("x")
      assert.same({"v1 1"}, texts(c:received()))
      assert.equal(6, t:stats().reloads_failed)
      assert.equal(1, t:stats().generation)
    end)

    it("reloads on ws.reload() after the handler, from the same source", function()
      local t = load([[
        ws.state.loads = (ws.state.loads or 0) + 1
        return { message = function(conn) ws.reload() conn:send("loads " .. ws.state.loads) end }]])
      local c = t:connect()
      c:send("x")
      c:send("x")
      assert.same({"loads 1", "loads 2"}, texts(c:received()))
    end)

    it("reloads modules from the app's folder", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. dir))
      local function write(name, text)
        local f = assert(io.open(dir .. "/" .. name, "w"))
        f:write(text)
        f:close()
      end
      write("greet.lua", "return { word = 'hello', ws_ok = ws ~= nil }")
      write("app.lua", "local g = require 'greet' return { open = function(c) c:send(g.word .. tostring(g.ws_ok)) end }")
      local t = load(dir .. "/app.lua")
      assert.same({"hellotrue"}, texts(t:connect():received()))
      write("greet.lua", "return { word = 'hi', ws_ok = true }")
      assert.is_true(t:reload())
      assert.same({"hitrue"}, texts(t:connect():received()))
      os.execute("rm -rf " .. dir)
    end)
  end)

  describe("http", function()
    local APP = [[
      local router = require("ws.router").new()
      router:get("/rooms/:name", function(req, params) return 200, "room " .. params.name end)
      local routes = router:handler()
      rawset(routes, "GET /status", function(req)
        return 200, "ok " .. tostring(req.query.x), {["X-Hits"] = 1, ["Content-Type"] = "text/x", ["Bad:Name"] = "no"}
      end)
      rawset(routes, "POST /fail", function() error("route failed") end)
      rawset(routes, "GET /odd", function() return 999, 42 end)
      return { http = routes }
    ]]

    it("answers app.http routes like the server", function()
      local t = load(APP)
      local status, body, headers = t:http("GET", "/status?x=1")
      assert.same({200, "ok 1"}, {status, body})
      assert.same({["content-type"] = "text/x", ["x-hits"] = "1"}, headers)
      assert.same({200, "room lobby"}, two(t:http("GET", "/rooms/lobby")))
      assert.same({200, ""}, two(t:http("HEAD", "/status")))
      assert.same({500, "internal error\n"}, two(t:http("POST", "/fail")))
      assert.same({500, "internal error\n"}, two(t:http("GET", "/odd")))
      assert.equal('http route "GET /odd" must return a status number from 100 to 599, got 999',
                   t:errors()[#t:errors()].message)
      assert.equal(405, (t:http("POST", "/rooms/x")))
      assert.same({404, "not found\n"}, two(t:http("GET", "/nowhere")))
      assert.same({405, "method not allowed\n"}, two(t:http("DELETE", "/nowhere")))
      assert.same({200, "ok\n"}, two(t:http("GET", "/healthz")))
    end)
  end)

  describe("shutdown", function()
    it("runs app.shutdown, then closes every connection with 1001", function()
      local t = load([[return {
        shutdown = function(reason) ws.state.reason = reason ws.broadcast("bye") end,
        message = function(conn) ws.shutdown() end,
      }]])
      local a, b = t:connect(), t:connect()
      t:shutdown()
      assert.equal("SIGTERM", t.state.reason)
      assert.same({"bye", "close 1001 server shutting down"}, texts(a:received()))
      assert.same({"bye", "close 1001 server shutting down"}, texts(b:received()))
      assert.matches("shutting down", err_of(t.connect, t))
      local u = load([[return { shutdown = function(r) ws.state.reason = r end,
                                message = function(conn) ws.shutdown() end }]])
      u:connect():send("stop")
      assert.equal("ws.shutdown", u.state.reason)
    end)
  end)
end)

describe("ws.testing: the real server in-process", function()
  it("speaks to the app through the real handshake and frames", function()
    local t = testing.load([[return {
      upgrade = function(req) if req.query.token ~= "ok" then return false, 403, "who are you" end end,
      open = function(conn) conn:send("hello " .. conn.peer) end,
      message = function(conn, data, kind) conn:send(data, kind) end,
    }]])
    local refused, status, body = t:connect{path = "/", query = {token = "no"}}
    assert.same({nil, 403, "who are you\n"}, {refused, status, body})
    local c = t:connect{path = "/chat", query = {token = "ok"}, peer = "10.0.0.7:5555"}
    assert.same({kind = "text", data = "hello 10.0.0.7:5555"}, c:next())
    c:send("one")
    c:send_binary("\0\1")
    assert.same({{kind = "text", data = "one"}, {kind = "binary", data = "\0\1"}}, c:received())
    c:send("\255") -- the server's own UTF-8 check and close code
    assert.same({kind = "close", code = 1007, reason = "invalid UTF-8 in text message"}, c:next())
    assert.is_false(c:is_open())
    assert.same({nil, "closed"}, {c:send("late")})
    t:close()
  end)

  it("finishes ws.sleep when the spec moves the clock, in order per connection", function()
    local t = testing.load([[return {message = function(conn, data)
      ws.sleep(tonumber(data))
      conn:send(data .. " at " .. ws.now())
    end}]], {now = 100})
    local c = t:connect()
    c:send("10")
    c:send("1") -- queued behind the first: events of a connection never overlap
    t:advance(9.5)
    assert.is_nil(c:next())
    t:advance(0.5)
    assert.same({"10 at 110.0"}, texts(c:received()))
    t:advance(1)
    assert.same({"1 at 111.0"}, texts(c:received()))
    local started = os.clock()
    t:advance(3600) -- an hour of virtual time
    assert.is_true(os.clock() - started < 1)
    t:close()
  end)

  it("lets the spec answer ws.http: responses, errors, delays and the call's timeout", function()
    local t = testing.load([[return {message = function(conn, data)
      local r, err = ws.http.get("http://auth.test/check?token=" .. data, {timeout = 5})
      conn:send(r and (r.status .. " " .. r.body .. " " .. r.headers["x-user"]) or ("error " .. err))
    end}]])
    local c = t:connect()
    c:send("a")
    assert.matches("^error no stand%-in answers ws.http", c:next().data)
    local asked = {}
    t:on_http(function(req)
      asked[#asked + 1] = req.method .. " " .. req.url
      local token = req.url:match("token=(%w+)")
      if token == "down" then return nil, "connection refused" end
      if token == "slow" then return {status = 200, body = "late", delay = 6} end
      return {status = 200, headers = {["X-User"] = token}, body = "ok", delay = 0.5}
    end)
    c:send("alice")
    assert.is_nil(c:next()) -- the answer comes half a second later
    t:advance(0.5)
    assert.same({kind = "text", data = "200 ok alice"}, c:next())
    c:send("down")
    assert.same({kind = "text", data = "error connection refused"}, c:next())
    c:send("slow")
    t:advance(5)
    assert.same({kind = "text", data = "error timeout"}, c:next())
    assert.same({"GET http://auth.test/check?token=alice", "GET http://auth.test/check?token=down",
                 "GET http://auth.test/check?token=slow"}, asked)
    t:close()
  end)

  it("pauses a client: queued and drain come from the server's own queue", function()
    local t = testing.load([[return {
      message = function(conn)
        local r
        for _ = 1, 100 do r = conn:send(string.rep("x", 1000)) end
        ws.state.last = r
      end,
      drain = function(conn) conn:send("drained") end,
    }]], {config = {max_buffered = 1048576}})
    local c = t:connect()
    c:pause()
    c:send("go")
    assert.equal("queued", t:eval("return ws.state.last"))
    assert.is_nil(c:next())
    c:resume()
    local got = c:received()
    assert.equal(101, #got)
    assert.equal("drained", got[101].data)
    t:close()
  end)

  it("serves plain HTTP and reloads from the app's file with the server's checks", function()
    local path = os.tmpname()
    local function write(src)
      local f = assert(io.open(path, "w"))
      f:write(src)
      f:close()
    end
    write('return {http = {["GET /v"] = function() return 200, "one" end}}')
    local t = testing.load(path)
    assert.same({200, "one"}, two(t:http("GET", "/v")))
    write('return {http = {["GET /v"] = function() return 200, "two" end}}')
    assert.is_true(t:reload())
    assert.same({200, "two"}, two(t:http("GET", "/v")))
    write("return {mesage = function() end}")
    assert.is_false(t:reload())
    assert.matches("unknown app field 'mesage'", t:log())
    assert.same({200, "two"}, two(t:http("GET", "/v")))
    t:close()
    os.remove(path)
  end)
  it("shows the server's state, counters, logs and errors", function()
    local t = testing.load([[return {
      open = function(conn) conn:subscribe("room") conn.data.name = "n" .. conn.id
        ws.state.opened = (ws.state.opened or 0) + 1 end,
      message = function(conn, data)
        if data == "boom" then error("boom") end
        ws.log.warn("said", {text = data, n = 3})
      end,
    }]])
    local a, b = t:connect(), t:connect()
    a:send("hi")
    b:send("boom")
    assert.equal(2, t.state.opened)
    assert.same({name = "n1"}, a:data())
    assert.same({"room"}, a:topics())
    assert.equal(1, t:subscribers("room")) -- b was closed (1011) by its handler's error
    assert.same({"room"}, t:topics())
    assert.equal(1, t:count())
    assert.equal(1, t:stats().handler_errors)
    assert.same({{level = "warn", msg = "said", fields = {text = "hi", n = 3}}}, t:logs("warn"))
    a:send('{"x": 1}')
    assert.same({}, a:received_json()) -- nothing came back
    local errs = t:errors()
    assert.equal(1, #errs)
    assert.equal("message", errs[1].handler)
    assert.equal(2, errs[1].conn)
    assert.matches("app.lua:5: boom$", errs[1].message)
    assert.matches("stack traceback", errs[1].traceback)
    assert.same({kind = "close", code = 1011, reason = "internal error"}, b:next())
    t:close()
  end)
end)

describe("ws.testing: t:on_pg answers ws.pg", function()
  -- An app whose messages are SQL (with "|"-separated parameters) and whose answers are the
  -- rows as JSON, or the error.
  local APP = [[
local db = assert(ws.pg.connect("dbname=none", {timeout = 5}))
return {message = function(conn, data)
  local sql, p = data:match("^([^|]*)|?(.*)$")
  local params = {}
  for v in p:gmatch("[^|]+") do params[#params + 1] = v == "NULL" and ws.null or tonumber(v) or v end
  local rows, n, state = db:query(sql, table.unpack(params))
  if not rows then return conn:send("error " .. n .. " " .. tostring(state)) end
  local out = {}
  for i, r in ipairs(rows) do
    out[i] = {}
    for k, v in pairs(r) do out[i][k] = v == ws.null and "NULL" or (math.type(v) or type(v)) .. ":" .. tostring(v) end
  end
  conn:send(ws.json.encode({rows = out, n = n}))
end}]]

  it("without a stand-in a query answers nil and an error naming on_pg", function()
    local t = testing.load(APP)
    local c = t:connect()
    c:send("SELECT 1")
    assert.equal("error no stand-in answers ws.pg in this test (on_pg) nil", c:next().data)
    t:close()
  end)

  it("hands the SQL and parameters to fn; its rows reach the app exactly as given", function()
    local t = testing.load(APP)
    local asked = {}
    t:on_pg(function(sql, params)
      asked[#asked + 1] = {sql, params}
      return {{id = 7, score = 1.5, name = "José", ok = true, gone = testing.null},
              {id = 8, score = 2.0, name = "", ok = false, gone = "x"}}
    end)
    local c = t:connect()
    c:send("SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3|42|hi|NULL")
    local got = json.decode(c:next().data)
    assert.same({n = 2, rows = {
      {id = "integer:7", score = "float:1.5", name = "string:José", ok = "boolean:true", gone = "NULL"},
      {id = "integer:8", score = "float:2.0", name = "string:", ok = "boolean:false", gone = "string:x"},
    }}, got)
    -- the parameters as the server would receive them: text, NULL as testing.null
    assert.same({{"SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3", {"42", "hi", testing.null}}}, asked)
    t:close()
  end)

  it("answers counts, empty results, errors with their SQLSTATE, and a raising fn", function()
    local t = testing.load(APP)
    t:on_pg(function(sql)
      if sql:match("^DELETE") then return {}, 3 end
      if sql:match("^UPDATE") then return end
      if sql:match("^INSERT") then return nil, "duplicate key value", "23505" end
      if sql:match("^BAD") then return "rows" end
      error("the spec's stand-in broke")
    end)
    local c = t:connect()
    c:send("DELETE FROM t")
    assert.same({n = 3, rows = {}}, json.decode(c:next().data))
    c:send("UPDATE t SET a = 1")
    assert.same({n = 0, rows = {}}, json.decode(c:next().data))
    c:send("INSERT INTO t VALUES (1)")
    assert.equal("error 23505: duplicate key value 23505", c:next().data)
    c:send("BAD")
    assert.equal("error the stand-in answered neither rows nor nil, err nil", c:next().data)
    c:send("SELECT")
    assert.matches("^error .*the spec's stand%-in broke nil$", c:next().data)
    t:close()
  end)

  it("refuses rows that are not plain data, naming what is wrong", function()
    local t = testing.load(APP)
    t:on_pg(function(sql)
      if sql == "A" then return {"not a row"} end
      return {{f = function() end}}
    end)
    local c = t:connect()
    c:send("A")
    assert.equal("error the stand-in's rows: row 1 is not a table nil", c:next().data)
    c:send("B")
    assert.matches("^error the stand%-in's rows: a row holds a function", c:next().data)
    t:close()
  end)

  it("answers on the simulated clock: a delay races the query's timeout", function()
    local t = testing.load(APP)
    t:on_pg(function(sql)
      local rows = {{v = sql}}
      rows.delay = sql == "slow" and 6 or 2
      return rows
    end)
    local c = t:connect()
    c:send("quick")
    assert.is_nil(c:next()) -- two seconds later
    t:advance(1.9)
    assert.is_nil(c:next())
    t:advance(0.1)
    assert.same({n = 1, rows = {{v = "string:quick"}}}, json.decode(c:next().data))
    c:send("slow")
    t:advance(5)
    assert.equal("error timeout nil", c:next().data)
    t:advance(2) -- the abandoned answer never arrives
    assert.is_nil(c:next())
    c:send("pending at the end") -- closing drops its answer and frees what it holds
    t:close()
  end)

  it("copies nested tables, and keeps answering after a reload (the pools stay)", function()
    local src = [[
local db = ws.pg.connect("dbname=none")
return {message = function(conn)
  local rows = db:query("SELECT doc FROM t")
  conn:send(ws.json.encode(rows[1].doc) .. " v%d")
end}]]
    local t = testing.load(src:format(1))
    t:on_pg(function() return {{doc = {tags = {"a", "b"}, n = testing.null}}} end)
    local c = t:connect()
    c:send("x")
    assert.same({tags = {"a", "b"}, n = json.null}, json.decode((c:next().data:gsub(" v1$", ""))))
    assert.is_true(t:reload(src:format(2)))
    c:send("x")
    assert.matches(" v2$", c:next().data)
    t:close()
  end)

  it("passes BEGIN, COMMIT and ROLLBACK to fn, which accepts them by answering nothing", function()
    local t = testing.load([[
local db = ws.pg.connect("dbname=none")
return {message = function(conn, data)
  local ok, err = db:transaction(function(tx)
    local rows, e = tx:query("UPDATE t SET v = $1", data)
    if not rows then return nil, e end
    if data == "raise" then error("no") end
    return rows, "done"
  end)
  conn:send(tostring(ok) .. " " .. tostring(err))
end}]])
    local seen = {}
    t:on_pg(function(sql, params)
      seen[#seen + 1] = sql .. (params[1] and " " .. params[1] or "")
      if params[1] == "bad" then return nil, "value out of range", "22003" end
      if sql == "UPDATE t SET v = $1" then return {}, 1 end
    end)
    local c = t:connect()
    c:send("good")
    assert.equal("table done", (c:next().data:gsub("^table: 0x%x+", "table")))
    c:send("bad")
    assert.equal("nil 22003: value out of range", c:next().data)
    c:send("raise")
    assert.same({kind = "close", code = 1011, reason = "internal error"}, c:next())
    assert.matches("app.lua:6: no$", t:errors()[1].message) -- raised again after the ROLLBACK
    assert.same({"BEGIN", "UPDATE t SET v = $1 good", "COMMIT",
                 "BEGIN", "UPDATE t SET v = $1 bad", "ROLLBACK",
                 "BEGIN", "UPDATE t SET v = $1 raise", "ROLLBACK"}, seen)
    t:close()
  end)
end)

describe("ws.testing: the in-memory Redis (t:redis)", function()
  local json = require "ws.json"
  local null = json.null

  -- An app whose message runs the Redis command it is sent (a JSON list) and answers the reply.
  local APP = [[
    local R = assert(ws.redis.connect("redis://cache.test:6379/0"))
    return {message = function(conn, data)
      local cmd = ws.json.decode(data)
      local reply, err
      if cmd[1] == "pipeline" then
        reply, err = R:pipeline(function(p)
          for i = 2, #cmd do p:call(table.unpack(cmd[i])) end
        end)
      else
        reply, err = R:call(table.unpack(cmd))
      end
      conn:send(ws.json.encode({reply = reply, err = err}))
    end}]]

  local function call(c, ...)
    c:send(json.encode({...}))
    local m = assert(c:next_json(), "no answer")
    return m.reply, m.err
  end

  it("answers nothing until the spec asks for it: nil and an error naming t:redis()", function()
    local t = testing.load(APP)
    local c = t:connect()
    local reply, err = call(c, "PING")
    assert.is_nil(reply)
    assert.equal("no stand-in answers ws.redis in this test (t:redis())", err)
    t:redis()
    assert.equal("PONG", (call(c, "PING")))
    t:close()
  end)

  it("answers from the loop with Redis's reply shapes", function()
    local t = testing.load([[
      local R = assert(ws.redis.connect("redis://cache.test"))
      return {message = function(conn)
        ws.state.order = {}
        ws.after(0, function() table.insert(ws.state.order, "timer") end)
        local r = R:call("INCR", "n")
        table.insert(ws.state.order, "reply " .. r)
      end}]])
    t:redis()
    local c = t:connect()
    c:send("go")
    assert.same({"timer", "reply 1"}, t.state.order) -- the reply came later, from the loop
    assert.equal("1", t:redis("GET", "n"))
    t:close()
  end)

  it("keeps strings, counters and expiries on the simulated clock", function()
    local t = testing.load(APP)
    t:redis()
    local c = t:connect()
    assert.equal("OK", (call(c, "SET", "k", "v", "EX", "10")))
    assert.equal("v", (call(c, "GET", "k")))
    assert.equal(null, t:redis("GET", "nothing"))
    assert.equal(10, (call(c, "TTL", "k")))
    t:advance(4)
    assert.equal(6, (call(c, "TTL", "k")))
    assert.equal(6000, t:redis("PTTL", "k"))
    t:advance(6.5)
    assert.equal(null, t:redis("GET", "k"))
    assert.equal(-2, t:redis("TTL", "k"))
    assert.equal("OK", t:redis("SET", "k", "v"))
    assert.equal(-1, t:redis("TTL", "k"))
    assert.equal(null, t:redis("SET", "k", "w", "NX"))
    assert.equal(null, t:redis("SET", "other", "w", "XX"))
    assert.equal("v", t:redis("SET", "k", "w", "GET"))
    assert.equal(1, t:redis("EXPIRE", "k", 3))
    assert.equal(0, t:redis("EXPIRE", "missing", 3))
    assert.equal(0, t:redis("EXPIRE", "k", 9, "NX")) -- it has one
    assert.equal(0, t:redis("EXPIRE", "k", 2, "GT"))
    assert.equal(3, t:redis("TTL", "k"))
    assert.same({nil, "ERR GT and LT options at the same time are not compatible"},
                {t:redis("EXPIRE", "k", 2, "GT", "LT")})
    t:advance(3)
    assert.equal(1, t:redis("EXISTS", "k")) -- Redis: expired once the time is past
    t:advance(0.001)
    assert.equal(0, t:redis("EXISTS", "k"))
    assert.equal(1, t:redis("INCR", "n"))
    assert.equal(11, t:redis("INCRBY", "n", 10))
    assert.equal(10, t:redis("DECR", "n"))
    t:redis("SET", "s", "x")
    assert.same({"10", null, "x"}, t:redis("MGET", "n", "none", "s"))
    assert.equal(2, t:redis("DEL", "n", "s", "none"))
    t:redis("SET", "k2", "abc")
    assert.same({nil, "ERR value is not an integer or out of range"}, {t:redis("INCR", "k2")})
    assert.same({nil, "ERR invalid expire time in 'set' command"}, {t:redis("SET", "a", "b", "EX", 0)})
    assert.same({nil, "ERR syntax error"}, {t:redis("SET", "a", "b", "NX", "XX")})
    t:redis("SET", "big", "9223372036854775807")
    assert.same({nil, "ERR increment or decrement would overflow"}, {t:redis("INCR", "big")})
    t:close()
  end)

  it("keeps hashes, lists and sets, and refuses the wrong type as Redis does", function()
    local t = testing.load(APP)
    t:redis()
    local c = t:connect()
    assert.equal(2, (call(c, "HSET", "h", "a", "1", "b", "2")))
    assert.equal(0, t:redis("HSET", "h", "a", "3"))
    assert.equal("3", t:redis("HGET", "h", "a"))
    assert.equal(13, t:redis("HINCRBY", "h", "a", 10))
    assert.same({"a", "13", "b", "2"}, (call(c, "HGETALL", "h")))
    assert.equal(1, t:redis("HDEL", "h", "b", "zz"))
    t:redis("HSET", "h", "t", "x")
    assert.same({nil, "ERR hash value is not an integer"}, {t:redis("HINCRBY", "h", "t", 1)})
    assert.equal(1, t:redis("HDEL", "h", "t"))
    assert.equal(3, (call(c, "RPUSH", "l", "a", "b", "c")))
    assert.equal(5, t:redis("LPUSH", "l", "y", "z"))
    assert.same({"z", "y", "a", "b", "c"}, t:redis("LRANGE", "l", 0, -1))
    assert.same({"b", "c"}, (call(c, "LRANGE", "l", -2, 100)))
    assert.same({}, t:redis("LRANGE", "l", 7, 9))
    assert.equal("OK", t:redis("LTRIM", "l", 1, -2))
    assert.same({"y", "a", "b"}, t:redis("LRANGE", "l", 0, -1))
    assert.equal("y", t:redis("LPOP", "l"))
    assert.equal("b", t:redis("RPOP", "l"))
    assert.equal(1, t:redis("LLEN", "l"))
    assert.equal("a", t:redis("LPOP", "l"))
    assert.equal(0, t:redis("EXISTS", "l")) -- an empty list is no key
    assert.equal(null, t:redis("LPOP", "l"))
    assert.equal(2, t:redis("SADD", "s", "b", "a", "b"))
    assert.equal(1, t:redis("SISMEMBER", "s", "a"))
    assert.equal(0, t:redis("SISMEMBER", "s", "c"))
    assert.same({"a", "b"}, (call(c, "SMEMBERS", "s")))
    assert.equal(1, t:redis("SREM", "s", "a", "c"))
    assert.same({"h", "s"}, t:redis("KEYS", "[hs]"))
    assert.same({"h", "s"}, t:redis("KEYS", "*"))
    assert.same({"h", "s"}, t:redis("KEYS", "?"))
    assert.same({"s"}, t:redis("KEYS", "s*"))
    local wrong = "WRONGTYPE Operation against a key holding the wrong kind of value"
    assert.same({nil, wrong}, {call(c, "GET", "h")})
    assert.same({nil, wrong}, {t:redis("LPUSH", "s", "x")})
    assert.same({nil, wrong}, {t:redis("HGET", "s", "x")})
    assert.same({nil, "ERR unknown command 'NOPE', with args beginning with: 'a' "},
                {call(c, "NOPE", "a")})
    assert.same({nil, "ERR wrong number of arguments for 'get' command"}, {t:redis("GET")})
    assert.equal("OK", t:redis("FLUSHALL"))
    assert.same({}, t:redis("KEYS", "*"))
    t:close()
  end)

  it("runs MULTI ... EXEC and pipelines in one go", function()
    local t = testing.load(APP)
    t:redis()
    local c = t:connect()
    local replies = call(c, "pipeline", {"MULTI"}, {"INCR", "n"}, {"INCR", "n"}, {"EXEC"},
                         {"GET", "n"}, {"HGET", "n", "f"})
    local wrong = "WRONGTYPE Operation against a key holding the wrong kind of value"
    assert.same({"OK", "QUEUED", "QUEUED", {1, 2}, "2", {false, wrong}}, replies)
    replies = call(c, "pipeline", {"MULTI"}, {"INCR", "n"}, {"NOPE"}, {"EXEC"})
    assert.equal("OK", replies[1])
    assert.equal("QUEUED", replies[2])
    assert.same({false, "EXECABORT Transaction discarded because of previous errors."}, replies[4])
    assert.equal("2", t:redis("GET", "n"))
    t:close()
  end)

  it("lets the spec answer commands first (t:on_redis), the data answering the rest", function()
    local t = testing.load(APP)
    t:redis()
    t:redis("SET", "k", "stored")
    local asked = {}
    t:on_redis(function(cmd)
      asked[#asked + 1] = table.concat(cmd, " ")
      if cmd[1] == "ZADD" then return 1 end
      if cmd[1] == "ZRANGE" then return {"a", null, {false, "ERR inner"}} end
      if cmd[1] == "INCR" then return nil, "LOADING Redis is loading the dataset in memory" end
      if cmd[1] == "BOOM" then error("spec failure", 0) end
      if cmd[1] == "FN" then return print end
    end)
    local c = t:connect()
    assert.equal(1, (call(c, "ZADD", "z", "1", "a")))
    assert.same({"a", null, {false, "ERR inner"}}, (call(c, "ZRANGE", "z", "0", "-1")))
    assert.equal("stored", (call(c, "GET", "k"))) -- nothing returned: the data answers
    assert.same({nil, "LOADING Redis is loading the dataset in memory"}, {call(c, "INCR", "n")})
    assert.same({nil, "ERR on_redis: spec failure"}, {call(c, "BOOM")})
    assert.same({nil, "ERR on_redis answered a function"}, {call(c, "FN")})
    assert.same({1, "stored"}, (call(c, "pipeline", {"ZADD", "z", "2", "b"}, {"GET", "k"})))
    assert.equal("stored", t:redis("GET", "k")) -- the spec's own calls reach the data
    assert.same({"ZADD z 1 a", "ZRANGE z 0 -1", "GET k", "INCR n", "BOOM", "FN", "ZADD z 2 b",
                 "GET k"}, asked)
    t:on_redis(nil)
    assert.matches("^ERR unknown command 'ZADD'", select(2, call(c, "ZADD", "z", "1", "a")))
    t:close()
  end)

  it("keeps its data across a reload; only the new version's subscriptions hear PUBLISH", function()
    local source = [[
      local R = assert(ws.redis.connect("redis://cache.test"))
      R:subscribe("news", function(_, msg) ws.broadcast("%s " .. msg) end)
      return {message = function(conn) conn:send("n=" .. R:call("INCR", "n")) end}]]
    local t = testing.load(source:format("v1"))
    t:redis()
    local c = t:connect()
    c:send("x")
    assert.equal("n=1", c:next().data)
    assert.equal(1, t:redis("PUBLISH", "news", "a"))
    assert.equal("v1 a", c:next().data)
    assert.is_true(t:reload(source:format("v2")))
    c:send("x")
    assert.equal("n=2", c:next().data)
    assert.equal(1, t:redis("PUBLISH", "news", "b"))
    assert.same({{kind = "text", data = "v2 b"}}, c:received())
    t:close()
  end)

  it("delivers PUBLISH to the app's subscriptions, from the app or the spec", function()
    local t = testing.load([[
      local R = assert(ws.redis.connect("redis://cache.test"))
      local sub = R:subscribe("news", function(channel, msg)
        ws.broadcast(channel .. ": " .. msg)
      end)
      return {message = function(conn, data)
        if data == "stop" then return sub:unsubscribe() end
        conn:send("receivers " .. R:call("PUBLISH", "news", data))
      end}]])
    t:redis()
    local a, b = t:connect(), t:connect()
    a:send("hello")
    assert.same({"news: hello", "receivers 1"}, (function()
      local out = {}
      for _, m in ipairs(a:received()) do out[#out + 1] = m.data end
      table.sort(out)
      return out
    end)())
    assert.same({kind = "text", data = "news: hello"}, b:next())
    assert.equal(1, t:redis("PUBLISH", "news", "from the spec"))
    assert.same({kind = "text", data = "news: from the spec"}, b:next())
    assert.equal(0, t:redis("PUBLISH", "elsewhere", "x"))
    a:send("stop")
    assert.equal(0, t:redis("PUBLISH", "news", "gone"))
    assert.is_nil(b:next())
    t:close()
  end)
end)

describe("ws.testing upstream stand-ins (t:upstream)", function()
  local testing = require "ws.testing"

  -- A handler that relays between its client and an upstream, waiting for each step.
  local relay = [[
    return {message = function(conn, data)
      local cmd, arg = data:match("^(%S+)%s*(.*)$")
      if cmd == "connect" then
        local opts = {protocols = {"v1", "v2"}, headers = {["X-Token"] = "t1"}, timeout = 3,
                      compression = true}
        local cl, err, status, body = ws.connect(arg, opts)
        if not cl then
          return conn:send(string.format("failed %s %s %s", err, tostring(status), tostring(body)))
        end
        ws.state.cl = cl
        return conn:send("open " .. tostring(cl.protocol))
      elseif cmd == "send" then
        return conn:send(tostring(ws.state.cl:send(arg)))
      elseif cmd == "receive" then
        local got, kind, code, reason = ws.state.cl:receive(2)
        return conn:send(string.format("%s %s %s %s", tostring(got), tostring(kind),
                                       tostring(code), tostring(reason)))
      elseif cmd == "close" then
        ws.state.cl:close(4000, "bye")
        local got, kind, code, reason = ws.state.cl:receive(2)
        return conn:send(string.format("closed %s %s %s", tostring(kind), tostring(code),
                                       tostring(reason)))
      end
    end}]]

  it("answers a waiting ws.connect, both ways, on the real client code", function()
    local t = testing.load(relay)
    local up = t:upstream("ws://feed.test/v1?x=1")
    up:accept({protocol = "v2"})
    local c = t:connect()
    c:send("connect ws://feed.test/v1?x=1")
    assert.equal("open v2", c:next().data)
    assert.is_true(up:is_open())
    assert.equal(1, up.connections)
    local req = up.request
    assert.equal("GET", req.method)
    assert.equal("/v1?x=1", req.path)
    assert.equal("t1", req.headers["x-token"])
    assert.equal("v1, v2", req.headers["sec-websocket-protocol"])
    assert.equal("feed.test", req.headers["host"])
    -- offered, not taken: the stand-in answers without extensions, so frames go uncompressed
    assert.matches("^permessage%-deflate", req.headers["sec-websocket-extensions"])
    c:send("send hello")
    assert.equal("sent", c:next().data)
    assert.same({kind = "text", data = "hello"}, up:next())
    assert.is_nil(up:next())
    assert.is_true(up:send("tick 1"))
    assert.is_true(up:send_binary("\0\1"))
    c:send("receive")
    assert.equal("tick 1 text nil nil", c:next().data)
    c:send("receive")
    assert.equal("\0\1 binary nil nil", c:next().data)
    c:send("close")
    assert.equal("closed closed 4000 ", c:next().data) -- the upstream's echo: the code alone
    assert.same({kind = "close", code = 4000, reason = "bye"}, up:next())
    assert.is_false(up:is_open())
    assert.same({nil, "the upstream has no open connection"}, {up:send("late")})
    t:close()
  end)

  it("passes the upstream's close code and a dropped connection's 1006 to the app", function()
    local t = testing.load(relay)
    local up = t:upstream("ws://feed.test/")
    local c = t:connect()
    c:send("connect ws://feed.test/")
    assert.equal("open nil", c:next().data)
    assert.is_true(up:close(4001, "maintenance"))
    c:send("receive")
    assert.equal("nil closed 4001 maintenance", c:next().data)
    assert.same({kind = "close", code = 4001, reason = ""}, up:next()) -- the app's echo
    c:send("connect ws://feed.test/")
    assert.equal("open nil", c:next().data)
    assert.equal(2, up.connections)
    assert.is_true(up:drop())
    c:send("receive")
    assert.matches("^nil closed 1006 ", c:next().data)
    t:close()
  end)

  it("refuses with a status and body, and times out on the simulated clock", function()
    local t = testing.load(relay)
    local up = t:upstream("ws://feed.test/")
    up:refuse(403, "no entry")
    local c = t:connect()
    c:send("connect ws://feed.test/")
    assert.equal("failed the server refused the upgrade with status 403 403 no entry",
                 c:next().data)
    up:accept({protocol = "v3"}) -- one the app did not offer: its client refuses the answer
    c:send("connect ws://feed.test/")
    assert.matches("^failed .*protocol", c:next().data)
    assert.same({kind = "close", code = 1006, reason = ""}, up:next()) -- it let go at once
    up:accept({protocol = "not a token"}) -- no such answer can be written: 500 says so
    c:send("connect ws://feed.test/")
    assert.equal("failed the server refused the upgrade with status 500 500 the stand-in's "
                 .. "answer cannot be written", c:next().data)
    up:accept({delay = 10})
    local before = t:now()
    c:send("connect ws://feed.test/")
    assert.is_nil(c:next())
    t:advance(2.9)
    assert.is_nil(c:next())
    t:advance(0.2)
    assert.equal("failed timeout nil nil", c:next().data)
    assert.is_true(t:now() - before < 3.2)
    t:advance(10) -- the late answer finds no one: nothing to report
    assert.is_nil(up:next())
    up:accept({delay = 1})
    c:send("connect ws://feed.test/")
    t:advance(1)
    assert.equal("open nil", c:next().data)
    t:close()
  end)

  it("never reaches the network: a URL without a stand-in fails at once naming t:upstream", function()
    local t = testing.load(relay)
    local c = t:connect()
    c:send("connect ws://127.0.0.1:1/")
    assert.equal("failed no stand-in for ws://127.0.0.1:1/ in this test (t:upstream) nil nil",
                 c:next().data)
    t:upstream("wss://secure.test/") -- no TLS in the kit: the stand-in answers in the clear
    c:send("connect wss://secure.test/")
    assert.equal("open nil", c:next().data)
    c:send("connect wss://secure.test:8443/")
    assert.matches("^failed no stand%-in for wss://secure.test:8443/", c:next().data)
    t:close()
  end)
  it("drives the callback style: messages, a drop, then the app's reconnect", function()
    local t = testing.load([[
      ws.state.events = {}
      local function note(s) table.insert(ws.state.events, s) end
      ws.connect("ws://feed.test/live", {
        reconnect = true, reconnect_delay = 1, reconnect_max_delay = 1,
        open = function(cl) note("open"); cl:send("subscribe") end,
        message = function(cl, data) note("message " .. data); ws.broadcast(data) end,
        close = function(cl, code, reason) note("close " .. code) end,
      })
      return {}]])
    -- the first attempt ran before the spec declared the upstream: it failed at once, without
    -- the network, and the app retries on the simulated clock
    local up = t:upstream("ws://feed.test/live")
    assert.equal(0, up.connections)
    assert.same({"close 1006"}, t.state.events)
    local c = t:connect()
    t:advance(1)
    assert.equal(1, up.connections)
    assert.same({kind = "text", data = "subscribe"}, up:next())
    up:send("a")
    up:send("b")
    assert.same({{kind = "text", data = "a"}, {kind = "text", data = "b"}}, c:received())
    assert.is_true(up:drop())
    assert.same({"close 1006", "open", "message a", "message b", "close 1006"}, t.state.events)
    t:advance(1)
    assert.equal(2, up.connections)
    assert.same({kind = "text", data = "subscribe"}, up:next())
    up:send("c")
    assert.same({kind = "text", data = "c"}, c:next())
    t:close()
  end)
end)

describe("ws.testing: the app's Lua heap", function()
  -- The app counts garbage-collection cycles with a finalizer that re-arms itself each cycle;
  -- each step of its loop leaves 128 KiB of garbage (string.rep's result and the concatenation).
  local GARBAGE = [[
local cycles = 0
local function sentinel()
  setmetatable({}, {__gc = function() cycles = cycles + 1; sentinel() end})
end
sentinel()
return {
  message = function(conn, data)
    local before, peak = cycles, 0
    for i = 1, tonumber(data) do
      local s = string.rep("x", 65536 - 8) .. string.format("%08d", i)
      peak = math.max(peak, collectgarbage("count"))
    end
    conn:send(string.format("%d %d", cycles - before, peak // 1))
  end,
}
]]

  it("collects a small heap once it grew by about 1 MiB, not at twice its live size", function()
    local t = load(GARBAGE)
    local c = t:connect()
    c:send("16") -- cycles end during this handler: the pause is set after it
    c:next()
    c:send("160") -- 20 MiB of garbage
    local cycles, peak = c:next().data:match("^(%d+) (%d+)$")
    cycles, peak = tonumber(cycles), tonumber(peak)
    -- at Lua's default pause (twice a live heap of ~150 KiB) it is a cycle per step: 160
    assert.is_true(cycles >= 10 and cycles <= 40, "cycles: " .. cycles)
    assert.is_true(peak < 2048, "peak: " .. peak .. " KiB")
    t:close()
  end)

  it("leaves the collector alone once the app sets it itself", function()
    local t = load('collectgarbage("incremental", 200)\n' .. GARBAGE)
    local c = t:connect()
    c:send("16")
    c:next()
    c:send("160")
    local cycles = tonumber(c:next().data:match("^(%d+) "))
    assert.is_true(cycles >= 120, "cycles: " .. cycles)
    t:close()
  end)
end)
