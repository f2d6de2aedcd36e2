-- load() recurses without end.
-- expect: refuse load() failed
local function f() return f() + 1 end
return {load = function() f() end}
