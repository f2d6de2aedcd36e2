-- Authentication with an HTTP service, at the upgrade: `upgrade` waits for the service's answer
-- (ws.http.get) without blocking anyone else, and the 101 or the refusal goes out when it
-- returns. The bearer token comes from the Authorization header (`Authorization: Bearer ...`,
-- what a server-side client sends) or, for browsers, which cannot set headers on a WebSocket,
-- from the `token` cookie. Each answer is cached for a minute, so a reconnecting client costs no
-- second request.
--
--   AUTH_URL=http://127.0.0.1:8081/session build/wsserver -l 127.0.0.1:8080 examples/auth-http.lua
--
-- The service gets `GET AUTH_URL` with `Authorization: Bearer <token>` and answers 200 with
-- {"user": "alice"} for a good token, 401 or 403 for a bad one. Anything else (down, slow, a 5xx,
-- a body that is not that JSON) refuses the client with 503 and Retry-After, and is not cached.
--
-- server -> client: {"type":"welcome","user":"alice"}, then every message as
--                   {"type":"message","from":"alice","text":"hi"}
--
-- The token is never logged; only the user name is.

local AUTH_URL = os.getenv("AUTH_URL") or "http://127.0.0.1:8081/session"
local TTL = 60           -- seconds an answer is cached, good or bad
local MAX_CACHED = 10000 -- entries; past it the expired ones go, then all
local MAX_TOKEN = 512

-- token -> {user = name or false, expires = ws.now() + TTL}; survives reloads
ws.state.auth_cache = ws.state.auth_cache or {}
ws.state.auth_cached = ws.state.auth_cached or 0

local function token_of(req)
  local auth = req.headers.authorization
  local token = auth and auth:match("^[Bb]earer%s+(%S+)%s*$") or req.cookies.token
  if type(token) ~= "string" or token == "" or #token > MAX_TOKEN then
    return nil
  end
  return token
end

local function remember(token, user)
  local cache = ws.state.auth_cache
  if ws.state.auth_cached >= MAX_CACHED then
    local now, n = ws.now(), 0
    for k, v in pairs(cache) do
      if v.expires <= now then cache[k] = nil else n = n + 1 end
    end
    if n >= MAX_CACHED then
      cache, n = {}, 0
      ws.state.auth_cache = cache
    end
    ws.state.auth_cached = n
  end
  if not cache[token] then
    ws.state.auth_cached = ws.state.auth_cached + 1
  end
  cache[token] = {user = user, expires = ws.now() + TTL}
end

-- The user for token: a name, false (the service said no), or nil, why (it could not tell).
local function lookup(token)
  local hit = ws.state.auth_cache[token]
  if hit and hit.expires > ws.now() then
    return hit.user
  end
  local res, err = ws.http.get(AUTH_URL, {
    headers = {authorization = "Bearer " .. token},
    timeout = 2,
  })
  if not res then
    return nil, err
  end
  if res.status == 401 or res.status == 403 then
    remember(token, false)
    return false
  end
  local body = res.status == 200 and ws.json.decode(res.body)
  if type(body) ~= "table" or type(body.user) ~= "string" or body.user == "" then
    return nil, "auth service answered " .. res.status
  end
  remember(token, body.user)
  return body.user
end

return {
  config = {max_message_size = 4096},

  upgrade = function(req)
    local token = token_of(req)
    if not token then
      return false, 401, "missing token: send Authorization: Bearer <token> or the token cookie",
             {["WWW-Authenticate"] = "Bearer"}
    end
    local user, err = lookup(token)
    if user == nil then
      ws.log.warn("auth_unavailable", {peer = req.peer, error = err})
      return false, 503, "authentication is unavailable, try again shortly",
             {["Retry-After"] = "5"}
    end
    if not user then
      ws.log.info("auth_refused", {peer = req.peer})
      return false, 401, "invalid token", {["WWW-Authenticate"] = 'Bearer error="invalid_token"'}
    end
    return {data = {user = user}}
  end,

  open = function(conn)
    ws.log.info("auth_ok", {user = conn.data.user, conn = conn.id})
    conn:send_json({type = "welcome", user = conn.data.user})
  end,

  message = function(conn, data, kind)
    if kind ~= "text" then
      conn:close(1003, "text only")
      return
    end
    ws.broadcast(ws.json.encode({type = "message", from = conn.data.user, text = data}))
  end,
}
