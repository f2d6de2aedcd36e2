-- Handlers ask for reloads and shutdown-free churn in a loop.
-- expect: serve
return {
  open = function(conn) for i = 1, 100 do ws.reload() end end,
  message = function(conn, data) ws.reload() conn:send(data) end,
  load = function(state) state.n = (state.n or 0) + 1 end,
}
