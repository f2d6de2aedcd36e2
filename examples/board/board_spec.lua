-- Specs for the board app (board.lua), written with ws.testing: the app runs in the real server,
-- in-process, with in-memory clients; t:on_pg answers its queries in place of PostgreSQL, from a
-- Lua table, so the spec needs no database.
--
--   lua5.4 /usr/bin/busted --lpath="lua/?.lua" --cpath="build/lua/?.so" examples/board/board_spec.lua
--                                                  (repo root, after make)
--   make test-lua                                  (runs it through tests/lua/board_app_spec.lua)
local testing = require "ws.testing"
local json = require "ws.json"

local HERE = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local APP = HERE .. "/board.lua"
local CREATED = "2024-05-01 10:00:00+00"

-- The board's table in the spec: answers the statements board.lua sends, as PostgreSQL would
-- (rows keyed by column name, the count), and keeps every statement in db.log.
local function fake_db()
  local db = {items = {}, next_id = 1, log = {}}
  function db.answer(sql, params)
    local verb = sql:match("^%s*(%u+)")
    db.log[#db.log + 1] = verb
    if db.down then
      return nil, "connection lost: server closed the connection unexpectedly"
    end
    if verb == "INSERT" then
      local item = {id = db.next_id, text = params[1], done = false, created = CREATED}
      db.next_id = db.next_id + 1
      db.items[#db.items + 1] = item
      return {item}
    elseif verb == "UPDATE" then
      for _, item in ipairs(db.items) do
        if item.id == tonumber(params[1]) then
          item.done = params[2] == "true"
          return {item}
        end
      end
      return {}
    elseif verb == "DELETE" then
      for i, item in ipairs(db.items) do
        if item.id == tonumber(params[1]) then
          table.remove(db.items, i)
          return {}, 1
        end
      end
      return {}, 0
    elseif sql:match("FROM board_items ORDER BY id") then
      return db.items
    end
    -- BEGIN, COMMIT, the advisory lock and CREATE TABLE: accepted (no rows)
  end
  return db
end

local function start(db)
  local t = testing.load(APP)
  t:on_pg(db.answer)
  return t
end

-- A viewer with its snapshot (returned) and the viewers counts read.
local function viewer(t, others)
  local c = assert(t:connect())
  local snap = c:next_json()
  assert.equal("snapshot", snap.type)
  c:received()
  for _, o in ipairs(others or {}) do
    o:received()
  end
  return c, snap
end

describe("the board (examples/board/board.lua) with t:on_pg", function()
  it("publishes a change to every viewer once the database has it", function()
    local db = fake_db()
    local t = start(db)
    local a = viewer(t)
    local b = viewer(t, {a})
    a:send(json.encode({type = "add", text = "  buy milk  "}))
    local item = {id = 1, text = "buy milk", done = false, created = CREATED}
    assert.same({type = "added", item = item}, a:next_json())
    assert.same({type = "added", item = item}, b:next_json())
    b:send(json.encode({type = "toggle", id = 1, done = true}))
    item.done = true
    assert.same({type = "updated", item = item}, a:next_json())
    assert.same({type = "updated", item = item}, b:next_json())
    local c, snap = viewer(t, {a, b})
    assert.same({item}, snap.items)
    assert.equal(3, snap.viewers)
    a:send(json.encode({type = "delete", id = 1}))
    for _, v in ipairs({a, b, c}) do
      assert.same({type = "deleted", id = 1}, v:next_json())
    end
    -- the table was made once, in a transaction, before the first query
    assert.same({"BEGIN", "SELECT", "CREATE", "COMMIT", "SELECT"}, {table.unpack(db.log, 1, 5)})
    t:close()
  end)

  it("tells only the sender when the database fails, and publishes nothing", function()
    local db = fake_db()
    local t = start(db)
    local a = viewer(t)
    local b = viewer(t, {a})
    a:send(json.encode({type = "delete", id = 9}))
    assert.same({type = "error", code = "not_found", message = "no item 9"}, a:next_json())
    db.down = true
    a:send(json.encode({type = "add", text = "x"}))
    local e = a:next_json()
    assert.equal("db", e.code)
    assert.matches("connection lost", e.message)
    assert.is_nil(b:next())
    assert.same({}, db.items)
    t:close()
  end)
end)
