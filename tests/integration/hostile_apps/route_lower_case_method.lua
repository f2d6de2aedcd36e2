-- A route key with a lower-case method.
-- expect: refuse app.http key "get /x" must be "METHOD /path"
return {http = {["get /x"] = function() return 200, "1" end}}
