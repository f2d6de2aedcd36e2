-- A handler raises an object whose __tostring returns a table.
-- expect: serve handler_error
return {message = function()
  error(setmetatable({}, {__tostring = function() return {} end}))
end}
