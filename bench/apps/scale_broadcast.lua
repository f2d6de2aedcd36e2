-- bench/scale.sh: wsbench's broadcast protocol. A subscriber says "sub" once and is answered
-- "ok"; every other message is a publication that ws.broadcast sends to every connection except
-- its publisher: on this worker directly, on the other workers through the hub or Redis.
return {
  message = function(conn, data, kind)
    if data == "sub" then
      conn:send("ok")
      return
    end
    ws.broadcast(data, { except = conn, binary = kind == "binary" })
  end,
}
