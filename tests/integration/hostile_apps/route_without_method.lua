-- A route key without its method.
-- expect: refuse app.http key "/count" must be "METHOD /path"
return {http = {["/count"] = function() return 200, "1" end}}
