--[[ Chat rooms: the flagship wsserver example.

  build/wsserver -l 127.0.0.1:8080 --static examples/chat/public examples/chat/chat.lua
  then open http://127.0.0.1:8080/ in two windows.

It shows the whole API at work: per-connection state in conn.data, shared state in ws.state
(both survive a reload: `kill -HUP <pid>`), room fan-out with conn:subscribe + ws.publish,
ws.broadcast for the room list, handlers that wait for Redis, and a handler that never raises
because it checks everything a client sends before using it.

History: the last 50 messages of each room. With a Redis (`--redis redis://host:port`, or
`config.redis` in this file) they are kept there, so they survive a restart and every node
serving the chat shares them; without one they are kept in ws.state (they survive a reload).

Protocol: one JSON object per text frame, always with a "type". Unknown fields are ignored.

client -> server
  {"type":"join", "room":"lobby", "nick":"alice"}  join a room (leaving the current one)
  {"type":"say", "text":"hello"}                    post to the current room
  {"type":"typing"}                                 "I am typing" (throttled; never answered)
  {"type":"leave"}                                  leave the current room
  {"type":"rooms"}                                  ask for the room list

server -> client
  {"type":"welcome", "id":7, "server":"65a1f0-3c2d", "rooms":[...], "limits":{...}}
      on connect; "server" changes when the server restarts (not on a reload); message ids are
      unique per "server", or, with "scope":"redis" (the history is in Redis), across restarts
      and nodes
  {"type":"joined", "room":"lobby", "nick":"alice", "members":["alice","bob"],
   "history":[message, ...]}                        to the joiner: the last 50 messages
  {"type":"left", "room":"lobby"}                   to the leaver
  {"type":"presence", "room":"lobby", "event":"join"|"leave", "nick":"bob",
   "members":["alice","bob"]}                       to the others in the room
  {"type":"message", "room":"lobby", "id":42, "nick":"alice", "text":"hello",
   "ts":1700000000000}                              to the whole room, sender included
  {"type":"typing", "room":"lobby", "nick":"alice"} to the others in the room
  {"type":"rooms", "rooms":[{"name":"lobby", "members":2}, ...]}
                                                    on request, and to everyone on each change
  {"type":"error", "code":"nick_taken", "message":"..."}

Nicknames may use the letters of any script (José, Мария, 李雷, نور), digits, space, _ - and
.; never control, invisible or direction-changing characters. Limits count characters.

Error codes: bad_json, bad_message, unknown_type, binary, bad_room, bad_nick, nick_taken,
not_in_room, bad_text, too_long, too_many_rooms, rate_limited (with "retry_after" seconds).
A frame larger than config.max_message_size never reaches us: the server closes with 1009.
]]

local json = ws.json

local LIMITS = {
  text = 2000,     -- characters per message
  nick = 24,       -- characters per nickname
  room = 32,       -- characters per room name
  history = 50,    -- messages kept per room and replayed on join
  rooms = 100,     -- rooms remembered at once (empty ones are forgotten first)
  burst = 10,      -- rate limit: at most 10 messages...
  per = 5,         -- ...per 5 seconds, as a token bucket
}
-- So the history can never hold more than rooms * history * text characters: 100 * 50 * 2000
-- characters of at most 4 bytes, 40 MB, well under the server's lua_memory_limit.
local TYPING_GAP = 1 -- seconds between two typing notices relayed from one connection

-- Everything shared lives in ws.state: a reload runs this file again (so every local here is
-- new) but hands it the same ws.state. `x = x or default` keeps what the last version left.
local S = ws.state
S.rooms = S.rooms or {}     -- name -> {members = {[conn.id] = nick}, count, history, active}
S.nrooms = S.nrooms or 0
S.last_id = S.last_id or 0  -- message ids grow for the life of the process
S.boot = S.boot or string.format("%x-%04x", os.time(), math.random(0, 0xffff))

-- The server's Redis (--redis or config.redis), when it has one: the history goes there.
local REDIS_URL = ws.redis and ws.redis.url and ws.redis.url()
local R = REDIS_URL and assert(ws.redis.connect(REDIS_URL, {timeout = 2}))

-- ---- helpers ---------------------------------------------------------------------------------

local function topic(room)
  return "room:" .. room
end

local function send_error(conn, code, message, extra)
  local e = extra or {}
  e.type, e.code, e.message = "error", code, message
  conn:send_json(e)
end

-- Trims and checks a client string; max counts characters. The raw length is checked first:
-- trimming (like any pattern) costs time proportional to the input, and the input is the
-- client's to choose.
local function clean(value, what, max, valid, allowed)
  if type(value) ~= "string" then
    return nil, what .. " must be a string"
  end
  local s = #value <= 4 * max and value:match("^%s*(.-)%s*$") or nil
  local n = s and utf8.len(s) -- nil for invalid UTF-8 (a \u escape of half a surrogate pair)
  if not s or (n or 0) > max then
    return nil, string.format("%s is too long (at most %d characters)", what, max)
  elseif s == "" then
    return nil, what .. " is empty"
  elseif not n or not valid(s) then
    return nil, what .. " may only use " .. allowed
  end
  return s
end

local function valid_room(s)
  return not s:find("[^%w_%-]")
end

-- Characters no nickname may hold: they are invisible, break lines or reorder the text around
-- them (U+202E would make "ann" print someone else's words backwards).
local function hidden(c)
  return c <= 0xA0 or c == 0xAD or c == 0x034F or c == 0x061C or c == 0x115F or c == 0x1160
    or (c >= 0x180B and c <= 0x180E) or (c >= 0x2000 and c <= 0x200F)
    or (c >= 0x2028 and c <= 0x202F) or (c >= 0x205F and c <= 0x206F) or c == 0x3000
    or c == 0x3164 or (c >= 0xD800 and c <= 0xF8FF) or (c >= 0xFE00 and c <= 0xFE0F)
    or c == 0xFEFF or c == 0xFFA0 or c >= 0xFFF0
end

-- Letters of every script, digits, space, _ - and . (ASCII is checked by pattern, the rest by
-- code point).
local function valid_nick(s)
  for _, c in utf8.codes(s) do
    if c < 0x80 then
      if not string.char(c):find("[%w _%.%-]") then
        return false
      end
    elseif hidden(c) then
      return false
    end
  end
  return true
end

local function member_list(r)
  local list = json.array()
  for _, nick in pairs(r.members) do
    list[#list + 1] = nick
  end
  table.sort(list, function(a, b) return a:lower() < b:lower() end)
  return list
end

local function room_list()
  local list = json.array()
  for name, r in pairs(S.rooms) do
    if r.count > 0 then
      list[#list + 1] = {name = name, members = r.count}
    end
  end
  table.sort(list, function(a, b) return a.name < b.name end)
  return list
end

-- ---- history: in Redis when there is one, else in ws.state -----------------------------------

local function history_key(room)
  return "chat:room:" .. room .. ":history"
end

-- The room's last messages, oldest first. With Redis this waits; when Redis fails the chat goes
-- on without the history (logged).
local function history_of(room)
  if not R then
    local r = S.rooms[room]
    return r and r.history or json.array()
  end
  local list, err = R:call("LRANGE", history_key(room), -LIMITS.history, -1)
  local out = json.array()
  if not list then
    ws.log.warn("chat history unavailable", {room = room, error = err})
    return out
  end
  for _, s in ipairs(list) do
    out[#out + 1] = json.decode(s)
  end
  return out
end

-- A message id: from Redis, so ids grow across restarts and nodes; from ws.state otherwise.
-- While Redis fails, this process's own ids, as strings naming it, so they never collide with
-- Redis's.
local function next_id()
  local id = R and R:call("INCR", "chat:last_id")
  if id then
    return id
  end
  S.last_id = S.last_id + 1
  return R and S.boot .. "-" .. S.last_id or S.last_id
end

local function remember(room, m, encoded)
  if R then
    -- one round trip: append, then keep the last ones
    local ok, err = R:pipeline(function(p)
      p:call("RPUSH", history_key(room), encoded)
      p:call("LTRIM", history_key(room), -LIMITS.history, -1)
    end)
    if not ok then
      ws.log.warn("chat history not saved", {room = room, error = err})
    end
    return
  end
  local r = S.rooms[room]
  if not r then
    return -- the room was forgotten while the id was being made
  end
  r.history[#r.history + 1] = m
  if #r.history > LIMITS.history then
    table.remove(r.history, 1)
  end
end

-- Everyone sees the room list, so it goes to every connection: ws.broadcast encodes it once.
local function broadcast_rooms()
  ws.broadcast(json.encode({type = "rooms", rooms = room_list()}))
end

-- Makes room for a new room by forgetting the empty room that was quiet the longest.
local function forget_a_room()
  local oldest
  for name, r in pairs(S.rooms) do
    if r.count == 0 and (not oldest or r.active < S.rooms[oldest].active) then
      oldest = name
    end
  end
  if oldest then
    S.rooms[oldest] = nil
    S.nrooms = S.nrooms - 1
  end
  return oldest ~= nil
end

-- Takes the connection out of its room and tells the others. Also used from close, where
-- conn:unsubscribe answers nil, "closed" (harmless: the server drops the subscriptions itself).
local function leave_room(conn)
  local d = conn.data
  local r = d.room and S.rooms[d.room]
  if r and r.members[conn.id] then
    r.members[conn.id] = nil
    r.count = r.count - 1
    r.active = ws.now()
    conn:unsubscribe(topic(d.room))
    ws.publish(topic(d.room), json.encode({type = "presence", room = d.room, event = "leave",
                                           nick = d.nick, members = member_list(r)}))
  end
  d.room = nil
end

-- A token bucket per connection: it holds up to `burst` tokens, refills at burst/per tokens a
-- second, and every message costs one. The state is in conn.data, so it survives a reload.
local function take_token(conn)
  local d, now = conn.data, ws.now()
  local rate = LIMITS.burst / LIMITS.per
  d.tokens = math.min(LIMITS.burst, (d.tokens or LIMITS.burst) + (now - (d.refilled or now)) * rate)
  d.refilled = now
  if d.tokens >= 1 then
    d.tokens, d.warned = d.tokens - 1, nil
    return true
  end
  if not d.warned then -- one polite error per burst, not one per dropped message
    d.warned = true
    local wait = math.ceil((1 - d.tokens) / rate * 10) / 10
    send_error(conn, "rate_limited", string.format(
      "Easy there: at most %d messages every %d seconds. Try again in %.1f s.",
      LIMITS.burst, LIMITS.per, wait), {retry_after = wait})
  end
  return false
end

-- ---- one function per client message type ---------------------------------------------------

local handle = {}

function handle.join(conn, msg)
  local room, why = clean(msg.room, "room", LIMITS.room, valid_room, "letters, digits, _ and -")
  if not room then
    return send_error(conn, "bad_room", why)
  end
  room = room:lower() -- "Lobby" and "lobby" are one room
  local nick
  nick, why = clean(msg.nick, "nick", LIMITS.nick, valid_nick,
                     "letters, digits, space, _ - and .")
  if not nick then
    return send_error(conn, "bad_nick", why)
  end
  -- the history first: with Redis this waits, and what follows must see the rooms as they are
  -- after the wait
  local history = history_of(room)
  local r = S.rooms[room]
  for id, other in pairs(r and r.members or {}) do
    if id ~= conn.id and other:lower() == nick:lower() then
      return send_error(conn, "nick_taken", string.format(
        "Someone in %s is already called %s; pick another nickname.", room, other))
    end
  end
  if not r then
    if S.nrooms >= LIMITS.rooms and not forget_a_room() then
      return send_error(conn, "too_many_rooms", "Too many rooms are open; join an existing one.")
    end
    r = {members = {}, count = 0, history = json.array(), active = ws.now()}
    S.rooms[room] = r
    S.nrooms = S.nrooms + 1
  end

  leave_room(conn) -- one room at a time: joining another (or the same again) leaves first
  local d = conn.data
  d.room, d.nick = room, nick
  r.members[conn.id] = nick
  r.count = r.count + 1
  conn:subscribe(topic(room))
  conn:send_json({type = "joined", room = room, nick = nick, members = member_list(r),
                  history = history})
  conn:publish(topic(room), json.encode({type = "presence", room = room, event = "join",
                                         nick = nick, members = member_list(r)}))
  broadcast_rooms()
end

function handle.say(conn, msg)
  local d = conn.data
  if not d.room then
    return send_error(conn, "not_in_room", "Join a room first.")
  end
  local text = msg.text
  if type(text) ~= "string" or not text:find("%S") then
    return send_error(conn, "bad_text", "text must be a non-empty string")
  end
  -- utf8.len counts characters (the server already checked the frame is valid UTF-8)
  if #text > 4 * LIMITS.text or (utf8.len(text) or math.huge) > LIMITS.text then
    return send_error(conn, "too_long",
                      string.format("Messages are limited to %d characters.", LIMITS.text))
  end
  local room, nick = d.room, d.nick
  -- ts: wall-clock milliseconds, as JavaScript's Date wants them (ws.now() is the event loop's
  -- clock: the one to measure intervals with, as the rate limit does)
  local m = {type = "message", room = room, id = next_id(), nick = nick, text = text,
             ts = os.time() * 1000}
  local encoded = json.encode(m)
  remember(room, m, encoded)
  local r = S.rooms[room]
  if r then
    r.active = ws.now()
  end
  -- to every subscriber, the sender too: its copy carries the id and time the server gave it
  ws.publish(topic(room), encoded)
end

function handle.leave(conn)
  local room = conn.data.room
  if not room then
    return send_error(conn, "not_in_room", "You are not in a room.")
  end
  leave_room(conn)
  conn:send_json({type = "left", room = room})
  broadcast_rooms()
end

function handle.rooms(conn)
  conn:send_json({type = "rooms", rooms = room_list()})
end

-- Typing notices are frequent and worthless when late: relayed at most once per TYPING_GAP,
-- the rest dropped silently, and they do not use up the rate limit.
local function typing(conn)
  local d, now = conn.data, ws.now()
  if d.room and now - (d.typed or 0) >= TYPING_GAP then
    d.typed = now
    conn:publish(topic(d.room), json.encode({type = "typing", room = d.room, nick = d.nick}))
  end
end

-- ---- the app ---------------------------------------------------------------------------------

return {
  -- frames above this never reach `message`: the server answers them with close code 1009
  config = {max_message_size = 16 * 1024},

  -- before the 101: the chat lives at "/" only (plain GETs of files are served by --static)
  upgrade = function(req)
    if req.path ~= "/" then
      return false, 404, "no WebSocket endpoint here\n"
    end
  end,

  -- after a (re)load: forget members whose connection is gone, whatever the last version did
  load = function(state, info)
    for _, r in pairs(state.rooms or {}) do
      for id in pairs(r.members) do
        if not ws.get(id) then
          r.members[id], r.count = nil, r.count - 1
        end
      end
    end
    ws.log.info("chat loaded", {generation = info.generation, trigger = info.trigger,
                                rooms = state.nrooms or 0})
  end,

  open = function(conn)
    conn:send_json({type = "welcome", id = conn.id, server = S.boot, scope = R and "redis" or nil,
                    rooms = room_list(),
                    limits = {text = LIMITS.text, nick = LIMITS.nick, room = LIMITS.room,
                              history = LIMITS.history, burst = LIMITS.burst,
                              per = LIMITS.per}})
  end,

  message = function(conn, data, kind)
    local msg -- nil when the frame is binary or not JSON: ws.json.decode never raises
    if kind == "text" then
      msg = json.decode(data)
    end
    if type(msg) == "table" and msg.type == "typing" then
      return typing(conn)
    end
    if not take_token(conn) then
      return
    end
    if kind ~= "text" then
      return send_error(conn, "binary", "This chat speaks JSON in text frames only.")
    elseif msg == nil then
      return send_error(conn, "bad_json", "That was not valid JSON.")
    elseif type(msg) ~= "table" or type(msg.type) ~= "string" then
      return send_error(conn, "bad_message", 'Send a JSON object with a "type".')
    end
    local fn = handle[msg.type]
    if not fn then
      return send_error(conn, "unknown_type", "Known types: join, say, typing, leave, rooms.")
    end
    fn(conn, msg)
  end,

  close = function(conn)
    if conn.data.room then
      leave_room(conn)
      broadcast_rooms()
    end
  end,
}
