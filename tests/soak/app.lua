-- The soak test's app (tests/soak/soak.py): a little of everything an app does, so that a leak
-- anywhere on the paths it drives shows up as growth. The driver reloads it every few seconds.
-- It keeps nothing that grows with the number of connections served: ws.state holds bounded
-- counters and a bounded history per room.
--
-- text messages (anything else is echoed, binary messages too):
--   join ROOM                -> "joined ROOM", the connection is subscribed to room:ROOM
--   pub ROOM TOKEN           -> {"type":"msg","room":..,"token":..} to the room's other members,
--                               then "ack TOKEN" to the sender
--   json {...}               -> the object decoded and encoded again, with "seen": true
--   flood N                  -> N binary messages of 16 KiB (for clients that never read)
--   close CODE               -> the server closes with CODE
--   boom                     -> a Lua error (the connection is closed with 1011)
-- http: GET /soak/state -> the counters as JSON; GET /soak/heap -> Lua heap bytes after a full GC

local HISTORY = 20
local CHUNK = string.rep("z", 16384)

local state = ws.state

local function count(key)
  state.counts[key] = (state.counts[key] or 0) + 1
end

local commands = {}

function commands.join(conn, room)
  conn:subscribe("room:" .. room)
  conn.data.rooms = (conn.data.rooms or 0) + 1
  conn:send("joined " .. room)
end

function commands.pub(conn, arg)
  local room, token = arg:match("^(%S+) (%S+)$")
  if not room then
    return conn:send("error bad pub")
  end
  local history = state.history[room] or {}
  state.history[room] = history
  history[#history + 1] = token
  if #history > HISTORY then
    table.remove(history, 1)
  end
  conn:publish("room:" .. room, ws.json.encode({type = "msg", room = room, token = token}))
  conn:send("ack " .. token)
end

function commands.json(conn, arg)
  local value, err = ws.json.decode(arg)
  if value == nil then
    return conn:send("error " .. tostring(err))
  end
  if type(value) == "table" then
    value.seen = true
  end
  conn:send_json(value)
end

function commands.flood(conn, arg)
  local n = math.min(tonumber(arg) or 0, 1000)
  for _ = 1, n do
    if not conn:send(CHUNK, "binary") then
      count("flood_cut")
      break
    end
  end
end

function commands.close(conn, arg)
  conn:close(tonumber(arg) or 1000, "asked")
end

function commands.boom()
  error("boom, as asked")
end

return {
  load = function(st, info)
    st.counts = st.counts or {}
    st.history = st.history or {}
    st.generation = info.generation
    -- Timers belong to one version of the app: a reload cancels them and this one starts anew.
    ws.every(0.5, function()
      ws.publish("room:r0", "tick " .. info.generation)
    end)
  end,

  open = function(conn)
    conn.data.opened = ws.now()
    count("open")
  end,

  message = function(conn, data, kind)
    if kind == "text" then
      local cmd, arg = data:match("^(%l+) ?(.*)$")
      local fn = cmd and commands[cmd]
      if fn then
        count(cmd)
        return fn(conn, arg)
      end
    end
    conn:send(data, kind)
  end,

  drain = function()
    count("drain")
  end,

  close = function(conn, code)
    -- close codes seen: a bounded set (1000..1011, 4xxx asked for by the driver)
    count("close_" .. tostring(code))
    conn.data.rooms = nil
  end,

  http = {
    -- the Lua heap after a full collection, in bytes: what the app really keeps
    ["GET /soak/heap"] = function()
      collectgarbage("collect")
      collectgarbage("collect")
      return 200, tostring(math.floor(collectgarbage("count") * 1024))
    end,
    ["GET /soak/state"] = function()
      return 200, ws.json.encode({generation = state.generation, counts = state.counts}),
          {["Content-Type"] = "application/json"}
    end,
  },
}
