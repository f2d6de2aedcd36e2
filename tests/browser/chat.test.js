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

  async function openPage(name, viewport = { width: 1100, height: 680 }) {
    const context = await browser.newContext({ viewport });
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

  // Closes a page opened for one test only (the later tests count the pages that stay).
  async function closePage(name) {
    await pages[name].context().close();
    delete pages[name];
  }

  const bannerShown = (page) => page.$eval('#error', (n) => !n.hidden);

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

  test('nicknames in every script; the error banner goes when the problem is fixed', async () => {
    const page = await openPage('world');
    for (const nick of ['José', 'Мария', '李雷', 'نور', 'Ἀθηνᾶ', '李'.repeat(24)]) {
      await join(page, nick, 'world');
      await page.waitForFunction((n) => window.chat.nick === n, nick);
      assert.deepEqual(await members(page), [nick]);
      assert.equal(await page.textContent('#members li.me'), nick);
    }
    // too long (counted in characters), refused by the page itself
    await page.fill('#nick', '李'.repeat(25));
    await page.click('#join button[type="submit"]');
    await page.waitForSelector('#error:has-text("limited to 24 characters")');
    // refused by the server: the banner stays while the problem does...
    await page.fill('#nick', 'no<tags>');
    await page.click('#join button[type="submit"]');
    await page.waitForSelector('#error:has-text("nick may only use")');
    assert.equal(await bannerShown(page), true);
    // ...and goes as soon as a join succeeds, long before its timer
    const started = Date.now();
    await join(page, 'نور', 'world');
    await page.waitForSelector('#error', { state: 'hidden' });
    assert.ok(Date.now() - started < 3000);
    await closePage('world');
  });

  test('right-to-left messages are laid out right to left', async () => {
    const page = await openPage('rtl');
    await join(page, 'نور', 'rtl');
    const arabic = 'مرحبا بالجميع، كيف حالكم؟';
    await say(page, arabic);
    await seeMessage(page, arabic);
    await say(page, 'and this one is left to right');
    await seeMessage(page, 'and this one is left to right');
    const dirs = await page.$$eval('#messages .msg .text', (ns) => ns.map((n) => [
      n.getAttribute('dir'), n.matches(':dir(rtl)') ? 'rtl' : 'ltr', getComputedStyle(n).direction,
    ]));
    assert.deepEqual(dirs, [['auto', 'rtl', 'rtl'], ['auto', 'ltr', 'ltr']]);
    // the nickname and the composer follow their own text too
    assert.equal(await page.$eval('#messages .msg .nick', (n) => n.matches(':dir(rtl)')), true);
    await page.fill('#text', 'שלום');
    assert.equal(await page.$eval('#text', (n) => n.matches(':dir(rtl)')), true);
    await page.fill('#text', '');
    await closePage('rtl');
  });

  test('the newest line is never hidden under the composer or the error banner', async () => {
    const writer = await openPage('writer');
    await join(writer, 'writer', 'tall');
    for (let i = 0; i < 9; i++) {
      const text = `line ${i}: ` + 'a long message that wraps over several lines '.repeat(3);
      await say(writer, text);
      await seeMessage(writer, text);
    }
    const small = await openPage('small', { width: 380, height: 560 });
    await join(small, 'small', 'tall');
    // the last line (a message or a notice) is inside the list's box, the list and the composer
    // inside the window
    const layout = () => small.evaluate(() => {
      const box = (sel) => document.querySelector(sel).getBoundingClientRect();
      const last = document.querySelector('#messages > li:last-child').getBoundingClientRect();
      const error = document.querySelector('#error');
      return { last, list: box('#messages'), composer: box('#composer'),
        error: error.hidden ? null : error.getBoundingClientRect(), height: innerHeight };
    });
    const check = (l, why) => {
      assert.ok(l.last.bottom <= l.list.bottom + 1, `${why}: last line below the list`);
      assert.ok(l.last.bottom > l.list.top + 10, `${why}: last line above the list`);
      assert.ok(l.composer.bottom <= l.height + 1, `${why}: composer outside the window`);
      assert.ok(l.list.bottom <= l.composer.top, `${why}: composer over the list`);
      if (l.error) assert.ok(l.list.bottom <= l.error.top, `${why}: banner over the list`);
    };
    check(await layout(), 'after joining');
    // an error banner appears (a refused nickname): the list shrinks, the last line stays
    await small.fill('#nick', 'bad<nick>');
    await small.click('#join button[type="submit"]');
    await small.waitForSelector('#error:has-text("nick may only use")');
    await small.waitForTimeout(100); // one resize notification
    check(await layout(), 'with the banner');
    // a new message while the banner shows is in view too
    await say(writer, 'the newest one');
    await seeMessage(small, 'the newest one');
    await small.waitForTimeout(100);
    const l = await layout();
    check(l, 'after a new message');
    assert.equal(await small.$eval('#messages > li:last-child .text', (n) => n.textContent),
      'the newest one');
    await closePage('small');
    await closePage('writer');
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

  test('a message typed while reconnecting is shown as waiting and sent on reconnect', async () => {
    const { alice, bob } = pages;
    await server.stop();
    await alice.waitForFunction(() => window.chat.state === 'reconnecting', null,
      { timeout: STEP });
    await alice.waitForSelector('#error:has-text("Connection lost")');
    await say(alice, 'typed while the server was away');
    await alice.waitForSelector('#messages .msg.pending:has-text("waiting for connection")');
    await server.start();
    await seeMessage(bob, 'typed while the server was away');
    // on alice's page the waiting line gave way to the server's copy: shown once, not pending
    await alice.waitForFunction(() => !document.querySelector('#messages .msg.pending'), null,
      { timeout: STEP });
    assert.equal((await texts(alice)).filter((t) => t === 'typed while the server was away')
      .length, 1);
    await alice.waitForSelector('#error', { state: 'hidden' });
    assert.equal(await bannerShown(bob), false);
  });

  test('no page error, no handler error', () => {
    assert.deepEqual(pageErrors, []);
    assert.doesNotMatch(server.log(), /handler_error/);
  });
});

// The same page on a server with --redis: the history lives in a redis-server started here
// (stopped by its PID at the end), so a restart keeps it, and the page shows it once.
describe('chat example with its history in Redis', { skip, timeout: 60000 }, () => {
  const { spawn, execFileSync } = require('node:child_process');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wsserver-chat-redis-'));
  let redis;
  let server;
  let browser;

  before(async () => {
    const port = await freePort();
    redis = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '',
      '--appendonly', 'no'], { stdio: 'ignore' });
    const deadline = Date.now() + STEP;
    while (Date.now() < deadline) {
      try {
        if (execFileSync('redis-cli', ['-p', String(port), 'ping']).toString().trim() === 'PONG') break;
      } catch { /* not up yet */ }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    server = new Server(await freePort(), path.join(tmp, 'wsserver.log'),
      ['--redis', `redis://127.0.0.1:${port}`, '--static', PUBLIC, APP], STEP);
    await server.start();
    browser = await launchBrowser();
  });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    if (server) await server.stop();
    if (redis) redis.kill('SIGTERM');
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('a restart keeps the history, and the reconnected page shows it once', async () => {
    const context = await browser.newContext({ viewport: { width: 1100, height: 680 } });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP);
    await page.goto(`http://127.0.0.1:${server.port}/`);
    await page.waitForSelector('#status[data-state="online"]');
    await page.fill('#nick', 'Мария');
    await page.fill('#room', 'kept');
    await page.click('#join button[type="submit"]');
    await page.waitForFunction(() => window.chat.room === 'kept');
    const texts = () => page.$$eval('#messages .msg .text', (ns) => ns.map((n) => n.textContent));
    for (const text of ['first', 'second']) {
      await page.fill('#text', text);
      await page.press('#text', 'Enter');
      await page.waitForFunction((n) => document.querySelectorAll('#messages .msg').length === n,
        text === 'first' ? 1 : 2);
    }
    await server.stop();
    await page.waitForFunction(() => window.chat.state === 'reconnecting');
    await server.start();
    await page.waitForFunction(() => window.chat.state === 'online' && window.chat.connections === 2,
      null, { timeout: 10000 });
    await page.waitForSelector('#messages .notice:has-text("reconnected to kept")');
    assert.deepEqual(await texts(), ['first', 'second']);
    // a page opened after the restart gets the history from Redis
    const other = await (await browser.newContext()).newPage();
    await other.goto(`http://127.0.0.1:${server.port}/`);
    await other.waitForSelector('#status[data-state="online"]');
    await other.fill('#nick', 'نور');
    await other.fill('#room', 'kept');
    await other.click('#join button[type="submit"]');
    await other.waitForFunction(() => document.querySelectorAll('#messages .msg').length === 2);
    assert.doesNotMatch(server.log(), /handler_error/);
  });
});
