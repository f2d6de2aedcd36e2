-- Specs for the chat app (chat.lua), written with ws.testing: the app runs in the real server,
-- in-process, with in-memory clients and a simulated clock (no sockets, no waiting).
--
--   lua5.4 /usr/bin/busted --lpath="lua/?.lua" --cpath="build/lua/?.so" examples/chat/chat_spec.lua
--                                                  (repo root, after make)
--   make test-lua                                  (runs it through tests/lua/chat_app_spec.lua)
local testing = require "ws.testing"
local json = require "ws.json"

local HERE = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local APP = HERE .. "/chat.lua"
local NOW = 1700000000

local function start()
  return testing.load(APP, {now = NOW})
end

-- A client that got its welcome.
local function connect(t)
  local c = assert(t:connect())
  assert.equal("welcome", c:next_json().type)
  return c
end

local function send(c, msg)
  c:send(json.encode(msg))
end

-- A client in `room` as `nick`, with its "joined" reply read; everyone else's queue emptied.
local function member(t, room, nick, others)
  local c = connect(t)
  send(c, {type = "join", room = room, nick = nick})
  local joined = c:next_json()
  assert.equal("joined", joined.type, json.encode(joined))
  for _, o in ipairs(others or {}) do
    o:received()
  end
  c:received()
  return c, joined
end

local function types(list)
  local out = {}
  for _, m in ipairs(list) do
    out[#out + 1] = m.type
  end
  return out
end

local function last_error(c)
  local list = c:received_json()
  local e = list[#list]
  assert.equal("error", e and e.type, json.encode(list))
  return e
end

describe("chat", function()
  local t
  before_each(function()
    t = start()
  end)

  it("welcomes a connection with its id, the rooms and the limits", function()
    local c = t:connect()
    local w = c:next_json()
    assert.equal("welcome", w.type)
    assert.equal(c.id, w.id)
    assert.same({}, w.rooms)
    assert.same({text = 2000, nick = 24, room = 32, history = 50, burst = 10, per = 5}, w.limits)
    assert.is_string(w.server)
    assert.is_nil(w.scope) -- without Redis, ids are unique per server run
  end)

  it("serves WebSockets at / only", function()
    local c, status, body = t:connect{path = "/elsewhere"}
    assert.is_nil(c)
    assert.equal(404, status)
    assert.equal("no WebSocket endpoint here\n", body)
  end)

  describe("rooms", function()
    it("joins a room: members and history to the joiner, presence to the others, the room list to all", function()
      local lobby = connect(t)
      local outsider = connect(t)
      send(lobby, {type = "join", room = " Lobby ", nick = " alice "})
      assert.same({type = "joined", room = "lobby", nick = "alice", members = {"alice"}, history = {}},
                  lobby:next_json())
      assert.same({type = "rooms", rooms = {{name = "lobby", members = 1}}}, lobby:next_json())
      assert.same({{type = "rooms", rooms = {{name = "lobby", members = 1}}}}, outsider:received_json())

      local bob = connect(t)
      send(bob, {type = "join", room = "LOBBY", nick = "Bob"})
      assert.same({"alice", "Bob"}, bob:next_json().members)
      assert.same({type = "presence", room = "lobby", event = "join", nick = "Bob",
                   members = {"alice", "Bob"}}, lobby:next_json())
      assert.equal(2, t:subscribers("room:lobby"))
      assert.same({"room:lobby"}, bob:topics())
    end)

    it("refuses a nickname taken in the room, whatever its case", function()
      local alice = member(t, "lobby", "Alice")
      local other = connect(t)
      send(other, {type = "join", room = "lobby", nick = "ALICE"})
      local e = last_error(other)
      assert.equal("nick_taken", e.code)
      assert.equal("Someone in lobby is already called Alice; pick another nickname.", e.message)
      send(other, {type = "join", room = "kitchen", nick = "alice"}) -- free there
      assert.equal("joined", other:next_json().type)
      assert.is_true(alice:is_open())
    end)

    it("checks room names and nicknames", function()
      local c = connect(t)
      local cases = {
        {{room = 5, nick = "a"}, "bad_room", "room must be a string"},
        {{room = "   ", nick = "a"}, "bad_room", "room is empty"},
        {{room = "bad room!", nick = "a"}, "bad_room", "room may only use letters, digits, _ and -"},
        {{room = string.rep("r", 33), nick = "a"}, "bad_room", "room is too long (at most 32 characters)"},
        {{room = "ok"}, "bad_nick", "nick must be a string"},
        {{room = "ok", nick = "<script>"}, "bad_nick", "nick may only use letters, digits, space, _ - and ."},
        {{room = "ok", nick = string.rep("n", 25)}, "bad_nick", "nick is too long (at most 24 characters)"},
      }
      for i, case in ipairs(cases) do
        local msg = case[1]
        msg.type = "join"
        send(c, msg)
        local e = last_error(c)
        assert.same({case[2], case[3]}, {e.code, e.message}, "case " .. i)
        t:advance(1) -- stay under the rate limit
      end
      assert.same({}, t:topics())
    end)

    it("is one room at a time: joining another leaves the first", function()
      local a = member(t, "one", "ann")
      local b = member(t, "one", "bea", {a})
      send(a, {type = "join", room = "two", nick = "ann"})
      assert.same({"joined", "rooms"}, types(a:received_json()))
      local seen = b:received_json()
      assert.same({"presence", "rooms"}, types(seen))
      assert.same({type = "presence", room = "one", event = "leave", nick = "ann", members = {"bea"}},
                  seen[1])
      assert.same({{name = "one", members = 1}, {name = "two", members = 1}}, seen[2].rooms)
      assert.same({"room:two"}, a:topics())
    end)

    it("leaves: left to the leaver, presence to the room, the new list to all", function()
      local a = member(t, "lobby", "ann")
      local b = member(t, "lobby", "bea", {a})
      send(a, {type = "leave"})
      assert.same({{type = "left", room = "lobby"}, {type = "rooms", rooms = {{name = "lobby", members = 1}}}},
                  a:received_json())
      assert.same({"presence", "rooms"}, types(b:received_json()))
      send(a, {type = "leave"})
      local e = last_error(a)
      assert.same({"not_in_room", "You are not in a room."}, {e.code, e.message})
      assert.same({}, a:topics())
    end)

    it("tells the room when a member's connection closes or drops", function()
      local a = member(t, "lobby", "ann")
      local b = member(t, "lobby", "bea", {a})
      local c = member(t, "lobby", "cid", {a, b})
      b:close(1001)
      assert.same({type = "presence", room = "lobby", event = "leave", nick = "bea", members = {"ann", "cid"}},
                  a:next_json())
      assert.same({type = "rooms", rooms = {{name = "lobby", members = 2}}}, a:next_json())
      c:drop()
      assert.same({"ann"}, a:next_json().members)
      assert.equal(1, t:subscribers("room:lobby"))
      assert.same({}, t:errors())
    end)

    it("lists the rooms with members on request", function()
      local a = member(t, "b-room", "ann")
      member(t, "a-room", "bea", {a})
      send(a, {type = "rooms"})
      assert.same({type = "rooms", rooms = {{name = "a-room", members = 1}, {name = "b-room", members = 1}}},
                  a:received_json()[1])
    end)

    it("keeps at most 100 rooms and forgets the quietest empty one first", function()
      local clients = {}
      for i = 1, 100 do
        clients[i] = member(t, "r" .. i, "n")
      end
      local late = connect(t)
      send(late, {type = "join", room = "r101", nick = "n"})
      assert.equal("too_many_rooms", last_error(late).code)
      t:advance(1)
      clients[7]:close() -- r7 empties
      t:advance(1)
      clients[3]:close() -- r3 empties later
      late:received()
      send(late, {type = "join", room = "r101", nick = "n"})
      assert.equal("joined", late:next_json().type)
      assert.is_nil(t.state.rooms.r7)
      assert.is_table(t.state.rooms.r3)
    end)

    it("accepts nicknames in every script and caps them in characters", function()
      for i, nick in ipairs({"José", "Мария", "李雷", "نور", "Ἀθηνᾶ", "ann-2.0_x",
                             string.rep("李", 24)}) do
        local c = connect(t)
        send(c, {type = "join", room = "r" .. i, nick = nick})
        local joined = c:next_json()
        assert.equal("joined", joined.type, nick .. ": " .. json.encode(joined))
        assert.equal(nick, joined.nick)
        t:advance(1)
      end
      local c = connect(t)
      local cases = {
        {string.rep("李", 25), "nick is too long (at most 24 characters)"},
        {"ann\u{202E}", "nick may only use letters, digits, space, _ - and ."}, -- right-to-left override
        {"a\u{200B}b", "nick may only use letters, digits, space, _ - and ."},  -- zero-width space
        {"a\u{2028}b", "nick may only use letters, digits, space, _ - and ."},  -- line separator
        {"a\tb", "nick may only use letters, digits, space, _ - and ."},
        {"\u{3000}", "nick may only use letters, digits, space, _ - and ."},    -- ideographic space
      }
      for i, case in ipairs(cases) do
        send(c, {type = "join", room = "ok", nick = case[1]})
        local e = last_error(c)
        assert.same({"bad_nick", case[2]}, {e.code, e.message}, "case " .. i)
        t:advance(1)
      end
      -- half a surrogate pair, as a JSON escape: not UTF-8, refused without a handler error
      c:send('{"type":"join","room":"ok","nick":"a\\ud800"}')
      local e = last_error(c)
      assert.is_truthy(e.code == "bad_json" or e.code == "bad_nick", e.code)
      assert.same({}, t:logs("error"))
    end)
  end)

  describe("messages", function()
    it("go to the whole room, sender included, with an id and a time", function()
      local a = member(t, "lobby", "ann")
      local b = member(t, "lobby", "bea", {a})
      local outside = member(t, "elsewhere", "cid", {a, b})
      send(a, {type = "say", text = "hello"})
      local m = a:next_json()
      assert.same({type = "message", room = "lobby", id = 1, nick = "ann", text = "hello", ts = m.ts}, m)
      assert.is_number(m.ts)
      assert.same(m, b:next_json())
      assert.same({}, outside:received())
      send(b, {type = "say", text = "hi ann"})
      assert.equal(2, a:next_json().id)
    end)

    it("are replayed to newcomers: the last 50 of the room", function()
      local a = member(t, "lobby", "ann")
      for i = 1, 55 do
        send(a, {type = "say", text = "m" .. i})
        t:advance(0.5) -- two tokens a second: never rate-limited
      end
      local _, joined = member(t, "lobby", "bea", {a})
      assert.equal(50, #joined.history)
      assert.equal("m6", joined.history[1].text)
      assert.equal("m55", joined.history[50].text)
      assert.equal(55, joined.history[50].id)
    end)

    it("are kept in Redis when the server has one: ids from INCR, replayed to newcomers", function()
      local r = testing.load(APP, {now = NOW, config = {redis = "redis://chat.test:6379"}})
      r:redis() -- an in-memory Redis for this test answers ws.redis
      -- what another node (or an earlier run) left there
      local earlier = {type = "message", room = "lobby", id = 7, nick = "old", text = "before", ts = 1}
      r:redis("RPUSH", "chat:room:lobby:history", json.encode(earlier))
      r:redis("SET", "chat:last_id", "7")
      local a = connect(r)
      send(a, {type = "join", room = "lobby", nick = "ann"})
      local joined = a:next_json()
      assert.same({earlier}, joined.history)
      for i = 1, 55 do
        send(a, {type = "say", text = "m" .. i})
        r:advance(0.5)
      end
      assert.equal("62", r:redis("GET", "chat:last_id"))
      assert.equal(50, r:redis("LLEN", "chat:room:lobby:history")) -- RPUSH then LTRIM
      local c = assert(r:connect())
      assert.equal("redis", c:next_json().scope)
      send(c, {type = "join", room = "lobby", nick = "bea"})
      joined = c:next_json()
      assert.equal("joined", joined.type)
      assert.equal(50, #joined.history)
      assert.equal("m6", joined.history[1].text)
      assert.equal(13, joined.history[1].id)
      assert.equal("m55", joined.history[50].text)
      assert.equal(62, joined.history[50].id)
      assert.same({}, r:errors())
      r:close()
    end)

    it("are kept per room in ws.state without Redis, the last 50 of each", function()
      local a = member(t, "lobby", "ann")
      local b = member(t, "other", "bea", {a})
      for i = 1, 55 do
        send(a, {type = "say", text = "a" .. i})
        send(b, {type = "say", text = "b" .. i})
        t:advance(0.5)
      end
      local lobby, other = t.state.rooms.lobby.history, t.state.rooms.other.history
      assert.equal(50, #lobby)
      assert.equal(50, #other)
      assert.equal("a6", lobby[1].text)
      assert.equal("b55", other[50].text)
      assert.equal(110, other[50].id) -- one id sequence for every room
      -- a reload keeps them
      assert.is_true(t:reload())
      local _, joined = member(t, "other", "cid", {a, b})
      assert.equal("b6", joined.history[1].text)
      assert.equal(50, #joined.history)
    end)

    it("must be a non-empty string of at most 2000 characters, in a room", function()
      local c = connect(t)
      send(c, {type = "say", text = "early"})
      local early = last_error(c)
      assert.same({"not_in_room", "Join a room first."}, {early.code, early.message})
      send(c, {type = "join", room = "lobby", nick = "ann"})
      c:received()
      send(c, {type = "say", text = "   "})
      assert.equal("bad_text", last_error(c).code)
      send(c, {type = "say", text = {}})
      assert.equal("bad_text", last_error(c).code)
      send(c, {type = "say", text = string.rep("x", 2001)})
      local e = last_error(c)
      assert.same({"too_long", "Messages are limited to 2000 characters."}, {e.code, e.message})
      send(c, {type = "say", text = string.rep("\u{e9}", 2000)}) -- 2000 characters, 4000 bytes
      assert.equal("message", c:next_json().type)
    end)
  end)

  describe("the rate limit", function()
    it("allows a burst of 10, then warns once and drops the rest until tokens come back", function()
      local a = member(t, "lobby", "ann") -- the join took one token
      for i = 1, 9 do
        send(a, {type = "say", text = "m" .. i})
      end
      assert.equal(9, #a:received_json())
      send(a, {type = "say", text = "too fast"})
      local e = a:next_json()
      assert.same({type = "error", code = "rate_limited", retry_after = 0.5,
                   message = "Easy there: at most 10 messages every 5 seconds. Try again in 0.5 s."}, e)
      send(a, {type = "say", text = "still too fast"})
      assert.same({}, a:received()) -- dropped without a second warning
      t:advance(0.5)
      send(a, {type = "say", text = "better"})
      assert.equal("better", a:next_json().text)
      assert.same({}, t:errors())
    end)

    it("counts bad input too, but not typing notices", function()
      local a = member(t, "lobby", "ann")
      for _ = 1, 20 do
        send(a, {type = "typing"})
      end
      for _ = 1, 9 do
        a:send("not json")
      end
      assert.equal(9, #a:received())
      a:send("not json")
      assert.equal("rate_limited", a:next_json().code)
    end)
  end)

  describe("typing notices", function()
    it("reach the others at most once a second", function()
      local a = member(t, "lobby", "ann")
      local b = member(t, "lobby", "bea", {a})
      send(a, {type = "typing"})
      send(a, {type = "typing"})
      assert.same({{type = "typing", room = "lobby", nick = "ann"}}, b:received_json())
      assert.same({}, a:received())
      t:advance(1)
      send(a, {type = "typing"})
      assert.equal(1, #b:received())
    end)

    it("are ignored outside a room", function()
      local a = connect(t)
      send(a, {type = "typing"})
      assert.same({}, a:received())
    end)
  end)

  describe("bad input", function()
    it("is answered with an error, never a handler error", function()
      local c = connect(t)
      local cases = {
        {"binary", function() c:send_binary("\0\1") end},
        {"bad_json", function() c:send("{nope") end},
        {"bad_message", function() c:send("[1, 2]") end},
        {"bad_message", function() c:send('"just a string"') end},
        {"bad_message", function() c:send('{"type": 5}') end},
        {"unknown_type", function() c:send('{"type": "dance"}') end},
        {"bad_room", function() c:send('{"type": "join", "room": null, "nick": "x"}') end},
        {"bad_room", function() c:send('{"type": "join", "room": [], "nick": "x"}') end},
        {"bad_nick", function() c:send('{"type": "join", "room": "r", "nick": {"a": 1}}') end},
        {"not_in_room", function() c:send('{"type": "say", "text": null}') end},
      }
      for _, case in ipairs(cases) do
        case[2]()
        assert.equal(case[1], last_error(c).code)
        t:advance(1)
      end
      assert.is_true(c:is_open())
      assert.same({}, t:errors())
    end)

    it("above 16 KiB never reaches the app: the server closes with 1009", function()
      local c = connect(t)
      c:send(string.rep("x", 16 * 1024 + 1))
      assert.same({kind = "close", code = 1009, reason = "message too big"}, c:next())
    end)
  end)

  describe("reloads", function()
    it("keep the rooms, their history and members; load() forgets members that are gone", function()
      local a = member(t, "lobby", "ann")
      send(a, {type = "say", text = "before"})
      a:received()
      -- a member whose connection vanished while an older version ran
      t.state.rooms.lobby.members[999] = "ghost"
      t.state.rooms.lobby.count = t.state.rooms.lobby.count + 1
      assert.is_true(t:reload())
      assert.is_nil(t.state.rooms.lobby.members[999])
      assert.equal(1, t.state.rooms.lobby.count)
      local _, joined = member(t, "lobby", "bea", {a})
      assert.same({"ann", "bea"}, joined.members)
      assert.equal("before", joined.history[1].text)
      send(a, {type = "say", text = "after"})
      assert.equal(2, a:next_json().id) -- ids keep growing
      local log = t:logs("info")
      assert.equal("chat loaded", log[#log].msg)
      assert.equal(2, log[#log].fields.generation)
    end)
  end)
end)
