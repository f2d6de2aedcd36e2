-- A handler raises an object whose __tostring raises.
-- expect: serve handler_error
return {message = function()
  error(setmetatable({}, {__tostring = function() error("inner") end}))
end}
