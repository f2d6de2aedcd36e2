"""The example apps (examples/broadcast.lua, auth.lua, auth-http.lua, rooms.lua) run by the real binary and
driven by real clients (Python websockets, and raw sockets for refused handshakes)."""
import asyncio
import http.server
import json
import os
import signal
import subprocess
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatusCode

import wsraw
from conftest import BINARY, EXAMPLES, asan_preload
from wsclient import run, connect

STEP = 10.0


async def recv_json(ws, timeout=STEP):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def next_of(ws, kind, timeout=STEP):
    """The next JSON message with "type" == kind, skipping others (ticks, presence, ...)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if msg.get("type") == kind:
            return msg


async def silent(ws, seconds):
    try:
        msg = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected message {msg!r}")


# --- broadcast.lua -----------------------------------------------------------------------------


def test_broadcast_ticks_reach_every_client(wsserver_factory):
    server = wsserver_factory(app=EXAMPLES / "broadcast.lua")

    async def go():
        clients = [await connect(server.url) for _ in range(3)]
        hellos = [await recv_json(c) for c in clients]
        ticks = [[await next_of(c, "tick", 3) for _ in range(2)] for c in clients]
        for c in clients:
            await c.close()
        return hellos, ticks

    hellos, ticks = run(go())
    ids = [h["id"] for h in hellos]
    assert len(set(ids)) == 3
    assert all(h["type"] == "hello" and h["interval"] == 1 for h in hellos)
    for per_client in ticks:
        first, second = per_client
        assert second["n"] == first["n"] + 1  # one tick per second, counted in ws.state
        assert isinstance(first["time"], int) and first["iso"].endswith("Z")
    # the same tick (encoded once) reached everyone
    assert len({t[0]["n"] for t in ticks}) == 1
    assert ticks[0][0]["clients"] == 3


def test_broadcast_pause_resume_and_now(wsserver_factory):
    server = wsserver_factory(app=EXAMPLES / "broadcast.lua")

    async def go():
        a = await connect(server.url)
        b = await connect(server.url)
        await recv_json(a), await recv_json(b)
        await a.send("pause")
        assert (await next_of(a, "paused"))["type"] == "paused"
        # b keeps ticking while a hears nothing
        t1 = await next_of(b, "tick", 3)
        t2 = await next_of(b, "tick", 3)
        assert t2["n"] == t1["n"] + 1
        await silent(a, 0.2)
        await a.send("now")
        now = await recv_json(a)
        assert now["type"] == "tick" and now["n"] >= t2["n"]
        await a.send("resume")
        assert (await next_of(a, "resumed"))["type"] == "resumed"
        assert (await next_of(a, "tick", 3))["type"] == "tick"
        await a.send("what")
        assert (await next_of(a, "error"))["error"].startswith("commands")
        await a.send(b"\x01")
        try:
            while True:
                await asyncio.wait_for(a.recv(), STEP)
        except ConnectionClosed:
            pass
        await b.close()
        return a.close_code

    assert run(go()) == 1003


def test_broadcast_counter_survives_reload(wsserver_factory):
    server = wsserver_factory(app=EXAMPLES / "broadcast.lua")

    async def go():
        async with connect(server.url) as c:
            await recv_json(c)
            before = (await next_of(c, "tick", 3))["n"]
            server.signal(signal.SIGHUP)
            ns = [(await next_of(c, "tick", 3))["n"] for _ in range(3)]
            return before, ns

    before, ns = run(go())
    assert ns[0] > before
    # one timer after the reload: consecutive numbers, not two tickers interleaved
    assert ns == list(range(ns[0], ns[0] + 3))


# --- auth.lua ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path,extra,body", [
    ("/", (), b"missing token"),
    ("/?token=", (), b"missing token"),
    ("/?token=wrong", (), b"invalid token"),
    ("/", (("Cookie", "token=wrong"),), b"invalid token"),
    ("/?token=" + "a" * 300, (), b"invalid token"),
])
def test_auth_refuses_without_a_valid_token(wsserver_factory, path, extra, body):
    server = wsserver_factory(app=EXAMPLES / "auth.lua")
    resp = wsraw.http_exchange(server.port, wsraw.build_request(path=path, extra=extra))
    assert resp.status == 401, resp.raw
    assert body in resp.body
    assert resp.closed


def test_auth_refusal_seen_by_a_real_client(wsserver_factory):
    server = wsserver_factory(app=EXAMPLES / "auth.lua")

    async def go():
        with pytest.raises(InvalidStatusCode) as e:
            async with connect(server.url + "?token=nope"):
                pass
        return e.value.status_code

    assert run(go()) == 401
    app_lines = [ln for ln in server.log().splitlines() if "event=app " in ln]
    assert any("auth_refused" in ln for ln in app_lines)
    assert not any("nope" in ln for ln in app_lines)  # the app never logs a token


def test_auth_accepts_query_or_cookie_and_sets_the_user(wsserver_factory):
    server = wsserver_factory(app=EXAMPLES / "auth.lua")

    async def go():
        alice = await connect(server.url + "?token=alice-token")
        w1 = await recv_json(alice)
        bob = await connect(server.url, extra_headers=[("Cookie", "theme=dark; token=bob-token")])
        w2 = await recv_json(bob)
        await alice.send("hi bob")
        m1, m2 = await recv_json(alice), await recv_json(bob)
        await bob.send("hi alice")
        m3, m4 = await recv_json(alice), await recv_json(bob)
        # the query wins over the cookie
        carol = await connect(server.url + "?token=alice-token",
                              extra_headers=[("Cookie", "token=bob-token")])
        w3 = await recv_json(carol)
        for c in (alice, bob, carol):
            await c.close()
        return w1, w2, w3, m1, m2, m3, m4

    w1, w2, w3, m1, m2, m3, m4 = run(go())
    assert w1 == {"type": "welcome", "user": "alice", "online": 1}
    assert w2 == {"type": "welcome", "user": "bob", "online": 2}
    assert w3["user"] == "alice"
    assert m1 == m2 == {"type": "message", "from": "alice", "text": "hi bob"}
    assert m3 == m4 == {"type": "message", "from": "bob", "text": "hi alice"}
    app_lines = [ln for ln in server.log().splitlines() if "event=app " in ln]
    assert any('msg="auth_ok"' in ln and 'user="alice"' in ln for ln in app_lines)
    assert not any("-token" in ln for ln in app_lines)


# --- auth-http.lua: upgrade waits for an HTTP auth service -------------------------------------


class AuthService(http.server.BaseHTTPRequestHandler):
    """GET /session with Authorization: Bearer good-<user> -> 200 {"user": user}; bad-* -> 401;
    slow-* answers after 3 s (past the app's 2 s timeout); anything else -> 500."""
    protocol_version = "HTTP/1.1"
    calls = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        AuthService.calls.append(token)
        if token.startswith("slow-"):
            time.sleep(3)
        if token.startswith("good-"):
            status, body = 200, json.dumps({"user": token[5:]}).encode()
        elif token.startswith("bad-"):
            status, body = 401, b"no"
        else:
            status, body = 500, b"oops"
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass


@pytest.fixture
def auth_service():
    AuthService.calls = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AuthService)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/session"
    srv.shutdown()
    srv.server_close()


def bearer(token):
    return (("Authorization", f"Bearer {token}"),)


def test_auth_http_checks_tokens_with_the_service_and_caches_answers(wsserver_factory,
                                                                       auth_service):
    server = wsserver_factory(app=EXAMPLES / "auth-http.lua", env={"AUTH_URL": auth_service})

    async def go():
        alice = await connect(server.url, extra_headers=bearer("good-alice"))
        assert await recv_json(alice) == {"type": "welcome", "user": "alice"}
        again = await connect(server.url, extra_headers=[("Cookie", "token=good-alice")])
        assert await recv_json(again) == {"type": "welcome", "user": "alice"}
        await again.send("hi")
        assert await recv_json(alice) == {"type": "message", "from": "alice", "text": "hi"}
        await alice.close()
        await again.close()

    run(go())
    assert AuthService.calls == ["good-alice"]  # the second connection used the cache
    for _ in range(2):
        resp = wsraw.http_exchange(server.port, wsraw.build_request(extra=bearer("bad-mallory")))
        assert resp.status == 401 and resp.body == b"invalid token\n"
        assert resp.header("WWW-Authenticate") == 'Bearer error="invalid_token"'
    assert AuthService.calls == ["good-alice", "bad-mallory"]  # refusals are cached too
    resp = wsraw.http_exchange(server.port, wsraw.build_request())
    assert resp.status == 401 and b"missing token" in resp.body
    resp = wsraw.http_exchange(server.port, wsraw.build_request(extra=bearer("broken")))
    assert resp.status == 503 and resp.header("Retry-After") == "5"
    assert "auth service answered 500" in server.log()
    assert not any(t in server.log() for t in ("good-alice", "bad-mallory"))  # never logged


def test_auth_http_a_slow_or_absent_service_refuses_with_503_and_blocks_nobody(wsserver_factory,
                                                                              auth_service):
    server = wsserver_factory(app=EXAMPLES / "auth-http.lua", env={"AUTH_URL": auth_service})

    async def go():
        slow = asyncio.ensure_future(asyncio.to_thread(
            wsraw.http_exchange, server.port, wsraw.build_request(extra=bearer("slow-sam"))))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        bob = await connect(server.url, extra_headers=bearer("good-bob"))
        assert await recv_json(bob) == {"type": "welcome", "user": "bob"}
        assert time.monotonic() - t0 < 1.5  # served while the other upgrade waits
        await bob.close()
        resp = await slow
        assert resp.status == 503  # the app's 2 s timeout
        assert time.monotonic() - t0 < 3

    run(go())
    assert "timeout" in server.log()
    absent = wsserver_factory(app=EXAMPLES / "auth-http.lua",
                              env={"AUTH_URL": f"http://127.0.0.1:{wsraw.free_port()}/session"})
    resp = wsraw.http_exchange(absent.port, wsraw.build_request(extra=bearer("good-alice")))
    assert resp.status == 503 and b"unavailable" in resp.body


# --- rooms.lua ---------------------------------------------------------------------------------


async def send(ws, **msg):
    await ws.send(json.dumps(msg))


def test_rooms_join_say_leave(wsserver_factory):
    server = wsserver_factory(app=EXAMPLES / "rooms.lua")

    async def go():
        a, b, c = [await connect(server.url) for _ in range(3)]
        await send(a, type="join", room="lobby")
        assert await next_of(a, "joined") == {"type": "joined", "room": "lobby", "members": 1}
        await send(b, type="join", room="lobby")
        assert (await next_of(b, "joined"))["members"] == 2
        presence = await next_of(a, "presence")
        assert presence["event"] == "join" and presence["members"] == 2
        bid = presence["id"]
        await send(c, type="join", room="games")
        await next_of(c, "joined")

        await send(a, type="say", room="lobby", text="hello lobby")
        assert await next_of(a, "sent") == {"type": "sent", "room": "lobby", "reached": 1}
        msg = await next_of(b, "message")
        assert msg["text"] == "hello lobby" and msg["room"] == "lobby"
        await silent(c, 0.2)  # another room hears nothing

        await send(a, type="rooms")
        rooms = await next_of(a, "rooms")
        assert rooms["rooms"] == [{"name": "games", "members": 1},
                                  {"name": "lobby", "members": 2}]
        await send(a, type="members", room="lobby")
        members = await next_of(a, "members")
        assert bid in members["ids"] and len(members["ids"]) == 2

        # not a member: refused
        await send(c, type="say", room="lobby", text="intruder")
        assert "not in room" in (await next_of(c, "error"))["error"]

        await send(b, type="leave", room="lobby")
        assert await next_of(b, "left") == {"type": "left", "room": "lobby"}
        left = await next_of(a, "presence")
        assert left["event"] == "leave" and left["id"] == bid and left["members"] == 1
        await send(a, type="say", room="lobby", text="alone")
        assert (await next_of(a, "sent"))["reached"] == 0
        await send(b, type="leave", room="lobby")
        assert (await next_of(b, "error"))["error"] == "not in that room"

        # closing leaves every room and tells the others
        await send(b, type="join", room="games")
        await next_of(b, "joined")
        await next_of(c, "presence")
        await b.close()
        gone = await next_of(c, "presence")
        assert gone["event"] == "leave" and gone["id"] == bid and gone["members"] == 1
        await send(c, type="rooms")
        rooms = await next_of(c, "rooms")
        assert rooms["rooms"] == [{"name": "games", "members": 1},
                                  {"name": "lobby", "members": 1}]
        await a.close()
        await c.close()

    run(go())


def test_rooms_rejects_bad_input(wsserver_factory):
    server = wsserver_factory(app=EXAMPLES / "rooms.lua")

    async def go():
        async with connect(server.url) as a:
            errors = []
            for raw in ["not json", "[1,2]", '{"no":"type"}', '{"type":"dance"}',
                        '{"type":"join"}', '{"type":"join","room":""}',
                        '{"type":"join","room":5}', json.dumps({"type": "join", "room": "x" * 65}),
                        '{"type":"say","room":"lobby","text":5}', '{"type":"members"}']:
                await a.send(raw)
                errors.append((await next_of(a, "error"))["error"])
            await a.send(b"\x00")
            errors.append((await next_of(a, "error"))["error"])
            # too many rooms for one connection
            for i in range(16):
                await send(a, type="join", room=f"r{i}")
                await next_of(a, "joined")
            await send(a, type="join", room="r16")
            errors.append((await next_of(a, "error"))["error"])
            await send(a, type="rooms")
            assert len((await next_of(a, "rooms"))["rooms"]) == 16
            await send(a, type="rooms")  # and still served after all that
            return errors

    errors = run(go())
    assert len(errors) == 12
    assert "JSON object" in errors[0] and "JSON object" in errors[1]
    assert "unknown type: dance" == errors[3]
    assert "must be a string" in errors[4] and "empty" in errors[5]
    assert "longer than 64" in errors[7]
    assert "text must be a string" in errors[8]
    assert errors[10] == "send JSON text"
    assert "too many rooms" in errors[11]


def test_rooms_empty_list_is_an_array(wsserver_factory):
    server = wsserver_factory(app=EXAMPLES / "rooms.lua")

    async def go():
        async with connect(server.url) as a:
            await send(a, type="rooms")
            r = await next_of(a, "rooms")
            await send(a, type="members", room="none")
            m = await next_of(a, "members")
            return r, m

    r, m = run(go())
    assert r["rooms"] == [] and m["ids"] == []


def test_rooms_survive_a_reload(wsserver_factory):
    server = wsserver_factory(app=EXAMPLES / "rooms.lua")

    async def go():
        a = await connect(server.url)
        b = await connect(server.url)
        await send(a, type="join", room="keep")
        await next_of(a, "joined")
        await send(b, type="join", room="keep")
        await next_of(b, "joined")
        server.signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        await send(a, type="say", room="keep", text="after reload")
        sent = await next_of(a, "sent")
        msg = await next_of(b, "message")
        await send(a, type="members", room="keep")
        members = await next_of(a, "members")
        await a.close()
        await b.close()
        return sent, msg, members

    sent, msg, members = run(go())
    assert sent["reached"] == 1 and msg["text"] == "after reload"
    assert len(members["ids"]) == 2
    assert "app_loaded" in server.log() and "generation=2" in server.log()


# --- wsserver --test ---------------------------------------------------------------------------


def run_specs(cwd, *args):
    return subprocess.run([BINARY, "--test", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **asan_preload(BINARY)})


def test_wsserver_test_runs_the_chat_specs():
    """`wsserver --test` finds ws.testing beside the binary and runs the example's busted specs."""
    r = run_specs(EXAMPLES / "chat", "chat_spec.lua")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = r.stdout.strip().splitlines()[-1]
    assert " 0 failures / 0 errors " in summary and int(summary.split()[0]) > 0, summary


def test_wsserver_test_fails_with_a_failing_spec(tmp_path):
    (tmp_path / "app.lua").write_text("return { message = function(conn, data) "
                                      "conn:send(data) end }\n")
    (tmp_path / "app_spec.lua").write_text(
        'local testing = require "ws.testing"\n'
        'describe("app", function()\n'
        '  it("echoes upper case (it does not)", function()\n'
        '    local t = testing.load("app.lua")\n'
        '    local c = t:connect()\n'
        '    c:send("hi")\n'
        '    assert.same({kind = "text", data = "HI"}, c:next())\n'
        '  end)\n'
        'end)\n')
    r = run_specs(tmp_path, "app_spec.lua")
    assert r.returncode != 0, r.stdout + r.stderr
    assert "1 failure" in r.stdout, r.stdout + r.stderr
