"""Broken and hostile apps against the real binary: nothing an app writes may take the server down
or fail silently.

Every app in tests/integration/hostile_apps/ says in its header what it expects:

    -- expect: refuse <text>    the app must not load: `--check` exits 1 and a start exits 1 or 2,
                                each naming the reason (<text>); a running server SIGHUP-reloaded
                                into it logs the refusal with that reason and keeps serving
    -- expect: serve [<text>]   the app loads: `--check` says ok, a start serves a WebSocket
                                connection, a message and an HTTP GET /x without dying; <text>, if
                                given, must be in the log afterwards (the app's failure, named);
                                a running server reloads into it and keeps running

Each app goes through `--check`, a start with traffic, and a SIGHUP reload of a running good
server into it. No process may die from a signal, a running server never dies on a reload, and
the log never holds a Lua panic or a sanitizer report. The apps run concurrently (each scenario
uses its own servers and ports) so the whole file stays short.
"""
import concurrent.futures
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest

import wsraw
from conftest import BINARY, ROOT, Server
from wsclient import wait_for

APPS_DIR = pathlib.Path(__file__).resolve().parent / "hostile_apps"
APPS = sorted(APPS_DIR.glob("*.lua"))
TEST_BUDGET = 110  # seconds per test (conftest's _deadline); the first test runs them all
WORKERS = 12  # scenarios at a time
RUN_TIMEOUT = 20  # seconds a --check or a refused start may take

GOOD_APP = """
return {
  message = function(conn, data, kind) conn:send(data, kind) end,
}
"""

BAD_MARKERS = ("event=lua_panic", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
               "runtime error:")


def expectation(path):
    """('refuse' | 'serve', text or None) from the app's '-- expect:' header line."""
    for line in path.read_text().splitlines():
        m = re.match(r"--\s*expect:\s*(refuse|serve)\s*(.*)$", line)
        if m:
            return m.group(1), m.group(2).strip() or None
    raise AssertionError(f"{path.name} has no '-- expect:' line")


def run(*args):
    try:
        return subprocess.run([BINARY, *map(str, args)], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return None


def unescaped(log):
    """The log with the escapes of quoted fields undone, for substring checks."""
    return log.replace('\\"', '"').replace("\\n", "\n").replace("\\t", "\t")


def http_get(port, path="/x"):
    """Status of GET path, or None when the server gave no answer."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    try:
        return wsraw.http_exchange(port, request, timeout=3).status
    except (OSError, AssertionError, wsraw.ConnectionClosed):
        return None


def traffic(port):
    """A WebSocket connection with one message, then an HTTP GET; whatever the app does with
    them (refuse, close, fail) is its business: only the process matters here."""
    key = wsraw.new_key()
    sock = None
    try:
        resp, sock, leftover = wsraw.handshake(port, wsraw.build_request(key=key), timeout=3)
        if resp.status == 101:
            client = wsraw.Client(sock, leftover, resp)
            client.send_raw_tolerant(wsraw.encode_frame(wsraw.OP_TEXT, b"hello"))
            try:
                client.recv_frame(timeout=1.0)
            except (AssertionError, wsraw.ConnectionClosed, OSError):
                pass
            client.send_raw_tolerant(wsraw.encode_frame(wsraw.OP_CLOSE,
                                                        wsraw.close_payload(1000)))
    except (OSError, AssertionError, wsraw.ConnectionClosed):
        pass
    finally:
        if sock is not None:
            sock.close()
    http_get(port, "/x")


def finish(server, problems, what):
    """Stops a server this scenario started; a death by signal or a bad log line is a problem."""
    code = server.stop()
    log = server.log()
    os.unlink(server.logfile.name)
    if code is None or code < 0:
        problems.append(f"{what}: wsserver died with {code}:\n{log[-3000:]}")
    for marker in BAD_MARKERS:
        if marker in log:
            problems.append(f"{what}: {marker} in the log:\n{log[-3000:]}")
    return log


def check_stage(app, mode, text, problems):
    r = run("--check", app)
    if r is None:
        problems.append("--check did not finish")
        return
    if r.returncode < 0:
        problems.append(f"--check died with signal {-r.returncode}:\n{r.stderr[-3000:]}")
    elif mode == "serve" and (r.returncode != 0 or "ok" not in r.stdout):
        problems.append(f"--check refused an app that should load ({r.returncode}):\n{r.stderr}")
    elif mode == "refuse":
        if r.returncode != 1:
            problems.append(f"--check exited {r.returncode}, want 1:\n{r.stdout}{r.stderr}")
        elif text not in unescaped(r.stderr):
            problems.append(f"--check does not name the reason {text!r}:\n{r.stderr}")
    if "lua_panic" in r.stderr:
        problems.append(f"--check: Lua panic:\n{r.stderr}")


def start_stage(app, mode, text, problems):
    if mode == "refuse":
        r = run("-l", f"127.0.0.1:{wsraw.free_port()}", app)
        if r is None:
            problems.append("a start of a refused app kept running")
        elif r.returncode not in (1, 2):
            problems.append(f"a start exited {r.returncode}, want 1 or 2:\n{r.stderr[-3000:]}")
        elif text not in unescaped(r.stderr):
            problems.append(f"a refused start does not name the reason {text!r}:\n{r.stderr}")
        return
    try:
        server = Server(app, [], cwd=str(ROOT))
    except RuntimeError as e:
        problems.append(f"the app did not start: {e}")
        return
    traffic(server.port)
    if server.alive() and http_get(server.port, "/healthz") is None:
        problems.append("no answer to /healthz after the traffic")
    if text:
        try:
            wait_for(lambda: text in unescaped(server.log()), timeout=5, what=text)
        except AssertionError:
            problems.append(f"the log does not name {text!r}:\n{server.log()[-3000:]}")
    finish(server, problems, "start")


def reload_stage(app, mode, text, tmp, problems):
    """A good server, one client connected, its file replaced by the app, SIGHUP."""
    path = tmp / "app.lua"
    path.write_text(GOOD_APP)
    try:
        server = Server(path, [], cwd=str(ROOT))
    except RuntimeError as e:
        problems.append(f"the good app did not start: {e}")
        return
    client = None
    try:
        client = wsraw.connect(server.port)
        client.echo_roundtrip("before")
        path.write_text(app.read_text())
        server.signal(signal.SIGHUP)
        event = "app_load_failed" if mode == "refuse" else "app_loaded file"
        wanted = 1 if mode == "refuse" else 2  # the start's app_loaded line counts for serve
        try:
            wait_for(lambda: server.log().count(f"event={event}") >= wanted or not server.alive(),
                     timeout=10, what=f"the reload's {event} line")
        except AssertionError:
            problems.append(f"no {event} line after SIGHUP:\n{server.log()[-3000:]}")
        if not server.alive():
            problems.append(f"the server died on the reload:\n{server.log()[-3000:]}")
            return
        if mode == "refuse":
            if text not in unescaped(server.log()):
                problems.append(f"the reload refusal does not name {text!r}:\n{server.log()}")
            try:
                client.echo_roundtrip("after")  # the running version still serves
            except (AssertionError, wsraw.ConnectionClosed, OSError) as e:
                problems.append(f"the old version stopped serving after the refusal: {e!r}")
        else:
            traffic(server.port)
        if server.alive() and http_get(server.port, "/healthz") is None:
            problems.append("no answer to /healthz after the reload")
    except (AssertionError, wsraw.ConnectionClosed, OSError) as e:
        problems.append(f"reload scenario failed: {e!r}\n{server.log()[-3000:]}")
    finally:
        if client is not None:
            client.close()
        finish(server, problems, "reload")


def scenario(app, tmp):
    mode, text = expectation(app)
    problems = []
    started = time.monotonic()
    check_stage(app, mode, text, problems)
    start_stage(app, mode, text, problems)
    reload_stage(app, mode, text, tmp, problems)
    return problems, time.monotonic() - started


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Runs every app's scenario, WORKERS at a time: {app name: (problems, seconds)}."""
    results = {}
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        futures = {pool.submit(scenario, app, tmp_path_factory.mktemp(app.stem)): app
                   for app in APPS}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future].name] = future.result()
    return results


def test_the_corpus_is_large_and_labelled():
    assert len(APPS) >= 50, f"only {len(APPS)} hostile apps"
    kinds = [expectation(app)[0] for app in APPS]
    assert kinds.count("refuse") >= 15 and kinds.count("serve") >= 25, kinds


@pytest.mark.parametrize("app", APPS, ids=lambda p: p.stem)
def test_hostile_app(app, outcomes):
    problems, seconds = outcomes[app.name]
    assert not problems, f"{app.name} ({seconds:.1f} s):\n" + "\n".join(problems)


# --- options: checked at start, exit 2, naming the option and what it accepts -------------------

CONFIG_REFUSALS = ["config_string_for_number", "config_bool_for_choice", "config_nan",
                   "config_infinite", "config_listen_port", "config_listen_garbage",
                   "config_static_missing", "config_static_file", "config_function_value",
                   "config_list_of_tables"]


@pytest.mark.parametrize("name", CONFIG_REFUSALS)
def test_an_invalid_config_table_is_exit_2_at_start(name):
    app = APPS_DIR / f"{name}.lua"
    _, text = expectation(app)
    r = run("-l", f"127.0.0.1:{wsraw.free_port()}", app)
    assert r is not None and r.returncode == 2, (r.returncode if r else None, r and r.stderr)
    assert text in unescaped(r.stderr), r.stderr


CLI_REFUSALS = [
    (["-l", "127.0.0.1:99999"], "listen", "the port must be a number from 1 to 65535"),
    (["-l", ":65536"], "listen", "the port must be a number from 1 to 65535"),
    (["-l", "127.0.0.1:0"], "listen", "the port must be a number from 1 to 65535"),
    (["--listen", "localhost"], "listen", "expected host:port"),
    (["--static", "/nonexistent/wsserver"], "static", "must be a readable folder"),
    (["--static", "/etc/hostname"], "static", "not a folder"),
    (["--compression", "true"], "compression", "must be one of off, on"),
    (["--ping-interval", "20s"], "ping_interval", "must be a number of seconds from 0 to 86400"),
    (["--max-connections", "1e9"], "max_connections", "from 1 to 10000000"),
]


@pytest.mark.parametrize("args,option,text", CLI_REFUSALS, ids=lambda v: str(v))
def test_an_invalid_command_line_option_is_exit_2(args, option, text, tmp_path):
    app = tmp_path / "app.lua"
    app.write_text(GOOD_APP)
    for check in ([], ["--check"]):
        r = run(*check, *args, app)
        assert r is not None and r.returncode == 2, (check, r and r.returncode, r and r.stderr)
        assert f"invalid value for {option}" in r.stderr and text in r.stderr, r.stderr


def test_check_runs_load_and_ok_means_it_starts(tmp_path):
    app = tmp_path / "app.lua"
    app.write_text('return { load = function(state, info)\n'
                   '  assert(info.trigger == "check" or info.trigger == "start", info.trigger)\n'
                   '  if os.getenv("REFUSE_LOAD") then error("refused by load") end\n'
                   'end }\n')
    r = run("--check", app)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    env = dict(os.environ, REFUSE_LOAD="1")
    r = subprocess.run([BINARY, "--check", str(app)], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, env=env)
    assert r.returncode == 1 and "ok" not in r.stdout, r
    assert "refused by load" in r.stderr and "load() failed" in r.stderr, r.stderr
