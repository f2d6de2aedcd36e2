"""A Python `websockets` upstream server for the ws.connect tests.

    /usr/bin/python3 upstream_py.py PORT

Prints READY when listening, then one line per event (OPEN path, CLOSE code) to stdout.
Behaviour by path: /echo echoes (the text "__info__" is answered with the subprotocol and the
extensions agreed, as JSON); /refuse answers 403 with a body; /abrupt drops the TCP connection
after the first message; /feed sends "tick N" every 20 ms (N counting from 1 per
process); /big answers a message of N bytes to the text N; /close closes with
4000 "bye" after the first message; /silent never answers; /slowhs delays the handshake 3 s; /flood sends 2000 messages of 1000 bytes, then closes. /getCaseCount, /runCase?case=N and /updateReports stand in
for the Autobahn fuzzingserver's control protocol (3 cases, each a text and a binary message that
must come back unchanged; CASE N OK or CASE N FAIL is printed).
"""
import asyncio
import http
import json
import sys

import websockets


def log(*a):
    print(*a, flush=True)


async def process_request(path, headers):
    if path == "/refuse":
        return http.HTTPStatus.FORBIDDEN, [("Content-Type", "text/plain")], b"go away\n"
    if path == "/slowhs":
        await asyncio.sleep(3)
    return None


TICKS = [0]


async def handler(ws, path):
    log("OPEN", path, ws.request_headers.get("X-Test", ""))
    try:
        if path.startswith("/getCaseCount"):
            await ws.send("3")
            await ws.wait_closed()
            return
        if path.startswith("/runCase"):
            n = path.split("case=")[1].split("&")[0]
            sent = [f"case {n} é", bytes([0, 1, 2, int(n)])]
            for m in sent:
                await ws.send(m)
            got = [await asyncio.wait_for(ws.recv(), 5) for _ in sent]
            log("CASE", n, "OK" if got == sent else "FAIL")
            await ws.close(1000)
            return
        if path.startswith("/updateReports"):
            log("REPORTS", path.split("agent=")[1])
            await ws.close(1000)
            return
        if path == "/flood":
            for i in range(2000):
                await ws.send(f"{i:04d}" + "." * 996)
            await ws.close(1000, "flooded")
            return
        if path == "/feed":
            while True:
                TICKS[0] += 1
                await ws.send(f"tick {TICKS[0]}")
                await asyncio.sleep(0.02)
        async for msg in ws:
            if path == "/abrupt":
                ws.transport.abort()
                return
            if path == "/big":
                await ws.send("x" * int(msg))
                continue
            if path == "/close":
                await ws.close(4000, "bye")
                continue
            if path == "/silent":
                continue
            if msg == "__info__":
                await ws.send(json.dumps({
                    "subprotocol": ws.subprotocol,
                    "extensions": [e.name for e in ws.extensions],
                }))
                continue
            await ws.send(msg)
    except websockets.ConnectionClosed:
        pass
    finally:
        log("CLOSE", ws.close_code)


async def main(port):
    async with websockets.serve(handler, "127.0.0.1", port, process_request=process_request,
                                subprotocols=["chat.v2", "chat.v1"], max_size=None):
        log("READY")
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
