-- A broadcast filter that closes every connection it sees.
-- expect: serve
return {message = function(conn, data)
  local n = ws.broadcast(data, {filter = function(c) c:close(1000) return true end})
  ws.broadcast("again", {filter = function(c) return c:is_open() end})
end}
