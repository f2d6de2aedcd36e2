-- Runs one conformance scenario (tests/kit/scenarios/*.json) on the real server in-process
-- (ws.kitcore: the real core and bindings, in-memory connections, the simulated clock) and
-- prints its transcript in driver.lua's format. The clients behave as the conformance test's
-- socket clients do: they answer pings with pongs and echo a close frame they did not start.
--
--   LUA_CPATH="build/lua/?.so;;" lua5.4 tests/kit/driver_core.lua SCENARIO.json APP.lua
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local root = here .. "/../.."
package.path = root .. "/lua/?.lua;" .. package.path

local kitcore = require "ws.kitcore"
local json = require "ws.json"

local TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10
local KEY = "dGhlIHNhbXBsZSBub25jZQ=="

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function unhex(s)
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- The handshake the conformance test's clients send (handshake_headers there).
local function handshake(step)
  local h = {"GET " .. (step.path or "/") .. " HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: " .. KEY, "Sec-WebSocket-Version: 13"}
  if step.protocols and #step.protocols > 0 then
    h[#h + 1] = "Sec-WebSocket-Protocol: " .. table.concat(step.protocols, ", ")
  end
  if step.origin then h[#h + 1] = "Origin: " .. step.origin end
  if step.cookies then
    local parts = {}
    for _, k in ipairs(sorted_keys(step.cookies)) do parts[#parts + 1] = k .. "=" .. step.cookies[k] end
    h[#h + 1] = "Cookie: " .. table.concat(parts, "; ")
  end
  for _, k in ipairs(sorted_keys(step.headers)) do h[#h + 1] = k .. ": " .. step.headers[k] end
  return table.concat(h, "\r\n") .. "\r\n\r\n"
end

local function parse_head(bytes)
  local head, rest = bytes:match("^(.-)\r\n\r\n(.*)$")
  if not head then return nil end
  local status = tonumber(head:match("^HTTP/1%.1 (%d+)"))
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
    headers[name:lower()] = value
  end
  return status, headers, rest
end

local Client = {}
Client.__index = Client

function Client:pump()
  if self.closed then return end
  local more, ended = self.e:read(self.n)
  self.buf = self.buf .. more
  while true do
    local op, payload, fin, rest = kitcore.take(self.buf)
    if not op then break end
    self.buf = rest
    self:frame(op, payload, fin)
  end
  if ended then -- the server ended its side: close ours, as a socket client does
    self.closed = true
    self.e:shutdown(self.n)
  end
end

function Client:send_frame(op, payload)
  self.e:write(self.n, kitcore.frame(op, payload))
end

function Client:frame(op, payload, fin)
  if op == PING then
    if not self.close_sent then self:send_frame(PONG, payload) end
  elseif op == PONG then
    return
  elseif op == CLOSE then
    local code = #payload >= 2 and payload:byte(1) * 256 + payload:byte(2) or 1005
    self.entries[#self.entries + 1] = {kind = "close", code = code, reason = payload:sub(3)}
    if not self.close_sent then
      self.close_sent = true
      self:send_frame(CLOSE, payload)
    end
  else
    if op ~= 0 then self.fragments = {op = op, data = {}} end
    table.insert(self.fragments.data, payload)
    if fin then
      local data = table.concat(self.fragments.data)
      if self.fragments.op == TEXT then
        self.entries[#self.entries + 1] = {kind = "text", data = data}
      else
        self.entries[#self.entries + 1] = {kind = "binary", hex = hex(data)}
      end
      self.fragments = nil
    end
  end
end

local function connect(e, step)
  local c = setmetatable({e = e, buf = "", entries = {}}, Client)
  c.n = e:connect()
  e:write(c.n, handshake(step))
  local status, headers, rest = parse_head(e:read(c.n))
  c.status, c.protocol, c.buf = status, headers["sec-websocket-protocol"], rest
  if status ~= 101 then
    c.closed = true
    c.body = rest
  end
  return c
end

-- handler_error lines of the log: handler and the first line of the message, unescaped.
local function handler_errors(log)
  local out = json.array()
  for handler, rest in log:gmatch('event=handler_error handler="([^"]*)"[^\n]- error="([^\n]*)') do
    local msg, i = {}, 1
    while i <= #rest do
      local ch = rest:sub(i, i)
      if ch == "\\" then
        local nx = rest:sub(i + 1, i + 1)
        msg[#msg + 1] = ({n = "\n", t = "\t"})[nx] or nx
        i = i + 2
      elseif ch == '"' then
        break
      else
        msg[#msg + 1] = ch
        i = i + 1
      end
    end
    out[#out + 1] = {handler = handler, message = table.concat(msg):match("^[^\n]*")}
  end
  return out
end

local scenario_path, app_path = arg[1], arg[2]
local scenario = assert(json.decode(read(scenario_path)))
local e = assert(kitcore.load(app_path, {config = scenario.cli, now = 1700000000}))
local clients, order = {}, {}
local out = json.array()

for i, step in ipairs(scenario.steps) do
  local rec = {index = i, received = {}}
  local base = {}
  for name, c in pairs(clients) do base[name] = #c.entries end
  if step.connect then
    rec.op = "connect " .. step.connect
    local c = connect(e, step)
    if c.status == 101 then
      clients[step.connect] = c
      order[#order + 1] = step.connect
      base[step.connect] = 0
      rec.result = {status = 101, protocol = c.protocol or json.null}
    else
      rec.result = {status = c.status, body = c.body}
    end
  elseif step.send then
    rec.op = "send " .. step.send
    local c = clients[step.send]
    if step.text then
      c:send_frame(TEXT, step.text)
    elseif step.text_hex then
      c:send_frame(TEXT, unhex(step.text_hex))
    else
      c:send_frame(BINARY, unhex(step.binary_hex))
    end
  elseif step.close then
    rec.op = "close " .. step.close
    local c = clients[step.close]
    c.close_sent = true
    local payload = ""
    if step.code then
      payload = string.char(step.code // 256, step.code % 256) .. (step.reason or "")
    end
    c:send_frame(CLOSE, payload)
  elseif step.drop then
    rec.op = "drop " .. step.drop
    local c = clients[step.drop]
    c:pump()
    c.closed = true
    e:shutdown(c.n)
  elseif step.wait then
    rec.op = "wait " .. step.wait
    -- the clients read and answer as time passes, as the socket clients do
    local left = step.wait
    while left > 0 do
      local dt = math.min(left, 0.05)
      e:advance(dt)
      for _, name in ipairs(order) do clients[name]:pump() end
      left = left - dt
    end
  elseif step.http then
    rec.op = "http " .. step.http .. " " .. step.path
    local n = e:connect()
    local lines = {step.http .. " " .. step.path .. " HTTP/1.1", "Host: 127.0.0.1"}
    for _, k in ipairs(sorted_keys(step.headers)) do lines[#lines + 1] = k .. ": " .. step.headers[k] end
    e:write(n, table.concat(lines, "\r\n") .. "\r\n\r\n")
    local status, headers, body = parse_head(e:read(n))
    e:shutdown(n)
    rec.result = {status = status, body = step.http == "HEAD" and "" or body,
                  content_type = headers["content-type"]}
    for k, v in pairs(headers) do
      if k ~= "content-type" and k ~= "content-length" and k ~= "connection" and k ~= "date" then
        rec.result[k] = v
      end
    end
  elseif step.reload then
    rec.op = "reload " .. step.reload
    write(app_path, read(root .. "/" .. step.reload))
    rec.result = {ok = e:reload()}
  else
    error("unknown step " .. i .. " in " .. scenario_path)
  end
  for _ = 1, 3 do -- answers may set off more answers (a close echoed, a pong)
    for _, name in ipairs(order) do clients[name]:pump() end
  end
  for name, c in pairs(clients) do
    local list = json.array()
    for k = (base[name] or 0) + 1, #c.entries do list[#list + 1] = c.entries[k] end
    rec.received[name] = list
  end
  out[#out + 1] = rec
end

io.write(json.encode({steps = out, errors = handler_errors(e:log())}), "\n")
e:close()
