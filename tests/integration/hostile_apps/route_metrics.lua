-- A route on the built-in /metrics.
-- expect: refuse is a path the server answers itself
return {http = {["GET /metrics"] = function() return 200, "mine" end}}
