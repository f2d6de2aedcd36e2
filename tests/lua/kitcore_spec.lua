-- ws.kitcore: the real server (core, lb_* bindings, the app's own Lua state) in-process on a
-- simulated clock, its clients on in-memory connections. A small client below speaks the
-- handshake and frames; everything the server answers is the server's own code.
local kitcore = require "ws.kitcore"
local json = require "ws.json"

local TEXT, BINARY, CLOSE, PING = 1, 2, 8, 9

local function client(e, path)
  local c = {e = e, buf = ""}
  c.n, c.id = e:connect()
  e:write(c.n, "GET " .. (path or "/") .. " HTTP/1.1\r\nHost: kit\r\nUpgrade: websocket\r\n" ..
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" ..
    "Sec-WebSocket-Version: 13\r\n\r\n")
  local out = e:read(c.n)
  local head, rest = out:match("^(.-\r\n\r\n)(.*)$")
  assert(head, "no response head: " .. out)
  c.status = tonumber(head:match("^HTTP/1%.1 (%d+)"))
  c.head, c.buf = head, rest
  return c
end

local function send(c, data, opcode)
  c.e:write(c.n, kitcore.frame(opcode or TEXT, data))
end

-- The next frame from the server: opcode, payload; nil when none has come.
local function next_frame(c)
  local more, ended = c.e:read(c.n)
  c.buf = c.buf .. more
  c.ended = ended
  local op, payload, _, rest = kitcore.take(c.buf)
  if not op then return nil end
  c.buf = rest
  return op, payload
end

local function close_code(payload)
  return payload:byte(1) * 256 + payload:byte(2)
end

describe("ws.kitcore", function()
  it("runs the real handshake, frames and handlers over an in-memory connection", function()
    local e = assert(kitcore.load([[
      return {message = function(conn, data) conn:send("echo:" .. data) end}
    ]]))
    local c = client(e, "/chat")
    assert.equal(101, c.status)
    -- RFC 6455 §1.3's sample key and its accept value, computed by the server's own code
    assert.truthy(c.head:find("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", 1, true))
    send(c, "hi")
    assert.same({TEXT, "echo:hi"}, {next_frame(c)})
    c.e:write(c.n, kitcore.frame(TEXT, "a", false) .. kitcore.frame(0, "bc"))
    assert.same({TEXT, "echo:abc"}, {next_frame(c)})
    -- invalid UTF-8 in a text frame: the server's 1007
    send(c, "\xff")
    local op, payload = next_frame(c)
    assert.equal(CLOSE, op)
    assert.equal(1007, close_code(payload))
    e:close()
  end)

  it("refuses as the server does, and reports the server's reason when an app cannot load", function()
    local e = assert(kitcore.load([[
      return {upgrade = function(req) if req.path ~= "/ok" then return false, 403, "no" end end}
    ]]))
    assert.equal(403, client(e, "/no").status)
    assert.equal(101, client(e, "/ok").status)
    e:close()
    local bad, err, log = kitcore.load("return {mesage = function() end}\n")
    assert.is_nil(bad)
    assert.matches("the app failed to load", err)
    assert.matches("event=app_load_failed .*unknown app field 'mesage'", log)
  end)

  it("moves time only when told: ws.after, ws.every, idle timeout, an hour in milliseconds", function()
    local e = assert(kitcore.load([[
      ws.state.ticks = 0
      ws.every(1, function() ws.state.ticks = ws.state.ticks + 1 end)
      return {open = function(conn) ws.after(30, function() conn:send("late") end) end}
    ]], {config = {idle_timeout = 3600, ping_interval = 0}, now = 1000}))
    assert.equal(1000, e:now())
    local c = client(e)
    assert.is_nil(next_frame(c))
    e:advance(29.5)
    assert.is_nil(next_frame(c))
    e:advance(1)
    assert.same({TEXT, "late"}, {next_frame(c)})
    local t0 = os.clock()
    e:advance(3600)
    local ms = (os.clock() - t0) * 1000
    assert.equal(3630, e:eval("return ws.state.ticks"))
    assert.is_true(ms < 1000, ms .. " ms for an hour")
    if os.getenv("KIT_TIMING") then print(("an hour of virtual time: %.1f ms"):format(ms)) end
    local op, payload = next_frame(c) -- idle_timeout: the server's own close
    assert.equal(CLOSE, op)
    assert.equal(1001, close_code(payload))
    e:close()
  end)

  it("lets handlers wait: ws.sleep ends when the clock reaches it, in order per connection", function()
    local e = assert(kitcore.load([[
      return {message = function(conn, data)
        ws.sleep(5)
        conn:send("after:" .. data .. "@" .. ws.now())
      end}
    ]], {now = 0}))
    local c = client(e)
    send(c, "one")
    send(c, "two")
    assert.is_nil(next_frame(c))
    e:advance(4.9)
    assert.is_nil(next_frame(c))
    e:advance(0.2)
    assert.same({TEXT, "after:one@5.0"}, {next_frame(c)})
    e:advance(5)
    assert.same({TEXT, "after:two@10.0"}, {next_frame(c)})
    e:close()
  end)

  it("runs the messages of one read in order, a ping in its place, an error ending them", function()
    local e = assert(kitcore.load([[
      return {message = function(conn, data)
        if data == "boom" then error("boom in one read") end
        if data == "wait" then ws.sleep(1) end
        conn:send("echo:" .. data)
      end}
    ]], {now = 0}))
    local c = client(e)
    local function frames(...)
      local out = {}
      for i, data in ipairs({...}) do out[i] = kitcore.frame(TEXT, data) end
      return table.concat(out)
    end
    c.e:write(c.n, frames("a", "b") .. kitcore.frame(PING, "p") .. frames("wait", "c"))
    assert.same({TEXT, "echo:a"}, {next_frame(c)})
    assert.same({TEXT, "echo:b"}, {next_frame(c)})
    assert.same({10, "p"}, {next_frame(c)})
    assert.is_nil(next_frame(c)) -- "c" waits behind "wait"
    e:advance(1)
    assert.same({TEXT, "echo:wait"}, {next_frame(c)})
    assert.same({TEXT, "echo:c"}, {next_frame(c)})
    c.e:write(c.n, frames("d", "boom", "never"))
    assert.same({TEXT, "echo:d"}, {next_frame(c)})
    local op, payload = next_frame(c)
    assert.equal(CLOSE, op)
    assert.equal(1011, close_code(payload))
    assert.is_nil(next_frame(c))
    e:close()
  end)

  it("pushes back on a client that does not read: queued, drain, as the server does", function()
    local e = assert(kitcore.load([[
      ws.state.results = {}
      return {
        message = function(conn, data)
          for i = 1, 200 do table.insert(ws.state.results, (conn:send(string.rep("x", 1000)))) end
        end,
        drain = function(conn) ws.state.drained = true end,
      }
    ]], {config = {max_buffered = 262144}}))
    local c = client(e)
    e:pause(c.n, true)
    send(c, "go")
    local results = e:eval("return ws.state.results")
    assert.equal(200, #results)
    assert.equal("sent", results[1])
    assert.equal("queued", results[200])
    assert.is_nil(e:eval("return ws.state.drained"))
    e:pause(c.n, false)
    local n = 0
    while next_frame(c) do n = n + 1 end
    assert.equal(200, n)
    assert.equal(true, e:eval("return ws.state.drained"))
    e:close()
  end)

  it("copies data out of the app's state and hands over the rest as handles", function()
    local e = assert(kitcore.load([[
      local shared = {n = 1}
      ws.state.v = {list = {1, 2.5, "x", true}, a = shared, b = shared,
                    double = function(x) return x * 2 end}
      ws.state.v.self = ws.state.v
      return {open = function(conn) ws.state.conn = conn end}
    ]]))
    local v = e:eval("return ws.state.v")
    assert.same({1, 2.5, "x", true}, v.list)
    assert.equal(v.a, v.b)
    assert.equal(v, v.self)
    assert.equal(6, v.double(3)) -- runs in the app's state
    local c = client(e)
    local conn = e:eval("return ws.state.conn")
    assert.equal(conn, e:eval("return ws.get(" .. c.id .. ")")) -- one handle per object
    assert.equal("conn " .. c.id, tostring(conn))
    assert.equal(c.id, conn.id)
    assert.equal("sent", conn:send("from the spec"))
    assert.same({TEXT, "from the spec"}, {next_frame(c)})
    local ok, err = pcall(conn.close, conn, 5000) -- the server's own check and message
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'close' %(close code must be", err) -- named as read
    local ws = e:eval("return ws")
    ok, err = pcall(function() ws.x = 1 end)
    assert.matches("read%-only", err)
    local n = 0
    for _ in pairs(ws) do n = n + 1 end
    assert.is_true(n > 10)
    local none, why = e:eval("error('no')")
    assert.is_nil(none)
    assert.matches("eval:1: no", why)
    e:close()
  end)

  it("answers plain HTTP through the app's routes, and logs with the server's own lines", function()
    local e = assert(kitcore.load([[
      return {http = {["GET /hello"] = function(req) return 200, "hi " .. (req.query.n or "?") end}}
    ]]))
    local n = e:connect()
    e:write(n, "GET /hello?n=7 HTTP/1.1\r\nHost: kit\r\n\r\n")
    local out = e:read(n)
    assert.matches("^HTTP/1%.1 200", out)
    assert.matches("\r\n\r\nhi 7$", out)
    assert.matches("event=access", e:log())
    e:close()
  end)
  it("answers ws.http from the spec: the request as sent, responses, errors, delays, timeouts", function()
    local e = assert(kitcore.load([[
      return {message = function(conn, data)
        local opts = {headers = {Authorization = "Bearer t"}, timeout = 2}
        local r, err
        if data == "post" then
          r, err = ws.http.post("http://api.test/items?x=1", "payload", opts)
        else
          r, err = ws.http.get("http://api.test/" .. data, opts)
        end
        if not r then return conn:send("err:" .. err) end
        conn:send(r.status .. ":" .. r.body .. ":" .. tostring(r.headers["x-y"]))
      end}
    ]], {now = 0}))
    local c = client(e)
    send(c, "a")
    local op, payload = next_frame(c)
    assert.equal(TEXT, op)
    assert.matches("^err:no stand%-in answers ws.http", payload)

    local seen = {}
    e:on_http(function(req)
      table.insert(seen, req)
      if req.url:find("/down$") then return nil, "upstream down" end
      if req.url:find("/slow$") then return {status = 200, body = "late", delay = 3} end
      if req.url:find("/later$") then return {status = 200, body = "soon", delay = 1} end
      if req.url:find("/boom$") then error("stand-in broke") end
      return {status = 201, headers = {["X-Y"] = "z"}, body = "ok"}
    end)
    send(c, "post")
    assert.same({TEXT, "201:ok:z"}, {next_frame(c)})
    assert.equal("POST", seen[1].method)
    assert.equal("http://api.test/items?x=1", seen[1].url)
    assert.equal("Bearer t", seen[1].headers.authorization)
    assert.equal("payload", seen[1].body)

    send(c, "down")
    assert.same({TEXT, "err:upstream down"}, {next_frame(c)})
    send(c, "boom")
    op, payload = next_frame(c)
    assert.matches("stand%-in broke", payload)

    send(c, "later")
    assert.is_nil(next_frame(c))
    e:advance(1)
    assert.same({TEXT, "200:soon:nil"}, {next_frame(c)})

    send(c, "slow") -- answers after 3 s; the call's timeout is 2 s
    e:advance(1.9)
    assert.is_nil(next_frame(c))
    e:advance(0.2)
    assert.same({TEXT, "err:timeout"}, {next_frame(c)})
    e:advance(5)
    assert.is_nil(next_frame(c))
    e:close()
  end)
  it("applies per-address limits to in-memory peers, and carries a thousand clients", function()
    local e = assert(kitcore.load([[
      return {message = function(conn, data) ws.broadcast(data) end}
    ]], {config = {max_connections_per_ip = 1000}}))
    local clients = {}
    local t0 = os.clock()
    for i = 1, 1000 do
      clients[i] = client(e)
      assert.equal(101, clients[i].status)
    end
    local n = e:connect() -- the 1001st from 127.0.0.1: refused at once
    local out, ended = e:read(n)
    assert.matches("^HTTP/1%.1 503.*too many connections from this address\n$", out)
    assert.is_true(ended)
    local n2 = e:connect("10.1.1.1") -- another address is welcome
    e:write(n2, "GET /healthz HTTP/1.1\r\nHost: kit\r\n\r\n")
    assert.matches("^HTTP/1%.1 200", (e:read(n2)))
    send(clients[1], "to all")
    for i = 1, 1000 do
      assert.same({TEXT, "to all"}, {next_frame(clients[i])})
    end
    local ms = (os.clock() - t0) * 1000
    if os.getenv("KIT_TIMING") then print(("1000 clients, a broadcast: %.0f ms"):format(ms)) end
    e:close()
  end)
end)
