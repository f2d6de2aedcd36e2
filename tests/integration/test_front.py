"""The HTTP front against the real binary: request bodies for routes (Content-Length and chunked,
max_body_size), 404 versus 426, allowed_origins, trusted_proxies, and the access and close log
lines an operator reads."""
import json
import re
import socket
import time

import wsraw
from wsclient import wait_for

ROUTES_APP = r"""
return {
  config = { max_body_size = 1000 },
  http = {
    ["POST /echo"] = function(req)
      return 200, "len=" .. #(req.body or "") .. " body=" .. (req.body or "(none)"),
             { ["X-Peer"] = req.peer }
    end,
    ["GET /peer"] = function(req) return 200, req.peer end,
  },
  upgrade = function(req) return { data = { peer = req.peer } } end,
  open = function(conn) conn:send(conn.peer) end,
  message = function(conn, data) conn:send(data) end,
}
"""

ECHO_APP = "return { message = function(conn, data) conn:send(data) end }"


def post(port, path, body, headers=(), chunks=None):
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    if chunks is None:
        lines.append(f"Content-Length: {len(body)}")
    else:
        lines.append("Transfer-Encoding: chunked")
    lines += [f"{n}: {v}" for n, v in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if chunks is None:
        payload = body
    else:
        payload = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks if c)
        payload += b"0\r\nX-Trailer: yes\r\n\r\n"
    return wsraw.http_exchange(port, head + payload)


def get(port, path, headers=()):
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{n}: {v}" for n, v in headers]
    return wsraw.http_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def test_route_gets_a_content_length_body(wsserver_factory):
    server = wsserver_factory(app_source=ROUTES_APP)
    resp = post(server.port, "/echo", b"hello \x00 world")
    assert resp.status == 200
    assert resp.body == b"len=13 body=hello \x00 world"


def test_route_gets_a_chunked_body_split_anywhere(wsserver_factory):
    server = wsserver_factory(app_source=ROUTES_APP)
    body = b"0123456789" * 30
    resp = post(server.port, "/echo", body, chunks=[body[:7], body[7:200], body[200:]])
    assert resp.status == 200 and resp.body == b"len=300 body=" + body
    # the same request one byte at a time: the decoder keeps its place across reads
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = head + b"5\r\nabcde\r\n3\r\nfgh\r\n0\r\n\r\n"
    resp = wsraw.http_exchange(server.port, raw, chunk=1)
    assert resp.status == 200 and resp.body == b"len=8 body=abcdefgh"


def test_bodies_over_max_body_size_are_413(wsserver_factory):
    server = wsserver_factory(app_source=ROUTES_APP)
    assert post(server.port, "/echo", b"x" * 1000).status == 200
    too_big = post(server.port, "/echo", b"x" * 1001)
    assert too_big.status == 413 and b"request body too large" in too_big.body
    chunked = post(server.port, "/echo", b"", chunks=[b"y" * 600, b"y" * 600])
    assert chunked.status == 413
    # announced but never sent: refused from the head alone, nothing is read or buffered
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"
    assert wsraw.http_exchange(server.port, head).status == 413
    assert server.alive()


def test_malformed_framing_is_400(wsserver_factory):
    server = wsserver_factory(app_source=ROUTES_APP)
    base = b"POST /echo HTTP/1.1\r\nHost: x\r\n"
    cases = [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",  # smuggling
        b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"Content-Length: -1\r\n\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",  # bare LF
    ]
    for tail in cases:
        resp = wsraw.http_exchange(server.port, base + tail)
        assert resp.status == 400, (tail, resp.status_line)
    assert server.alive()


def test_a_body_that_never_ends_is_bounded_by_handshake_timeout(wsserver_factory):
    server = wsserver_factory(app_source=ROUTES_APP, args=["--handshake-timeout", "0.5"])
    sock = wsraw.open_socket(server.port)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    started = time.monotonic()
    sock.settimeout(5)
    assert sock.recv(100) == b""  # dropped without an answer
    assert time.monotonic() - started < 3
    sock.close()


def test_404_when_the_app_serves_http_426_when_it_does_not(wsserver_factory):
    routes = wsserver_factory(app_source=ROUTES_APP)
    resp = get(routes.port, "/nothing-here")
    assert resp.status == 404 and resp.body == b"not found\n"
    plain = wsserver_factory(app_source=ECHO_APP)
    resp = get(plain.port, "/nothing-here")
    assert resp.status == 426 and resp.header("Upgrade") == "websocket"


def upgrade_status(port, origin=None, extra=()):
    headers = list(extra) + ([("Origin", origin)] if origin else [])
    resp, sock, _ = wsraw.handshake(port, wsraw.build_request(extra=headers))
    sock.close()
    return resp.status


def test_allowed_origins_refuse_other_sites_before_upgrade_runs(wsserver_factory):
    app = r"""
    return {
      config = { allowed_origins = { "https://chat.example", "https://*.example.org" } },
      upgrade = function(req) ws.log.info("upgrade_ran", { origin = req.origin }) end,
    }
    """
    server = wsserver_factory(app_source=app)
    assert upgrade_status(server.port, "https://chat.example") == 101
    assert upgrade_status(server.port, "HTTPS://CHAT.EXAMPLE") == 101
    assert upgrade_status(server.port, "https://a.b.example.org") == 101
    assert upgrade_status(server.port, None) == 101  # not a browser: no cross-site hijack
    for bad in ("https://evil.example", "https://example.org", "http://chat.example",
                "https://chat.example.evil", "https://x.example.org.evil.com", "null"):
        assert upgrade_status(server.port, bad) == 403, bad
    wait_for(lambda: server.log().count("upgrade_ran") == 4, what="the four accepted upgrades")
    assert "evil" not in "".join(ln for ln in server.log().splitlines() if "upgrade_ran" in ln)
    assert server.log().count('reason="origin not allowed"') == 6


def test_trusted_proxy_forwards_the_client_address(wsserver_factory):
    app = ROUTES_APP.replace("config = { max_body_size = 1000 }",
                             'config = { trusted_proxies = { "127.0.0.0/8" } }')
    server = wsserver_factory(app_source=app)
    port = server.port
    assert get(port, "/peer", [("X-Forwarded-For", "203.0.113.7")]).body == b"203.0.113.7"
    # the client wrote the first entry itself: only the nearest untrusted hop counts
    xff = [("X-Forwarded-For", "6.6.6.6, 198.51.100.2, 127.0.0.9")]
    assert get(port, "/peer", xff).body == b"198.51.100.2"
    fwd = [("Forwarded", 'for="[2001:db8::1]:4711";proto=https')]
    assert get(port, "/peer", fwd).body == b"[2001:db8::1]"
    assert get(port, "/peer", [("X-Forwarded-For", "not-an-address")]).body.startswith(b"127.")
    assert get(port, "/peer").body.startswith(b"127.0.0.1:")
    # the WebSocket side: conn.peer and the log line carry the forwarded address
    resp, sock, rest = wsraw.handshake(
        port, wsraw.build_request(extra=[("X-Forwarded-For", "192.0.2.55")]))
    assert resp.status == 101
    sock.close()
    wait_for(lambda: 'peer="192.0.2.55" status=101' in server.log(), what="the access line")


def test_untrusted_peer_cannot_forge_its_address(wsserver_factory):
    app = ROUTES_APP.replace("config = { max_body_size = 1000 }",
                             'config = { trusted_proxies = { "10.0.0.0/8" } }')
    server = wsserver_factory(app_source=app)
    body = get(server.port, "/peer", [("X-Forwarded-For", "203.0.113.7")]).body
    assert body.startswith(b"127.0.0.1:"), body


def test_per_ip_limit_applies_to_the_forwarded_address(wsserver_factory):
    app = ('return { config = { trusted_proxies = { "127.0.0.1" }, max_connections_per_ip = 2 } }')
    server = wsserver_factory(app_source=app)
    socks = []
    for _ in range(2):
        resp, sock, _ = wsraw.handshake(
            server.port, wsraw.build_request(extra=[("X-Forwarded-For", "198.51.100.9")]))
        assert resp.status == 101
        socks.append(sock)
    assert upgrade_status(server.port, extra=[("X-Forwarded-For", "198.51.100.9")]) == 503
    # another client behind the same proxy is not affected
    assert upgrade_status(server.port, extra=[("X-Forwarded-For", "198.51.100.10")]) == 101
    for s in socks:
        s.close()


def test_trusted_proxies_are_validated(tmp_path):
    import subprocess
    app = tmp_path / "app.lua"
    app.write_text('return { config = { trusted_proxies = { "10.0.0.0/33" } } }')
    out = subprocess.run([wsraw_binary(), "--check", str(app)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode != 0
    assert "trusted_proxies" in out.stderr and "10.0.0.0/33" in out.stderr


def test_close_line_counts_each_broadcast_and_publish_once(wsserver_factory):
    app = """
    return {
      open = function(conn) conn:subscribe("news") end,
      message = function(conn, data)
        if data == "b" then ws.broadcast("to all") else ws.publish("news", "to news") end
      end,
    }
    """
    server = wsserver_factory(app_source=app, args=["--log-format", "json"])
    resp, sock, rest = wsraw.handshake(server.port, wsraw.build_request())
    assert resp.status == 101
    for data in (b"b", b"b", b"p"):
        sock.sendall(wsraw.encode_frame(wsraw.OP_TEXT, data))
    got = b""
    sock.settimeout(5)
    while got.count(b"to ") < 3:
        got += sock.recv(4096)
    sock.sendall(wsraw.encode_frame(wsraw.OP_CLOSE, wsraw.close_payload(1000, b"")))
    while sock.recv(4096):
        pass
    sock.close()

    record = wait_for(lambda: close_record(server), what="the close line")
    assert record["messages_in"] == 3 and record["messages_out"] == 3


def wsraw_binary():
    from conftest import BINARY
    return BINARY


def close_record(server):
    """The server's first close line (JSON logs), or None."""
    for line in server.log().splitlines():
        if '"event":"close"' in line:
            return json.loads(line)
    return None


def test_access_and_close_lines_say_what_an_operator_needs(wsserver_factory):
    server = wsserver_factory(app_source=ECHO_APP, args=["--log-format", "json"])
    resp, sock, rest = wsraw.handshake(
        server.port, wsraw.build_request(extra=[("User-Agent", "probe/1.0")]))
    assert resp.status == 101
    for i in range(3):
        sock.sendall(wsraw.encode_frame(wsraw.OP_TEXT, b"m%d" % i))
    sock.sendall(wsraw.encode_frame(wsraw.OP_CLOSE, wsraw.close_payload(4001, b"bye")))
    sock.settimeout(5)
    while sock.recv(4096):
        pass
    sock.close()

    record = wait_for(lambda: close_record(server), what="the close line")
    assert record["level"] == "info"
    assert record["code"] == 4001 and record["reason"] == "bye" and record["by"] == "peer"
    assert record["messages_in"] == 3 and record["messages_out"] == 3
    assert record["bytes_in"] > 0 and record["bytes_out"] > 0 and record["ms"] >= 0
    access = [json.loads(ln) for ln in server.log().splitlines() if '"event":"access"' in ln]
    ours = [a for a in access if a.get("ua") == "probe/1.0"]
    assert ours and ours[0]["status"] == 101 and ours[0]["bytes_out"] > 0
    assert re.fullmatch(r"127\.0\.0\.1:\d+", ours[0]["peer"])


def test_server_initiated_close_is_logged_as_ours(wsserver_factory):
    app = "return { message = function(conn) conn:close(4002, 'done') end }"
    server = wsserver_factory(app_source=app)
    c = wsraw.connect(server.port)
    c.send_frame(wsraw.OP_TEXT, b"x")
    c.expect_close(4002, reply=True)
    c.close()
    wait_for(lambda: "event=close " in server.log(), what="the close line")
    line = [ln for ln in server.log().splitlines() if "event=close " in ln][0]
    assert 'by="server"' in line and "code=4002" in line and "level=info" in line


def test_dropped_connection_is_logged_as_a_drop(wsserver_factory):
    server = wsserver_factory(app_source=ECHO_APP)
    c = wsraw.connect(server.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    wait_for(lambda: "event=close " in server.log(), what="the close line")
    line = [ln for ln in server.log().splitlines() if "event=close " in ln][0]
    assert 'by="drop"' in line and "code=1006" in line
