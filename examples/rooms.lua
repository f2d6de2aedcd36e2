-- Rooms over topics: clients join and leave named rooms and say things to a room, with one
-- JSON object per text message. Built on lua/ws/rooms.lua (member lists in ws.state, so they
-- survive a reload) and ws.json. A connection may be in several rooms at once.
--
--   build/wsserver -l 127.0.0.1:8080 examples/rooms.lua
--
-- client -> server
--   {"type":"join","room":"lobby"}     {"type":"leave","room":"lobby"}
--   {"type":"say","room":"lobby","text":"hi"}      {"type":"rooms"}
--   {"type":"members","room":"lobby"}
-- server -> client
--   {"type":"joined","room":"lobby","members":2}   {"type":"left","room":"lobby"}
--   {"type":"message","room":"lobby","from":7,"text":"hi"}   to the other members
--   {"type":"sent","room":"lobby","reached":1}                to the sender
--   {"type":"presence","room":"lobby","event":"join"|"leave","id":7,"members":2}  to the others
--   {"type":"rooms","rooms":[{"name":"lobby","members":2}]}
--   {"type":"members","room":"lobby","ids":[7,8]}
--   {"type":"error","error":"..."}

local json = ws.json
local rooms = require("ws.rooms").new(ws, {max_rooms = 16, max_name_bytes = 64})

local MAX_TEXT = 4000

local function reply_error(conn, msg)
  conn:send_json({type = "error", error = msg})
end

local function presence(name, event, conn)
  rooms:send(name, json.encode({
    type = "presence",
    room = name,
    event = event,
    id = conn.id,
    members = rooms:count(name),
  }), {except = conn})
end

local commands = {}

function commands.join(conn, msg)
  local fresh, err = rooms:join(conn, msg.room)
  if fresh == nil then
    return reply_error(conn, err)
  end
  conn:send_json({type = "joined", room = msg.room, members = rooms:count(msg.room)})
  if fresh then
    presence(msg.room, "join", conn)
  end
end

function commands.leave(conn, msg)
  if type(msg.room) ~= "string" or not rooms:has(conn, msg.room) then
    return reply_error(conn, "not in that room")
  end
  rooms:leave(conn, msg.room)
  conn:send_json({type = "left", room = msg.room})
  presence(msg.room, "leave", conn)
end

function commands.say(conn, msg)
  if type(msg.text) ~= "string" or #msg.text > MAX_TEXT then
    return reply_error(conn, "text must be a string of at most " .. MAX_TEXT .. " bytes")
  end
  local out = json.encode({type = "message", room = msg.room, from = conn.id, text = msg.text})
  local reached, err = rooms:say(conn, msg.room, out)
  if not reached then
    return reply_error(conn, err)
  end
  conn:send_json({type = "sent", room = msg.room, reached = reached})
end

function commands.rooms(conn)
  local list = json.array()
  for _, name in ipairs(rooms:list()) do
    list[#list + 1] = {name = name, members = rooms:count(name)}
  end
  conn:send_json({type = "rooms", rooms = list})
end

function commands.members(conn, msg)
  if type(msg.room) ~= "string" then
    return reply_error(conn, "room must be a string")
  end
  conn:send_json({type = "members", room = msg.room, ids = json.array(rooms:members(msg.room))})
end

return {
  config = {max_message_size = 16 * 1024},

  message = function(conn, data, kind)
    if kind ~= "text" then
      return reply_error(conn, "send JSON text")
    end
    local msg = json.decode(data)
    if type(msg) ~= "table" or type(msg.type) ~= "string" then
      return reply_error(conn, "expected a JSON object with a \"type\"")
    end
    local command = commands[msg.type]
    if not command then
      return reply_error(conn, "unknown type: " .. msg.type)
    end
    command(conn, msg)
  end,

  close = function(conn)
    -- close runs with the topics still attached: tell each room, then forget the member
    for _, name in ipairs(rooms:leave_all(conn)) do
      presence(name, "leave", conn)
    end
  end,
}
