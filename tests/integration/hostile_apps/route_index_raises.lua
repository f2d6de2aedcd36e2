-- A routes table whose __index raises on every lookup.
-- expect: serve route lookup exploded
return {
  http = setmetatable({}, {__index = function() error("route lookup exploded") end}),
  message = function(conn, data) conn:send(data) end,
}
