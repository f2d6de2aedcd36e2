// permessage-deflate (RFC 7692) with a real browser: headless Chromium (Debian's /usr/bin/chromium
// driven by playwright-core) against build/wsserver --compression on. The server serves a small
// page with --static from a temporary folder; the WebSocket runs inside that page.
//
//   node --test tests/browser/deflate.test.js        (after `make`)
//
// Checks: Chromium negotiates permessage-deflate (ws.extensions in the page, exact answer), large
// repetitive JSON and random binary round-trip intact, the server's byte counters (/metrics) show
// that both directions really travelled compressed, and a broadcast reaches a second page.
// Every wait is bounded; the file takes a few seconds (hard cap 30 s).
'use strict';

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { freePort, launchBrowser, Server } = require('./harness');

const STEP = 8000; // ms any single wait may take

// Echo, and "bc:<rest>": ws.broadcast(<rest>) to every page, the sender included.
const APP = `
return {
  message = function(conn, data, kind)
    if kind == "text" and data:sub(1, 3) == "bc:" then
      ws.broadcast(data:sub(4))
    else
      conn:send(data, kind)
    end
  end,
}
`;

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>deflate test</title></head>
<body><p>permessage-deflate test page</p>
<script>
  // open(): a WebSocket to this server; resolves once open with the socket.
  window.openSocket = () => new Promise((resolve, reject) => {
    const ws = new WebSocket('ws://' + location.host + '/');
    ws.binaryType = 'arraybuffer';
    ws.inbox = [];
    ws.waiters = [];
    ws.onmessage = (ev) => {
      const w = ws.waiters.shift();
      if (w) w(ev.data); else ws.inbox.push(ev.data);
    };
    ws.next = (ms) => ws.inbox.length ? Promise.resolve(ws.inbox.shift())
      : new Promise((res, rej) => {
        const t = setTimeout(() => rej(new Error('no message within ' + ms + ' ms')), ms);
        ws.waiters.push((d) => { clearTimeout(t); res(d); });
      });
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error('WebSocket error'));
  });
</script></body></html>
`;

describe('permessage-deflate in headless Chromium', { timeout: 30000 }, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wsserver-deflate-'));
  let server;
  let browser;
  let base;
  const pageErrors = [];

  async function openPage(name) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(STEP);
    page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`));
    await page.goto(base);
    return page;
  }

  before(async () => {
    fs.mkdirSync(path.join(tmp, 'public'));
    fs.writeFileSync(path.join(tmp, 'public', 'index.html'), PAGE);
    fs.writeFileSync(path.join(tmp, 'app.lua'), APP);
    server = new Server(await freePort(), path.join(tmp, 'wsserver.log'),
      ['--compression', 'on', '--metrics', '--static', path.join(tmp, 'public'),
        path.join(tmp, 'app.lua')], STEP);
    await server.start();
    base = `http://127.0.0.1:${server.port}/`;
    browser = await launchBrowser({ headlessNew: true });
  });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    const code = server ? await server.stop() : null;
    const log = server ? server.log() : '';
    fs.rmSync(tmp, { recursive: true, force: true });
    assert.equal(code, 0, `wsserver did not exit cleanly (${code}):\n${log}`);
    assert.deepEqual(pageErrors, []);
  });

  test('Chromium negotiates permessage-deflate; JSON and binary round-trip compressed',
    async (t) => {
      const page = await openPage('echo');
      const before = await server.metrics();
      const result = await page.evaluate(async (step) => {
        const ws = await window.openSocket();
        const out = { extensions: ws.extensions, protocol: ws.protocol };

        // ~1 MiB of repetitive chat JSON (under the 1 MiB default message limit)
        const rows = [];
        for (let i = 0; i < 8500; i++) {
          rows.push({ type: 'message', room: 'lobby', id: 100000 + i, from: `user${i % 37}`,
            text: `hello \u00e9\u20ac\u{1f600} number ${i % 101}`, time: 1700000000 + 7 * i });
        }
        const json = JSON.stringify(rows);
        out.jsonBytes = new TextEncoder().encode(json).length;
        ws.send(json);
        const back = await ws.next(step);
        out.jsonEqual = typeof back === 'string' && back === json;
        out.jsonBackLength = back.length;

        // 300 KB of random bytes (incompressible) and a few sizes around compress_min_size
        const bin = new Uint8Array(300000);
        for (let off = 0; off < bin.length; off += 65536) {
          crypto.getRandomValues(bin.subarray(off, Math.min(off + 65536, bin.length)));
        }
        ws.send(bin);
        const b = new Uint8Array(await ws.next(step));
        out.binEqual = b.length === bin.length && b.every((v, i) => v === bin[i]);

        const small = [];
        for (const n of [0, 1, 127, 128, 129, 4096]) {
          const s = 'x'.repeat(n);
          ws.send(s);
          small.push((await ws.next(step)) === s);
        }
        out.small = small;

        // 200 chat messages in a row: Chromium compresses with context takeover
        const sent = [];
        for (let i = 0; i < 200; i++) {
          const m = JSON.stringify(rows[i]);
          sent.push(m);
          ws.send(m);
        }
        let same = 0;
        for (const m of sent) if ((await ws.next(step)) === m) same++;
        out.chatEqual = same;
        ws.close(1000);
        return out;
      }, STEP);

      assert.equal(result.extensions, 'permessage-deflate; server_no_context_takeover');
      assert.ok(result.jsonBytes > 900000 && result.jsonBytes < 1048576,
        `json is ${result.jsonBytes} bytes`);
      assert.ok(result.jsonEqual, `JSON echo differs (${result.jsonBackLength} chars back)`);
      assert.ok(result.binEqual, 'binary echo differs');
      assert.deepEqual(result.small, [true, true, true, true, true, true]);
      assert.equal(result.chatEqual, 200);

      // Both directions were compressed: the JSON alone is ~0.9 MB each way, yet far fewer
      // bytes crossed the sockets (the random binary adds ~300 KB each way).
      const after = await server.metrics();
      const inBytes = after.wsserver_bytes_received_total - before.wsserver_bytes_received_total;
      const outBytes = after.wsserver_bytes_sent_total - before.wsserver_bytes_sent_total;
      const plain = result.jsonBytes + 300000;
      t.diagnostic(`messages ${plain} bytes each way; on the wire: in ${inBytes}, out ${outBytes}`);
      assert.ok(inBytes < plain * 0.6, `received ${inBytes} bytes for ${plain} of messages`);
      assert.ok(outBytes < plain * 0.6, `sent ${outBytes} bytes for ${plain} of messages`);
    });

  test('a broadcast reaches a second page, both decode the same text', async () => {
    const alice = await openPage('alice');
    const bob = await openPage('bob');
    await bob.evaluate(async () => {
      window.sock = await window.openSocket();
    });
    const text = JSON.stringify(Array.from({ length: 2000 }, (_, i) => (
      { n: i, who: 'alice', text: `broadcast \u00fc\u20ac ${i % 13}` })));
    const bobGot = bob.evaluate((step) => window.sock.next(step).then((d) => ({
      data: d, extensions: window.sock.extensions })), STEP);
    const aliceGot = await alice.evaluate(async ([t, step]) => {
      const ws = await window.openSocket();
      ws.send('bc:' + t);
      const d = await ws.next(step);
      return { data: d, extensions: ws.extensions };
    }, [text, STEP]);
    const b = await bobGot;
    assert.equal(aliceGot.extensions, 'permessage-deflate; server_no_context_takeover');
    assert.equal(b.extensions, 'permessage-deflate; server_no_context_takeover');
    assert.equal(aliceGot.data.length, text.length);
    assert.ok(aliceGot.data === text, 'the sender decoded a different broadcast');
    assert.ok(b.data === text, 'the second page decoded a different broadcast');
  });
});
