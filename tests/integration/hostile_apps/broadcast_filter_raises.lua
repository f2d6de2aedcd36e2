-- A broadcast filter that raises an object with a raising __tostring.
-- expect: serve handler_error
return {message = function(conn, data)
  ws.broadcast(data, {filter = function()
    error(setmetatable({}, {__tostring = function() error("x") end}))
  end})
end}
