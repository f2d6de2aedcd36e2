-- ws.rooms: named rooms on top of topics. A room "lobby" is the topic "room:lobby"; the server's
-- topics deliver the messages, this module keeps who is in which room (in ws.state, so it
-- survives reloads) because the server can count a topic's subscribers but not list them.
-- It does not parse messages or decide who may join: that is the app's job.
--
--   local rooms = require("ws.rooms").new(ws)      -- or .new(ws, {prefix =, max_rooms =})
--   open    = function(conn) rooms:join(conn, "lobby") end,
--   message = function(conn, data) rooms:say(conn, "lobby", data) end,
--   close   = function(conn) rooms:leave_all(conn) end,   -- keeps member lists exact
--
-- join(conn, name)      -> true (joined), false (already in it) | nil, err
-- leave(conn, name)     -> true (left), false (was not in it) | nil, err
-- leave_all(conn)       -> list of the rooms left (call it from close: topics are still there)
-- members(name)         -> list of member conn ids, ascending (closed connections are pruned)
-- count(name)           -> number of members
-- list()                -> sorted list of room names with members
-- rooms_of(conn)        -> sorted list of the rooms conn is in (from conn:topics())
-- has(conn, name)       -> boolean
-- say(conn, name, data [, kind]) -> number reached (the other members) | nil, err
-- send(name, data [, opts])      -> number reached (every member; opts as ws.publish)
-- topic(name)           -> the topic name behind a room
--
-- The `ws` argument is the server's ws module; tests pass a fake with the same few functions
-- (state, get, publish). Conns need id, subscribe, unsubscribe, topics, publish, is_open.

local M = {}

local Rooms = {}
Rooms.__index = Rooms

M.DEFAULT_PREFIX = "room:"
M.MAX_NAME_BYTES = 128

-- new(ws [, opts]): opts.prefix (topic prefix, default "room:"), opts.key (ws.state field,
-- default "rooms" .. prefix), opts.max_rooms (per connection, default unlimited),
-- opts.max_name_bytes (default 128).
function M.new(ws, opts)
  if type(ws) ~= "table" and type(ws) ~= "userdata" then
    error("rooms.new needs the ws module", 2)
  end
  opts = opts or {}
  local prefix = opts.prefix or M.DEFAULT_PREFIX
  if type(prefix) ~= "string" then
    error("rooms.new: opts.prefix must be a string", 2)
  end
  local key = opts.key or ("rooms" .. (prefix == M.DEFAULT_PREFIX and "" or "." .. prefix))
  local state = ws.state
  local store = state[key]
  if store == nil then
    store = {}
    state[key] = store
  end
  return setmetatable({
    ws = ws,
    prefix = prefix,
    store = store, -- name -> {members = {[id] = true}, n = count}
    max_rooms = opts.max_rooms,
    max_name_bytes = opts.max_name_bytes or M.MAX_NAME_BYTES,
  }, Rooms)
end

local function check_name(self, name)
  if type(name) ~= "string" then
    return nil, "room name must be a string"
  end
  if name == "" then
    return nil, "room name is empty"
  end
  if #name > self.max_name_bytes then
    return nil, "room name longer than " .. self.max_name_bytes .. " bytes"
  end
  return true
end

function Rooms:topic(name)
  return self.prefix .. name
end

-- The names of conn's rooms, from its topics (the server's truth, readable in close too).
function Rooms:rooms_of(conn)
  local out = {}
  local topics = conn:topics() or {}
  local n = #self.prefix
  for _, t in ipairs(topics) do
    if t:sub(1, n) == self.prefix then
      out[#out + 1] = t:sub(n + 1)
    end
  end
  table.sort(out)
  return out
end

function Rooms:has(conn, name)
  local room = type(name) == "string" and self.store[name]
  return room and room.members[conn.id] == true or false
end

local function add(self, name, id)
  local room = self.store[name]
  if not room then
    room = {members = {}, n = 0}
    self.store[name] = room
  end
  if not room.members[id] then
    room.members[id] = true
    room.n = room.n + 1
  end
end

local function remove(self, name, id)
  local room = self.store[name]
  if room and room.members[id] then
    room.members[id] = nil
    room.n = room.n - 1
    if room.n <= 0 then
      self.store[name] = nil
    end
  end
end

function Rooms:join(conn, name)
  local ok, err = check_name(self, name)
  if not ok then
    return nil, err
  end
  if self.max_rooms and not self:has(conn, name) and #self:rooms_of(conn) >= self.max_rooms then
    return nil, "too many rooms (at most " .. self.max_rooms .. ")"
  end
  local fresh, why = conn:subscribe(self:topic(name))
  if fresh == nil then
    return nil, why -- "closed"
  end
  add(self, name, conn.id)
  return fresh
end

function Rooms:leave(conn, name)
  local ok, err = check_name(self, name)
  if not ok then
    return nil, err
  end
  local was = self:has(conn, name)
  remove(self, name, conn.id)
  -- nil, "closed" on a closed conn: the server already dropped its subscriptions
  local left = conn:unsubscribe(self:topic(name))
  return left == true or was
end

-- Forgets conn everywhere; call it from close (topics still attached) or any time.
function Rooms:leave_all(conn)
  local left = self:rooms_of(conn)
  for _, name in ipairs(left) do
    remove(self, name, conn.id)
    conn:unsubscribe(self:topic(name)) -- nil, "closed" inside close: nothing to undo
  end
  -- rooms kept in the store but no longer in the topics (a leave that raced a reload)
  for name, room in pairs(self.store) do
    if room.members[conn.id] then
      remove(self, name, conn.id)
      left[#left + 1] = name
    end
  end
  return left
end

-- Drops members whose connection is gone (an app that forgot leave_all in close).
local function prune(self, name)
  local room = self.store[name]
  if not room then
    return nil
  end
  local get = self.ws.get
  for id in pairs(room.members) do
    local c = get(id)
    if c == nil or (c.is_open and not c:is_open()) then
      remove(self, name, id)
    end
  end
  return self.store[name]
end

function Rooms:members(name)
  local out = {}
  local room = type(name) == "string" and prune(self, name)
  if room then
    for id in pairs(room.members) do
      out[#out + 1] = id
    end
    table.sort(out)
  end
  return out
end

function Rooms:count(name)
  local room = type(name) == "string" and prune(self, name)
  return room and room.n or 0
end

function Rooms:list()
  local names = {}
  for name in pairs(self.store) do
    names[#names + 1] = name
  end
  local out = {}
  for _, name in ipairs(names) do
    if prune(self, name) then
      out[#out + 1] = name
    end
  end
  table.sort(out)
  return out
end

-- To the room's other members; conn must be in the room.
function Rooms:say(conn, name, data, kind)
  local ok, err = check_name(self, name)
  if not ok then
    return nil, err
  end
  if not self:has(conn, name) then
    return nil, "not in room " .. name
  end
  return conn:publish(self:topic(name), data, kind)
end

-- To every member (opts as ws.publish: except, binary).
function Rooms:send(name, data, opts)
  local ok, err = check_name(self, name)
  if not ok then
    return nil, err
  end
  return self.ws.publish(self:topic(name), data, opts)
end

return M
