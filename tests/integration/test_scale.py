"""Scale-out (SPEC §5): --workers N (a master supervising SO_REUSEPORT workers, the built-in hub
bus) and --redis URL (every process of every node on Redis pub/sub).

Every server here is a master started by this file on 127.0.0.1 (with --workers, so always a
master plus workers); redis-server, when used, is started on a free port with no persistence.
Everything is stopped by PID at the end of each test: the master with SIGTERM (its workers are
read from /proc before and must all be gone after: no orphans), Redis with SIGTERM.

What is checked:
- hub (no Redis): clients spread over the workers; conn:publish reaches every other room member
  exactly once and in per-sender order; ws.broadcast and ws.publish reach every client exactly
  once; their return values count local recipients only;
- two nodes on Redis: cross-node rooms and broadcast exactly once, a room joined only on one node
  is subscribed (in Redis) only by the processes that have members and delivers nowhere else,
  unsubscribe on the last leave, SIGHUP keeps the bus; the idle master sleeps (hub and Redis);
- Redis killed under traffic: delivery inside a process goes on, bus_dropped is logged, and after
  a restart on the same port every process reconnects (bus_connected), restores its
  subscriptions (those from before the outage and one made during it) and delivers across nodes
  again exactly once; a node started while Redis is down serves locally and joins when it is up;
- supervision: a killed worker is logged and restarted at once (later and later when it keeps
  dying young), connections on other workers survive, the port keeps accepting; SIGHUP reloads
  every worker; SIGTERM stops every worker (also while one is in back-off), exit code 0, no
  orphans, even when the master itself is SIGKILLed; --workers auto; an invalid --redis is
  refused at start-up (exit 2) with workers as without.
"""
import asyncio
import collections
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from websockets.exceptions import ConnectionClosed
from conftest import skip_rss_under_asan
from wsclient import STEP, run, wait_for, wait_for_async
from wsclient import connect as ws_connect
from wsraw import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("WSSERVER", str(ROOT / "build" / "wsserver"))
REDIS_SERVER = shutil.which("redis-server")

APP = r"""
local V = "%s"
return {
  config = { ping_interval = 300 },

  open = function(conn)
    conn:subscribe("room")
  end,

  -- commands are "<cmd>:<arg>"; what is published is the whole command, naming its sender
  message = function(conn, data, kind)
    if kind == "binary" then             -- binary: ws.broadcast as binary, the sender too
      ws.broadcast(data, { binary = true })
      return
    end
    local cmd, arg = data:match("^([%%w_]+):?(.*)$")
    if cmd == "id" then                  -- id:<name>  (the log line carries worker=<n>)
      ws.log.info("scale_id", { name = arg })
      conn:send("id:" .. arg)
    elseif cmd == "pub" then             -- pub:<topic>:... to the topic's other subscribers
      conn:publish(arg:match("^([^:]+)"), data)
    elseif cmd == "wpub" then            -- wpub:<topic>:... ws.publish (the sender too)
      local n = ws.publish(arg:match("^([^:]+)"), data)
      conn:send("wpubn:" .. n .. ":" .. arg)
    elseif cmd == "bc" then              -- bc:... ws.broadcast to everyone
      local n = ws.broadcast(data)
      conn:send("bcn:" .. n .. ":" .. arg)
    elseif cmd == "vip" then             -- vip: marks this connection for fbc
      conn.data.vip = true
      conn:send("vip:")
    elseif cmd == "fbc" then             -- fbc:... ws.broadcast with a filter: the vips only
      local n = ws.broadcast(data, { filter = function(c) return c.data.vip == true end })
      conn:send("fbcn:" .. n .. ":" .. arg)
    elseif cmd == "join" then
      conn:subscribe(arg)
      conn:send("joined:" .. arg)
    elseif cmd == "leave" then
      conn:unsubscribe(arg)
      conn:send("left:" .. arg)
    elseif cmd == "ver" then
      conn:send("ver:" .. V .. ":" .. ws.stats().generation)
    end
  end,
}
"""


# ---------------------------------------------------------------- processes


def proc_state(pid):
    """(state letter, ppid) of a live process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid):
    st = proc_state(pid)
    return st is not None and st[0] not in ("Z", "X")


def children(pid):
    """Live (non-zombie) child PIDs of pid, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_state(int(entry))
            if st and st[1] == pid and st[0] not in ("Z", "X"):
                out.append(int(entry))
    return sorted(out)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def preemptions(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("nonvoluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no nonvoluntary_ctxt_switches in /proc/PID/status")


LOG_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


class Master:
    """One wsserver master (--workers N) on 127.0.0.1, its log in a file."""

    def __init__(self, app, workers, redis=None, args=()):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.workers = workers
        self.redis = redis
        self.logfile = tempfile.NamedTemporaryFile(prefix="wsserver-scale-", suffix=".log",
                                                   delete=False)
        cmd = [BINARY, "-l", f"127.0.0.1:{self.port}", "--workers", str(workers), *args]
        if redis:
            cmd += ["--redis", redis]
        cmd.append(str(app))
        self.proc = subprocess.Popen(cmd, stdout=self.logfile, stderr=subprocess.STDOUT,
                                     cwd=str(ROOT))
        self.pid = self.proc.pid
        self.stopped = False

    def wait_ready(self, timeout=10.0, bus=True):
        """Every worker loaded the app (and is on the bus, with Redis) and the port accepts."""
        n = self.workers if isinstance(self.workers, int) else os.cpu_count()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"wsserver exited with {self.proc.returncode}:\n{self.log()}")
            if len(self.events("app_loaded")) < n or len(self.worker_pids()) < n:
                return False
            if self.redis and bus and len({e["worker"] for e in self.events("bus_connected")}) < n:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_for(ready, timeout, f"{n} workers ready:\n{self.log()}")
        return self

    def log(self):
        with open(self.logfile.name, "r", errors="replace") as f:
            return f.read()

    def events(self, event, log=None):
        """The log lines of one event, as dicts of their key=value fields (text format)."""
        rows = []
        for line in (self.log() if log is None else log).splitlines():
            if f" event={event} " not in line + " ":
                continue
            fields = {}
            for m in LOG_FIELD.finditer(line):
                v = m.group(2)
                fields[m.group(1)] = v[1:-1] if v.startswith('"') else v
            fields["ts"] = line.split(" ", 1)[0]
            rows.append(fields)
        return rows

    def worker_pids(self):
        """worker index -> pid of its latest incarnation, from the worker_started lines."""
        return {int(e["worker"]): int(e["pid"]) for e in self.events("worker_started")}

    def where(self):
        """client name -> worker index, from the app's scale_id lines."""
        return {e["name"]: int(e["worker"]) for e in self.events("app")
                if e.get("msg") == "scale_id"}

    def stop(self, timeout=15.0):
        """SIGTERM to the master, wait; every worker it had must be gone. -> exit code."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        kids = children(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                for pid in kids:
                    if alive(pid):
                        os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"master did not exit within {timeout} s:\n{self.log()}")
        deadline = time.monotonic() + 5
        while any(alive(p) for p in kids) and time.monotonic() < deadline:
            time.sleep(0.02)
        orphans = [p for p in kids if alive(p)]
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
        assert not orphans, f"workers {orphans} outlived master {self.pid}:\n{self.log()}"
        return self.proc.returncode


class Redis:
    """redis-server on 127.0.0.1 and a free port, no persistence; restartable on that port."""

    def __init__(self, start=True):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = None
        if start:
            self.start()

    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.ping(), 10, "redis-server to answer PING")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def command(self, *args):
        """One command over RESP; returns the decoded reply (bytes, int, list or None)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            req = f"*{len(args)}\r\n".encode()
            for a in args:
                a = str(a).encode()
                req += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(req)
            f = s.makefile("rb")

            def read():
                line = f.readline().rstrip(b"\r\n")
                kind, rest = line[:1], line[1:]
                if kind in (b"+", b"-"):
                    return rest
                if kind == b":":
                    return int(rest)
                if kind == b"$":
                    n = int(rest)
                    return None if n < 0 else f.read(n + 2)[:-2]
                if kind == b"*":
                    return [read() for _ in range(int(rest))]
                raise AssertionError(f"bad RESP line {line!r}")

            return read()

    def ping(self):
        try:
            return self.command("PING") == b"PONG"
        except OSError:
            return False

    def numsub(self, channel):
        return self.command("PUBSUB", "NUMSUB", channel)[1]


@pytest.fixture
def cluster(tmp_path):
    """Starts masters and Redis servers; stops them all (by PID) when the test ends."""

    class Cluster:
        def __init__(self):
            self.masters = []
            self.redises = []
            self.app = tmp_path / "scale_app.lua"
            self.app.write_text(APP % "v1")

        def master(self, workers, redis=None, args=(), bus_ready=True):
            m = Master(self.app, workers, redis, args)
            self.masters.append(m)
            return m.wait_ready(bus=bus_ready)

        def redis(self, start=True):
            if REDIS_SERVER is None:
                pytest.skip("redis-server is not installed")
            r = Redis(start)
            self.redises.append(r)
            return r

    c = Cluster()
    yield c
    problems = []
    for m in c.masters:
        try:
            if not m.stopped:  # else the test stopped it and checked how
                code = m.stop()
                if code != 0:
                    problems.append(f"master {m.pid} exited with {code}:\n{m.log()}")
            # make asan / make ubsan run this suite on instrumented builds
            log = m.log()
            for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                if marker in log:
                    problems.append(f"sanitizer report from master {m.pid}:\n{log}")
        except AssertionError as e:
            problems.append(str(e))
        finally:
            os.unlink(m.logfile.name)
    for r in c.redises:
        r.stop()
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- clients


def connect(url):
    """wsclient.connect closing faster (2 s) and with no cap on the queue of received messages."""
    return ws_connect(url, close_timeout=2, max_queue=None)


class Client:
    """One connection; a task keeps every message received, in order."""

    def __init__(self, name, ws, node=None):
        self.name = name
        self.ws = ws
        self.node = node
        self.msgs = []
        self.closed = None
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self):
        try:
            async for m in self.ws:
                self.msgs.append(m)
        except ConnectionClosed:
            pass
        self.closed = self.ws.close_code

    def tagged(self, prefix):
        return [m for m in self.msgs if isinstance(m, str) and m.startswith(prefix)]

    def binaries(self):
        return [m for m in self.msgs if isinstance(m, bytes)]

    async def send(self, text):
        await self.ws.send(text)

    async def ask(self, text, reply_prefix, timeout=STEP):
        """Sends text and waits for the first new message starting with reply_prefix."""
        start = len(self.msgs)
        await self.ws.send(text)

        def found():
            return next((m for m in self.msgs[start:]
                         if isinstance(m, str) and m.startswith(reply_prefix)), None)

        await wait_for_async(lambda: found() is not None, timeout,
                             f"{self.name}: reply {reply_prefix!r} to {text!r}")
        return found()

    async def close(self):
        await self.ws.close()
        await asyncio.wait_for(self.task, STEP)


async def open_clients(master, n, prefix):
    """n clients on master, each identified (id:<name>) so that master.where() knows its worker."""
    conns = await asyncio.gather(*[connect(master.url) for _ in range(n)])
    clients = [Client(f"{prefix}{i}", ws, master) for i, ws in enumerate(conns)]
    await asyncio.gather(*[c.ask(f"id:{c.name}", f"id:{c.name}") for c in clients])
    await wait_for_async(lambda: all(c.name in master.where() for c in clients), STEP,
                         "the scale_id log line of every client")
    where = master.where()
    for c in clients:
        c.worker = where[c.name]
    return clients


async def close_all(clients):
    await asyncio.gather(*[c.close() for c in clients if c.closed is None],
                         return_exceptions=True)


def proc_of(c):
    """The serving process of a client: (node port, worker index)."""
    return (c.node.port, c.worker)


def per_sender(msgs, prefix):
    """"<prefix><sender>:<seq>" messages -> {sender: [seq, ...]} in arrival order."""
    out = collections.defaultdict(list)
    for m in msgs:
        if isinstance(m, str) and m.startswith(prefix):
            sender, seq = m[len(prefix):].rsplit(":", 1)
            out[sender].append(int(seq))
    return dict(out)


async def publish_rounds(senders, fmt, count):
    """Every sender sends fmt.format(name=, i=) for i in range(count), all senders at once."""

    async def one(c):
        for i in range(count):
            await c.send(fmt.format(name=c.name, i=i))

    await asyncio.gather(*[one(c) for c in senders])


async def expect_exactly_once(clients, prefix, expected, timeout=STEP, grace=0.4):
    """expected(client) -> {sender: count}: every client gets seq 0..count-1 of each sender, once
    each and in order, and nothing from anyone else under prefix."""
    want = {c.name: expected(c) for c in clients}
    total = {c.name: sum(v for v in want[c.name].values()) for c in clients}
    await wait_for_async(lambda: all(len(c.tagged(prefix)) >= total[c.name] for c in clients),
                         timeout, lambda: f"every {prefix!r} delivery; missing: " + ", ".join(
                             f"{c.name} {len(c.tagged(prefix))}/{total[c.name]}"
                             for c in clients if len(c.tagged(prefix)) < total[c.name])[:2000])
    await asyncio.sleep(grace)  # duplicates would show up now
    for c in clients:
        got = per_sender(c.msgs, prefix)
        exp = {s: list(range(n)) for s, n in want[c.name].items() if n}
        assert got == exp, (f"{c.name} (worker {c.worker} of node {c.node.port}) got "
                            f"{ {s: v[:60] for s, v in got.items()} } under {prefix!r}; expected "
                            f"{ {s: f'0..{len(v) - 1}' for s, v in exp.items()} }")


async def expect_binary_broadcast(sender, clients, size):
    """A binary message of size bytes from sender reaches every client once, as binary."""
    payload = os.urandom(size)
    await sender.ws.send(payload)
    await wait_for_async(lambda: all(c.binaries() for c in clients), STEP,
                         "the binary broadcast everywhere")
    await asyncio.sleep(0.3)
    for c in clients:
        got = c.binaries()
        assert len(got) == 1 and got[0] == payload, (
            f"{c.name}: {len(got)} binary messages, sizes {[len(g) for g in got]}")
        c.msgs = [m for m in c.msgs if not isinstance(m, bytes)]


def expect_local_counts(senders, tag, api, local):
    """The values `api` returned to each sender (its replies "<tag><n>:...") are all local(sender):
    the number of clients of the sender's own process, the only ones counted."""
    for s in senders:
        counts = {int(m.split(":")[1]) for m in s.tagged(tag)}
        assert counts == {local(s)}, (
            f"{api} from {s.name} (worker {s.worker}) returned {counts}; the sender's process has "
            f"{local(s)} clients (the return value counts local recipients only)")


# ---------------------------------------------------------------- 1. hub


def test_workers_hub_rooms_broadcast_exactly_once(cluster):
    server = cluster.master(4)
    assert len(children(server.pid)) == 4, f"expected 4 workers:\n{server.log()}"
    assert len(server.worker_pids()) == 4

    async def scenario():
        clients = await open_clients(server, 80, "c")
        spread = collections.Counter(c.worker for c in clients)
        assert set(spread) == {1, 2, 3, 4}, f"80 connections did not spread: {spread}"

        # conn:publish from 8 senders (on different workers where possible), 40 messages each
        senders = sorted(clients, key=lambda c: c.worker)[::10]
        names = {s.name for s in senders}
        n = 40
        await publish_rounds(senders, "pub:room:a:{name}:{i}", n)
        await expect_exactly_once(
            clients, "pub:room:a:",
            lambda c: {s: (0 if s == c.name else n) for s in names})

        # ws.broadcast from 4 clients on 4 workers: everyone (senders included) once each
        bsenders = [next(c for c in clients if c.worker == w) for w in (1, 2, 3, 4)]
        await publish_rounds(bsenders, "bc:b:{name}:{i}", 10)
        await expect_exactly_once(clients, "bc:b:",
                                  lambda c: {s.name: 10 for s in bsenders})
        expect_local_counts(bsenders, "bcn:", "ws.broadcast", lambda s: spread[s.worker])

        # ws.publish reaches every subscriber, the sender too; returns the local count
        await publish_rounds(bsenders, "wpub:room:w:{name}:{i}", 5)
        await expect_exactly_once(clients, "wpub:room:w:",
                                  lambda c: {s.name: 5 for s in bsenders})
        expect_local_counts(bsenders, "wpubn:", "ws.publish", lambda s: spread[s.worker])

        # a binary frame of 200 KB crosses the hub intact and stays binary
        await expect_binary_broadcast(clients[0], clients, 200_000)
        assert all(c.closed is None for c in clients)
        await close_all(clients)

    run(scenario())
    assert server.stop() == 0


def test_filtered_broadcast_stays_filtered(cluster):
    """ws.broadcast(data, {filter = fn}): the filter is a Lua function of the sending worker;
    other workers cannot run it, so they must not deliver to connections it would refuse."""
    server = cluster.master(2)

    async def scenario():
        clients = await open_clients(server, 20, "v")
        by_worker = collections.defaultdict(list)
        for c in clients:
            by_worker[c.worker].append(c)
        assert len(by_worker) == 2, f"20 connections did not spread: {dict(by_worker)}"
        vips = by_worker[1][:2] + by_worker[2][:2]
        await asyncio.gather(*[c.ask("vip:", "vip:") for c in vips])
        sender = by_worker[1][-1]
        reply = await sender.ask(f"fbc:{sender.name}:0", "fbcn:")
        assert int(reply.split(":")[1]) == 2, reply  # the two vips of the sender's worker
        await asyncio.sleep(0.5)
        leaked = sorted(f"{c.name} (worker {c.worker})" for c in clients
                        if c not in vips and c.tagged("fbc:"))
        assert not leaked, (f"a filtered ws.broadcast on worker 1 reached {len(leaked)} "
                            f"connections its filter refuses: {leaked}")
        assert all(len(c.tagged("fbc:")) == 1 for c in by_worker[1][:2])
        await close_all(clients)

    run(scenario())
    assert server.stop() == 0


# ---------------------------------------------------------------- 2. two nodes on Redis


def test_master_stays_idle(cluster):
    """The master only supervises (and relays hub frames): idle, it must sleep in poll(2). A busy
    loop shows as CPU time and, on a loaded machine, as preemptions (an idle process has none)."""
    r = cluster.redis()
    hub = cluster.master(2)
    red = cluster.master(2, redis=r.url)
    time.sleep(0.3)
    for name, m in (("hub", hub), ("redis", red)):
        cpu0, pre0 = cpu_seconds(m.pid), preemptions(m.pid)
        time.sleep(1.0)
        cpu, pre = cpu_seconds(m.pid) - cpu0, preemptions(m.pid) - pre0
        assert cpu < 0.05 and pre < 20, (
            f"{name} mode: the idle master (pid {m.pid}) used {cpu:.2f} s of CPU and was "
            f"preempted {pre} times in 1 s")


def test_two_nodes_on_redis(cluster):
    r = cluster.redis()
    a = cluster.master(4, redis=r.url)
    b = cluster.master(4, redis=f"127.0.0.1:{r.port}")  # the host:port form
    wait_for(lambda: r.numsub("wsserver:all") == 8, STEP,
             "every worker of both nodes subscribed to the broadcast channel")

    async def scenario():
        ca = await open_clients(a, 16, "a")
        cb = await open_clients(b, 16, "b")
        everyone = ca + cb
        procs = {proc_of(c) for c in everyone}
        await wait_for_async(lambda: r.numsub("wsserver:t:room") == len(procs), STEP,
                             lambda: f"{len(procs)} processes subscribed to the room channel "
                             f"(have {r.numsub('wsserver:t:room')})")

        # a room across nodes: 3 senders on each node
        senders = ca[:3] + cb[:3]
        names = {s.name for s in senders}
        await publish_rounds(senders, "pub:room:x:{name}:{i}", 30)
        await expect_exactly_once(everyone, "pub:room:x:",
                                  lambda c: {s: (0 if s == c.name else 30) for s in names})

        # broadcast from each node: every client of both nodes once
        local = collections.Counter(proc_of(c) for c in everyone)
        bsenders = [ca[0], cb[0]]
        await publish_rounds(bsenders, "bc:y:{name}:{i}", 10)
        await expect_exactly_once(everyone, "bc:y:", lambda c: {s.name: 10 for s in bsenders})
        expect_local_counts(bsenders, "bcn:", "ws.broadcast", lambda s: local[proc_of(s)])
        await publish_rounds(bsenders, "wpub:room:z:{name}:{i}", 5)
        await expect_exactly_once(everyone, "wpub:room:z:",
                                  lambda c: {s.name: 5 for s in bsenders})
        expect_local_counts(bsenders, "wpubn:", "ws.publish", lambda s: local[proc_of(s)])
        await expect_binary_broadcast(cb[3], everyone, 100_000)

        # a room joined only on node A: only A's processes with members subscribe in Redis
        members = ca[4:10]
        await asyncio.gather(*[c.ask("join:aonly", "joined:aonly") for c in members])
        member_procs = {proc_of(c) for c in members}
        await wait_for_async(lambda: r.numsub("wsserver:t:aonly") == len(member_procs), STEP,
                             lambda: f"{len(member_procs)} subscriptions to wsserver:t:aonly "
                             f"(have {r.numsub('wsserver:t:aonly')}; node B has no member)")
        outsider = cb[5]  # publishing does not need membership
        pubs = [members[0], outsider]
        await publish_rounds(pubs, "pub:aonly:q:{name}:{i}", 10)
        await expect_exactly_once(
            everyone, "pub:aonly:q:",
            lambda c: ({s.name: (0 if s is c else 10) for s in pubs} if c in members else {}),
            grace=0.6)

        # the last member of a process leaving unsubscribes it
        await asyncio.gather(*[c.ask("leave:aonly", "left:aonly") for c in members])
        await wait_for_async(lambda: r.numsub("wsserver:t:aonly") == 0, STEP,
                             "wsserver:t:aonly unsubscribed after every member left")
        # SIGHUP on node A: every worker reloads, keeps its bus and its subscriptions
        cluster.app.write_text(APP % "v2")
        a.proc.send_signal(signal.SIGHUP)
        await wait_for_async(
            lambda: sorted(int(e["worker"]) for e in a.events("app_loaded")
                           if e.get("generation") == "2") == [1, 2, 3, 4],
            STEP, f"app_loaded generation=2 once per worker of node A:\n{a.log()}")
        assert r.numsub("wsserver:t:room") == len(procs) and r.numsub("wsserver:all") == 8
        await publish_rounds([ca[1], cb[1]], "pub:room:r:{name}:{i}", 10)
        await expect_exactly_once(
            everyone, "pub:room:r:",
            lambda c: {s.name: (0 if s is c else 10) for s in (ca[1], cb[1])})

        assert all(c.closed is None for c in everyone)
        await close_all(everyone)
        await wait_for_async(lambda: r.numsub("wsserver:t:room") == 0, STEP,
                             "wsserver:t:room unsubscribed after every client left")

    run(scenario())
    assert a.stop() == 0 and b.stop() == 0


# ---------------------------------------------------------------- 3. Redis outage


def test_redis_outage_and_recovery(cluster):
    r = cluster.redis()
    a = cluster.master(2, redis=r.url)
    b = cluster.master(2, redis=r.url)

    async def scenario():
        ca = await open_clients(a, 8, "a")
        cb = await open_clients(b, 8, "b")
        everyone = ca + cb
        procs = {proc_of(c) for c in everyone}
        await wait_for_async(lambda: r.numsub("wsserver:t:room") == len(procs), STEP,
                             "the room subscribed by every process")

        # a sender with a peer in the same process (8 clients on 2 workers: one has two)
        by_proc = collections.defaultdict(list)
        for c in ca:
            by_proc[c.worker].append(c)
        sender, peer = next(v for v in by_proc.values() if len(v) >= 2)[:2]
        remote = cb[0]
        await publish_rounds([sender], "pub:room:pre:{name}:{i}", 10)
        await expect_exactly_once(everyone, "pub:room:pre:",
                                  lambda c: {sender.name: 0 if c is sender else 10})

        # outage: kill Redis while the sender keeps publishing
        a_log_before = len(a.log())
        r.kill()
        for i in range(10):
            await sender.send(f"pub:room:out:{sender.name}:{i}")
            await asyncio.sleep(0.02)
        await wait_for_async(lambda: len({e["worker"] for e in a.events("bus_disconnected")})
                             == 2 and len({e["worker"] for e in b.events("bus_disconnected")}) == 2,
                             STEP, "bus_disconnected from every process")
        for i in range(10, 30):
            await sender.send(f"pub:room:out:{sender.name}:{i}")
            await asyncio.sleep(0.02)
        # same process: every message, once, in order
        await wait_for_async(lambda: len(peer.tagged("pub:room:out:")) >= 30, STEP,
                             "local delivery during the outage")
        await asyncio.sleep(0.2)
        assert per_sender(peer.msgs, "pub:room:out:") == {sender.name: list(range(30))}
        # broadcast during the outage: local recipients, counted as such
        local = sum(1 for c in everyone if proc_of(c) == proc_of(sender))
        reply = await sender.ask("bc:o:" + sender.name + ":0", "bcn:")
        assert int(reply.split(":")[1]) == local
        await wait_for_async(lambda: peer.tagged("bc:o:"), STEP, "local broadcast in the outage")
        dropped = a.events("bus_dropped", a.log()[a_log_before:])
        assert dropped and {e["worker"] for e in dropped} == {str(sender.worker)}, (
            f"bus_dropped not logged by worker {sender.worker}:\n{a.log()[a_log_before:]}")
        # a topic joined during the outage must be subscribed once Redis is back
        late = cb[1]
        await late.ask("join:late", "joined:late")

        # Redis back on the same port: reconnect, resubscribe, deliver again
        marks = {a: len(a.log()), b: len(b.log())}
        restarted = time.monotonic()
        r.start()

        def reconnected(node):
            return {e["worker"] for e in node.events("bus_connected", node.log()[marks[node]:])}

        await wait_for_async(
            lambda: reconnected(a) == {"1", "2"} and reconnected(b) == {"1", "2"}, 10.0,
            lambda: "bus_connected from all 4 processes within 10 s of the restart:\n"
            + a.log()[marks[a]:][-3000:] + "\n" + b.log()[marks[b]:][-3000:])
        await wait_for_async(lambda: r.numsub("wsserver:t:room") == len(procs)
                             and r.numsub("wsserver:all") == 4
                             and r.numsub("wsserver:t:late") == 1,
                             max(0.5, 10.0 - (time.monotonic() - restarted)),
                             lambda: "subscriptions restored (all, room, late): "
                             f"{r.numsub('wsserver:all')}, {r.numsub('wsserver:t:room')}/"
                             f"{len(procs)}, {r.numsub('wsserver:t:late')}")
        # probe until a message crosses the nodes again (bounded by ~10 s after the restart)
        i = 0
        while not remote.tagged("pub:room:probe:"):
            assert time.monotonic() - restarted < 10.0, (
                "no cross-node delivery within 10 s after Redis came back:\n"
                + a.log()[a_log_before:][-3000:])
            await sender.send(f"pub:room:probe:{sender.name}:{i}")
            i += 1
            await asyncio.sleep(0.1)
        # now exactly once, in order, across nodes and in both directions
        senders = [sender, remote]
        await publish_rounds(senders, "pub:room:post:{name}:{i}", 20)
        await expect_exactly_once(
            everyone, "pub:room:post:",
            lambda c: {s.name: (0 if s is c else 20) for s in senders})
        await publish_rounds([sender], "bc:p:{name}:{i}", 5)
        await expect_exactly_once(everyone, "bc:p:", lambda c: {sender.name: 5})
        await publish_rounds([ca[-1]], "pub:late:l:{name}:{i}", 5)
        await expect_exactly_once(everyone, "pub:late:l:",
                                  lambda c: {ca[-1].name: 5} if c is late else {})
        assert all(c.closed is None for c in everyone), "a client lost its connection"
        await close_all(everyone)

    run(scenario())
    assert a.stop() == 0 and b.stop() == 0


# ---------------------------------------------------------------- 4. supervision


def log_seconds(ts):
    """2026-01-01T12:34:56.789Z -> seconds of the day (enough for differences within a test)."""
    hms = ts.split("T")[1].rstrip("Z")
    h, m, s = hms.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_worker_crash_reload_and_shutdown(cluster):
    server = cluster.master(3)
    started_at = time.monotonic()

    async def scenario():
        clients = await open_clients(server, 30, "k")
        pids = server.worker_pids()
        assert sorted(pids) == [1, 2, 3] and sorted(pids.values()) == children(server.pid)
        spread = collections.Counter(c.worker for c in clients)
        assert set(spread) == {1, 2, 3}, f"30 connections did not spread: {spread}"

        # a worker that has lived > 2 s dies: logged, restarted about 0.1 s later
        await asyncio.sleep(max(0.0, 2.3 - (time.monotonic() - started_at)))
        victim = 2
        old = pids[victim]
        assert old in children(server.pid)
        os.kill(old, signal.SIGKILL)
        await wait_for_async(lambda: server.worker_pids()[victim] != old, 3.0,
                             f"worker {victim} restarted:\n{server.log()}")
        died = [e for e in server.events("worker_died") if e["pid"] == str(old)]
        assert len(died) == 1 and died[0]["worker"] == str(victim), server.log()
        new = server.worker_pids()[victim]
        assert new in children(server.pid) and not alive(old)
        restart = [e for e in server.events("worker_started") if e["pid"] == str(new)][0]
        delay = log_seconds(restart["ts"]) - log_seconds(died[0]["ts"])
        assert delay < 1.0, f"first restart took {delay:.2f} s (expected about 0.1 s)"

        # its clients were dropped; the others are still connected and served
        victims = [c for c in clients if c.worker == victim]
        others = [c for c in clients if c.worker != victim]
        await wait_for_async(lambda: all(c.closed is not None for c in victims), STEP,
                             "the killed worker's connections closed")
        assert all(c.closed is None for c in others), "a connection of another worker dropped"
        await asyncio.gather(*[c.ask(f"id:{c.name}", f"id:{c.name}") for c in others])

        # the port keeps accepting, on the new worker too, and the hub includes it both ways
        fresh = await open_clients(server, 30, "f")
        assert victim in {c.worker for c in fresh}, (
            f"no new connection reached the restarted worker: "
            f"{collections.Counter(c.worker for c in fresh)}")
        live = others + fresh
        bsenders = [next(c for c in fresh if c.worker == victim),
                    next(c for c in others if c.worker != victim)]
        await publish_rounds(bsenders, "bc:n:{name}:{i}", 5)
        await expect_exactly_once(live, "bc:n:", lambda c: {s.name: 5 for s in bsenders})

        # SIGHUP: every worker reloads (generation 2) and serves the new version
        cluster.app.write_text(APP % "v2")
        server.proc.send_signal(signal.SIGHUP)
        await wait_for_async(
            lambda: sorted(int(e["worker"]) for e in server.events("app_loaded")
                           if e.get("generation") == "2") == [1, 2, 3],
            STEP, f"app_loaded generation=2 once per worker:\n{server.log()}")
        for w in (1, 2, 3):
            c = next(c for c in live if c.worker == w)
            reply = await c.ask("ver:", "ver:")
            assert reply.startswith("ver:v2:"), f"worker {w} still serves {reply!r}"
        assert all(c.closed is None for c in live), "a reload dropped a connection"

        # dying young: restarted 0.1 s after a death at age > 2 s, 2 s after a death at age < 2 s
        victim = 3
        first = server.worker_pids()[victim]
        os.kill(first, signal.SIGKILL)
        await wait_for_async(lambda: server.worker_pids()[victim] != first, 3.0,
                             f"worker {victim} restarted")
        second = server.worker_pids()[victim]
        os.kill(second, signal.SIGKILL)  # at an age of a few ms
        await wait_for_async(lambda: server.worker_pids()[victim] != second, 5.0,
                             f"worker {victim} restarted after dying young:\n{server.log()}")
        third = server.worker_pids()[victim]
        died = {e["pid"]: log_seconds(e["ts"]) for e in server.events("worker_died")}
        began = {e["pid"]: log_seconds(e["ts"]) for e in server.events("worker_started")}
        fast = began[str(second)] - died[str(first)]
        slow = began[str(third)] - died[str(second)]
        assert fast < 1.0, f"restart after a death at age > 2 s took {fast:.2f} s"
        assert 1.5 <= slow <= 3.5, f"restart after a death at age < 2 s took {slow:.2f} s (2 s)"

        # it dies young again (next restart in 4 s); SIGTERM meanwhile: the others stop at once
        # (closing their clients with 1001), nothing is restarted, exit code 0, no orphans
        os.kill(third, signal.SIGKILL)
        await wait_for_async(lambda: str(third) in {e["pid"] for e in server.events("worker_died")},
                             3.0, "the third death logged")
        kids = children(server.pid)
        assert sorted(kids) == sorted(p for w, p in server.worker_pids().items() if w != victim)
        remaining = [c for c in live if c.worker != victim]
        assert remaining and all(c.closed is None for c in remaining)
        t0 = time.monotonic()
        code = await asyncio.to_thread(server.stop)
        took = time.monotonic() - t0
        assert code == 0, f"master exit code {code}:\n{server.log()}"
        assert took < 5.0, f"SIGTERM took {took:.1f} s with a worker in back-off"
        assert not [p for p in kids if alive(p)]
        await wait_for_async(lambda: all(c.closed is not None for c in remaining), STEP,
                             "clients closed by the shutdown")
        codes = collections.Counter(c.closed for c in remaining)
        assert set(codes) == {1001}, f"close codes at shutdown: {codes}"
        assert server.worker_pids()[victim] == third, "a worker was started after SIGTERM"
        exited = server.events("worker_exited")
        assert sorted(int(e["worker"]) for e in exited) == [1, 2], server.log()
        assert {int(e["pid"]) for e in exited} == set(kids)
        assert all(e["detail"] == "exit code 0" for e in exited), exited

    run(scenario())


def test_workers_auto(cluster):
    server = cluster.master("auto")
    n = os.cpu_count()
    assert len(children(server.pid)) == n and len(server.worker_pids()) == n, server.log()
    assert all(f"worker={w} " in server.log() for w in range(1, n + 1))
    assert server.stop() == 0


def test_master_killed_workers_follow(cluster):
    """Even a master killed with SIGKILL leaves no orphan workers behind."""
    server = cluster.master(2)
    kids = children(server.pid)
    assert len(kids) == 2
    server.stopped = True  # stopped here, not by the fixture
    server.proc.kill()
    server.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in kids), 5.0,
             f"workers {kids} to exit after their master was killed:\n{server.log()}")
    # what a clean exit removes: the reload status file the workers wrote for the master
    pathlib.Path(f"/tmp/wsserver-{server.pid}.status").unlink(missing_ok=True)


def test_redis_down_at_start(cluster):
    """Started without Redis: serves locally, drops (and logs) what goes to peers, then connects
    and subscribes by itself when Redis comes up."""
    r = cluster.redis(start=False)
    m = cluster.master(2, redis=r.url, bus_ready=False)
    wait_for(lambda: {e["worker"] for e in m.events("bus_connect_failed")} == {"1", "2"}, STEP,
             f"bus_connect_failed from both workers:\n{m.log()}")

    async def scenario():
        clients = await open_clients(m, 20, "d")
        by_worker = collections.defaultdict(list)
        for c in clients:
            by_worker[c.worker].append(c)
        sender = next(v for v in by_worker.values() if len(v) >= 2)[0]
        same = [c for c in clients if c.worker == sender.worker]
        await publish_rounds([sender], "pub:room:s:{name}:{i}", 10)
        await expect_exactly_once(
            same, "pub:room:s:", lambda c: {sender.name: 0 if c is sender else 10})
        assert {e["worker"] for e in m.events("bus_dropped")} == {str(sender.worker)}, m.log()

        r.start()
        wait = time.monotonic()
        await wait_for_async(lambda: {e["worker"] for e in m.events("bus_connected")} == {"1", "2"},
                             10.0, f"bus_connected within 10 s of Redis starting:\n{m.log()}")
        procs = {c.worker for c in clients}
        await wait_for_async(lambda: r.numsub("wsserver:t:room") == len(procs), 10.0 - (
            time.monotonic() - wait), "the room subscribed once Redis is up")
        senders = [by_worker[1][0], by_worker[2][0]]
        await publish_rounds(senders, "pub:room:u:{name}:{i}", 10)
        await expect_exactly_once(
            clients, "pub:room:u:", lambda c: {s.name: (0 if s is c else 10) for s in senders})
        await close_all(clients)

    run(scenario())
    assert m.stop() == 0


def test_invalid_redis_url_refused_at_start(cluster):
    """SPEC §2: an invalid value is refused at start-up (exit code 2), with workers too; a master
    that restarts workers failing on their configuration forever is never reported to anyone."""
    m = Master(cluster.app, 2, redis="foo:bar")
    cluster.masters.append(m)
    try:
        code = m.proc.wait(5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"--workers 2 --redis foo:bar still running after 5 s:\n{m.log()}")
    m.stopped = True
    assert code == 2, m.log()
    assert "redis" in m.log()


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_stalled_redis_does_not_grow_memory_without_bound(cluster):
    """SPEC §5 "limits on every resource a peer controls": Redis alive but not reading (stopped,
    blocked by a slow command, a saturated link) must not let a publishing client make a worker
    buffer without bound; the hub caps its queue (64 MiB) and drops beyond, counted."""
    r = cluster.redis()
    m = cluster.master(2, redis=r.url)

    async def scenario():
        [c] = await open_clients(m, 1, "s")
        pid = m.worker_pids()[c.worker]
        skip_rss_under_asan(pid)
        before = rss_mb(pid)
        r.proc.send_signal(signal.SIGSTOP)
        try:
            chunk = "pub:big:" + "x" * 65536
            for _ in range(2500):  # 160 MiB
                await c.send(chunk)
            await c.ask(f"id:{c.name}", f"id:{c.name}", timeout=30)  # all of it handled
            grown = rss_mb(pid) - before
        finally:
            r.proc.send_signal(signal.SIGCONT)
        assert grown < 100, (f"the worker grew by {grown:.0f} MiB while Redis was not reading "
                             f"160 MiB of publications")
        await close_all([c])

    run(scenario())
