-- A handler raises an object whose __tostring never returns.
-- expect: serve handler_error
return {
  config = {handler_timeout = 0.2},
  message = function()
    error(setmetatable({}, {__tostring = function() while true do end end}))
  end,
}
