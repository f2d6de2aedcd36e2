"""Starts the real wsserver binary on 127.0.0.1 for integration tests.

`wsserver_factory(app=..., args=[...], app_source=...)` starts one server on a free port and
returns a handle with .port, .url, .pid, .log() and .stop(); every server started in a test is
stopped (by its PID) when the test ends.
"""
import os
import pathlib
import signal
import subprocess
import tempfile

import pytest

import wsraw
from wsclient import terminate

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("WSSERVER", str(ROOT / "build" / "wsserver"))
EXAMPLES = ROOT / "examples"


def under_asan(pid):
    """Whether process pid is an ASan build (`make asan`), whose redzones and quarantine of freed
    memory make its RSS mean nothing."""
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


def skip_rss_under_asan(pid):
    """Skips a test that is about the RSS of process pid when it is an ASan build."""
    if under_asan(pid):
        pytest.skip("RSS means nothing under ASan (redzones, quarantine)")


def asan_preload(library):
    """The environment a process needs to load library when library is an ASan build (`make
    asan`): ASan's runtime must be the process's first library, and Debian's lua5.4, which runs
    the kit and `wsserver --test`, does not link it. Empty for any other build."""
    out = subprocess.run(["ldd", str(library)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "libasan" in line and "=>" in line:
            return {"LD_PRELOAD": line.split("=>")[1].split()[0]}
    return {}


class Server:
    def __init__(self, app, args, cwd, env=None, ready=True):
        self.port = wsraw.free_port()
        self.host = "127.0.0.1"
        self.url = f"ws://{self.host}:{self.port}/"
        self.app = str(app)
        self.logfile = tempfile.NamedTemporaryFile(prefix="wsserver-", suffix=".log", delete=False)
        cmd = [BINARY, "-l", f"{self.host}:{self.port}", *args, self.app]
        self.proc = subprocess.Popen(cmd, stdout=self.logfile, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=None if env is None else {**os.environ, **env})
        self.pid = self.proc.pid
        if ready:  # an app that runs to its end may exit before anyone sees it listen
            self._wait_ready()

    def _wait_ready(self, timeout=10.0):
        try:
            wsraw.wait_listening(self.proc, self.port, timeout, self.host)
        except RuntimeError as e:
            raise RuntimeError(f"{e}:\n{self.log()}") from None

    def log(self):
        with open(self.logfile.name, "r", errors="replace") as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15.0):
        """SIGTERM and wait; returns the exit code."""
        return terminate(self.proc, timeout)


@pytest.fixture(autouse=True)
def _deadline(request):
    """Hard per-test bound (TEST_BUDGET seconds in the test's module, default 60): a server that
    hangs must fail the test, not the CI job."""
    budget = getattr(request.module, "TEST_BUDGET", 60)

    def expired(signum, frame):
        raise TimeoutError(f"test exceeded its {budget} s budget")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(budget)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def wsserver_factory(tmp_path):
    started = []

    def start(app=EXAMPLES / "echo.lua", args=(), app_source=None, env=None, ready=True):
        if app_source is not None:
            app = tmp_path / f"app{len(started)}.lua"
            app.write_text(app_source)
        server = Server(app, list(args), cwd=str(ROOT), env=env, ready=ready)
        started.append(server)
        return server

    yield start
    for server in started:
        code = server.stop()
        log = server.log()
        os.unlink(server.logfile.name)
        # A crash (negative code: killed by a signal) is always a failure, and so is anything a
        # sanitizer reported (make asan / make ubsan run this suite on instrumented builds).
        assert code is not None and code >= 0, f"wsserver died with {code}:\n{log}"
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            assert marker not in log, f"sanitizer report from wsserver:\n{log}"


@pytest.fixture
def echo_server(wsserver_factory):
    return wsserver_factory()
