"""Interop with the Node.js `ws` client (tests/node_modules/ws, installed by `npm install` in tests/).

Each test hands a plan to tests/integration/node/client.js on stdin and checks the JSON result it
prints. Payloads are generated inside node (the same generator for the sent and the expected
bytes), so the plans stay small even for 4 MiB messages.
"""
import json
import pathlib
import resource
import shutil
import subprocess

import pytest

HERE = pathlib.Path(__file__).resolve().parent
TESTS = HERE.parent
CLIENT = HERE / "node" / "client.js"
MiB = 1024 * 1024
SIZES = [0, 1, 125, 126, 65535, 65536, 4 * MiB]
# A 4 MiB echo is queued whole before the kernel takes it, so the send-queue cap (default 1 MiB,
# beyond it 1008) is raised along with the message size.
BIG_MESSAGES = ["--max-message-size", str(8 * MiB), "--max-buffered", str(16 * MiB)]
CONCURRENT = 200

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft != resource.RLIM_INFINITY and _soft < 4096:
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (4096 if _hard == resource.RLIM_INFINITY else min(4096, _hard), _hard))


@pytest.fixture(scope="module")
def node():
    # Not a skip: CI installs node and `ws` (scripts/install-deps.sh), so their absence is a failure.
    path = shutil.which("node")
    assert path, "node is not on PATH (scripts/install-deps.sh installs nodejs)"
    assert (TESTS / "node_modules" / "ws" / "package.json").is_file(), (
        "tests/node_modules/ws is missing: run `npm install` in tests/ (scripts/install-deps.sh)")
    return path


def drive(node, url, plan, timeout=60):
    proc = subprocess.run([node, str(CLIENT), url], input=json.dumps(plan).encode(),
                          capture_output=True, timeout=timeout, cwd=str(HERE / "node"))
    out = proc.stdout.decode(errors="replace").strip()
    try:
        result = json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        pytest.fail(f"node client exited {proc.returncode} without a result:\n{out}\n"
                    f"{proc.stderr.decode(errors='replace')}")
    return result


def check(result):
    assert result["ok"], "node client:\n" + ("\n".join(result.get("failures", [])) or repr(result))
    return result


def gen(kind, size):
    return {"gen": kind, "size": size}


def text(s):
    return {"text": s}


def hexa(b):
    return {"hex": bytes(b).hex()}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}B")
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_echo_sizes(node, wsserver_factory, kind, size):
    server = wsserver_factory(args=BIG_MESSAGES)
    steps = [
        {"op": "send", "kind": kind, "data": gen(kind, size)},
        {"op": "send", "kind": kind, "data": gen(kind, 7)},
        {"op": "expect", "kind": kind, "data": gen(kind, size)},
        {"op": "expect", "kind": kind, "data": gen(kind, 7)},
    ]
    check(drive(node, server.url, {"steps": steps}))
    assert server.alive()


def test_fragmented_text_split_inside_utf8_sequences(node, echo_server):
    """Fragment boundaries fall inside multi-byte characters: UTF-8 is validated per message,
    incrementally, not per frame (RFC 6455 §5.6, §8.1)."""
    whole = "\u20ac\U0001d11e h\u00e9llo \u20ac".encode()
    cuts = [0, 1, 2, 4, 5, 9, 14, len(whole)]  # splits the euro sign and the G clef
    pieces = [whole[a:b] for a, b in zip(cuts, cuts[1:])]
    steps = [{"op": "send", "kind": "text", "data": hexa(p), "fin": i == len(pieces) - 1}
             for i, p in enumerate(pieces)]
    steps.append({"op": "expect", "kind": "text", "data": hexa(whole)})
    check(drive(node, echo_server.url, {"steps": steps}))


def test_fragmented_binary_with_pings_between(node, echo_server):
    parts = [b"", bytes(range(256)) * 300, b"\x00", b"tail"]
    steps = []
    for i, p in enumerate(parts):
        steps.append({"op": "send", "kind": "binary", "data": hexa(p), "fin": i == len(parts) - 1})
        if i < len(parts) - 1:
            steps.append({"op": "ping", "data": hexa(b"between-%d" % i)})
    # Pongs are sent at once, before the reassembled message is complete and echoed.
    for i in range(len(parts) - 1):
        steps.append({"op": "expect_pong", "data": hexa(b"between-%d" % i)})
    steps.append({"op": "expect", "kind": "binary", "data": hexa(b"".join(parts))})
    steps += [{"op": "send", "kind": "text", "data": text("after")},
              {"op": "expect", "kind": "text", "data": text("after")}]
    check(drive(node, echo_server.url, {"steps": steps}))


def test_ping_pong(node, echo_server):
    steps = []
    for p in [b"", b"p", bytes(range(125))]:
        steps += [{"op": "ping", "data": hexa(p)}, {"op": "expect_pong", "data": hexa(p)}]
    steps += [{"op": "send", "kind": "text", "data": text("ok")},
              {"op": "expect", "kind": "text", "data": text("ok")}]
    check(drive(node, echo_server.url, {"steps": steps}))


@pytest.mark.parametrize("code", [1000, 1001, 4000])
def test_client_close_is_echoed(node, echo_server, code):
    steps = [
        {"op": "send", "kind": "text", "data": text("warm-up")},
        {"op": "expect", "kind": "text", "data": text("warm-up")},
        {"op": "close", "code": code, "reason": "node says bye \u2713"},
        # The server echoes the code and closes TCP itself (ws would wait 30 s otherwise).
        {"op": "expect_close", "code": code, "within_ms": 2500},
    ]
    check(drive(node, echo_server.url, {"steps": steps}))
    assert echo_server.alive()


SERVER_CLOSE_APP = r"""
return {
  message = function(conn, data)
    local code, reason = data:match("^close:(%d+):(.*)$")
    if code then conn:close(tonumber(code), reason) else conn:send(data) end
  end,
}
"""


@pytest.mark.parametrize("code", [1000, 1001, 4000])
def test_server_close_code_and_reason(node, wsserver_factory, code):
    server = wsserver_factory(app_source=SERVER_CLOSE_APP)
    reason = "server \u00e0 bient\u00f4t"
    steps = [
        {"op": "send", "kind": "text", "data": text(f"close:{code}:{reason}")},
        {"op": "expect_close", "code": code, "reason": reason, "within_ms": 2500},
    ]
    check(drive(node, server.url, {"steps": steps}))
    assert server.alive()


def test_200_concurrent_clients(node, echo_server):
    result = check(drive(node, echo_server.url,
                         {"concurrent": {"clients": CONCURRENT, "messages": 5}}, timeout=45))
    assert result["opened"] == CONCURRENT
    assert result["echoed"] == CONCURRENT * 5
    assert echo_server.alive()
