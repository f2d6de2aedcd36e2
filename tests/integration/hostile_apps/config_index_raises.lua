-- A config table whose __index and __pairs raise (read raw: no effect).
-- expect: serve
local function boom() error("config metamethod") end
return {
  config = setmetatable({ping_interval = 20}, {__index = boom, __pairs = boom, __len = boom}),
  message = function(conn, data) conn:send(data) end,
}
