-- A route on the built-in /healthz.
-- expect: refuse is a path the server answers itself
return {http = {["GET /healthz"] = function() return 200, "mine" end}}
