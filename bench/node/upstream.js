// The local upstream of bench/apps/http_get.lua for bench/run.sh: node's http server, GET
// answers 200 "ok" with keep-alive (wsserver's own HTTP answers close the connection, so the
// client's connection reuse would go unmeasured).
// Usage: node bench/node/upstream.js PORT   (listens on 127.0.0.1)
'use strict';
const http = require('http');

const port = Number(process.argv[2] || 8081);
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 2 });
  res.end('ok');
});
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1', () => console.error(`node upstream on 127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
