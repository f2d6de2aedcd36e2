-- Conformance app: every text message is a JSON list of Lua snippets; each runs with `conn`
-- bound (chunk name "eval") and the reply is a JSON list of {ok, values} in the same order, so
-- the kit and the server can be compared call by call (return values and error messages).
local json = ws.json

local function nop() end

local function repr(v)
  if v == nil then
    return json.null
  end
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" then
    return v
  end
  local ok, s = pcall(tostring, v)
  if ok and s:match("^conn %d+") then
    return s
  end
  if t == "table" and getmetatable(v) == nil then
    local out = json.array()
    for i, x in ipairs(v) do
      out[i] = repr(x)
    end
    return out
  end
  return "<" .. (t == "function" and "function" or "object") .. ">"
end

return {
  message = function(conn, data, kind)
    if kind ~= "text" then
      return
    end
    local snippets = json.decode(data)
    local results = json.array()
    for i, code in ipairs(snippets) do
      local env = setmetatable({conn = conn, nop = nop}, {__index = _ENV})
      local f, err = load(code, "=eval", "t", env)
      local r
      if not f then
        r = {ok = false, values = json.array({err})}
      else
        local p = table.pack(pcall(f))
        local values = json.array()
        for k = 2, p.n do
          values[k - 1] = repr(p[k])
        end
        r = {ok = p[1], values = values}
      end
      results[i] = r
    end
    conn:send(json.encode(results))
  end,
}
