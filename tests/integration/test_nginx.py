"""wsserver behind nginx, configured as the README's Operations section shows: the upgrade passes
through, messages flow both ways, and with trusted_proxies the client address nginx forwards is
the peer the app and the logs see. nginx runs on 127.0.0.1 with a configuration of its own in a
temporary folder (no daemon, no system files) and is stopped by PID."""
import shutil
import signal
import subprocess

import pytest

import wsraw
from wsclient import terminate, wait_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

APP = r"""
return {
  config = { trusted_proxies = { "127.0.0.2" } }, -- nginx connects from there (proxy_bind)
  http = { ["GET /peer"] = function(req) return 200, req.peer end },
  message = function(conn, data) conn:send(conn.peer .. " " .. data) end,
}
"""

CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_bind 127.0.0.2;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


@pytest.fixture
def nginx_in_front(wsserver_factory, tmp_path):
    if not shutil.which(NGINX):
        pytest.fail("nginx is not installed (scripts/install-deps.sh installs nginx-light)")
    server = wsserver_factory(app_source=APP)
    port = wsraw.free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(CONF.format(dir=tmp_path, port=port, upstream=server.port))
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path), "-e",
                             str(tmp_path / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wsraw.wait_listening(proc, port)
        yield server, port
    finally:
        terminate(proc, 10, signal.SIGQUIT)  # nginx's graceful stop


def test_websocket_through_nginx_sees_the_client_address(nginx_in_front):
    server, port = nginx_in_front
    c = wsraw.connect(port, path="/chat")
    for i in range(20):
        c.send_frame(wsraw.OP_TEXT, b"m%d" % i)
        payload = c.recv_frame().payload
        # the client's address, forwarded (no port), not nginx's 127.0.0.2
        assert payload == b"127.0.0.1 m%d" % i, payload
    c.close()
    wait_for(lambda: 'peer="127.0.0.1" status=101' in server.log(), what="the access line")
    wait_for(lambda: "event=close " in server.log(), what="the close line")


def test_http_route_through_nginx(nginx_in_front):
    server, port = nginx_in_front
    req = b"GET /peer HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"
    resp = wsraw.http_exchange(port, req)
    assert resp.status == 200 and resp.body == b"127.0.0.1"
    # a client cannot claim another address through the proxy: nginx appends the real one
    req = (b"GET /peer HTTP/1.1\r\nHost: example\r\nConnection: close\r\n"
           b"X-Forwarded-For: 203.0.113.66\r\n\r\n")
    resp = wsraw.http_exchange(port, req)
    assert resp.status == 200 and resp.body == b"127.0.0.1", resp.body
    # straight to wsserver, not through the trusted proxy: the header counts for nothing
    resp = wsraw.http_exchange(server.port, req)
    assert resp.body.startswith(b"127.0.0.1:"), resp.body
