-- __index answers a number for one handler name only.
-- expect: refuse app.open must be a function, got number
return setmetatable({}, {__index = function(_, k) if k == "open" then return 5 end end})
