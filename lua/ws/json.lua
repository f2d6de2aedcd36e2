-- ws.json: JSON for apps, on lua-cjson. decode never raises (nil, err on bad input);
-- json.null is the explicit null; json.array(t) marks a table to encode as an array even when
-- it is empty.
local cjson = require "cjson.safe"

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

-- decode(string) -> value, or nil, err
function M.decode(s)
  if type(s) ~= "string" then
    return nil, "json.decode expects a string, got " .. type(s)
  end
  return cjson.decode(s)
end

return M
