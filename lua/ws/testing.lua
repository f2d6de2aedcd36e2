--[==[ ws.testing: run a wsserver app in the real server, in-process, for busted specs.

  local testing = require "ws.testing"
  local t = testing.load("app.lua", {config = {max_message_size = 1024}})
  local a = t:connect{path = "/chat", query = {token = "x"}}    -- runs upgrade and open
  a:send("hello")                                              -- runs message
  assert.same({kind = "text", data = "hello"}, a:next())       -- what the client received
  t:advance(5)                                                 -- ws.after/every, ws.sleep, timeouts

The app runs in the real server: the C core, the lb_* bindings and the app's own Lua state,
loaded as a C module (ws.kitcore, built by `make`; `wsserver --test` finds it). Its clients are
in-memory connections whose bytes go through the server's own handshake, frame and session
code, and time is simulated: it moves only with t:advance(seconds), so an hour of timers runs in
milliseconds. Handlers may wait: ws.sleep ends when the clock gets there, t:on_http(fn)
answers ws.http and t:on_pg(fn) ws.pg. Nothing here re-implements the server: this file builds what a client sends,
reads what the server wrote, and moves values between the two Lua states (data is copied; the
app's functions, conns and other objects reach the spec as handles whose fields and methods run
in the server). Clients answer pings and a close frame they did not start, as browsers do,
unless paused (c:pause()): then the server's send queue grows ("queued", drain, 1008).

  testing.load(path_or_source [, opts]) -> t     (raises with the server's reason on failure)
      opts.config   options that win over the app's config table (like command-line flags)
      opts.now      the simulated clock's start in seconds (default 1e9)
      opts.name     the file name for source (default "app.lua")
  t:connect([opts]) -> client | nil, status, body, headers
      opts: path, query (table or string), headers (table), cookies (table or string),
            protocols (list), origin, host, peer ("ip[:port]")
  t:http(method, target [, headers]) -> status, body, headers (names lower-cased)
  t:advance(seconds)  t:now()  t:flush()  t:shutdown([reason])  t:close()
  t:reload([source_or_path]) -> true | false, err
  t:on_http(fn)   fn(req) -> {status =, headers =, body =, delay =} | nil, err
  t:on_pg(fn)     fn(sql, params) -> rows [, count] (rows.delay =) | nothing | nil, err [, sqlstate]
  t:redis([command, ...]) -> reply | nil, err   an in-memory Redis answers ws.redis from now on
  t:on_redis(fn)  fn({name, arg, ...}) -> nothing (the data answers) | reply | nil, err
  t:upstream(url) -> up   a stand-in server for the app's ws.connect(url) (others fail at once)
      up:accept([{protocol =, delay =}])  up:refuse(status [, body [, {delay =}]])
      up:send(text)  up:send_binary(bytes) -> true | nil, err   up:close([code [, reason]])
      up:drop()  up:next() -> {kind = "text"|"binary", data =} | {kind = "close", code =,
      reason =} | nil   up:received()  up:is_open()  up.connections
      up.request -> {method =, path =, headers =} (the last handshake; names lower-cased)
  t.state (ws.state)  t.ws (the app's ws)  t.config  t:eval(code)  t:log()
  t:subscribers(topic)  t:topics()  t:count()  t:get(id)  t:stats()
  t:logs([min_level]) -> {{level =, msg =, fields =}, ...}   every ws.log line
  t:errors() -> {{handler =, conn =, message =, traceback =}, ...}   the handler_error lines
  client: c.id  c.conn (the server's conn)  c.protocol  c.pings  c.close_code  c.close_reason
      c:send(text)  c:send_binary(bytes) -> true | nil, "closed"
      c:close([code [, reason]])  c:drop()  c:pause()  c:resume()  c:is_open()
      c:next() -> {kind = "text"|"binary", data =} | {kind = "close", code =, reason =} | nil
      c:received() -> list (next and received consume)   c:history() -> everything so far
      c:next_json()  c:received_json()  c:topics()  c:data()
]==]

local json = require "ws.json"

local M = {}

-- The app runs in the real server (the C core, the lb_* bindings, its own Lua state) loaded as a
-- C module, ws.kitcore, on a simulated clock; clients are in-memory connections speaking the
-- real handshake and frames. Nothing below re-implements the server: it builds requests and
-- frames as a client does and reads what the server wrote.

local Real, RealClient = {}, {}
RealClient.__index = RealClient

-- t.state: ws.state as it is now (data copied, conns and functions as handles; see t:eval);
-- t.ws: the app's ws table (a handle); t.config: the options the server runs with.
function Real.__index(t, k)
  if k == "state" then
    return t:eval("return ws.state")
  elseif k == "ws" then
    return t:eval("return ws")
  elseif k == "config" then
    return t.e:config()
  end
  return Real[k]
end

--- t:get(id) -> the server's conn with that id (a handle), or nil.
function Real:get(id)
  return self:eval(string.format("return ws.get(%d)", id))
end

local OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10

local function pct(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- A query (percent-encoded) or cookie header from a table; a string as it is.
local function form(v, sep, encode)
  if type(v) ~= "table" then
    return v
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = (encode and pct(k) or k) .. "=" .. (encode and pct(v[k]) or tostring(v[k]))
  end
  return table.concat(parts, sep)
end

local function head_lines(lines, headers)
  local names = {}
  for k in pairs(headers or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do lines[#lines + 1] = k .. ": " .. headers[k] end
  return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

-- status, headers (names lower-cased), the bytes after the head; nil before a whole head.
local function parse_head(bytes)
  local head, rest = bytes:match("^(.-)\r\n\r\n(.*)$")
  if not head then
    return nil
  end
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
    headers[name:lower()] = value
  end
  return tonumber(head:match("^HTTP/1%.1 (%d+)")), headers, rest
end

--- testing.load(path_or_source [, {config =, now =, name =}]) -> t: the app in the real server,
--- in-process, on a simulated clock starting at now (default 1e9). Raises with the server's
--- reason when the app does not load. testing.start is the same function.
function M.load(app, opts)
  opts = opts or {}
  local kitcore = require "ws.kitcore"
  local e, err, log = kitcore.load(app, {config = opts.config, now = opts.now, name = opts.name})
  if not e then
    error("ws.testing.load: " .. Real._load_failure(err, log or ""), 2)
  end
  return setmetatable({e = e, core = kitcore, clients = {}}, Real)
end

--- t:connect([{path =, query =, headers =, cookies =, protocols =, origin =, peer =}]) -> client,
--- or nil, status, body, headers when the server refuses the upgrade.
function Real:connect(o)
  if self.shut then
    error("ws.testing: the server is shutting down: it accepts no connection", 2)
  end
  o = o or {}
  local target = o.path or "/"
  local query = form(o.query, "&", true)
  if query and query ~= "" then
    target = target .. (target:find("?", 1, true) and "&" or "?") .. query
  end
  local lines = {"GET " .. target .. " HTTP/1.1", "Host: " .. (o.host or "127.0.0.1"),
                 "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"}
  if o.protocols and #o.protocols > 0 then
    lines[#lines + 1] = "Sec-WebSocket-Protocol: " .. table.concat(o.protocols, ", ")
  end
  if o.origin then lines[#lines + 1] = "Origin: " .. o.origin end
  local cookies = form(o.cookies, "; ")
  if cookies and cookies ~= "" then lines[#lines + 1] = "Cookie: " .. cookies end
  local ip, port = (o.peer or ""):match("^%[?([^%]]-)%]?:(%d+)$")
  ip = ip or o.peer
  local n, id = self.e:connect(ip, tonumber(port))
  self.e:write(n, head_lines(lines, o.headers))
  local status, headers, rest = parse_head(self.e:read(n))
  if status ~= 101 then
    self.e:shutdown(n)
    return nil, status, rest, headers
  end
  local c = setmetatable({t = self, n = n, id = id, buf = rest, queue = {}, all = {}, pings = {},
                          protocol = headers["sec-websocket-protocol"]}, RealClient)
  self.clients[#self.clients + 1] = c
  -- c.conn: the server's conn, a handle whose methods and fields run in the server (a stale
  -- handle once the connection is gone, as in the app)
  c.conn = self:eval(string.format("return ws.get(%d)", id))
  c:_read()
  return c
end

--- t:http(method, target [, headers]) -> status, body, headers (names lower-cased).
function Real:http(method, target, headers)
  local n = self.e:connect()
  self.e:write(n, head_lines({method .. " " .. target .. " HTTP/1.1", "Host: 127.0.0.1"}, headers))
  local status, hdrs, body = parse_head(self.e:read(n))
  self.e:shutdown(n)
  hdrs["connection"], hdrs["content-length"] = nil, nil -- the transport's, not the app's
  return status, body, hdrs
end

--- t:advance(seconds): moves the clock; timers, timeouts and waiting handlers fire on the way,
--- and the clients read (and answer pings) at each of those moments, as live clients would.
function Real:advance(seconds)
  local target = self.e:now() + seconds
  repeat
    local now, at = self.e:now(), self.e:next_timer()
    self.e:advance((at and at > now and at < target) and at - now or target - now)
    for _, c in ipairs(self.clients) do c:_read() end
  until self.e:now() >= target
end

function Real:now()
  return self.e:now()
end

--- t:on_http(fn): fn(req) answers the app's ws.http calls: req = {method =, url =, headers =,
--- body =}; fn returns {status =, headers =, body =, delay = seconds} or nil, err.
function Real:on_http(fn)
  self.e:on_http(fn)
end

--- t:on_pg(fn): fn(sql, params) answers the app's ws.pg queries, BEGIN, COMMIT and ROLLBACK
--- included: params are the values as the server would receive them (strings; testing.null for
--- NULL); fn returns rows (an array of tables keyed by column name, reaching the app as given;
--- rows.delay = seconds before the answer) and the count (default #rows), nothing (no rows), or
--- nil, err [, sqlstate]. nil: no stand-in (queries answer nil, err).
function Real:on_pg(fn)
  self.e:on_pg(fn)
end

--- t:redis(): from now on an in-memory Redis of this test answers the app's ws.redis (every URL
--- reaches it; without t:redis(), calls answer nil, err). t:redis(command, ...) also runs a command
--- on it at once and returns the reply as ws.redis gives it (json.null for nil), or nil, err.
function Real:redis(...)
  self.e:redis()
  if select("#", ...) > 0 then
    local reply, err = self.e:redis_call(json.null, ...)
    for _, c in ipairs(self.clients) do c:_read() end -- what a PUBLISH set off
    return reply, err
  end
end

--- t:on_redis(fn): fn({name, arg, ...}) is asked first for each command the app sends to the
--- in-memory Redis (t:redis()): nothing lets the data answer, a reply (string, integer, json.null,
--- list) or nil, err (an error reply) answers instead. nil: none.
function Real:on_redis(fn)
  self.e:on_redis(fn)
end

local Upstream = {}

--- t:upstream(url) -> up: from now on the app's ws.connect(url) (the URL exactly as given)
--- reaches this stand-in server instead of the network; it accepts unless told otherwise.
function Real:upstream(url)
  self.upstreams = self.upstreams or {}
  local id = self.e:upstream(url)
  self.upstreams[id] = self.upstreams[id] or setmetatable({t = self, id = id, url = url}, Upstream)
  return self.upstreams[id]
end

function Upstream.__index(up, k)
  if k == "request" or k == "connections" then
    local st = up.t.e:upstream_state(up.id)
    if k == "connections" then return st.connections end
    if not st.request then return nil end
    local method, path = st.request:match("^(%S+) (%S+)")
    local headers = {}
    for name, value in st.request:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
      headers[name:lower()] = value
    end
    return {method = method, path = path, headers = headers}
  end
  return Upstream[k]
end

-- After the upstream acted: the browsers read what the app did about it.
function Upstream:_settled(...)
  for _, c in ipairs(self.t.clients) do c:_read() end
  return ...
end

--- up:accept([{protocol =, delay =}]): answer later handshakes with 101 (picking protocol),
--- delay seconds (simulated) after the request.
function Upstream:accept(o)
  o = o or {}
  self.t.e:upstream_answer(self.id, 101, o.protocol or "", o.delay)
end

--- up:refuse(status [, body [, {delay =}]]): answer later handshakes with status and body.
function Upstream:refuse(status, body, o)
  assert(status ~= 101, "ws.testing: up:refuse takes a status 200-599 (up:accept answers 101)")
  self.t.e:upstream_answer(self.id, status, body or "", o and o.delay)
end

function Upstream:send(text)
  return self:_settled(self.t.e:upstream_send(self.id, text, false))
end

function Upstream:send_binary(bytes)
  return self:_settled(self.t.e:upstream_send(self.id, bytes, true))
end

--- up:close([code [, reason]]): a close frame, then the upstream ends the connection.
function Upstream:close(code, reason)
  return self:_settled(self.t.e:upstream_close(self.id, code, reason))
end

--- up:drop(): ends the connection without a close frame (the app sees 1006).
function Upstream:drop()
  return self:_settled(self.t.e:upstream_drop(self.id))
end

function Upstream:is_open()
  return self.t.e:upstream_state(self.id).open
end

--- up:next() -> what the app sent next: {kind = "text"|"binary", data =}, or {kind = "close",
--- code =, reason =} (1006: the app let the connection go without one), or nil.
function Upstream:next()
  return self.t.e:upstream_next(self.id)
end

function Upstream:received()
  local out = {}
  for ev in function() return self.t.e:upstream_next(self.id) end do out[#out + 1] = ev end
  return out
end

--- t:reload([source_or_path]) -> true | false, err: a new version, as SIGHUP does: from the app's
--- file as it is now, or, for an app given as source, from new source (or a file's).
function Real:reload(src)
  if src then
    local f = not src:find("\n") and io.open(src, "rb")
    if f then
      src = f:read("a")
      f:close()
    end
    local path = self.e:path()
    local scratch = path:find("^/dev/shm/wskit%.") or path:find("^/tmp/wskit%.")
    assert(scratch, "ws.testing: t:reload(source) needs an app given as source")
    f = assert(io.open(path, "wb"))
    f:write(src)
    f:close()
  end
  local ok = self.e:reload()
  for _, c in ipairs(self.clients) do c:_read() end
  if ok then
    return true
  end
  return false, (Real._load_failure("", self.e:log()):gsub("^.-: the app failed to load: ", ""))
end

--- t:shutdown([reason]): a graceful shutdown, as SIGTERM: app.shutdown(reason), then every
--- connection closed with 1001 (in batches, as the clock moves).
function Real:shutdown(reason)
  self.shut = true
  self.e:shutdown_server(reason)
  for _, c in ipairs(self.clients) do c:_read() end
end

--- t:flush(): lets what is pending happen (the loop runs until nothing moves).
function Real:flush()
  self.e:advance(0)
  for _, c in ipairs(self.clients) do c:_read() end
end

--- t:eval(code) -> value: runs code in the app's Lua state (ws.state, its globals) and returns
--- a copy of its first result: tables deeply, functions and userdata as "<type>" strings, a
--- connection as "<conn ID>". Raises the app state's error.
function Real:eval(code)
  local ok, v, err = pcall(self.e.eval, self.e, code)
  if not ok or (v == nil and err) then
    error(ok and err or v, 2)
  end
  return v
end

function Real:stats()
  return self:eval("return ws.stats()")
end

function Real:count()
  return self:eval("return ws.count()")
end

function Real:topics()
  return self:eval("return ws.topics()")
end

function Real:subscribers(topic)
  return self:eval(string.format("return ws.subscribers(%q)", topic))
end

-- The key=value fields of one log line (values unquoted and unescaped).
local function log_fields(line)
  local f, i = {}, 1
  while i <= #line do
    local k, j = line:match("^([%w_]+)=()", i)
    if not k then
      i = (line:find(" ", i, true) or #line) + 1
    elseif line:sub(j, j) == '"' then
      local v, p = {}, j + 1
      while p <= #line and line:sub(p, p) ~= '"' do
        local ch = line:sub(p, p)
        if ch == "\\" then
          p = p + 1
          ch = ({n = "\n", t = "\t"})[line:sub(p, p)] or line:sub(p, p)
        end
        v[#v + 1] = ch
        p = p + 1
      end
      f[k], i = table.concat(v), p + 2
    else
      local v, p = line:match("^(%S*)()", j)
      f[k], i = v, p + 1
    end
  end
  return f
end

local LEVELS = {debug = 1, info = 2, warn = 3, error = 4}

-- The fields of the server's log lines for event.
function Real:_log_events(event)
  local out = {}
  for line in self.e:log():gmatch("[^\n]+") do
    local f = log_fields(line)
    if f.event == event then
      out[#out + 1] = f
    end
  end
  return out
end

-- Why the app did not load, from the server's error and log: "<file>: the app failed to load:
-- <reason>", "<file>: load() failed: <error>", or an option's own message.
function Real._load_failure(err, log)
  local failed, handler
  for line in log:gmatch("[^\n]+") do
    local f = log_fields(line)
    if f.event == "app_load_failed" then failed = f end
    if f.event == "handler_error" then handler = f end
  end
  local file, what = err:match("^(.-): (load%(%) failed)")
  if what and handler then
    return file .. ": load() failed: " .. handler.error:match("^[^\n]*")
  end
  if not failed then
    return err
  end
  local reason = failed.error
  if reason:find("(see the handler_error above)", 1, true) and handler then
    reason = reason:gsub(" %(see the handler_error above%)", "") .. ": " ..
             handler.error:match("^[^\n]*")
  end
  return (failed.file or "app") .. ": the app failed to load: " .. reason
end

--- t:logs([min_level]) -> {{level =, msg =, fields =}, ...}: the app's ws.log lines.
function Real:logs(level)
  local out = {}
  for line in self.e:log():gmatch("[^\n]+") do
    local f = log_fields(line)
    if f.event == "app" and LEVELS[f.level] >= LEVELS[level or "debug"] then
      local fields = {}
      for k, v in pairs(f) do
        if k ~= "level" and k ~= "event" and k ~= "msg" and k ~= "worker" then
          fields[k] = v:match("^%-?%d+$") and math.tointeger(v) or v -- integers are logged as such
        end
      end
      out[#out + 1] = {level = f.level, msg = f.msg, fields = fields}
    end
  end
  return out
end

--- t:errors() -> {{handler =, conn =, message =, traceback =}, ...}: the server's handler_error
--- lines (message: the error's first line).
function Real:errors()
  local out = {}
  for line in self.e:log():gmatch("[^\n]+") do
    local f = log_fields(line)
    if f.event == "handler_error" then
      out[#out + 1] = {handler = f.handler, conn = tonumber(f.conn), traceback = f.error,
                       message = f.error:match("^[^\n]*")}
    end
  end
  return out
end

--- t:log() -> text: the server's log lines so far.
function Real:log()
  return self.e:log()
end

function Real:close()
  self.e:close()
end

-- Reads what the server wrote: answers pings and a close it did not start, as a browser does.
function RealClient:_read()
  if self.ended then
    return
  end
  local more, ended = self.t.e:read(self.n)
  self.buf = self.buf .. more
  while true do
    local op, payload, fin, rest = self.t.core.take(self.buf)
    if not op then break end
    self.buf = rest
    self:_frame(op, payload, fin)
  end
  if ended then
    self.ended = true
    self.t.e:shutdown(self.n)
  end
end

function RealClient:_push(entry)
  self.queue[#self.queue + 1] = entry
  self.all[#self.all + 1] = entry
end

function RealClient:_frame(op, payload, fin)
  if op == OP_PING then
    self.pings[#self.pings + 1] = payload
    if not self.close_sent then self.t.e:write(self.n, self.t.core.frame(OP_PONG, payload)) end
  elseif op == OP_CLOSE then
    local code = #payload >= 2 and payload:byte(1) * 256 + payload:byte(2) or 1005
    self.close_code, self.close_reason = code, payload:sub(3)
    self:_push({kind = "close", code = code, reason = payload:sub(3)})
    if not self.close_sent then
      self.close_sent = true
      self.t.e:write(self.n, self.t.core.frame(OP_CLOSE, payload))
    end
  elseif op ~= OP_PONG then
    if op ~= 0 then self.fragments = {op = op} end
    self.fragments[#self.fragments + 1] = payload
    if fin then
      local kind = self.fragments.op == OP_TEXT and "text" or "binary"
      self:_push({kind = kind, data = table.concat(self.fragments)})
      self.fragments = nil
    end
  end
end

function RealClient:_write(op, data)
  if self.close_sent or self.ended then
    return nil, "closed"
  end
  self.t.e:write(self.n, self.t.core.frame(op, data))
  for _, c in ipairs(self.t.clients) do c:_read() end
  return true
end

--- c:send(text), c:send_binary(bytes) -> true | nil, "closed"
function RealClient:send(text)
  return self:_write(OP_TEXT, text)
end

function RealClient:send_binary(bytes)
  return self:_write(OP_BINARY, bytes)
end

--- c:close([code [, reason]]): a close frame; the server answers and ends the connection. Like a
--- browser, refuses a code a client may not send and a reason without a code.
function RealClient:close(code, reason)
  code = code ~= nil and (math.tointeger(code) or code) or nil
  if code ~= nil and (math.type(code) ~= "integer" or not (code == 1000 or
      (code >= 1001 and code <= 1003) or (code >= 1007 and code <= 1014) or
      (code >= 3000 and code <= 4999))) then
    error("ws.testing: a client may close with 1000-1003, 1007-1014 or 3000-4999, not " ..
          tostring(code), 2)
  end
  if code == nil and reason and reason ~= "" then
    error("ws.testing: a close reason needs a code", 2)
  end
  local payload = code and string.char(code // 256, code % 256) .. (reason or "") or ""
  local ok, err = self:_write(OP_CLOSE, payload)
  self.close_sent = true
  return ok, err
end

--- c:drop(): the client goes away without a close frame.
function RealClient:drop()
  self.t.e:shutdown(self.n)
  self.close_sent = true
  for _, c in ipairs(self.t.clients) do c:_read() end
end

--- c:pause(), c:resume(): stop and start reading (the server's send queue grows meanwhile).
function RealClient:pause()
  self.t.e:pause(self.n, true)
end

function RealClient:resume()
  self.t.e:pause(self.n, false)
  for _, c in ipairs(self.t.clients) do c:_read() end
end

function RealClient:is_open()
  self:_read()
  return not self.ended and not self.close_sent and self.close_code == nil
end

--- c:next() -> {kind = "text"|"binary", data =} | {kind = "close", code =, reason =} | nil
function RealClient:next()
  self:_read()
  return table.remove(self.queue, 1)
end

function RealClient:received()
  self:_read()
  local out = self.queue
  self.queue = {}
  return out
end

function RealClient:history()
  self:_read()
  return self.all
end

--- c:data(), c:topics(): the connection's conn.data and topics, copied from the server.
function RealClient:data()
  return self.t:eval(string.format("local c = ws.get(%d) return c and c.data", self.id))
end

function RealClient:topics()
  return self.t:eval(string.format("local c = ws.get(%d) return c and c:topics()", self.id))
end

--- c:next_json() -> the next message decoded (it stays queued when it is not JSON text);
--- c:received_json() -> the waiting messages decoded, up to the first that is not JSON text.
function RealClient:next_json()
  self:_read()
  local e = self.queue[1]
  if not e or e.kind ~= "text" then
    error("ws.testing: client " .. self.id .. " has no message waiting" ..
          (e and " (next: " .. e.kind .. ")" or ""), 2)
  end
  local v, err = json.decode(e.data)
  if v == nil then
    error("ws.testing: the next message is not JSON: " .. tostring(err), 2)
  end
  table.remove(self.queue, 1)
  return v
end

function RealClient:received_json()
  self:_read()
  local out = {}
  while self.queue[1] and self.queue[1].kind == "text" do
    local v = json.decode(self.queue[1].data)
    if v == nil then
      break
    end
    table.remove(self.queue, 1)
    out[#out + 1] = v
  end
  return out
end

M.start = M.load
M.json = json
M.null = json.null -- ws.null in the app: SQL NULL in t:on_pg's params and rows
return M
