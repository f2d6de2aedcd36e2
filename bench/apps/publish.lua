-- Benchmark publish app: broadcast.lua through a topic. A subscriber says "sub", joins the topic
-- "all" and is answered "ok"; every other message is published to "all" with ws.publish (the
-- publisher never subscribes), so the work per delivery compares with ws.broadcast's.
return {
  config = { log_level = "warn" },

  message = function(conn, data, kind)
    if data == "sub" then
      conn:subscribe("all")
      conn:send("ok")
      return
    end
    ws.publish("all", data, { binary = kind == "binary" })
  end,
}
