-- ws.rooms against a tiny fake of the ws module and of conns (topics as sets).
local rooms_mod = require "ws.rooms"

-- A fake server: topics name -> {[conn] = true}, publish/get like the real ws module.
local function fake_ws()
  local ws = {state = {}, conns = {}, topics = {}, sent = {}}
  function ws.get(id)
    local c = ws.conns[id]
    return c and c.open and c or nil
  end
  local function deliver(topic, data, except_id)
    local n = 0
    for c in pairs(ws.topics[topic] or {}) do
      if c.id ~= except_id and c.open then
        c.inbox[#c.inbox + 1] = data
        n = n + 1
      end
    end
    return n
  end
  function ws.publish(topic, data, opts)
    local except = opts and opts.except
    return deliver(topic, data, type(except) == "table" and except.id or except)
  end
  local next_id = 0
  function ws.connect()
    next_id = next_id + 1
    local c = {id = next_id, open = true, inbox = {}, subs = {}}
    function c:is_open() return self.open end
    function c:subscribe(t)
      if not self.open then return nil, "closed" end
      if self.subs[t] then return false end
      self.subs[t] = true
      self.subs[#self.subs + 1] = t
      ws.topics[t] = ws.topics[t] or {}
      ws.topics[t][self] = true
      return true
    end
    function c:unsubscribe(t)
      if not self.open then return nil, "closed" end
      if not self.subs[t] then return false end
      self.subs[t] = nil
      for i, x in ipairs(self.subs) do
        if x == t then table.remove(self.subs, i) break end
      end
      ws.topics[t][self] = nil
      return true
    end
    function c:topics()
      local out = {}
      for i, t in ipairs(self.subs) do out[i] = t end
      return out
    end
    function c:publish(t, data)
      if not self.open then return nil, "closed" end
      return deliver(t, data, self.id)
    end
    -- what the server does: close sees topics, then they are dropped
    function c:drop()
      self.open = false
    end
    function c:release()
      for _, t in ipairs(self.subs) do ws.topics[t][self] = nil end
      self.subs = {}
    end
    ws.conns[c.id] = c
    return c
  end
  return ws
end

describe("ws.rooms", function()
  local ws, rooms, a, b, c

  before_each(function()
    ws = fake_ws()
    rooms = rooms_mod.new(ws)
    a, b, c = ws.connect(), ws.connect(), ws.connect()
  end)

  it("joins, counts and lists members", function()
    assert.is_true(rooms:join(a, "lobby"))
    assert.is_false(rooms:join(a, "lobby"))
    assert.is_true(rooms:join(b, "lobby"))
    assert.is_true(rooms:join(b, "games"))
    assert.equal(2, rooms:count("lobby"))
    assert.equal(1, rooms:count("games"))
    assert.equal(0, rooms:count("empty"))
    assert.same({a.id, b.id}, rooms:members("lobby"))
    assert.same({}, rooms:members("empty"))
    assert.same({"games", "lobby"}, rooms:list())
    assert.same({"games", "lobby"}, rooms:rooms_of(b))
    assert.is_true(rooms:has(a, "lobby"))
    assert.is_false(rooms:has(a, "games"))
  end)

  it("keeps member lists in ws.state and uses prefixed topics", function()
    rooms:join(a, "lobby")
    assert.is_table(ws.state.rooms)
    assert.is_true(ws.state.rooms.lobby.members[a.id])
    assert.same({"room:lobby"}, a:topics())
    -- a second instance (after a reload) sees the same rooms
    local again = rooms_mod.new(ws)
    assert.same({a.id}, again:members("lobby"))
    -- another prefix is a separate namespace
    local teams = rooms_mod.new(ws, {prefix = "team:"})
    teams:join(a, "lobby")
    assert.same({"room:lobby", "team:lobby"}, a:topics())
    assert.same({"lobby"}, rooms:rooms_of(a))
    assert.same({"lobby"}, teams:rooms_of(a))
    assert.is_table(ws.state["rooms.team:"])
  end)

  it("leaves rooms and forgets empty ones", function()
    rooms:join(a, "lobby")
    rooms:join(b, "lobby")
    assert.is_true(rooms:leave(a, "lobby"))
    assert.is_false(rooms:leave(a, "lobby"))
    assert.same({b.id}, rooms:members("lobby"))
    rooms:leave(b, "lobby")
    assert.same({}, rooms:list())
    assert.is_nil(ws.state.rooms.lobby)
  end)

  it("leave_all from close sees the topics and empties the lists", function()
    rooms:join(a, "x")
    rooms:join(a, "y")
    rooms:join(b, "y")
    a:drop() -- closed: conn methods answer nil, "closed", topics still readable
    assert.same({"x", "y"}, rooms:leave_all(a))
    a:release()
    assert.same({"y"}, rooms:list())
    assert.same({b.id}, rooms:members("y"))
  end)

  it("prunes members whose connection is gone", function()
    rooms:join(a, "x")
    rooms:join(b, "x")
    a:drop()
    a:release()
    ws.conns[a.id] = nil
    assert.equal(1, rooms:count("x"))
    assert.same({b.id}, rooms:members("x"))
    b:drop()
    assert.same({}, rooms:list())
  end)

  it("says to the other members only, and only from inside the room", function()
    rooms:join(a, "x")
    rooms:join(b, "x")
    assert.equal(1, rooms:say(a, "x", "hi"))
    assert.same({"hi"}, b.inbox)
    assert.same({}, a.inbox)
    local n, err = rooms:say(c, "x", "intruder")
    assert.is_nil(n)
    assert.matches("not in room", err)
    assert.equal(2, rooms:send("x", "all"))
    assert.equal(1, rooms:send("x", "not a", {except = a}))
    assert.same({"all"}, a.inbox)
    assert.same({"hi", "all", "not a"}, b.inbox)
  end)

  it("validates names and limits", function()
    assert.same({nil, "room name must be a string"}, {rooms:join(a, 42)})
    assert.same({nil, "room name is empty"}, {rooms:join(a, "")})
    local n, err = rooms:join(a, string.rep("x", 200))
    assert.is_nil(n)
    assert.matches("longer than 128", err)
    local few = rooms_mod.new(ws, {prefix = "few:", max_rooms = 2})
    assert.is_true(few:join(a, "1"))
    assert.is_true(few:join(a, "2"))
    assert.is_false(few:join(a, "2")) -- already in it: not over the limit
    local ok, why = few:join(a, "3")
    assert.is_nil(ok)
    assert.matches("too many rooms", why)
    assert.has_error(function() rooms_mod.new(nil) end)
    assert.has_error(function() rooms_mod.new(ws, {prefix = 1}) end)
  end)

  it("answers nil, 'closed' for a closed conn", function()
    a:drop()
    assert.same({nil, "closed"}, {rooms:join(a, "x")})
    assert.same({}, rooms:list())
  end)
end)
