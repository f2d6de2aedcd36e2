-- A route answering the status as a string and the body as a table.
-- expect: serve http route "GET /x" must return a status number from 100 to 599, got string
return {http = {["GET /x"] = function() return "200", {} end}}
