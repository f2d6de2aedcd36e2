-- Benchmark broadcast app: a subscriber says "sub" once and is answered "ok"; every other
-- message is a publication, sent with ws.broadcast (the frame is encoded once) to every
-- connection except its publisher.
return {
  config = { log_level = "warn" },

  message = function(conn, data, kind)
    if data == "sub" then
      conn:send("ok")
      return
    end
    ws.broadcast(data, { except = conn, binary = kind == "binary" })
  end,
}
