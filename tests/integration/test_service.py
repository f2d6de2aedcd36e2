"""Running wsserver as a service (README "Operations"; docs/wsserver.1; contrib/):

1. sd_notify: READY=1 once serving, RELOADING=1 then READY=1 around every reload (failed ones
   too), STOPPING=1 when the shutdown begins; a path or an abstract ('@') NOTIFY_SOCKET; with
   --workers the workers and the master notify. Faked with a Python datagram socket.
2. `wsserver --reload` when the server's /tmp is private (systemd PrivateTmp=, reproduced with a
   mount namespace): the answer travels through the pidfile's folder / $RUNTIME_DIRECTORY, and a
   refused reload is exit 1 (what `systemctl reload` reports).
3. --log-file: lines appended to the file, not stderr; SIGUSR1 after a rename starts a fresh
   file (logrotate), in every worker and the master too; a file that cannot open is exit 1.
4. The man page: docs/wsserver.1 is what the template and the option table give; it names every
   option with its default, every log event and field in src/, every metric, every environment
   variable read, every signal handled.
5. `make deb`: contents, control fields, conffiles, maintainer scripts (sh -n), the unit
   (systemd-analyze verify), and the unpacked binary serving the packaged chat app.

Only 127.0.0.1 is used; every process started here is stopped by its PID.
"""
import asyncio
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

import wsraw
from wsclient import connect as ws_connect, terminate
from wsclient import run
from wsclient import wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("WSSERVER", str(ROOT / "build" / "wsserver"))
HOST = "127.0.0.1"

TEST_BUDGET = 150  # seconds per test (conftest enforces it); make deb builds the whole server

ECHO_APP = """
return {
  message = function(conn, data, kind) conn:send(data, kind) end,
}
"""


class Proc:
    """One wsserver started with env and an optional command prefix; output to a file."""

    def __init__(self, tmp_path, app, args=(), env=None, prefix=(), name="server"):
        self.port = wsraw.free_port()
        self.out = tmp_path / f"{name}.out"
        self._f = open(self.out, "wb")
        cmd = [*prefix, BINARY, "-l", f"{HOST}:{self.port}", *args, str(app)]
        self.proc = subprocess.Popen(cmd, stdout=self._f, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=str(tmp_path))
        self.pid = self.proc.pid

    def wait_listening(self):
        try:
            wsraw.wait_listening(self.proc, self.port, 10.0, HOST)
        except RuntimeError as e:
            raise AssertionError(f"{e}:\n{self.output()}") from None

    def output(self):
        return self.out.read_text(errors="replace")

    def stop(self):
        """SIGTERM, wait; kill if it hangs. Returns the exit code."""
        terminate(self.proc)
        self._f.close()
        return self.proc.returncode


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        p.stop()


def start(procs, *a, **kw):
    p = Proc(*a, **kw)
    procs.append(p)
    return p


def echo(port, text="hi"):
    with wsraw.connect(port) as c:
        c.echo_roundtrip(text)


def write_app(tmp_path, source=ECHO_APP, name="app.lua"):
    app = tmp_path / name
    app.write_text(source)
    return app


# ---- 1. sd_notify -------------------------------------------------------------------------------

class Notifications:
    """A NOTIFY_SOCKET: a unix datagram socket bound to a path or an abstract name."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address if not address.startswith("@") else "\0" + address[1:])
        self.env = {"NOTIFY_SOCKET": address}
        self.seen = []

    def next(self, timeout=10.0):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            raise AssertionError(f"no notification within {timeout} s; before: {self.seen}")
        fields = dict(line.split("=", 1) for line in data.split("\n") if line)
        self.seen.append(fields)
        return fields

    def expect(self, key, timeout=10.0):
        fields = self.next(timeout)
        assert fields.get(key) == "1", f"expected {key}=1, got {fields} (before: {self.seen})"
        return fields

    def quiet(self, seconds=0.3):
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return
        raise AssertionError(f"unexpected notification {data!r}")

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notify_ready_reloading_stopping(procs, tmp_path, kind):
    address = str(tmp_path / "notify.sock") if kind == "path" else f"@wsserver-test-{os.getpid()}"
    notes = Notifications(address)
    try:
        app = write_app(tmp_path)
        server = start(procs, tmp_path, app, env=notes.env)
        ready = notes.expect("READY")
        # READY=1 means serving: the listener accepts at once
        echo(server.port)
        assert "STATUS" in ready

        # a reload: RELOADING=1 (with MONOTONIC_USEC, as systemd >= 253 wants), then READY=1
        r = subprocess.run([BINARY, "--reload", str(server.pid)], capture_output=True, text=True,
                           timeout=15)
        assert r.returncode == 0, (r.stdout, r.stderr)
        reloading = notes.expect("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 <= usec - int(reloading["MONOTONIC_USEC"]) < 30_000_000, reloading
        notes.expect("READY")

        # a refused reload ends with READY=1 too: the running version still serves
        app.write_text("return {\n")
        r = subprocess.run([BINARY, "--reload", str(server.pid)], capture_output=True, text=True,
                           timeout=15)
        assert r.returncode == 1 and "result=failed" in r.stdout, (r.stdout, r.stderr)
        notes.expect("RELOADING")
        notes.expect("READY")
        echo(server.port, "still served")

        # ws.reload() and --watch reload through the same path; SIGTERM: STOPPING=1 first
        server.proc.send_signal(signal.SIGTERM)
        notes.expect("STOPPING")
        assert server.proc.wait(10) == 0, server.output()
        notes.quiet()
    finally:
        notes.close()


def test_notify_with_workers(procs, tmp_path):
    notes = Notifications(str(tmp_path / "notify.sock"))
    try:
        server = start(procs, tmp_path, write_app(tmp_path), args=["--workers", "2"],
                       env=notes.env)
        # each worker says READY=1 once it serves (the unit has NotifyAccess=all)
        notes.expect("READY")
        notes.expect("READY")
        echo(server.port)
        server.proc.send_signal(signal.SIGHUP)
        got = [notes.next() for _ in range(4)]
        assert sorted(k for f in got for k in f if k in ("RELOADING", "READY")) == \
            ["READY", "READY", "RELOADING", "RELOADING"], got
        server.proc.send_signal(signal.SIGTERM)
        # the master says STOPPING=1, and so does each worker as its shutdown begins
        got = [notes.next() for _ in range(3)]
        assert all(f.get("STOPPING") == "1" for f in got), got
        assert server.proc.wait(15) == 0, server.output()
    finally:
        notes.close()


def test_no_notify_socket_no_trouble(procs, tmp_path):
    """Without NOTIFY_SOCKET (or with one nobody listens on) the server runs as always."""
    server = start(procs, tmp_path, write_app(tmp_path),
                   env={"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    server.wait_listening()
    echo(server.port)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "generation=2" in server.output(), 10, "the reload")
    assert server.stop() == 0


# ---- 2. --reload with a private /tmp ------------------------------------------------------------

def private_tmp_prefix():
    """A command prefix that runs the server with a /tmp of its own, as PrivateTmp= does."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /tmp"],
                           capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs unshare -m (root) to give the server a private /tmp")
    # the binary is opened before the mount and run through that descriptor: a build tree
    # under /tmp (a CI clone) would be hidden by the fresh /tmp
    return ["unshare", "-m", "sh", "-c",
            'exec 3<"$0" && mount -t tmpfs tmpfs /tmp && exec /proc/self/fd/3 "$@"']


@pytest.mark.parametrize("where", ["pidfile", "runtime_directory"])
def test_reload_with_a_private_tmp(procs, tmp_path, where):
    prefix = private_tmp_prefix()
    rundir = tmp_path / "run"
    rundir.mkdir()
    pidfile = rundir / "wsserver.pid"
    app = write_app(tmp_path)
    # tmp_path is under /tmp: the server reaches it through its working folder (relative
    # paths), which stays the real one when a fresh /tmp is mounted over it
    if where == "pidfile":
        args, env, target = ["--pidfile", "run/wsserver.pid"], {}, str(pidfile)
    else:
        # as under the unit's RuntimeDirectory=: both sides see $RUNTIME_DIRECTORY
        args, env, target = [], {"RUNTIME_DIRECTORY": "run"}, None
    server = start(procs, tmp_path, pathlib.Path(app.name), args=args, env=env, prefix=prefix)
    server.wait_listening()
    target = target or str(server.pid)
    status = rundir / f"wsserver-{server.pid}.status"
    # written when the app's start is reported, a moment after the port opens
    wait_for(status.exists, 10, f"the status file among {list(rundir.iterdir())}")
    assert not pathlib.Path(f"/tmp/wsserver-{server.pid}.status").exists(), \
        "the server's /tmp was meant to be private"

    env_cli = {**os.environ, **({"RUNTIME_DIRECTORY": str(rundir)} if env else {})}
    r = subprocess.run([BINARY, "--reload", target], capture_output=True, text=True, timeout=15,
                       env=env_cli)
    assert r.returncode == 0 and "result=ok generation=2" in r.stdout, (r.stdout, r.stderr)

    # what `systemctl reload` sees when the new version is refused: exit 1 and why
    app.write_text("return {\n")
    r = subprocess.run([BINARY, "--reload", target], capture_output=True, text=True, timeout=15,
                       env=env_cli)
    assert r.returncode == 1 and "result=failed" in r.stdout and "error=" in r.stdout, \
        (r.stdout, r.stderr)
    echo(server.port, "the old version still serves")

    assert server.stop() == 0, server.output()
    assert not status.exists(), "the status file outlived the server"
    assert not pidfile.exists()


# ---- 3. --log-file ------------------------------------------------------------------------------

def events(path):
    if not path.exists():
        return []
    return re.findall(r"event=(\w+)", path.read_text())


def test_log_file_and_reopen_on_sigusr1(procs, tmp_path):
    log = tmp_path / "logs" / "wsserver.log"
    log.parent.mkdir()
    log.write_text("an older line\n")  # appended to, never truncated
    server = start(procs, tmp_path, write_app(tmp_path), args=["--log-file", str(log)])
    server.wait_listening()
    echo(server.port)
    wait_for(lambda: "access" in events(log), 5, "the access line in the log file")
    assert log.read_text().startswith("an older line\n")
    assert "event=" not in server.output(), "lines went to stderr too"
    assert oct(log.stat().st_mode & 0o777) == "0o644"  # created by the test; kept as it is

    # logrotate: move the file away, SIGUSR1, new lines land in a fresh file
    rotated = log.with_name("wsserver.log.1")
    log.rename(rotated)
    echo(server.port)  # still written to the moved file: the server has it open
    wait_for(lambda: events(rotated).count("access") == 2, 5, "the line before the reopen")
    server.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log.exists() and "log_reopened" in events(log), 5, "a fresh log file")
    echo(server.port)
    wait_for(lambda: "access" in events(log), 5, "new lines in the fresh file")
    assert events(rotated).count("access") == 2, "a line after the reopen went to the old file"
    assert oct(log.stat().st_mode & 0o777) == "0o640"
    assert server.stop() == 0
    assert events(log)[-1] == "exit"


def test_log_file_with_workers_every_process_reopens(procs, tmp_path):
    log = tmp_path / "wsserver.log"
    server = start(procs, tmp_path, write_app(tmp_path),
                   args=["--workers", "2", "--log-file", str(log)])
    server.wait_listening()
    wait_for(lambda: events(log).count("app_loaded") == 2, 10, "both workers")
    log.rename(tmp_path / "wsserver.log.1")
    server.proc.send_signal(signal.SIGUSR1)
    # the master and both workers reopen: three log_reopened lines in the fresh file
    wait_for(lambda: events(log).count("log_reopened") == 3, 10, "three reopened processes")
    lines = log.read_text().splitlines()
    workers = {m.group(1) for m in (re.search(r"worker=(\d)", x) for x in lines) if m}
    assert workers == {"1", "2"}, lines
    assert server.stop() == 0
    assert "master_exit" in events(log)
    assert "event=" not in server.output()


def test_log_file_that_cannot_open(tmp_path):
    app = write_app(tmp_path)
    r = subprocess.run([BINARY, "-l", f"{HOST}:{wsraw.free_port()}", "--log-file",
                        str(tmp_path / "no" / "such" / "dir.log"), str(app)],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "log file" in r.stderr and "dir.log" in r.stderr, r.stderr
    # --check creates no log file
    r = subprocess.run([BINARY, "--check", "--log-file", str(tmp_path / "x.log"), str(app)],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "x.log").exists()


def test_sigusr1_without_a_log_file_is_harmless(procs, tmp_path):
    server = start(procs, tmp_path, write_app(tmp_path))
    server.wait_listening()
    for _ in range(3):
        server.proc.send_signal(signal.SIGUSR1)
    echo(server.port)
    assert server.proc.poll() is None
    assert server.stop() == 0


def test_logrotate_example_rotates_a_running_server(procs, tmp_path):
    """contrib/logrotate run for real (logrotate -f) on a server's log file: the rotated file
    keeps the old lines, the server writes on in a fresh one. Its postrotate falls back from
    `systemctl kill` (no systemd here) to the pidfile."""
    assert shutil.which("logrotate"), "logrotate is missing (scripts/install-deps.sh installs it)"
    logs = tmp_path / "log"
    logs.mkdir()
    pidfile = tmp_path / "wsserver.pid"
    conf = (ROOT / "contrib" / "logrotate").read_text()
    assert "USR1" in conf
    assert not [x for x in conf.splitlines() if "copytruncate" in x.split("#")[0]]
    conf = conf.replace("/var/log/wsserver", str(logs)).replace("/run/wsserver/wsserver.pid",
                                                                 str(pidfile))
    (tmp_path / "logrotate.conf").write_text(conf)
    log = logs / "wsserver.log"
    server = start(procs, tmp_path, write_app(tmp_path),
                   args=["--log-file", str(log), "--pidfile", str(pidfile)])
    server.wait_listening()
    echo(server.port)
    wait_for(lambda: "access" in events(log), 5, "the access line")
    r = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"),
                        str(tmp_path / "logrotate.conf")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    rotated = logs / "wsserver.log.1"  # delaycompress: the newest rotation stays plain
    assert "access" in events(rotated), sorted(p.name for p in logs.iterdir())
    wait_for(lambda: "log_reopened" in events(log), 5, "the server's fresh log file")
    echo(server.port)
    wait_for(lambda: "access" in events(log), 5, "new lines in the fresh file")
    assert server.stop() == 0


# ---- 4. the man page ----------------------------------------------------------------------------

def man_source():
    return (ROOT / "docs" / "wsserver.1").read_text()


def man_text():
    """docs/wsserver.1 as plain words: checked to render without warnings (man --warnings),
    then read from its source with the roff escapes taken out (no hyphenation to undo)."""
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-l", str(ROOT / "docs" / "wsserver.1")],
                           capture_output=True, text=True, timeout=30,
                           env={**os.environ, "MANPAGER": "cat", "PAGER": "cat",
                                "MANWIDTH": "100", "LANG": "C.UTF-8"})
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    text = re.sub(r"\\f[BIRP]", "", man_source()).replace("\\-", "-")
    text = re.sub(r"^\.(?:TP|PP|br|nf|fi|SH|TH|B|BR|BI|IR|I)\b ?", "", text, flags=re.M)
    return re.sub(r"\s+", " ", text.replace('"', ""))


def test_man_page_is_generated_from_the_option_table():
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gen-man.sh"), BINARY,
                        str(ROOT / "docs" / "wsserver.1.in")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == man_source(), "docs/wsserver.1 is stale: run `make man`"


def help_options():
    """(flag, config key, default) of every option, from --help-man (the option table)."""
    out = subprocess.run([BINARY, "--help-man"], capture_output=True, text=True,
                         timeout=10).stdout
    opts = re.findall(r"^\.B (?:\\-l, )?\\-\\-(\S+).*\n.*\n\.br\nConfig key \\fB(\w+)\\fR"
                      r"(?:; default \\fB([^\\]*(?:\\-[^\\]*)*)\\fR)?", out, re.M)
    assert len(opts) >= 30, out[:500]
    return [(f.replace("\\-", "-"), key, d.replace("\\-", "-")) for f, key, d in opts]


def test_help_and_man_list_every_option_with_its_default():
    help_text = subprocess.run([BINARY, "--help"], capture_output=True, text=True,
                               timeout=10).stdout
    man = man_text()
    for flag, key, default in help_options():
        assert f"--{flag}" in help_text, f"--help does not list --{flag}"
        assert key.replace("_", "-") == flag
        entry = re.search(rf"--{re.escape(flag)} .*?Config key {key};(.*?)\.(?: |$)", man)
        assert entry, f"the man page has no entry for --{flag}"
        if default:
            assert f"default {default}" in entry.group(1), (flag, entry.group(1))
        if flag in ("max-connections", "handler-timeout", "compression-level"):
            assert "range" in entry.group(1), entry.group(1)
    for flag in ("log-file", "workers", "redis", "compression", "metrics", "pidfile", "user"):
        assert f"--{flag} " in man, flag
    for command in ("--check", "--reload", "--test", "--help", "--version", "--help-man"):
        assert command in man and command in help_text, command
    for word in ("SIGHUP", "SIGTERM", "SIGINT", "SIGUSR1", "NOTIFY_SOCKET", "RUNTIME_DIRECTORY",
                 "ENVIRONMENT", "SIGNALS", "LOGGING", "METRICS", "EXIT STATUS"):
        assert word in man, word


def c_sources():
    return {p: p.read_text() for p in (ROOT / "src").rglob("*.c")}


def call_args(src, name):
    """The argument lists of every call of name in C source src (string-literal aware)."""
    for m in re.finditer(rf"\b{name}\s*\(", src):
        i, depth, args, cur = m.end(), 1, [], ""
        while depth:
            c = src[i]
            if c == '"':
                j = i + 1
                while src[j] != '"':
                    j += 2 if src[j] == "\\" else 1
                cur += src[i:j + 1]
                i = j + 1
                continue
            depth += c in "([" and 1 or (-1 if c in ")]" else 0)
            if depth and not (c == "," and depth == 1):
                cur += c
            elif c == ",":
                args.append(cur)
                cur = ""
            i += 1
        args.append(cur)
        yield [a.strip() for a in args]


def test_man_page_names_every_log_event_field_metric_and_variable():
    man = man_text()
    srcs = c_sources()
    events_found, keys = set(), set()
    # the event is the 3rd argument of ws_log_begin and log_conn, the 2nd of the others
    where = {"ws_log_begin": 2, "ws_connlog_event": 2, "ws_log_msg": 1, "log_worker": 1}
    for src in srcs.values():
        for name, pos in where.items():
            for args in call_args(src, name):
                if len(args) > pos:
                    events_found |= set(re.findall(r'"([a-z0-9_]+)"', args[pos]))
        for name in ("ws_log_str", "ws_log_cstr", "ws_log_u64", "ws_log_i64", "ws_log_ms"):
            for args in call_args(src, name):
                if len(args) > 1:
                    keys |= set(re.findall(r'"([a-z0-9_]+)"', args[1]))
    assert {"access", "app_loaded", "handler_error", "log_reopened", "close"} <= events_found
    assert {"conn", "peer", "status", "code", "reason", "ms"} <= keys
    words = set(re.findall(r"[A-Za-z0-9_]+", man))
    missing = sorted(e for e in events_found if e not in words)
    assert not missing, f"log events missing from the man page: {missing}"
    missing = sorted(k for k in keys if k not in words)
    assert not missing, f"log fields missing from the man page: {missing}"

    metrics = set(re.findall(r'"((?:wsserver|process)_[a-z_]+)',
                             srcs[ROOT / "src" / "core" / "metrics.c"]))
    metrics = {re.sub(r"_(bucket|sum|count)$", "", m) for m in metrics}
    assert len(metrics) >= 15, metrics
    missing = sorted(m for m in metrics if m not in words)
    assert not missing, f"metrics missing from the man page: {missing}"

    variables = {v for src in srcs.values() for v in re.findall(r'getenv\("(\w+)"\)', src)}
    assert {"NOTIFY_SOCKET", "RUNTIME_DIRECTORY", "WSSERVER_LUA_PATH"} <= variables
    missing = sorted(v for v in variables if v not in words)
    assert not missing, f"environment variables missing from the man page: {missing}"


# ---- 5. the Debian package ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    """`make deb` in a build folder of its own; the .deb's path."""
    build = tmp_path_factory.mktemp("debbuild")
    r = subprocess.run(["make", "-j4", "deb", f"BUILD={build}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=140)
    assert r.returncode == 0, f"make deb failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    version = subprocess.run([BINARY, "--version"], capture_output=True, text=True).stdout.split()[1]
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                          text=True).stdout.strip()
    path = build / f"wsserver_{version}_{arch}.deb"
    assert path.is_file(), sorted(p.name for p in build.iterdir())
    return path


def test_deb_contents_control_and_scripts(deb, tmp_path):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    owners = {line.split()[-1].lstrip("."): line.split()[1] for line in listing.splitlines()}
    for path in ("/usr/bin/wsserver", "/usr/share/wsserver/lua/ws/json.lua",
                 "/usr/share/wsserver/lua/ws/testing.lua", "/usr/share/man/man1/wsserver.1.gz",
                 "/usr/share/doc/wsserver/examples/chat/chat.lua",
                 "/usr/share/doc/wsserver/examples/echo.lua", "/lib/systemd/system/wsserver.service",
                 "/etc/wsserver/app.lua", "/etc/default/wsserver", "/etc/logrotate.d/wsserver",
                 "/usr/share/wsserver/chat/index.html"):
        assert path in files, f"{path} missing from the package:\n{listing}"
    assert all(o == "root/root" for o in owners.values()), owners

    control = tmp_path / "DEBIAN"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", (control / "control").read_text(), re.M))
    for key in ("Package", "Version", "Architecture", "Maintainer", "Description", "Depends",
                "Installed-Size"):
        assert fields.get(key), f"control field {key} missing: {fields}"
    assert fields["Package"] == "wsserver"
    for dep in ("libev4", "liblua5.4-0", "zlib1g", "libc6"):
        assert dep in fields["Depends"], fields["Depends"]
    conffiles = (control / "conffiles").read_text().split()
    assert {"/etc/wsserver/app.lua", "/etc/default/wsserver"} <= set(conffiles), conffiles
    for script in ("postinst", "prerm", "postrm"):
        path = control / script
        assert os.access(path, os.X_OK), script
        assert path.read_text().startswith("#!/bin/sh"), script
        r = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, (script, r.stderr)
    if os.path.isdir("/run/systemd/system"):
        return  # systemd runs here: the scripts would act on it; the run below needs it absent
    # Run them as dpkg would on a machine without systemd (a container, a chroot), every command
    # they call replaced by a stub that records it: they succeed, create the user, record the
    # enablement state with deb-systemd-helper, and never call systemctl.
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls"
    for name in ("getent", "groupadd", "useradd", "deb-systemd-helper", "deb-systemd-invoke",
                 "systemctl", "rm", "install"):
        stub = stubs / name
        code = "2" if name == "getent" else "0"  # getent: no such user yet
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit {code}\n')
        stub.chmod(0o755)

    def maint(script, *args):
        calls.write_text("")
        r = subprocess.run([str(control / script), *args], capture_output=True, text=True,
                           env={"PATH": str(stubs)}, timeout=10)
        assert r.returncode == 0, (script, args, r.stdout, r.stderr)
        return calls.read_text()

    done = maint("postinst", "configure", "")
    assert "groupadd --system wsserver" in done and "useradd --system" in done, done
    # was-enabled answers yes on a first install: enabled, to start at the next boot
    assert "deb-systemd-helper enable wsserver.service" in done, done
    assert "systemctl" not in done and "deb-systemd-invoke" not in done, done
    done = maint("postinst", "configure", "0.0.9")  # an upgrade
    assert "systemctl" not in done, done
    done = maint("prerm", "remove")
    assert "systemctl" not in done and "deb-systemd-invoke" not in done, done
    done = maint("prerm", "upgrade", "0.1.1")
    assert done == "", done
    done = maint("postrm", "remove")
    assert "deb-systemd-helper mask wsserver.service" in done and "systemctl" not in done, done
    done = maint("postrm", "purge")
    assert "deb-systemd-helper purge wsserver.service" in done, done
    assert "rm -rf /var/log/wsserver" in done, done
    # with systemd running they stop, reload and start it: the same lines behind the check
    prerm = (control / "prerm").read_text()
    assert re.search(r"/run/systemd/system.*\n.*\n\s*deb-systemd-invoke stop", prerm), prerm
    r = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_deb_unit_and_unpacked_server(deb, tmp_path):
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    exe = root / "usr" / "bin" / "wsserver"
    unit = (root / "lib" / "systemd" / "system" / "wsserver.service").read_text()
    assert re.search(r"^ExecStart=/usr/bin/wsserver ", unit, re.M), unit
    assert re.search(r"^ExecReload=/usr/bin/wsserver --reload /run/wsserver/wsserver.pid$",
                     unit, re.M), unit
    assert "Type=notify" in unit and "RuntimeDirectory=wsserver" in unit
    assert "EnvironmentFile=-/etc/default/wsserver" in unit
    assert "@" not in re.sub(r"^#.*$", "", unit, flags=re.M), "an unsubstituted @VAR@"
    verify_unit(unit.replace("/usr/bin/wsserver", str(exe)), tmp_path)

    # the man page in the package renders
    man = root / "usr" / "share" / "man" / "man1" / "wsserver.1.gz"
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-l", str(man)], capture_output=True, text=True,
                           timeout=30, env={**os.environ, "MANPAGER": "cat", "PAGER": "cat"})
        assert r.returncode == 0 and "SIGUSR1" in r.stdout and not r.stderr.strip(), r.stderr

    # the unpacked binary serves the packaged app (the chat) and its page, with the packaged
    # options but on a free port (it finds its Lua library next to itself)
    opts = re.search(r'^WSSERVER_OPTS="(.*)"$', (root / "etc" / "default" / "wsserver").read_text(),
                     re.M).group(1).split()
    assert "--listen" in opts
    i = opts.index("--listen")
    port = wsraw.free_port()
    opts[i + 1] = f"{HOST}:{port}"
    opts = [str(root) + o if o.startswith("/usr/share/") else o for o in opts]
    app = root / "etc" / "wsserver" / "app.lua"
    env = {k: v for k, v in os.environ.items() if k not in ("WSSERVER_LUA_PATH", "LUA_PATH")}
    check = subprocess.run([str(exe), "--check", *opts, str(app)], capture_output=True, text=True,
                           env=env, timeout=10)
    assert check.returncode == 0, check.stderr
    out = open(tmp_path / "deb-server.out", "wb")
    proc = subprocess.Popen([str(exe), *opts, str(app)], stdout=out, stderr=subprocess.STDOUT,
                            env=env)
    try:
        wsraw.wait_listening(proc, port, 10.0, HOST)
        with socket.create_connection((HOST, port), timeout=5) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            page = b""
            while b"</html>" not in page.lower():
                chunk = s.recv(65536)
                if not chunk:
                    break
                page += chunk
        assert page.startswith(b"HTTP/1.1 200"), page[:200]

        async def chat():
            async with ws_connect(f"ws://{HOST}:{port}/") as ws:
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert welcome["type"] == "welcome", welcome
                await ws.send(json.dumps({"type": "join", "room": "lobby", "nick": "deb"}))
                joined = json.loads(await asyncio.wait_for(ws.recv(), 5))
                while joined["type"] != "joined":
                    joined = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert joined["room"] == "lobby" and "deb" in joined["members"], joined

        run(chat(), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        out.close()


def verify_unit(text, tmp_path):
    """systemd-analyze verify on a unit (its binary path pointing at a real file)."""
    assert shutil.which("systemd-analyze"), \
        "systemd-analyze is missing (scripts/install-deps.sh installs systemd)"
    path = tmp_path / "wsserver.service"
    path.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True,
                       text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if "wsserver.service" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
