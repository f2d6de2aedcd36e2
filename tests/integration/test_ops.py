"""Operator-level tests: what someone who installs, supervises, monitors and stops wsserver relies
on (README "Command line", "Operations", "Changing a running app"; docs/wsserver.1;
contrib/wsserver.service; `wsserver --help`).

1. `make install PREFIX=... DESTDIR=...` lays out a tree whose binary finds its Lua library
   relative to itself, whose man page renders, and whose systemd unit names that binary and
   passes systemd-analyze verify.
2. Supervision: --pidfile, SIGHUP, `wsserver --reload PIDFILE|PID`, SIGTERM -> exit 0 with the
   pidfile and the status files (in the pidfile's folder and /tmp) gone.
3. --user: privileges dropped after binding, still serving; an unknown user is exit 1.
4. /metrics under a known workload: exact values, counters monotonic (across a reload too);
   /healthz GET and HEAD.
5. Logs of a hostile client: one line per event, peer strings escaped (text and JSON), payloads
   and query strings never logged, --log-level, flood control with the suppressed count.
6. Graceful shutdown under load: queued output delivered in order, app.shutdown first, close 1001
   for every connection (more than one batch of 500), new connections refused, exit 0 in time.
7. Exit codes 0/1/2.

Apps are generated into the test's tmp_path. Only 127.0.0.1 is used; every process started here
is stopped by its PID.
"""
import asyncio
import json
import os
import pathlib
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

import wsraw
from wsraw import free_port
from wsclient import connect as ws_connect
from wsclient import run
from wsclient import wait_for as poll_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("WSSERVER", str(ROOT / "build" / "wsserver"))
HOST = "127.0.0.1"

TEST_BUDGET = 90  # seconds per test (conftest enforces it)


# ---- helpers ------------------------------------------------------------------------------------

def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """wsclient.wait_for with this file's longer default timeout (10 s)."""
    return poll_until(predicate, timeout, what, interval)


def http(port, target="/", method="GET", headers=(), raw=None, timeout=5.0):
    """One HTTP/1.1 exchange on a fresh connection, read to EOF (the server answers
    `Connection: close`). Returns (status, {lower-case name: value}, body bytes)."""
    if raw is None:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}:{port}", *headers]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(raw)
        data = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no complete answer to {raw[:80]!r}: {bytes(data[:200])!r}"
            r, _, _ = select.select([s], [], [], left)
            if not r:
                continue
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            data += chunk
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    assert sep, f"no response head for {raw[:80]!r}: {bytes(data[:200])!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    return status, hdrs, body


def ws_request(target="/", port=0, extra=(), version="13", key=True):
    """A WebSocket handshake request head (bytes); `target` may hold any bytes."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [b"GET " + target + b" HTTP/1.1", f"Host: {HOST}:{port}".encode(),
             b"Upgrade: websocket", b"Connection: Upgrade",
             f"Sec-WebSocket-Version: {version}".encode()]
    if key:
        lines.append(f"Sec-WebSocket-Key: {wsraw.new_key()}".encode())
    for item in extra:
        lines.append(item if isinstance(item, bytes) else item.encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def ws_open(port, target="/", extra=()):
    """A raw WebSocket client (tests/integration/wsraw.py) after a checked 101."""
    key = wsraw.new_key()
    if isinstance(target, str):
        target = target.encode("latin-1")
    head = [b"GET " + target + b" HTTP/1.1", f"Host: {HOST}:{port}".encode(),
            b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Key: {key}".encode()]
    head += [e if isinstance(e, bytes) else e.encode("latin-1") for e in extra]
    request = b"\r\n".join(head) + b"\r\n\r\n"
    resp, sock, leftover = wsraw.handshake(port, request)
    try:
        wsraw.check_101(resp, key)
    except BaseException:
        sock.close()
        raise
    return wsraw.Client(sock, leftover, resp)


def scrape(port):
    """GET /metrics, parsed with prometheus_client: {(sample name, frozenset(labels)): value}."""
    status, headers, body = http(port, "/metrics")
    assert status == 200, (status, body[:200])
    assert headers.get("content-type", "").startswith("text/plain"), headers
    text = body.decode("utf-8")
    samples = {}
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families


def m(samples, name, **labels):
    """The value of one sample (0 when absent: a labelled counter not yet seen)."""
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())), 0)


def labelled(samples, name, label):
    """{label value: sample value} for every sample of name."""
    out = {}
    for (n, labels), v in samples.items():
        if n == name:
            out[dict(labels)[label]] = v
    return out


def log_bytes(server):
    with open(server.logfile.name, "rb") as f:
        return f.read()


def status_path(pid):
    return pathlib.Path(f"/tmp/wsserver-{pid}.status")


def kill_if_running(proc):
    """Stops a process this test started (by its PID) if it is still running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


# Text log lines: "TS level=L event=E key=value ..." where a value is a number/word or a
# double-quoted string with \" \\ and \xNN escapes (\n and \t in a multi-line value such as a
# traceback). Nothing else may appear on a line.
TEXT_LINE = re.compile(
    r'^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) level=(?P<level>debug|info|warn|error) '
    r'event=(?P<event>[A-Za-z0-9_.-]+)(?P<rest>(?: [A-Za-z_][A-Za-z0-9_.-]*='
    r'(?:"(?:[^"\\]|\\["\\nt]|\\x[0-9a-f]{2})*"|[^\s"]+))*)$')
TEXT_PAIR = re.compile(
    r' ([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\["\\nt]|\\x[0-9a-f]{2})*"|[^\s"]+)')


def unescape_text(value):
    """A quoted text-log value back to the bytes it stands for."""
    assert value.startswith('"') and value.endswith('"'), value
    s = value[1:-1]
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i] == "\\":
            if s[i + 1] == "x":
                out.append(int(s[i + 2:i + 4], 16))
                i += 4
            elif s[i + 1] in "nt":
                out += b"\n" if s[i + 1] == "n" else b"\t"
                i += 2
            else:
                out += s[i + 1].encode()
                i += 2
        else:
            out += s[i].encode()
            i += 1
    return bytes(out)


def parse_text_log(raw):
    """Every line of a text log, checked against the format: [{'ts','level','event', k: raw}]."""
    assert raw.endswith(b"\n") or not raw, f"log does not end with a newline: {raw[-80:]!r}"
    records = []
    for n, line in enumerate(raw.split(b"\n")[:-1], 1):
        assert all(0x20 <= b < 0x7f for b in line), \
            f"log line {n} holds a raw control or non-ASCII byte: {line!r}"
        text = line.decode("ascii")
        match = TEXT_LINE.match(text)
        assert match, f"log line {n} is not one well-formed event line: {text!r}"
        rec = {"ts": match["ts"], "level": match["level"], "event": match["event"]}
        for k, v in TEXT_PAIR.findall(match["rest"]):
            assert k not in rec, f"duplicate key {k} in log line {n}: {text!r}"
            rec[k] = v
        records.append(rec)
    return records


def parse_json_log(raw):
    """Every line of a JSON log: one object per line with ts, level and event."""
    records = []
    for n, line in enumerate(raw.split(b"\n")[:-1], 1):
        assert all(0x20 <= b < 0x7f for b in line), \
            f"JSON log line {n} holds a raw control or non-ASCII byte: {line!r}"
        try:
            rec = json.loads(line.decode("ascii"))
        except ValueError as e:
            raise AssertionError(f"JSON log line {n} does not parse ({e}): {line!r}")
        assert isinstance(rec, dict), line
        for k in ("ts", "level", "event"):
            assert k in rec, f"JSON log line {n} lacks {k}: {line!r}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["ts"]), rec
        assert rec["level"] in ("debug", "info", "warn", "error"), rec
        records.append(rec)
    return records


ECHO_APP = """
return {
  message = function(conn, data, kind) conn:send(data, kind) end,
}
"""


# ---- 1. make install ----------------------------------------------------------------------------

INSTALLED_APP = """
local router = require "ws.router"
local json = require "ws.json"
local r = router.new()
r:get("/where/:what", function(req, params)
  return 200, json.encode({
    what = params.what,
    router = package.searchpath("ws.router", package.path),
    json = package.searchpath("ws.json", package.path),
  }), {["Content-Type"] = "application/json"}
end)
return {
  http = r:handler(),
  message = function(conn, data, kind)
    local obj = ws.json.decode(data)
    if obj then conn:send_json({echo = obj}) else conn:send(data, kind) end
  end,
}
"""


def test_make_install_tree_is_self_contained(tmp_path):
    dest = tmp_path / "dest"
    build = tmp_path / "build"  # a private build dir: the shared build/ is left alone
    prefix = "/opt/wsx"
    assert not os.path.exists(prefix), f"{prefix} exists on this machine: the test needs it absent"
    r = subprocess.run(["make", "-j4", "install", f"PREFIX={prefix}", f"DESTDIR={dest}",
                        f"BUILD={build}"], cwd=ROOT, capture_output=True, text=True, timeout=75)
    assert r.returncode == 0, f"make install failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    root = dest / prefix.lstrip("/")

    exe = root / "bin" / "wsserver"
    assert exe.is_file() and os.access(exe, os.X_OK), exe
    shipped = sorted(p.name for p in (ROOT / "lua" / "ws").glob("*.lua"))
    assert {"json.lua", "router.lua", "rooms.lua", "testing.lua"} <= set(shipped)
    for name in shipped:
        installed = root / "share" / "wsserver" / "lua" / "ws" / name
        assert installed.read_bytes() == (ROOT / "lua" / "ws" / name).read_bytes(), installed
    man = root / "share" / "man" / "man1" / "wsserver.1"
    doc = root / "share" / "doc" / "wsserver"
    assert man.read_bytes() == (ROOT / "docs" / "wsserver.1").read_bytes()
    assert (doc / "README.md").read_bytes() == (ROOT / "README.md").read_bytes()
    assert (doc / "logrotate").read_bytes() == (ROOT / "contrib" / "logrotate").read_bytes()
    # the systemd unit, where systemd looks, naming this PREFIX's binary
    unit = (root / "lib" / "systemd" / "system" / "wsserver.service").read_text()
    assert re.search(rf"^ExecStart={prefix}/bin/wsserver ", unit, re.M), unit
    assert re.search(rf"^ExecReload={prefix}/bin/wsserver --reload ", unit, re.M), unit
    assert "/usr/local" not in unit and "@" not in re.sub(r"^#.*$", "", unit, flags=re.M)
    assert (root / "lib" / "sysusers.d" / "wsserver.conf").is_file()
    assert shutil.which("systemd-analyze"), "scripts/install-deps.sh installs systemd"
    (tmp_path / "wsserver.service").write_text(unit.replace(f"{prefix}/bin/wsserver",
                                                            str(root / "bin" / "wsserver")))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(tmp_path / "wsserver.service")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "wsserver.service" not in r.stdout + r.stderr, \
        r.stdout + r.stderr
    for rel in ("echo.lua", "auth.lua", "rooms.lua", "chat/chat.lua"):
        assert (doc / "examples" / rel).is_file(), rel
    # nothing written outside DESTDIR
    assert not os.path.exists(prefix)
    # SYSTEMD_UNIT_DIR puts the unit elsewhere (PREFIX=/usr: the binary is /usr/bin/wsserver)
    dest2 = tmp_path / "dest2"
    r = subprocess.run(["make", "install", "PREFIX=/usr", f"DESTDIR={dest2}", f"BUILD={build}",
                        "SYSTEMD_UNIT_DIR=/etc/systemd/system"], cwd=ROOT, capture_output=True,
                       text=True, timeout=75)
    assert r.returncode == 0, r.stderr[-3000:]
    unit2 = (dest2 / "etc" / "systemd" / "system" / "wsserver.service").read_text()
    assert re.search(r"^ExecStart=/usr/bin/wsserver ", unit2, re.M), unit2
    assert not (dest2 / "usr" / "lib" / "systemd").exists()

    # The installed binary, run from elsewhere, with no hint where its library is: it must find
    # share/wsserver/lua next to itself (the compiled-in PREFIX path does not exist here).
    appdir = tmp_path / "srv"
    appdir.mkdir()
    app = appdir / "app.lua"
    app.write_text(INSTALLED_APP)
    env = {k: v for k, v in os.environ.items() if k not in ("WSSERVER_LUA_PATH", "LUA_PATH",
                                                            "LUA_PATH_5_4", "LUA_INIT")}
    check = subprocess.run([str(exe), "--check", str(app)], cwd=str(tmp_path), env=env,
                           capture_output=True, text=True, timeout=10)
    assert check.returncode == 0, check.stderr
    port = free_port()
    logf = open(tmp_path / "installed.log", "wb")
    proc = subprocess.Popen([str(exe), "-l", f"{HOST}:{port}", str(app)], cwd=str(tmp_path),
                            env=env, stdout=logf, stderr=subprocess.STDOUT)
    try:
        def up():
            assert proc.poll() is None, (tmp_path / "installed.log").read_text()
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, what="the installed server to listen")
        status, headers, body = http(port, "/where/here")
        assert status == 200, body
        info = json.loads(body)
        libdir = str(root / "share" / "wsserver" / "lua" / "ws")
        assert info["what"] == "here"
        assert os.path.realpath(info["router"]) == os.path.realpath(libdir + "/router.lua"), info
        assert os.path.realpath(info["json"]) == os.path.realpath(libdir + "/json.lua"), info

        async def echo():
            async with ws_connect(f"ws://{HOST}:{port}/") as ws:
                await ws.send("plain text")
                assert await asyncio.wait_for(ws.recv(), 5) == "plain text"
                await ws.send('{"n": 42}')
                assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"echo": {"n": 42}}
                await ws.send(b"\x00\x01bin")
                assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\x01bin"

        run(echo(), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        kill_if_running(proc)
        logf.close()

    # The man page renders (man -l), or at least is a roff page.
    source = man.read_text()
    assert source.lstrip().startswith(".TH WSSERVER 1"), source[:80]
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-l", str(man)], capture_output=True, text=True,
                           timeout=30, env={**os.environ, "MANPAGER": "cat", "PAGER": "cat",
                                            "MANWIDTH": "80", "LANG": "C.UTF-8"})
        assert r.returncode == 0, r.stderr
        out = r.stdout
        for word in ("WSSERVER(1)", "NAME", "SYNOPSIS", "OPTIONS", "SIGNALS", "EXIT STATUS",
                     "--pidfile", "--reload", "SIGHUP", "shutdown_timeout"):
            assert word in out, f"{word!r} missing from the rendered man page:\n{out[:2000]}"
        assert not r.stderr.strip(), f"man/groff warnings:\n{r.stderr}"
    # Every option the man page names is one `wsserver --help` knows.
    help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True,
                               timeout=10).stdout
    for opt in sorted(set(re.findall(r"\\-\\-([a-z]+(?:\\-[a-z]+)*)", source))):
        opt = opt.replace("\\-", "-")
        assert f"--{opt}" in help_text, f"the man page names --{opt}, --help does not know it"


# ---- 2. under a supervisor ----------------------------------------------------------------------

def test_pidfile_sighup_reload_and_sigterm(wsserver_factory, tmp_path):
    pidfile = tmp_path / "run" / "wsserver.pid"
    pidfile.parent.mkdir()
    server = wsserver_factory(app_source=ECHO_APP, args=["--pidfile", str(pidfile)])
    app = pathlib.Path(server.app)
    wait_for(pidfile.exists, what="the pidfile")  # the port may answer a moment before
    assert pidfile.read_text() == f"{server.pid}\n"
    status = status_path(server.pid)
    # written when the app's start is reported, a moment after the port opens
    wait_for(status.exists, what=f"{status} while the server runs")
    near = pidfile.parent / f"wsserver-{server.pid}.status"  # what a private /tmp cannot hide
    assert near.exists(), f"{near} missing while the server runs"

    # a connection that lives through every reload below
    client = ws_open(server.port)
    client.echo_roundtrip("before")

    def loaded(generation, trigger):
        pattern = rf'event=app_loaded file="[^"]*" generation={generation} trigger="{trigger}"'
        return re.search(pattern, server.log())

    server.signal(signal.SIGHUP)
    wait_for(lambda: loaded(2, "SIGHUP"), what="app_loaded generation=2 after SIGHUP")

    r = subprocess.run([BINARY, "--reload", str(pidfile)], capture_output=True, text=True,
                       timeout=15)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "result=ok" in r.stdout and "generation=3" in r.stdout, r.stdout
    assert loaded(3, "SIGHUP"), server.log()

    # --reload PID, and a refused reload: exit 1, result=failed with the error, old app stays
    app.write_text("return {\n  message = function(conn, data)\n")  # syntax error
    r = subprocess.run([BINARY, "--reload", str(server.pid)], capture_output=True, text=True,
                       timeout=15)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "result=failed" in r.stdout and "error=" in r.stdout, r.stdout
    client.echo_roundtrip("old version still answers")
    app.write_text(ECHO_APP.replace("conn:send(data, kind)", 'conn:send("v2:" .. data, kind)'))
    r = subprocess.run([BINARY, "--reload", str(server.pid)], capture_output=True, text=True,
                       timeout=15)
    assert r.returncode == 0 and "result=ok" in r.stdout, (r.stdout, r.stderr)
    client.send_text("after")
    client.expect_message(wsraw.OP_TEXT, "v2:after")

    # SIGTERM: graceful, exit 0, the pidfile and the status file removed
    server.signal(signal.SIGTERM)
    client.expect_close(1001)
    client.close()
    assert server.proc.wait(15) == 0, server.log()
    assert not pidfile.exists(), "pidfile left behind after a clean exit"
    assert not status.exists(), f"{status} left behind after a clean exit"
    assert not near.exists(), f"{near} left behind after a clean exit"
    assert "event=exit" in server.log()


def test_workers_under_a_supervisor(wsserver_factory, tmp_path):
    pidfile = tmp_path / "master.pid"
    server = wsserver_factory(app_source=ECHO_APP, args=["--workers", "2",
                                                         "--pidfile", str(pidfile)])
    wait_for(pidfile.exists, what="the pidfile")
    assert pidfile.read_text() == f"{server.pid}\n", "the pidfile names the master"
    wait_for(lambda: server.log().count("event=app_loaded") == 2, what="both workers")
    r = subprocess.run([BINARY, "--reload", str(pidfile)], capture_output=True, text=True,
                       timeout=15)
    assert r.returncode == 0 and "result=ok" in r.stdout, (r.stdout, r.stderr)
    wait_for(lambda: len(re.findall(r"event=app_loaded worker=\d generation=2|"
                                    r"event=app_loaded worker=\d file=\S+ generation=2",
                                    server.log())) == 2, what="both workers reloaded")
    with ws_open(server.port) as c:
        c.echo_roundtrip()
    server.signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0, server.log()
    assert not pidfile.exists()
    # (its status file outlives it: test_workers_status_file_removed_at_exit; tidy up here)
    status_path(server.pid).unlink(missing_ok=True)


def test_workers_status_file_removed_at_exit(wsserver_factory):
    server = wsserver_factory(app_source=ECHO_APP, args=["--workers", "2"])
    wait_for(lambda: server.log().count("event=app_loaded") == 2, what="both workers")
    status = status_path(server.pid)
    assert status.exists()
    server.signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0, server.log()
    exists = status.exists()
    if exists:
        status.unlink()  # do not leave it in /tmp
    assert not exists, f"{status} left behind after a clean exit"


# ---- 3. --user ----------------------------------------------------------------------------------

def proc_ids(pid):
    """(uids, gids, groups) from /proc/PID/status: real, effective, saved, fs."""
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.split()
    return [int(x) for x in fields["Uid"]], [int(x) for x in fields["Gid"]], fields["Groups"]


def free_low_port():
    """A free privileged port (below 1024) on 127.0.0.1."""
    for port in range(1023, 600, -1):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024")


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs root")
def test_user_drops_privileges_after_binding(wsserver_factory):
    nobody = pwd.getpwnam("nobody")
    low = free_low_port()  # only root may bind it: proves the listeners open before the drop
    server = wsserver_factory(app_source=ECHO_APP,
                              args=["--user", "nobody", "-l", f"{HOST}:{low}"])
    # the kernel completes connections on a listening socket before the server drops root and
    # starts accepting: wait for the drop, not for the port
    wait_for(lambda: proc_ids(server.pid)[0] != [0] * 4, what="the privileges dropped")
    uids, gids, groups = proc_ids(server.pid)
    assert uids == [nobody.pw_uid] * 4, f"Uid: {uids}"
    assert gids == [nobody.pw_gid] * 4, f"Gid: {gids}"
    assert groups == [], f"supplementary groups kept: {groups}"
    with ws_open(server.port) as c:
        c.echo_roundtrip("served by nobody")
    with ws_open(low) as c:
        c.echo_roundtrip("on a privileged port")
    assert http(server.port, "/healthz")[0] == 200
    # a reload still works (the status file in /tmp is the unprivileged user's)
    server.signal(signal.SIGHUP)
    wait_for(lambda: "generation=2" in server.log(), what="reload as nobody")
    assert status_path(server.pid).stat().st_uid == nobody.pw_uid
    server.signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0, server.log()
    assert not status_path(server.pid).exists()


def test_user_unknown_is_exit_1(tmp_path):
    app = tmp_path / "app.lua"
    app.write_text(ECHO_APP)
    port = free_port()
    try:
        r = subprocess.run([BINARY, "-l", f"{HOST}:{port}", "--user", "no-such-user-xq", str(app)],
                           capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("wsserver --user no-such-user-xq kept running")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "no-such-user-xq" in r.stderr and "user" in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs root")
def test_user_pidfile_removed_at_exit_or_reported(wsserver_factory, tmp_path):
    rundir = tmp_path / "run"  # like /run: root's, not writable by nobody
    rundir.mkdir(mode=0o755)
    pidfile = rundir / "wsserver.pid"
    server = wsserver_factory(app_source=ECHO_APP, args=["--user", "nobody",
                                                         "--pidfile", str(pidfile)])
    # written right after the listeners open: the port may answer a moment before
    wait_for(pidfile.exists, what="the pidfile")
    assert pidfile.read_text() == f"{server.pid}\n"
    server.signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    # after --user the folder may not let the process remove it: then the log must say so
    assert not pidfile.exists() or "event=pidfile_left" in server.log(), server.log()


# ---- 4. metrics ---------------------------------------------------------------------------------

METRICS_APP = """
return {
  upgrade = function(req)
    if req.path == "/deny" then return false, 403, "denied" end
  end,
  message = function(conn, data, kind)
    if data == "boom" then error("handler failure on purpose") end
    local code = data:match("^close:(%d+)$")
    if code then conn:close(tonumber(code), "asked") return end
    conn:send(data, kind)
  end,
}
"""


def test_metrics_under_a_known_workload(wsserver_factory, tmp_path):
    server = wsserver_factory(app_source=METRICS_APP, args=["--metrics"])
    port = server.port
    tcp = 1  # the conftest's readiness probe was one TCP connection

    N, M = 6, 25
    clients = []
    for i in range(N):
        clients.append(ws_open(port, f"/room/{i}?x={i}"))
        tcp += 1
    payload_bytes = 0
    for i, c in enumerate(clients):
        for j in range(M):
            text = f"c{i}-m{j}-" + "x" * j
            c.send_text(text)
            payload_bytes += len(text)
        for j in range(M):
            c.expect_message(wsraw.OP_TEXT, f"c{i}-m{j}-" + "x" * j)

    # closes with known codes: client-initiated 1000, 4001 x2; server-initiated 4100 (asked),
    # 1011 (handler error); a dropped TCP connection 1006; one client stays open
    c0, c1, c2, c3, c4, c5 = clients
    c0.send_close(1000)
    c0.expect_close(1000, reply=False)
    for c in (c1, c2):
        c.send_close(4001, b"bye")
        c.expect_close(4001, reply=False)
    c3.send_text("close:4100")
    c3.expect_close(4100)
    c4.send_text("boom")
    c4.expect_close(1011)
    dropped = ws_open(port, "/drop")
    tcp += 1
    dropped.echo_roundtrip("last words")
    dropped.sock.close()
    for c in (c0, c1, c2, c3, c4):
        c.close()
    received = N * M + 2 + 1  # + close:4100 + boom + last words
    sent = N * M + 1

    # refused handshakes: 426 (version 8), 400 (no key, twice), 403 (the app's upgrade)
    assert http(port, raw=ws_request("/", port, version="8"))[0] == 426
    assert http(port, raw=ws_request("/", port, key=False))[0] == 400
    assert http(port, raw=ws_request("/", port, key=False))[0] == 400
    status, _, body = http(port, raw=ws_request("/deny", port))
    assert (status, body) == (403, b"denied\n")
    tcp += 4

    # /healthz: GET and HEAD
    status, headers, body = http(port, "/healthz")
    assert (status, body) == (200, b"ok\n"), (status, body)
    status, headers, body = http(port, "/healthz", method="HEAD")
    assert status == 200 and body == b"", (status, body)
    assert headers.get("content-length") == "3", headers
    tcp += 2

    def closes_settled():
        nonlocal tcp
        tcp += 1
        got = scrape(port)
        return got if m(got[0], "wsserver_closes_total", code=1006) == 1 else None

    s1, families = wait_for(closes_settled, what="the dropped connection to be counted (1006)")
    expected_types = {
        "wsserver_connections_open": "gauge", "wsserver_connections": "counter",
        "wsserver_messages_received": "counter", "wsserver_messages_sent": "counter",
        "wsserver_bytes_received": "counter", "wsserver_bytes_sent": "counter",
        "wsserver_messages_dropped": "counter", "wsserver_send_queue_bytes": "gauge",
        "wsserver_handler_errors": "counter", "wsserver_closes": "counter",
        "wsserver_handshake_rejections": "counter", "wsserver_reloads": "counter",
        "wsserver_handler_duration_seconds": "histogram",
    }
    for name, kind in expected_types.items():
        assert families.get(name) == kind, f"{name}: {families.get(name)} (all: {families})"

    def check_exact(s, tcp_seen, extra_received=0, extra_sent=0):
        assert m(s, "wsserver_connections_open") == 1, "c5 is the one connection still open"
        assert m(s, "wsserver_connections_total") == tcp_seen
        assert m(s, "wsserver_messages_received_total") == received + extra_received
        assert m(s, "wsserver_messages_sent_total") == sent + extra_sent
        assert m(s, "wsserver_bytes_received_total") >= payload_bytes
        assert m(s, "wsserver_bytes_sent_total") >= payload_bytes
        assert m(s, "wsserver_messages_dropped_total") == 0
        assert m(s, "wsserver_send_queue_bytes") == 0
        assert m(s, "wsserver_handler_errors_total") == 1
        assert labelled(s, "wsserver_closes_total", "code") == \
            {"1000": 1, "4001": 2, "4100": 1, "1011": 1, "1006": 1}
        assert labelled(s, "wsserver_handshake_rejections_total", "status") == \
            {"426": 1, "400": 2, "403": 1}
        buckets = labelled(s, "wsserver_handler_duration_seconds_bucket", "le")
        count = m(s, "wsserver_handler_duration_seconds_count")
        values = [v for _, v in sorted(((float(k), v) for k, v in buckets.items()))]
        assert values == sorted(values), f"histogram buckets not cumulative: {buckets}"
        assert buckets["+Inf"] == count
        # every message and every upgrade ran a handler
        assert count >= received + extra_received + (N + 1 + 1), count
        assert m(s, "wsserver_handler_duration_seconds_sum") > 0

    check_exact(s1, tcp)

    # more traffic, then the second scrape: exact deltas, nothing went down
    for j in range(10):
        c5.send_text(f"more-{j}")
        c5.expect_message(wsraw.OP_TEXT, f"more-{j}")
    s2, _ = scrape(port)
    tcp += 1
    check_exact(s2, tcp, extra_received=10, extra_sent=10)

    def assert_monotonic(before, after):
        for (name, labels), v in before.items():
            if name.endswith(("_total", "_count", "_sum", "_bucket")):
                assert after.get((name, labels), 0) >= v, f"{name}{dict(labels)} went down"

    assert_monotonic(s1, s2)

    # across reloads: counters keep counting, reloads are counted by result
    app = pathlib.Path(server.app)
    source = app.read_text()
    app.write_text("return {")  # fails
    server.signal(signal.SIGHUP)
    wait_for(lambda: "app_load_failed" in server.log(), what="the failed reload")
    app.write_text(source)
    server.signal(signal.SIGHUP)
    wait_for(lambda: re.search(r"app_loaded .*generation=2", server.log()), what="the reload")
    c5.echo_roundtrip("after reload")
    s3, _ = scrape(port)
    tcp += 1
    check_exact(s3, tcp, extra_received=11, extra_sent=11)
    assert m(s3, "wsserver_reloads_total", result="ok") == 1
    assert m(s3, "wsserver_reloads_total", result="failed") == 1
    assert_monotonic(s2, s3)
    c5.send_close(1000)
    c5.expect_close(1000, reply=False)
    c5.close()


def test_metrics_off_by_default_healthz_always(wsserver_factory):
    server = wsserver_factory(app_source=ECHO_APP)
    status, _, body = http(server.port, "/metrics")
    assert status != 200 and b"wsserver_" not in body, (status, body[:200])
    status, _, body = http(server.port, "/healthz")
    assert (status, body) == (200, b"ok\n")


# ---- 5. logs ------------------------------------------------------------------------------------

LOG_APP = """
return {
  upgrade = function(req)
    ws.log.info("hello", {ua = req.headers["user-agent"] or "", path = req.path})
  end,
  message = function(conn, data, kind)
    conn:send(#data .. " bytes", "text")
  end,
}
"""

# What the peer controls and the parser lets through: quotes, backslashes, '<>', high bytes
# (obs-text: raw UTF-8 and invalid UTF-8), percent escapes of CR/LF; then a query with a token.
HOSTILE_PATH = b'/p"q\\r<x>\xc3\xa9\xff\xfe%0d%0a%22level=error'
SECRET_QUERY = b"?token=SECRET-QUERY-7f3a&x=%0a"
HOSTILE_UA = b'evil"\\agent\t\xff\xc3\xa9 level=error event=forged'
FORGED = "\n2030-01-01T00:00:00.000Z level=error event=forged peer=\"1.2.3.4\""


def hostile_session(port):
    """Drives the hostile client; returns the secrets that must never appear in the log and the
    number of HTTP answers (access lines) it caused."""
    secret_text = "SECRET-PAYLOAD-c0ffee" + FORGED
    secret_bin = b"SECRET-BINARY-beef\n\x00\xff" + FORGED.encode()
    answers = 0
    # 1. a WebSocket with a hostile target, query and User-Agent
    c = ws_open(port, HOSTILE_PATH + SECRET_QUERY, extra=[b"User-Agent: " + HOSTILE_UA])
    answers += 1
    c.send_text(secret_text)
    c.expect_message(wsraw.OP_TEXT, f"{len(secret_text.encode())} bytes")
    c.send_binary(secret_bin)
    c.expect_message(wsraw.OP_TEXT, f"{len(secret_bin)} bytes")
    # invalid UTF-8 carrying a secret: a protocol error (1007) that must not log the payload
    bad = ws_open(port, "/bad")
    answers += 1
    bad.send_frame(wsraw.OP_TEXT, b"SECRET-INVALID-dead\xff\xfe")
    bad.expect_close(1007)
    bad.close()
    # the close reason is the peer's too (logged at debug)
    c.send_close(4000, FORGED.encode())
    c.expect_close(4000, reply=False)
    c.close()
    # 2. refused handshake (426) and plain HTTP (426) with the hostile target
    assert http(port, raw=ws_request(HOSTILE_PATH + SECRET_QUERY, port, version="7"))[0] == 426
    raw = b"GET " + HOSTILE_PATH + SECRET_QUERY + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert http(port, raw=raw)[0] == 426
    # 3. a DEL byte in the target, a bare LF in the request line: 400
    assert http(port, raw=b"GET /del\x7fete?token=SECRET-DEL HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 400
    raw = b"GET /a\nforged: SECRET-LF HTTP/1.1\r\nHost: x\r\n\r\n"
    assert http(port, raw=raw)[0] == 400
    answers += 4
    return ["SECRET-PAYLOAD", "SECRET-BINARY", "SECRET-INVALID", "SECRET-QUERY", "SECRET-DEL",
            "SECRET-LF", "forged"], answers


def test_text_log_of_a_hostile_client(wsserver_factory):
    server = wsserver_factory(app_source=LOG_APP, args=["--log-level", "debug"])
    secrets, answers = hostile_session(server.port)
    wait_for(lambda: server.log().count("event=access") >= answers, what="access lines")
    wait_for(lambda: "code=4000" in server.log(), what="the close line")
    raw = log_bytes(server)
    for secret in secrets[:-1]:
        assert secret.encode() not in raw, f"{secret} appears in the log:\n{raw.decode('latin-1')}"
    records = parse_text_log(raw)  # one well-formed line per event, nothing raw
    assert b'path="/p\\"q\\\\r<x>\\xc3\\xa9\\xff\\xfe%0d%0a%22level=error"' in raw, raw
    assert not any(r["event"] == "forged" for r in records)

    access = [r for r in records if r["event"] == "access"]
    assert len(access) == answers, [r for r in access]
    for r in access:
        assert set(r) >= {"ts", "level", "event", "conn", "peer", "status", "path", "ms"}, r
        assert re.fullmatch(r'"127\.0\.0\.1:\d+"', r["peer"]), r
        assert re.fullmatch(r"\d+\.\d{3}", r["ms"]), r
        path = unescape_text(r["path"])
        assert b"?" not in path and b"SECRET" not in path, r
    by_status = {}
    for r in access:
        by_status.setdefault(r["status"], []).append(unescape_text(r["path"]))
    # the escaping is exact: the logged path decodes to the bytes the peer sent, minus the query
    assert by_status["101"] == [HOSTILE_PATH, b"/bad"], by_status
    assert by_status["426"] == [HOSTILE_PATH, HOSTILE_PATH], by_status
    assert len(by_status["400"]) == 2, by_status

    hello = [r for r in records if r["event"] == "app" and r.get("msg") == '"hello"']
    assert len(hello) == 2, hello
    assert unescape_text(hello[0]["ua"]) == HOSTILE_UA, hello[0]
    assert unescape_text(hello[0]["path"]) == HOSTILE_PATH, hello[0]

    closes = [r for r in records if r["event"] == "close"]
    assert len(closes) == len({r["conn"] for r in closes}) == 2, closes
    reasons = {r["code"]: unescape_text(r["reason"]) for r in closes if "reason" in r}
    assert reasons.get("4000") == FORGED.encode(), closes


def test_json_log_of_a_hostile_client(wsserver_factory):
    server = wsserver_factory(app_source=LOG_APP,
                              args=["--log-format", "json", "--log-level", "debug"])
    secrets, answers = hostile_session(server.port)
    wait_for(lambda: server.log().count('"event":"access"') >= answers, what="access lines")
    wait_for(lambda: '"code":4000' in server.log(), what="the close line")
    raw = log_bytes(server)
    for secret in secrets[:-1]:
        assert secret.encode() not in raw, f"{secret} appears in the log:\n{raw.decode('latin-1')}"
    records = parse_json_log(raw)
    assert not any(r["event"] == "forged" for r in records)
    assert b'"path":"/p\\"q\\\\r<x>\\u00c3\\u00a9\\u00ff\\u00fe%0d%0a%22level=error"' in raw, raw
    events = {r["event"] for r in records}
    assert {"listen", "app_loaded", "access", "app", "close"} <= events, events

    access = [r for r in records if r["event"] == "access"]
    assert len(access) == answers
    for r in access:
        assert isinstance(r["status"], int) and isinstance(r["conn"], int), r
        assert isinstance(r["ms"], (int, float)) and r["ms"] >= 0, r
        assert isinstance(r["path"], str) and "?" not in r["path"], r
        assert re.fullmatch(r"127\.0\.0\.1:\d+", r["peer"]), r
    # \u00NN per byte: the logged path stands for exactly the bytes sent (minus the query)
    paths = {}
    for r in access:
        paths.setdefault(r["status"], []).append(r["path"].encode("latin-1"))
    assert paths[101] == [HOSTILE_PATH, b"/bad"], paths
    assert paths[426] == [HOSTILE_PATH, HOSTILE_PATH], paths
    hello = [r for r in records if r["event"] == "app" and r.get("msg") == "hello"]
    assert hello and hello[0]["ua"].encode("latin-1") == HOSTILE_UA, hello
    close = [r for r in records if r["event"] == "close" and r.get("code") == 4000]
    assert len(close) == 1 and close[0]["reason"].encode("latin-1") == FORGED.encode(), close


FAILING_APP = """
local function deeper(data) error("bad input: " .. data) end
return {
  message = function(conn, data) deeper(data) end,
}
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_handler_error_names_its_connection_and_keeps_the_traceback_readable(wsserver_factory,
                                                                           fmt):
    server = wsserver_factory(app_source=FAILING_APP, args=["--log-format", fmt])
    c = ws_open(server.port)
    c.send_text("x\ty")
    c.expect_close(1011, reply=True)
    c.close()
    mark = "handler_error"
    wait_for(lambda: mark in server.log(), what="the handler_error line")
    raw = log_bytes(server)
    if fmt == "json":
        records = parse_json_log(raw)
    else:
        records = parse_text_log(raw)  # still one line per event, no raw control byte
    errors = [r for r in records if r["event"] == "handler_error"]
    assert len(errors) == 1, errors
    r = errors[0]
    access = [a for a in records if a["event"] == "access"]
    if fmt == "json":
        assert r["handler"] == "message" and r["conn"] == access[0]["conn"], r
        text = r["error"]
    else:
        assert r["handler"] == '"message"' and r["conn"] == access[0]["conn"], r
        text = unescape_text(r["error"]).decode()
    lines = text.split("\n")
    # the message (with the peer's tab kept), then a real multi-line traceback
    assert lines[0].endswith(": bad input: x\ty"), lines
    assert lines[1] == "stack traceback:", lines
    assert any("in upvalue 'deeper'" in line or "in local 'deeper'" in line
               or "deeper" in line for line in lines[2:]), lines
    assert all(line.startswith("\t") for line in lines[2:]), lines


def test_protocol_error_logged_once_when_the_client_answers_the_close(wsserver_factory):
    server = wsserver_factory(app_source=ECHO_APP, args=["--log-level", "debug",
                                                         "--max-message-size", "16"])
    cases = [(b"/utf8", wsraw.OP_TEXT, b"abc\xff", 1007), (b"/big", wsraw.OP_TEXT, b"x" * 40, 1009),
             (b"/op", 0x3, b"x", 1002)]
    for path, opcode, payload, code in cases:
        c = ws_open(server.port, path)
        c.send_frame(opcode, payload)
        c.expect_close(code, reply=True)  # what RFC 6455 §5.5.1 asks of the client
        c.close()
    wait_for(lambda: server.log().count("event=close ") == len(cases), what="the close lines")
    lines = [ln for ln in server.log().splitlines() if "event=protocol_error" in ln]
    per_conn = {}
    for ln in lines:
        conn = re.search(r" conn=(\d+)", ln)[1]
        per_conn[conn] = per_conn.get(conn, 0) + 1
    assert list(per_conn.values()) == [1] * len(cases), "\n".join(lines)


def test_log_level_warn_hides_access_lines(wsserver_factory):
    server = wsserver_factory(app_source=ECHO_APP, args=["--log-level", "warn"])
    with ws_open(server.port, "/chat?token=x") as c:
        c.echo_roundtrip()
    assert http(server.port, "/healthz")[0] == 200
    assert http(server.port, raw=ws_request("/", server.port, key=False))[0] == 400
    time.sleep(0.2)
    log = server.log()
    assert "event=access" not in log and "level=info" not in log, log
    # and warnings still come through at warn: a 503 (server full) is an access line at warn
    full = wsserver_factory(app_source=ECHO_APP, args=["--log-level", "warn",
                                                       "--max-connections", "1"])
    with ws_open(full.port) as c:
        assert http(full.port, raw=ws_request("/", full.port))[0] == 503
        c.echo_roundtrip()
    wait_for(lambda: "event=access" in full.log(), what="the 503 access line")
    lines = [ln for ln in full.log().splitlines() if "event=access" in ln]
    assert len(lines) == 1 and "status=503" in lines[0] and "level=warn" in lines[0], lines


def flood(port, n):
    """n refused handshakes (400: no key) sent as close together as possible, starting just
    after a wall-clock second begins. Returns when every answer arrived."""
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((HOST, port), timeout=5)
            socks.append(s)
        request = ws_request("/flood", port, key=False)
        while time.time() % 1.0 > 0.05:  # start at the top of a second
            time.sleep(0.005)
        for s in socks:
            s.sendall(request)
        for s in socks:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                assert chunk, f"connection closed without an answer: {data!r}"
                data += chunk
            assert data.startswith(b"HTTP/1.1 400 "), data[:80]
    finally:
        for s in socks:
            s.close()


def test_flood_control_of_access_lines(wsserver_factory):
    server = wsserver_factory(app_source=ECHO_APP)
    n = 300
    flood(server.port, n)
    # the count of what was suppressed is written once the second is over: another access
    # line in a later second brings it out
    time.sleep(1.1)
    assert http(server.port, "/healthz")[0] == 200

    def settled():
        return [r for r in parse_text_log(log_bytes(server)) if r["event"] == "suppressed"]

    wait_for(settled, timeout=5, what="a suppressed line")
    records = parse_text_log(log_bytes(server))
    refused = [r for r in records if r["event"] == "access" and r["status"] == "400"]
    per_second = {}
    for r in refused:
        per_second[r["ts"][:19]] = per_second.get(r["ts"][:19], 0) + 1
    assert all(v <= 100 for v in per_second.values()), per_second
    suppressed = [r for r in records if r["event"] == "suppressed"]
    assert all(r["of"] == '"access"' and r["level"] == "warn" for r in suppressed), suppressed
    counted = sum(int(r["lines"]) for r in suppressed)
    assert len(refused) + counted == n, (per_second, suppressed)
    assert counted >= n - 100 * len(per_second), (per_second, suppressed)
    # the flood did not hide the next second's lines
    assert [r for r in records if r["event"] == "access" and r["path"] == '"/healthz"']


def test_flood_suppressed_count_reported_without_further_lines(wsserver_factory):
    server = wsserver_factory(app_source=ECHO_APP)
    n = 600
    flood(server.port, n)
    time.sleep(1.5)  # the second is over; no further access line comes
    server.signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    records = parse_text_log(log_bytes(server))
    shown = sum(1 for r in records if r["event"] == "access" and r["status"] == "400")
    counted = sum(int(r["lines"]) for r in records if r["event"] == "suppressed")
    assert shown + counted == n, f"{n - shown - counted} access lines suppressed and never counted"


# ---- 6. graceful shutdown -----------------------------------------------------------------------

BURST_APP = """
local PAD = string.rep("p", 20000)
return {
  message = function(conn, data)
    if data == "burst" then
      for i = 1, 500 do
        local ok, err = conn:send(i .. ":" .. PAD)
        if not ok then error("send " .. i .. " failed: " .. tostring(err)) end
      end
      ws.log.info("burst_queued", {conn = conn.id, buffered = conn:buffered()})
    end
  end,
  shutdown = function(reason)
    ws.log.info("app_shutdown", {reason = reason, open = ws.count()})
    ws.broadcast("bye:" .. reason)
  end,
}
"""


def test_graceful_shutdown_delivers_queued_output(wsserver_factory):
    timeout = 6
    server = wsserver_factory(app_source=BURST_APP, args=[
        "--max-buffered", str(64 << 20), "--shutdown-timeout", str(timeout),
        "--log-level", "debug", "--metrics"])
    port = server.port
    nclients = 5

    async def scenario():
        conns = [await ws_connect(server.url, close_timeout=timeout) for _ in range(nclients)]
        for ws in conns:
            await ws.send("burst")
        # every burst is queued (10 MB a client), unread
        deadline = time.monotonic() + 10
        while server.log().count("event=app msg=\"burst_queued\"") < nclients:
            assert time.monotonic() < deadline, server.log()
            await asyncio.sleep(0.01)
        server.signal(signal.SIGTERM)
        t0 = time.monotonic()
        # 10 MB a client went into the server's queue (conn:buffered() right after the burst),
        # far beyond what the socket buffers took at once
        queued = [int(b) for b in re.findall(r'msg="burst_queued" .*buffered=(\d+)', server.log())]
        assert len(queued) == nclients and min(queued) > 2_000_000, queued

        # new connections are refused at once, /healthz never says 200 again
        await asyncio.sleep(0.05)
        with pytest.raises(OSError):
            socket.create_connection((HOST, port), timeout=1).close()
        try:
            status = http(port, "/healthz", timeout=1)[0]
            assert status == 503, status
        except OSError:
            pass

        async def drain(ws):
            got = []
            try:
                while True:
                    msg = await asyncio.wait_for(ws.recv(), timeout + 2)
                    got.append(msg)
                    if len(got) % 50 == 0:
                        await asyncio.sleep(0.002)  # an ordinary reader, not a greedy one
            except websockets.exceptions.ConnectionClosed as e:
                return got, e.rcvd.code if e.rcvd else None, e.rcvd_then_sent

        results = await asyncio.gather(*(drain(ws) for ws in conns))
        return results, t0

    results, t0 = run(scenario(), timeout=40)
    code = server.proc.wait(timeout + 2)
    elapsed = time.monotonic() - t0
    assert code == 0, server.log()
    assert elapsed <= timeout + 1, f"exit took {elapsed:.1f} s (shutdown_timeout {timeout})"
    for got, close_code, _ in results:
        numbers = [int(x.split(":", 1)[0]) for x in got[:-1]]
        assert numbers == list(range(1, 501)), \
            f"lost or reordered: got {len(numbers)} numbered messages, first gap near " \
            f"{next((i for i, n in enumerate(numbers, 1) if i != n), None)}"
        assert got[-1] == "bye:SIGTERM", got[-1][:40]
        assert close_code == 1001, close_code
    log = server.log()
    shutdown_at = log.index("event=shutdown")
    app_at = log.index('event=app msg="app_shutdown"')
    first_close = log.find("event=close ")
    assert shutdown_at < app_at and (first_close < 0 or app_at < first_close), log[-3000:]
    assert re.search(r'event=app msg="app_shutdown" .*reason="SIGTERM"', log), log[-2000:]
    assert "event=handler_error" not in log


def recv_exact(sock, n, buf):
    """Blocking read of n bytes (after what buf already holds); select() cannot watch the
    descriptors above 1024 this test needs."""
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise wsraw.ConnectionClosed(f"EOF after {bytes(buf[:64])!r}")
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def test_shutdown_closes_every_connection_in_batches(wsserver_factory):
    n = 1200  # three batches of 500
    server = wsserver_factory(app_source=ECHO_APP, args=["--shutdown-timeout", "10"])
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((HOST, server.port), timeout=10)
            s.sendall(wsraw.build_request(key=wsraw.new_key()))
            socks.append(s)
        for s in socks:
            head = bytearray()
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                assert chunk, f"closed during the handshake: {bytes(head)!r}"
                head += chunk
            assert head.startswith(b"HTTP/1.1 101 ") and head.endswith(b"\r\n\r\n"), head
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        codes = {}
        for s in socks:
            buf = bytearray()
            b0, b1 = recv_exact(s, 2, buf)
            assert b0 == 0x88 and 2 <= b1 <= 125, (hex(b0), b1)
            payload = recv_exact(s, b1, buf)
            code = int.from_bytes(payload[:2], "big")
            codes[code] = codes.get(code, 0) + 1
            s.sendall(wsraw.encode_frame(wsraw.OP_CLOSE, payload[:2]))
        for s in socks:
            assert s.recv(16) == b"", "bytes after the close frame"
            s.close()  # the server closed first; a client then closes its end too
        assert codes == {1001: n}, codes
        assert server.proc.wait(10) == 0
        took = time.monotonic() - t0
        assert took < 4, f"every client answered at once, yet the exit took {took:.1f} s"
    finally:
        for s in socks:
            s.close()
    assert re.search(rf"event=shutdown reason=\"SIGTERM\" connections={n}\n", server.log()), \
        server.log()[-500:]


def test_shutdown_timeout_bounds_the_wait_for_silent_clients(wsserver_factory):
    """A client that never reads nor answers the close cannot hold the exit past
    shutdown_timeout; the exit is still 0."""
    server = wsserver_factory(app_source=BURST_APP, args=["--shutdown-timeout", "2",
                                                          "--close-timeout", "30",
                                                          "--max-buffered", str(64 << 20)])
    silent = ws_open(server.port)
    silent.send_text("burst")  # 10 MB it will never read
    wait_for(lambda: "burst_queued" in server.log(), what="the burst")
    polite = ws_open(server.port)
    t0 = time.monotonic()
    server.signal(signal.SIGTERM)
    assert polite.recv_message() == (wsraw.OP_TEXT, b"bye:SIGTERM")
    polite.expect_close(1001)
    polite.close()
    code = server.proc.wait(10)
    took = time.monotonic() - t0
    silent.close()
    assert code == 0, server.log()
    assert 1.5 <= took <= 3.5, f"exit {took:.1f} s after SIGTERM with shutdown_timeout 2"


def test_sigint_is_graceful_too(wsserver_factory):
    server = wsserver_factory(app_source=BURST_APP)
    with ws_open(server.port) as c:
        server.signal(signal.SIGINT)
        assert c.recv_message() == (wsraw.OP_TEXT, b"bye:SIGINT")
        c.expect_close(1001)
    assert server.proc.wait(10) == 0


# ---- 7. exit codes ------------------------------------------------------------------------------

def wsserver(*args, timeout=10, cwd=None):
    try:
        return subprocess.run([BINARY, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"wsserver {' '.join(map(str, args))} kept running")


def test_exit_codes(tmp_path):
    good = tmp_path / "good.lua"
    good.write_text(ECHO_APP)
    syntax = tmp_path / "syntax.lua"
    syntax.write_text("return {\n  message = function(conn, data)\n    conn:send(data\n  end,\n}\n")
    runtime = tmp_path / "runtime.lua"
    runtime.write_text('error("refusing to load")\n')
    badfield = tmp_path / "badfield.lua"
    badfield.write_text("return { mesage = function() end }\n")
    port = free_port()
    listen = f"{HOST}:{port}"

    # 2: usage
    r = wsserver("--frobnicate", good)
    assert r.returncode == 2 and "--frobnicate" in r.stderr, r
    r = wsserver("-x", good)
    assert r.returncode == 2, r
    r = wsserver()
    assert r.returncode == 2 and r.stderr, r
    r = wsserver(good, "--max-message-size")
    assert r.returncode == 2 and "max-message-size" in r.stderr, r
    for opt, value in [("--max-message-size", "-1"), ("--max-message-size", "12abc"),
                       ("--ping-interval", "-5"), ("--log-format", "xml"),
                       ("--log-level", "loud"), ("--workers", "-2"),
                       ("--max-connections", "0x"), ("--backpressure", "maybe")]:
        r = wsserver("-l", listen, opt, value, good)
        assert r.returncode == 2, (opt, value, r.returncode, r.stderr)
        name = opt[2:]
        assert name in r.stderr or name.replace("-", "_") in r.stderr, (opt, r.stderr)
    r = wsserver("-l", listen, "--max-message-size=-1", good)
    assert r.returncode == 2 and "max_message_size" in r.stderr.replace("-", "_"), r

    # 1: the app cannot load (syntax error, runtime error, bad table): message names the file
    for app in (syntax, runtime, badfield):
        r = wsserver("-l", listen, app)
        assert r.returncode == 1, (app.name, r.returncode, r.stderr)
        assert app.name in r.stderr, r.stderr
    r = wsserver("-l", listen, syntax)
    assert "syntax.lua:4" in r.stderr or "syntax.lua:3" in r.stderr, r.stderr
    r = wsserver("-l", listen, tmp_path / "missing.lua")
    assert r.returncode == 1 and "missing.lua" in r.stderr, r

    # 1: the listen address is taken
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        r = wsserver("-l", f"{HOST}:{busy}", good)
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert str(busy) in r.stderr and "in use" in r.stderr.lower(), r.stderr

    # --check: 0 / 1, nothing served
    r = wsserver("--check", good)
    assert r.returncode == 0 and "ok" in r.stdout, r
    for app in (syntax, runtime, badfield):
        r = wsserver("--check", app)
        assert r.returncode == 1, (app.name, r.returncode, r.stderr)
        assert app.name in r.stderr, r.stderr
    # --reload of nothing: 1
    r = wsserver("--reload", tmp_path / "no.pid")
    assert r.returncode == 1 and "no.pid" in r.stderr, r
    # --help and --version: 0
    assert wsserver("--help").returncode == 0
    r = wsserver("--version")
    assert r.returncode == 0 and r.stdout.startswith("wsserver "), r
