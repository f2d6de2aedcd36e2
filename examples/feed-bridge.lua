-- Feed bridge: one upstream WebSocket feed (an exchange's ticker, another service's events)
-- republished to every browser client through a topic. The server is the upstream's client
-- (ws.connect with callbacks); when the upstream goes away it reconnects after a jittered
-- back-off, and the browsers stay connected the whole time.
--
--   UPSTREAM=wss://feed.example.com/ticker build/wsserver -l 127.0.0.1:8080 examples/feed-bridge.lua
--
-- server -> client: {"type":"bridge","upstream":"up"|"down","received":N}   on connect and
--                   whenever the upstream connection opens or closes
--                   then every upstream message, as it came (text or binary)
-- client -> server: "status" for a bridge message now.
-- A reload (SIGHUP) closes this version's upstream connection and the new version opens its own;
-- the counters live in ws.state.

local json = ws.json

local UPSTREAM = os.getenv("UPSTREAM") or "ws://127.0.0.1:9000/feed"
local TOPIC = "feed"

local S = ws.state
S.received = S.received or 0

local function status()
  return json.encode({type = "bridge", upstream = S.up and "up" or "down", received = S.received})
end

ws.connect(UPSTREAM, {
  reconnect = true,
  reconnect_delay = 0.2,
  reconnect_max_delay = 5,
  open = function(cl)
    S.up = true
    ws.log.info("upstream_open", {url = UPSTREAM, protocol = cl.protocol})
    ws.publish(TOPIC, status())
  end,
  message = function(cl, data, kind)
    S.received = S.received + 1
    ws.publish(TOPIC, data, {binary = kind == "binary"})
  end,
  close = function(cl, code, reason)
    if S.up then
      S.up = false
      ws.publish(TOPIC, status())
    end
    ws.log.warn("upstream_closed", {code = code, reason = reason})
  end,
})

return {
  config = {max_message_size = 64 * 1024},

  open = function(conn)
    conn:subscribe(TOPIC)
    conn:send(status())
  end,

  message = function(conn, data)
    if data == "status" then
      conn:send(status())
    else
      conn:close(1003, "the feed is read-only; send \"status\" for the bridge's state")
    end
  end,
}
