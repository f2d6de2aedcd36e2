-- A route that is a string.
-- expect: refuse app.http["GET /x"] must be a function, got string
return {http = {["GET /x"] = "hello"}}
