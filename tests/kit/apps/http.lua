-- Conformance app: app.http routes next to the WebSocket endpoint.
local hits = 0

return {
  http = {
    ["GET /status"] = function(req)
      hits = hits + 1
      return 200, "ok " .. hits .. " q=" .. tostring(req.query.x), {["X-Hits"] = hits}
    end,
    ["GET /json"] = function()
      return 201, ws.json.encode({a = 1}), {["Content-Type"] = "application/json"}
    end,
    ["POST /echo"] = function(req)
      return 200, req.method .. " " .. req.path .. " " .. tostring(req.headers["x-thing"])
    end,
    ["GET /fail"] = function()
      error("route failed")
    end,
    ["GET /weird"] = function()
      return 999, 12345 -- no such status: the route's error, answered 500
    end,
    ["GET /nothing"] = function()
    end, -- no status at all: likewise
    ["GET /float"] = function()
      return 404.0, "float status" -- not an integer: the server answers 200
    end,
  },

  message = function(conn, data)
    conn:send("hits " .. hits)
  end,
}
