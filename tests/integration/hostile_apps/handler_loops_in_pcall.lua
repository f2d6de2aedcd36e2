-- A handler loops forever inside pcall: the budget still stops it.
-- expect: serve handler_timeout
return {
  config = {handler_timeout = 0.2},
  message = function() while true do pcall(function() while true do end end) end end,
}
