-- A route answering a table body.
-- expect: serve http route "GET /x" must return a string body (or nil), got table
return {http = {["GET /x"] = function() return 200, setmetatable({}, {__tostring = error}) end}}
