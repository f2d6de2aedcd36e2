// Reference echo server for bench/run.sh: node `ws`, every message back to its sender.
// Usage: node bench/node/echo.js PORT   (listens on 127.0.0.1)
'use strict';
const path = require('path');
const { WebSocketServer } = require(path.join(__dirname, '..', '..', 'tests', 'node_modules', 'ws'));

const port = Number(process.argv[2] || 8080);
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => console.error(`node ws echo on 127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
