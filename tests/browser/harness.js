// Shared by the browser tests: the real wsserver as a child process, a free port, and Debian's
// Chromium through playwright-core. Not a test file itself (node --test runs *.test.js).
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..', '..');
const BINARY = process.env.WSSERVER || path.join(ROOT, 'build', 'wsserver');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// A missing piece is a failure, never a skip: scripts/install-deps.sh installs all of them.
const { chromium } = require('playwright-core');
for (const [file, fix] of [[CHROMIUM, 'apt-get install chromium'], [BINARY, 'make']]) {
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: ${fix}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

// Headless Chromium; headlessNew runs Chromium's own --headless=new mode instead of playwright's.
function launchBrowser({ headlessNew = false } = {}) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: !headlessNew,
    timeout: 15000,
    args: [...(headlessNew ? ['--headless=new'] : []), '--no-sandbox', '--disable-gpu',
      '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
}

// The wsserver process on 127.0.0.1:port with args; its output (every run: it may be stopped and
// started again on the same port) goes to one log. step: ms any single wait may take.
class Server {
  constructor(port, logPath, args, step) {
    this.port = port;
    this.logPath = logPath;
    this.args = args;
    this.step = step;
    this.proc = null;
  }

  async start() {
    const out = fs.openSync(this.logPath, 'a');
    this.proc = spawn(BINARY, ['-l', `127.0.0.1:${this.port}`, ...this.args],
      { cwd: ROOT, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    this.exited = new Promise((resolve) => this.proc.once('exit', resolve));
    const deadline = Date.now() + this.step;
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null) throw new Error(`wsserver exited:\n${this.log()}`);
      const ok = await new Promise((resolve) => {
        const s = net.connect(this.port, '127.0.0.1', () => { s.destroy(); resolve(true); });
        s.on('error', () => resolve(false));
      });
      if (ok) return;
      await sleep(20);
    }
    throw new Error(`wsserver did not listen on ${this.port}:\n${this.log()}`);
  }

  // SIGTERM (graceful: every connection gets 1001) and wait; SIGKILL if that takes too long.
  // Returns the exit code (null when it was not running or had to be killed).
  async stop() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return null;
    process.kill(this.proc.pid, 'SIGTERM');
    let timer;
    const late = new Promise((resolve) => { timer = setTimeout(resolve, this.step, 'late'); });
    const done = await Promise.race([this.exited, late]);
    clearTimeout(timer);
    if (done === 'late') {
      process.kill(this.proc.pid, 'SIGKILL');
      await this.exited;
    }
    return this.proc.exitCode;
  }

  signal(name) {
    process.kill(this.proc.pid, name);
  }

  log() {
    return fs.existsSync(this.logPath) ? fs.readFileSync(this.logPath, 'utf8') : '';
  }

  async waitForLog(pattern) {
    const deadline = Date.now() + this.step;
    while (Date.now() < deadline) {
      if (pattern.test(this.log())) return;
      await sleep(20);
    }
    throw new Error(`no ${pattern} in the server log:\n${this.log()}`);
  }

  // The server's counters from /metrics, e.g. wsserver_bytes_received_total.
  async metrics() {
    const res = await fetch(`http://127.0.0.1:${this.port}/metrics`);
    const text = await res.text();
    const out = {};
    for (const line of text.split('\n')) {
      const m = /^(wsserver_[a-z_]+) ([0-9.e+]+)$/.exec(line);
      if (m) out[m[1]] = Number(m[2]);
    }
    return out;
  }
}

module.exports = { ROOT, sleep, freePort, launchBrowser, Server };
