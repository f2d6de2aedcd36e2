--[[ A live to-do board whose state lives in PostgreSQL: every change is written to the
database first, then published to every viewer, so all open pages (on every node, with the bus)
show the same list, and the list survives restarts.

  createdb board      # or any database the server's user may create a table in
  BOARD_PG="dbname=board" build/wsserver -l 127.0.0.1:8080 --static examples/board/public \
      examples/board/board.lua
  then open http://127.0.0.1:8080/ in two windows.

BOARD_PG is a libpq conninfo ("host=/run/postgresql dbname=board", or a postgresql:// URI);
the table board_items is created on first use.

Protocol: one JSON object per text frame, always with a "type".

client -> server
  {"type":"add", "text":"buy milk"}            a new item (1 to 200 characters)
  {"type":"toggle", "id":3, "done":true}       mark an item done or not done
  {"type":"delete", "id":3}                    remove an item

server -> client
  {"type":"snapshot", "items":[item, ...], "viewers":2}    on connect
  {"type":"added", "item":item}                            to everyone
  {"type":"updated", "item":item}                          to everyone
  {"type":"deleted", "id":3}                               to everyone
  {"type":"viewers", "count":3}                            to everyone, on each open or close
  {"type":"error", "code":"bad_text", "message":"..."}     to the sender only

item: {"id":3, "text":"buy milk", "done":false, "created":"2024-05-01 10:00:00+00"}
Error codes: bad_json, bad_message, unknown_type, bad_text, bad_id, not_found, db.
]]

local json = ws.json

local CONNINFO = os.getenv("BOARD_PG") or "dbname=board"
local TOPIC = "board"
local MAX_TEXT = 200   -- characters
local MAX_ITEMS = 500  -- items on the board at once

local db = assert(ws.pg.connect(CONNINFO, {pool = 8, timeout = 5}))

local S = ws.state
S.schema_ready = S.schema_ready or false

local SCHEMA = [[
CREATE TABLE IF NOT EXISTS board_items (
  id bigserial PRIMARY KEY,
  text text NOT NULL CHECK (char_length(text) BETWEEN 1 AND 200),
  done boolean NOT NULL DEFAULT false,
  created timestamptz NOT NULL DEFAULT now()
)]]

-- The table, once per process. Two servers starting at once serialise on an advisory lock
-- (CREATE TABLE IF NOT EXISTS alone can race on the catalog).
local function ensure_schema()
  if S.schema_ready then
    return true
  end
  local ok, err = db:transaction(function(tx) -- rows, count: commit; nil, err: roll back
    local locked, err = tx:query("SELECT pg_advisory_xact_lock(7415)")
    if not locked then
      return nil, err
    end
    return tx:query(SCHEMA)
  end)
  if not ok then
    return nil, err
  end
  S.schema_ready = true
  return true
end

local function item_of(row)
  return {id = row.id, text = row.text, done = row.done, created = row.created}
end

local function send_error(conn, code, message)
  conn:send_json({type = "error", code = code, message = message})
end

local function db_failed(conn, err)
  ws.log.warn("board_db", {error = err})
  send_error(conn, "db", "the board's database did not answer: " .. tostring(err))
end

local function viewers()
  ws.publish(TOPIC, json.encode({type = "viewers", count = ws.count()}))
end

local function check_text(text)
  if type(text) ~= "string" then
    return nil, "text must be a string"
  end
  if #text > MAX_TEXT * 4 then
    return nil, "text is too long"
  end
  text = text:match("^%s*(.-)%s*$")
  local n = utf8.len(text)
  if not n or n < 1 or n > MAX_TEXT then
    return nil, string.format("text must be 1 to %d characters", MAX_TEXT)
  end
  return text
end

local function check_id(id)
  if math.type(id) ~= "integer" or id < 1 then
    return nil
  end
  return id
end

local handlers = {}

function handlers.add(conn, msg)
  local text, why = check_text(msg.text)
  if not text then
    return send_error(conn, "bad_text", why)
  end
  -- the count and the insert in one statement: the cap holds under concurrent adds
  local rows, err = db:query([[
    INSERT INTO board_items (text)
    SELECT $1 WHERE (SELECT count(*) FROM board_items) < $2
    RETURNING id, text, done, created::text]], text, MAX_ITEMS)
  if not rows then
    return db_failed(conn, err)
  end
  if #rows == 0 then
    return send_error(conn, "bad_text", "the board is full")
  end
  ws.publish(TOPIC, json.encode({type = "added", item = item_of(rows[1])}))
end

function handlers.toggle(conn, msg)
  local id = check_id(msg.id)
  if not id or type(msg.done) ~= "boolean" then
    return send_error(conn, "bad_id", "toggle needs an integer id and a boolean done")
  end
  local rows, err = db:query(
    "UPDATE board_items SET done = $2 WHERE id = $1 RETURNING id, text, done, created::text",
    id, msg.done)
  if not rows then
    return db_failed(conn, err)
  end
  if #rows == 0 then
    return send_error(conn, "not_found", "no item " .. id)
  end
  ws.publish(TOPIC, json.encode({type = "updated", item = item_of(rows[1])}))
end

function handlers.delete(conn, msg)
  local id = check_id(msg.id)
  if not id then
    return send_error(conn, "bad_id", "delete needs an integer id")
  end
  local rows, n = db:query("DELETE FROM board_items WHERE id = $1", id)
  if not rows then
    return db_failed(conn, n)
  end
  if n == 0 then
    return send_error(conn, "not_found", "no item " .. id)
  end
  ws.publish(TOPIC, json.encode({type = "deleted", id = id}))
end

return {
  open = function(conn)
    conn:subscribe(TOPIC)
    local ok, err = ensure_schema()
    local rows
    if ok then
      rows, err = db:query("SELECT id, text, done, created::text FROM board_items ORDER BY id")
    end
    if not rows then
      db_failed(conn, err)
      rows = {}
    end
    local items = json.array({})
    for i, row in ipairs(rows) do
      items[i] = item_of(row)
    end
    conn:send_json({type = "snapshot", items = items, viewers = ws.count()})
    viewers()
  end,

  message = function(conn, data, kind)
    if kind ~= "text" then
      return send_error(conn, "bad_message", "send JSON text frames")
    end
    local msg = json.decode(data)
    if type(msg) ~= "table" then
      return send_error(conn, "bad_json", "a message is one JSON object")
    end
    local h = type(msg.type) == "string" and handlers[msg.type]
    if not h then
      return send_error(conn, "unknown_type", "type must be add, toggle or delete")
    end
    if not ensure_schema() then
      return db_failed(conn, "the table could not be created")
    end
    h(conn, msg)
  end,

  close = function()
    viewers()
  end,
}
