-- Authentication at the upgrade: a token from the query (?token=...) or a cookie (token=...)
-- is checked before the 101. No token or an unknown one is refused with 401 and a one-line body,
-- so the client never gets a WebSocket. An accepted connection starts with conn.data.user set
-- (upgrade returns {data = {...}}), and every message is relayed to all users with its author.
--
--   build/wsserver -l 127.0.0.1:8080 examples/auth.lua
--   websocat 'ws://127.0.0.1:8080/?token=alice-token'
--
-- server -> client: {"type":"welcome","user":"alice","online":2}
--                   {"type":"message","from":"alice","text":"hi"}
--
-- The tokens here are a fixed table for the example; a real app would look them up (a signed
-- token checked with a key, or a session store). This app logs only the user name, never the
-- token; note that the server's access log records the request target, query string included,
-- so prefer the cookie (or a short-lived token) where logs are kept.

local TOKENS = {
  ["alice-token"] = "alice",
  ["bob-token"] = "bob",
}
local MAX_TOKEN = 256

local function user_for(token)
  if type(token) ~= "string" or token == "" or #token > MAX_TOKEN then
    return nil
  end
  return TOKENS[token]
end

return {
  config = {max_message_size = 4096},

  upgrade = function(req)
    local token = req.query.token or req.cookies.token
    if token == nil or token == "" then
      return false, 401, "missing token: use ?token= or the token cookie"
    end
    local user = user_for(token)
    if not user then
      ws.log.info("auth_refused", {peer = req.peer})
      return false, 401, "invalid token"
    end
    return {data = {user = user, since = ws.now()}}
  end,

  open = function(conn)
    ws.log.info("auth_ok", {user = conn.data.user, conn = conn.id})
    conn:send_json({type = "welcome", user = conn.data.user, online = ws.count()})
  end,

  message = function(conn, data, kind)
    if kind ~= "text" then
      conn:close(1003, "text only")
      return
    end
    ws.broadcast(ws.json.encode({type = "message", from = conn.data.user, text = data}))
  end,
}
