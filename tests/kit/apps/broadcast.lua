-- Conformance app: ws.broadcast with except, filter and binary; replies say how many it reached.
local function reply(conn, what, n)
  conn:send(what .. ":" .. tostring(n))
end

return {
  open = function(conn)
    conn.data.name = "c" .. conn.id
  end,

  message = function(conn, data)
    if data == "all" then
      reply(conn, "all", ws.broadcast("to all from " .. conn.data.name))
    elseif data == "others" then
      reply(conn, "others", ws.broadcast("to others from " .. conn.data.name, {except = conn}))
    elseif data == "except-id" then
      reply(conn, "except-id", ws.broadcast("except id 1", {except = 1}))
    elseif data == "odd" then
      local seen = {}
      local n = ws.broadcast("to odd ids", {filter = function(c)
        seen[#seen + 1] = c.id
        return c.id % 2 == 1
      end})
      reply(conn, "odd", n .. " asked " .. table.concat(seen, ","))
    elseif data == "binary" then
      reply(conn, "binary", ws.broadcast("\0\1\2\255", {binary = true, except = conn}))
    elseif data == "filter-error" then
      local ok, err = pcall(ws.broadcast, "never", {filter = function(c)
        if c.id == conn.id then
          error("filter failed on " .. c.id, 0)
        end
        return true
      end})
      reply(conn, "filter-error", tostring(ok) .. " " .. tostring(err))
    elseif data == "count" then
      local ids = {}
      for c in ws.connections() do
        ids[#ids + 1] = c.id
      end
      reply(conn, "count", ws.count() .. " " .. table.concat(ids, ","))
    elseif data == "bye" then
      conn:close(4000, "bye " .. conn.data.name)
      reply(conn, "after close", select(2, conn:send("x")))
    end
  end,
}
