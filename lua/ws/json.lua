-- ws.json: JSON for apps, on lua-cjson. decode never raises (nil, err on bad input);
-- json.null is the explicit null; json.array(t) marks a table to encode as an array even when
-- it is empty. Whole numbers decode as Lua integers; NaN, Infinity and hex are refused both
-- ways (they are not JSON). Limits of lua-cjson 2.1.0: integers are written with 14 significant
-- digits, and a decoded empty array comes back as {} (mark arrays with json.array).
local cjson = require("cjson.safe").new()
cjson.decode_invalid_numbers(false)
cjson.encode_invalid_numbers(false)

local M = {}

M.null = cjson.null

local array_mt = {__name = "ws.json.array"}
local EMPTY = "\0ws.json.empty-array\0"

function M.array(t)
  return setmetatable(t or {}, array_mt)
end

function M.is_array(t)
  return getmetatable(t) == array_mt
end

-- Copies v, replacing empty marked arrays with a placeholder string (cjson writes empty
-- tables as objects). Returns the copy and whether any placeholder was used.
local function mark_empty(v, seen)
  if type(v) ~= "table" then
    return v, false
  end
  if getmetatable(v) == array_mt and next(v) == nil then
    return EMPTY, true
  end
  if seen[v] then
    error("cannot encode a table that contains itself", 0)
  end
  seen[v] = true
  local out, used = {}, false
  for k, x in pairs(v) do
    local y, u = mark_empty(x, seen)
    out[k] = y
    used = used or u
  end
  seen[v] = nil
  return out, used
end

local function has_marked(v, depth)
  if type(v) ~= "table" or depth > 32 then
    return false
  end
  if getmetatable(v) == array_mt and next(v) == nil then
    return true
  end
  for _, x in pairs(v) do
    if has_marked(x, depth + 1) then
      return true
    end
  end
  return false
end

-- encode(value) -> string, or nil, err
function M.encode(v)
  if has_marked(v, 0) then
    local ok, copy = pcall(mark_empty, v, {})
    if not ok then
      return nil, copy
    end
    local s, err = cjson.encode(copy)
    if not s then
      return nil, err
    end
    return (s:gsub('"\\u0000ws%.json%.empty%-array\\u0000"', "[]"))
  end
  return cjson.encode(v)
end

-- lua-cjson predates Lua 5.3 integers: turn whole floats back into integers.
local function integers(v)
  if type(v) == "number" then
    return math.tointeger(v) or v
  end
  if type(v) == "table" then
    for k, x in pairs(v) do
      if type(x) == "number" or type(x) == "table" then
        v[k] = integers(x)
      end
    end
  end
  return v
end

-- decode(string) -> value, or nil, err
function M.decode(s)
  if type(s) ~= "string" then
    return nil, "json.decode expects a string, got " .. type(s)
  end
  local v, err = cjson.decode(s)
  if v == nil then
    return nil, err
  end
  return integers(v)
end

return M
