"""The chat example (examples/chat/chat.lua) at the protocol level, against the real binary.

Python `websockets` peers join rooms, chat, and send everything a hostile client might: bad JSON,
wrong types, huge and malicious fields, binary frames, floods. Every such message must get an
error reply (never a handler error: the connection stays open), HTML must travel verbatim as data,
and the shared state (rooms, members, the last 50 messages) must stay right, also across a reload.
The browser side of the same app is tests/browser/chat.test.js.
"""
import asyncio
import http.client
import json
import re
import signal
import socket
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatusCode

from conftest import ROOT
from wsclient import run

APP = ROOT / "examples" / "chat" / "chat.lua"
PUBLIC = ROOT / "examples" / "chat" / "public"
STEP = 5.0  # seconds any single network step may take
BURST = 10  # the app's rate limit: 10 messages per 5 s, a token bucket refilling 2 per second


@pytest.fixture
def chat(wsserver_factory):
    """The chat server; after the test its log must hold no handler error."""
    server = wsserver_factory(app=APP, args=["--static", str(PUBLIC)])
    yield server
    assert server.alive()
    assert "handler_error" not in server.log(), server.log()


class Client:
    """One chat peer. expect() reads the next message, skipping room-list broadcasts (sent to
    everyone on every join and leave) unless they are what it waits for."""

    def __init__(self, ws):
        self.ws = ws
        self.welcome = None

    async def send(self, msg):
        await self.ws.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))

    async def recv(self, timeout=STEP):
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def expect(self, kind, timeout=STEP):
        while True:
            msg = await self.recv(timeout)
            if msg["type"] == kind:
                return msg
            assert msg["type"] == "rooms", f"expected {kind}, got {msg}"

    async def error(self, code):
        msg = await self.expect("error")
        assert msg["code"] == code, msg
        assert isinstance(msg["message"], str) and msg["message"]
        return msg

    async def quiet(self, seconds=0.3):
        """Asserts nothing but room lists arrives for a while."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await self.recv(left)
            except asyncio.TimeoutError:
                return
            assert msg["type"] == "rooms", f"unexpected {msg}"

    async def join(self, room, nick):
        await self.send({"type": "join", "room": room, "nick": nick})
        return await self.expect("joined")

    async def say(self, text):
        await self.send({"type": "say", "text": text})

    async def close(self):
        await self.ws.close()


async def connect(server, path="/"):
    # max_queue=None: a peer that never reads its room-list broadcasts still closes promptly
    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}{path}", compression=None,
                                  ping_interval=None, max_size=None, max_queue=None,
                                  open_timeout=STEP, close_timeout=STEP)
    c = Client(ws)
    c.welcome = await c.expect("welcome")
    return c


async def in_room(server, room, *nicks):
    """Connects one peer per nick and joins them to room, in order; drains the presence notices
    so every peer starts with an empty inbox."""
    peers = []
    for nick in nicks:
        c = await connect(server)
        await c.join(room, nick)
        for p in peers:
            await p.expect("presence")
        peers.append(c)
    return peers


def test_welcome_join_and_normalised_names(chat):
    async def main():
        a = await connect(chat)
        assert a.welcome["id"] > 0 and a.welcome["rooms"] == []
        assert a.welcome["limits"] == {"text": 2000, "nick": 24, "room": 32, "history": 50,
                                       "burst": 10, "per": 5}
        joined = await a.join("  Lobby ", "  alice  ")
        assert joined == {"type": "joined", "room": "lobby", "nick": "alice",
                          "members": ["alice"], "history": []}
        rooms = await a.expect("rooms")
        assert rooms["rooms"] == [{"name": "lobby", "members": 1}]
        b = await connect(chat)
        assert b.welcome["rooms"] == [{"name": "lobby", "members": 1}]
        assert b.welcome["server"] == a.welcome["server"]
        joined = await b.join("lobby", "Bob the 2nd.")
        assert joined["members"] == ["alice", "Bob the 2nd."]
        presence = await a.expect("presence")
        assert presence == {"type": "presence", "room": "lobby", "event": "join",
                            "nick": "Bob the 2nd.", "members": ["alice", "Bob the 2nd."]}
        await a.say("hello\nworld")
        for peer in (a, b):  # the sender gets its own message back, with id and time
            m = await peer.expect("message")
            assert m["text"] == "hello\nworld" and m["nick"] == "alice" and m["room"] == "lobby"
            assert isinstance(m["id"], int) and abs(m["ts"] / 1000 - time.time()) < 60
        await a.close()
        await b.close()

    run(main())


HOSTILE = [
    # (frame, expected error code)
    ("{", "bad_json"),
    ("", "bad_json"),
    ('{"type":"say","text":"x"} trailing', "bad_json"),
    ('"\\ud800"', "bad_json"),  # a lone surrogate cannot become UTF-8
    ("[" * 5000 + "]" * 5000, "bad_json"),  # nesting past the decoder's depth limit
    ("null", "bad_message"),
    ("42", "bad_message"),
    ("false", "bad_message"),
    ('"join"', "bad_message"),
    ('["join"]', "bad_message"),
    ("{}", "bad_message"),
    ('{"type":5}', "bad_message"),
    ('{"type":null}', "bad_message"),
    ('{"type":{"type":"join"}}', "bad_message"),
    ('{"type":"nope"}', "unknown_type"),
    ('{"type":"__index"}', "unknown_type"),
    ('{"type":"' + "x" * 10000 + '"}', "unknown_type"),
    (b'{"type":"rooms"}', "binary"),
    (b"\x00\xff\xfe", "binary"),
    ({"type": "say", "text": "hi"}, "not_in_room"),
    ({"type": "leave"}, "not_in_room"),
    ({"type": "join", "nick": "alice"}, "bad_room"),
    ({"type": "join", "room": 7, "nick": "alice"}, "bad_room"),
    ({"type": "join", "room": ["lobby"], "nick": "alice"}, "bad_room"),
    ({"type": "join", "room": "", "nick": "alice"}, "bad_room"),
    ({"type": "join", "room": "a b", "nick": "alice"}, "bad_room"),
    ({"type": "join", "room": "../etc", "nick": "alice"}, "bad_room"),
    ({"type": "join", "room": "r" * 33, "nick": "alice"}, "bad_room"),
    ({"type": "join", "room": "r" * 14000, "nick": "alice"}, "bad_room"),
    ({"type": "join", "room": "lobby"}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": None}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": {"$gt": ""}}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": 12}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": "   "}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": "n" * 25}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": "n" * 14000}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": " " * 14000 + "x"}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": "<b>bob</b>"}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": "bob\u0000"}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": "tab\there"}, "bad_nick"),
    ({"type": "join", "room": "lobby", "nick": "ann\u202e"}, "bad_nick"),  # right-to-left override
    ({"type": "join", "room": "lobby", "nick": "a\u200bb"}, "bad_nick"),  # zero-width space
    ({"type": "join", "room": "lobby", "nick": "\u674e" * 25}, "bad_nick"),  # 25 characters
]


def test_every_malformed_message_gets_an_error_reply(chat):
    async def main():
        # each peer sends fewer messages than the rate limit allows, so every reply is the
        # error for that message, never rate_limited
        c = None
        for i, (frame, code) in enumerate(HOSTILE):
            if i % (BURST - 1) == 0:
                if c:
                    await c.close()
                c = await connect(chat)
            await c.send(frame)
            msg = await c.expect("error")
            assert msg["code"] == code, (frame if len(str(frame)) < 80 else str(frame)[:80], msg)
        # still open and serving after all that
        joined = await c.join("lobby", "survivor")
        assert joined["members"] == ["survivor"]
        await c.close()

    run(main())


def test_bad_say_in_a_room(chat):
    async def main():
        a, b = await in_room(chat, "lobby", "alice", "bob")
        for frame, code in [
            ({"type": "say"}, "bad_text"),
            ({"type": "say", "text": 5}, "bad_text"),
            ({"type": "say", "text": ["hi"]}, "bad_text"),
            ({"type": "say", "text": ""}, "bad_text"),
            ({"type": "say", "text": " \n\t "}, "bad_text"),
            ({"type": "say", "text": "x" * 2001}, "too_long"),
            ({"type": "say", "text": "x" * 15000}, "too_long"),
        ]:
            await a.send(frame)
            await a.error(code)
        # the limit counts characters, not bytes: 2000 two-byte characters are fine
        await a.say("\u00e9" * 2000)
        assert (await b.expect("message"))["text"] == "\u00e9" * 2000
        await b.quiet()  # none of the refused messages reached the room
        await a.close()
        await b.close()

    run(main())


def test_frames_over_the_size_limit_are_closed_by_the_server(chat):
    async def main():
        a = await connect(chat)
        await a.send(json.dumps({"type": "say", "text": "x" * 20000}))  # > 16 KiB
        with pytest.raises(ConnectionClosed) as info:
            await a.recv()
        assert info.value.rcvd.code == 1009
        b = await connect(chat)  # the server is fine
        assert (await b.join("lobby", "bob"))["members"] == ["bob"]
        await b.close()

    run(main())


def test_html_is_stored_and_relayed_verbatim(chat):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)> &amp; </b> \\u003c'

    async def main():
        a, b = await in_room(chat, "lobby", "alice", "bob")
        await a.say(evil)
        assert (await a.expect("message"))["text"] == evil
        assert (await b.expect("message"))["text"] == evil
        c = await connect(chat)
        history = (await c.join("lobby", "carol"))["history"]
        assert [m["text"] for m in history] == [evil]
        for peer in (a, b, c):
            await peer.close()

    run(main())


def test_flood_hits_the_rate_limit_politely(chat):
    async def main():
        a, b = await in_room(chat, "lobby", "alice", "bob")  # the join used one token
        for i in range(30):
            await a.say(f"flood {i}")
        got, errors = [], []
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await a.recv(left)
            except asyncio.TimeoutError:
                break
            if msg["type"] == "message":
                got.append(msg["text"])
            elif msg["type"] == "error":
                errors.append(msg)
        # 9 tokens left after the join, plus whatever refilled (2/s) while the flood arrived
        assert BURST - 1 <= len(got) <= BURST, got
        assert got == [f"flood {i}" for i in range(len(got))]
        assert len(errors) == 1, errors  # one polite error per burst, not one per message
        assert errors[0]["code"] == "rate_limited"
        assert "Try again" in errors[0]["message"]
        assert 0 < errors[0]["retry_after"] <= 5
        # bob saw exactly the accepted messages
        seen = [(await b.expect("message"))["text"] for _ in got]
        assert seen == got
        await b.quiet()
        # the connection stayed open: after waiting, alice may talk again
        await asyncio.sleep(errors[0]["retry_after"] + 0.1)
        await a.say("sorry about that")
        assert (await b.expect("message"))["text"] == "sorry about that"
        for peer in (a, b):
            await peer.close()

    run(main())


def test_invalid_messages_count_against_the_rate_limit(chat):
    async def main():
        a = await connect(chat)
        for _ in range(20):
            await a.send("not json")
        codes = [(await a.expect("error"))["code"] for _ in range(BURST + 1)]
        assert codes[:BURST] == ["bad_json"] * BURST and codes[BURST] == "rate_limited"
        await a.quiet()
        assert a.ws.open
        await a.close()

    run(main())


def test_typing_goes_to_the_others_throttled(chat):
    async def main():
        a, b, c = await in_room(chat, "lobby", "alice", "bob", "carol")
        for _ in range(30):  # typing notices do not use up the rate limit
            await a.send({"type": "typing"})
        for peer in (b, c):
            assert await peer.expect("typing") == {"type": "typing", "room": "lobby",
                                                   "nick": "alice"}
        await a.quiet(0.3)  # neither an echo nor a rate_limited error
        await b.quiet(0.3)  # throttled: one notice per second
        await asyncio.sleep(0.8)
        await a.send({"type": "typing"})
        assert (await b.expect("typing"))["nick"] == "alice"
        await a.say("done typing")  # and the bucket is still full
        assert (await a.expect("message"))["text"] == "done typing"
        for peer in (a, b, c):
            await peer.close()

    run(main())


def test_nicknames_are_unique_per_room(chat):
    async def main():
        (a,) = await in_room(chat, "lobby", "alice")
        b = await connect(chat)
        for nick in ("alice", "ALICE", "  Alice "):
            await b.send({"type": "join", "room": "lobby", "nick": nick})
            err = await b.error("nick_taken")
            assert "alice" in err["message"]
        # not in the room after a refused join
        await b.send({"type": "say", "text": "hi"})
        await b.error("not_in_room")
        # the same nickname is fine in another room
        assert (await b.join("games", "alice"))["members"] == ["alice"]
        # joining again under one's own name is not a clash
        assert (await a.join("lobby", "Alice"))["members"] == ["Alice"]
        # a nickname is free again once its owner leaves
        await a.send({"type": "leave"})
        assert await a.expect("left") == {"type": "left", "room": "lobby"}
        assert (await b.join("lobby", "alice"))["members"] == ["alice"]
        for peer in (a, b):
            await peer.close()

    run(main())


def test_history_keeps_the_last_50_messages(chat):
    async def main():
        # 63 messages from 7 peers in turn, each within its own rate limit (join + 9); the room
        # is empty between two of them, and keeps its history all the same
        for p in range(7):
            c = await connect(chat)
            await c.join("lobby", f"user{p}")
            for i in range(9):
                await c.say(f"{p}.{i}")
            for _ in range(9):
                await c.expect("message")
            await c.close()
        sent = [f"{p}.{i}" for p in range(7) for i in range(9)]
        late = await connect(chat)
        history = (await late.join("lobby", "late"))["history"]
        assert len(history) == 50
        assert [m["text"] for m in history] == sent[-50:]
        ids = [m["id"] for m in history]
        assert ids == list(range(ids[0], ids[0] + 50))
        assert all(m["type"] == "message" and m["room"] == "lobby" for m in history)
        other = await connect(chat)
        assert (await other.join("games", "gamer"))["history"] == []
        for peer in (late, other):
            await peer.close()

    run(main())


def test_rooms_list_counts_members(chat):
    async def main():
        a, b = await in_room(chat, "lobby", "alice", "bob")
        (c,) = await in_room(chat, "games", "carol")

        async def rooms(peer):
            await peer.quiet(0.2)  # past the broadcasts still on their way
            await peer.send({"type": "rooms"})
            return (await peer.expect("rooms"))["rooms"]

        assert await rooms(a) == [{"name": "games", "members": 1}, {"name": "lobby", "members": 2}]
        await b.send({"type": "leave"})
        await b.expect("left")
        await a.expect("presence")  # bob left
        assert await rooms(b) == [{"name": "games", "members": 1}, {"name": "lobby", "members": 1}]
        # switching rooms moves the count
        await a.join("games", "alice")
        await c.expect("presence")  # alice joined games
        assert await rooms(c) == [{"name": "games", "members": 2}]
        # every change is broadcast to everyone, in a room or not
        await c.close()
        while (msg := await b.expect("rooms"))["rooms"] != [{"name": "games", "members": 1}]:
            pass
        await a.close()
        while (msg := await b.expect("rooms"))["rooms"] != []:
            pass
        assert msg == {"type": "rooms", "rooms": []}  # an empty list, not {}
        await b.close()

    run(main())


def test_the_number_of_rooms_is_capped(chat):
    async def main():
        peers = [await connect(chat) for _ in range(100)]
        for i, c in enumerate(peers):
            await c.join(f"room{i}", "solo")
        await peers[3].say("soon forgotten")
        await peers[3].expect("message")
        late = await connect(chat)
        await late.send({"type": "join", "room": "one-too-many", "nick": "late"})
        await late.error("too_many_rooms")
        assert (await late.join("room7", "late"))["members"] == ["late", "solo"]
        # an empty room is forgotten (its history too) to make room for a new one
        await peers[3].send({"type": "leave"})
        await peers[3].expect("left")
        assert (await late.join("one-too-many", "late"))["history"] == []
        await peers[3].send({"type": "join", "room": "room3", "nick": "solo"})
        await peers[3].error("too_many_rooms")  # 100 rooms with people in them again
        fresh = await connect(chat)
        assert len(fresh.welcome["rooms"]) == 100
        await asyncio.gather(*(c.close() for c in peers + [late, fresh]))

    run(main())


def test_presence_on_disconnect(chat):
    async def main():
        a, b, c = await in_room(chat, "lobby", "alice", "bob", "carol")
        await b.close()  # a clean close
        for peer in (a, c):
            assert await peer.expect("presence") == {"type": "presence", "room": "lobby",
                                                     "event": "leave", "nick": "bob",
                                                     "members": ["alice", "carol"]}
        # a peer that vanishes without a close frame
        sock = c.ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.ws.transport.abort()
        leave = await a.expect("presence")
        assert (leave["event"], leave["nick"], leave["members"]) == ("leave", "carol", ["alice"])
        # the nickname is free again
        d = await connect(chat)
        assert (await d.join("lobby", "bob"))["members"] == ["alice", "bob"]
        await a.close()
        await d.close()

    run(main())


def test_switching_rooms_leaves_the_old_one(chat):
    async def main():
        a, b = await in_room(chat, "lobby", "alice", "bob")
        joined = await a.join("games", "alice")
        assert joined["room"] == "games" and joined["members"] == ["alice"]
        leave = await b.expect("presence")
        assert (leave["event"], leave["nick"], leave["members"]) == ("leave", "alice", ["bob"])
        await b.say("anyone?")
        await a.quiet()  # alice no longer hears the lobby
        assert (await b.expect("message"))["text"] == "anyone?"
        await a.say("in games now")
        assert (await a.expect("message"))["room"] == "games"
        await b.quiet()
        for peer in (a, b):
            await peer.close()

    run(main())


def test_reload_keeps_rooms_history_and_connections(chat):
    async def main():
        a, b = await in_room(chat, "lobby", "alice", "bob")
        await a.say("before the reload")
        first = await b.expect("message")
        assert await a.expect("message") == first
        chat.signal(signal.SIGHUP)
        deadline = time.monotonic() + STEP
        while not re.search(r'event=app_loaded .*trigger="SIGHUP"', chat.log()):
            assert time.monotonic() < deadline, chat.log()
            await asyncio.sleep(0.02)
        await b.say("after the reload")
        second = await a.expect("message")
        assert await b.expect("message") == second
        assert second["id"] == first["id"] + 1  # the id counter lives in ws.state
        c = await connect(chat)
        joined = await c.join("lobby", "carol")
        assert [m["text"] for m in joined["history"]] == ["before the reload", "after the reload"]
        assert joined["members"] == ["alice", "bob", "carol"]
        await b.expect("presence")  # carol joined
        await b.send({"type": "join", "room": "lobby", "nick": "carol"})
        await b.error("nick_taken")  # members survived too
        for peer in (a, b, c):
            await peer.close()

    run(main())


def test_websocket_only_at_root_and_page_served(chat):
    async def main():
        with pytest.raises(InvalidStatusCode) as info:
            await connect(chat, "/elsewhere")
        assert info.value.status_code == 404

    run(main())
    for path, kind in [("/", "text/html"), ("/app.js", "text/javascript"),
                       ("/style.css", "text/css")]:
        conn = http.client.HTTPConnection("127.0.0.1", chat.port, timeout=STEP)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith(kind), path
        assert body
