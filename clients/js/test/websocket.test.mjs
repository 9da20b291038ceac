// The WebSocket transport against the broker's own /ws listener ([server] ws_listen): one
// binary message per frame, no prefix; a WebSocket user and a TCP user talk 1:1 and in a group.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { connect } from '../dist/index.js';
import { Broker, Entries, mintToken, uniqueUser, waitFor, within } from './support/broker.mjs';
import { Proxy } from './support/net.mjs';

let broker;
before(async () => (broker = await Broker.start({ shards: 2 })));
after(() => broker.stop());

test('a WebSocket user and a TCP user talk both ways, 1:1 and in a group', async (t) => {
  const [a, b] = [uniqueUser('ws-alice'), uniqueUser('tcp-bob')];
  const alice = await connect({ url: broker.wsUrl, token: mintToken(a), deviceId: 'browser' });
  const bob = await connect({ url: broker.url, token: mintToken(b), deviceId: 'd' });
  t.after(() => (alice.close(), bob.close()));
  assert.equal(alice.login.userId, a);
  const toBob = waitFor(bob, 'deliver');
  await within(alice.send(b, 'from a websocket'));
  assert.equal((await toBob).text, 'from a websocket');
  const toAlice = waitFor(alice, 'deliver');
  await within(bob.send(a, 'from tcp'));
  const d = await toAlice;
  assert.equal(d.text, 'from tcp');
  assert.equal(d.from, b);

  const group = uniqueUser('mixed');
  const [ea, eb] = [new Entries(alice), new Entries(bob)];
  await within(alice.createGroup(group, [b]));
  await within(bob.sendToGroup(group, 'tcp to the group'));
  await within(alice.sendToGroup(group, 'websocket to the group'));
  for (const e of [ea, eb]) {
    // (Only the group's entries: bob's echo of his 1:1 reply may still come in meanwhile.)
    const inGroup = () => e.all.filter((x) => x.groupId === group);
    const got = await e.until(() => inGroup().length >= 3 && inGroup(), 'three group entries');
    assert.deepEqual(got.map((x) => [x.kindName, x.groupSeq, x.text]),
      [['GroupCreated', 1, ''], ['Message', 2, 'tcp to the group'], ['Message', 3, 'websocket to the group']]);
  }
});

test('a dropped WebSocket reconnects and resumes', async (t) => {
  const proxy = await Proxy.start(broker.wsPort); // bytes through: the upgrade, then frames
  t.after(() => proxy.close());
  const [a, b] = [uniqueUser('ws-drop'), uniqueUser('tcp-sender')];
  const alice = await connect({ url: `ws://127.0.0.1:${proxy.port}/ws`, token: mintToken(a), deviceId: 'browser', backoff: { initialMs: 20, maxMs: 50 } });
  const bob = await connect({ url: broker.url, token: mintToken(b), deviceId: 'd' });
  t.after(() => (alice.close(), bob.close()));
  const seen = [];
  alice.on('deliver', (d) => seen.push(d.text));
  const one = waitFor(alice, 'deliver');
  await within(bob.send(a, 'one'));
  await one;
  await new Promise((r) => setImmediate(r));
  const back = waitFor(alice, 'login');
  proxy.cutAll();
  assert.equal((await within(back)).resumedFrom, 1);
  const two = waitFor(alice, 'deliver', (d) => d.text === 'two');
  await within(bob.send(a, 'two'));
  await two;
  assert.deepEqual(seen, ['one', 'two']);
});
