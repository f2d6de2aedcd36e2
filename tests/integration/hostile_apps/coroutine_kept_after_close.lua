-- A coroutine holding the conn is resumed from a timer after the close.
-- expect: serve
return {
  open = function(conn)
    local co = coroutine.wrap(function()
      while true do conn:send("tick") coroutine.yield() end
    end)
    ws.every(0.01, function() co() end)
  end,
  message = function(conn) conn:close() end,
}
