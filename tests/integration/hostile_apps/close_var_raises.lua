-- A to-be-closed variable whose __close raises.
-- expect: serve close var
return {message = function(conn, data)
  local guard <close> = setmetatable({}, {__close = function() error("close var") end})
  conn:send(data)
end}
