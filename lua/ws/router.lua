-- ws.router: HTTP routes with path parameters for app.http. It only matches and dispatches:
-- it does not read request bodies, set content types or serve files (the server does that).
--
--   local router = require "ws.router"
--   local r = router.new()
--   r:get("/health", function(req) return 200, "ok\n" end)
--   r:get("/rooms/:name", function(req, params)
--     return 200, params.name .. " has " .. ws.subscribers("room:" .. params.name) .. "\n"
--   end)
--   r:get("/files/*rest", function(req, params) return 200, params.rest end)
--   r:post("/rooms/:name/say", function(req, params) ... end)
--   return { http = r:handler(), ... }
--
-- The server looks a request up as app.http["METHOD /path"] (HEAD as GET, the query string
-- removed). r:handler() returns that table: routes without parameters are plain keys, the rest
-- are found by an __index metamethod that matches patterns and returns a function which calls
-- your handler as fn(req, params) (params is also req.params). A handler returns
-- status, body, headers exactly like a plain app.http function.
--
-- Patterns: "/literal/segments", ":name" matches one non-empty segment, "*name" (last only)
-- matches the rest of the path, slashes included (possibly empty). Parameter values are
-- percent-decoded ("%20" -> " "; "+" stays "+"). A trailing slash is ignored ("/a/" is "/a").
-- When several patterns match, the most specific wins (a literal segment beats ":name", which
-- beats "*name"), then a route for the method over an r:any() route, then the one added first.
-- A path that matches a route of another method answers 405 with an Allow header; a path that
-- matches nothing is not answered here, so the server falls back to --static (or 426).
-- Lookups never store anything, so arbitrary peer paths cannot grow memory. The server answers
-- /healthz (and /metrics when enabled) itself, before app.http is consulted.
--
-- r:dispatch(req) runs the same matching for a request table ({method =, path =, ...}) and
-- returns the handler's results, or nil when nothing matched (handy in tests and for nesting).
-- r:match(method, path) returns fn, params or nil.

local M = {}

local Router = {}
Router.__index = Router

local LITERAL, PARAM, SPLAT = 0, 1, 2

local function hexval(c)
  return tonumber(c, 16)
end

-- Percent-decodes a path segment; malformed escapes are kept as they are.
local function decode(s)
  return (s:gsub("%%(%x%x)", function(h)
    return string.char(hexval(h))
  end))
end

-- "/a/b/" -> {"a", "b"}; "/" -> {}
local function split(path)
  local out = {}
  for seg in path:gmatch("[^/]+") do
    out[#out + 1] = seg
  end
  return out
end

local function normalize(path)
  if #path > 1 and path:sub(-1) == "/" then
    path = path:gsub("/+$", "")
    if path == "" then
      path = "/"
    end
  end
  return path
end

local function compile(pattern)
  if type(pattern) ~= "string" or pattern:sub(1, 1) ~= "/" then
    error("a route pattern must be a string starting with '/'", 3)
  end
  local segs = {}
  local names = {}
  local parts = split(pattern)
  for i, part in ipairs(parts) do
    local kind, name = LITERAL, nil
    local first = part:sub(1, 1)
    if first == ":" or first == "*" then
      name = part:sub(2)
      if not name:match("^[%a_][%w_]*$") then
        error("bad parameter name in route '" .. pattern .. "': '" .. part .. "'", 3)
      end
      if names[name] then
        error("parameter '" .. name .. "' repeated in route '" .. pattern .. "'", 3)
      end
      names[name] = true
      kind = first == ":" and PARAM or SPLAT
      if kind == SPLAT and i ~= #parts then
        error("'*" .. name .. "' must be the last segment of '" .. pattern .. "'", 3)
      end
    end
    segs[i] = {kind = kind, name = name, text = part}
  end
  return segs
end

local function is_static(segs)
  for _, seg in ipairs(segs) do
    if seg.kind ~= LITERAL then
      return false
    end
  end
  return true
end

-- Matches the split path against a compiled pattern; returns params or nil.
local function match_segs(segs, parts, path)
  local params = {}
  for i, seg in ipairs(segs) do
    if seg.kind == SPLAT then
      -- the rest of the raw path after i - 1 segments, without its leading slash
      local rest = path
      for _ = 1, i - 1 do
        rest = rest:gsub("^/+[^/]+", "", 1)
      end
      rest = rest:gsub("^/+", "", 1)
      params[seg.name] = decode(rest)
      return params
    end
    local part = parts[i]
    if part == nil then
      return nil
    end
    if seg.kind == LITERAL then
      if part ~= seg.text then
        return nil
      end
    else
      params[seg.name] = decode(part)
    end
  end
  if #parts ~= #segs then
    return nil
  end
  return params
end

-- true when route a is more specific than route b
local function better(a, b)
  local n = math.max(#a.segs, #b.segs)
  for i = 1, n do
    local ka = a.segs[i] and a.segs[i].kind or SPLAT + 1
    local kb = b.segs[i] and b.segs[i].kind or SPLAT + 1
    if ka ~= kb then
      return ka < kb
    end
  end
  if (a.method == "*") ~= (b.method == "*") then
    return b.method == "*"
  end
  return a.order < b.order
end

function M.new()
  return setmetatable({routes = {}, count = 0}, Router)
end

-- r:route(method, pattern, fn): method is "GET", "POST", ... or "*" for any method.
function Router:route(method, pattern, fn)
  if type(method) ~= "string" or not method:match("^[%u*]+$") then
    error("a route method must be an upper-case string such as \"GET\" (or \"*\")", 2)
  end
  if type(fn) ~= "function" then
    error("a route needs a handler function", 2)
  end
  local segs = compile(pattern)
  local key = method .. " " .. normalize(pattern)
  for _, r in ipairs(self.routes) do
    if r.key == key then
      error("route '" .. key .. "' is already defined", 2)
    end
  end
  self.count = self.count + 1
  self.routes[#self.routes + 1] = {
    method = method,
    pattern = pattern,
    key = key,
    segs = segs,
    static = is_static(segs),
    fn = fn,
    order = self.count,
  }
  return self
end

for _, method in ipairs({"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}) do
  Router[method:lower()] = function(self, pattern, fn)
    return self:route(method, pattern, fn)
  end
end

function Router:any(pattern, fn)
  return self:route("*", pattern, fn)
end

-- r:match(method, path) -> fn, params | nil, allowed (a list of methods when the path matched
-- under other methods only)
function Router:match(method, path)
  if type(method) ~= "string" or type(path) ~= "string" then
    return nil
  end
  path = normalize(path)
  local parts = split(path)
  local best, best_params
  local allowed = {}
  for _, r in ipairs(self.routes) do
    local params = match_segs(r.segs, parts, path)
    if params then
      if r.method == method or r.method == "*" then
        if not best or better(r, best) then
          best, best_params = r, params
        end
      else
        allowed[r.method] = true
      end
    end
  end
  if best then
    return best.fn, best_params
  end
  if next(allowed) then
    if allowed.GET then
      allowed.HEAD = true
    end
    local list = {}
    for m in pairs(allowed) do
      list[#list + 1] = m
    end
    table.sort(list)
    return nil, list
  end
  return nil
end

local function not_allowed(allowed)
  local allow = table.concat(allowed, ", ")
  return function()
    return 405, "method not allowed\n", {Allow = allow}
  end
end

local function bind(fn, params)
  return function(req)
    req.params = params
    return fn(req, params)
  end
end

-- r:dispatch(req) -> status, body, headers (nil when nothing matched). HEAD runs GET routes.
function Router:dispatch(req)
  local method = req.method == "HEAD" and "GET" or req.method
  local fn, params = self:match(method, req.path)
  if fn then
    return bind(fn, params)(req)
  end
  if params then
    return not_allowed(params)(req)
  end
  return nil
end

-- r:handler() -> the table to use as app.http
function Router:handler()
  local routes = self
  local exact = {}
  local mt = {
    __index = function(_, key)
      if type(key) ~= "string" then
        return nil
      end
      local method, path = key:match("^(%S+) (.*)$")
      if not method then
        return nil
      end
      local fn, params = routes:match(method, path)
      if fn then
        return bind(fn, params)
      end
      if params then
        return not_allowed(params)
      end
      return nil
    end,
  }
  -- plain keys for routes without parameters, so they are found without a metamethod (and
  -- listed by pairs); a more specific route of the same method can never exist for them
  for _, r in ipairs(self.routes) do
    if r.static and r.method ~= "*" then
      local fn = r.fn
      exact[r.key] = function(req)
        req.params = {}
        return fn(req, req.params)
      end
    end
  end
  return setmetatable(exact, mt)
end

return M
