"""/metrics and health as an operator runs them: a separate metrics_listen that answers health
probes while the server drains, the process series, plain HTTP counted apart from WebSocket
connections, and with --workers every scrape covering every worker, counters never going back.
Everything runs on 127.0.0.1 and is stopped by PID."""
import signal
import socket
import time

from prometheus_client.parser import text_string_to_metric_families

import wsraw
from conftest import BINARY, ROOT
from test_scale import Master
from wsclient import wait_for

ECHO = "return { message = function(conn, data) conn:send(data) end }"


def get(port, path):
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    return wsraw.http_exchange(port, req)


def scrape(port):
    """{(name, frozenset(labels)): value} and {family: type} of one scrape."""
    resp = get(port, "/metrics")
    assert resp.status == 200, resp.status_line
    samples, families = {}, {}
    for family in text_string_to_metric_families(resp.body.decode()):
        families[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families


def value(samples, name, **labels):
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())))


def test_metrics_listen_serves_ops_apart_from_the_app(wsserver_factory):
    ops = wsraw.free_port()
    server = wsserver_factory(app_source=ECHO, args=["--metrics-listen", f"127.0.0.1:{ops}"])
    assert get(ops, "/healthz").body == b"ok\n"
    samples, families = scrape(ops)
    assert value(samples, "wsserver_connections_open") == 0
    # not on the app's port any more: there it is an ordinary path
    assert get(server.port, "/metrics").status == 426
    assert get(server.port, "/healthz").status == 426
    # and nothing else on the metrics port: no app routes, no WebSocket
    assert get(ops, "/").status == 404
    resp, sock, _ = wsraw.handshake(ops, wsraw.build_request())
    sock.close()
    assert resp.status == 404


def test_health_probes_answer_503_while_draining(wsserver_factory):
    ops = wsraw.free_port()
    server = wsserver_factory(app_source=ECHO, args=["--metrics-listen", f"127.0.0.1:{ops}",
                                                     "--shutdown-timeout", "3"])
    # a client that never answers our close keeps the drain going
    resp, sock, _ = wsraw.handshake(server.port, wsraw.build_request())
    assert resp.status == 101
    server.signal(signal.SIGTERM)
    wait_for(lambda: "event=shutdown" in server.log(), what="the shutdown")
    drained = get(ops, "/healthz")
    assert drained.status == 503 and drained.body == b"shutting down\n"
    # the app's port stopped accepting first
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=1):
            refused = False
    except OSError:
        refused = True
    assert refused
    sock.close()
    assert server.stop() == 0


def test_process_series_and_request_kinds(wsserver_factory):
    server = wsserver_factory(app_source=ECHO, args=["--metrics"])
    before, families = scrape(server.port)
    for name, kind in {"process_start_time_seconds": "gauge", "process_cpu_seconds": "counter",
                       "process_resident_memory_bytes": "gauge", "process_open_fds": "gauge",
                       "wsserver_build_info": "gauge", "wsserver_lua_memory_bytes": "gauge",
                       "wsserver_http_requests": "counter",
                       "wsserver_websocket_connections": "counter"}.items():
        assert families.get(name) == kind, (name, families.get(name))
    start = value(before, "process_start_time_seconds")
    assert abs(start - time.time()) < 60
    assert value(before, "process_resident_memory_bytes") > 1 << 20
    assert value(before, "wsserver_lua_memory_bytes") > 10000
    fds = value(before, "process_open_fds")
    assert 3 <= fds < 100
    build = [k for k in before if k[0] == "wsserver_build_info"]
    assert build and dict(build[0][1])["version"]

    http_before = value(before, "wsserver_http_requests_total")
    ws_before = value(before, "wsserver_websocket_connections_total")
    clients = [wsraw.connect(server.port) for _ in range(3)]
    for _ in range(2):
        assert get(server.port, "/nothing").status == 426
    after, _ = scrape(server.port)
    # three upgrades; two plain requests and the scrape before this one
    assert value(after, "wsserver_websocket_connections_total") == ws_before + 3
    assert value(after, "wsserver_http_requests_total") == http_before + 3
    open_fds = value(after, "process_open_fds")
    for c in clients:
        c.close()
    wait_for(lambda: value(scrape(server.port)[0], "process_open_fds") <= open_fds - 3,
             what="three descriptors fewer once the clients left")


def test_every_worker_in_every_scrape_and_counters_never_go_back(tmp_path):
    app = tmp_path / "app.lua"
    app.write_text(ECHO)
    master = Master(app, 2, args=["--metrics"])
    try:
        master.wait_ready()
        last = {}
        for i in range(12):
            c = wsraw.connect(master.port)
            c.send_frame(wsraw.OP_TEXT, b"hi")
            c.recv_frame()
            c.close()
            samples, _ = scrape(master.port)
            totals = {dict(labels).get("worker"): v for (name, labels), v in samples.items()
                      if name == "wsserver_connections_total"}
            assert set(totals) == {"1", "2"}, totals  # whichever worker answered
            for worker, v in totals.items():
                assert v >= last.get(worker, 0), (i, worker, v, last)
            last = totals
        # the connections spread over the workers; together they saw every one of them
        assert sum(last.values()) >= 24
        pids = {dict(labels)["worker"] for (name, labels), v in samples.items()
                if name == "process_start_time_seconds"}
        assert pids == {"1", "2"}
    finally:
        master.stop()


def test_metrics_listen_is_checked_at_start(tmp_path):
    import subprocess
    app = tmp_path / "app.lua"
    app.write_text(ECHO)
    port = wsraw.free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        out = subprocess.run([BINARY, "-l", f"127.0.0.1:{port}", "--metrics-listen",
                              f"127.0.0.1:{taken}", str(app)], capture_output=True, text=True,
                             timeout=10, cwd=str(ROOT))
    assert out.returncode != 0
    assert f"127.0.0.1:{taken}" in out.stderr + out.stdout
