-- A route answering NaN.
-- expect: serve http route "GET /x" must return a status number from 100 to 599
return {http = {["GET /x"] = function() return 0/0, "nan" end}}
