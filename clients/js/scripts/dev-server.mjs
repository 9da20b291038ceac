// Serves the chat page (src/web) from disk and bridges its WebSocket to a broker's TCP port, for
// working on the page without rebuilding the broker (which embeds the page and serves it on
// [server] ws_listen, 127.0.0.1:7071 by default; hence another port here):
//   node clients/js/scripts/dev-server.mjs --broker 127.0.0.1:7070 [--listen 127.0.0.1:7072]
// Each binary WebSocket message on /ws becomes one length-prefixed frame on TCP, and back.
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

import { FrameReader } from '../dist/index.js';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const [bHost, bPort] = arg('broker', '127.0.0.1:7070').split(':');
const [lHost, lPort] = arg('listen', '127.0.0.1:7072').split(':');
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../../src/web');
const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };

const server = http.createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  const file = path === '/' ? 'index.html' : path.slice(1);
  if (!/^[\w.-]+$/.test(file)) return res.writeHead(404).end();
  try {
    const body = await readFile(join(root, file));
    res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' }).end(body);
  } catch {
    res.writeHead(404).end();
  }
});
const wss = new WebSocketServer({ server, path: '/ws' });
wss.on('connection', (ws) => {
  const tcp = net.connect(Number(bPort), bHost);
  const reader = new FrameReader(16 * 1024 * 1024);
  ws.on('message', (data, binary) => {
    if (!binary) return ws.close(1003, 'binary frames only');
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32LE(data.length, 0);
    tcp.write(Buffer.concat([prefix, data]));
  });
  tcp.on('data', (chunk) => {
    try {
      for (const f of reader.push(chunk)) ws.send(f, { binary: true });
    } catch {
      ws.close(1002, 'bad frame from the broker');
    }
  });
  const end = () => ws.close();
  tcp.on('close', end);
  tcp.on('error', end);
  ws.on('close', () => tcp.destroy());
});
server.listen(Number(lPort), lHost, () => {
  const { port } = server.address();
  console.log(`chat page on http://${lHost}:${port}/ (WebSocket /ws -> tcp ${bHost}:${bPort})`);
});
