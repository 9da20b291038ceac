// A peer that is not a well-behaved broker: garbage, oversized prefixes, abrupt closes, text
// WebSocket messages. The client reports each as a typed error, keeps retrying, and logs in
// once the peer behaves.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocketServer } from 'ws';

import { ConnectionError, ProtocolError, createClient, encodeServer } from '../dist/index.js';
import { mintToken, waitFor, within } from './support/broker.mjs';
import { prefixed, rawServer } from './support/net.mjs';

const loginOk = encodeServer({ type: 'LoginOk', userId: 'eve', shard: 0, headSeq: 0, heartbeatMs: 30000, oldestSeq: 0, gap: false });

test('garbage, an oversized prefix and an abrupt close are retried; a real LoginOk then works', async (t) => {
  const behaviours = [
    (s) => s.write(prefixed(Buffer.from('this is not a flatbuffer at all'))),
    (s) => s.write(Buffer.from([0, 0, 0, 0x40])), // 1 GiB announced
    (s) => s.destroy(),
    (s) => s.write(Buffer.concat([prefixed(loginOk), prefixed(Buffer.from([1, 2, 3]))])), // LoginOk, then junk
    (s) => s.write(prefixed(loginOk)),
  ];
  const server = await rawServer((s, i) => behaviours[Math.min(i, behaviours.length - 1)](s));
  t.after(() => server.close());
  const c = createClient({ url: server.url, token: mintToken('eve'), backoff: { initialMs: 5, maxMs: 10 } });
  const retries = [];
  c.on('retry', (r) => retries.push(r.error));
  const states = [];
  c.on('state', (s) => states.push(s.state));
  await within(c.connect());
  const online = waitFor(c, 'state', (s) => s.state === 'online');
  await within(online);
  c.close();
  assert.ok(retries[0] instanceof ProtocolError && /malformed frame/.test(retries[0].message), String(retries[0]));
  assert.ok(retries[1] instanceof ProtocolError && /exceeds the limit/.test(retries[1].message), String(retries[1]));
  assert.ok(retries[2] instanceof ConnectionError, String(retries[2]));
  assert.ok(retries[3] instanceof ProtocolError, String(retries[3]));
  assert.equal(retries.length, 4);
  assert.deepEqual(states, ['connecting', 'online', 'reconnecting', 'online', 'closed']);
});

test('a text WebSocket message is a protocol error', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  let n = 0;
  wss.on('connection', (ws) => (n++ === 0 ? ws.send('hello as text') : ws.send(loginOk, { binary: true })));
  t.after(() => {
    for (const c of wss.clients) c.terminate();
    return new Promise((r) => wss.close(r));
  });
  const c = createClient({ url: `ws://127.0.0.1:${wss.address().port}/ws`, token: mintToken('eve'), backoff: { initialMs: 5, maxMs: 10 } });
  const retry = waitFor(c, 'retry');
  await within(c.connect());
  const err = (await retry).error;
  assert.ok(err instanceof ProtocolError && /text message/.test(err.message), String(err));
  c.close();
});
