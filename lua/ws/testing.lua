--[==[ ws.testing: run a wsserver app in a simulated server, without sockets, for busted specs.

  local testing = require "ws.testing"
  local t = testing.load("app.lua", {config = {max_message_size = 1024}})
  local a = t:connect{path = "/chat", query = {token = "x"}}    -- runs upgrade and open
  a:send("hello")                                              -- runs message
  assert.same({kind = "text", data = "hello"}, a:next())       -- what the client received
  t:advance(5)                                                 -- virtual clock: ws.after/every fire

The app is loaded as the server loads it (a fresh environment per load on the server's globals,
the returned table validated, the config checked, load(state, info) called) and sees the same
`ws` and `conn` API: the same argument checks with the same error messages, the same return
values ("sent", "queued", nil, "closed"), UTF-8 checks on text, a handler error closing only its
connection with 1011 (after app.error), close(conn, code, reason) running after the close with
conn.data and conn:topics() still readable, stale handles answering nil, "closed", conns, timers
and the ws table as userdata, ws read-only, the old version's timers cancelled on reload, and
handler_timeout enforced by a count hook. tests/integration/test_kit_conformance.py runs the
scenarios of tests/kit/scenarios in the kit and against build/wsserver and compares them.

Time is virtual: it moves only with t:advance(seconds). Clients read everything at once and
answer close frames and pings, unless paused (c:pause()): then the server's send queue grows as
it would ("queued", drain, the 1008 slow-consumer close, close and pong timeouts).

Not simulated: the wire (framing, fragmentation, compression, TLS, handshake header checks),
lua_memory_limit, --static files, /metrics, workers and Redis. The API is Lua here and C on the
server: in a tail call (`return conn:close(5000)`) an argument error has no position prefix.

  testing.load(path_or_source [, opts]) -> t     (raises with the server's reason on failure)
      opts.config   options that win over the app's config table (like command-line flags)
      opts.now      the virtual clock's start in seconds (default os.time())
      opts.name     chunk name for source (default "app.lua"); opts.dir: its modules' folder
  t:connect([opts]) -> client | nil, status, body, headers
      opts: path, query (table or string), headers (table), cookies (table or string),
            protocols (list), origin, host, peer ("ip[:port]")
  t:http(method, target [, headers]) -> status, body, headers (names lower-cased)
  t:advance(seconds)  t:now()  t:flush()  t:shutdown([reason])
  t:reload([source_or_path [, trigger]]) -> true | false, err
  t.state (ws.state)  t.ws (the app's ws)  t.app (the running app table)  t.config
  t:subscribers(topic)  t:topics()  t:count()  t:get(id)  t:stats()
  t:logs([min_level]) -> {{level =, msg =, fields =}, ...}   every ws.log line
  t:errors() -> {{handler =, message =, traceback =}, ...}  what the server logs as handler_error
  client: c.id  c.conn (the app's conn)  c.protocol  c.pings  c.close_code  c.close_reason
      c:send(text)  c:send_binary(bytes) -> true | nil, "closed"
      c:close([code [, reason]])  c:drop()  c:pause()  c:resume()  c:is_open()
      c:next() -> {kind = "text"|"binary", data =} | {kind = "close", code =, reason =} | nil
      c:received() -> list (next and received consume)   c:history() -> everything so far
      c:next_json()  c:received_json()  c:topics()  c:data()
]==]

local json = require "ws.json"

local M = {}

local pack, unpack = table.pack, table.unpack
local fmt = string.format

local HOOK_COUNT = 10000 -- VM instructions between two looks at the clock (as the server)
local CHUNK_BYTES = 16384 -- a message this big written to an empty queue skips the queue
local HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
local OPEN, CONNECTING, CLOSING, CLOSED = "open", "connecting", "closing", "closed"

local HANDLERS = {"upgrade", "open", "message", "close", "drain", "shutdown", "load", "error"}
local IS_HANDLER = {}
for _, h in ipairs(HANDLERS) do
  IS_HANDLER[h] = true
end

local function valid_utf8(s)
  return utf8.len(s) ~= nil
end

local function close_code_valid(code)
  return (code >= 1000 and code <= 1003) or (code >= 1007 and code <= 1014) or
         (code >= 3000 and code <= 4999)
end

-- A close reason cut to fit a control frame (123 bytes), before a UTF-8 continuation byte.
local function close_reason(reason)
  if #reason <= 123 then
    return reason
  end
  local n = 123
  while n > 0 and (reason:byte(n + 1) & 0xC0) == 0x80 do
    n = n - 1
  end
  return reason:sub(1, n)
end

local function frame_len(n)
  return n + (n < 126 and 2 or (n < 65536 and 4 or 10))
end

local function copy_list(t)
  local out = {}
  for i, v in ipairs(t) do
    out[i] = v
  end
  return out
end

-- Removes the first v from the list, keeping the order of the rest.
local function remove_value(list, v)
  for i, x in ipairs(list) do
    if x == v then
      table.remove(list, i)
      return
    end
  end
end

-- ---- lauxlib's argument errors, reproduced ---------------------------------------------------
-- The server's API is C: luaL_argerror names the function as the caller wrote it ("method"
-- calls do not count self) and luaL_error prefixes the caller's position. API functions here are
-- registered so the error helpers can find their frame and do the same.

local API = setmetatable({}, {__mode = "k"}) -- function -> {name, namewhat} (tail-call fallback)

local function api(name, namewhat, fn)
  API[fn] = {name = name, namewhat = namewhat}
  return fn
end

local function typename(v, present)
  if not present then
    return "no value"
  end
  local mt = debug.getmetatable(v)
  local n = type(mt) == "table" and rawget(mt, "__name")
  if type(n) == "string" then
    return n
  end
  return type(v)
end

-- The innermost API function on the stack: its level as seen by where()'s caller, its info.
local function where()
  for l = 3, 60 do
    local info = debug.getinfo(l, "fnt")
    if not info then
      return nil
    end
    local a = API[info.func]
    if a then
      return l - 1, info, a
    end
  end
end

local function argerror(arg, extramsg)
  local lvl, info, a = where()
  local name, namewhat, errlvl = nil, "", 0
  if info then
    if info.istailcall then
      name, namewhat = a.name, a.namewhat -- the caller's frame is gone: no position either
    else
      name, namewhat, errlvl = info.name, info.namewhat, lvl + 1
    end
  end
  if namewhat == "method" then
    arg = arg - 1
    if arg == 0 then
      error(fmt("calling '%s' on bad self (%s)", name or "?", extramsg), errlvl)
    end
  end
  error(fmt("bad argument #%d to '%s' (%s)", arg, name or "?", extramsg), errlvl)
end

-- luaL_error from an API function: the message with its caller's position.
local function raise(msg)
  local lvl, info = where()
  error(msg, (info and not info.istailcall) and lvl + 1 or 0)
end

local function typeerror(arg, tname, v, present)
  argerror(arg, tname .. " expected, got " .. typename(v, present))
end

local function checklstring(arg, v, present)
  local t = type(v)
  if t == "string" then
    return v
  elseif t == "number" then
    return tostring(v)
  end
  typeerror(arg, "string", v, present)
end

local function optlstring(arg, v, present, def)
  if v == nil then
    return def
  end
  return checklstring(arg, v, present)
end

local function checkinteger(arg, v, present)
  local t = type(v)
  local i = (t == "number" or t == "string") and math.tointeger(v) or nil
  if i then
    return i
  end
  if t == "number" or (t == "string" and tonumber(v) ~= nil) then
    argerror(arg, "number has no integer representation")
  end
  typeerror(arg, "number", v, present)
end

local function optinteger(arg, v, present, def)
  if v == nil then
    return def
  end
  return checkinteger(arg, v, present)
end

local function checknumber(arg, v, present)
  if type(v) == "number" then
    return v
  end
  local n = type(v) == "string" and tonumber(v) or nil
  if n then
    return n
  end
  typeerror(arg, "number", v, present)
end

local function checkoption(arg, v, present, def, list)
  local name
  if def then
    name = optlstring(arg, v, present, def)
  else
    name = checklstring(arg, v, present)
  end
  for i, o in ipairs(list) do
    if o == name then
      return o, i
    end
  end
  argerror(arg, fmt("invalid option '%s'", name))
end

local function checktype(arg, v, present, t)
  if type(v) ~= t then
    typeerror(arg, t, v, present)
  end
  return v
end

-- lua_getfield(v, k) from C: indexing a value that cannot be indexed raises without position.
local function getfield(v, k)
  local t = type(v)
  if t == "table" or t == "string" then
    return v[k]
  end
  if t == "userdata" then
    local mt = debug.getmetatable(v)
    if mt and mt.__index ~= nil then
      return v[k]
    end
  end
  error("attempt to index a " .. t .. " value", 0)
end

-- A full userdata with its own metatable, as the server's conns, timers and ws proxies are (so
-- type() says "userdata" and rawget/rawset refuse them). Pure Lua makes one from a closed file
-- handle whose metatable is replaced; without /dev/null it falls back to a table.
local function new_userdata(mt)
  local f = io.open("/dev/null", "rb")
  if not f then
    return setmetatable({}, mt)
  end
  f:close()
  debug.setmetatable(f, mt)
  return f
end

-- ---- options (src/config.c) -----------------------------------------------------------------

local SIZE_LIMIT = 4294967296
local OPTIONS = {
  {name = "listen", live = false, type = "list"},
  {name = "tls_cert", live = false, type = "string"},
  {name = "tls_key", live = false, type = "string"},
  {name = "static", live = false, type = "string"},
  {name = "max_connections", type = "int", min = 1, max = 10000000, default = 10000},
  {name = "max_connections_per_ip", type = "int", min = 0, max = 10000000, default = 0},
  {name = "max_header_size", type = "int", min = 256, max = 1048576, default = 8192},
  {name = "max_body_size", type = "int", min = 0, max = SIZE_LIMIT, default = 1048576},
  {name = "allowed_origins", type = "list"},
  {name = "trusted_proxies", type = "list"},
  {name = "max_message_size", type = "int", min = 1, max = SIZE_LIMIT, default = 1048576},
  {name = "max_buffered", type = "int", min = 1024, max = SIZE_LIMIT, default = 1048576},
  {name = "max_buffered_total", type = "int", min = 65536, max = 1099511627776,
   default = 268435456},
  {name = "backpressure", type = "choice", choices = {"close", "drop"}, default = "close"},
  {name = "handshake_timeout", type = "seconds", min = 0.01, max = 86400, default = 10},
  {name = "close_timeout", type = "seconds", min = 0.01, max = 86400, default = 5},
  {name = "shutdown_timeout", type = "seconds", min = 0, max = 86400, default = 10},
  {name = "ping_interval", type = "seconds", min = 0, max = 86400, default = 30},
  {name = "pong_timeout", type = "seconds", min = 0.01, max = 86400, default = 10},
  {name = "idle_timeout", type = "seconds", min = 0, max = 86400, default = 0},
  {name = "handler_timeout", type = "seconds", min = 0.001, max = 3600, default = 1},
  {name = "io_timeout", type = "seconds", min = 0.001, max = 86400, default = 10},
  {name = "max_pending_bytes", type = "int", min = 0, max = SIZE_LIMIT, default = 0},
  {name = "http_max_concurrent", type = "int", min = 1, max = 1000000, default = 256},
  {name = "lua_memory_limit", type = "int", min = 1048576, max = 1099511627776,
   default = 536870912},
  {name = "protocols", type = "list"},
  {name = "compression", live = false, type = "choice", choices = {"off", "on"}, default = "off"},
  {name = "compress_min_size", live = false, type = "int", min = 0, max = SIZE_LIMIT, default = 128},
  {name = "compression_window_bits", live = false, type = "int", min = 9, max = 15, default = 15},
  {name = "compression_mem_level", live = false, type = "int", min = 1, max = 9, default = 8},
  {name = "compression_level", live = false, type = "int", min = 1, max = 9, default = 6},
  {name = "compression_context_takeover", live = false, type = "bool", default = false},
  {name = "compression_client_no_context_takeover", live = false, type = "bool", default = false},
  {name = "fragment_size", type = "int", min = 0, max = SIZE_LIMIT, default = 0},
  {name = "metrics", type = "bool", default = false},
  {name = "metrics_listen", live = false, type = "string"},
  {name = "workers", live = false, type = "workers", min = 0, max = 1024, default = 1},
  {name = "redis", live = false, type = "string"},
  {name = "log_level", type = "choice", choices = {"debug", "info", "warn", "error"},
   default = "info"},
  {name = "log_format", type = "choice", choices = {"text", "json"}, default = "text"},
  {name = "log_file", live = false, type = "string"},
  {name = "watch", live = false, type = "bool", default = false},
  {name = "pidfile", live = false, type = "string"},
  {name = "user", live = false, type = "string"},
}
local OPTION = {}
for _, o in ipairs(OPTIONS) do
  OPTION[o.name] = o
end
M.options = OPTIONS

local function new_config()
  local cfg = {_cli = {}}
  for _, o in ipairs(OPTIONS) do
    if o.type == "list" then
      cfg[o.name] = {}
    else
      cfg[o.name] = o.default
    end
  end
  return cfg
end

local function copy_config(src)
  local cfg = {_cli = {}}
  for k, v in pairs(src._cli) do
    cfg._cli[k] = v
  end
  for _, o in ipairs(OPTIONS) do
    local v = src[o.name]
    cfg[o.name] = type(v) == "table" and copy_list(v) or v
  end
  return cfg
end

-- false when the command line already set it (the command line wins)
local function mark(cfg, opt, from_cli)
  if not from_cli and cfg._cli[opt.name] then
    return false
  end
  if from_cli then
    cfg._cli[opt.name] = true
  end
  return true
end

-- ws_config_describe: what an option accepts
local function describe(opt)
  local t = opt.type
  if t == "int" then
    return fmt("a whole number from %.0f to %.0f", opt.min, opt.max)
  elseif t == "workers" then
    return fmt("a whole number from %.0f to %.0f or \"auto\"", opt.min, opt.max)
  elseif t == "seconds" then
    return fmt("a number of seconds from %g to %g", opt.min, opt.max)
  elseif t == "bool" then
    return "true or false"
  elseif t == "string" then
    return opt.name == "static" and "a readable folder" or "a non-empty string"
  elseif t == "choice" then
    return "one of " .. table.concat(opt.choices, ", ")
  end
  return "a string or a list of strings"
end

local function range_error(opt)
  return fmt("invalid value for %s: must be %s", opt.name, describe(opt))
end

local function wrong_type(opt, got)
  return fmt("invalid value for %s: must be %s (got a %s)", opt.name, describe(opt), got)
end

-- a listen address: host:port, [v6]:port, :port or unix:/path, tls: in front (src/core/config.c)
local function check_listen(value)
  local addr = value:gsub("^tls:", "", 1)
  if addr:sub(1, 5) == "unix:" then
    local n = #addr - 5
    if n == 0 or n >= 108 then
      return fmt("invalid value for listen: '%s': a unix socket path of 1 to 107 bytes", value)
    end
    return nil
  end
  local port
  if addr:sub(1, 1) == "[" then
    port = addr:match("^%[[^%]]+%]:(.*)$")
  else
    port = addr:match("^.*:(.*)$")
  end
  if not port then
    return fmt("invalid value for listen: '%s': expected host:port, [v6]:port or unix:/path " ..
               "(tls: in front for wss://)", value)
  end
  local n = port:match("^%d%d?%d?%d?%d?$") and tonumber(port) or 0
  if n < 1 or n > 65535 then
    return fmt("invalid value for listen: '%s': the port must be a number from 1 to 65535", value)
  end
end

local function set_number(cfg, opt, v, from_cli)
  if opt.type ~= "int" and opt.type ~= "seconds" and opt.type ~= "workers" then
    return wrong_type(opt, "number")
  end
  if v ~= v or v < opt.min or v > opt.max then
    return range_error(opt)
  end
  if opt.type ~= "seconds" and v ~= math.floor(v) then
    return range_error(opt)
  end
  if mark(cfg, opt, from_cli) then
    cfg[opt.name] = opt.type == "seconds" and v or math.tointeger(v)
  end
end

local function set_bool(cfg, opt, v, from_cli)
  if opt.type ~= "bool" then
    return wrong_type(opt, "boolean")
  end
  if mark(cfg, opt, from_cli) then
    cfg[opt.name] = v
  end
end

-- ws_config_set: a string value, as on the command line
local function set_string(cfg, opt, s, from_cli)
  local t = opt.type
  if t == "int" or t == "seconds" or t == "workers" then
    if t == "workers" and s == "auto" then
      if mark(cfg, opt, from_cli) then
        cfg[opt.name] = 0
      end
      return
    end
    local v = tonumber(s)
    if not v or s:find("%s$") then
      return range_error(opt)
    end
    return set_number(cfg, opt, v, from_cli)
  elseif t == "bool" then
    if s == "true" or s == "1" then
      return set_bool(cfg, opt, true, from_cli)
    elseif s == "false" or s == "0" then
      return set_bool(cfg, opt, false, from_cli)
    end
    return fmt("invalid value for %s: must be true or false", opt.name)
  elseif t == "string" then
    if s == "" then
      return fmt("invalid value for %s: must not be empty", opt.name)
    end
    if mark(cfg, opt, from_cli) then
      cfg[opt.name] = s
    end
  elseif t == "choice" then
    for _, c in ipairs(opt.choices) do
      if c == s then
        if mark(cfg, opt, from_cli) then
          cfg[opt.name] = s
        end
        return
      end
    end
    return fmt("invalid value for %s: must be one of %s", opt.name, table.concat(opt.choices, ", "))
  elseif t == "list" then
    local list = cfg[opt.name]
    if s == "" then
      return fmt("invalid value for %s: must not be empty", opt.name)
    end
    if #list == 16 then
      return fmt("too many values for %s: at most 16", opt.name)
    end
    if opt.name == "listen" then
      local err = check_listen(s)
      if err then
        return err
      end
    end
    if mark(cfg, opt, from_cli) then
      list[#list + 1] = s
    end
  end
end

local function clear_list(cfg, opt)
  if not cfg._cli[opt.name] then
    cfg[opt.name] = {}
  end
end

-- Merges a config table (the app's, or the command-line stand-in) into cfg. Returns an error.
local function apply_config(t, cfg, from_cli)
  for k, v in next, t do
    local opt = type(k) == "string" and OPTION[k] or nil
    local err
    if not opt then
      return fmt("unknown config key '%s'", tostring(k))
    elseif type(v) == "number" then
      err = set_number(cfg, opt, v, from_cli)
    elseif type(v) == "boolean" then
      err = set_bool(cfg, opt, v, from_cli)
    elseif type(v) == "string" and not from_cli and
        (opt.type == "int" or opt.type == "seconds" or (opt.type == "workers" and v ~= "auto")) then
      err = wrong_type(opt, "string") -- "20" where a number belongs
    elseif type(v) == "string" then
      if opt.type == "list" then
        clear_list(cfg, opt)
      end
      err = set_string(cfg, opt, v, from_cli)
    elseif type(v) == "table" and opt.type == "list" then
      clear_list(cfg, opt)
      for i = 1, #v do
        local item = rawget(v, i)
        if type(item) ~= "string" then
          return fmt("invalid value for %s: a list of strings", opt.name)
        end
        err = set_string(cfg, opt, item, from_cli)
        if err then
          break
        end
      end
    else
      err = wrong_type(opt, type(v))
    end
    if err then
      return err
    end
  end
end

local function validate_config(cfg)
  if (cfg.tls_cert == nil) ~= (cfg.tls_key == nil) then
    return "invalid configuration: tls_cert and tls_key must be given together"
  end
  if cfg.max_buffered < 1024 then
    return "invalid value for max_buffered: at least 1024"
  end
end

-- ---- HTTP requests (lb_app.c push_request) ---------------------------------------------------

local REASONS = {
  [100] = "Continue", [101] = "Switching Protocols", [200] = "OK", [201] = "Created",
  [202] = "Accepted", [204] = "No Content", [206] = "Partial Content",
  [301] = "Moved Permanently", [302] = "Found", [303] = "See Other", [304] = "Not Modified",
  [307] = "Temporary Redirect", [308] = "Permanent Redirect", [400] = "Bad Request",
  [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [406] = "Not Acceptable", [408] = "Request Timeout",
  [409] = "Conflict", [410] = "Gone", [411] = "Length Required", [413] = "Content Too Large",
  [414] = "URI Too Long", [415] = "Unsupported Media Type", [426] = "Upgrade Required",
  [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
  [505] = "HTTP Version Not Supported",
}

local function form_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h)
    return string.char(tonumber(h, 16))
  end))
end

-- key=value pairs split on sep; the first value of a repeated key wins
local function parse_pairs(s, sep, decode)
  local t = {}
  local i, n = 1, #s
  while i <= n do
    local e = s:find(sep, i, true) or n + 1
    local k = i
    while k < e and s:sub(k, k) == " " do
      k = k + 1
    end
    local eq = k
    while eq < e and s:sub(eq, eq) ~= "=" do
      eq = eq + 1
    end
    if eq > k then
      local key = s:sub(k, eq - 1)
      if decode then
        key = form_decode(key)
      end
      if t[key] == nil then
        local v = s:sub(eq < e and eq + 1 or e, e - 1)
        t[key] = decode and form_decode(v) or v
      end
    end
    i = e + 1
  end
  return t
end

local function tokens(list)
  local out = {}
  for item in (list .. ","):gmatch("([^,]*),") do
    local tok = item:match("^[ \t]*(.-)[ \t]*$")
    if tok ~= "" then
      out[#out + 1] = tok
    end
  end
  return out
end

local function is_token(s)
  return s ~= "" and not s:find("[^!#$%%&'*+%-.^_`|~%w]")
end

local function url_encode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(ch)
    return fmt("%%%02X", ch:byte())
  end))
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table.sort(keys, function(a, b)
    return tostring(a) < tostring(b)
  end)
  return keys
end

-- Header pairs from a {name = value} map (sorted by name) or a list of {name, value}.
local function header_list(h)
  local out = {}
  if type(h) ~= "table" then
    return out
  end
  if #h > 0 then
    for _, p in ipairs(h) do
      out[#out + 1] = {tostring(p[1]), tostring(p[2])}
    end
  else
    for _, k in ipairs(sorted_keys(h)) do
      out[#out + 1] = {tostring(k), tostring(h[k])}
    end
  end
  return out
end

-- The request target: path plus a query given as a string or a table (sorted keys).
local function build_target(path, query)
  path = path or "/"
  if query == nil then
    return path
  end
  local qs = query
  if type(query) == "table" then
    local parts = {}
    for _, k in ipairs(sorted_keys(query)) do
      parts[#parts + 1] = url_encode(k) .. "=" .. url_encode(query[k])
    end
    qs = table.concat(parts, "&")
  end
  return path .. (path:find("?", 1, true) and "&" or "?") .. qs
end

-- The header lines a client sends for a WebSocket handshake, as {name, value} pairs.
local function handshake_headers(opts)
  local h = {
    {"Host", opts.host or "127.0.0.1"},
    {"Upgrade", "websocket"},
    {"Connection", "Upgrade"},
    {"Sec-WebSocket-Key", HANDSHAKE_KEY},
    {"Sec-WebSocket-Version", "13"},
  }
  local protocols = opts.protocols
  if type(protocols) == "string" then
    protocols = {protocols}
  end
  if protocols and #protocols > 0 then
    h[#h + 1] = {"Sec-WebSocket-Protocol", table.concat(protocols, ", ")}
  end
  if opts.origin then
    h[#h + 1] = {"Origin", opts.origin}
  end
  local cookies = opts.cookies
  if type(cookies) == "table" then
    local parts = {}
    for _, k in ipairs(sorted_keys(cookies)) do
      parts[#parts + 1] = tostring(k) .. "=" .. tostring(cookies[k])
    end
    cookies = table.concat(parts, "; ")
  end
  if cookies and cookies ~= "" then
    h[#h + 1] = {"Cookie", cookies}
  end
  for _, p in ipairs(header_list(opts.headers)) do
    h[#h + 1] = p
  end
  return h
end

-- The table upgrade(req) and http routes receive.
local function make_request(method, target, raw, peer)
  local req = {method = method}
  local q = target:find("?", 1, true)
  req.path = q and target:sub(1, q - 1) or target
  req.target = target
  if q then
    req.query_string = target:sub(q + 1)
    req.query = parse_pairs(req.query_string, "&", true)
  else
    req.query = {}
  end
  local headers = {}
  local protocols = {}
  for _, p in ipairs(raw) do
    local name = p[1]:sub(1, 255):lower()
    if headers[name] then
      headers[name] = headers[name] .. ", " .. p[2]
    else
      headers[name] = p[2]
    end
    if name == "sec-websocket-protocol" then
      for _, tok in ipairs(tokens(p[2])) do
        protocols[#protocols + 1] = tok
      end
    end
  end
  req.headers = headers
  req.origin = headers.origin
  req.cookies = parse_pairs(headers.cookie or "", ";", false)
  req.protocols = protocols
  req.peer = peer
  return req
end

-- An app's headers table as {lower-cased name = value}: names with CR, LF or ':' and values
-- with CR or LF are skipped, as the server does.
local function collect_headers(h)
  local out = {}
  for k, v in next, h do
    if type(k) == "string" and (type(v) == "string" or type(v) == "number") then
      v = tostring(v)
      if k ~= "" and not k:find("[\r\n:]") and not v:find("[\r\n]") then
        out[k:lower()] = v
      end
    end
  end
  return out
end

local function offers(raw, protocol)
  for _, p in ipairs(raw) do
    if p[1]:lower() == "sec-websocket-protocol" then
      for _, tok in ipairs(tokens(p[2])) do
        if tok == protocol then
          return true
        end
      end
    end
  end
  return false
end

-- ---- conn handles ----------------------------------------------------------------------------
-- A handle is an empty table; its box (id, the connection or nil once it is gone, conn.data)
-- lives in BOX, so a stale handle keeps its id and data and answers nil, "closed".

local BOX = setmetatable({}, {__mode = "k"})
local CONN_MT = {}
local METHODS = {}
local KINDS = {"text", "binary"}

local function check_box(arg, v, present)
  local b = v ~= nil and BOX[v] or nil
  if not b then
    typeerror(arg, "wsserver.conn", v, present)
  end
  return b
end

local function open_conn(b)
  local c = b.c
  if c and c.state == OPEN then
    return c
  end
end

-- The data and kind arguments of conn:send and conn:publish (data at arg, of n): data, opcode.
local function check_message(arg, data, kind, n)
  data = checklstring(arg, data, n >= arg)
  local op = checkoption(arg + 1, kind, n >= arg + 1, "text", KINDS)
  if op == "text" and not valid_utf8(data) then
    raise('text message is not valid UTF-8 (send it as "binary")')
  end
  return data, op
end

-- conn:send(data [, "text"|"binary"])
METHODS.send = api("send", "method", function(...)
  local n = select("#", ...)
  local self, data, kind = ...
  local op
  data, op = check_message(2, data, kind, n)
  local c = open_conn(check_box(1, self, n >= 1))
  if not c then
    return nil, "closed"
  end
  return c.server:_send(c, op, data)
end)

-- conn:send_json(value)
METHODS.send_json = api("send_json", "method", function(...)
  local n = select("#", ...)
  local self, value = ...
  if n < 2 then
    argerror(2, "value expected")
  end
  local c = open_conn(check_box(1, self, n >= 1))
  if not c then
    return nil, "closed"
  end
  local data, err = json.encode(value)
  if not data then
    raise("send_json: " .. (type(err) == "string" and err or "cannot encode the value"))
  end
  if not valid_utf8(data) then
    raise("send_json: a string in the value is not valid UTF-8")
  end
  return c.server:_send(c, "text", data)
end)

-- conn:close([code [, reason]])
METHODS.close = api("close", "method", function(...)
  local n = select("#", ...)
  local self, code, reason = ...
  code = optinteger(2, code, n >= 2, 1000)
  reason = optlstring(3, reason, n >= 3, "")
  if code < 0 or code > 65535 or not close_code_valid(code) then
    argerror(2, "close code must be 1000-1003, 1007-1014 or 3000-4999")
  end
  if #reason > 123 then
    argerror(3, "reason longer than 123 bytes")
  end
  if not valid_utf8(reason) then
    argerror(3, "reason is not valid UTF-8")
  end
  local c = open_conn(check_box(1, self, n >= 1))
  if not c then
    return nil, "closed"
  end
  c.server:_start_close(c, code, reason)
  return true
end)

-- conn:ping([payload])
METHODS.ping = api("ping", "method", function(...)
  local n = select("#", ...)
  local self, payload = ...
  payload = optlstring(2, payload, n >= 2, "")
  if #payload > 125 then
    argerror(2, "ping payload over 125 bytes")
  end
  local c = open_conn(check_box(1, self, n >= 1))
  if not c then
    return nil, "closed"
  end
  local s = c.server
  s:_queue(c, {kind = "ping", data = payload}, frame_len(#payload))
  return s:_sent_result(c)
end)

METHODS.buffered = api("buffered", "method", function(...)
  local b = check_box(1, (...), select("#", ...) >= 1)
  return b.c and b.c.out_bytes or 0
end)

METHODS.is_open = api("is_open", "method", function(...)
  local b = check_box(1, (...), select("#", ...) >= 1)
  return b.c ~= nil and b.c.state == OPEN
end)

-- conn:<name>(topic), answered by the server's method op (a name: Server comes later)
local function topic_method(name, op)
  return api(name, "method", function(...)
    local n = select("#", ...)
    local self, topic = ...
    topic = checklstring(2, topic, n >= 2)
    local c = open_conn(check_box(1, self, n >= 1))
    if not c then
      return nil, "closed"
    end
    local s = c.server
    return s[op](s, c, topic)
  end)
end

-- conn:subscribe(topic) -> true when newly subscribed, false when it already was
METHODS.subscribe = topic_method("subscribe", "_subscribe")
-- conn:unsubscribe(topic) -> true when it was subscribed
METHODS.unsubscribe = topic_method("unsubscribe", "_unsubscribe")

-- conn:topics() -> names in subscription order (readable in close too)
METHODS.topics = api("topics", "method", function(...)
  local b = check_box(1, (...), select("#", ...) >= 1)
  return b.c and copy_list(b.c.topics) or {}
end)

-- conn:publish(topic, data [, kind]) -> other subscribers reached
METHODS.publish = api("publish", "method", function(...)
  local n = select("#", ...)
  local self, topic, data, kind = ...
  topic = checklstring(2, topic, n >= 2)
  local op
  data, op = check_message(3, data, kind, n)
  local c = open_conn(check_box(1, self, n >= 1))
  if not c then
    return nil, "closed"
  end
  return c.server:_publish(topic, op, data, c.id)
end)

CONN_MT.__index = api("index", "metamethod", function(h, key)
  local m = rawget(METHODS, key)
  if m ~= nil then
    return m
  end
  if type(key) ~= "string" then
    return nil
  end
  local b = BOX[h]
  local c = b.c
  if key == "id" then
    return b.id
  elseif key == "data" then
    if b.data == nil then
      b.data = {}
    end
    return b.data
  elseif key == "peer" then
    return c and c.peer or nil
  elseif key == "path" or key == "target" or key == "query" then
    -- target: as requested; path: without the query; query: its pairs, decoded
    local t = c and c.target
    if not t then
      return nil
    end
    local q = t:find("?", 1, true)
    if key == "target" then
      return t
    elseif key == "path" then
      return q and t:sub(1, q - 1) or t
    end
    return parse_pairs(q and t:sub(q + 1) or "", "&", true)
  elseif key == "protocol" then
    return c and c.protocol or nil
  end
  return nil
end)

CONN_MT.__newindex = api("newindex", "metamethod", function(...)
  local n = select("#", ...)
  local h, key, value = ...
  local b = check_box(1, h, n >= 1)
  key = checklstring(2, key, n >= 2)
  if key ~= "data" then
    raise(fmt("conn.%s is read-only (keep your own fields in conn.data)", key))
  end
  b.data = value
end)

CONN_MT.__tostring = api("tostring", "metamethod", function(...)
  local b = check_box(1, (...), select("#", ...) >= 1)
  return fmt("conn %d%s", b.id, b.c and "" or " (closed)")
end)

CONN_MT.__eq = function(x, y)
  local a, b = BOX[x], BOX[y]
  return a ~= nil and b ~= nil and a.id == b.id and a.server == b.server
end
CONN_MT.__name = "conn"
CONN_MT.__metatable = false

M.is_conn = function(v)
  return v ~= nil and BOX[v] ~= nil
end

-- ---- timer handles ---------------------------------------------------------------------------

local TIMERS = setmetatable({}, {__mode = "k"}) -- handle -> timer record
local TIMER_MT = {__name = "wsserver.timer", __index = {}}

-- timer:cancel() -> true when it was still armed
TIMER_MT.__index.cancel = api("cancel", "method", function(...)
  local h = ...
  local t = h ~= nil and TIMERS[h] or nil
  if not t then
    typeerror(1, "wsserver.timer", h, select("#", ...) >= 1)
  end
  local armed = t.armed
  t.armed = false
  return armed
end)

-- ---- the simulated server --------------------------------------------------------------------

local Server = {}
Server.__index = Server
local Client = {}
Client.__index = Client

local CLOSE_CODES = {
  NORMAL = 1000, GOING_AWAY = 1001, PROTOCOL_ERROR = 1002, UNSUPPORTED = 1003, NO_STATUS = 1005,
  ABNORMAL = 1006, INVALID_DATA = 1007, POLICY = 1008, TOO_BIG = 1009, EXTENSION = 1010,
  INTERNAL_ERROR = 1011, RESTART = 1012, TRY_AGAIN_LATER = 1013,
}

local RO_NEWINDEX = api("newindex", "metamethod", function()
  raise("the ws table is read-only (keep your data in ws.state)")
end)

local function readonly(t)
  return new_userdata({
    __index = t,
    __newindex = RO_NEWINDEX,
    __pairs = function()
      return next, t, nil
    end,
    __metatable = false,
  })
end

-- A traceback as the server's: frames of this file are hidden, except the API function the app
-- called, shown as the C function it is on the server; it ends like the server's: with the C
-- function that called the handler ("[C]: in ?"), unless the server calls it directly (timers,
-- the chunk, load, and message once the conn's userdata exists).
local KIT_SRC = debug.getinfo(1, "S").short_src

local function server_traceback(tb, direct)
  local head, rest = tb:match("^(.-\nstack traceback:)\n(.*)$")
  if not head then
    return tb
  end
  local names = {}
  for _, a in pairs(API) do
    names[a.name] = true
  end
  local prefix = "\t" .. KIT_SRC .. ":"
  local frames = {}
  for line in (rest .. "\n"):gmatch("(.-)\n") do
    if line == "\t[C]: in function 'xpcall'" then
      break
    end
    if line:sub(1, #prefix) == prefix then
      local what, name = line:match(":%d+: in (%a+ '([^']*)')$")
      if what and names[name] and not line:find("in upvalue") and not line:find("in local") then
        frames[#frames + 1] = "\t[C]: in " .. what
      elseif frames[#frames] == "\t[C]: in function 'error'" and #frames == 1 then
        frames[1] = nil -- raised by the kit for an API function: the server has no such frame
      end
    elseif line ~= "" then
      frames[#frames + 1] = line
    end
  end
  if not direct then
    frames[#frames + 1] = "\t[C]: in ?"
  end
  return head .. "\n" .. table.concat(frames, "\n")
end

-- Kit coroutines that run handlers: a yield inside a handler fails as on the server.
local HANDLER_COS = setmetatable({}, {__mode = "k"})

local function std_assert(...)
  local n = select("#", ...)
  if n == 0 then
    error("bad argument #1 to 'assert' (value expected)", 2)
  end
  local v, msg = ...
  if v then
    return ...
  end
  if n < 2 then
    msg = "assertion failed!"
  end
  error(msg, 0)
end

local STD_GLOBALS = {
  "collectgarbage", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print",
  "rawequal", "rawget", "rawlen", "rawset", "select", "setmetatable", "tonumber", "tostring",
  "type", "xpcall", "warn", "_VERSION", "debug", "io", "math", "os", "package", "string",
  "table", "utf8",
}

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function looks_like_path(s)
  return type(s) == "string" and not s:find("\n") and s:find("%.lua$") ~= nil
end

local function tolstring(e)
  if type(e) == "string" then
    return e
  elseif type(e) == "number" then
    return tostring(e)
  end
  local ok, s = pcall(tostring, e)
  return ok and s or "(error object is not a string)"
end

-- The globals the app's environments fall back to: the standard library, `ws`, and load,
-- loadfile, dofile and require bound to this server (not the test process's globals).
function Server:_build_globals()
  local s = self
  local G = {}
  for _, k in ipairs(STD_GLOBALS) do
    G[k] = _G[k]
  end
  G._G = G
  G.assert = std_assert
  G.ws = s.ws
  G.load = function(...)
    local chunk, name, mode, env = ...
    if select("#", ...) < 4 then
      env = G
    end
    return load(chunk, name, mode, env)
  end
  G.loadfile = function(...)
    local name, mode, env = ...
    if select("#", ...) < 3 then
      env = G
    end
    return loadfile(name, mode, env)
  end
  G.dofile = function(name)
    local fn, err = loadfile(name, "bt", G)
    if not fn then
      error(err, 0)
    end
    return fn()
  end
  G.require = api("require", "global", function(...)
    local name = checklstring(1, (...), select("#", ...) >= 1)
    if name == "ws" then
      return s.ws
    elseif name == "ws.json" then
      return s.json
    end
    local m = s.modules[name]
    if m ~= nil then
      return m
    end
    if s.dir then
      local path = package.searchpath(name, s.dir .. "/?.lua;" .. s.dir .. "/?/init.lua")
      if path then
        local fn, err = loadfile(path, "bt", G)
        if not fn then
          error(fmt("error loading module '%s' from file '%s':\n\t%s", name, path, err), 2)
        end
        local r = fn(name, path)
        if r == nil then
          r = s.modules[name] == nil and true or s.modules[name]
        end
        s.modules[name] = r
        return r, path
      end
    end
    return require(name)
  end)
  -- coroutines inherit the handler time budget, as Lua threads inherit the server's hook
  local co = {}
  for k, v in pairs(coroutine) do
    co[k] = v
  end
  co.create = function(f)
    local c = coroutine.create(f)
    debug.sethook(c, s.hook, "", HOOK_COUNT)
    return c
  end
  co.wrap = function(f)
    local c = co.create(f)
    return function(...)
      local r = pack(coroutine.resume(c, ...))
      if r[1] then
        return unpack(r, 2, r.n)
      end
      if type(r[2]) == "string" then
        error(r[2], 2)
      end
      error(r[2], 0)
    end
  end
  co.yield = function(...)
    if HANDLER_COS[coroutine.running()] then
      error("attempt to yield from outside a coroutine", 0)
    end
    return coroutine.yield(...)
  end
  co.isyieldable = function(...)
    local c = select("#", ...) > 0 and ... or coroutine.running()
    if HANDLER_COS[c] then
      return false
    end
    return coroutine.isyieldable(c)
  end
  co.running = function()
    local c, main = coroutine.running()
    if HANDLER_COS[c] then
      return c, true
    end
    return c, main
  end
  G.coroutine = co
  s.G = G
end

function Server:_build_ws()
  local s = self
  local W = {}

  local function opts_opcode(arg, opts, present)
    if opts == nil then
      return "text"
    end
    if type(opts) ~= "table" then
      raise("options must be a table, got " .. type(opts))
    end
    return opts.binary and "binary" or "text"
  end

  -- The data and opts arguments of ws.broadcast and ws.publish (data at arg, of n): data, opcode.
  local function check_data(arg, data, opts, n)
    data = checklstring(arg, data, n >= arg)
    local op = opts_opcode(arg + 1, opts, n >= arg + 1)
    if op == "text" and not valid_utf8(data) then
      raise("text message is not valid UTF-8 (pass {binary = true})")
    end
    return data, op
  end

  local function except_id(opts)
    if opts == nil then
      return 0
    end
    local v = opts.except
    if math.type(v) == "integer" then
      return v
    elseif v == nil then
      return 0
    elseif BOX[v] then
      return BOX[v].id
    end
    raise("opts.except must be a conn or a connection id, got " .. type(v))
  end

  -- ws.broadcast(data [, {except =, filter =, binary =}]) -> count
  W.broadcast = api("broadcast", "field", function(...)
    local n = select("#", ...)
    local data, opts = ...
    local op
    data, op = check_data(1, data, opts, n)
    local except = except_id(opts)
    local filter
    if opts ~= nil then
      filter = opts.filter
      if filter ~= nil and type(filter) ~= "function" then
        raise("opts.filter must be a function, got " .. type(filter))
      end
    end
    if not s.attached then
      return 0
    end
    local reached = s:_broadcast(op, data, except, filter) -- not a tail call: keeps the frame
    return reached
  end)

  -- ws.publish(topic, data [, {except =, binary =}]) -> count
  W.publish = api("publish", "field", function(...)
    local n = select("#", ...)
    local topic, data, opts = ...
    topic = checklstring(1, topic, n >= 1)
    local op
    data, op = check_data(2, data, opts, n)
    local except = except_id(opts)
    if not s.attached then
      return 0
    end
    return s:_publish(topic, op, data, except)
  end)

  W.subscribers = api("subscribers", "field", function(...)
    local topic = checklstring(1, (...), select("#", ...) >= 1)
    local t = s.attached and s.topic_map[topic]
    return t and #t.subs or 0
  end)

  W.topics = api("topics", "field", function()
    return s.attached and sorted_keys(s.topic_map) or {}
  end)

  W.connections = api("connections", "field", function()
    local list = {}
    if s.attached then
      for _, c in ipairs(s.conns) do
        if c.state == OPEN then
          list[#list + 1] = s:_handle(c)
        end
      end
    end
    local i = 0
    return function()
      i = i + 1
      return list[i]
    end
  end)

  W.get = api("get", "field", function(...)
    local id = checkinteger(1, (...), select("#", ...) >= 1)
    local c = s.attached and id > 0 and s.by_id[id] or nil
    if c and c.state ~= CLOSED and c.opened then
      return s:_handle(c)
    end
    return nil
  end)

  W.count = api("count", "field", function()
    return s.attached and s.nopen or 0
  end)

  local function start_timer(repeating, ...)
    local n = select("#", ...)
    local seconds, fn = ...
    seconds = checknumber(1, seconds, n >= 1)
    if not (seconds >= 0 and seconds < math.huge) then
      argerror(1, "seconds must be a number >= 0")
    end
    if repeating and not (seconds >= 0.001) then
      argerror(1, "ws.every needs at least 0.001 seconds")
    end
    checktype(2, fn, n >= 2, "function")
    return s:_add_timer(seconds, fn, repeating)
  end
  W.after = api("after", "field", function(...)
    return (start_timer(false, ...))
  end)
  W.every = api("every", "field", function(...)
    return (start_timer(true, ...))
  end)

  -- Handlers that wait (SPEC §4a) are not simulated yet: the kit runs handlers as plain calls.
  W.sleep = api("sleep", "field", function()
    error("ws.sleep is not simulated by the testing kit yet", 2)
  end)
  local HTTP = {}
  for _, name in ipairs({"request", "get", "post"}) do
    HTTP[name] = api(name, "field", function()
      error("ws.http." .. name .. " is not simulated by the testing kit yet", 2)
    end)
  end
  W.http = readonly(HTTP)

  W.stats = api("stats", "field", function()
    local st = {}
    if s.attached then
      for k, v in pairs(s.counters) do
        st[k] = v
      end
      st.connections = s.nopen
      st.topics = 0
      for _ in pairs(s.topic_map) do
        st.topics = st.topics + 1
      end
    end
    st.lua_memory = math.floor(collectgarbage("count") * 1024)
    st.generation = s.generation
    return st
  end)

  W.now = api("now", "field", function()
    return s.clock
  end)

  W.reload = api("reload", "field", function()
    s.reload_pending = true
    return true
  end)

  W.shutdown = api("shutdown", "field", function()
    if s.attached then
      s:_shutdown("ws.shutdown")
    end
    return s.attached
  end)

  local LOG = {}
  for _, level in ipairs({"debug", "info", "warn", "error"}) do
    LOG[level] = api(level, "field", function(...)
      local msg, fields = ...
      msg = checklstring(1, msg, select("#", ...) >= 1)
      local line = {level = level, msg = msg, fields = {}}
      if type(fields) == "table" then
        for k, v in next, fields do
          if type(k) == "string" then
            line.fields[k] = math.type(v) == "integer" and v or tostring(v)
          end
        end
      end
      s.log_lines[#s.log_lines + 1] = line
    end)
  end
  W.log = readonly(LOG)
  W.close_codes = readonly(CLOSE_CODES)
  W.state = s.state
  W.json = readonly(json)
  W.null = json.null
  s.json = W.json
  s.W = W
  s.ws = readonly(W)
end

-- Runs fn(...) as the server runs a Lua callback (lb_call): protected, with a traceback, under
-- the handler time budget. Returns true, results... or false, message (logged in t:errors()).
function Server:_call(what, fn, ...)
  local direct = self.direct_call
  self.direct_call = nil
  local outer = self.depth == 0
  if outer then
    self.deadline = os.clock() + self.handler_timeout
    self.timed_out = false
  end
  self.depth = self.depth + 1
  local co = coroutine.create(function(...)
    return xpcall(fn, function(e)
      debug.sethook()
      local msg = tolstring(e)
      return {msg = msg, tb = server_traceback(debug.traceback(msg, 2), direct)}
    end, ...)
  end)
  HANDLER_COS[co] = true
  debug.sethook(co, self.hook, "", HOOK_COUNT)
  local r = pack(coroutine.resume(co, ...))
  self.depth = self.depth - 1
  if outer then
    self.timed_out = false
  end
  local err
  if not r[1] then
    err = {msg = tolstring(r[2]), tb = tolstring(r[2])}
  elseif coroutine.status(co) ~= "dead" then
    err = {msg = "attempt to yield from outside a coroutine",
           tb = "attempt to yield from outside a coroutine"}
  elseif r[2] then
    return true, unpack(r, 3, r.n)
  else
    err = r[3]
  end
  self.error_list[#self.error_list + 1] = {handler = what, message = err.msg,
                                           traceback = err.tb}
  self.last_error = err.tb:sub(1, 1023)
  if self.attached then
    self.counters.handler_errors = self.counters.handler_errors + 1
  end
  return false, err.msg
end

-- A connection's handler; a failure goes to app.error, then closes the connection with 1011.
function Server:_conn_event(what, c, ...)
  local fn = self.handlers[what]
  if not fn then
    return
  end
  self.direct_call = what == "message" and self.handles[c.id] ~= nil
  if not self:_call(what, fn, self:_handle(c), ...) then
    self:_handler_failed(c, what)
  end
end

function Server:_handler_failed(c, what)
  local err = self.handlers.error
  if err then
    self:_call("error", err, what .. " handler failed: " .. self.last_error, self:_handle(c))
  end
  if c.state == OPEN then
    self:_start_close(c, 1011, "internal error")
  end
end

function Server:_handle(c)
  local h = self.handles[c.id]
  if not h then
    h = new_userdata(CONN_MT)
    BOX[h] = {id = c.id, c = c, server = self}
    self.handles[c.id] = h
  end
  return h
end

function Server:_release(c)
  local h = self.handles[c.id]
  if h then
    BOX[h].c = nil
    self.handles[c.id] = nil
  end
end

-- ---- topics (src/topics.c: an unordered array per topic, removal swaps with the last) ----

function Server:_subscribe(c, name)
  self.atomic = self.atomic + 1
  local t = self.topic_map[name]
  if not t then
    t = {subs = {}, pos = {}}
    self.topic_map[name] = t
  elseif t.pos[c] then
    self.atomic = self.atomic - 1
    return false
  end
  t.subs[#t.subs + 1] = c
  t.pos[c] = #t.subs
  c.topics[#c.topics + 1] = name
  self.atomic = self.atomic - 1
  return true
end

function Server:_remove_member(name, c)
  local t = self.topic_map[name]
  local pos = t.pos[c]
  local last = t.subs[#t.subs]
  t.subs[#t.subs] = nil
  t.pos[c] = nil
  if last ~= c then
    t.subs[pos] = last
    t.pos[last] = pos
  end
  if #t.subs == 0 then
    self.topic_map[name] = nil
  end
end

function Server:_unsubscribe(c, name)
  local t = self.topic_map[name]
  if not (t and t.pos[c]) then
    return false
  end
  self.atomic = self.atomic + 1
  remove_value(c.topics, name)
  self:_remove_member(name, c)
  self.atomic = self.atomic - 1
  return true
end

function Server:_leave_all(c)
  for _, name in ipairs(c.topics) do
    self:_remove_member(name, c)
  end
  c.topics = {}
end

-- ---- the send queue (src/conn.c) ---------------------------------------------------------

function Server:_low_water()
  local half = self.cfg.max_buffered // 2
  return half < 65536 and half or 65536
end

function Server:_queue(c, entry, bytes)
  self.atomic = self.atomic + 1
  entry.bytes = bytes
  c.outq[#c.outq + 1] = entry
  c.out_bytes = c.out_bytes + bytes
  self.queued = self.queued + bytes
  self.atomic = self.atomic - 1
end

function Server:_sent_result(c)
  if c.out_bytes > self:_low_water() then
    c.above_low = true
    return "queued"
  end
  return "sent"
end

-- Back-pressure: a queue may not grow past max_buffered (one message of any size may enter an
-- empty queue), nor all queues together past max_buffered_total.
function Server:_accept_data(c, len)
  local cfg = self.cfg
  local own_ok = c.out_bytes == 0 or c.out_bytes + len <= cfg.max_buffered
  local total_ok = c.out_bytes == 0 or self.queued + len <= cfg.max_buffered_total
  if own_ok and total_ok then
    return true
  end
  if cfg.backpressure == "drop" then
    self.counters.dropped = self.counters.dropped + 1
    return nil, "dropped"
  end
  self:_start_close(c, 1008, "slow consumer")
  return nil, "closed"
end

-- conn:send: "sent", "queued", or nil, "closed" / "dropped"
function Server:_send(c, op, data)
  if c.state ~= OPEN then
    return nil, "closed"
  end
  local ok, err = self:_accept_data(c, #data)
  if not ok then
    return nil, err
  end
  self.counters.messages_out = self.counters.messages_out + 1
  self.counters.bytes_out = self.counters.bytes_out + frame_len(#data)
  if c.out_bytes == 0 and #data >= CHUNK_BYTES and not c.client.paused then
    self:_queue(c, {kind = op, data = data}, 0) -- written straight to the socket
  else
    self:_queue(c, {kind = op, data = data}, frame_len(#data))
  end
  return self:_sent_result(c)
end

-- One encoded frame for many connections (broadcast, publish): true when accepted.
function Server:_send_shared(c, op, data)
  if c.state ~= OPEN then
    return false
  end
  local len = frame_len(#data)
  if not self:_accept_data(c, len) then
    return false
  end
  self.counters.messages_out = self.counters.messages_out + 1
  self.counters.bytes_out = self.counters.bytes_out + len
  self:_queue(c, {kind = op, data = data}, len)
  self:_sent_result(c)
  return true
end

function Server:_broadcast(op, data, except, filter)
  local reached, failed, ferr = 0, false, nil
  for _, c in ipairs(copy_list(self.conns)) do
    if c.state == OPEN and c.id ~= except then
      local keep = true
      if filter then
        if failed then
          keep = false
        else
          local ok, r = pcall(filter, self:_handle(c))
          if not ok then
            failed, ferr, keep = true, r, false
          else
            keep = r and true or false
          end
        end
      end
      if keep and self:_send_shared(c, op, data) then
        reached = reached + 1
      end
    end
  end
  if failed then
    error(ferr, 0)
  end
  return reached
end

function Server:_publish(name, op, data, except)
  local t = self.topic_map[name]
  if not t then
    return 0
  end
  local reached = 0
  for _, c in ipairs(copy_list(t.subs)) do
    if c.id ~= except and self:_send_shared(c, op, data) then
      reached = reached + 1
    end
  end
  return reached
end

-- Every state change goes through here: ws.count() counts the OPEN connections.
function Server:_set_state(c, to)
  if c.state == OPEN then
    self.nopen = self.nopen - 1
  end
  if to == OPEN then
    self.nopen = self.nopen + 1
  end
  c.state = to
end

-- Our close frame: nothing is sent after it; close() will report code and reason.
function Server:_start_close(c, code, reason)
  self.atomic = self.atomic + 1
  local r = close_reason(reason or "")
  self:_queue(c, {kind = "close", code = code, reason = r}, 4 + #r)
  c.close_code = code
  c.close_reason = (reason and reason ~= "") and reason or nil
  self:_set_state(c, CLOSING)
  c.closing_since = self.clock
  self.atomic = self.atomic - 1
end

-- The peer's close frame (its own close, or the answer to ours).
function Server:_on_peer_close(c, code, reason)
  c.close_code = code
  c.close_reason = reason ~= "" and reason or nil
  if c.state == OPEN then
    -- echo the status code (none when the peer sent none)
    self:_queue(c, {kind = "close", code = code ~= 1005 and code or nil, reason = ""},
                code ~= 1005 and 4 or 2)
    self:_set_state(c, CLOSING)
    c.closing_since = self.clock
  end
end

-- The socket is gone; close() runs in the sweep.
function Server:_kill(c, code, reason)
  if c.state == CLOSED then
    return
  end
  if not c.close_code then
    c.close_code = code
    if reason and not c.close_reason then
      c.close_reason = reason
    end
  end
  self:_set_state(c, CLOSED)
  self.queued = self.queued - c.out_bytes
  c.out_bytes = 0
  c.outq = {}
  self.dead[#self.dead + 1] = c
end

-- Writes the queue to a client that reads (the end of a loop iteration).
function Server:_flush(c)
  local client = c.client
  local entries = c.outq
  c.outq = {}
  self.queued = self.queued - c.out_bytes
  c.out_bytes = 0
  local got_close
  for _, e in ipairs(entries) do
    if client then
      got_close = client:_deliver(e) or got_close
    end
  end
  if c.above_low and c.state == OPEN then
    c.above_low = false
    self:_conn_event("drain", c)
  end
  if got_close and c.state ~= CLOSED then
    -- the client answers our close frame (with the code and reason it got), or got the answer
    -- to its own; either way it then closes the TCP connection
    if not client.close_sent then
      client.close_sent = true
      self:_on_peer_close(c, got_close.code or 1005, got_close.reason or "")
    end
    self:_kill(c, 1006, nil)
  end
end

function Server:_destroy(c)
  local code = c.close_code or 1006
  self.counters.closes[code] = (self.counters.closes[code] or 0) + 1
  if c.opened then
    local fn = self.handlers.close
    if fn then
      self:_call("close", fn, self:_handle(c), code, c.close_reason or "")
    end
    self.nupgraded = self.nupgraded - 1
  end
  -- close runs with the topics attached; unsubscribe after, then the handle goes stale
  self:_leave_all(c)
  self:_release(c)
  if c.ip then
    self.per_ip[c.ip] = self.per_ip[c.ip] - 1
  end
  remove_value(self.conns, c)
  self.by_id[c.id] = nil
end

-- The end of a loop iteration: flush what clients can read, run close() for the connections
-- that went away, and a reload ws.reload() asked for; again until nothing is left.
function Server:_sweep()
  if self.sweeping then
    return
  end
  self.sweeping = true
  local ok, err = pcall(function()
    repeat
      local progress = false
      for _, c in ipairs(copy_list(self.conns)) do
        if #c.outq > 0 and c.state ~= CLOSED and not (c.client and c.client.paused) then
          self:_flush(c)
          progress = true
        end
      end
      while #self.dead > 0 do
        self:_destroy(table.remove(self.dead, 1))
        progress = true
      end
      if self.reload_pending then
        self.reload_pending = false
        self:_load_version("request")
        progress = true
      end
    until not progress
  end)
  self.sweeping = false
  if not ok then
    error(err, 0)
  end
end

-- ---- timers ----------------------------------------------------------------------------------

function Server:_add_timer(seconds, fn, repeating)
  self.atomic = self.atomic + 1
  local h = new_userdata(TIMER_MT)
  self.timer_seq = self.timer_seq + 1
  local t = {
    handle = h, fn = fn, armed = true, due = self.clock + seconds,
    interval = repeating and seconds or nil, seq = self.timer_seq,
    generation = self.generation + (self.loading and 1 or 0),
  }
  TIMERS[h] = t
  self.timers[#self.timers + 1] = t
  self.atomic = self.atomic - 1
  return h
end

-- Cancels the timers of every generation but keep (all with 0).
function Server:_cancel_timers(keep)
  for _, t in ipairs(self.timers) do
    if not t.internal and (t.generation ~= keep or keep == 0) then
      t.armed = false
    end
  end
end

function Server:_prune_timers()
  local live = {}
  for _, t in ipairs(self.timers) do
    if t.armed then
      live[#live + 1] = t
    end
  end
  self.timers = live
end

-- The next thing the clock makes happen, at or before `limit`: a timer or a connection deadline.
function Server:_next_event(limit)
  local best_at, best_kind, best, best_seq
  local function consider(at, kind, obj, seq)
    if at <= limit and (not best_at or at < best_at or (at == best_at and seq < best_seq)) then
      best_at, best_kind, best, best_seq = at, kind, obj, seq
    end
  end
  for _, t in ipairs(self.timers) do
    if t.armed then
      consider(t.due, "timer", t, t.seq)
    end
  end
  local cfg = self.cfg
  for _, c in ipairs(self.conns) do
    if c.state == CLOSING and c.client and c.client.paused then
      consider(c.closing_since + cfg.close_timeout, "close_timeout", c, -c.id)
    elseif c.state == OPEN then
      if cfg.idle_timeout > 0 then
        consider(c.last_message + cfg.idle_timeout, "idle", c, -c.id)
      end
      if cfg.ping_interval > 0 and c.client and c.client.paused then
        if c.ping_sent then
          consider(c.ping_sent + cfg.pong_timeout, "pong_timeout", c, -c.id)
        else
          consider(c.last_read + cfg.ping_interval, "ping", c, -c.id)
        end
      end
    end
  end
  return best_at, best_kind, best
end

function Server:_fire(kind, obj)
  if kind == "timer" then
    local t = obj
    if t.interval then
      t.due = t.due + t.interval
    else
      t.armed = false
    end
    self.direct_call = true
    self:_call(t.interval and "every" or "after", t.fn)
  elseif kind == "close_timeout" then
    self:_kill(obj, 1006, "close timeout")
  elseif kind == "idle" then
    self:_start_close(obj, 1001, "idle timeout")
  elseif kind == "pong_timeout" then
    self:_start_close(obj, 1001, "pong timeout")
  elseif kind == "ping" then
    self:_queue(obj, {kind = "ping", data = ""}, 2)
    obj.ping_sent = self.clock
  end
end

-- ---- loading and reloading (src/lb_state.c) -------------------------------------------------

local function validate_app(app)
  if type(app) ~= "table" then
    return fmt("the app must return a table, got %s", app == nil and "nil" or type(app))
  end
  for k, v in next, app do
    local key = type(k) == "string" and k or nil
    local want, known
    if key == "config" or key == "http" then
      known = true
      want = type(v) ~= "table" and "a table" or nil
    elseif key and IS_HANDLER[key] then
      known = true
      want = type(v) ~= "function" and "a function" or nil
    end
    if not known then
      return fmt("unknown app field '%s' (known: config, http, upgrade, open, message, close, " ..
                 "drain, shutdown, load, error)", key or type(k))
    end
    if want then
      return fmt("app.%s must be %s, got %s", key, want, type(v))
    end
  end
end

-- The paths the server answers itself, before any app route.
local BUILTIN_PATHS = {["/healthz"] = true, ["/metrics"] = true}

-- lb_load.c check_routes: the routes table's own keys are "METHOD /path" holding functions.
local function check_routes(routes)
  for k, v in next, routes do
    if type(k) ~= "string" then
      return fmt('app.http keys must be strings like "GET /path", got a %s', type(k))
    end
    local method, path = k:match("^(%u+) (.*)$")
    local why
    if not method or path:sub(1, 1) ~= "/" then
      why = 'must be "METHOD /path" (e.g. "GET /count")'
    elseif path:find("[%z\1-\32?#\127]") then
      why = 'must be "METHOD /path" with a path of its own (no spaces, no query)'
    elseif BUILTIN_PATHS[path] then
      why = "is a path the server answers itself (/healthz, /metrics): pick another path"
    elseif type(v) ~= "function" then
      return fmt('app.http["%s"] must be a function, got %s', k:sub(1, 100), type(v))
    end
    if why then
      return fmt('app.http key "%s" %s', k:sub(1, 100), why)
    end
  end
end

-- Reads app[field] as the server does (an ordinary index: __index may answer); nil, err when a
-- metamethod raises.
local function read_field(app, field)
  local ok, v = pcall(function()
    return app[field]
  end)
  if not ok then
    return nil, fmt("reading app.%s failed: %s", field,
                    type(v) == "string" and v or "(error object is not a string)")
  end
  return v
end

-- Builds the next version aside (compile, run in a fresh environment, validate, config, load())
-- and swaps it in only when everything passed; any failure keeps the running version.
function Server:_load_version(trigger)
  local saved_modules = self.modules
  self.modules = {}
  local function fail(err)
    self.loading = false
    self:_cancel_timers(self.generation) -- timers the failed version started
    self:_prune_timers()
    self.modules = saved_modules
    if self.attached then
      self.counters.reloads_failed = self.counters.reloads_failed + 1
    end
    self.events[#self.events + 1] = {event = "app_load_failed", trigger = trigger, error = err}
    return false, err
  end

  local env = setmetatable({}, {__index = self.G})
  local chunk, err
  if self.source then
    chunk, err = load(self.source, "@" .. self.file, "t", env)
  else
    chunk, err = loadfile(self.path, "t", env)
  end
  if not chunk then
    return fail(err)
  end
  self.loading = true
  self.direct_call = true
  local ok, app = self:_call("app", chunk)
  if not ok then
    return fail("running the app failed: " .. tostring(app))
  end
  err = validate_app(app)
  if err then
    return fail(err)
  end
  local cfg = copy_config(self.base)
  local config
  config, err = read_field(app, "config")
  if err then
    return fail(err)
  end
  if config ~= nil and type(config) ~= "table" then
    return fail(fmt("app.config must be a table, got %s", type(config)))
  end
  if config ~= nil then
    local ok, e = pcall(function()
      return apply_config(config, cfg, false) or validate_config(cfg)
    end)
    if ok then
      err = e
    else
      err = fmt("reading app.config failed: %s",
                type(e) == "string" and e or "(error object is not a string)")
    end
    if err then
      return fail(err)
    end
  end
  local routes
  routes, err = read_field(app, "http")
  if err then
    return fail(err)
  end
  if routes ~= nil and type(routes) ~= "table" then
    return fail(fmt("app.http must be a table, got %s", type(routes)))
  end
  err = routes and check_routes(routes)
  if err then
    return fail(err)
  end
  local handlers = {}
  for _, name in ipairs(HANDLERS) do
    local f
    f, err = read_field(app, name)
    if err then
      return fail(err)
    end
    if f ~= nil and type(f) ~= "function" then
      return fail(fmt("app.%s must be a function, got %s", name, type(f)))
    end
    handlers[name] = f
  end
  if self.attached then
    local load_fn = handlers.load
    if load_fn then
      local info = {generation = self.generation + 1, previous = self.generation,
                    file = self.file, trigger = trigger or "start"}
      self.direct_call = true
      local lok, lerr = self:_call("load", load_fn, self.state, info)
      if not lok then
        return fail("load() failed: " .. tostring(lerr))
      end
    end
  end
  -- committed: from here on nothing fails
  self.loading = false
  self.app = app
  self.handlers = handlers
  self.routes = routes
  self.generation = self.generation + 1
  if self.attached then
    self.counters.reloads_ok = self.counters.reloads_ok + 1
  end
  self:_cancel_timers(self.generation)
  self:_prune_timers()
  if self.attached then
    -- options that are not live keep the values the process started with
    for _, o in ipairs(OPTIONS) do
      if o.live == false then
        local v = self.cfg[o.name]
        cfg[o.name] = type(v) == "table" and copy_list(v) or v
      end
    end
  end
  self.cfg = cfg
  self.config = cfg
  self.handler_timeout = cfg.handler_timeout
  self.events[#self.events + 1] = {event = "app_loaded", trigger = trigger or "start",
                                   generation = self.generation}
  return true
end

-- ---- public: the server ----------------------------------------------------------------------

local function new_server(opts)
  local s = setmetatable({}, Server)
  s.state = {}
  s.clock = opts.now or os.time()
  s.next_id = 0
  s.conns = {}
  s.by_id = {}
  s.handles = {}
  s.topic_map = {}
  s.timers = {}
  s.timer_seq = 0
  s.dead = {}
  s.per_ip = {}
  s.modules = {}
  s.nopen = 0
  s.nupgraded = 0
  s.last_error = ""
  s.queued = 0
  s.depth = 0
  s.atomic = 0
  s.generation = 0
  s.log_lines = {}
  s.error_list = {}
  s.events = {}
  s.handlers = {}
  s.counters = {
    connections_total = 0, messages_in = 0, messages_out = 0, bytes_in = 0, bytes_out = 0,
    handshake_rejections = 0, handler_errors = 0, dropped = 0, reloads_ok = 0,
    reloads_failed = 0, closes = {},
  }
  s.hook = function()
    if s.depth > 0 and s.atomic == 0 and (s.timed_out or os.clock() > s.deadline) then
      if not s.timed_out then
        -- from now on at every instruction: a pcall loop cannot swallow it
        s.timed_out = true
        debug.sethook(s.hook, "", 1)
      end
      error(fmt("handler exceeded handler_timeout (%f s)", s.handler_timeout), 3)
    end
  end
  s:_build_ws()
  s:_build_globals()
  return s
end

--- Loads an app (a path ending in .lua, or Lua source) into a new simulated server.
function M.load(app, opts)
  opts = opts or {}
  if type(app) ~= "string" then
    error("ws.testing.load: expected a path or Lua source, got " .. type(app), 2)
  end
  local s = new_server(opts)
  if opts.source == true or not looks_like_path(app) then
    s.source = app
    s.file = opts.name or "app.lua"
    s.dir = opts.dir
  else
    s.path = app
    s.file = app
    s.dir = opts.dir or dirname(app)
  end
  s.base = new_config()
  if opts.config then
    local err = apply_config(opts.config, s.base, true) or validate_config(s.base)
    if err then
      error("ws.testing.load: " .. err, 2)
    end
  end
  s.cfg = copy_config(s.base)
  s.config = s.cfg
  s.handler_timeout = s.cfg.handler_timeout
  local ok, err = s:_load_version(nil)
  if not ok then
    error(fmt("ws.testing.load: %s: the app failed to load: %s", s.file, err), 2)
  end
  s.app_loaded = true
  s.attached = true
  local load_fn = s.handlers.load
  if type(load_fn) == "function" then
    s.direct_call = true
    local lok, lerr = s:_call("load", load_fn, s.state,
                              {generation = s.generation, previous = s.generation - 1,
                               file = s.file, trigger = "start"})
    if not lok then
      error(fmt("ws.testing.load: %s: load() failed: %s", s.file, lerr), 2)
    end
  end
  s.events[#s.events + 1] = {event = "app_loaded", trigger = "start", generation = s.generation}
  return s
end

function Server:flush()
  self:_sweep()
end

--- The virtual clock (ws.now()).
function Server:now()
  return self.clock
end

-- A new connection (WebSocket or plain HTTP) is accepted: its id. Raises for the caller of
-- connect or http while the server shuts down.
function Server:_accept()
  if self.shutting_down then
    error("ws.testing: the server is shutting down and accepts no connection", 3)
  end
  self:_sweep()
  self.next_id = self.next_id + 1
  self.counters.connections_total = self.counters.connections_total + 1
  return self.next_id
end

--- Opens a WebSocket connection: upgrade, then open. Returns a client, or nil, status, body.
function Server:connect(opts)
  opts = opts or {}
  local id = self:_accept()
  local target = build_target(opts.path, opts.query)
  local raw = handshake_headers(opts)
  local peer = opts.peer or ("127.0.0.1:" .. (40000 + id % 20000))
  if not peer:find(":%d+$") then
    peer = peer .. ":" .. (40000 + id % 20000)
  end
  local c = {
    id = id, server = self, state = CONNECTING, target = target, peer = peer, outq = {},
    out_bytes = 0, topics = {}, last_read = self.clock, last_message = self.clock,
  }
  self.conns[#self.conns + 1] = c
  self.by_id[id] = c

  local function refuse(status, body, headers)
    self.counters.handshake_rejections = self.counters.handshake_rejections + 1
    c.state = CLOSED
    self:_destroy(c)
    self:_sweep()
    body = (body or REASONS[status] or "Unknown"):sub(1, 1024) .. "\n"
    local h = {["content-type"] = "text/plain; charset=utf-8"}
    for k, v in pairs(headers or {}) do
      h[k] = v
    end
    return nil, status, body, h
  end

  local cfg = self.cfg
  if self.nupgraded >= cfg.max_connections then
    return refuse(503, "server full")
  end
  if cfg.max_connections_per_ip > 0 then
    local ip = peer:match("^(.*):%d+$")
    if (self.per_ip[ip] or 0) + 1 > cfg.max_connections_per_ip then
      return refuse(503, "too many connections from this address")
    end
    self.per_ip[ip] = (self.per_ip[ip] or 0) + 1
    c.ip = ip
  end

  local reply = {}
  local upgrade = self.handlers.upgrade
  if upgrade then
    local req = make_request("GET", target, raw, peer)
    local ok = self:_call("upgrade", function()
      local a, status, body, headers = upgrade(req)
      if type(a) == "table" then
        local p = a.protocol
        if type(p) == "string" then
          reply.protocol = p
        end
        local d = a.data
        if d ~= nil then
          BOX[self:_handle(c)].data = d
        end
      elseif a == false then
        status = math.tointeger(status) or 403 -- 401 and 401.0 alike, as the server
        reply.status = (status >= 400 and status <= 599) and status or 403
        if type(body) == "string" then
          reply.body = body
        end
        if type(headers) == "table" then
          -- e.g. WWW-Authenticate with a 401, Retry-After with a 503
          reply.headers = collect_headers(headers)
        end
      end
    end)
    if not ok then
      reply = {status = 500}
    end
  end
  if reply.status then
    return refuse(reply.status, reply.body, reply.headers)
  end
  local protocol
  if reply.protocol then
    if not offers(raw, reply.protocol) or not is_token(reply.protocol) then
      -- the server answers only a protocol the client offered
      self.events[#self.events + 1] = {event = "bad_protocol", conn = id,
                                       protocol = reply.protocol}
      return refuse(500, "internal error")
    end
    protocol = reply.protocol
  elseif #cfg.protocols > 0 then
    for _, p in ipairs(cfg.protocols) do
      if offers(raw, p) then
        protocol = p
        break
      end
    end
  end
  c.protocol = protocol
  self:_set_state(c, OPEN)
  c.opened = true
  self.nupgraded = self.nupgraded + 1
  local client = setmetatable({
    server = self, c = c, id = id, conn = self:_handle(c), protocol = protocol, queue = {},
    all = {}, pings = {}, status = 101,
  }, Client)
  c.client = client
  -- the 101 response sits in the queue while open runs
  self:_queue(c, {kind = "handshake"},
              129 + (protocol and #protocol + 26 or 0))
  self:_conn_event("open", c)
  self:_sweep()
  return client
end

--- A plain HTTP request: app.http routes, /healthz. Returns status, body, headers.
function Server:http(method, target, headers)
  method = method or "GET"
  target = target or "/"
  local id = self:_accept()
  local peer = "127.0.0.1:" .. (40000 + id % 20000)
  local head = method == "HEAD"
  local get = head or method == "GET"
  local path = target:match("^[^?]*")
  local text = "text/plain; charset=utf-8"
  local status, body, out
  if get and path == "/healthz" then
    status = self.shutting_down and 503 or 200
    body = self.shutting_down and "shutting down\n" or "ok\n"
    out = {["content-type"] = text}
  elseif get and self.cfg.metrics and path == "/metrics" then
    status, body = 200, "# ws.testing does not simulate /metrics\n"
    out = {["content-type"] = "text/plain; version=0.0.4; charset=utf-8"}
  elseif self.routes then
    local routed = false
    local routes = self.routes
    local raw = {{"Host", "127.0.0.1"}}
    for _, p in ipairs(header_list(headers)) do
      raw[#raw + 1] = p
    end
    local ok = self:_call("http", function()
      local key = (head and "GET" or method) .. " " .. path
      local fn = routes[key]
      if type(fn) ~= "function" then
        return
      end
      routed = true
      local st, b, h = fn(make_request(method, target, raw, peer))
      -- lb_app.c call_http: anything but a status number, a string body and a headers table
      -- is the route's bug, raised as its error (answered 500)
      local code = type(st) == "number" and math.tointeger(st) or nil
      if not code or code < 100 or code > 599 then
        error(fmt('http route "%s" must return a status number from 100 to 599, got %s', key,
                  type(st) == "number" and tostring(st) or type(st)), 0)
      end
      if b ~= nil and type(b) ~= "string" then
        error(fmt('http route "%s" must return a string body (or nil), got %s', key, type(b)), 0)
      end
      if h ~= nil and type(h) ~= "table" then
        error(fmt('http route "%s" must return a headers table (or nil), got %s', key, type(h)),
              0)
      end
      status = code
      body = b or ""
      out = {["content-type"] = text}
      if type(h) == "table" then
        for k, v in pairs(collect_headers(h)) do
          out[k] = v
        end
      end
    end)
    if not ok then
      status, body, out = 500, "internal error\n", {["content-type"] = text}
    elseif not routed then
      status = nil
    end
  end
  if not status then
    out = {["content-type"] = text}
    if get and self.cfg.static then
      status, body = 404, "Not Found\n" -- ws.testing does not serve --static files
    elseif not get then
      status, body = 405, "method not allowed\n"
      out.allow = "GET, HEAD"
    elseif self.app.http ~= nil then
      status, body = 404, "not found\n" -- the app serves HTTP: an unknown path is not found
    else
      status, body = 426, "this is a WebSocket endpoint: use a WebSocket client\n"
      out.upgrade = "websocket"
    end
  elseif head then
    body = ""
  end
  self:_sweep()
  return status, body, out
end

--- Moves the virtual clock: timers, idle and close timeouts fire in order.
function Server:advance(seconds)
  seconds = seconds or 0
  if type(seconds) ~= "number" or not (seconds >= 0) then
    error("ws.testing: advance(seconds) needs a number >= 0", 2)
  end
  self:_sweep()
  local target = self.clock + seconds
  while true do
    local at, kind, obj = self:_next_event(target)
    if not at then
      break
    end
    if at > self.clock then
      self.clock = at
    end
    self:_fire(kind, obj)
    self:_prune_timers()
    self:_sweep()
  end
  self.clock = target
end

--- Reloads the app (SIGHUP): from new source or path if given. Returns true or false, err.
function Server:reload(new, trigger)
  self:_sweep()
  if new ~= nil then
    if looks_like_path(new) then
      self.path, self.file, self.source = new, new, nil
      self.dir = dirname(new)
    else
      self.source = new
      self.path = nil
    end
  end
  local ok, err = self:_load_version(trigger or "SIGHUP")
  self:_sweep()
  return ok, err
end

--- Graceful shutdown: app.shutdown(reason), then every connection closed with 1001.
function Server:shutdown(reason)
  self:_shutdown(reason or "SIGTERM")
  self:_sweep()
end

function Server:_shutdown(reason)
  if self.shutting_down then
    return
  end
  self.shutting_down = true
  local fn = self.handlers.shutdown
  if fn then
    self:_call("shutdown", fn, reason)
  end
  for _, c in ipairs(copy_list(self.conns)) do
    if c.state == OPEN then
      self:_start_close(c, 1001, "server shutting down")
    end
  end
  local h = self:_add_timer(self.cfg.shutdown_timeout, function()
    for _, c in ipairs(copy_list(self.conns)) do
      self:_kill(c, 1001, "shutdown timeout")
    end
  end, false)
  TIMERS[h].internal = true
end

function Server:subscribers(topic)
  local t = self.topic_map[topic]
  return t and #t.subs or 0
end

function Server:topics()
  return self.W.topics()
end

function Server:count()
  return self.nopen
end

function Server:get(id)
  return self.W.get(id)
end

function Server:stats()
  return self.W.stats()
end

function Server:logs(level)
  local order = {debug = 1, info = 2, warn = 3, error = 4}
  local min = level and order[level] or 1
  local out = {}
  for _, l in ipairs(self.log_lines) do
    if order[l.level] >= min then
      out[#out + 1] = l
    end
  end
  return out
end

function Server:errors()
  return copy_list(self.error_list)
end

-- ---- public: the client ----------------------------------------------------------------------

-- A frame arrives at the client. Returns the close entry when it was a close frame.
function Client:_deliver(e)
  if e.kind == "handshake" then
    return nil
  elseif e.kind == "ping" then
    self.pings[#self.pings + 1] = e.data
    local c = self.c
    c.ping_sent = nil
    c.last_read = self.server.clock
    return nil
  elseif e.kind == "close" then
    if self.closed then
      return nil
    end
    local entry = {kind = "close", code = e.code or 1005, reason = e.reason or ""}
    self.closed = true
    self.close_code, self.close_reason = entry.code, entry.reason
    self.queue[#self.queue + 1] = entry
    self.all[#self.all + 1] = entry
    return entry
  end
  if self.closed then
    return nil
  end
  local entry = {kind = e.kind, data = e.data}
  self.queue[#self.queue + 1] = entry
  self.all[#self.all + 1] = entry
end

local function client_message(self, data, kind)
  if type(data) ~= "string" then
    error("ws.testing: send expects a string, got " .. type(data), 3)
  end
  if self.closed or self.close_sent then
    return nil, "closed"
  end
  local s, c = self.server, self.c
  s:_sweep()
  s.counters.bytes_in = s.counters.bytes_in + #data + (#data < 126 and 6 or (#data < 65536 and 8 or 14))
  c.last_read = s.clock
  c.ping_sent = nil
  if #data > s.cfg.max_message_size then
    if c.state == OPEN then
      s:_start_close(c, 1009, "message too big")
    end
  elseif kind == "text" and not valid_utf8(data) then
    if c.state == OPEN then
      s:_start_close(c, 1007, "invalid UTF-8 in text message")
    end
  elseif c.state == OPEN then
    s.counters.messages_in = s.counters.messages_in + 1
    c.last_message = s.clock
    s:_conn_event("message", c, data, kind)
  end
  s:_sweep()
  return true
end

--- Sends a text message (the app's message handler runs). true, or nil, "closed".
function Client:send(text)
  return client_message(self, text, "text")
end

function Client:send_binary(bytes)
  return client_message(self, bytes, "binary")
end

--- The client closes (close handshake, then close(conn, code, reason) runs).
function Client:close(code, reason)
  code = code ~= nil and (math.tointeger(code) or code) or nil
  if code ~= nil and (math.type(code) ~= "integer" or not close_code_valid(code)) then
    error("ws.testing: a client may close with 1000-1003, 1007-1014 or 3000-4999, not " ..
          tostring(code), 2)
  end
  reason = reason or ""
  if code == nil and reason ~= "" then
    error("ws.testing: a close reason needs a code", 2)
  end
  if #reason > 123 or not valid_utf8(reason) then
    error("ws.testing: the close reason must be UTF-8 of at most 123 bytes", 2)
  end
  if self.closed or self.close_sent then
    return nil, "closed"
  end
  local s, c = self.server, self.c
  s:_sweep()
  self.close_sent = true
  c.last_read = s.clock
  s:_on_peer_close(c, code or 1005, reason)
  s:_sweep()
  return true
end

--- The TCP connection drops without a close frame (close gets 1006).
function Client:drop()
  if self.closed and self.c.state == CLOSED then
    return nil, "closed"
  end
  local s, c = self.server, self.c
  s:_sweep()
  self.closed = true
  s:_kill(c, 1006, c.state == OPEN and "connection dropped" or nil)
  s:_sweep()
  return true
end

--- Stops reading: the server's queue for this client grows ("queued", drain, slow consumer).
function Client:pause()
  self.paused = true
end

function Client:resume()
  self.paused = false
  self.server:_sweep()
end

function Client:is_open()
  return not self.closed and not self.close_sent
end

function Client:next()
  self.server:_sweep()
  return table.remove(self.queue, 1)
end

function Client:received()
  self.server:_sweep()
  local out = self.queue
  self.queue = {}
  return out
end

function Client:history()
  self.server:_sweep()
  return copy_list(self.all)
end

local function describe_entry(e)
  if e.kind == "close" then
    return fmt("a close frame (%s %q)", tostring(e.code), e.reason)
  end
  return fmt("a %s message %q", e.kind, #e.data > 80 and e.data:sub(1, 80) .. "..." or e.data)
end

--- The next message, decoded from JSON. Raises when there is none or it is not JSON text; the
--- message then stays in the queue (c:next() returns it).
function Client:next_json()
  self.server:_sweep()
  local e = self.queue[1]
  if not e then
    error("ws.testing: client " .. self.id .. " has no message waiting", 2)
  end
  if e.kind ~= "text" then
    error("ws.testing: client " .. self.id .. " expected a JSON text message, got " ..
          describe_entry(e), 2)
  end
  local v, err = json.decode(e.data)
  if v == nil then
    error(fmt("ws.testing: client %d got a text message that is not JSON (%s): %s", self.id,
              tostring(err), describe_entry(e)), 2)
  end
  table.remove(self.queue, 1)
  return v
end

--- The waiting messages decoded from JSON, up to the first entry that is not JSON text (a close,
--- a binary message, other text), which stays in the queue.
function Client:received_json()
  self.server:_sweep()
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

function Client:topics()
  return METHODS.topics(self.conn)
end

function Client:data()
  return self.conn.data
end

-- ---- testing.start: the real server in-process ----------------------------------------------
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

--- testing.start(path_or_source [, {config = {name = value}, now = seconds}]) -> t: the app in the
--- real server, in-process, on a simulated clock starting at now (default 1e9). Raises with the
--- server's reason when the app does not load.
function M.start(app, opts)
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
    assert(path:find("^/tmp/wskit%."), "ws.testing: t:reload(source) needs an app given as source")
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

M.Real, M.RealClient = Real, RealClient

M.Server = Server
M.Client = Client
M.json = json
M.close_codes = CLOSE_CODES
return M
