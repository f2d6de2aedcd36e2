#!/usr/bin/env python3
"""Network fuzzing of the whole server: mutated WebSocket sessions against the real binary.

The libFuzzer targets beside this file cover the pure parsers; this drives everything around them
(the connection state machine, the send queue, timeouts, permessage-deflate on a live connection,
TLS, the Lua dispatch, reloads) with byte streams no client would send:

    make fuzz-net SECONDS=300        # the server built with ASan+UBSan (build/san)
    python3 tests/fuzz/netfuzz.py --binary build/wsserver --seconds 60 --seed 7

Each session builds a plausible client stream (a handshake with one of several extension offers,
then 1-40 frames: commands of tests/soak/app.lua, echo traffic, fragments with control frames
between them, compressed messages, pings, closes with every kind of code, invalid UTF-8, every
RFC 6455 §5.2 violation), then, most of the time, mutates it (bit flips, inserted, deleted,
repeated or overwritten bytes, a truncation) and sends it in random pieces, plain or over TLS.
Some sessions never read, some reset the connection, some go silent. One in ten is a plain HTTP
request instead (static files, the app's routes, /metrics, path traversals), often mutated.

Oracles (any failure ends the run with exit status 1):
  - every byte the server sends is well formed: one HTTP status line and head (101 with the right
    Sec-WebSocket-Accept, or an error status), then server frames: unmasked, minimal length, no
    RSV2/RSV3, RSV1 only on the first frame of a message and only with permessage-deflate,
    known opcodes, control frames final and at most 125 bytes, continuations only inside a
    message, close payloads empty or a sendable code with a UTF-8 reason, nothing after the close
    frame, text (inflated when compressed) valid UTF-8; no response carries /etc/passwd;
  - a session left unmutated and made only of valid messages, pings and pongs is never closed
    with 1002, 1007 or 1009 (unless it compressed beyond the window the server asked for, or
    without permessage-deflate agreed); an unmutated session the server closes with 1000 in
    answer to ours got back, in order, every echo the app owed it, byte for byte;
  - canary clients echo through the whole run: every echo comes back exact within 5 s and no
    canary is ever closed;
  - reloads (SIGHUP every 3 s) keep succeeding; the server never dies; its descriptors return to
    the baseline when the load stops; SIGTERM ends it with status 0, and its log holds no
    sanitizer report.

The seed is printed; a run with the same seed makes the same sessions (the interleaving, and so
the server's answers, still depend on timing).
"""
import argparse
import asyncio
import base64
import hashlib
import logging
import os
import pathlib
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = ROOT / "tests" / "soak" / "app.lua"
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import wsraw  # noqa: E402  (frames, free ports, waiting for the listener)
from wsraw import free_port  # noqa: E402
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 65536
SERVER_FLAGS = ["--compression", "on", "--max-message-size", str(MAX_MESSAGE),
                "--max-buffered", "262144", "--max-header-size", "4096",
                "--handshake-timeout", "2", "--close-timeout", "1", "--ping-interval", "2",
                "--pong-timeout", "1", "--handler-timeout", "0.5", "--log-level", "warn",
                "--metrics", "--static", str(ROOT / "examples" / "chat" / "public")]
HTTP_METHODS = ["GET", "GET", "HEAD", "POST", "OPTIONS", "PUT", "get"]
HTTP_PATHS = ["/", "/index.html", "/app.js", "/style.css?v=1", "/soak/state", "/soak/heap",
              "/metrics", "/nope", "/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "//etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd", "/index.html/..", "/%00", "/%",
              "/" + "a" * 3000, "*", "http://127.0.0.1/index.html"]
SECRET = b"root:x:0:0"  # in /etc/passwd: never served from the static folder
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
OFFERS = [None, "permessage-deflate", "permessage-deflate; client_max_window_bits",
          "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
          "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9",
          "permessage-deflate; server_max_window_bits=8, permessage-deflate",
          "x-unknown; a=1, permessage-deflate; client_max_window_bits=15",
          "permessage-deflate; server_max_window_bits", "permessage-deflate; foo=bar"]
COMMANDS = ["join r1", "join r2", "pub r1 t", "pub r2 x", "json {\"a\":[1,2,{\"b\":null}]}",
            "json [", "flood 4", "flood 40", "close 4001", "close 1000", "close 999", "boom",
            "echo héllo ✓", ""]
APP_COMMANDS = {b"join", b"pub", b"json", b"flood", b"close", b"boom"}
INTERESTING = [0x00, 0x01, 0x7D, 0x7E, 0x7F, 0x80, 0x81, 0x88, 0x89, 0x8A, 0xC1, 0xFF]
# RFC 6455 §7.4.1 and the IANA registry: 1012-1014 are assigned (an app may send them);
# 1004-1006 and 1015 are never sent, 1016-2999 are unassigned
SEND_CODES = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))


class Violation(Exception):
    """The server did something an oracle forbids."""


frame = wsraw.encode_frame  # a client frame: (opcode, payload, fin, rsv, mask=, length_form=)


class Deflater:
    """The client's compressor for one connection (context takeover unless told otherwise)."""

    def __init__(self, rng, takeover):
        self.takeover = takeover
        self.z = None
        self.level = rng.randint(1, 9)

    def compress(self, data):
        if self.z is None or not self.takeover:
            self.z = zlib.compressobj(self.level, zlib.DEFLATED, -15)
        out = self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(b"\x00\x00\xff\xff") else out


def random_text(rng, clean):
    kind = rng.random() * (0.8 if clean else 1)
    if kind < 0.45:
        text = rng.choice(COMMANDS).encode()
        return b"echo " + text if clean and text.startswith((b"close", b"boom")) else text
    if kind < 0.7:
        return "".join(rng.choice("aé✓😀z \n{}") for _ in range(rng.randint(0, 300))).encode()
    if kind < 0.8:
        return b"x" * rng.choice([125, 126, 127, 65535, 65536])
    if kind < 0.85:
        return b"x" * rng.choice([MAX_MESSAGE + 1, 200000])
    # invalid UTF-8 somewhere: overlong, surrogate, truncated, above U+10FFFF, a stray byte
    bad = rng.choice([b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\xff"])
    return b"ok " + bad + b" tail"[: rng.randint(0, 5)]


def is_command(text):
    """Whether tests/soak/app.lua answers this text message with something else than its echo."""
    m = re.fullmatch(rb"([a-z]+) ?(.*)", text, re.S)
    return m is not None and m.group(1) in APP_COMMANDS


def gen_messages(rng, deflater, clean):
    """The frames of one session after the handshake, as a list of byte strings, and the
    (opcode, payload) echoes the app owes for them: those before the first close frame or
    "close" command. A clean session has only valid messages, pings and pongs."""
    out, echoes, ended = [], [], False
    for _ in range(rng.randint(1, 40)):
        r = rng.random() * (0.65 if clean else 1)
        if r < 0.5:
            opcode = 1 if rng.random() < 0.7 else 2
            if opcode == 1:
                data = random_text(rng, clean)
            else:
                data = rng.randbytes(rng.choice([0, 3, 200, 5000]))
            if opcode == 2 or not is_command(data):
                if not ended:
                    echoes.append((opcode, data))
            elif data.startswith(b"close"):
                ended = True
            rsv = 0
            if deflater and rng.random() < 0.5:
                data, rsv = deflater.compress(data), 4
            pieces = rng.choice([1, 1, 1, 2, 3, 7])
            cuts = sorted(rng.sample(range(len(data) + 1), min(pieces - 1, len(data) + 1)))
            parts = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
            for i, part in enumerate(parts):
                out.append(frame(opcode if i == 0 else 0, part, fin=i == len(parts) - 1,
                                 rsv=rsv if i == 0 else 0))
                if i + 1 < len(parts) and rng.random() < 0.3:
                    out.append(frame(9, b"between"))
        elif r < 0.65:
            size = rng.choice([0, 5, 125] if clean else [0, 5, 125, 126])
            out.append(frame(rng.choice([9, 10]), rng.randbytes(size)))
        elif r < 0.75:
            code = rng.choice([None, 1000, 1001, 1005, 1006, 1015, 999, 1004, 2999, 3000, 4999,
                               5000, 65535])
            payload = b"" if code is None else struct.pack("!H", code)
            payload += rng.choice([b"", b"bye", b"\xff\xfe", b"r" * 123, b"r" * 124])
            if rng.random() < 0.1:
                payload = b"\x03"
            out.append(frame(8, payload))
            ended = True
        else:  # a §5.2 violation
            v = rng.randrange(7)
            if v == 0:
                out.append(frame(rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), b"reserved"))
            elif v == 1:
                out.append(frame(1, b"rsv", rsv=rng.choice([1, 2, 3, 4, 6, 7])))
            elif v == 2:
                out.append(frame(1, b"unmasked", mask=False))
            elif v == 3:
                out.append(frame(2, b"long", length_form=rng.choice([16, 64])))
            elif v == 4:
                out.append(frame(0, b"orphan continuation"))
            elif v == 5:
                out.append(frame(9, b"fragmented ping", fin=False))
            else:
                out.append(b"\x82\xff" + b"\x80" + b"\x00" * 7 + b"\x00" * 4)  # 2^63 length
    return out, echoes


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not data:
            data += rng.randbytes(8)
        i = rng.randrange(len(data))
        op = rng.randrange(6)
        if op == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[i] = rng.choice(INTERESTING)
        elif op == 2:
            data[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:
            del data[i:i + rng.randint(1, 32)]
        elif op == 4:
            j = rng.randrange(len(data))
            data[i:i] = data[j:j + rng.randint(1, 64)]
        else:
            del data[rng.randrange(len(data) + 1):]
    return bytes(data)


class ServerStream:
    """Checks the bytes one connection receives from the server, fed incrementally."""

    def __init__(self, key, record, http=False):
        self.key = key
        self.http = http  # a plain HTTP request: any status may answer it
        self.messages = [] if record else None  # (opcode, payload) of every data message
        self.buf = bytearray()
        self.state = "head"
        self.status = None
        self.deflate = False
        self.server_takeover = True
        self.client_window = 15
        self.inflater = None
        self.in_message = None  # (opcode, compressed, parts) of the message being received
        self.close_code = None

    def fail(self, why):
        raise Violation(f"{why} (status {self.status}, state {self.state}, "
                        f"next bytes {bytes(self.buf[:24]).hex()})")

    def feed(self, data):
        self.buf += data
        while self.step():
            pass

    def step(self):
        if self.state == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 16384:
                    self.fail("response head over 16 KiB")
                return False
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[:end + 4]
            self.check_head(head)
            return True
        if self.state == "body":  # a plain HTTP response: its body, then EOF
            if SECRET in self.buf:
                self.fail("a file from outside the static folder was served")
            del self.buf[:-len(SECRET)]
            return False
        if self.state == "closed":
            if self.buf:
                self.fail("bytes after the server's close frame")
            return False
        return self.step_frame()

    def check_head(self, head):
        lines = head.split("\r\n")
        m = re.fullmatch(r"HTTP/1\.1 (\d{3}) [^\r\n]+", lines[0])
        if not m:
            self.fail(f"bad status line {lines[0]!r}")
        self.status = int(m.group(1))
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                self.fail(f"bad header line {line!r}")
            headers[name.lower()] = value.strip()
        if self.status != 101:
            if not (200 if self.http else 400) <= self.status < 600:
                self.fail(f"unexpected status {self.status}")
            if "content-length" not in headers:
                self.fail("error response without Content-Length")
            self.state = "body"
            return
        if self.key is None:
            self.fail("101 to a request without a Sec-WebSocket-Key")
        want = base64.b64encode(hashlib.sha1(self.key + GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != want:
            self.fail("wrong Sec-WebSocket-Accept")
        ext = headers.get("sec-websocket-extensions", "")
        self.deflate = ext.startswith("permessage-deflate")
        self.client_window = int((re.findall(r"client_max_window_bits=(\d+)", ext) or [15])[0])
        if ext and not self.deflate:
            self.fail(f"extension never offered: {ext!r}")
        self.server_takeover = "server_no_context_takeover" not in ext
        self.state = "frames"

    def step_frame(self):
        if len(self.buf) < 2:
            return False
        b0, b1 = self.buf[0], self.buf[1]
        fin, rsv, opcode, n = b0 >> 7, (b0 >> 4) & 7, b0 & 15, b1 & 127
        if b1 & 0x80:
            self.fail("masked server frame")
        pos = 2
        if n >= 126:
            size = 2 if n == 126 else 8
            if len(self.buf) < 2 + size:
                return False
            n = int.from_bytes(self.buf[2:2 + size], "big")
            pos += size
            if n < (126 if size == 2 else 65536):
                self.fail("non-minimal length")
        if len(self.buf) < pos + n:
            return False
        payload = bytes(self.buf[pos:pos + n])
        del self.buf[:pos + n]
        if rsv & 3:
            self.fail("RSV2/RSV3 set")
        if opcode >= 8:
            if opcode not in (8, 9, 10):
                self.fail(f"reserved control opcode {opcode}")
            if not fin or n > 125 or rsv:
                self.fail("bad control frame")
            if opcode == 8:
                self.check_close(payload)
            return True
        if opcode not in (0, 1, 2):
            self.fail(f"reserved data opcode {opcode}")
        if opcode == 0:
            if self.in_message is None:
                self.fail("continuation outside a message")
            if rsv:
                self.fail("RSV1 on a continuation")
            self.in_message[2].append(payload)
        else:
            if self.in_message is not None:
                self.fail("new message inside a fragmented one")
            if rsv and not self.deflate:
                self.fail("RSV1 without permessage-deflate")
            self.in_message = (opcode, bool(rsv), [payload])
        if fin:
            self.finish_message()
        return True

    def finish_message(self):
        opcode, compressed, parts = self.in_message
        self.in_message = None
        data = b"".join(parts)
        if compressed:
            if self.inflater is None or not self.server_takeover:
                self.inflater = zlib.decompressobj(-15)
            try:
                data = self.inflater.decompress(data + b"\x00\x00\xff\xff")
            except zlib.error as e:
                self.fail(f"server's compressed message does not inflate: {e}")
        if opcode == 1:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.fail("server sent invalid UTF-8 text")
        if self.messages is not None:
            self.messages.append((opcode, data))

    def check_echoes(self, echoes):
        """Each owed echo arrived, in order, among the data messages received."""
        got = iter(self.messages)
        for i, want in enumerate(echoes):
            if not any(m == want for m in got):
                raise Violation(f"echo {i + 1} of {len(echoes)} ({want[0]}, {len(want[1])} "
                                f"bytes) missing after a clean close ({len(self.messages)} "
                                "messages received)")

    def check_close(self, payload):
        if len(payload) == 1:
            self.fail("close payload of 1 byte")
        if payload:
            code = struct.unpack("!H", payload[:2])[0]
            if code not in SEND_CODES:
                self.fail(f"server sent close code {code}")
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self.fail("close reason not UTF-8")
            self.close_code = code
        else:
            self.close_code = 1005
        self.state = "closed"


class Run:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="wsserver-netfuzz-"))
        self.log_path = self.workdir / "server.log"
        self.port = free_port()
        self.tls_port = None
        self.tls_ctx = None
        self.proc = None
        self.stop = asyncio.Event()
        self.violations = []
        self.stats = Counter()
        self.statuses = Counter()
        self.close_codes = Counter()
        self.canary_echoes = 0
        self.reloads = 0

    def violation(self, what):
        if len(self.violations) < 20:
            print(f"netfuzz: VIOLATION: {what}", flush=True)
        self.violations.append(what)

    def start_server(self):
        cmd = [self.args.binary, "-l", f"127.0.0.1:{self.port}", *SERVER_FLAGS,
               *self.args.server_arg]
        script = ROOT / "scripts" / "gen-test-cert.sh"
        certs = self.workdir / "certs"
        if shutil.which("openssl") and subprocess.run(
                ["bash", str(script), str(certs)], capture_output=True).returncode == 0:
            self.tls_port = free_port()
            self.tls_ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
            cmd += ["-l", f"tls:127.0.0.1:{self.tls_port}", "--tls-cert",
                    str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
        cmd.append(str(APP))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log = open(self.log_path, "wb")
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wsraw.wait_listening(self.proc, self.port, 15)
        except RuntimeError as e:
            sys.exit(f"{e}:\n{self.log_tail()}")

    def log_tail(self, n=4000):
        return self.log_path.read_text(errors="replace")[-n:]

    def fds(self):
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:  # the server is gone: reported as such after the loop
            return -1

    async def open(self, tls):
        if tls:
            return await wsraw.open_stream(self.tls_port, self.tls_ctx)
        return await wsraw.open_stream(self.port)

    # fuzz sessions

    async def session(self, rng):
        tls = self.tls_port is not None and rng.random() < 0.15
        if rng.random() < 0.1:
            return await self.http_session(rng, tls)
        key = base64.b64encode(rng.randbytes(16))
        offer = rng.choice(OFFERS)
        head = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key +
                b"\r\n" + (f"Sec-WebSocket-Extensions: {offer}\r\n".encode() if offer else b"") +
                b"\r\n")
        deflater = Deflater(rng, "client_no_context_takeover" not in (offer or "")) \
            if offer or rng.random() < 0.1 else None
        mode = rng.random()
        clean = mode >= 0.7
        frames, echoes = gen_messages(rng, deflater, clean)
        body = b"".join(frames)
        if mode < 0.1:
            head = mutate(rng, head)
        elif mode < 0.7:
            body = mutate(rng, body)
            echoes = None
        ending = rng.choice(["close", "close", "close", "eof", "reset", "silent", "deaf"])
        if ending == "close":
            body += frame(8, struct.pack("!H", 1000))
        # the key as the server reads it from what is sent (a mutation may have changed it)
        m = re.search(rb"\r\nsec-websocket-key:[ \t]*([^\r\n]*?)[ \t]*\r\n", head, re.I)
        # a mutated head may have become a plain HTTP request (a static file, say)
        stream = ServerStream(m.group(1) if m else None, echoes is not None, http=mode < 0.1)
        try:
            reader, writer = await asyncio.wait_for(self.open(tls), 5)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            self.stats["connect_failed"] += 1
            return
        reading = None
        if ending != "deaf":
            reading = asyncio.ensure_future(self.read_all(reader, stream))
        try:
            data = head + body
            pos = 0
            while pos < len(data) and not (reading and reading.done()):
                n = rng.choice([1, 2, 7, 64, 1000, 4096, 65536])
                writer.write(data[pos:pos + n])
                pos += n
                if rng.random() < 0.2:
                    await asyncio.wait_for(writer.drain(), 5)
                if rng.random() < 0.03:
                    await asyncio.sleep(rng.random() * 0.3)
            await asyncio.wait_for(writer.drain(), 5)
            if ending == "eof" and not tls:
                writer.write_eof()
            if ending == "reset":
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif reading is not None:
                await asyncio.wait_for(asyncio.shield(reading), 6)
                # a session of valid messages (our compressor uses a 15-bit window) must not be
                # taken for a protocol error, bad data or too big
                if clean and stream.close_code in (1002, 1007, 1009) and not (
                        any(f[0] & 0x40 for f in frames)
                        and (not stream.deflate or stream.client_window < 15)):
                    raise Violation(f"valid session closed with {stream.close_code} (offer "
                                    f"{offer!r})")
                # the server answered our close with 1000: it took every message as valid
                if echoes is not None and stream.close_code == 1000:
                    stream.check_echoes(echoes)
                    self.stats["echo_checked"] += 1
        except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError):
            pass
        except Violation as e:
            self.violation(str(e))
        finally:
            writer.close()
            if reading is not None:
                reading.cancel()
                try:
                    await reading
                except (asyncio.CancelledError, ConnectionError, OSError, ssl.SSLError):
                    pass
                except Violation as e:
                    self.violation(str(e))
        self.stats["sessions"] += 1
        self.stats["tls" if tls else "plain"] += 1
        self.statuses[stream.status] += 1
        if stream.close_code is not None:
            self.close_codes[stream.close_code] += 1

    async def http_session(self, rng, tls):
        """A plain HTTP request (static files, the app's routes, /metrics), often mutated."""
        path = rng.choice(HTTP_PATHS)
        head = (f"{rng.choice(HTTP_METHODS)} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() +
                rng.choice([b"", b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n",
                            b"Range: bytes=0-10\r\n", b"If-None-Match: *\r\n"]) + b"\r\n" +
                rng.choice([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n"]))
        if rng.random() < 0.5:
            head = mutate(rng, head)
        stream = ServerStream(None, False, http=True)
        try:
            reader, writer = await asyncio.wait_for(self.open(tls), 5)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            self.stats["connect_failed"] += 1
            return
        try:
            writer.write(head)
            await asyncio.wait_for(self.read_all(reader, stream), 6)
        except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError):
            pass
        except Violation as e:
            self.violation(f"{e} (request {head[:80]!r})")
        finally:
            writer.close()
        self.stats["sessions"] += 1
        self.stats["http"] += 1
        self.statuses[stream.status] += 1

    async def read_all(self, reader, stream):
        while True:
            data = await reader.read(65536)
            if not data:
                return
            stream.feed(data)

    async def fuzzer(self, n):
        rng = random.Random(self.args.seed * 1000 + n)
        while not self.stop.is_set():
            await self.session(rng)

    # canaries and reloads

    async def canary(self, n):
        reader, writer = await self.open(False)
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: "
                     b"Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key +
                     b"\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if not head.startswith(b"HTTP/1.1 101 "):
            self.violation(f"canary {n} handshake: {head[:40]!r}")
            return
        i = 0
        while not self.stop.is_set():
            i += 1
            text = f"canary {n} {i} " + "c" * (i % 300)
            writer.write(frame(1, text.encode()))
            try:
                got = await asyncio.wait_for(self.canary_reply(reader, writer), 5)
            except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
                self.violation(f"canary {n} message {i}: no echo ({type(e).__name__}: {e})")
                return
            if got != text.encode():
                self.violation(f"canary {n} message {i}: got {got[:60]!r}")
                return
            self.canary_echoes += 1
            await asyncio.sleep(0.05)
        writer.write(frame(8, struct.pack("!H", 1000)))
        writer.close()

    async def canary_reply(self, reader, writer):
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 127
            if n >= 126:
                n = int.from_bytes(await reader.readexactly(2 if n == 126 else 8), "big")
            payload = await reader.readexactly(n)
            opcode = b0 & 15
            if opcode == 9:
                writer.write(frame(10, payload))
            elif opcode == 8:
                raise ConnectionError(f"closed: {payload[:2].hex()}")
            elif opcode == 1:
                return payload

    async def reloader(self):
        while not self.stop.is_set():
            await asyncio.sleep(3)
            if self.proc.poll() is not None:
                return
            self.proc.send_signal(signal.SIGHUP)
            self.reloads += 1

    async def main(self):
        self.start_server()
        baseline = self.fds()
        print(f"netfuzz: seed {self.args.seed}, {self.args.seconds} s, {self.args.clients} "
              f"fuzzing clients, server pid {self.proc.pid} ({self.args.binary}), "
              f"tls {'on' if self.tls_port else 'off'}", flush=True)
        tasks = [asyncio.ensure_future(self.canary(n)) for n in range(4)]
        tasks += [asyncio.ensure_future(self.fuzzer(n)) for n in range(self.args.clients)]
        tasks.append(asyncio.ensure_future(self.reloader()))
        start = time.monotonic()
        while time.monotonic() - start < self.args.seconds and self.proc.poll() is None \
                and not self.violations:
            await asyncio.sleep(1)
            t = int(time.monotonic() - start)
            if t % 10 == 0:
                print(f"  t={t:4d}s  sessions={self.stats['sessions']}  fds={self.fds()}  "
                      f"canary echoes={self.canary_echoes}", flush=True)
        self.stop.set()
        done, pending = await asyncio.wait(tasks, timeout=20)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                self.violation(f"client task failed: {t.exception()!r}")
        if self.proc.poll() is not None:
            self.violation(f"wsserver died with status {self.proc.returncode}")
            return
        deadline = time.monotonic() + 15
        while self.fds() > baseline and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if self.fds() > baseline:
            self.violation(f"descriptors: {self.fds()} after the load, {baseline} before")

    def finish(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.violation("wsserver did not exit within 30 s of SIGTERM")
            if self.proc.returncode not in (0, -9):
                self.violation(f"wsserver exited with status {self.proc.returncode}")
        log = self.log_path.read_text(errors="replace")
        for marker in SANITIZER_MARKERS:
            if marker in log:
                self.violation(f"sanitizer report in the server log ({marker})")
        for event in ("app_load_failed", "tls_reload_failed"):
            if f"event={event}" in log:
                self.violation(f"a reload failed ({event})")
        print(f"netfuzz: {self.stats['sessions']} sessions ({self.stats['plain']} plain, "
              f"{self.stats['tls']} TLS, {self.stats['http']} plain HTTP requests; "
              f"{self.stats['echo_checked']} closed cleanly with "
              f"every echo checked), {self.canary_echoes} canary echoes, "
              f"{self.reloads} reloads; statuses {dict(self.statuses)}; "
              f"close codes {dict(sorted(self.close_codes.items()))}", flush=True)
        if self.violations:
            print(f"netfuzz: FAILED ({len(self.violations)} violations); server log "
                  f"{self.log_path}:\n{self.log_tail()}")
            return 1
        shutil.rmtree(self.workdir, ignore_errors=True)
        print("netfuzz: passed")
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.environ.get("WSSERVER", str(ROOT / "build/wsserver")))
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--server-arg", action="append", default=[],
                    help="one more wsserver argument (repeatable): --server-arg=--workers=2")
    args = ap.parse_args()
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # writes to a peer that hung up
    run = Run(args)
    status = 1
    try:
        asyncio.run(run.main())
    finally:
        if run.proc is not None:
            status = run.finish()
    sys.exit(status)


if __name__ == "__main__":
    main()
