"""Interop with the Python `websockets` client (10.x, asyncio API) against the real binary.

Covers echo of every length-encoding boundary in text and binary, fragmented sends (with a ping
between fragments), ping/pong payloads, the close handshake in both directions, 1000 concurrent
connections and ws.broadcast. Compression is off everywhere: these are plain RFC 6455 checks.
"""
import asyncio
import random
import resource
import time

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from wsclient import run, connect

MiB = 1024 * 1024
SIZES = [0, 1, 125, 126, 65535, 65536, 4 * MiB]
# A 4 MiB echo is queued whole before the kernel takes it, so the send-queue cap (default 1 MiB,
# beyond it 1008) is raised along with the message size.
BIG_MESSAGES = ["--max-message-size", str(8 * MiB), "--max-buffered", str(16 * MiB)]
STEP = 10.0  # seconds any single network step may take
CONCURRENT = 1000
BROADCAST_CLIENTS = 300


def _raise_nofile(needed):
    # Raised at import time so the server started by the fixture inherits the higher limit too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


_raise_nofile(4 * CONCURRENT + 256)


def text_of(size):
    """A str whose UTF-8 encoding is exactly `size` bytes, mixing 1- to 4-byte sequences so a
    server that splits outgoing frames or validates UTF-8 has to get the boundaries right."""
    unit = "a\u00e9\u20ac\U0001d11e"  # 1 + 2 + 3 + 4 bytes
    s = unit * (size // 10)
    s += "x" * (size - len(s.encode("utf-8")))
    assert len(s.encode("utf-8")) == size
    return s


def bytes_of(size):
    return random.Random(size).randbytes(size)


async def recv(ws, timeout=STEP):
    return await asyncio.wait_for(ws.recv(), timeout)


def describe(value):
    return f"{type(value).__name__} of {len(value)}"


# An app with a control channel: "close:<code>:<reason>" makes the server close the connection,
# "last?" answers the code and reason the previous connection closed with; the rest is echoed.
CONTROL_APP = r"""
local last = "none"
return {
  message = function(conn, data, kind)
    if kind == "text" then
      local code, reason = data:match("^close:(%d+):(.*)$")
      if code then
        conn:close(tonumber(code), reason)
        return
      end
      if data == "last?" then
        conn:send(last)
        return
      end
    end
    conn:send(data, kind)
  end,
  close = function(conn, code, reason)
    last = tostring(code) .. ":" .. tostring(reason)
  end,
}
"""

BROADCAST_APP = r"""
return {
  message = function(conn, data, kind)
    if data == "go" then
      local n = ws.broadcast("hi")
      conn:send(tostring(n))
    elseif data == "go-except" then
      local n = ws.broadcast("\0\1\2", { except = conn, binary = true })
      conn:send(tostring(n))
    else
      conn:send(data, kind)
    end
  end,
}
"""


# --- echo --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}B")
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_echo_sizes(wsserver_factory, kind, size):
    server = wsserver_factory(args=BIG_MESSAGES)
    payload = text_of(size) if kind == "text" else bytes_of(size)

    async def scenario():
        async with connect(server.url) as ws:
            # Two messages back to back: the boundary between them must survive too.
            await ws.send(payload)
            await ws.send(payload[:7])
            first = await recv(ws)
            second = await recv(ws)
            assert type(first) is type(payload), f"echo came back as {describe(first)}"
            assert len(first) == len(payload), f"sent {describe(payload)}, got {describe(first)}"
            assert first == payload, "echo differs from what was sent"
            assert second == payload[:7]

    run(scenario())
    assert server.alive()


def test_message_over_limit_closes_1009(wsserver_factory):
    server = wsserver_factory(args=["--max-message-size", "65536"])

    async def scenario():
        async with connect(server.url) as ws:
            await ws.send(b"\x00" * 65536)  # exactly at the limit: fine
            assert len(await recv(ws)) == 65536
            await ws.send(b"\x00" * 65537)
            with pytest.raises(ConnectionClosed) as info:
                await recv(ws)
            assert info.value.rcvd is not None, "server dropped TCP without a close frame"
            assert info.value.rcvd.code == 1009

    run(scenario())
    assert server.alive()


# --- fragmentation -----------------------------------------------------------------------------


def test_fragmented_text_list(echo_server):
    fragments = ["Hel", "lo, ", "w\u00f6rld ", "\u20ac\U0001d11e", ""]

    async def scenario():
        async with connect(echo_server.url) as ws:
            await ws.send(fragments)
            assert await recv(ws) == "".join(fragments)

    run(scenario())


def test_fragmented_binary_list(echo_server):
    fragments = [b"", b"\x00\x01", bytes_of(70000), b"\xff", b""]

    async def scenario():
        async with connect(echo_server.url) as ws:
            await ws.send(fragments)
            got = await recv(ws)
            assert isinstance(got, bytes)
            assert got == b"".join(fragments)

    run(scenario())


def test_many_one_byte_fragments(echo_server):
    fragments = [bytes([i % 256]) for i in range(2000)]

    async def scenario():
        async with connect(echo_server.url) as ws:
            await ws.send(fragments)
            assert await recv(ws) == b"".join(fragments)
            await ws.send("after")  # the parser is back in a clean state
            assert await recv(ws) == "after"

    run(scenario())


def test_fragmented_async_iterator_with_ping_between_fragments(echo_server):
    """RFC 6455 §5.4: control frames may be injected in the middle of a fragmented message."""

    async def scenario():
        async with connect(echo_server.url) as ws:
            waiters = []

            async def fragments():
                yield "first-"
                waiters.append(await ws.ping(b"between"))
                yield "second-"
                waiters.append(await ws.ping(b"again"))
                yield "third"

            await ws.send(fragments())
            await asyncio.wait_for(asyncio.gather(*waiters), STEP)
            assert await recv(ws) == "first-second-third"

    run(scenario())


# --- ping / pong ------------------------------------------------------------------------------


def test_ping_payloads_are_ponged(echo_server):
    async def scenario():
        async with connect(echo_server.url) as ws:
            # websockets resolves a waiter only for a pong carrying exactly that ping's payload.
            for payload in [b"", b"x", b"\x00\xff" * 62 + b"!", "text-ping \u00e9".encode()]:
                waiter = await ws.ping(payload)
                started = time.monotonic()
                await asyncio.wait_for(waiter, STEP)
                assert time.monotonic() - started < 2.0
            # An unsolicited pong is legal and ignored; the connection keeps working.
            await ws.pong(b"unsolicited")
            await ws.send("still here")
            assert await recv(ws) == "still here"

    run(scenario())


def test_ping_during_large_transfer(wsserver_factory):
    server = wsserver_factory(args=BIG_MESSAGES)

    async def scenario():
        async with connect(server.url) as ws:
            big = bytes_of(2 * MiB)
            await ws.send(big)
            waiter = await ws.ping(b"mid-transfer")
            await asyncio.wait_for(waiter, STEP)
            assert await recv(ws) == big

    run(scenario())


# --- close handshake --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 4000])
def test_client_close_is_echoed(wsserver_factory, code):
    server = wsserver_factory(app_source=CONTROL_APP)
    reason = "bye \u2713"

    async def scenario():
        async with connect(server.url) as ws:
            await ws.send("warm-up")
            assert await recv(ws) == "warm-up"
            started = time.monotonic()
            await ws.close(code, reason)
            elapsed = time.monotonic() - started
            # The server replies with the same code (RFC 6455 §5.5.1) ...
            assert ws.close_code == code, f"server answered close {ws.close_code}"
            # ... and then closes TCP itself, well before our 5 s close_timeout.
            assert elapsed < 2.5, f"close handshake took {elapsed:.2f} s"
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            expected = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
            assert isinstance(info.value, expected)
            assert info.value.sent.code == code and info.value.sent.reason == reason
            assert info.value.rcvd.code == code

        # The app's close handler saw the client's code and reason.
        async with connect(server.url) as ws:
            await ws.send("last?")
            assert await recv(ws) == f"{code}:{reason}"

    run(scenario())
    assert server.alive()


@pytest.mark.parametrize("code", [1000, 1001, 4000])
def test_server_close_code_and_reason(wsserver_factory, code):
    server = wsserver_factory(app_source=CONTROL_APP)
    reason = "server says \u00e0 bient\u00f4t"

    async def scenario():
        async with connect(server.url) as ws:
            started = time.monotonic()
            await ws.send(f"close:{code}:{reason}")
            with pytest.raises(ConnectionClosed) as info:
                await recv(ws)
            assert info.value.rcvd is not None, "no close frame from the server"
            assert info.value.rcvd.code == code
            assert info.value.rcvd.reason == reason
            # websockets answered the close; the server then closed TCP promptly.
            await asyncio.wait_for(ws.wait_closed(), STEP)
            assert time.monotonic() - started < 2.5
            assert ws.close_code == code
            assert ws.close_reason == reason
            expected = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
            assert isinstance(info.value, expected)

    run(scenario())
    assert server.alive()


# --- scale ------------------------------------------------------------------------------------


def test_1000_concurrent_connections(echo_server):
    async def scenario():
        all_open = asyncio.Event()
        opened = 0
        connect_slots = asyncio.Semaphore(200)  # pace the SYNs; all stay open together

        async def client(i):
            nonlocal opened
            async with connect_slots:
                ws = await connect(echo_server.url)
            try:
                opened += 1
                if opened == CONCURRENT:
                    all_open.set()
                await asyncio.wait_for(all_open.wait(), 25)
                for k in range(3):
                    message = f"{i}:{k}" if k != 1 else f"{i}:{k}".encode()
                    await ws.send(message)
                    got = await recv(ws)
                    assert got == message, f"client {i} sent {message!r}, got {got!r}"
            finally:
                await ws.close()

        results = await asyncio.gather(*(client(i) for i in range(CONCURRENT)),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, f"{len(failures)}/{CONCURRENT} clients failed, first: {failures[0]!r}"

    started = time.monotonic()
    run(scenario(), timeout=45)
    assert time.monotonic() - started < 30
    assert echo_server.alive()


def test_broadcast_reaches_every_client(wsserver_factory):
    server = wsserver_factory(app_source=BROADCAST_APP)

    async def scenario():
        sockets = []
        try:
            for _ in range(BROADCAST_CLIENTS):
                sockets.append(await connect(server.url))
            sender = sockets[0]
            await sender.send("go")
            assert await recv(sender) == "hi"  # the sender is a connection too
            assert await recv(sender) == str(BROADCAST_CLIENTS), "ws.broadcast count"
            for i, ws in enumerate(sockets[1:], 1):
                got = await recv(ws)
                assert got == "hi", f"client {i} got {got!r}"
            # Exactly one copy each: the next thing everybody receives is their own echo.
            await asyncio.gather(*(ws.send(f"after-{i}") for i, ws in enumerate(sockets)))
            for i, ws in enumerate(sockets):
                assert await recv(ws) == f"after-{i}"
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    run(scenario(), timeout=45)
    assert server.alive()


def test_broadcast_except_binary(wsserver_factory):
    server = wsserver_factory(app_source=BROADCAST_APP)
    n = 20

    async def scenario():
        sockets = [await connect(server.url) for _ in range(n)]
        try:
            sender = sockets[0]
            await sender.send("go-except")
            assert await recv(sender) == str(n - 1), "except= must not count the sender"
            for ws in sockets[1:]:
                assert await recv(ws) == b"\x00\x01\x02"
            await sender.send("next")
            assert await recv(sender) == "next", "the excepted sender received the broadcast"
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    run(scenario())
    assert server.alive()
