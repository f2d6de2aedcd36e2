'use strict';
// A `ws` peer over wss:// for the wsserver TLS integration tests (test_tls.py).
//
//   node tls_client.js URL CA_PEM MODE
//
// MODE:
//   basics      echo of every length-encoding boundary (text and binary, up to 4 MiB), a
//               fragmented message with a ping between fragments, ping/pong payloads, then a
//               client close with 4000 that the server must echo and follow with the TCP close
//   concurrent  50 clients at once, 5 echoes each
//   connect     open one connection and report whether the certificate verified
// The only trust anchor is CA_PEM (the `ca` option): the system store is not used.
// One JSON object goes to stdout: {"ok": bool, "failures": [...], ...}; exit 0 when ok.
const fs = require('fs');
const WebSocket = require('ws');

const STEP_MS = 10000;
const MiB = 1024 * 1024;

function gen(kind, size) {
  if (kind === 'text') {
    const unit = 'a\u00e9\u20ac\u{1d11e}'; // 1 + 2 + 3 + 4 UTF-8 bytes
    const whole = unit.repeat(Math.floor(size / 10));
    const used = Buffer.byteLength(whole, 'utf8');
    return Buffer.from(whole + 'x'.repeat(size - used), 'utf8');
  }
  const b = Buffer.allocUnsafe(size);
  let x = (size * 2654435761) >>> 0;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

function describe(buf) {
  if (buf.length <= 32) return buf.toString('hex') || '(empty)';
  return `${buf.length} bytes starting ${buf.subarray(0, 16).toString('hex')}`;
}

class Inbox {
  constructor() {
    this.items = [];
    this.waiters = [];
  }
  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }
  next(ms, what) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(done);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
      }, ms);
      const done = (item) => {
        clearTimeout(timer);
        resolve(item);
      };
      this.waiters.push(done);
    });
  }
}

function open(url, ca) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * MiB,
                                    handshakeTimeout: STEP_MS, ca });
    const peer = { ws, messages: new Inbox(), pongs: new Inbox(), closes: new Inbox(),
                   errors: [] };
    ws.on('message', (data, isBinary) => peer.messages.push({ data, isBinary }));
    ws.on('pong', (data) => peer.pongs.push(data));
    ws.on('close', (code, reason) => {
      peer.closes.push({ code, reason: reason.toString('utf8'), at: Date.now() });
      peer.messages.push(null);
    });
    ws.on('error', (err) => {
      peer.errors.push(`${err && err.code ? err.code + ': ' : ''}${err && err.message}`);
      reject(err);
    });
    ws.on('open', () => resolve(peer));
  });
}

function send(ws, data, options) {
  return new Promise((resolve, reject) => {
    ws.send(data, { compress: false, ...options }, (err) => (err ? reject(err) : resolve()));
  });
}

async function expectMessage(peer, kind, want, what) {
  const msg = await peer.messages.next(STEP_MS, what);
  if (msg === null) {
    const c = peer.closes.items[0];
    throw new Error(`${what}: connection closed (${c && c.code}) instead of a message`);
  }
  const got = msg.isBinary ? 'binary' : 'text';
  if (got !== kind) throw new Error(`${what}: got a ${got} message, want ${kind}`);
  if (!msg.data.equals(want)) {
    throw new Error(`${what}: expected ${describe(want)}, got ${describe(msg.data)}`);
  }
}

async function basics(url, ca) {
  const failures = [];
  const peer = await open(url, ca);
  const { ws } = peer;
  const result = { echoed: 0 };
  const check = async (what, fn) => {
    try {
      await fn();
    } catch (err) {
      failures.push(`${what}: ${err.message}`);
    }
  };
  for (const kind of ['text', 'binary']) {
    for (const size of [0, 1, 125, 126, 65535, 65536, MiB, 4 * MiB]) {
      await check(`${kind} ${size}`, async () => {
        const data = gen(kind, size);
        await send(ws, data, { binary: kind === 'binary' });
        await expectMessage(peer, kind, data, `echo of ${kind} ${size}`);
        result.echoed++;
      });
    }
  }
  await check('fragmented', async () => {
    const parts = [Buffer.from('frag-'), gen('binary', 70000), Buffer.alloc(0), Buffer.from('end')];
    for (let i = 0; i < parts.length; i++) {
      await send(ws, parts[i], { binary: true, fin: i === parts.length - 1 });
      if (i === 1) ws.ping(Buffer.from('between'));
    }
    const pong = await peer.pongs.next(STEP_MS, 'the pong between fragments');
    if (pong.toString() !== 'between') throw new Error(`pong carried ${describe(pong)}`);
    await expectMessage(peer, 'binary', Buffer.concat(parts), 'the reassembled message');
  });
  await check('ping/pong', async () => {
    for (const p of [Buffer.alloc(0), Buffer.from('p'), gen('binary', 125)]) {
      ws.ping(p);
      const got = await peer.pongs.next(STEP_MS, 'a pong');
      if (!got.equals(p)) throw new Error(`pong carried ${describe(got)}, want ${describe(p)}`);
    }
  });
  await check('close', async () => {
    const started = Date.now();
    ws.close(4000, 'node bye');
    const c = await peer.closes.next(STEP_MS, 'the close');
    result.close = { code: c.code, reason: c.reason, ms: c.at - started };
    if (c.code !== 4000) throw new Error(`close code ${c.code}, want 4000`);
    // ws emits 'close' only once the TCP connection ended: the server closed it promptly
    if (c.at - started > 2500) throw new Error(`closed after ${c.at - started} ms`);
  });
  if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.terminate();
  if (peer.errors.length) failures.push(`socket errors: ${peer.errors.join('; ')}`);
  return { ok: failures.length === 0, failures, ...result };
}

async function concurrent(url, ca, clients, messages) {
  const failures = [];
  const opened = await Promise.allSettled(Array.from({ length: clients }, () => open(url, ca)));
  const peers = [];
  for (const r of opened) {
    if (r.status === 'fulfilled') peers.push(r.value);
    else failures.push(`open: ${r.reason && r.reason.message}`);
  }
  let echoed = 0;
  await Promise.all(peers.map(async (peer, i) => {
    try {
      for (let k = 0; k < messages; k++) {
        const binary = k % 2 === 1;
        const data = Buffer.from(`client ${i} message ${k} ` + 'z'.repeat((i * 37 + k) % 3000));
        await send(peer.ws, data, { binary });
        await expectMessage(peer, binary ? 'binary' : 'text', data, `echo ${k}`);
        echoed++;
      }
    } catch (err) {
      failures.push(`client ${i}: ${err.message}`);
    }
  }));
  await Promise.all(peers.map((peer) => {
    peer.ws.close(1000);
    return peer.closes.next(STEP_MS, 'close').catch(() => peer.ws.terminate());
  }));
  return { ok: failures.length === 0 && peers.length === clients, opened: peers.length, echoed,
           failures: failures.slice(0, 20) };
}

async function connectOnly(url, ca) {
  try {
    const peer = await open(url, ca);
    const data = Buffer.from('verified');
    await send(peer.ws, data, {});
    await expectMessage(peer, 'text', data, 'echo');
    peer.ws.terminate();
    return { ok: true, failures: [], connected: true };
  } catch (err) {
    return { ok: false, connected: false, code: err && err.code,
             failures: [`${err && err.code}: ${err && err.message}`] };
  }
}

async function main() {
  const [url, caPath, mode] = process.argv.slice(2);
  const ca = fs.readFileSync(caPath);
  let result;
  try {
    if (mode === 'basics') result = await basics(url, ca);
    else if (mode === 'concurrent') result = await concurrent(url, ca, 50, 5);
    else if (mode === 'connect') result = await connectOnly(url, ca);
    else throw new Error(`unknown mode ${mode}`);
  } catch (err) {
    result = { ok: false, failures: [`fatal: ${err && err.code} ${err && err.message}`] };
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exitCode = result.ok ? 0 : 1;
}

main();
