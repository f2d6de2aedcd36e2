// Reference broadcast server for bench/run.sh: node `ws`, same protocol as bench/apps/broadcast.lua
// ("sub" is answered "ok"; any other message goes to every other open client).
// Usage: node bench/node/broadcast.js PORT   (listens on 127.0.0.1)
'use strict';
const path = require('path');
const { WebSocketServer, WebSocket } = require(path.join(__dirname, '..', '..', 'tests', 'node_modules', 'ws'));

const port = Number(process.argv[2] || 8080);
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.length === 3 && data.toString() === 'sub') {
      ws.send('ok');
      return;
    }
    for (const client of wss.clients) {
      if (client !== ws && client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
    }
  });
  ws.on('error', () => {});
});
wss.on('listening', () => console.error(`node ws broadcast on 127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
