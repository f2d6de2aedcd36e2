-- A route that yields outside any coroutine.
-- expect: serve attempt to yield
return {http = {["GET /x"] = function() coroutine.yield() end}}
