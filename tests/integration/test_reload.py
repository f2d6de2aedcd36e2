"""Hot reload (SPEC §4 "Hot reload", §7): SIGHUP, --watch, ws.reload(), --reload PIDFILE|PID.

Every app is generated into the test's tmp_path and rewritten between reloads. What is checked:
no connection dropped and no message lost, duplicated or reordered while the app is reloaded
under traffic; replies switch to the new version right after a successful reload and never after
a failed one; conn.data, ws.state, subscriptions and queued output survive; the old version's
timers and globals do not; modules from the app's folder are reloaded; live config options apply
to open connections, the others are reported as needing a restart; ws.stats() and the status
that `wsserver --reload` prints agree with what happened.
"""
import asyncio
import os
import pathlib
import re
import socket
import subprocess
import time

import pytest
from websockets.exceptions import ConnectionClosed
from wsclient import STEP, run, wait_for, wait_for_async
from wsclient import connect as ws_connect

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("WSSERVER", str(ROOT / "build" / "wsserver"))


TEST_BUDGET = 90  # seconds per test (conftest enforces it)


def connect(url, **kw):
    """wsclient.connect, closing faster (2 s close timeout)."""
    kw.setdefault("close_timeout", 2)
    return ws_connect(url, **kw)


async def ask(ws, text, timeout=STEP):
    await ws.send(text)
    return await asyncio.wait_for(ws.recv(), timeout)


def write(path, source):
    """Replaces the file's content in place (open, truncate, write, close)."""
    pathlib.Path(path).write_text(source)


# A `make` running beside the tests may be rewriting the binary at the moment we exec it
# (EACCES / ETXTBSY): that is retried, it says nothing about the server under test.
EXEC_RETRIES = 20


def cli_reload(target):
    """`wsserver --reload PIDFILE|PID` -> (exit code, stdout, stderr)."""
    for attempt in range(EXEC_RETRIES):
        try:
            p = subprocess.run([BINARY, "--reload", str(target)], capture_output=True,
                               text=True, timeout=15)
            return p.returncode, p.stdout, p.stderr
        except (PermissionError, OSError) as e:
            if attempt == EXEC_RETRIES - 1 or isinstance(e, FileNotFoundError):
                raise
            time.sleep(0.1)


async def cli_reload_async(target):
    for attempt in range(EXEC_RETRIES):
        try:
            proc = await asyncio.create_subprocess_exec(
                BINARY, "--reload", str(target),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            break
        except (PermissionError, OSError) as e:
            if attempt == EXEC_RETRIES - 1 or isinstance(e, FileNotFoundError):
                raise
            await asyncio.sleep(0.1)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    return proc.returncode, out.decode(), err.decode()


STATUS_RE = re.compile(r"^attempt=(\d+) result=(ok|failed) generation=(\d+)(?: error=(.+))?$")


def parse_status(out):
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"--reload printed {out!r}"
    m = STATUS_RE.match(lines[0])
    assert m, f"--reload printed {out!r}"
    return int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)


def log_events(server, event):
    """The log lines of one event, as dicts of their key=value fields (text format)."""
    rows = []
    for line in server.log().splitlines():
        if f" event={event} " not in line + " ":
            continue
        fields = {}
        for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line):
            v = m.group(2)
            fields[m.group(1)] = v[1:-1] if v.startswith('"') else v
        rows.append(fields)
    return rows


def loaded(server, trigger=None):
    return [r for r in log_events(server, "app_loaded")
            if trigger is None or r.get("trigger") == trigger]


def load_failed(server, trigger=None):
    return [r for r in log_events(server, "app_load_failed")
            if trigger is None or r.get("trigger") == trigger]


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


# ---------------------------------------------------------------------------------------------
# 1. 200 connections under steady traffic, 50 reloads alternating good and broken versions
# ---------------------------------------------------------------------------------------------

N_CONNS = 200
TICK = 0.02  # each connection sends one message every 20 ms
N_RELOADS = 50
GAP = 0.35  # traffic under each version before the next reload

GOOD = r'''
local TAG = "v@VER@"
return {
  config = { handler_timeout = 0.2, max_buffered = 67108864 },
  load = function(state, info)
    state.loads = (state.loads or 0) + 1
    state.info = string.format("%d/%d/%s", info.generation, info.previous, info.trigger)
  end,
  message = function(conn, data)
    if data == "stats" then
      local s = ws.stats()
      conn:send(string.format("stats %d %d %d %d", s.generation, s.reloads_ok, s.reloads_failed,
                              ws.state.total or 0))
      return
    end
    local d = conn.data
    d.n = (d.n or 0) + 1
    ws.state.total = (ws.state.total or 0) + 1
    conn:send(TAG .. ":" .. data .. ":" .. d.n .. ":" .. ws.state.total)
  end,
}
'''

# Each broken version would answer "bad" if it ever took over; several also start timers or
# touch shared state before failing, which must all be undone.
BROKEN = {
    "syntax": "local x = = 1\n" + GOOD.replace("@VER@", "bad"),
    "runtime": 'ws.every(0.01, function() ws.broadcast("leak-runtime") end)\n'
               'local t = nil\nlocal boom = t.field\n' + GOOD.replace("@VER@", "bad"),
    "load_error": GOOD.replace("@VER@", "bad").replace(
        "state.loads = (state.loads or 0) + 1",
        'ws.every(0.01, function() ws.broadcast("leak-load") end)\n    error("load refused")'),
    "not_table": 'return "not a table"\n',
    "load_loop": GOOD.replace("@VER@", "bad").replace(
        "state.loads = (state.loads or 0) + 1", "while true do end"),
    "unknown_field": GOOD.replace("@VER@", "bad").replace(
        "  message = function", "  mesage = function() end,\n  message = function"),
    "wrong_type": 'return { message = "not a function" }\n',
    "bad_config": GOOD.replace("@VER@", "bad").replace(
        "handler_timeout = 0.2,", "handler_timeout = 0.2, max_message_size = -5,"),
    "top_loop": "while true do end\n" + GOOD.replace("@VER@", "bad"),
}

REPLY_RE = re.compile(r"^v(\d+):(\d+):(\d+):(\d+)$")


def test_reload_under_traffic_200_connections_50_reloads(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    write(app, GOOD.replace("@VER@", "1"))
    server = wsserver_factory(app=app, args=["--max-connections", "1000"])
    kinds = list(BROKEN)

    async def scenario():
        conns = await asyncio.gather(*(connect(server.url) for _ in range(N_CONNS)))
        first = (await ask(conns[0], "stats")).split()
        assert first[0] == "stats"
        gen0, ok0, failed0 = int(first[1]), int(first[2]), int(first[3])

        version = {"applied": 1, "started": 1, "pending": None}
        sent = [[] for _ in conns]  # per connection: (applied at send, pending at send)
        got = [[] for _ in conns]  # per connection: (tag, seq, n, total, started at receipt)
        problems = []
        stop = asyncio.Event()
        stats_q = asyncio.Queue()

        async def receiver(i, ws):
            try:
                async for msg in ws:
                    if msg.startswith("stats "):
                        stats_q.put_nowait(msg)
                        continue
                    m = REPLY_RE.match(msg)
                    if not m:
                        problems.append(f"conn {i}: unexpected message {msg!r}")
                        continue
                    got[i].append((int(m.group(1)), int(m.group(2)), int(m.group(3)),
                                   int(m.group(4)), version["started"]))
            except ConnectionClosed as e:
                if not stop.is_set():
                    problems.append(f"conn {i}: closed {e.code} {e.reason!r}")

        async def ticker():
            nxt = time.monotonic()
            while not stop.is_set():
                for i, ws in enumerate(conns):
                    seq = len(sent[i])
                    sent[i].append((version["applied"], version["pending"]))
                    try:
                        await ws.send(str(seq))
                    except ConnectionClosed as e:
                        problems.append(f"conn {i}: send failed, closed {e.code}")
                        return
                nxt += TICK
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))

        receivers = [asyncio.create_task(receiver(i, ws)) for i, ws in enumerate(conns)]
        tick = asyncio.create_task(ticker())
        results = []
        attempts = []
        good = bad = 0
        for k in range(N_RELOADS):
            await asyncio.sleep(GAP)
            assert not problems, problems[:5]
            if k % 2 == 0:
                ver = version["applied"] + 1
                write(app, GOOD.replace("@VER@", str(ver)))
                version["pending"] = ver
                version["started"] = ver
                rc, out, err = await cli_reload_async(server.pid)
                attempt, result, gen, why = parse_status(out)
                assert (rc, result) == (0, "ok"), f"good v{ver}: rc={rc} {out!r} {err!r}"
                version["applied"] = ver
                version["pending"] = None
                good += 1
            else:
                kind = kinds[(k // 2) % len(kinds)]
                write(app, BROKEN[kind])
                rc, out, err = await cli_reload_async(server.pid)
                attempt, result, gen, why = parse_status(out)
                assert (rc, result) == (1, "failed"), f"broken {kind}: rc={rc} {out!r} {err!r}"
                assert why, f"broken {kind}: no error in {out!r}"
                bad += 1
            attempts.append(attempt)
            results.append((result, gen))
        await asyncio.sleep(GAP)
        stop.set()
        await tick

        def all_answered():
            return all(len(got[i]) >= len(sent[i]) for i in range(N_CONNS))

        await wait_for_async(lambda: all_answered() or problems, 15, "every reply")
        await conns[0].send("stats")
        stats = (await asyncio.wait_for(stats_q.get(), STEP)).split()
        for ws in conns:
            await ws.close()
        await asyncio.gather(*receivers)
        return dict(gen0=gen0, ok0=ok0, failed0=failed0, sent=sent, got=got, problems=problems,
                    results=results, attempts=attempts, good=good, bad=bad, stats=stats,
                    final=version["applied"])

    r = run(scenario(), timeout=60)
    assert not r["problems"], r["problems"][:10]
    sent, got = r["sent"], r["got"]
    total = sum(len(s) for s in sent)
    assert total > N_CONNS * 200, f"only {total} messages were sent"

    # --reload's published results: one attempt each, generation +1 on ok only
    gen = r["gen0"]
    for idx, ((result, g), attempt) in enumerate(zip(r["results"], r["attempts"])):
        if result == "ok":
            gen += 1
        assert g == gen, f"reload #{idx} ({result}) reported generation {g}, expected {gen}"
        if idx:
            assert attempt == r["attempts"][idx - 1] + 1, r["attempts"]

    totals = []
    for i in range(N_CONNS):
        replies = got[i]
        assert len(replies) == len(sent[i]), (
            f"conn {i}: {len(sent[i])} sent, {len(replies)} replies")
        prev_tag = prev_total = 0
        for seq, (reply, at_send) in enumerate(zip(replies, sent[i])):
            tag, rseq, n, tot, started = reply
            applied, _pending = at_send
            assert rseq == seq, (
                f"conn {i}: reply #{seq} answers message {rseq} (lost, duplicated or reordered)")
            assert n == seq + 1, f"conn {i}: conn.data counter {n} for message #{seq} (reset?)"
            assert tot > prev_total, f"conn {i}: ws.state total went {prev_total} -> {tot}"
            assert tag >= prev_tag, f"conn {i}: tag went back from v{prev_tag} to v{tag}"
            assert tag >= applied, (f"conn {i}: message {seq} sent after v{applied} was applied "
                                    f"was answered by v{tag}")
            assert tag <= started, f"conn {i}: reply from v{tag} before it was even written"
            prev_tag, prev_total = tag, tot
            totals.append(tot)
        assert prev_tag == r["final"], f"conn {i}: last reply from v{prev_tag}, not v{r['final']}"
    assert sorted(totals) == list(range(1, total + 1)), "ws.state total skipped or repeated"

    assert r["stats"][0] == "stats", r["stats"]
    generation, ok, failed, state_total = map(int, r["stats"][1:])
    assert generation - r["gen0"] == r["good"] == N_RELOADS // 2
    assert generation == r["results"][-1][1]
    assert ok - r["ok0"] == r["good"], f"reloads_ok {r['ok0']} -> {ok}"
    assert failed - r["failed0"] == r["bad"], f"reloads_failed {r['failed0']} -> {failed}"
    assert state_total == total

    log = server.log()
    assert len(loaded(server, "SIGHUP")) == r["good"]
    assert len(load_failed(server, "SIGHUP")) == r["bad"]
    gens = [int(x["generation"]) for x in loaded(server)]
    assert gens == list(range(gens[0], gens[0] + len(gens))), gens
    assert 'handler="message"' not in log, "a message handler failed during the reloads"
    assert "leak-" not in log


# ---------------------------------------------------------------------------------------------
# 2. Timers
# ---------------------------------------------------------------------------------------------

TIMER_APP = r'''
local V = "@VER@"
ws.every(0.05, function() ws.broadcast("top:" .. V) end)
return {
  config = { handler_timeout = 0.5 },
  load = function(state, info)
    state.h = ws.every(0.05, function() ws.broadcast("load:" .. V) end)
    ws.after(1.0, function() ws.broadcast("after:" .. V) end)
  end,
  message = function(conn, data)
    if data == "start" then
      ws.every(0.05, function() conn:send("msg:" .. V) end)
      conn:send("started:" .. V)
    elseif data == "cancel_prev" then
      conn:send("cancel:" .. tostring(ws.state.prev_h:cancel()))
    end
  end,
}
'''


def test_old_timers_stop_and_failed_reload_keeps_them(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    write(app, TIMER_APP.replace("@VER@", "v1"))
    server = wsserver_factory(app=app)

    async def collect(ws, seconds):
        out = []
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(await asyncio.wait_for(ws.recv(), left))
            except asyncio.TimeoutError:
                return out

    async def scenario():
        async with connect(server.url) as ws:
            await ws.send("start")
            before = await collect(ws, 0.5)
            for kind in ("top:v1", "load:v1", "msg:v1", "started:v1"):
                assert kind in before, f"{kind} not seen from v1: {before[:20]}"

            # v2 keeps a handle on v1's load timer through ws.state
            write(app, TIMER_APP.replace("@VER@", "v2").replace(
                "state.h = ws.every", "state.prev_h = state.h\n    state.h = ws.every"))
            rc, out, _ = await cli_reload_async(server.pid)
            assert rc == 0, out
            after = await collect(ws, 1.6)  # past v1's ws.after(1.0)
            first_v2 = next((i for i, m in enumerate(after) if m.endswith(":v2")), None)
            assert first_v2 is not None, f"v2's timers never fired: {after[:20]}"
            late_v1 = [m for m in after[first_v2:] if m.endswith(":v1")]
            assert not late_v1, f"v1 timers still fire after reload to v2: {late_v1[:10]}"
            assert after.count("load:v2") >= 15 and after.count("top:v2") >= 15, after[-20:]
            assert "after:v2" in after  # v2's own one-shot timer
            await ws.send("cancel_prev")  # ticks keep arriving: skip to the answer
            while not (reply := await asyncio.wait_for(ws.recv(), STEP)).startswith("cancel:"):
                pass
            assert reply == "cancel:false", "v1's timer was still armed after the reload"

            # failed reloads: v3 starts timers at top level / in load, then fails
            broken_top = TIMER_APP.replace("@VER@", "v3") + "\nerror('top-level failure')\n"
            broken_top = broken_top.replace("return {", "local app = {", 1) + "\nreturn app\n"
            broken_load = TIMER_APP.replace("@VER@", "v3").replace(
                'ws.after(1.0, function() ws.broadcast("after:" .. V) end)', 'error("no")')
            for src in (broken_top, broken_load, "syntax error here"):
                write(app, src)
                rc, out, _ = await cli_reload_async(server.pid)
                assert rc == 1 and "result=failed" in out, out
                during = await collect(ws, 0.5)
                assert not [m for m in during if m.endswith(":v3")], during[:10]
                assert not [m for m in during if m.endswith(":v1")], during[:10]
                assert during.count("load:v2") >= 5, f"v2's timer stopped: {during[:20]}"
                assert during.count("top:v2") >= 5, f"v2's timer stopped: {during[:20]}"

    run(scenario(), timeout=30)
    assert len(load_failed(server, "SIGHUP")) == 3
    assert "leak" not in server.log()


# ---------------------------------------------------------------------------------------------
# 3. Modules required from the app's folder
# ---------------------------------------------------------------------------------------------

MODULE_APP = r'''
local fmt = require "fmt"
return {
  message = function(conn, data)
    if data == "lazy" then
      conn:send("lazy " .. require("fmt").wrap("x"))
    elseif data == "sub" then
      conn:send("sub " .. require("lib.deco").deco("x"))
    else
      conn:send(fmt.wrap(data))
    end
  end,
}
'''


def module(tag):
    return f'local M = {{}}\nfunction M.wrap(s) return "{tag}[" .. s .. "]" end\nreturn M\n'


def test_module_reload(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    write(app, MODULE_APP)
    write(tmp_path / "fmt.lua", module("A"))
    (tmp_path / "lib").mkdir()
    deco = tmp_path / "lib" / "deco.lua"
    write(deco, 'return { deco = function(s) return "D1<" .. s .. ">" end }\n')
    server = wsserver_factory(app=app)

    async def scenario():
        async with connect(server.url) as ws:
            assert await ask(ws, "hi") == "A[hi]"
            assert await ask(ws, "sub") == "sub D1<x>"

            write(tmp_path / "fmt.lua", module("B"))  # only the module changes
            rc, out, _ = await cli_reload_async(server.pid)
            assert rc == 0, out
            assert await ask(ws, "hi") == "B[hi]", "the edited module was not reloaded"
            assert await ask(ws, "lazy") == "lazy B[x]"

            write(deco, 'return { deco = function(s) return "D2<" .. s .. ">" end }\n')
            rc, out, _ = await cli_reload_async(server.pid)
            assert rc == 0, out
            assert await ask(ws, "sub") == "sub D2<x>", "lib/deco.lua was not reloaded"

            broken = [
                "local M = {\nfunction M.wrap(s) return s end\nreturn M\n",  # syntax
                'error("module refuses to load")\n',  # runtime error in the module
                "while true do end\n",  # interrupted by handler_timeout (1 s)
            ]
            for src in broken:
                write(tmp_path / "fmt.lua", src)
                rc, out, _ = await cli_reload_async(server.pid)
                assert rc == 1 and "result=failed" in out, out
                assert await ask(ws, "hi") == "B[hi]", "a failed module reload changed behaviour"
                # package.loaded must hold the old module again, or a lazy require re-reads
                # the broken file (and the handler fails)
                assert await ask(ws, "lazy") == "lazy B[x]"

            write(tmp_path / "fmt.lua", module("C"))
            rc, out, _ = await cli_reload_async(server.pid)
            assert rc == 0, out
            assert await ask(ws, "hi") == "C[hi]"
            assert await ask(ws, "lazy") == "lazy C[x]"

    run(scenario(), timeout=30)


# ---------------------------------------------------------------------------------------------
# 4. --watch
# ---------------------------------------------------------------------------------------------

WATCH_APP = r'''
local fmt = require "fmt"
return { message = function(conn, data) conn:send("@VER@ " .. fmt.wrap(data)) end }
'''


def test_watch_picks_up_every_kind_of_save(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    write(app, WATCH_APP.replace("@VER@", "v1"))
    write(tmp_path / "fmt.lua", module("A"))
    server = wsserver_factory(app=app, args=["--watch"])
    settle = 0.7  # > the 0.2 s debounce: a second reload for the same save would show by then

    def reloads():
        return len(loaded(server, "watch")), len(load_failed(server, "watch"))

    async def scenario():
        async with connect(server.url) as ws:
            assert await ask(ws, "x") == "v1 A[x]"
            await asyncio.sleep(0.3)
            assert reloads() == (0, 0), "a reload without any save"

            async def expect(n_ok, n_failed, reply, what):
                await wait_for_async(lambda: reloads() != expected_before, 5, what)
                await asyncio.sleep(settle)
                assert reloads() == (n_ok, n_failed), f"{what}: reloads (ok, failed) = {reloads()}"
                assert await ask(ws, "x") == reply, what

            # 1. edit in place
            expected_before = reloads()
            write(app, WATCH_APP.replace("@VER@", "v2"))
            await expect(1, 0, "v2 A[x]", "in-place edit")

            # 2. write a temp file, rename it over the app (editors, atomic deploys)
            expected_before = reloads()
            tmp = tmp_path / "app.lua.tmp"
            write(tmp, WATCH_APP.replace("@VER@", "v3"))
            os.replace(tmp, app)
            await expect(2, 0, "v3 A[x]", "temp + rename")

            # 2b. the same with a temp name that itself ends in .lua
            expected_before = reloads()
            tmp = tmp_path / ".app-save.lua"
            write(tmp, WATCH_APP.replace("@VER@", "v4"))
            os.replace(tmp, app)
            await expect(3, 0, "v4 A[x]", "temp .lua + rename")

            # 3. delete: the running version stays; recreate: reloaded once
            expected_before = reloads()
            os.unlink(app)
            await asyncio.sleep(settle)
            assert reloads() == expected_before, "deleting the app triggered a (failed) reload"
            assert await ask(ws, "x") == "v4 A[x]"
            assert log_events(server, "app_missing"), "deletion not logged"
            write(app, WATCH_APP.replace("@VER@", "v5"))
            await expect(4, 0, "v5 A[x]", "delete then recreate")

            # 3b. delete and recreate within the debounce window (backup-rename editors)
            expected_before = reloads()
            os.rename(app, tmp_path / "app.lua~")
            write(app, WATCH_APP.replace("@VER@", "v6"))
            await expect(5, 0, "v6 A[x]", "rename away + recreate")

            # 4. a module under the folder
            expected_before = reloads()
            write(tmp_path / "fmt.lua", module("B"))
            await expect(6, 0, "v6 B[x]", "module edit")

            # 5. a broken save is refused, the next good one applies
            expected_before = reloads()
            write(app, "return {")
            await expect(6, 1, "v6 B[x]", "broken save")
            expected_before = reloads()
            write(app, WATCH_APP.replace("@VER@", "v7"))
            await expect(7, 1, "v7 B[x]", "fixed save")

            # 5b. a save that takes a while: nothing is read before the writer closes the file
            expected_before = reloads()
            src = WATCH_APP.replace("@VER@", "v8")
            with open(app, "w") as f:
                f.write(src[: len(src) // 2])
                f.flush()
                await asyncio.sleep(settle)
                assert reloads() == expected_before, "a half-written file was loaded"
                f.write(src[len(src) // 2:])
            await expect(8, 1, "v8 B[x]", "slow save")

            # 6. files that are not Lua do not reload anything
            write(tmp_path / "notes.txt", "hello")
            (tmp_path / "data.json").write_text("{}")
            await asyncio.sleep(settle)
            assert reloads() == (8, 1), "a non-Lua file triggered a reload"

    run(scenario(), timeout=40)


HELPER_APP = r'''
local helper = require "newpkg.helper"
return { message = function(conn, data) conn:send("@VER@ " .. helper.tag) end }
'''


def test_watch_sees_module_folders_created_after_start(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    (tmp_path / "lib").mkdir()
    write(tmp_path / "lib" / "old.lua", "return { tag = 'old1' }\n")
    write(app, 'local old = require "lib.old"\n'
               'return { message = function(c, d) c:send("v1 " .. old.tag) end }\n')
    server = wsserver_factory(app=app, args=["--watch"])

    def n_loaded():
        return len(loaded(server, "watch"))

    async def scenario():
        async with connect(server.url) as ws:
            assert await ask(ws, "x") == "v1 old1"
            # a module in a subfolder that existed at start
            write(tmp_path / "lib" / "old.lua", "return { tag = 'old2' }\n")
            await wait_for_async(lambda: n_loaded() == 1, 5, "reload after lib/old.lua changed")
            assert await ask(ws, "x") == "v1 old2"

            # a package folder created while the server runs, then used by the app
            (tmp_path / "newpkg").mkdir()
            write(tmp_path / "newpkg" / "helper.lua", "return { tag = 'h1' }\n")
            await asyncio.sleep(0.5)
            # (the new module alone may already have caused a reload: count from here)
            before = n_loaded()
            write(app, HELPER_APP.replace("@VER@", "v2"))
            await wait_for_async(lambda: n_loaded() > before, 5, "reload after app.lua changed")
            assert await ask(ws, "x") == "v2 h1"
            before = n_loaded()
            write(tmp_path / "newpkg" / "helper.lua", "return { tag = 'h2' }\n")
            await wait_for_async(lambda: n_loaded() > before, 3,
                                 "a reload after editing newpkg/helper.lua (a module folder "
                                 "created after start is not watched)")
            assert await ask(ws, "x") == "v2 h2"

    run(scenario(), timeout=30)


# ---------------------------------------------------------------------------------------------
# 5. ws.reload() and --reload PIDFILE|PID
# ---------------------------------------------------------------------------------------------

REQ_APP = r'''
local V = "@VER@"
return {
  message = function(conn, data)
    if data == "reload" then
      local a = ws.reload()
      local b = ws.reload()  -- a second request before the first ran: still one reload
      conn:send(V .. " requested " .. tostring(a))
    else
      conn:send(V .. " " .. data)
    end
  end,
}
'''


def test_ws_reload_from_handler(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    write(app, REQ_APP.replace("@VER@", "v1"))
    server = wsserver_factory(app=app)

    async def scenario():
        async with connect(server.url) as ws:
            assert await ask(ws, "a") == "v1 a"
            write(app, REQ_APP.replace("@VER@", "v2"))
            # the handler that asked finishes under the old version
            assert await ask(ws, "reload") == "v1 requested true"
            await wait_for_async(lambda: loaded(server, "request"), 5, "app_loaded trigger=request")
            assert await ask(ws, "b") == "v2 b"
            await asyncio.sleep(0.3)
            assert len(loaded(server, "request")) == 1, "two ws.reload() calls reloaded twice"

            write(app, "return 42\n")
            assert await ask(ws, "reload") == "v2 requested true"
            await wait_for_async(lambda: load_failed(server, "request"), 5, "app_load_failed")
            assert await ask(ws, "c") == "v2 c"

    run(scenario(), timeout=20)


def test_ws_reload_under_constant_traffic(wsserver_factory, tmp_path):
    """ws.reload() runs "between two loop iterations"; it must not wait for an idle loop."""
    app = tmp_path / "app.lua"
    write(app, REQ_APP.replace("@VER@", "v1"))
    server = wsserver_factory(app=app)

    async def scenario():
        conns = await asyncio.gather(*(connect(server.url) for _ in range(50)))
        stop = asyncio.Event()

        async def chatter(ws):
            while not stop.is_set():
                for _ in range(20):
                    await ws.send("x")
                for _ in range(20):
                    await ws.recv()

        tasks = [asyncio.create_task(chatter(ws)) for ws in conns[1:]]
        await asyncio.sleep(0.5)
        write(app, REQ_APP.replace("@VER@", "v2"))
        t0 = time.monotonic()
        assert await ask(conns[0], "reload") == "v1 requested true"
        try:
            await wait_for_async(lambda: loaded(server, "request"), 3, "reload under traffic")
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        took = time.monotonic() - t0
        assert took < 2.5, f"ws.reload() under traffic took {took:.2f} s"
        for ws in conns:
            await ws.close()

    run(scenario(), timeout=30)


def test_cli_reload_pidfile_and_pid(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    pidfile = tmp_path / "wsserver.pid"
    write(app, REQ_APP.replace("@VER@", "v1"))
    server = wsserver_factory(app=app, args=["--pidfile", str(pidfile)])
    wait_for(pidfile.exists, 5, "the pid file")
    assert pidfile.read_text().strip() == str(server.pid)

    write(app, REQ_APP.replace("@VER@", "v2"))
    rc, out, err = cli_reload(pidfile)
    attempt, result, gen, why = parse_status(out)
    assert (rc, result, why) == (0, "ok", None), (out, err)

    write(app, "return {\n")
    rc, out, err = cli_reload(pidfile)
    attempt2, result, gen2, why = parse_status(out)
    assert (rc, result) == (1, "failed"), (out, err)
    assert (attempt2, gen2) == (attempt + 1, gen), out
    assert why and "expected" in why, why  # Lua's syntax error message

    write(app, REQ_APP.replace("@VER@", "v3"))
    rc, out, err = cli_reload(str(server.pid))  # a bare PID
    attempt3, result, gen3, why = parse_status(out)
    assert (rc, result, attempt3, gen3) == (0, "ok", attempt2 + 1, gen + 1), out

    async def check():
        async with connect(server.url) as ws:
            assert await ask(ws, "z") == "v3 z"

    run(check(), timeout=10)

    # the server's own log agrees
    assert [int(x["generation"]) for x in loaded(server, "SIGHUP")] == [gen, gen3]
    assert len(load_failed(server, "SIGHUP")) == 1

    # unusable targets fail with 1 and a message, without waiting for the 10 s timeout
    t0 = time.monotonic()
    rc, out, err = cli_reload(tmp_path / "missing.pid")
    assert rc == 1 and err and not out
    dead = subprocess.Popen(["true"])
    dead.wait()
    rc, out, err = cli_reload(str(dead.pid))
    assert rc == 1 and err and not out
    assert time.monotonic() - t0 < 5

    status = pathlib.Path(f"/tmp/wsserver-{server.pid}.status")
    assert status.exists()
    assert server.stop() == 0
    assert not pidfile.exists(), "the pid file outlived the server"
    assert not status.exists(), "the status file outlived the server"


# ---------------------------------------------------------------------------------------------
# 6. Config changes on reload
# ---------------------------------------------------------------------------------------------

CONFIG_APP = r'''
return {
  config = { @CONFIG@ },
  message = function(conn, data)
    if data == "debug" then ws.log.debug("debug-marker-@VER@") end
    conn:send("@VER@ len " .. #data)
  end,
}
'''


def config_app(ver, config):
    return CONFIG_APP.replace("@VER@", ver).replace("@CONFIG@", config)


def test_config_live_and_restart_options(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    write(app, config_app("v1", "max_message_size = 1000"))
    server = wsserver_factory(app=app)

    def reload_ok(src):
        write(app, src)
        rc, out, err = cli_reload(server.pid)
        assert rc == 0 and "result=ok" in out, (out, err)

    async def scenario():
        async with connect(server.url) as a:
            assert await ask(a, "x" * 900) == "v1 len 900"

            reload_ok(config_app("v2", "max_message_size = 4000"))
            assert not log_events(server, "config_needs_restart"), "nothing non-live changed"
            assert await ask(a, "x" * 2000) == "v2 len 2000", "a raised limit did not apply"

            # an invalid value fails the reload and keeps the running limit
            write(app, config_app("v3", "max_message_size = 0"))
            rc, out, _ = cli_reload(server.pid)
            assert rc == 1, out
            assert await ask(a, "x" * 3000) == "v2 len 3000"

            reload_ok(config_app("v4", "max_message_size = 500"))
            await a.send("x" * 900)
            with pytest.raises(ConnectionClosed) as e:
                await asyncio.wait_for(a.recv(), STEP)
            assert e.value.rcvd and e.value.rcvd.code == 1009, "a lowered limit did not apply"

        async with connect(server.url) as b:
            assert await ask(b, "y" * 400) == "v4 len 400"

            # non-live: reported, the reload itself succeeds
            reload_ok(config_app("v5", "max_message_size = 500, compression = \"on\""))
            rows = log_events(server, "config_needs_restart")
            assert [r.get("option") for r in rows] == ["compression"], rows
            assert await ask(b, "y" * 400) == "v5 len 400"
            # and not applied to new connections: no permessage-deflate until a restart
            async with connect(server.url, compression="deflate") as c:
                assert c.extensions == [], "compression applied live although 'needs restart'"
                assert await ask(c, "z") == "v5 len 1"

            # back to the compression the process runs with: nothing needs a restart any more
            reload_ok(config_app("v6", "max_message_size = 500"))
            assert await ask(b, "y" * 400) == "v6 len 400"
            restart = [r.get("option") for r in log_events(server, "config_needs_restart")]
            assert restart == ["compression"], (
                f"config_needs_restart logged {restart}: reverting compression to the value the "
                "process runs with was reported as needing a restart")

    run(scenario(), timeout=30)


def test_config_log_level_change_applies_or_is_reported(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    write(app, config_app("v1", ""))
    server = wsserver_factory(app=app)

    async def scenario():
        async with connect(server.url) as a:
            assert await ask(a, "debug") == "v1 len 5"
            write(app, config_app("v2", "log_level = \"debug\""))
            rc, out, _ = cli_reload(server.pid)
            assert rc == 0, out
            assert await ask(a, "debug") == "v2 len 5"
            await asyncio.sleep(0.2)

    run(scenario(), timeout=15)
    log = server.log()
    assert "debug-marker-v1" not in log
    restart = [r.get("option") for r in log_events(server, "config_needs_restart")]
    assert "debug-marker-v2" in log or "log_level" in restart, (
        "log_level changed on reload: neither applied nor reported as needing a restart")


def test_static_option_change_is_reported_not_applied(wsserver_factory, tmp_path):
    """`static` is not live: a reload that sets it must report it, and serve nothing new."""
    app = tmp_path / "app.lua"
    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "hello.txt").write_text("secret-ish")
    write(app, "return { message = function(c, d) c:send(d) end }\n")
    server = wsserver_factory(app=app)
    write(app, 'return { config = { static = "%s" }, message = function(c, d) c:send(d) end }\n'
          % pub)
    rc, out, _ = cli_reload(server.pid)
    assert rc == 0, out
    assert [r.get("option") for r in log_events(server, "config_needs_restart")] == ["static"]
    data = http_get(server.port, "/hello.txt")
    assert b"secret-ish" not in data, (
        "static changed on reload is served at once while the log says it needs a restart")


# ---------------------------------------------------------------------------------------------
# 7. Globals, the ws table, conn.data, subscriptions, queued output, load(state, info)
# ---------------------------------------------------------------------------------------------

STATE_V1 = r'''
OLD_GLOBAL = "from v1"
return {
  config = { max_buffered = 67108864 },
  http = { ["GET /ver"] = function(req) return 200, "route v1" end },
  load = function(state, info)
    state.infos = state.infos or {}
    state.infos[#state.infos + 1] = string.format("%d/%d/%s", info.generation, info.previous,
                                                  info.trigger)
  end,
  message = function(conn, data)
    if data == "sub" then
      conn.data.name = "alice-" .. conn.id
      conn:subscribe("room")
      HANDLER_GLOBAL = "set by a v1 handler"
      conn:send("subscribed")
    elseif data == "burst" then
      for i = 1, 4000 do conn:send(string.format("b%05d", i) .. string.rep("x", 2000)) end
      conn:send("burst-end")
    elseif data == "globals" then
      conn:send(tostring(OLD_GLOBAL) .. "|" .. tostring(HANDLER_GLOBAL))
    end
  end,
}
'''

STATE_V2 = r'''
local function try(f) local ok, err = pcall(f); return ok and "ok" or "refused" end
return {
  http = { ["GET /ver"] = function(req) return 200, "route v2" end },
  load = function(state, info)
    state.infos[#state.infos + 1] = string.format("%d/%d/%s", info.generation, info.previous,
                                                  info.trigger)
    state.file = info.file
  end,
  message = function(conn, data)
    if data == "file" then
      conn:send(tostring(ws.state.file))
    elseif data == "globals" then
      conn:send(tostring(OLD_GLOBAL) .. "|" .. tostring(HANDLER_GLOBAL) .. "|" ..
                tostring(rawget(_G, "OLD_GLOBAL")) .. "|" .. tostring(rawget(_G, "HANDLER_GLOBAL")))
    elseif data == "readonly" then
      conn:send(table.concat({
        try(function() ws.broadcast = nil end),
        try(function() ws.state = {} end),
        try(function() ws.log.info = nil end),
        try(function() ws.close_codes.NORMAL = 1 end),
        try(function() setmetatable(ws, nil) end),
      }, ","))
    elseif data == "who" then
      conn:send("v2 " .. tostring(conn.data.name) .. " " .. table.concat(conn:topics(), ","))
    elseif data == "infos" then
      conn:send(table.concat(ws.state.infos, " "))
    elseif data == "publish" then
      conn:send("reached " .. ws.publish("room", "news from v2"))
    end
  end,
}
'''


def test_globals_ws_readonly_conn_data_subscriptions_queued_output(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    write(app, STATE_V1)
    server = wsserver_factory(app=app)

    async def scenario():
        async with connect(server.url) as a, connect(server.url, max_queue=1) as slow, \
                connect(server.url) as b:
            assert await ask(a, "sub") == "subscribed"
            assert await ask(a, "globals") == "from v1|set by a v1 handler"
            # ~8 MB queued for a client that stops reading (max_queue=1): most of it is still
            # in the server's send queue when the reload happens
            assert http_get(server.port, "/ver").endswith(b"route v1")
            await slow.send("burst")
            await asyncio.sleep(0.3)

            write(app, STATE_V2)
            rc, out, _ = cli_reload(server.pid)
            assert rc == 0, out

            assert await ask(b, "globals") == "nil|nil|nil|nil", "old globals survived the reload"
            assert await ask(b, "readonly") == "refused,refused,refused,refused,refused"
            who = await ask(a, "who")
            assert who.startswith("v2 alice-") and who.endswith(" room"), who
            assert await ask(b, "publish") == "reached 1"
            assert await asyncio.wait_for(a.recv(), STEP) == "news from v2"

            for i in range(1, 4001):
                m = await asyncio.wait_for(slow.recv(), STEP)
                assert m.startswith("b%05d" % i), f"queued output: message {i} is {m[:8]!r}"
            assert await asyncio.wait_for(slow.recv(), STEP) == "burst-end"

            assert http_get(server.port, "/ver").endswith(b"route v2"), "http routes not swapped"
            assert await ask(b, "file") == str(app)
            infos = (await ask(b, "infos")).split()
            assert infos[-1].endswith("/SIGHUP")
            return infos

    infos = run(scenario(), timeout=40)
    start, after = infos
    gen_start = int(loaded(server, "start")[0]["generation"])
    gen_after = int(loaded(server, "SIGHUP")[0]["generation"])
    assert gen_after == gen_start + 1
    assert after == f"{gen_after}/{gen_start}/SIGHUP", (
        f"load() on reload saw info {after!r}, the server logged generation {gen_after}")
    assert start == f"{gen_start}/{gen_start - 1}/start", (
        f"load() at start saw info {start!r}, but the server logged generation {gen_start}; "
        f"the first reload then sees the same info.generation again ({after!r})")


def test_ws_table_rawset_does_not_leak_into_next_version(wsserver_factory, tmp_path):
    """The ws table stays read-only across reloads (SPEC §7): even rawset by one version must
    not break ws for the next one."""
    app = tmp_path / "app.lua"
    write(app, 'return { message = function(c, d) pcall(rawset, ws, "count", "clobbered"); '
               'c:send(type(ws.count)) end }\n')
    server = wsserver_factory(app=app)

    async def scenario():
        async with connect(server.url) as ws:
            first = await ask(ws, "x")
            write(app, 'return { message = function(c, d) c:send("v2 " .. type(ws.count)) end }\n')
            rc, out, _ = cli_reload(server.pid)
            assert rc == 0, out
            return first, await ask(ws, "y")

    first, second = run(scenario(), timeout=15)
    assert first == "function" or second == "v2 function", (
        f"rawset(ws, ...) replaced ws.count ({first!r}) and it survived the reload ({second!r})")


# ---------------------------------------------------------------------------------------------
# 8. Old versions are collected
# ---------------------------------------------------------------------------------------------

HEAVY_APP = r'''
local V = "@VER@"
local big = {}
for i = 1, 40000 do big[i] = string.rep("x", 100) .. i end
-- closures that keep this version's data: a timer, and one handed to ws.state
ws.every(30, function() return #big end)
return {
  load = function(state) state.last_probe = function() return #big end end,
  message = function(conn, data)
    collectgarbage("collect")
    collectgarbage("collect")
    conn:send(V .. " " .. math.floor(collectgarbage("count")) .. " " .. #big)
  end,
}
'''


def test_old_and_failed_versions_are_garbage_collected(wsserver_factory, tmp_path):
    app = tmp_path / "app.lua"
    write(app, HEAVY_APP.replace("@VER@", "v1"))
    server = wsserver_factory(app=app)

    async def kib(ws, ver):
        tag, used, n = (await ask(ws, "m")).split()
        assert (tag, n) == (ver, "40000")
        return int(used)

    async def scenario():
        async with connect(server.url) as ws:
            first = await kib(ws, "v1")
            for k in range(2, 32):
                if k % 3 == 0:  # a version that builds its data, then fails
                    src = HEAVY_APP.replace("@VER@", "bad")
                    write(app, src.replace("return {", "error('late failure')\nreturn {", 1))
                    rc, out, _ = await cli_reload_async(server.pid)
                    assert rc == 1, out
                else:
                    ver = f"v{k}"
                    write(app, HEAVY_APP.replace("@VER@", ver))
                    rc, out, _ = await cli_reload_async(server.pid)
                    assert rc == 0, out
            last = await kib(ws, "v31")
            return first, last

    first, last = run(scenario(), timeout=40)
    # one version's data is ~5 MiB: 30 leaked versions would be ~150 MiB
    assert last < first * 1.5 + 1024, (
        f"Lua heap grew from {first} KiB to {last} KiB over 30 reloads")
