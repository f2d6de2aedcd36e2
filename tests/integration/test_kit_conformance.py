"""The ws.testing kit (lua/ws/testing.lua: the real server in-process, ws.kitcore, with in-memory
connections and a simulated clock) against the real server over sockets: the same app must
behave the same in both, which proves the in-memory transport and the simulated clock.

Every scenario in tests/kit/scenarios/*.json (connect clients, send, close, drop, wait, plain
HTTP requests, reloads) runs twice on a copy of its app at one path (so error messages name the
same file):

1. in the kit, through tests/kit/driver.lua, which prints a transcript: for every step, what each
   client received during it (text, binary as hex, close frames with code and reason) and the
   step's result (handshake status/body/subprotocol, HTTP status/body/headers, reload ok);
2. against build/wsserver on 127.0.0.1 with raw-socket clients driven step by step. After each
   step the driver waits until every client has received at least what the kit's transcript says
   (bounded), then a short quiet period to catch anything extra; "wait" steps wait for real.

The transcripts must match step by step (JSON text is compared parsed, so key order does not
matter; a scenario may mask fields such as timestamps). Steps may also carry expected entries,
checked against the server's. Handler errors each kit reports must match the server's handler_error lines.
A second group compares the kit's load-time failure messages with `wsserver --check`.
"""
import json
import os
import pathlib
import re
import select
import signal
import socket
import struct
import subprocess
import tempfile
import time

import pytest

import wsraw
from conftest import asan_preload
from wsclient import terminate
from wsraw import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("WSSERVER", str(ROOT / "build" / "wsserver"))
LUA = os.environ.get("LUA", "lua5.4")
SCENARIOS = sorted((ROOT / "tests" / "kit" / "scenarios").glob("*.json"))
DRIVER = ROOT / "tests" / "kit" / "driver.lua"
KITCORE = pathlib.Path(BINARY).parent / "lua"  # ws/kitcore.so beside the binary (make kit)

STEP_TIMEOUT = 5.0  # longest wait for what the kit predicts a step produces
QUIET = 0.08  # then how long to watch for anything extra
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


TEST_BUDGET = 120  # seconds per test (conftest enforces it)


# --- the real server -----------------------------------------------------------------------------


class Server:
    """build/wsserver on 127.0.0.1. Ready when it logs its listener: no probe connection, so
    connection ids start at 1 as in the kit."""

    def __init__(self, app, cli):
        self.port = free_port()
        self.log_file = tempfile.NamedTemporaryFile(prefix="wsserver-kit-", suffix=".log",
                                                    delete=False)
        args = [BINARY, "-l", f"127.0.0.1:{self.port}"]
        for key, value in (cli or {}).items():
            args += ["--" + key.replace("_", "-"), str(value)]
        args.append(str(app))
        self.proc = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     cwd=str(ROOT))
        deadline = time.monotonic() + 10
        while "event=listen" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wsserver did not start:\n{self.log()}")
            time.sleep(0.01)

    def log(self):
        with open(self.log_file.name, errors="replace") as f:
            return f.read()

    def stop(self):
        terminate(self.proc)
        self.final_log = self.log()  # with whatever a sanitizer reported at exit
        os.unlink(self.log_file.name)
        return self.proc.returncode


def request_bytes(method, target, headers):
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers] + ["", ""]
    return "\r\n".join(lines).encode()


def handshake_headers(step):
    """The header lines the kit sends for a connect step (lua/ws/testing.lua handshake_headers)."""
    h = [("Host", "127.0.0.1"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
         ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13")]
    if step.get("protocols"):
        h.append(("Sec-WebSocket-Protocol", ", ".join(step["protocols"])))
    if step.get("origin"):
        h.append(("Origin", step["origin"]))
    if step.get("cookies"):
        h.append(("Cookie", "; ".join(f"{k}={v}" for k, v in sorted(step["cookies"].items()))))
    for k in sorted(step.get("headers") or {}):
        h.append((k, step["headers"][k]))
    return h


def read_http_response(sock, deadline, until_eof):
    """Reads a response head (and the body: to EOF, or Content-Length). Returns status, headers
    (lower-cased), body, and the bytes after the head (when not reading to EOF)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if status == 101 and not until_eof:
        return status, headers, b"", rest
    if until_eof:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            rest += data
        return status, headers, rest, b""
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    return status, headers, rest[:length], b""


class Peer:
    """One client of the real server, read without blocking; answers pings and close frames like
    a browser (and like the kit's clients)."""

    def __init__(self, name, port, step):
        self.name = name
        self.entries = []
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
        self.sock.sendall(request_bytes("GET", step.get("path", "/"), handshake_headers(step)))
        status, headers, body, rest = read_http_response(
            self.sock, time.monotonic() + STEP_TIMEOUT, until_eof=False)
        self.status = status
        self.protocol = headers.get("sec-websocket-protocol")
        self.body = body.decode("utf-8", errors="replace")
        self.buf = bytearray(rest)
        self.fragments = None
        self.close_sent = False
        self.closed = status != 101
        if self.closed:
            self.sock.close()
        else:
            self.sock.setblocking(False)
            self._parse()

    def send_frame(self, opcode, payload):
        self.sock.setblocking(True)
        self.sock.sendall(wsraw.encode_frame(opcode, payload))
        self.sock.setblocking(False)

    def close(self, code, reason):
        self.close_sent = True
        self.send_frame(wsraw.OP_CLOSE, wsraw.close_payload(code, reason or b""))

    def drop(self):
        self.closed = True
        self.sock.close()

    def _parse(self):
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, off = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
            if len(self.buf) < off + n:
                return
            payload = bytes(self.buf[off:off + n])
            del self.buf[:off + n]
            self._frame(bool(b0 & 0x80), b0 & 0x0F, payload)

    def _frame(self, fin, opcode, payload):
        if opcode == wsraw.OP_PING:
            if not self.close_sent:
                self.send_frame(wsraw.OP_PONG, payload)
        elif opcode == wsraw.OP_PONG:
            pass
        elif opcode == wsraw.OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.entries.append({"kind": "close", "code": code,
                                 "reason": payload[2:].decode("utf-8")})
            if not self.close_sent:
                self.close_sent = True
                self.send_frame(wsraw.OP_CLOSE, payload)  # echo, as browsers and websockets do
        else:
            if opcode != wsraw.OP_CONT:
                self.fragments = (opcode, bytearray())
            self.fragments[1].extend(payload)
            if fin:
                op, data = self.fragments
                self.fragments = None
                if op == wsraw.OP_TEXT:
                    self.entries.append({"kind": "text", "data": data.decode("utf-8")})
                else:
                    self.entries.append({"kind": "binary", "hex": data.hex()})

    def on_readable(self):
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        if not data:
            self.closed = True
            self.sock.close()
            return
        self.buf.extend(data)
        self._parse()


def pump(peers, seconds, until=None):
    deadline = time.monotonic() + seconds
    while True:
        if until and until():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        live = [p for p in peers if not p.closed]
        if not live:
            time.sleep(min(left, 0.01))
            continue
        ready, _, _ = select.select([p.sock for p in live], [], [], min(left, 0.02))
        for p in live:
            if p.sock in ready:
                p.on_readable()


def http_request(port, method, target, headers):
    sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
    try:
        lines = [("Host", "127.0.0.1")] + sorted((headers or {}).items())
        sock.sendall(request_bytes(method, target, lines))
        status, hdrs, body, _ = read_http_response(sock, time.monotonic() + STEP_TIMEOUT,
                                                   until_eof=True)
        return status, hdrs, body.decode("utf-8", errors="replace")
    finally:
        sock.close()


def count_events(log, *events):
    return sum(len(re.findall(rf"event={e}\b", log)) for e in events)


def run_on_server(scenario, app_path, kit):
    """Plays the scenario against the real binary, step by step, waiting as the kit predicts."""
    shutil_copy(ROOT / scenario["app"], app_path)
    server = Server(app_path, scenario.get("cli"))
    peers = {}
    steps = []
    try:
        for i, step in enumerate(scenario["steps"]):
            expected = kit["steps"][i]["received"]
            base = {name: len(p.entries) for name, p in peers.items()}
            result = None
            if "connect" in step:
                p = Peer(step["connect"], server.port, step)
                if p.status == 101:
                    peers[p.name] = p
                    base[p.name] = 0
                    result = {"status": 101, "protocol": p.protocol}
                else:
                    result = {"status": p.status, "body": p.body}
            elif "send" in step:
                p = peers[step["send"]]
                if "text" in step:
                    p.send_frame(wsraw.OP_TEXT, step["text"].encode("utf-8"))
                elif "text_hex" in step:
                    p.send_frame(wsraw.OP_TEXT, bytes.fromhex(step["text_hex"]))
                else:
                    p.send_frame(wsraw.OP_BINARY, bytes.fromhex(step["binary_hex"]))
            elif "close" in step:
                reason = step.get("reason", "").encode("utf-8")
                peers[step["close"]].close(step.get("code"), reason)
            elif "drop" in step:
                peers[step["drop"]].drop()
            elif "wait" in step:
                pump(list(peers.values()), step["wait"])
            elif "http" in step:
                status, hdrs, body = http_request(server.port, step["http"], step["path"],
                                                  step.get("headers"))
                kit_result = kit["steps"][i].get("result") or {}
                result = {"status": status, "body": "" if step["http"] == "HEAD" else body,
                          "content_type": hdrs.get("content-type")}
                for k in kit_result:
                    if k not in result:
                        result[k] = hdrs.get(k)
            elif "reload" in step:
                before = count_events(server.log(), "app_loaded", "app_load_failed")
                shutil_copy(ROOT / step["reload"], app_path)
                server.proc.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + STEP_TIMEOUT
                while count_events(server.log(), "app_loaded", "app_load_failed") == before:
                    assert time.monotonic() < deadline, "no reload result in the log"
                    pump(list(peers.values()), 0.01)
                last = re.findall(r"event=(app_loaded|app_load_failed)\b", server.log())[-1]
                result = {"ok": last == "app_loaded"}
            live = list(peers.values())

            def enough():
                return all(len(p.entries) - base.get(name, 0) >= len(expected.get(name, []))
                           for name, p in peers.items())

            pump(live, STEP_TIMEOUT, until=enough)
            pump(live, QUIET)
            received = {name: p.entries[base.get(name, 0):] for name, p in peers.items()}
            steps.append({"received": received, "result": result})
        pump(list(peers.values()), QUIET)
        log = server.log()
    finally:
        for p in peers.values():  # gone before SIGTERM: no 1001 close handshake to wait for
            if not p.closed:
                p.drop()
        code = server.stop()
    assert code == 0, f"wsserver exited with {code}:\n{log}"
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in server.final_log, f"sanitizer report:\n{server.final_log}"
    return steps, log


def shutil_copy(src, dst):
    pathlib.Path(dst).write_bytes(pathlib.Path(src).read_bytes())


def kit_env(**extra):
    """The environment a kit process needs: ws.kitcore on LUA_CPATH (make kit)."""
    return dict(os.environ, LUA_CPATH=f"{KITCORE}/?.so;;",
                **asan_preload(KITCORE / "ws" / "kitcore.so"), **extra)


def run_kit(scenario_path, scenario, app_path):
    shutil_copy(ROOT / scenario["app"], app_path)
    out = subprocess.run([LUA, str(DRIVER), str(scenario_path), str(app_path)], cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60, env=kit_env())
    assert out.returncode == 0, f"kit driver failed:\n{out.stderr}"
    return json.loads(out.stdout)


# --- comparing ---------------------------------------------------------------------------------


ADDRESS = re.compile(r"0x[0-9a-f]+")


def unaddressed(text):
    """Object addresses ("table: 0x55...") differ between any two processes."""
    return ADDRESS.sub("0x?", text)


def masked(v, mask):
    if isinstance(v, dict):
        return {k: ("<masked>" if k in mask else masked(x, mask)) for k, x in v.items()}
    if isinstance(v, list):
        return [masked(x, mask) for x in v]
    if isinstance(v, str):
        return unaddressed(v)
    return v


def norm(entry, mask):
    if entry.get("kind") == "text":
        try:
            v = json.loads(entry["data"])
        except ValueError:
            return {"kind": "text", "data": unaddressed(entry["data"])}
        if isinstance(v, (dict, list)):
            return {"kind": "text", "json": masked(v, mask)}
    return entry


def norm_list(entries, mask):
    return [norm(e, mask) for e in entries]


def subset_mismatch(expected, actual):
    return {k: (v, actual.get(k)) for k, v in expected.items() if actual.get(k) != v}


def handler_errors(log):
    """(handler, first line of the message) for every handler_error line of the server log."""
    out = []
    for m in re.finditer(r'event=handler_error handler="([^"]*)"(?: conn=\d+)? error="((?:[^"\\]|\\.)*)"', log):
        msg = m.group(2).encode("latin-1").decode("unicode_escape")
        out.append((m.group(1), unaddressed(msg.split("\n")[0])))
    return out


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario(path, tmp_path):
    scenario = json.loads(path.read_text())
    mask = set(scenario.get("mask", []))
    app_path = tmp_path / "app.lua"
    kit = run_kit(path, scenario, app_path)
    real, log = run_on_server(scenario, app_path, kit)
    problems = expectations(scenario, mask, real)
    problems += differences(scenario, mask, "kit", kit, real, log)
    assert not problems, (f"{path.name}: the kit and the server differ\n" + "\n".join(problems)
                          + f"\n--- server log ---\n{log[-4000:]}")


def expectations(scenario, mask, real):
    """Where the server's transcript differs from what the scenario's steps expect."""
    problems = []
    for i, step in enumerate(scenario["steps"]):
        r = real[i]
        for name, want in step.get("expect", {}).items():
            want, rl = norm_list(want, mask), norm_list(r["received"].get(name, []), mask)
            if want != rl:
                problems.append(f"step {i + 1}, client {name} (expected):\n  want:   {want}\n"
                                f"  server: {rl}")
        if "expect_result" in step:
            bad = subset_mismatch(step["expect_result"], r["result"] or {})
            if bad:
                problems.append(f"step {i + 1} result (expected, server): {bad}")
    return problems


def differences(scenario, mask, who, kit, real, log):
    """What differs between a transcript of the kit (who names it) and the server's."""
    problems = []
    for i, step in enumerate(scenario["steps"]):
        k, r = kit["steps"][i], real[i]
        label = f"{who}: step {i + 1} ({k['op']})"
        names = sorted(set(k["received"]) | set(r["received"]))
        for name in names:
            kl = norm_list(k["received"].get(name, []), mask)
            rl = norm_list(r["received"].get(name, []), mask)
            if kl != rl:
                problems.append(f"{label}, client {name}:\n  {who}: {kl}\n  server: {rl}")
        if (k.get("result") or r["result"]) and k.get("result") != r["result"]:
            problems.append(f"{label} result:\n  {who}: {k.get('result')}\n"
                            f"  server: {r['result']}")
    kit_errors = [(e["handler"], unaddressed(e["message"].split("\n")[0]))
                  for e in kit["errors"]]
    real_errors = handler_errors(log)
    if kit_errors != real_errors:
        problems.append(f"{who}: handler errors:\n  {who}: {kit_errors}\n"
                        f"  server: {real_errors}")
    return problems


# --- load-time validation: the kit's messages against `wsserver --check` ------------------------

BAD_APPS = {
    "unknown_field": "return { mesage = function() end }\n",
    "handler_type": "return { open = 5 }\n",
    "http_type": "return { http = function() end }\n",
    "not_a_table": "return 42\n",
    "nothing": "local x = 1\n",
    "number_key": "return { [1] = function() end }\n",
    "syntax": "return { message = function(conn) conn:send( end }\n",
    "runtime": "local t = nil\nreturn t.x\n",
    "config_key": "return { config = { max_mesage_size = 10 } }\n",
    "config_range": "return { config = { max_message_size = 0 } }\n",
    "config_fraction": "return { config = { max_connections = 1.5 } }\n",
    "config_seconds": "return { config = { handler_timeout = 0 } }\n",
    "config_bool": "return { config = { metrics = 'maybe' } }\n",
    "config_number_type": "return { config = { backpressure = 1 } }\n",
    "config_bool_type": "return { config = { ping_interval = true } }\n",
    "config_choice": "return { config = { backpressure = 'wait' } }\n",
    "config_table_type": "return { config = { max_buffered = {} } }\n",
    "config_list_item": "return { config = { protocols = { 'a', 5 } } }\n",
    "config_tls_pair": "return { config = { tls_cert = 'x.pem' } }\n",
    "config_string_number": "return { config = { max_buffered = '12x' } }\n",
    "config_empty_string": "return { config = { static = '' } }\n",
    "config_string_for_number": "return { config = { ping_interval = '20' } }\n",
    "config_bool_for_choice": "return { config = { compression = true } }\n",
    "config_listen_port": "return { config = { listen = '127.0.0.1:65536' } }\n",
    "config_listen_form": "return { config = { listen = { 'localhost' } } }\n",
    "route_without_method": "return { http = { ['/count'] = function() end } }\n",
    "route_lower_method": "return { http = { ['get /count'] = function() end } }\n",
    "route_query": "return { http = { ['GET /a?b=1'] = function() end } }\n",
    "route_healthz": "return { http = { ['GET /healthz'] = function() end } }\n",
    "route_metrics": "return { http = { ['POST /metrics'] = function() end } }\n",
    "route_not_function": "return { http = { ['GET /x'] = true } }\n",
    "route_key_type": "return { http = { [1] = function() end } }\n",
    "app_index_raises": "return setmetatable({}, {__index = function() error('no', 0) end})\n",
    "handler_via_index": "return setmetatable({}, {__index = function(_, k)\n"
                         "  if k == 'open' then return 5 end end})\n",
}


def server_check_error(app):
    out = subprocess.run([BINARY, "--check", str(app)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1, out.stderr
    m = re.search(r'event=app_load_failed .*?error="((?:[^"\\]|\\.)*)"', out.stderr)
    assert m, out.stderr
    err = m.group(1).encode("latin-1").decode("unicode_escape")
    handler = handler_errors(out.stderr)
    if handler:
        err = err.replace(" (see the handler_error above)", ": " + handler[0][1])
    return err


def kit_load_error(app):
    code = ('package.path = "lua/?.lua;" .. package.path\n'
            'local ok, err = pcall(require("ws.testing").load, os.getenv("KIT_APP"))\n'
            'assert(not ok, "the kit loaded it")\n'
            'io.write((err:gsub("^ws.testing.load: .-: the app failed to load: ", "")))\n')
    out = subprocess.run([LUA, "-e", code], cwd=str(ROOT), capture_output=True, text=True,
                         timeout=30, env=kit_env(KIT_APP=str(app)))
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("name", sorted(BAD_APPS))
def test_load_errors_match_check(name, tmp_path):
    app = tmp_path / f"{name}.lua"
    app.write_text(BAD_APPS[name])
    assert kit_load_error(app) == server_check_error(app)
