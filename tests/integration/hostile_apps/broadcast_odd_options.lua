-- Broadcast options with raising metamethods and odd types.
-- expect: serve handler_error
return {message = function(conn, data)
  pcall(ws.broadcast, data, setmetatable({}, {__index = function() error("opts") end}))
  pcall(ws.broadcast, data, {except = {}, binary = print})
  pcall(ws.publish, {}, data)
  ws.broadcast(data, {filter = 5})
end}
