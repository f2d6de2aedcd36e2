"""permessage-deflate (RFC 7692) against the real binary.

Interop with the Python `websockets` client (10.x: its default client offers permessage-deflate
with client_max_window_bits and compresses every message with context takeover) and the Node.js
`ws` client (tests/node_modules/ws, several perMessageDeflate variants); the negotiation checked
byte for byte over raw sockets; the compress_min_size boundary seen on the wire (RSV1);
broadcast and publish to a mix of compressed, uncompressed and differently windowed clients;
protocol errors (RSV1 misuse 1002, corrupt data and bad UTF-8 1007, zip bombs 1009 with the
server's memory watched); and the server's own context takeover.

Raw clients compress and inflate with Python's zlib. Server output is inflated "strictly": zlib is
given at most 256 bytes of output room per call, which forces its slow path, where every
back-reference is checked against the bytes the inflater itself holds, so a stream that refers
further back than the negotiated window fails instead of being resolved from our output buffer.

    WSSERVER=build/wsserver /usr/bin/python3 -m pytest -q tests/integration/test_deflate.py
"""
import asyncio
import json
import os
import pathlib
import random
import resource
import shutil
import signal
import struct
import subprocess
import time
import zlib

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

import wsclient
import wsraw
from conftest import skip_rss_under_asan
from wsclient import run
from wsraw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT

HERE = pathlib.Path(__file__).resolve().parent
TESTS = HERE.parent
MiB = 1024 * 1024
TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.1: stripped by senders, appended by receivers
RSV1 = 4  # wsraw's rsv field: RSV1 is the bit of value 4
STEP = wsclient.STEP
ON = ["--compression", "on"]
PD = "permessage-deflate"
SNCT = "permessage-deflate; server_no_context_takeover"

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft != resource.RLIM_INFINITY and _soft < 4096:
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (4096 if _hard == resource.RLIM_INFINITY else min(4096, _hard), _hard))


TEST_BUDGET = 90  # seconds per test (conftest's _deadline)


# --- payloads ----------------------------------------------------------------------------------


def chat_json(i, rng=None):
    """A chat message as a real app would send it: JSON with repeated keys and varied text."""
    rng = rng or random.Random(i)
    words = ["hello", "anyone", "around", "tonight", "deploy", "is", "green", "again", "lunch",
             "meeting", "moved", "to", "3pm", "ok", "thanks", "\u00e7a va", "\u20ac12",
             "\U0001f600"]
    text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 25)))
    return json.dumps({"type": "message", "room": "lobby", "id": 100000 + i,
                       "from": {"id": rng.randint(1, 500), "nick": f"user{rng.randint(1, 500)}"},
                       "text": text, "time": 1700000000 + i * 7}, ensure_ascii=False)


def text_of(size):
    """A str of exactly `size` UTF-8 bytes: chat JSON lines (compressible, multi-byte chars)."""
    parts, used, i = [], 0, 0
    while used < size:
        line = chat_json(i) + "\n"
        parts.append(line)
        used += len(line.encode())
        i += 1
    data = "".join(parts).encode()[:size]
    # cut back to a character boundary, then pad with ASCII to the exact size
    while True:
        try:
            s = data.decode()
            break
        except UnicodeDecodeError:
            data = data[:-1]
    s += "x" * (size - len(s.encode()))
    assert len(s.encode()) == size
    return s


def random_bytes(size, seed=None):
    return random.Random(size if seed is None else seed).randbytes(size)


# --- raw permessage-deflate peer ---------------------------------------------------------------


class Deflater:
    """Client-side compressor: one message in, one payload out (tail stripped)."""

    def __init__(self, wbits=15, takeover=True, level=6, strategy=zlib.Z_DEFAULT_STRATEGY):
        self.args = (level, zlib.DEFLATED, -wbits, 8, strategy)
        self.takeover = takeover
        self.z = zlib.compressobj(*self.args)

    def __call__(self, data):
        if isinstance(data, str):
            data = data.encode()
        out = self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(TAIL)
        if not self.takeover:
            self.z = zlib.compressobj(*self.args)
        return out[:-4]


def compress_once(data, wbits=15, level=6):
    return Deflater(wbits, takeover=False, level=level)(data)


class Inflater:
    """Inflates the server's messages. strict: at most 256 bytes of output per zlib call, so a
    back-reference beyond `wbits` is an error (see the module docstring)."""

    def __init__(self, wbits=15, takeover=False, strict=True):
        self.wbits = wbits
        self.takeover = takeover
        self.strict = strict
        self.z = zlib.decompressobj(-wbits)

    def __call__(self, payload):
        data = payload + TAIL
        if not self.strict:
            out = self.z.decompress(data)
        else:
            parts = []
            while True:
                chunk = self.z.decompress(data, 256)
                parts.append(chunk)
                data = self.z.unconsumed_tail
                if not data and not chunk:
                    break
            out = b"".join(parts)
        assert not self.z.unused_data, "data after the end of a deflate stream"
        if not self.takeover:
            self.z = zlib.decompressobj(-self.wbits)
        return out


def offer_header(offer):
    return [("Sec-WebSocket-Extensions", offer)] if offer is not None else []


def connect(port, offer="permessage-deflate", extra=()):
    """A raw client; offer None sends no Sec-WebSocket-Extensions. Returns (client, answer)."""
    headers = list(extra)
    if isinstance(offer, (list, tuple)):
        for o in offer:
            headers += offer_header(o)
    else:
        headers += offer_header(offer)
    c = wsraw.connect(port, extra=headers)
    assert c.response.header_count("Sec-WebSocket-Extensions") <= 1, c.response.raw
    return c, c.response.header("Sec-WebSocket-Extensions")


def recv_raw_message(c, timeout=STEP):
    """Next data message as (opcode, rsv1, payload as sent, frames). Checks RFC 7692 §6: RSV1
    only on the first frame, never RSV2/RSV3."""
    first = c.recv_frame(timeout)
    assert first.opcode in (OP_TEXT, OP_BINARY), f"expected a data message, got {first}"
    assert first.rsv in (0, RSV1), f"RSV bits {first.rsv} on the first frame"
    parts, frame, frames = [first.payload], first, 1
    while not frame.fin:
        frame = c.recv_frame(timeout)
        assert frame.opcode == OP_CONT, f"expected a continuation, got {frame}"
        assert frame.rsv == 0, f"RSV bits {frame.rsv} on a continuation frame (RFC 7692 §6.1)"
        parts.append(frame.payload)
        frames += 1
    return first.opcode, bool(first.rsv & RSV1), b"".join(parts), frames


def recv_message(c, inflater=None, timeout=STEP):
    """Next data message as (opcode, bytes), inflated when RSV1 says so."""
    op, compressed, payload, _ = recv_raw_message(c, timeout)
    if compressed:
        assert inflater is not None, "RSV1 set on a connection without permessage-deflate"
        payload = inflater(payload)
    return op, payload


def send_compressed(c, opcode, payload, fragments=None, rsv_first=RSV1):
    """Sends a compressed payload as one frame, or split at the given byte sizes."""
    if not fragments:
        c.send_frame(opcode, payload, rsv=rsv_first)
        return
    pieces, off = [], 0
    for n in fragments:
        pieces.append(payload[off:off + n])
        off += n
    pieces.append(payload[off:])
    for i, p in enumerate(pieces):
        c.send_frame(opcode if i == 0 else OP_CONT, p, fin=i == len(pieces) - 1,
                     rsv=rsv_first if i == 0 else 0)


def expect_close(c, code):
    got, reason = c.expect_close(code, timeout=STEP, eof_timeout=3.0)
    return reason


def read_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


# --- apps --------------------------------------------------------------------------------------

# Echo, plus "broadcast:<text>" (ws.broadcast of <text> to everyone, the sender included, then
# "done <n>" to the sender) and "publish:<text>" (to the other subscribers of "room").
BROADCAST_APP = r"""
return {
  open = function(conn) conn:subscribe("room") end,
  message = function(conn, data, kind)
    if data:sub(1, 10) == "broadcast:" then
      local n = ws.broadcast(data:sub(11), { binary = kind == "binary" })
      conn:send("done " .. n)
    elseif data:sub(1, 8) == "publish:" then
      local n = conn:publish("room", data:sub(9), kind)
      conn:send("done " .. n)
    else
      conn:send(data, kind)
    end
  end,
}
"""

# "size:<n>" answers a text message of exactly n bytes (JSON-ish, compressible).
SIZED_APP = r"""
return {
  message = function(conn, data, kind)
    local n = tonumber(data:match("^size:(%d+)$"))
    if n then
      local unit = '{"k":"v","n":12345}'
      local s = string.rep(unit, n // #unit + 1):sub(1, n)
      conn:send(s)
    else
      conn:send(data, kind)
    end
  end,
}
"""


# =============================================================================================
# Python websockets (10.x) interop
# =============================================================================================


def py_connect(url, **kw):
    """wsclient.connect, but with the client's default permessage-deflate offer."""
    kw.setdefault("compression", "deflate")
    return wsclient.connect(url, **kw)


async def recv(ws, timeout=STEP):
    return await asyncio.wait_for(ws.recv(), timeout)


def negotiated(ws):
    names = [e.name for e in ws.extensions]
    assert names == ["permessage-deflate"], \
        f"permessage-deflate not negotiated: {ws.response_headers.get('Sec-WebSocket-Extensions')}"
    return ws.extensions[0]


SIZES = [0, 1, 125, 126, 127, 128, 129, 1000, 65535, 65536, 65537, 300000, MiB - 4096, MiB]


def _size_cases():
    for size in SIZES:
        yield pytest.param("text", size, id=f"text-{size}")
        yield pytest.param("zeros", size, id=f"zeros-{size}")
        # (incompressible data grows a little when deflated: the limit is on the inflated size)
        yield pytest.param("random", size, id=f"random-{size}")


@pytest.mark.parametrize("kind,size", list(_size_cases()))
def test_python_echo_sizes(wsserver_factory, kind, size):
    server = wsserver_factory(args=ON)
    if kind == "text":
        payload = text_of(size)
    elif kind == "zeros":
        payload = bytes(size)
    else:
        payload = random_bytes(size)

    async def scenario():
        async with py_connect(server.url) as ws:
            ext = negotiated(ws)
            assert ws.response_headers["Sec-WebSocket-Extensions"] == \
                "permessage-deflate; server_no_context_takeover"
            assert ext.remote_no_context_takeover
            await ws.send(payload)
            await ws.send(payload[:200])  # the boundary between two messages survives
            first = await recv(ws)
            second = await recv(ws)
            assert type(first) is type(payload)
            assert len(first) == len(payload)
            assert first == payload, "echo differs"
            assert second == payload[:200]

    run(scenario())
    assert server.alive()


def test_python_exact_limit_after_inflation(wsserver_factory):
    """max_message_size counts inflated bytes: exactly the limit passes, one more is 1009."""
    server = wsserver_factory(args=ON + ["--max-message-size", "100000"])

    async def scenario():
        async with py_connect(server.url) as ws:
            negotiated(ws)
            await ws.send(b"a" * 100000)
            assert await recv(ws) == b"a" * 100000
        async with py_connect(server.url) as ws:
            await ws.send(b"a" * 100001)  # ~100 bytes on the wire
            with pytest.raises(ConnectionClosed) as info:
                await recv(ws)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009

    run(scenario())


FRAGMENT_SETS = {
    "text-utf8-split": ["Hel", "lo, ", "w\u00f6rld ", "\u20ac\U0001d11e", "", "end"],
    "text-json": [chat_json(i) for i in range(40)],
    "text-empty-parts": ["", "", "a" * 300, "", ""],
    "binary-mixed": [b"", b"\x00\x01", random_bytes(70000), b"\xff" * 5000, b""],
    "binary-many": [bytes([i]) * 100 for i in range(200)],
    "binary-big": [random_bytes(200000, 1), bytes(300000), random_bytes(100000, 2)],
}


@pytest.mark.parametrize("name", list(FRAGMENT_SETS))
def test_python_fragmented(wsserver_factory, name):
    server = wsserver_factory(args=ON)
    fragments = FRAGMENT_SETS[name]
    whole = fragments[0][:0].join(fragments)

    async def scenario():
        async with py_connect(server.url) as ws:
            negotiated(ws)
            for _ in range(3):  # repeated: the client's window carries over between messages
                await ws.send(fragments)
                assert await recv(ws) == whole
                await ws.send(whole)
                assert await recv(ws) == whole

    run(scenario())


def test_python_many_messages_client_context_takeover(wsserver_factory):
    """websockets compresses with context takeover (it ignores nothing the server said about its
    own side): 1000 chat messages, empty ones (an empty payload with RSV1) and repeats."""
    server = wsserver_factory(args=ON)
    rng = random.Random(7)
    msgs = []
    for i in range(1000):
        r = rng.random()
        if r < 0.05:
            msgs.append("")
        elif r < 0.10:
            msgs.append(msgs[-1] if msgs else "x")
        elif r < 0.15:
            msgs.append(random_bytes(rng.randint(1, 3000), i))
        else:
            msgs.append(chat_json(i, rng))

    async def scenario():
        async with py_connect(server.url) as ws:
            ext = negotiated(ws)
            assert not ext.local_no_context_takeover  # the client keeps its window
            for start in range(0, len(msgs), 50):  # pipelined in batches
                batch = msgs[start:start + 50]
                for m in batch:
                    await ws.send(m)
                for m in batch:
                    assert await recv(ws) == m

    run(scenario())


PY_VARIANTS = {
    "server-bits-9": dict(server_max_window_bits=9),
    "server-bits-10": dict(server_max_window_bits=10),
    "server-bits-12-client-bits-9": dict(server_max_window_bits=12, client_max_window_bits=9),
    "client-bits-10": dict(client_max_window_bits=10),
    "client-bits-none": dict(client_max_window_bits=None),
    "server-nct": dict(server_no_context_takeover=True),
    "client-nct": dict(client_no_context_takeover=True),
    "all": dict(server_no_context_takeover=True, client_no_context_takeover=True,
                server_max_window_bits=11, client_max_window_bits=12),
}


@pytest.mark.parametrize("name", list(PY_VARIANTS))
def test_python_variants(wsserver_factory, name):
    server = wsserver_factory(args=ON)
    params = PY_VARIANTS[name]
    msgs = [text_of(5000), random_bytes(20000), "", text_of(200000), bytes(100000)] + \
        [chat_json(i) for i in range(100)]

    async def scenario():
        factory = ClientPerMessageDeflateFactory(**params)
        async with py_connect(server.url, extensions=[factory], compression=None) as ws:
            ext = negotiated(ws)
            if "server_max_window_bits" in params:
                assert ext.remote_max_window_bits == params["server_max_window_bits"]
            if params.get("client_max_window_bits") not in (None, True):
                assert ext.local_max_window_bits == params["client_max_window_bits"]
            for m in msgs:
                await ws.send(m)
                assert await recv(ws) == m

    run(scenario())


def test_python_config_table_enables_compression(wsserver_factory):
    """compression = "on" in the app's config works like --compression on."""
    server = wsserver_factory(app_source=r"""
return {
  config = { compression = "on", compress_min_size = 0, compression_window_bits = 11 },
  message = function(conn, data, kind) conn:send(data, kind) end,
}
""")
    c, answer = connect(server.port)
    assert answer == "permessage-deflate; server_no_context_takeover; server_max_window_bits=11"
    c.send_text("hi")
    op, compressed, payload, _ = recv_raw_message(c)
    assert compressed, "compress_min_size = 0: even 2 bytes go compressed"
    assert Inflater(11)(payload) == b"hi"
    c.close()


# =============================================================================================
# compress_min_size on the wire
# =============================================================================================


@pytest.mark.parametrize("min_size,sizes", [
    (None, [0, 1, 126, 127, 128, 129, 4000]),
    ("0", [0, 1, 127, 128]),
    ("1000", [127, 128, 999, 1000, 1001]),
])
def test_compress_min_size_boundary(wsserver_factory, min_size, sizes):
    args = ON + (["--compress-min-size", min_size] if min_size else [])
    server = wsserver_factory(app_source=SIZED_APP, args=args)
    threshold = int(min_size) if min_size else 128
    c, answer = connect(server.port)
    assert answer == "permessage-deflate; server_no_context_takeover"
    for n in sizes:
        c.send_text(f"size:{n}")
        op, compressed, payload, frames = recv_raw_message(c)
        assert op == OP_TEXT and frames == 1
        if n >= threshold:
            assert compressed, f"a {n}-byte reply (min {threshold}) arrived without RSV1"
            if n == 0:
                assert payload == b"\x00"  # RFC 7692 §7.2.3.6: an empty stored block, tail cut
            got = Inflater()(payload)
        else:
            assert not compressed, f"a {n}-byte reply (min {threshold}) arrived with RSV1"
            got = payload
        assert len(got) == n
        assert got == (b'{"k":"v","n":12345}' * (n // 19 + 1))[:n]
    c.close()


def test_uncompressed_client_messages_still_accepted(wsserver_factory):
    """Negotiation does not oblige the client to compress: plain frames keep working."""
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    inf = Inflater()
    for msg in [b"plain", b"p" * 500, b""]:
        c.send_binary(msg)
        assert recv_message(c, inf) == (OP_BINARY, msg)
        send_compressed(c, OP_BINARY, compress_once(msg))
        assert recv_message(c, inf) == (OP_BINARY, msg)
    c.close()


# =============================================================================================
# Node.js ws interop
# =============================================================================================

NODE_CLIENT = r"""
'use strict';
const WebSocket = require('ws');
const crypto = require('crypto');
const [url, optsJson] = process.argv.slice(2);
const opts = JSON.parse(optsJson);

function gen(kind, size, seed) {
  if (kind === 'text') {
    const parts = [];
    let used = 0;
    for (let i = seed; used < size; i++) {
      const line = JSON.stringify({type: 'message', room: 'lobby', id: i,
                                   text: 'h\u00e9llo \u20ac ' + i % 97,
                                   from: {nick: 'user' + (i * 7919) % 500}}) + '\n';
      parts.push(line);
      used += Buffer.byteLength(line);
    }
    const b = Buffer.from(parts.join('')).subarray(0, size);
    return Buffer.from(b.toString('utf8').replace(/\ufffd+$/, '')).toString('utf8');
  }
  const b = Buffer.alloc(size);
  let x = (seed * 2654435761 + size) >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = kind === 'binary' ? x & 0xff : (i % 61);
  }
  return b;
}

const result = {ok: false, failures: [], extensions: null, count: 0};
const ws = new WebSocket(url, {perMessageDeflate: opts.pmd, maxPayload: 64 * 1024 * 1024});
const timer = setTimeout(() => { result.failures.push('timeout'); done(); }, 20000);
function done() {
  clearTimeout(timer);
  result.ok = result.failures.length === 0;
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.ok ? 0 : 1);
}
const plan = [];
for (const size of opts.sizes) {
  for (const kind of ['text', 'binary', 'pattern']) plan.push([kind, size]);
}
let next = 0;
const expected = [];
ws.on('upgrade', (res) => { result.answer = res.headers['sec-websocket-extensions'] || null; });
ws.on('open', () => {
  result.extensions = ws.extensions;
  for (let k = 0; k < opts.rounds; k++) {
    plan.forEach(([kind, size], j) => {
      const m = gen(kind, size, j + k);
      expected.push(m);
      ws.send(m, {binary: kind !== 'text'});
    });
  }
});
ws.on('message', (data, isBinary) => {
  const want = expected[next++];
  const wantBuf = Buffer.isBuffer(want) ? want : Buffer.from(want);
  if (isBinary !== Buffer.isBuffer(want) || !wantBuf.equals(Buffer.from(data)))
    result.failures.push(`message ${next - 1}: got ${data.length} bytes (binary ${isBinary}), ` +
                         `want ${wantBuf.length}`);
  result.count++;
  if (next === expected.length) ws.close(1000);
});
ws.on('close', (code) => {
  if (next !== expected.length) result.failures.push(`closed ${code} after ${next} messages`);
  done();
});
ws.on('error', (e) => { result.failures.push(String(e)); });
"""

# perMessageDeflate option -> the exact answer expected (ws offers client_max_window_bits
# without a value unless told otherwise, so the server must not answer it then)
NODE_VARIANTS = {
    "default": (True, SNCT),
    "threshold-0": ({"threshold": 0}, SNCT),
    "server-nct": ({"serverNoContextTakeover": True, "threshold": 0}, SNCT),
    "client-nct": ({"clientNoContextTakeover": True, "threshold": 0},
                   SNCT + "; client_no_context_takeover"),
    "server-bits-10": ({"serverMaxWindowBits": 10, "threshold": 0},
                       SNCT + "; server_max_window_bits=10"),
    "server-bits-9-level-1": ({"serverMaxWindowBits": 9, "threshold": 0,
                               "zlibDeflateOptions": {"level": 1}},
                              SNCT + "; server_max_window_bits=9"),
    "client-bits-true": ({"clientMaxWindowBits": True, "threshold": 0}, SNCT),
    "client-bits-9": ({"clientMaxWindowBits": 9, "threshold": 0},
                      SNCT + "; client_max_window_bits=9"),
    "client-bits-false": ({"clientMaxWindowBits": False, "threshold": 0}, SNCT),
    "everything": ({"serverNoContextTakeover": True, "clientNoContextTakeover": True,
                    "serverMaxWindowBits": 11, "clientMaxWindowBits": 12, "threshold": 0},
                   SNCT + "; client_no_context_takeover; server_max_window_bits=11; "
                   "client_max_window_bits=12"),
}


@pytest.fixture(scope="module")
def node_client(tmp_path_factory):
    node = shutil.which("node")
    assert node, "node is not on PATH (scripts/install-deps.sh installs nodejs)"
    assert (TESTS / "node_modules" / "ws" / "package.json").is_file(), \
        "tests/node_modules/ws is missing: run `npm install` in tests/"
    script = tmp_path_factory.mktemp("node") / "deflate_client.js"
    script.write_text(NODE_CLIENT)
    return node, script


@pytest.mark.parametrize("name", list(NODE_VARIANTS))
def test_node_ws_variants(wsserver_factory, node_client, name):
    server = wsserver_factory(args=ON)
    node, script = node_client
    pmd, offer_answer = NODE_VARIANTS[name]
    opts = {"pmd": pmd, "sizes": [0, 1, 127, 128, 1023, 1024, 1025, 70000, 500000], "rounds": 3}
    env = dict(os.environ, NODE_PATH=str(TESTS / "node_modules"))
    proc = subprocess.run([node, str(script), server.url, json.dumps(opts)], env=env,
                          capture_output=True, timeout=60)
    out = proc.stdout.decode(errors="replace").strip().splitlines()
    assert out, f"node client printed nothing: {proc.stderr.decode(errors='replace')}"
    result = json.loads(out[-1])
    assert result["ok"], result["failures"][:10]
    assert result["count"] == 3 * 3 * len(opts["sizes"])
    assert result["extensions"] == "permessage-deflate", result
    assert result["answer"] == offer_answer
    assert server.alive()


def test_node_ws_offers_answered_exactly(wsserver_factory):
    """The offers node ws sends (captured from ws 8.x) get the documented answers."""
    server = wsserver_factory(args=ON)
    cases = {
        "permessage-deflate; client_max_window_bits":
            "permessage-deflate; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; client_max_window_bits":
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=10; client_max_window_bits":
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=9":
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=9",
    }
    for offer, answer in cases.items():
        c, got = connect(server.port, offer)
        assert got == answer, f"offer {offer!r}: answered {got!r}, expected {answer!r}"
        c.close()


# =============================================================================================
# Negotiation matrix over the wire
# =============================================================================================

# (server args beyond --compression on, offers (a list: one header each), expected answer)
NEGOTIATION = {
    "no-offer": ([], None, None),
    "empty-header": ([], [""], None),
    "plain": ([], [PD], SNCT),
    "case-insensitive-name": ([], ["PerMessage-Deflate"], SNCT),
    "ows": ([], ["permessage-deflate ;  client_max_window_bits \t; server_max_window_bits=12"],
            SNCT + "; server_max_window_bits=12"),
    "other-extension-first": ([], ["x-webkit-deflate-frame, permessage-deflate"], SNCT),
    "other-extension-only": ([], ["x-webkit-deflate-frame; no_context_takeover"], None),
    # client_max_window_bits
    "cmwb-no-value": ([], [PD + "; client_max_window_bits"], SNCT),
    "cmwb-15": ([], [PD + "; client_max_window_bits=15"], SNCT),
    "cmwb-12": ([], [PD + "; client_max_window_bits=12"], SNCT + "; client_max_window_bits=12"),
    "cmwb-9": ([], [PD + "; client_max_window_bits=9"], SNCT + "; client_max_window_bits=9"),
    "cmwb-8": ([], [PD + "; client_max_window_bits=8"], SNCT + "; client_max_window_bits=8"),
    "cmwb-quoted": ([], [PD + '; client_max_window_bits="10"'],
                    SNCT + "; client_max_window_bits=10"),
    "cmwb-7": ([], [PD + "; client_max_window_bits=7"], None),
    "cmwb-16": ([], [PD + "; client_max_window_bits=16"], None),
    "cmwb-010": ([], [PD + "; client_max_window_bits=010"], None),
    "cmwb-empty": ([], [PD + "; client_max_window_bits="], None),
    "cmwb-alpha": ([], [PD + "; client_max_window_bits=ab"], None),
    # server_max_window_bits
    "smwb-no-value": ([], [PD + "; server_max_window_bits"], None),
    "smwb-15": ([], [PD + "; server_max_window_bits=15"], SNCT + "; server_max_window_bits=15"),
    "smwb-10": ([], [PD + "; server_max_window_bits=10"], SNCT + "; server_max_window_bits=10"),
    "smwb-9": ([], [PD + "; server_max_window_bits=9"], SNCT + "; server_max_window_bits=9"),
    "smwb-8": ([], [PD + "; server_max_window_bits=8"], None),
    "smwb-7": ([], [PD + "; server_max_window_bits=7"], None),
    "smwb-16": ([], [PD + "; server_max_window_bits=16"], None),
    "smwb-quoted": ([], [PD + '; server_max_window_bits="11"'],
                    SNCT + "; server_max_window_bits=11"),
    # no_context_takeover flags
    "snct": ([], [PD + "; server_no_context_takeover"], SNCT),
    "snct-value": ([], [PD + "; server_no_context_takeover=1"], None),
    "cnct": ([], [PD + "; client_no_context_takeover"], SNCT + "; client_no_context_takeover"),
    "cnct-value": ([], [PD + "; client_no_context_takeover=true"], None),
    "all-params": ([], [PD + "; server_no_context_takeover; client_no_context_takeover; "
                         "server_max_window_bits=10; client_max_window_bits=11"],
                   SNCT + "; client_no_context_takeover; server_max_window_bits=10; "
                   "client_max_window_bits=11"),
    # invalid offers are skipped, the next acceptable one wins
    "unknown-param": ([], [PD + "; foo"], None),
    "unknown-param-then-plain": ([], [PD + "; foo=bar, " + PD], SNCT),
    "smwb-8-then-valid": ([], [PD + "; server_max_window_bits=8, " + PD +
                               "; client_max_window_bits=10"],
                          SNCT + "; client_max_window_bits=10"),
    "smwb-8-then-valid-2nd-header": ([], [PD + "; server_max_window_bits=8",
                                          PD + "; server_max_window_bits=12"],
                                     SNCT + "; server_max_window_bits=12"),
    "first-valid-wins": ([], [PD + "; server_max_window_bits=10, " + PD], SNCT +
                         "; server_max_window_bits=10"),
    "dup-cmwb": ([], [PD + "; client_max_window_bits; client_max_window_bits"], None),
    "dup-cmwb-values": ([], [PD + "; client_max_window_bits=10; client_max_window_bits=10"], None),
    "dup-smwb": ([], [PD + "; server_max_window_bits=10; server_max_window_bits=10"], None),
    "dup-snct": ([], [PD + "; server_no_context_takeover; server_no_context_takeover"], None),
    "dup-cnct": ([], [PD + "; client_no_context_takeover; client_no_context_takeover"], None),
    "dup-then-valid": ([], [PD + "; server_no_context_takeover; server_no_context_takeover, "
                            + PD + "; client_no_context_takeover"],
                       SNCT + "; client_no_context_takeover"),
    "syntax-error-then-valid": ([], [PD + "; =5, " + PD], SNCT),
    "eight-declined-then-valid": ([], [", ".join([PD + "; server_max_window_bits=8"] * 7 + [PD])],
                                  SNCT),
    # server options
    "srv-window-10-plain": (["--compression-window-bits", "10"], [PD],
                            SNCT + "; server_max_window_bits=10"),
    "srv-window-10-offer-12": (["--compression-window-bits", "10"],
                               [PD + "; server_max_window_bits=12"],
                               SNCT + "; server_max_window_bits=10"),
    "srv-window-10-offer-9": (["--compression-window-bits", "10"],
                              [PD + "; server_max_window_bits=9"],
                              SNCT + "; server_max_window_bits=9"),
    "srv-window-9-cmwb": (["--compression-window-bits", "9"], [PD + "; client_max_window_bits"],
                          SNCT + "; server_max_window_bits=9"),
    "srv-takeover-plain": (["--compression-context-takeover"], [PD], PD),
    "srv-takeover-snct": (["--compression-context-takeover"], [PD + "; server_no_context_takeover"],
                          SNCT),
    "srv-takeover-cmwb": (["--compression-context-takeover"], [PD + "; client_max_window_bits"],
                          PD),
    # compression off: never an answer
    "off-plain": (["--compression", "off"], [PD], None),
    "off-all": (["--compression", "off"], [PD + "; client_max_window_bits", PD], None),
}


def test_negotiation_matrix(wsserver_factory):
    """One server per distinct option set; every case's exact Sec-WebSocket-Extensions."""
    servers = {}
    failures = []
    for name, (args, offers, expected) in NEGOTIATION.items():
        key = tuple(args)
        if key not in servers:
            servers[key] = wsserver_factory(args=ON + list(args))
        server = servers[key]
        c, answer = connect(server.port, offers)
        try:
            if answer != expected:
                failures.append(f"{name}: offers {offers!r} -> {answer!r}, expected {expected!r}")
                continue
            if answer and "client_max_window_bits" in answer:
                assert any("client_max_window_bits" in o for o in offers)
            # the connection works with what was agreed: a compressed echo (or a plain one)
            bits = 15
            if answer and "server_max_window_bits=" in answer:
                bits = int(answer.split("server_max_window_bits=")[1].split(";")[0])
            msg = text_of(3000).encode()
            if answer:
                send_compressed(c, OP_TEXT, compress_once(msg, wbits=9))
            else:
                c.send_text(msg)
            op, compressed, payload, _ = recv_raw_message(c)
            assert compressed == bool(answer), f"{name}: RSV1 {compressed} with answer {answer!r}"
            assert (Inflater(bits)(payload) if compressed else payload) == msg, name
        finally:
            c.close()
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("offer", [None, PD, PD + "; client_max_window_bits",
                                   PD + "; server_max_window_bits=10", "x-foo"])
def test_answer_never_has_unoffered_client_max_window_bits(wsserver_factory, offer):
    """Whatever the server's own settings, client_max_window_bits is answered only if offered."""
    for args in ([], ["--compression-window-bits", "9"], ["--compression-context-takeover"]):
        server = wsserver_factory(args=ON + args)
        c, answer = connect(server.port, offer)
        if answer and (offer is None or "client_max_window_bits" not in offer):
            assert "client_max_window_bits" not in answer, (args, offer, answer)
        c.close()
        server.stop()


def test_server_window_honoured_on_the_wire(wsserver_factory):
    """Output under server_max_window_bits=9 inflates with a strict 512-byte window; the same
    text sent with a 32 KiB window needs the larger window (the strict check is meaningful)."""
    server = wsserver_factory(app_source=SIZED_APP, args=ON)
    # blocks that repeat 4000 bytes apart: a 15-bit compressor refers back 4000 bytes
    block = random_bytes(4000, 3).hex()[:4000]
    c9, answer = connect(server.port, PD + "; server_max_window_bits=9")
    c15, _ = connect(server.port, PD)
    msg = (block * 4).encode()
    for c in (c9, c15):
        c.send_text(msg)
    _, z9, p9, _ = recv_raw_message(c9)
    _, z15, p15, _ = recv_raw_message(c15)
    assert z9 and z15
    assert Inflater(9)(p9) == msg
    assert len(p15) < len(p9) / 2
    with pytest.raises(zlib.error):
        Inflater(9)(p15)
    assert Inflater(15)(p15) == msg
    c9.close()
    c15.close()


# =============================================================================================
# Broadcast and publish
# =============================================================================================


class Recipient:
    def __init__(self, port, offer, wbits=15, takeover=False):
        self.offer = offer
        self.c, self.answer = connect(port, offer)
        self.inf = Inflater(wbits, takeover=takeover) if self.answer else None

    def recv(self):
        return recv_raw_message(self.c)


BROADCAST_OFFERS = [
    (None, 15),
    (PD, 15),
    (PD + "; client_max_window_bits", 15),
    (PD + "; server_max_window_bits=9", 9),
    (PD + "; server_max_window_bits=10", 10),
    (PD + "; server_max_window_bits=12", 12),
    (PD + "; server_max_window_bits=15", 15),
    (PD + "; client_no_context_takeover", 15),
    ("x-webkit-deflate-frame", 15),
]


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_broadcast_mixed_clients(wsserver_factory, kind):
    server = wsserver_factory(app_source=BROADCAST_APP, args=ON)
    peers = [Recipient(server.port, o, bits) for o, bits in BROADCAST_OFFERS]
    peers += [Recipient(server.port, o, bits) for o, bits in BROADCAST_OFFERS]  # twice each
    sender, _ = connect(server.port, None)
    messages = [text_of(20000), text_of(127), text_of(128), text_of(300000), "",
                "\u20ac" * 1000]
    for m in messages:
        body = m.encode()
        if kind == "text":
            sender.send_text(b"broadcast:" + body)
        else:
            sender.send_binary(b"broadcast:" + body)
        op, compressed, payload, _ = recv_raw_message(sender)  # the sender gets it too
        assert not compressed and payload == body
        assert recv_message(sender) == (OP_TEXT, f"done {len(peers) + 1}".encode())
        by_window = {}
        for p in peers:
            op, compressed, payload, _ = p.recv()
            assert op == (OP_TEXT if kind == "text" else OP_BINARY)
            should = bool(p.answer) and len(body) >= 128
            assert compressed == should, f"{p.offer!r}: RSV1 {compressed} for {len(body)} bytes"
            got = p.inf(payload) if compressed else payload
            assert got == body, f"{p.offer!r} decoded a different message"
            if compressed:
                # compressed once per window size: same window, same bytes
                bits = p.inf.wbits
                assert by_window.setdefault(bits, payload) == payload
        if len(body) > 1000:
            assert len(by_window) == 4  # windows 9, 10, 12, 15
    for p in peers:
        p.c.close()
    sender.close()


def test_publish_mixed_clients_and_python(wsserver_factory):
    """conn:publish to raw clients with different windows and to python websockets clients."""
    server = wsserver_factory(app_source=BROADCAST_APP, args=ON)
    raws = [Recipient(server.port, o, bits) for o, bits in BROADCAST_OFFERS]
    text = text_of(50000)

    async def scenario():
        async with py_connect(server.url) as a, \
                py_connect(server.url, compression=None) as b, \
                py_connect(server.url, extensions=[ClientPerMessageDeflateFactory(
                    server_max_window_bits=10)], compression=None) as d:
            negotiated(a)
            negotiated(d)
            assert not b.extensions
            await asyncio.sleep(0.1)  # every open handler (subscribe) has run
            await a.send("publish:" + text)
            assert await recv(a) == f"done {len(raws) + 2}"
            assert await recv(b) == text
            assert await recv(d) == text
            for p in raws:
                op, compressed, payload, _ = p.recv()
                assert (p.inf(payload) if compressed else payload) == text.encode()
                assert compressed == bool(p.answer)

    run(scenario())
    for p in raws:
        p.c.close()


def test_broadcast_with_server_context_takeover(wsserver_factory):
    """--compression-context-takeover: each connection compresses with its own history, so a
    broadcast is compressed per connection; messages keep decoding with one inflater each,
    also when small (uncompressed) messages come in between."""
    server = wsserver_factory(app_source=BROADCAST_APP,
                              args=ON + ["--compression-context-takeover"])
    offers = [(PD, 15), (PD + "; server_max_window_bits=10", 10), (None, 15),
              (PD + "; server_no_context_takeover", 15)]
    peers = []
    for o, bits in offers:
        r = Recipient(server.port, o, bits, takeover=True)
        if o and "server_no_context_takeover" in o:
            r.inf.takeover = False
        peers.append(r)
    assert peers[0].answer == PD
    assert peers[1].answer == PD + "; server_max_window_bits=10"
    sender, _ = connect(server.port, None)
    sizes = []
    for i in range(60):
        m = chat_json(i) * (3 if i % 3 else 1) if i % 5 else "tiny"
        sender.send_text("broadcast:" + m)
        recv_raw_message(sender)
        recv_message(sender)
        for p in peers:
            op, compressed, payload, _ = p.recv()
            got = p.inf(payload) if compressed else payload
            assert got == m.encode(), f"{p.offer!r} message {i}"
            if p is peers[0] and compressed:
                sizes.append(len(payload))
    # history helps: later messages are far smaller than the first ones
    assert sum(sizes[-10:]) < sum(sizes[:10])
    for p in peers:
        p.c.close()


# =============================================================================================
# Protocol errors
# =============================================================================================


def test_rsv1_on_continuation_is_1002(wsserver_factory):
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    z = compress_once(text_of(2000))
    c.send_frame(OP_TEXT, z[:100], fin=False, rsv=RSV1)
    c.send_frame(OP_CONT, z[100:], fin=True, rsv=RSV1)
    expect_close(c, 1002)


def test_rsv1_on_uncompressed_message_continuation_is_1002(wsserver_factory):
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    c.send_frame(OP_TEXT, b"abc", fin=False)
    c.send_frame(OP_CONT, b"def", fin=True, rsv=RSV1)
    expect_close(c, 1002)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_rsv1_on_control_frame_is_1002(wsserver_factory, opcode):
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    payload = struct.pack("!H", 1000) if opcode == OP_CLOSE else b"x"
    c.send_frame(opcode, payload, rsv=RSV1)
    expect_close(c, 1002)


@pytest.mark.parametrize("rsv", [2, 1, 6])
def test_rsv2_rsv3_is_1002_with_compression(wsserver_factory, rsv):
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    c.send_frame(OP_TEXT, compress_once(b"hello"), rsv=rsv)
    expect_close(c, 1002)


@pytest.mark.parametrize("server_on,offer", [(True, None), (True, "x-other"), (False, PD)])
def test_rsv1_without_negotiation_is_1002(wsserver_factory, server_on, offer):
    server = wsserver_factory(args=ON if server_on else [])
    c, answer = connect(server.port, offer)
    assert answer is None
    c.send_frame(OP_TEXT, compress_once(b"hello hello hello"), rsv=RSV1)
    expect_close(c, 1002)


CORRUPT = {
    "reserved-block-type": b"\x07\x00\x00",          # BFINAL=1, BTYPE=11
    "stored-len-mismatch": b"\x00\x05\x00\x00\x00hello",  # NLEN not ~LEN
    "bad-distance": b"\x02\x02\x00",  # fixed Huffman: length 3, distance 1, before any output
    "garbage": bytes(range(200, 256)) * 4,
    "truncated": compress_once(text_of(5000))[:-7],   # does not end on a block boundary
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_deflate_is_1007(wsserver_factory, name):
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    c.echo_roundtrip()
    c.send_frame(OP_BINARY, CORRUPT[name], rsv=RSV1)
    expect_close(c, 1007)
    assert server.alive()


def test_corrupt_deflate_in_later_fragment_is_1007(wsserver_factory):
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    z = compress_once(text_of(5000))
    c.send_frame(OP_TEXT, z[:50], fin=False, rsv=RSV1)
    c.send_frame(OP_CONT, b"\xff" * 40, fin=False)
    expect_close(c, 1007)


@pytest.mark.parametrize("case", ["whole", "fragment-fail-fast", "truncated-at-end",
                                  "surrogate"])
def test_invalid_utf8_inside_compressed_text_is_1007(wsserver_factory, case):
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    if case == "whole":
        c.send_frame(OP_TEXT, compress_once(b"valid start " * 20 + b"\xff\xfe" + b"more"),
                     rsv=RSV1)
    elif case == "fragment-fail-fast":
        # the first fragment already holds the bad byte; the message never ends
        d = zlib.compressobj(6, zlib.DEFLATED, -15)
        part = d.compress(b"ok " * 50 + b"\xc0\xaf") + d.flush(zlib.Z_SYNC_FLUSH)
        c.send_frame(OP_TEXT, part, fin=False, rsv=RSV1)
    elif case == "truncated-at-end":
        c.send_frame(OP_TEXT, compress_once(b"x" * 300 + "\u20ac".encode()[:2]), rsv=RSV1)
    else:
        c.send_frame(OP_TEXT, compress_once(b"y" * 300 + b"\xed\xa0\x80"), rsv=RSV1)
    expect_close(c, 1007)


def test_valid_utf8_split_across_compressed_fragments(wsserver_factory):
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    text = ("\u20ac\U0001d11e" * 500).encode()
    d = zlib.compressobj(6, zlib.DEFLATED, -15)
    frames = []
    for i in range(0, len(text), 333):  # 333 splits the 3- and 4-byte sequences
        frames.append(d.compress(text[i:i + 333]) + d.flush(zlib.Z_SYNC_FLUSH))
    frames[-1] = frames[-1][:-4]
    for i, f in enumerate(frames):
        c.send_frame(OP_TEXT if i == 0 else OP_CONT, f, fin=i == len(frames) - 1,
                     rsv=RSV1 if i == 0 else 0)
    assert recv_message(c, Inflater()) == (OP_TEXT, text)
    c.close()


def make_bomb(total=256 * MiB):
    d = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(MiB)
    parts = [d.compress(chunk) for _ in range(total // MiB)]
    parts.append(d.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


@pytest.fixture(scope="module")
def bomb():
    z = make_bomb()
    assert 200_000 < len(z) < 300_000, len(z)
    return z


@pytest.mark.parametrize("fragment", [None, 1000, 64], ids=["one-frame", "1000B-fragments",
                                                             "64B-fragments"])
def test_zip_bomb_is_1009_quickly_with_low_memory(wsserver_factory, bomb, fragment):
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    c.echo_roundtrip()
    before = read_status(server.pid)
    t0 = time.monotonic()
    if fragment is None:
        c.send_frame(OP_BINARY, bomb, rsv=RSV1, tolerant=True)
    else:
        data = bytearray()
        for i in range(0, len(bomb), fragment):
            data += wsraw.encode_frame(OP_BINARY if i == 0 else OP_CONT, bomb[i:i + fragment],
                                       fin=i + fragment >= len(bomb), rsv=RSV1 if i == 0 else 0)
        c.send_raw_tolerant(bytes(data))
    expect_close(c, 1009)
    elapsed = time.monotonic() - t0
    after = read_status(server.pid)
    growth = after["VmHWM"] - before["VmRSS"]
    assert elapsed < 2.0, f"the bomb took {elapsed:.2f} s to refuse"
    assert growth < 64 * MiB, f"server peak RSS grew by {growth / MiB:.1f} MiB"
    # the server is fine and serves the next client
    c2, _ = connect(server.port)
    c2.echo_roundtrip()
    c2.close()
    assert server.alive()


def test_zip_bomb_with_many_connections(wsserver_factory, bomb):
    """Twenty bombs at once: each is cut at max_message_size (1 MiB) + a little."""
    server = wsserver_factory(args=ON)
    clients = [connect(server.port)[0] for _ in range(20)]
    before = read_status(server.pid)
    for c in clients:
        c.send_frame(OP_BINARY, bomb[:50000], fin=False, rsv=RSV1, tolerant=True)
    for c in clients:
        expect_close(c, 1009)
    after = read_status(server.pid)
    growth = after["VmHWM"] - before["VmRSS"]
    print(f"20 bombs: peak RSS growth {growth / MiB:.1f} MiB")
    # unbounded, this would be 20 x 256 MiB; bounded, ~20 x 1 MiB (ASan builds, whose quarantine
    # keeps the freed buffers of each doubling, measure ~70 MiB)
    assert growth < 128 * MiB, (before, after)


def test_compressed_input_bounded_too(wsserver_factory):
    """Deflate that inflates to nothing (empty stored blocks) still counts: a stream of them is
    not an endless message."""
    server = wsserver_factory(args=ON + ["--max-message-size", "65536"])
    c, _ = connect(server.port)
    c.send_frame(OP_BINARY, b"\x00\x00\x00\xff\xff" * 1000, fin=False, rsv=RSV1)  # 5000 bytes
    for _ in range(20):
        if not c.send_frame(OP_CONT, b"\x00\x00\x00\xff\xff" * 1000, fin=False, tolerant=True):
            break
    expect_close(c, 1009)


# =============================================================================================
# Edge cases of valid traffic
# =============================================================================================


def test_bfinal_messages_accepted(wsserver_factory):
    """RFC 7692 §7.2.3.4: a message may end with a BFINAL block (Z_FINISH instead of a sync
    flush); with context takeover the next message may still refer to it."""
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    inf = Inflater()
    msgs = [text_of(3000).encode(), text_of(3000).encode(), b"z" * 500]
    for m in msgs:
        d = zlib.compressobj(6, zlib.DEFLATED, -15)
        c.send_frame(OP_TEXT, d.compress(m) + d.flush(zlib.Z_FINISH), rsv=RSV1)
        assert recv_message(c, inf) == (OP_TEXT, m)
    # BFINAL, then the next message's blocks refer back into it (context takeover kept)
    d = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = d.compress(msgs[0]) + d.flush(zlib.Z_FULL_FLUSH)
    # an empty fixed-Huffman block with BFINAL set (0x03 0x00), then a fresh stream that uses
    # the window: RFC 7692 §7.2.3.4 says the window carries over
    d2 = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=msgs[0])
    second = d2.compress(msgs[0]) + d2.flush(zlib.Z_SYNC_FLUSH)
    c.send_frame(OP_TEXT, first + b"\x03\x00", rsv=RSV1)
    assert recv_message(c, inf) == (OP_TEXT, msgs[0])
    c.send_frame(OP_TEXT, second[:-4], rsv=RSV1)
    assert recv_message(c, inf) == (OP_TEXT, msgs[0])
    assert len(second) < 200  # it really referred back
    c.close()


def test_empty_compressed_payloads(wsserver_factory):
    server = wsserver_factory(args=ON + ["--compress-min-size", "0"])
    c, _ = connect(server.port)
    inf = Inflater()
    for payload in [b"", b"\x00", b"\x02\x00", b"\x00\x00\x00\xff\xff\x00"]:
        c.send_frame(OP_TEXT, payload, rsv=RSV1)
        op, compressed, got, _ = recv_raw_message(c)
        assert compressed and got == b"\x00", payload
        assert inf(got) == b""
    # an empty compressed message in fragments: RSV1 on an empty first frame
    c.send_frame(OP_BINARY, b"", fin=False, rsv=RSV1)
    c.send_frame(OP_CONT, b"", fin=False)
    c.send_frame(OP_CONT, b"", fin=True)
    assert recv_message(c, inf) == (OP_BINARY, b"")
    # an empty first frame with RSV1, the data in the continuations
    z = compress_once(b"q" * 1000)
    c.send_frame(OP_BINARY, b"", fin=False, rsv=RSV1)
    c.send_frame(OP_CONT, z[:3], fin=False)
    c.send_frame(OP_CONT, b"", fin=False)
    c.send_frame(OP_CONT, z[3:], fin=True)
    assert recv_message(c, inf) == (OP_BINARY, b"q" * 1000)
    c.close()


def test_control_frames_between_compressed_fragments(wsserver_factory):
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    msg = text_of(10000).encode()
    z = compress_once(msg)
    thirds = [z[:len(z) // 3], z[len(z) // 3:2 * len(z) // 3], z[2 * len(z) // 3:]]
    c.send_frame(OP_TEXT, thirds[0], fin=False, rsv=RSV1)
    c.send_frame(OP_PING, b"p1")
    c.send_frame(OP_CONT, thirds[1], fin=False)
    c.send_frame(OP_PING, b"p2")
    c.send_frame(OP_CONT, thirds[2], fin=True)
    c.expect_pong(b"p1")
    c.expect_pong(b"p2")
    assert recv_message(c, Inflater()) == (OP_TEXT, msg)
    c.close()


def test_byte_by_byte_delivery(wsserver_factory):
    """A compressed message trickling in one byte per TCP segment."""
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port)
    msg = text_of(600).encode()
    c.send_chunked(wsraw.encode_frame(OP_TEXT, compress_once(msg), rsv=RSV1), chunk=1, delay=0)
    assert recv_message(c, Inflater()) == (OP_TEXT, msg)
    c.close()


def test_server_fragment_size_with_compression(wsserver_factory):
    """--fragment-size splits the compressed payload: RSV1 on the first frame only."""
    server = wsserver_factory(args=ON + ["--fragment-size", "1000"])
    c, _ = connect(server.port)
    msg = random_bytes(20000)
    c.send_binary(msg)
    op, compressed, payload, frames = recv_raw_message(c)  # checks RSV on continuations
    assert compressed and frames > 10
    assert Inflater()(payload) == msg
    c.close()


def test_broadcast_honours_fragment_size(wsserver_factory):
    server = wsserver_factory(app_source=BROADCAST_APP, args=ON + ["--fragment-size", "1000"])
    c, _ = connect(server.port)
    blob = random_bytes(3000).hex()
    c.send_text("broadcast:" + blob)
    op, compressed, payload, frames = recv_raw_message(c)
    assert compressed and Inflater()(payload) == blob.encode()
    assert frames > 1, "a ~3.4 KB compressed broadcast went out as one frame"


def test_client_window_8_accepted(wsserver_factory):
    """client_max_window_bits=8 (our inflater's smallest window): data without long references."""
    server = wsserver_factory(args=ON)
    c, answer = connect(server.port, PD + "; client_max_window_bits=8")
    assert answer == SNCT + "; client_max_window_bits=8"
    msg = text_of(5000).encode()
    c.send_frame(OP_TEXT, Deflater(15, strategy=zlib.Z_HUFFMAN_ONLY)(msg), rsv=RSV1)
    assert recv_message(c, Inflater()) == (OP_TEXT, msg)
    c.close()


def test_client_window_enforced_across_messages(wsserver_factory):
    """With client_max_window_bits=9 the client may not refer 4000 bytes back into the previous
    message: the server must not resolve it from a larger window (1007)."""
    server = wsserver_factory(args=ON)
    c, _ = connect(server.port, PD + "; client_max_window_bits=9")
    blob = random_bytes(4000, 5).hex()[:4000].encode()
    d = Deflater(15, takeover=True)  # breaks its promise: a 32 KiB window
    c.send_frame(OP_TEXT, d(blob), rsv=RSV1)
    assert recv_message(c, Inflater()) == (OP_TEXT, blob)
    c.send_frame(OP_TEXT, d(blob), rsv=RSV1)
    expect_close(c, 1007)


# =============================================================================================
# The server's context takeover (--compression-context-takeover)
# =============================================================================================


@pytest.mark.parametrize("offer,bits", [(PD, 15), (PD + "; server_max_window_bits=10", 10),
                                        (PD + "; client_no_context_takeover", 15)])
def test_context_takeover_200_messages(wsserver_factory, offer, bits):
    server = wsserver_factory(args=ON + ["--compression-context-takeover"])
    c, answer = connect(server.port, offer)
    assert "server_no_context_takeover" not in answer
    client_takeover = "client_no_context_takeover" not in offer
    deflate = Deflater(15, takeover=client_takeover)
    inflate = Inflater(bits, takeover=True)
    sizes = []
    rng = random.Random(1)
    for i in range(200):
        m = chat_json(i, rng).encode()
        if i % 17 == 0:
            m = b"short"  # under compress_min_size: sent plain, not seen by the compressor
        c.send_frame(OP_TEXT, deflate(m), rsv=RSV1)
        op, compressed, payload, _ = recv_raw_message(c)
        assert compressed == (len(m) >= 128)
        got = inflate(payload) if compressed else payload
        assert got == m, f"message {i} decoded wrong"
        if compressed:
            sizes.append((len(m), len(payload)))
    ratio_first = sum(z for _, z in sizes[:10]) / sum(n for n, _ in sizes[:10])
    ratio_last = sum(z for _, z in sizes[-50:]) / sum(n for n, _ in sizes[-50:])
    # the history helps (less with a 1 KiB window, which holds only the last message or two)
    assert ratio_last < ratio_first * (0.8 if bits == 15 else 0.9), (ratio_first, ratio_last)
    c.close()


def test_concurrent_python_clients(wsserver_factory):
    """100 websockets clients at once, each with its own inflater (client context takeover),
    interleaved with 100 uncompressed ones."""
    server = wsserver_factory(app_source=BROADCAST_APP, args=ON)

    async def client(i, compressed):
        kw = {} if compressed else {"compression": None}
        async with py_connect(server.url, **kw) as ws:
            assert bool(ws.extensions) == compressed
            rng = random.Random(i)
            for k in range(20):
                m = chat_json(i * 100 + k, rng) * rng.randint(1, 5)
                await ws.send(m)
                assert await recv(ws) == m

    async def scenario():
        await asyncio.gather(*(client(i, i % 2 == 0) for i in range(200)))

    run(scenario())


def test_context_takeover_python_client(wsserver_factory):
    server = wsserver_factory(args=ON + ["--compression-context-takeover"])
    msgs = [chat_json(i) for i in range(300)] + [random_bytes(5000, 9), "", "x" * 200]

    async def scenario():
        async with py_connect(server.url) as ws:
            ext = negotiated(ws)
            assert ws.response_headers["Sec-WebSocket-Extensions"] == "permessage-deflate"
            assert not ext.remote_no_context_takeover
            for m in msgs:
                await ws.send(m)
                assert await recv(ws) == m

    run(scenario())


# =============================================================================================
# A live reload that lowers max_message_size while a compressed message is in progress
# =============================================================================================

RELOAD_APP = """return {{ config = {{ compression = "on", max_message_size = {limit} }},
  message = function(conn, data, kind) conn:send(tostring(#data)) end }}
"""


def test_reload_lowering_limit_during_compressed_message(tmp_path):
    """The message in progress should be refused (1009); the server must survive."""
    app = tmp_path / "app.lua"
    app.write_text(RELOAD_APP.format(limit=4000000))
    port = wsraw.free_port()
    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen([os.environ.get("WSSERVER", str(TESTS.parent / "build" / "wsserver")),
                             "-l", f"127.0.0.1:{port}", str(app)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                c, answer = connect(port)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert answer == SNCT
        d = zlib.compressobj(6, zlib.DEFLATED, -15)
        c.send_frame(OP_BINARY, d.compress(bytes(1500000)) + d.flush(zlib.Z_SYNC_FLUSH),
                     fin=False, rsv=RSV1)
        time.sleep(0.2)
        app.write_text(RELOAD_APP.format(limit=100000))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while b"generation=2" not in (tmp_path / "log").read_bytes():
            assert time.monotonic() < deadline, "no reload"
            time.sleep(0.05)
        c.send_frame(OP_CONT, (d.compress(bytes(10)) + d.flush(zlib.Z_SYNC_FLUSH))[:-4],
                     fin=True, tolerant=True)
        try:
            frame = c.recv_frame(3.0)
        except wsraw.ConnectionClosed:
            frame = None
        time.sleep(0.2)
        assert proc.poll() is None, \
            "server died:\n" + (tmp_path / "log").read_text(errors="replace")[-500:]
        assert frame is not None and frame.opcode == OP_CLOSE
        assert struct.unpack("!H", frame.payload[:2])[0] == 1009
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


# =============================================================================================
# Memory per connection (docs/compression.md has the full table)
# =============================================================================================


def _rss_per_connection(server, offer, n, message):
    warm, _ = connect(server.port, offer)
    # enough messages for the fixed costs to settle first: the Lua heap may hold up to 1 MiB of
    # garbage between collections (README: the collector's pacing), a one-time high-water mark
    inflater = Inflater(takeover=True)  # the server may keep its compression context
    for _ in range(20):
        warm.send_frame(OP_TEXT, compress_once(message), rsv=RSV1)
        recv_message(warm, inflater)
    time.sleep(0.2)
    base = read_status(server.pid)["VmRSS"]
    clients = [connect(server.port, offer)[0] for _ in range(n)]
    payload = compress_once(message)
    for c in clients:
        c.send_frame(OP_TEXT, payload, rsv=RSV1)
    for c in clients:
        assert recv_message(c, Inflater()) == (OP_TEXT, message)
    time.sleep(0.3)
    per = (read_status(server.pid)["VmRSS"] - base) / n
    for c in clients + [warm]:
        c.close()
    return per


@pytest.mark.parametrize("mode,offer,low,high", [
    # the shared compressor and a client without context takeover: nothing stays
    ("shared", PD + "; client_no_context_takeover", 0, 12 * 1024),
    # a browser-like client keeps the server's inflater for its window: ~41 KiB
    ("shared", PD + "; client_max_window_bits", 24 * 1024, 64 * 1024),
    # our own compressor per connection on top: ~285 KiB
    ("takeover", PD + "; client_max_window_bits", 200 * 1024, 360 * 1024),
])
def test_memory_per_connection(wsserver_factory, mode, offer, low, high):
    args = ON + (["--compression-context-takeover"] if mode == "takeover" else [])
    server = wsserver_factory(args=args)
    skip_rss_under_asan(server.pid)
    message = text_of(100000).encode()  # fills every window, frees the message buffer after
    per = _rss_per_connection(server, offer, 300, message)
    print(f"{mode} {offer}: {per / 1024:.1f} KiB per connection")
    assert low <= per <= high, f"{per / 1024:.1f} KiB per connection"
