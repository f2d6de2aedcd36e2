// The board example (examples/board) end to end in headless Chromium against a real PostgreSQL:
// a throwaway cluster (tests/integration/pgcluster.py: initdb/pg_ctl in a temporary folder,
// removed afterwards), the real wsserver serving the page with --static, and two pages that
// see each other's changes as they happen.
//
//   node --test tests/browser/board.test.js   (after `make`; PostgreSQL's server from the
//                                               postgresql package)
'use strict';

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { ROOT, freePort, launchBrowser, Server } = require('./harness');

const APP = path.join(ROOT, 'examples', 'board', 'board.lua');
const PUBLIC = path.join(ROOT, 'examples', 'board', 'public');
const PYTHON = process.env.PYTHON || '/usr/bin/python3';
const STEP = 5000; // ms any single wait may take

// Starts pgcluster.py as a child: resolves with {conninfo, port}; closing its stdin removes it.
function startCluster() {
  const proc = spawn(PYTHON, [path.join(ROOT, 'tests', 'integration', 'pgcluster.py')],
    { cwd: path.join(ROOT, 'tests', 'integration'), stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  const line = new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.stdout });
    rl.once('line', (l) => resolve(JSON.parse(l)));
    proc.once('exit', (code) => reject(new Error(`pgcluster.py exited with ${code}`)));
  });
  const timer = new Promise((_, reject) => setTimeout(reject, 60000, new Error('initdb too slow')));
  return Promise.race([line, timer]).then((info) => ({ ...info, proc, exited }));
}

describe('board example in headless Chromium', { timeout: 150000 }, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wsserver-board-'));
  let cluster;
  let server;
  let browser;
  let base;
  const pageErrors = [];

  async function openPage(name) {
    const context = await browser.newContext({ viewport: { width: 900, height: 640 } });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP);
    page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`));
    await page.goto(base);
    await page.waitForSelector('#status[data-state="online"]');
    return page;
  }

  const texts = (page) => page.$$eval('#items .item .text', (ns) => ns.map((n) => n.textContent));
  const waitTexts = (page, want) => page.waitForFunction(
    (w) => JSON.stringify([...document.querySelectorAll('#items .item .text')]
      .map((n) => n.textContent)) === JSON.stringify(w), want, { timeout: STEP });

  async function add(page, text) {
    await page.fill('#text', text);
    await page.press('#text', 'Enter');
  }

  before(async () => {
    cluster = await startCluster();
    server = new Server(await freePort(), path.join(tmp, 'wsserver.log'),
      ['--static', PUBLIC, APP], STEP);
    process.env.BOARD_PG = cluster.conninfo; // the server inherits it
    await server.start();
    base = `http://127.0.0.1:${server.port}/`;
    browser = await launchBrowser();
  });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    if (server) await server.stop();
    if (cluster) {
      cluster.proc.stdin.end();
      await cluster.exited;
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('two pages see each other\'s changes', async () => {
    const ann = await openPage('ann');
    const ben = await openPage('ben');
    await ann.waitForSelector('#viewers:text-is("2 viewing")');
    assert.deepEqual(await texts(ann), []);

    await add(ann, 'buy milk');
    await waitTexts(ben, ['buy milk']);
    await add(ben, 'water the plants 🌱');
    await waitTexts(ann, ['buy milk', 'water the plants 🌱']);

    // ben ticks ann's item: ann sees it done
    await ben.click('#items .item:has-text("buy milk") input[type="checkbox"]');
    await ann.waitForSelector('#items .item.done:has-text("buy milk")');
    // ann deletes ben's item: it disappears for ben
    await ann.click('#items .item:has-text("water the plants") .delete');
    await waitTexts(ben, ['buy milk']);

    // HTML is shown as text
    const html = '<img src=x onerror="window.pwned=1"><b>bold?</b>';
    await add(ben, html);
    await waitTexts(ann, ['buy milk', html]);
    assert.equal(await ann.$('#items img, #items b'), null);
    assert.equal(await ann.evaluate(() => window.pwned), undefined);
  });

  test('a page opened later gets the board from the database, also after a restart',
    async () => {
      await server.stop();
      await server.start(); // a new process: the items come from PostgreSQL
      const cat = await openPage('cat');
      await waitTexts(cat, ['buy milk', '<img src=x onerror="window.pwned=1"><b>bold?</b>']);
      assert.equal(await cat.$eval('#items .item:has-text("buy milk")', (n) => n.className),
        'item done');
    });

  test('bad input gets an error and changes nothing', async () => {
    const dan = await openPage('dan');
    await dan.evaluate(() => {
      // straight to the socket, past the page's own checks
      const s = new WebSocket(`ws://${location.host}/`);
      window.replies = [];
      s.onmessage = (e) => window.replies.push(JSON.parse(e.data));
      s.onopen = () => {
        s.send(JSON.stringify({ type: 'add', text: '   ' }));
        s.send(JSON.stringify({ type: 'add', text: 'x'.repeat(201) }));
        s.send(JSON.stringify({ type: 'toggle', id: 'drop table', done: true }));
        s.send(JSON.stringify({ type: 'delete', id: 999999 }));
        s.send('not json');
      };
    });
    await dan.waitForFunction(() => window.replies.filter((r) => r.type === 'error').length === 5);
    const codes = await dan.evaluate(
      () => window.replies.filter((r) => r.type === 'error').map((r) => r.code));
    assert.deepEqual(codes, ['bad_text', 'bad_text', 'bad_id', 'not_found', 'bad_json']);
    assert.equal((await texts(dan)).length, 2);
    assert.deepEqual(pageErrors, []);
  });
});
