// The chat example (examples/chat) end to end in headless Chromium: the real wsserver serves the
// page with --static and the WebSocket on the same port; playwright-core drives Debian's
// /usr/bin/chromium (never a downloaded browser).
//
//   node --test tests/browser/          (after `make`, `cd tests && npm install`, and
//                                        `apt-get install chromium`)
//
// Each page runs in its own browser context. Every wait is bounded; the file takes ~10 s.
// The screenshot goes to a temporary folder; UPDATE_DOCS_SCREENSHOT=1 also writes docs/chat.png.
'use strict';

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { ROOT, freePort, launchBrowser, Server } = require('./harness');

const APP = path.join(ROOT, 'examples', 'chat', 'chat.lua');
const PUBLIC = path.join(ROOT, 'examples', 'chat', 'public');
const STEP = 5000; // ms any single wait may take
const skip = false;

describe('chat example in headless Chromium', { skip, timeout: 90000 }, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wsserver-chat-'));
  let server;
  let browser;
  let base;
  const pages = {};
  const pageErrors = [];

  async function openPage(name) {
    const context = await browser.newContext({ viewport: { width: 1100, height: 680 } });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP);
    page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`));
    await page.goto(base);
    await page.waitForSelector('#status[data-state="online"]');
    pages[name] = page;
    return page;
  }

  async function join(page, nick, room) {
    await page.fill('#nick', nick);
    await page.fill('#room', room);
    await page.click('#join button[type="submit"]');
    await page.waitForFunction((r) => window.chat.room === r, room, { timeout: STEP });
  }

  async function say(page, text) {
    await page.fill('#text', text);
    await page.press('#text', 'Enter');
  }

  // Waits until `page` shows a message whose text is exactly `text`.
  async function seeMessage(page, text) {
    await page.waitForFunction(
      (t) => [...document.querySelectorAll('#messages .msg .text')]
        .some((n) => n.textContent === t),
      text, { timeout: STEP });
  }

  const texts = (page) => page.$$eval('#messages .msg .text', (ns) => ns.map((n) => n.textContent));
  const members = (page) => page.$$eval('#members li', (ns) => ns.map((n) => n.textContent));
  const connections = (page) => page.evaluate(() => window.chat.connections);

  before(async () => {
    server = new Server(await freePort(), path.join(tmp, 'wsserver.log'), ['--static', PUBLIC, APP],
      STEP);
    await server.start();
    base = `http://127.0.0.1:${server.port}/`;
    browser = await launchBrowser();
  });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    if (server) await server.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('two pages in one room see each other, presence and typing', async () => {
    const alice = await openPage('alice');
    const bob = await openPage('bob');
    const dave = await openPage('dave');
    await join(dave, 'dave', 'games'); // another room: must see nothing of the lobby
    await join(alice, 'alice', 'lobby');
    await join(bob, 'bob', 'lobby');

    await alice.waitForSelector('#messages .notice:has-text("bob joined")');
    assert.deepEqual(await members(alice), ['alice', 'bob']);
    assert.deepEqual(await members(bob), ['alice', 'bob']);

    await say(alice, 'hi bob, welcome to the lobby');
    await seeMessage(bob, 'hi bob, welcome to the lobby');
    await bob.type('#text', 'hello');
    await alice.waitForSelector('#typing:has-text("bob is typing")');
    await bob.fill('#text', '');
    await say(bob, 'hello alice! is this running on wsserver?');
    await seeMessage(alice, 'hello alice! is this running on wsserver?');
    await say(alice, 'yes: a C core and ~300 lines of Lua');
    await seeMessage(bob, 'yes: a C core and ~300 lines of Lua');
    assert.equal(await alice.textContent('#typing'), '', 'a message ends "is typing"');

    // room list with member counts, as everyone sees it
    await dave.waitForSelector('#rooms button[data-room="lobby"] .count:text-is("2")');
    assert.equal(await dave.textContent('#rooms button[data-room="games"] .count'), '1');
  });

  test('a page joining later gets the history', async () => {
    const carol = await openPage('carol');
    await join(carol, 'carol', 'lobby');
    assert.deepEqual(await texts(carol), ['hi bob, welcome to the lobby',
      'hello alice! is this running on wsserver?', 'yes: a C core and ~300 lines of Lua']);
    assert.deepEqual(await members(carol), ['alice', 'bob', 'carol']);
    await pages.alice.waitForSelector('#members li:text-is("carol")');
  });

  test('screenshot: bob sees carol typing', async () => {
    await pages.carol.type('#text', 'let me try');
    await pages.bob.waitForSelector('#typing:has-text("carol is typing")');
    await pages.carol.fill('#text', '');
    const shot = path.join(tmp, 'chat.png');
    await pages.bob.screenshot({ path: shot });
    assert.ok(fs.statSync(shot).size > 10000);
    if (process.env.UPDATE_DOCS_SCREENSHOT) {
      fs.copyFileSync(shot, path.join(ROOT, 'docs', 'chat.png'));
    }
  });

  test('HTML in a message is shown as text', async () => {
    const html = '<img src=x onerror="window.pwned=1"><b id="injected">bold?</b> & <i>x</i>';
    await say(pages.carol, html);
    for (const name of ['alice', 'bob', 'carol']) {
      const page = pages[name];
      await seeMessage(page, html);
      assert.equal(await page.$('#messages img, #messages b, #messages i, #injected'), null);
      assert.equal(await page.evaluate(() => window.pwned), undefined);
    }
    await say(pages.bob, 'ha, nice try carol');
    await seeMessage(pages.alice, 'ha, nice try carol');
  });

  test('the other room saw nothing of the lobby', async () => {
    const { dave } = pages;
    assert.deepEqual(await texts(dave), []);
    assert.deepEqual(await members(dave), ['dave']);
    const notices = await dave.$$eval('#messages .notice', (ns) => ns.map((n) => n.textContent));
    assert.deepEqual(notices, ['you joined games as dave']);
    assert.equal(await dave.textContent('#typing'), '');
  });

  test('a hot reload (SIGHUP) keeps every page connected', async () => {
    const { alice, bob } = pages;
    const before = await Promise.all(Object.values(pages).map(connections));
    assert.deepEqual(before, [1, 1, 1, 1]);
    server.signal('SIGHUP');
    await server.waitForLog(/event=app_loaded .*trigger="SIGHUP"/);
    await say(alice, 'still here after the reload?');
    await seeMessage(bob, 'still here after the reload?');
    await say(bob, 'yes, same connection');
    await seeMessage(alice, 'yes, same connection');
    assert.deepEqual(await Promise.all(Object.values(pages).map(connections)), before);
    for (const page of Object.values(pages)) {
      assert.equal(await page.evaluate(() => window.chat.state), 'online');
    }
    assert.deepEqual(await members(alice), ['alice', 'bob', 'carol']);
    // ws.state survived: a page joining now still gets the whole history
    const erin = await openPage('erin');
    await join(erin, 'erin', 'lobby');
    assert.equal((await texts(erin)).length, 7);
    await erin.context().close();
    delete pages.erin;
  });

  test('after a server restart the pages reconnect, re-join and chat again', async () => {
    const { alice, bob } = pages;
    await server.stop();
    for (const page of Object.values(pages)) {
      await page.waitForFunction(() => window.chat.state === 'reconnecting', null,
        { timeout: STEP });
    }
    await server.start(); // same port
    for (const page of Object.values(pages)) {
      await page.waitForFunction(
        () => window.chat.state === 'online' && window.chat.connections === 2,
        null, { timeout: 10000 });
    }
    await alice.waitForFunction(() => document.querySelectorAll('#members li').length === 3,
      null, { timeout: STEP });
    await say(alice, 'the server restarted and we are back');
    await seeMessage(bob, 'the server restarted and we are back');
    await say(bob, 'welcome back');
    await seeMessage(alice, 'welcome back');
    assert.deepEqual(await texts(pages.dave), []);
  });

  test('no page error, no handler error', () => {
    assert.deepEqual(pageErrors, []);
    assert.doesNotMatch(server.log(), /handler_error/);
  });
});
