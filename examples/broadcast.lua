-- Ticker: every second, one JSON tick goes to every open connection with ws.broadcast (the
-- frame is encoded once for all of them). A client can send "pause" and "resume" to opt out and
-- back in (a broadcast filter), or "now" for an immediate tick of its own.
--
--   build/wsserver -l 127.0.0.1:8080 examples/broadcast.lua
--
-- server -> client: {"type":"tick","n":42,"time":1700000000,"iso":"2023-11-14T22:13:20Z",
--                    "clients":3}
--                   {"type":"hello","id":7,"n":41,"interval":1}    on connect
-- The counter lives in ws.state, so a reload (SIGHUP) keeps counting; the reload cancels this
-- version's timer and the new version starts its own.

local json = ws.json

local INTERVAL = 1 -- seconds

local S = ws.state
S.ticks = S.ticks or 0

local function tick_message(n)
  return json.encode({
    type = "tick",
    n = n,
    time = os.time(),
    iso = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    clients = ws.count(),
  })
end

local function listening(conn)
  return not conn.data.paused
end

ws.every(INTERVAL, function()
  S.ticks = S.ticks + 1
  local reached = ws.broadcast(tick_message(S.ticks), {filter = listening})
  ws.log.debug("tick", {n = S.ticks, reached = reached})
end)

return {
  config = {max_message_size = 1024},

  open = function(conn)
    conn:send_json({type = "hello", id = conn.id, n = S.ticks, interval = INTERVAL})
  end,

  message = function(conn, data, kind)
    if kind ~= "text" then
      conn:close(1003, "text commands only")
    elseif data == "pause" then
      conn.data.paused = true
      conn:send_json({type = "paused"})
    elseif data == "resume" then
      conn.data.paused = nil
      conn:send_json({type = "resumed"})
    elseif data == "now" then
      conn:send(tick_message(S.ticks))
    else
      conn:send_json({type = "error", error = "commands: pause, resume, now"})
    end
  end,
}
