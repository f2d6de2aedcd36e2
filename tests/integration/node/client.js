'use strict';
// A scripted `ws` peer for the wsserver integration tests.
//
//   node client.js URL < plan.json
//
// The plan is either {"steps": [...]} (one connection, steps run in order) or
// {"concurrent": {"clients": N, "messages": M}}. One JSON object goes to stdout:
// {"ok": bool, "failures": [...], ...}. Exit status is 0 when ok, 1 otherwise.
//
// Steps (payloads are {"hex": "..."}, {"text": "..."} or {"gen": "text"|"binary", "size": N}):
//   {"op": "send", "kind": "text"|"binary", "data": P, "fin": true}
//   {"op": "expect", "kind": "text"|"binary", "data": P}     next message must equal P
//   {"op": "ping", "data": P}            {"op": "expect_pong", "data": P}
//   {"op": "close", "code": C, "reason": R}
//   {"op": "expect_close", "code": C, "reason": R?, "within_ms": T?}
const WebSocket = require('ws');

const STEP_MS = 10000;

function payload(spec) {
  if (spec === undefined) return Buffer.alloc(0);
  if (spec.hex !== undefined) return Buffer.from(spec.hex, 'hex');
  if (spec.text !== undefined) return Buffer.from(spec.text, 'utf8');
  if (spec.gen === 'text') {
    // Exactly spec.size UTF-8 bytes mixing 1-, 2-, 3- and 4-byte sequences.
    const unit = 'a\u00e9\u20ac\u{1d11e}';
    const whole = unit.repeat(Math.floor(spec.size / 10));
    const used = Buffer.byteLength(whole, 'utf8');
    return Buffer.from(whole + 'x'.repeat(spec.size - used), 'utf8');
  }
  if (spec.gen === 'binary') {
    const b = Buffer.allocUnsafe(spec.size);
    let x = (spec.size * 2654435761) >>> 0;
    for (let i = 0; i < spec.size; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      b[i] = x >>> 24;
    }
    return b;
  }
  throw new Error('bad payload spec ' + JSON.stringify(spec));
}

function describe(buf) {
  if (buf.length <= 32) return buf.toString('hex') || '(empty)';
  return `${buf.length} bytes starting ${buf.subarray(0, 16).toString('hex')}`;
}

// A queue of events of one type that steps can await with a timeout.
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

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024,
                                    handshakeTimeout: STEP_MS });
    const messages = new Inbox();
    const pongs = new Inbox();
    const closes = new Inbox();
    const errors = [];
    ws.on('message', (data, isBinary) => messages.push({ data, isBinary }));
    ws.on('pong', (data) => pongs.push(data));
    ws.on('close', (code, reason) => {
      closes.push({ code, reason: reason.toString('utf8'), at: Date.now() });
      messages.push(null);
    });
    ws.on('error', (err) => {
      errors.push(String(err && err.message));
      reject(err);
    });
    ws.on('open', () => resolve({ ws, messages, pongs, closes, errors }));
  });
}

function send(ws, data, options) {
  return new Promise((resolve, reject) => {
    ws.send(data, options, (err) => (err ? reject(err) : resolve()));
  });
}

async function runSteps(url, steps) {
  const failures = [];
  const peer = await open(url);
  const { ws } = peer;
  let closeStarted = null;
  const result = {};
  for (let i = 0; i < steps.length; i++) {
    const step = steps[i];
    const where = `step ${i} (${step.op})`;
    try {
      if (step.op === 'send') {
        await send(ws, payload(step.data), {
          binary: step.kind === 'binary',
          fin: step.fin !== false,
          compress: false,
        });
      } else if (step.op === 'expect') {
        const msg = await peer.messages.next(STEP_MS, 'a message');
        if (msg === null) {
          const c = peer.closes.items[0];
          throw new Error(`connection closed (${c && c.code}) instead of a message`);
        }
        const want = payload(step.data);
        const gotKind = msg.isBinary ? 'binary' : 'text';
        if (gotKind !== step.kind) failures.push(`${where}: got a ${gotKind} message`);
        if (!msg.data.equals(want)) {
          failures.push(`${where}: expected ${describe(want)}, got ${describe(msg.data)}`);
        }
      } else if (step.op === 'ping') {
        ws.ping(payload(step.data));
      } else if (step.op === 'expect_pong') {
        const got = await peer.pongs.next(STEP_MS, 'a pong');
        const want = payload(step.data);
        if (!got.equals(want)) {
          failures.push(`${where}: pong carried ${describe(got)}, expected ${describe(want)}`);
        }
      } else if (step.op === 'close') {
        closeStarted = Date.now();
        if (step.reason !== undefined) ws.close(step.code, step.reason);
        else ws.close(step.code);
      } else if (step.op === 'expect_close') {
        const started = closeStarted || Date.now();
        const c = await peer.closes.next(STEP_MS, 'the close');
        result.close = { code: c.code, reason: c.reason, ms: c.at - started };
        if (c.code !== step.code) failures.push(`${where}: close code ${c.code}, want ${step.code}`);
        if (step.reason !== undefined && c.reason !== step.reason) {
          failures.push(`${where}: close reason ${JSON.stringify(c.reason)}`);
        }
        if (step.within_ms !== undefined && c.at - started > step.within_ms) {
          failures.push(`${where}: closed after ${c.at - started} ms (> ${step.within_ms})`);
        }
      } else {
        throw new Error('unknown op');
      }
    } catch (err) {
      failures.push(`${where}: ${err.message}`);
      break;
    }
  }
  if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.terminate();
  if (peer.errors.length) failures.push(`socket errors: ${peer.errors.join('; ')}`);
  return { ok: failures.length === 0, failures, ...result };
}

async function runConcurrent(url, { clients, messages }) {
  const failures = [];
  const peers = [];
  // Open in waves so the listen backlog is never the bottleneck; keep them all open together.
  for (let start = 0; start < clients; start += 50) {
    const wave = [];
    for (let i = start; i < Math.min(clients, start + 50); i++) wave.push(open(url));
    const opened = await Promise.allSettled(wave);
    for (const r of opened) {
      if (r.status === 'fulfilled') peers.push(r.value);
      else failures.push(`open: ${r.reason && r.reason.message}`);
    }
  }
  const opened = peers.length;
  let echoed = 0;
  await Promise.all(peers.map(async (peer, i) => {
    try {
      for (let k = 0; k < messages; k++) {
        const binary = k % 2 === 1;
        const data = Buffer.from(`client ${i} message ${k} ` + 'z'.repeat((i * 37 + k) % 300));
        await send(peer.ws, data, { binary, compress: false });
        const msg = await peer.messages.next(STEP_MS, `echo ${k}`);
        if (msg === null) throw new Error('closed');
        if (msg.isBinary !== binary || !msg.data.equals(data)) {
          throw new Error(`echo ${k} differs`);
        }
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
  return { ok: failures.length === 0 && opened === clients, opened, echoed,
           failures: failures.slice(0, 20), failure_count: failures.length };
}

async function main() {
  const url = process.argv[2];
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const plan = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  let result;
  try {
    result = plan.concurrent ? await runConcurrent(url, plan.concurrent)
                             : await runSteps(url, plan.steps);
  } catch (err) {
    result = { ok: false, failures: [`fatal: ${err && err.message}`] };
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exitCode = result.ok ? 0 : 1;
}

main();
