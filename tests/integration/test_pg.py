"""ws.pg against a real PostgreSQL made for this run (pgcluster.py: initdb/pg_ctl in a temporary
folder, a Unix socket, removed afterwards): types both ways, parameters kept apart from the SQL
(injection attempts stay data), affected row counts, SQLSTATE errors, transactions, timeouts that
cancel the query on the server, pool exhaustion bounded by the timeout, the server killed
mid-query (nil, err in time; the pool recovers when it returns; no descriptor leak), and close,
reload and shutdown while a handler waits. The test talks to the app in Lua: each message is a
chunk run inside the handler with `db` in scope, its results come back as JSON.
"""
import asyncio
import json
import signal
import time

import pytest

import pgcluster
import wsraw
from wsclient import STEP, connect, fd_count, run, wait_for

TEST_BUDGET = 120

APP = r"""
local json = ws.json
local db = assert(ws.pg.connect(%(conninfo)s, {pool = %(pool)d, timeout = %(timeout)s}))

local function pack(...)
  local t = {n = select("#", ...)}
  for i = 1, t.n do
    local v = select(i, ...)
    if v == nil then v = ws.null end
    t[i] = v
  end
  return t
end

return {
  config = {shutdown_timeout = 2},
  message = function(conn, data)
    local env = setmetatable({db = db, conn = conn}, {__index = _G})
    local fn = assert(load(data, "=test", "t", env))
    local r = pack(pcall(fn))
    local s, err = json.encode(r)
    conn:send(s or json.encode({false, "cannot encode: " .. tostring(err), n = 2}))
  end,
  close = function(conn, code)
    ws.log.info("closed", {code = code})
  end,
}
"""


@pytest.fixture(scope="module")
def pg():
    with pgcluster.PgCluster() as cluster:
        yield cluster


def lua_str(s):
    return json.dumps(s)  # a JSON string is a valid Lua string literal for these texts


@pytest.fixture
def server(wsserver_factory, pg):
    def start(pool=4, timeout=5, conninfo=None):
        src = APP % {"conninfo": lua_str(conninfo or pg.conninfo), "pool": pool,
                     "timeout": timeout}
        return wsserver_factory(app_source=src, args=["--metrics"])
    return start


async def ask(ws, chunk, timeout=STEP):
    """Runs chunk in the server; returns (ok, [values])."""
    await ws.send(chunk)
    vals = unpack(await asyncio.wait_for(ws.recv(), timeout))
    return vals[0], vals[1:]


def unpack(text):
    """The values of a reply: pcall's status, then what the chunk returned."""
    r = json.loads(text)
    return [r.get(str(i)) for i in range(1, r["n"] + 1)]


def call(srv, chunk, timeout=STEP):
    async def main():
        async with connect(srv.url) as ws:
            return await ask(ws, chunk, timeout)
    return run(main())


def test_types_round_trip(server, pg):
    pg.sql("DROP TABLE IF EXISTS types; CREATE TABLE types (id serial PRIMARY KEY, i2 int2, "
           "i4 int4, i8 int8, f4 float4, f8 float8, b bool, t text, by bytea, j json, jb jsonb, "
           "ts timestamptz, n numeric, nul text)")
    srv = server()
    ok, vals = call(srv, r"""
      local bin = "\0\1\2\255binary\0"
      local rows, n = db:query([[INSERT INTO types (i2, i4, i8, f4, f8, b, t, by, j, jb, ts, n, nul)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id]],
        -7, 2147483647, 9007199254740993, 1.5, 0.1, true, "héllo 李雷", bin,
        {a = 1, list = ws.json.array({1, 2})}, {nested = {x = "y"}}, "2024-02-29 12:34:56+00",
        "12345678901234567890.5", ws.null)
      assert(n == 1 and #rows == 1 and math.type(rows[1].id) == "integer", "insert")
      local r = assert(db:query("SELECT * FROM types WHERE id = $1", rows[1].id))[1]
      assert(r.by == bin, "bytea")
      assert(r.f8 == 0.1 and r.f4 == 1.5, "floats")
      assert(r.nul == ws.null, "null")
      return r.i2, r.i4, tostring(r.i8), math.type(r.i8), r.b, r.t, r.j.a, r.j.list[2], r.jb.nested.x,
        r.ts, r.n, type(r.n), #r.by
    """)
    assert ok, vals
    assert vals == [-7, 2147483647, "9007199254740993", "integer", True, "héllo 李雷", 1, 2, "y",
                    "2024-02-29 12:34:56+00", "12345678901234567890.5", "string", 11]


def test_parameters_stay_data(server, pg):
    pg.sql("DROP TABLE IF EXISTS users; CREATE TABLE users (id int PRIMARY KEY, name text)")
    pg.sql("INSERT INTO users VALUES (1, 'alice')")
    srv = server()
    attempts = ["'; DROP TABLE users; --", "1 OR 1=1", "alice' --", "$1", "\\'; SELECT 1; --",
                "1; DELETE FROM users"]
    for a in attempts:
        ok, vals = call(srv, f"""
          local rows = assert(db:query([[SELECT $1::text AS v, count(*) AS c FROM users
                                         WHERE name = $1]], {lua_str(a)}))
          local ins, n = assert(db:query("INSERT INTO users VALUES ($1, $2)", #{lua_str(a)} + 100,
                                         {lua_str(a)}))
          local back = assert(db:query("SELECT name FROM users WHERE id = $1", #{lua_str(a)} + 100))
          assert(db:query("DELETE FROM users WHERE id = $1", #{lua_str(a)} + 100))
          return rows[1].v, rows[1].c, n, back[1].name
        """)
        assert ok, vals
        assert vals == [a, 0, 1, a]
    assert pg.sql("SELECT name FROM users") == ["alice"]
    # an id parameter that is not a number is refused by the server, not run as SQL
    ok, vals = call(srv, 'return db:query("SELECT name FROM users WHERE id = $1", "1 OR 1=1")')
    assert ok and vals[0] is None and vals[2] == "22P02", vals


def test_counts_and_sqlstate_errors(server, pg):
    pg.sql("DROP TABLE IF EXISTS items; CREATE TABLE items (id int PRIMARY KEY, v int)")
    srv = server()
    ok, vals = call(srv, """
      local _, ins = assert(db:query("INSERT INTO items SELECT g, 0 FROM generate_series(1, 5) g"))
      local rows, upd = assert(db:query("UPDATE items SET v = v + 1 WHERE id <= $1", 3))
      local sel, n = assert(db:query("SELECT id FROM items ORDER BY id"))
      local none, zero = assert(db:query("DELETE FROM items WHERE id > 100"))
      return ins, #rows, upd, #sel, n, #none, zero
    """)
    assert ok and vals == [5, 0, 3, 5, 5, 0, 0], vals
    cases = [("INSERT INTO items VALUES (1, 1)", "23505", "duplicate key"),
             ("SELEC 1", "42601", "syntax error"),
             ("SELECT * FROM missing_table", "42P01", "does not exist"),
             ("SELECT 1/0", "22012", "division by zero")]
    for sql, state, text in cases:
        ok, vals = call(srv, f"return db:query({lua_str(sql)})")
        assert ok and vals[0] is None, vals
        assert vals[1].startswith(state + ": ") and text in vals[1] and vals[2] == state, vals
    # the pool's connections are still fine after errors (the failed statement was not cached)
    ok, vals = call(srv, "local r = assert(db:query('SELECT 42 AS x')) return r[1].x")
    assert ok and vals == [42]


def test_misuse_raises_and_bad_conninfo_is_nil_err(server, pg):
    srv = server()
    for chunk, text in [("db:query('SELECT $1', function() end)", "parameter 1 cannot be a function"),
                        ("db:query({})", "string expected"),
                        ("db:query('SELECT 1\\0')", "NUL"),
                        ("ws.pg.connect('x', {pool = 0})", "opts.pool"),
                        ("ws.pg.connect('x', {timeout = -1})", "opts.timeout"),
                        ("db:transaction('nope')", "function expected")]:
        ok, vals = call(srv, chunk)
        assert not ok and text in vals[0], (chunk, vals)
    ok, vals = call(srv, "return ws.pg.connect('host=127.0.0.1 port')")
    assert ok and vals[0] is None and "invalid conninfo" in vals[1], vals
    ok, vals = call(srv, "return ws.pg.connect('postgresql://%zz')")
    assert ok and vals[0] is None and "invalid conninfo" in vals[1], vals


def test_transactions_commit_rollback_and_raise(server, pg):
    pg.sql("DROP TABLE IF EXISTS acct; CREATE TABLE acct (id int PRIMARY KEY, bal int)")
    pg.sql("INSERT INTO acct VALUES (1, 100), (2, 0)")
    srv = server()
    ok, vals = call(srv, """
      local moved = function(tx, amount)
        assert(tx:query("UPDATE acct SET bal = bal - $1 WHERE id = 1", amount))
        assert(tx:query("UPDATE acct SET bal = bal + $1 WHERE id = 2", amount))
      end
      -- commit: fn returns
      local a, b = db:transaction(function(tx) moved(tx, 10) return "done", 7 end)
      -- rollback: fn returns nil, err
      local c, d = db:transaction(function(tx) moved(tx, 50) return nil, "changed my mind" end)
      -- rollback: fn raises; the error goes on
      local okr, e = pcall(db.transaction, db, function(tx) moved(tx, 30) error("boom") end)
      -- a failed statement inside: COMMIT turns into a rollback
      local f, g = db:transaction(function(tx)
        moved(tx, 5)
        tx:query("INSERT INTO acct VALUES (1, 0)")
      end)
      -- returning nothing commits and gives true
      local h = db:transaction(function(tx) tx:query("UPDATE acct SET bal = bal + 1 WHERE id = 2") end)
      -- a transaction object is useless after its end
      local kept
      db:transaction(function(tx) kept = tx end)
      local i, j = kept:query("SELECT 1")
      local rows = assert(db:query("SELECT bal FROM acct ORDER BY id"))
      return a, b, c, d, okr, e, f, g, h, i, j, rows[1].bal, rows[2].bal
    """)
    assert ok, vals
    assert vals[:4] == ["done", 7, None, "changed my mind"]
    assert vals[4] is False and "boom" in vals[5]
    assert vals[6] is None and "rolled back" in vals[7]
    assert vals[8] is True
    assert vals[9] is None and "over" in vals[10]
    assert vals[11:] == [90, 11]
    # no connection is left in a transaction
    assert pg.sql("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
                  ) == ["0"]


def wait_active(pg, tag, n, timeout=10.0):
    """Waits until n backends run a query containing tag (other than the one asking)."""
    pg.wait_sql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
                f"'%{tag}%' AND pid <> pg_backend_pid()", lambda r: r == [str(n)], timeout)


def test_timeout_cancels_the_query_on_the_server(server, pg):
    srv = server(pool=2)
    started = time.monotonic()
    ok, vals = call(srv, "return db:with({timeout = 0.3}):query('SELECT pg_sleep(30) AS slow1')")
    elapsed = time.monotonic() - started
    assert ok and vals == [None, "timeout"], vals
    assert elapsed < 1.5, elapsed
    wait_active(pg, "slow1", 0, timeout=3)
    # the connection went back clean: both pool connections still answer
    ok, vals = call(srv, """
      local a = assert(db:query('SELECT 1 AS x'))
      local b = assert(db:transaction(function(tx) return tx:query('SELECT 2 AS x') end))
      return a[1].x, b[1].x
    """)
    assert ok and vals == [1, 2], vals
    assert "event=pg_failed" in srv.log() and 'error="timeout"' in srv.log()


def test_timeout_inside_a_transaction_rolls_it_back(server, pg):
    pg.sql("DROP TABLE IF EXISTS tt; CREATE TABLE tt (id int)")
    srv = server(pool=1, timeout=0.5)
    ok, vals = call(srv, """
      return db:transaction(function(tx)
        assert(tx:query("INSERT INTO tt VALUES (1)"))
        local r, err = tx:query("SELECT pg_sleep(10)")
        local again, err2 = tx:query("SELECT 1")
        return err, err2
      end)
    """, timeout=10)
    assert ok and vals[0] is None and "aborted" in vals[1], vals
    assert pg.sql("SELECT count(*) FROM tt") == ["0"]
    ok, vals = call(srv, "return assert(db:query('SELECT 3 AS x'))[1].x", timeout=10)
    assert ok and vals == [3], vals


def test_pool_exhaustion_waits_bounded_by_the_timeout(server, pg):
    srv = server(pool=1, timeout=5)

    async def main():
        async with connect(srv.url) as a, connect(srv.url) as b:
            await a.send("return db:query('SELECT pg_sleep(1.0) AS s')")
            await asyncio.sleep(0.2)
            started = time.monotonic()
            ok, vals = await ask(b, "return db:with({timeout = 0.3}):query('SELECT 1 AS x')")
            assert ok and vals == [None, "timeout"], vals
            assert time.monotonic() - started < 1.0
            # a waiter that can wait long enough gets the connection when it comes back
            ok, vals = await ask(b, "local r = assert(db:query('SELECT 2 AS x')) return r[1].x",
                                 timeout=5)
            assert ok and vals == [2], vals
            vals = unpack(await asyncio.wait_for(a.recv(), 5))
            assert vals[0] is True and vals[1] == [{"s": ""}], vals

    run(main())


def metric(srv, name):
    resp = wsraw.http_exchange(srv.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    body = resp.body.decode()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and False:
            return float(line.split()[-1])
        if line.split(" ")[0] == name:
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{body}")


def test_each_worker_has_its_own_pool(wsserver_factory, pg):
    src = APP % {"conninfo": lua_str(pg.conninfo), "pool": 2, "timeout": 5}
    srv = wsserver_factory(app_source=src, args=["--workers", "2"])

    async def one(i):
        async with connect(srv.url) as ws:
            ok, vals = await ask(ws, "local r = assert(db:query("
                                     "'SELECT $1::int AS i, pg_backend_pid() AS pid', %d)) "
                                     "return r[1].i, r[1].pid" % i, timeout=10)
            assert ok and vals[0] == i, vals
            return vals[1]

    async def main():
        return await asyncio.gather(*(one(i) for i in range(20)))

    pids = run(main())
    assert len(pids) == 20
    # at most 2 connections per worker, 2 workers
    assert 1 <= len(set(pids)) <= 4, pids


def test_metrics(server, pg):
    srv = server(pool=3)
    call(srv, "for i = 1, 5 do assert(db:query('SELECT $1::int AS x', i)) end "
              "db:query('SELEC') db:with({timeout = 0.2}):query('SELECT pg_sleep(5)')")
    assert metric(srv, 'wsserver_store_commands_total{store="postgres",result="ok"}') == 5
    assert metric(srv, 'wsserver_store_commands_total{store="postgres",result="error"}') == 1
    assert metric(srv, 'wsserver_store_commands_total{store="postgres",result="timeout"}') == 1
    assert metric(srv, 'wsserver_store_duration_seconds_count{store="postgres"}') == 7
    assert metric(srv, 'wsserver_store_duration_seconds_bucket{store="postgres",le="+Inf"}') == 7
    assert metric(srv, 'wsserver_store_pool_connections{store="postgres",state="in_use"}') == 0
    assert 1 <= metric(srv, 'wsserver_store_pool_connections{store="postgres",state="open"}') <= 3


def test_server_killed_mid_query_then_back(server, pg):
    srv = server(pool=2, timeout=3)
    ok, vals = call(srv, "return assert(db:query('SELECT 1 AS x'))[1].x")
    assert ok and vals == [1]
    fds_before = fd_count(srv.pid)

    async def main():
        async with connect(srv.url) as ws:
            await ws.send("return db:query('SELECT pg_sleep(20) AS killed1')")
            wait_active(pg, "killed1", 1)
            started = time.monotonic()
            pg.stop("immediate")
            vals = unpack(await asyncio.wait_for(ws.recv(), 5))
            assert time.monotonic() - started < 2.5
            return vals

    try:
        vals = run(main())
        assert vals[0] is True and vals[1] is None, vals
        assert "connection lost" in vals[2], vals
        # while the server is down: nil, err within the timeout, not a hang
        started = time.monotonic()
        ok, vals = call(srv, "return db:query('SELECT 1')", timeout=10)
        assert ok and vals[0] is None and "cannot connect" in vals[1], vals
        assert time.monotonic() - started < 3.5
    finally:
        pg.start()
    # the pool recovers: new connections are made
    ok, vals = call(srv, "local r = assert(db:query('SELECT 5 AS x')) return r[1].x")
    assert ok and vals == [5], vals
    ok, vals = call(srv, "local r = assert(db:query('SELECT 6 AS x')) return r[1].x")
    assert ok and vals == [6], vals
    wait_for(lambda: fd_count(srv.pid) <= fds_before, timeout=3,
             what=lambda: f"fds back to {fds_before}, now {fd_count(srv.pid)}")


def test_backend_terminated_mid_query(server, pg):
    srv = server(pool=1)

    async def main():
        async with connect(srv.url) as ws:
            await ws.send("return db:query('SELECT pg_sleep(20) AS victim')")
            wait_active(pg, "victim", 1)
            started = time.monotonic()
            pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE "
                   "'%AS victim%' AND pid <> pg_backend_pid()")
            vals = unpack(await asyncio.wait_for(ws.recv(), 5))
            assert time.monotonic() - started < 2
            return vals

    vals = run(main())
    assert vals[0] is True and vals[1] is None, vals
    assert "57P01" in vals[2] or "connection lost" in vals[2], vals
    ok, vals = call(srv, "local r = assert(db:query('SELECT 7 AS x')) return r[1].x")
    assert ok and vals == [7], vals


def test_backend_terminated_inside_a_transaction(server, pg):
    pg.sql("DROP TABLE IF EXISTS lost_tx; CREATE TABLE lost_tx (id int)")
    srv = server(pool=1)

    async def main():
        async with connect(srv.url) as ws:
            await ws.send("""return db:transaction(function(tx)
              assert(tx:query("INSERT INTO lost_tx VALUES (1)"))
              local r, err = tx:query("SELECT pg_sleep(20) AS txvictim")
              local again, err2 = tx:query("SELECT 1")
              return r, err, again, err2
            end)""")
            wait_active(pg, "txvictim", 1)
            pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE "
                   "'%AS txvictim%' AND pid <> pg_backend_pid()")
            return unpack(await asyncio.wait_for(ws.recv(), 5))

    vals = run(main())
    # the query fails, the next one finds the connection gone, and the transaction cannot commit
    assert vals[0] is True and vals[1] is None, vals
    assert "connection lost" in vals[2] or "57P01" in vals[2], vals
    assert pg.sql("SELECT count(*) FROM lost_tx") == ["0"]
    ok, vals = call(srv, "local r = assert(db:query('SELECT 12 AS x')) return r[1].x")
    assert ok and vals == [12], vals


def test_close_while_waiting_cancels_the_query(server, pg):
    srv = server(pool=2)

    async def main():
        ws = await connect(srv.url)
        await ws.send("return db:query('SELECT pg_sleep(30) AS closed1')")
        wait_active(pg, "closed1", 1)
        await ws.close()

    run(main())
    wait_for(lambda: 'msg="closed"' in srv.log(), timeout=3, what="close handler")
    wait_active(pg, "closed1", 0, timeout=3)
    ok, vals = call(srv, "local r = assert(db:query('SELECT 8 AS x')) return r[1].x")
    assert ok and vals == [8], vals


def test_close_inside_a_transaction_discards_its_connection(server, pg):
    pg.sql("DROP TABLE IF EXISTS held; CREATE TABLE held (id int)")
    srv = server(pool=1)

    async def main():
        ws = await connect(srv.url)
        await ws.send("""return db:transaction(function(tx)
          assert(tx:query("INSERT INTO held VALUES (1)"))
          return tx:query("SELECT pg_sleep(30) AS intx1")
        end)""")
        wait_active(pg, "intx1", 1)
        await ws.close()

    run(main())
    wait_for(lambda: 'msg="closed"' in srv.log(), timeout=3, what="close handler")
    # the statement is cancelled, the connection closed (never pooled inside a transaction), and
    # the server rolled the insert back
    wait_active(pg, "intx1", 0, timeout=5)
    pg.wait_sql("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
                lambda r: r == ["0"], timeout=5)
    assert pg.sql("SELECT count(*) FROM held") == ["0"]
    # the pool of one makes a new connection for the next caller
    ok, vals = call(srv, "local r = assert(db:query('SELECT 11 AS x')) return r[1].x")
    assert ok and vals == [11], vals


def test_reload_while_waiting_keeps_a_working_client(server, pg):
    srv = server(pool=2)

    async def main():
        async with connect(srv.url) as ws:
            await ws.send("local r = assert(db:query('SELECT pg_sleep(1), 9 AS x')) return r[1].x")
            await asyncio.sleep(0.2)
            with open(srv.app) as f:
                src = f.read()
            with open(srv.app, "w") as f:
                f.write(src.replace("pool = 2", "pool = 3"))
            srv.signal(signal.SIGHUP)
            wait_for(lambda: "generation=2" in srv.log(), what="reload")
            vals = unpack(await asyncio.wait_for(ws.recv(), 5))
            assert vals == [True, 9], vals
            ok, vals = await ask(ws, "local r = assert(db:query('SELECT 10 AS x')) return r[1].x")
            assert ok and vals == [10], vals

    run(main())


def test_shutdown_while_waiting(server, pg):
    srv = server(pool=2)

    async def main():
        ws = await connect(srv.url)
        await ws.send("return db:query('SELECT pg_sleep(30) AS down1')")
        wait_active(pg, "down1", 1)
        return ws

    run(main())
    started = time.monotonic()
    assert srv.stop() == 0
    assert time.monotonic() - started < 5  # shutdown_timeout 2 s + the second the handlers get
    wait_active(pg, "down1", 0, timeout=5)
