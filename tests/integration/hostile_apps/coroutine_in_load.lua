-- load() yields.
-- expect: refuse load() failed
return {load = function() coroutine.yield() end}
