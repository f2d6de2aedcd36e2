-- load() never returns.
-- expect: refuse handler_timeout
return {load = function() while true do end end}
