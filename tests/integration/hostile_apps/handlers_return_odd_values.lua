-- Every handler returns something odd.
-- expect: serve
return {
  upgrade = function() return nil, 0/0, {}, print end,
  open = function() return coroutine.create(print), 1e308 end,
  message = function(conn, data) conn:send(data) return setmetatable({}, {__gc = error}) end,
  close = function() return false end,
  drain = function() return {} end,
}
