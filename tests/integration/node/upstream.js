'use strict';
// A Node.js `ws` upstream server for the ws.connect tests.
//
//   node upstream.js PORT
//
// Prints READY when listening, then one line per event (OPEN path, CLOSE code). By path: /echo
// echoes (the text "__info__" is answered with the subprotocol and extensions agreed, as JSON);
// /refuse answers 401 with a body; /abrupt destroys the socket after the first message.
const WebSocket = require('ws');

const port = Number(process.argv[2]);
const wss = new WebSocket.WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: { threshold: 0 },
  handleProtocols: (protocols) => (protocols.has('chat.v2') ? 'chat.v2' : false),
  verifyClient: (info, cb) => {
    if (info.req.url === '/refuse') cb(false, 401, 'no entry');
    else cb(true);
  },
});

wss.on('listening', () => console.log('READY'));
wss.on('connection', (ws, req) => {
  console.log('OPEN', req.url);
  ws.on('message', (data, isBinary) => {
    if (req.url === '/abrupt') {
      ws._socket.destroy();
      return;
    }
    if (!isBinary && data.toString() === '__info__') {
      const extensions = ws.extensions.split(',').map((e) => e.split(';')[0].trim());
      ws.send(JSON.stringify({ subprotocol: ws.protocol, extensions: extensions.filter(Boolean) }));
      return;
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code) => console.log('CLOSE', code));
});
