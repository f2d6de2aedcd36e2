-- upgrade replaces the request's metatable and raises from it.
-- expect: serve handler_error
return {
  upgrade = function(req)
    setmetatable(req.headers, {__index = function() error("no header") end})
    return {protocol = req.headers["x-none"]}
  end,
}
