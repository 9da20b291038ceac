// Offline delivery and replay: across client instances (persisted lastSeq) and within one
// instance across a dropped connection, without duplicates.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { connect } from '../dist/index.js';
import { Broker, mintToken, uniqueUser, waitFor, within } from './support/broker.mjs';
import { Proxy } from './support/net.mjs';

let broker;
before(async () => (broker = await Broker.start({ shards: 2 })));
after(() => broker.stop());

function deliveries(client, n) {
  const got = [];
  return new Promise((res) => client.on('deliver', (d) => {
    got.push(d);
    if (got.length === n) res(got);
  }));
}

test('messages to an offline user arrive at login in order; a restart resumes after the persisted seq', async () => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const alice = await connect({ url: broker.url, token: mintToken(a), deviceId: 'd' });
  for (let i = 1; i <= 5; i++) await within(alice.send(b, `offline ${i}`));

  const bob = await connect({ url: broker.url, token: mintToken(b), deviceId: 'phone', autoAck: false });
  const got = await within(deliveries(bob, 5));
  assert.deepEqual(got.map((d) => [d.seq, d.text]), [1, 2, 3, 4, 5].map((i) => [i, `offline ${i}`]));
  bob.ack(3); // processed 1..3; the app persists bob.lastSeq
  const persisted = bob.lastSeq;
  assert.equal(persisted, 3);
  bob.close();

  // A new process of the same app: resumes after what it persisted, gets 4 and 5 once.
  const again = await connect({ url: broker.url, token: mintToken(b), deviceId: 'phone', lastSeq: persisted });
  assert.equal(again.login.resumedFrom, 3);
  const rest = deliveries(again, 3);
  await within(alice.send(b, 'live 6'));
  assert.deepEqual((await within(rest)).map((d) => [d.seq, d.text]), [[4, 'offline 4'], [5, 'offline 5'], [6, 'live 6']]);
  again.close();
  alice.close();
});

test('within one client, the replay after a dropped connection is not handed out again', async (t) => {
  const proxy = await Proxy.start(broker.port);
  t.after(() => proxy.close());
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const alice = await connect({ url: broker.url, token: mintToken(a), deviceId: 'd' });
  const bob = await connect({ url: proxy.url, token: mintToken(b), deviceId: 'd', autoAck: false, backoff: { initialMs: 20, maxMs: 50 } });
  const seen = [];
  bob.on('deliver', (d) => seen.push(d.seq));
  const three = deliveries(bob, 3);
  for (let i = 1; i <= 3; i++) await within(alice.send(b, `m${i}`));
  await within(three);
  bob.ack(1); // 2 and 3 handed out but not yet processed

  const back = waitFor(bob, 'login');
  proxy.cutAll();
  const info = await within(back);
  assert.equal(info.resumedFrom, 1); // the broker replays 2 and 3; the client drops them
  const fourth = waitFor(bob, 'deliver', (d) => d.seq === 4);
  await within(alice.send(b, 'm4'));
  await within(fourth);
  assert.deepEqual(seen, [1, 2, 3, 4]);
  bob.close();
  alice.close();
});
