-- Headers with table keys, raising values, CRLF and a huge value.
-- expect: serve
return {http = {["GET /x"] = function()
  return 200, "ok", {
    [{}] = "table key",
    ["X-Raises"] = setmetatable({}, {__tostring = function() error("header") end}),
    ["X-Evil\r\nSet-Cookie"] = "1",
    ["X-Big"] = string.rep("a", 100000),
    ["X-Num"] = 0/0,
  }
end}}
