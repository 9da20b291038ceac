// The WebSocket transport against the real broker, through a test-owned WebSocket→TCP bridge
// (the broker's own /ws listener is not built yet): one binary message per frame, no prefix.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { connect } from '../dist/index.js';
import { Broker, mintToken, uniqueUser, waitFor, within } from './support/broker.mjs';
import { WsBridge } from './support/net.mjs';

let broker;
let bridge;
before(async () => {
  broker = await Broker.start({ shards: 2 });
  bridge = await WsBridge.start(broker.port);
});
after(async () => {
  await bridge.close();
  await broker.stop();
});

test('a WebSocket user and a TCP user talk both ways', async () => {
  const [a, b] = [uniqueUser('ws-alice'), uniqueUser('tcp-bob')];
  const alice = await connect({ url: bridge.url, token: mintToken(a), deviceId: 'browser' });
  const bob = await connect({ url: broker.url, token: mintToken(b), deviceId: 'd' });
  assert.equal(alice.login.userId, a);
  const toBob = waitFor(bob, 'deliver');
  await within(alice.send(b, 'from a websocket'));
  assert.equal((await toBob).text, 'from a websocket');
  const toAlice = waitFor(alice, 'deliver');
  await within(bob.send(a, 'from tcp'));
  const d = await toAlice;
  assert.equal(d.text, 'from tcp');
  assert.equal(d.from, b);
  alice.close();
  bob.close();
});

test('a dropped WebSocket reconnects and resumes', async () => {
  const [a, b] = [uniqueUser('ws-drop'), uniqueUser('tcp-sender')];
  const alice = await connect({ url: bridge.url, token: mintToken(a), deviceId: 'browser', backoff: { initialMs: 20, maxMs: 50 } });
  const bob = await connect({ url: broker.url, token: mintToken(b), deviceId: 'd' });
  const seen = [];
  alice.on('deliver', (d) => seen.push(d.text));
  const one = waitFor(alice, 'deliver');
  await within(bob.send(a, 'one'));
  await one;
  await new Promise((r) => setImmediate(r));
  const back = waitFor(alice, 'login');
  for (const ws of bridge.wss.clients) ws.terminate();
  assert.equal((await within(back)).resumedFrom, 1);
  const two = waitFor(alice, 'deliver', (d) => d.text === 'two');
  await within(bob.send(a, 'two'));
  await two;
  assert.deepEqual(seen, ['one', 'two']);
  alice.close();
  bob.close();
});
