// Send → SendAck → Deliver → Ack between users on the real broker.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Code, SendError, connect } from '../dist/index.js';
import { Broker, mintToken, uniqueUser, waitFor, within } from './support/broker.mjs';

let broker;
before(async () => (broker = await Broker.start({ shards: 2 })));
after(() => broker.stop());

const login = (user, device = 'd', extra = {}) =>
  connect({ url: broker.url, token: mintToken(user), deviceId: device, ...extra });

test('round trip both ways: SendAck resolves, Deliver carries sender, id, time and bytes', async (t) => {
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const alice = await login(a);
  const bob = await login(b);
  t.after(() => (alice.close(), bob.close()));
  const toBob = waitFor(bob, 'deliver');
  const before = Date.now();
  const ack = await within(alice.send(b, 'hello bob', { clientMsgId: 41n }));
  // ownSeq: the copy in alice's own stream (own-send sync), which this connection is not sent.
  assert.deepEqual(ack, { clientMsgId: 41n, to: b, ownSeq: 1 });
  const d = await toBob;
  assert.equal(d.seq, 1);
  assert.equal(d.from, a);
  assert.equal(d.clientMsgId, 41n);
  assert.equal(d.text, 'hello bob');
  assert.equal(d.key, `${a}/41`);
  assert.ok(d.sentAtMs >= before - 5000 && d.sentAtMs <= Date.now() + 5000, `sent_at_ms ${d.sentAtMs}`);

  const toAlice = waitFor(alice, 'deliver');
  const bytes = new Uint8Array([0, 255, 10, 13]);
  const r = await within(bob.send(a, bytes));
  assert.equal(typeof r.clientMsgId, 'bigint');
  assert.equal(r.ownSeq, 2, 'after alice\'s message in bob\'s stream');
  const back = await toAlice;
  assert.deepEqual(back.body, bytes);
  assert.equal(back.clientMsgId, r.clientMsgId);
  assert.equal(back.seq, 2, 'after the copy of her own send, which she was not sent');
});

test('many sends resolve in order and arrive in seq order, acked by autoAck', async () => {
  const [a, b] = [uniqueUser('burst-a'), uniqueUser('burst-b')];
  const alice = await login(a);
  const bob = await login(b);
  const got = [];
  const all = new Promise((res) => bob.on('deliver', (d) => {
    got.push(d);
    if (got.length === 50) res();
  }));
  await within(Promise.all(Array.from({ length: 50 }, (_, i) => alice.send(b, `m${i}`))));
  await within(all);
  assert.deepEqual(got.map((d) => d.seq), Array.from({ length: 50 }, (_, i) => i + 1));
  assert.deepEqual(got.map((d) => d.text), Array.from({ length: 50 }, (_, i) => `m${i}`));
  await new Promise((r) => setImmediate(r)); // autoAck marks processed on a later microtask
  assert.equal(bob.lastSeq, 50);
  alice.close();
  bob.close();
});

test('non-OK SendAck rejects with a typed SendError; oversized frames are refused locally', async () => {
  const alice = await login(uniqueUser('picky'));
  const err = await alice.send('', 'to nobody', { clientMsgId: 7n }).then(() => assert.fail('accepted'), (e) => e);
  assert.ok(err instanceof SendError);
  assert.equal(err.code, Code.INVALID_RECIPIENT);
  assert.equal(err.codeName, 'INVALID_RECIPIENT');
  assert.equal(err.clientMsgId, 7n);

  const big = await alice.send('bob', new Uint8Array(70 * 1024)).then(() => assert.fail('accepted'), (e) => e);
  assert.equal(big.codeName, 'FRAME_TOO_LARGE');
  assert.equal(alice.state, 'online', 'a local refusal does not touch the connection');
  await within(alice.send(uniqueUser('someone'), 'still fine'));
  alice.close();
});

test('sends made before connect and while offline go out after login', async () => {
  const [a, b] = [uniqueUser('early-a'), uniqueUser('early-b')];
  const bob = await login(b);
  const got = waitFor(bob, 'deliver');
  const { createClient } = await import('../dist/index.js');
  const alice = createClient({ url: broker.url, token: mintToken(a), deviceId: 'd' });
  const sent = alice.send(b, 'queued before connect');
  assert.equal(alice.pendingSends, 1);
  await alice.connect();
  await within(sent);
  assert.equal((await got).text, 'queued before connect');
  assert.equal(alice.pendingSends, 0);
  alice.close();
  bob.close();
});

test('acks move the stored cursor: a reconnect of the same device with lastSeq 0 gets only what it did not ack', async () => {
  const [a, b] = [uniqueUser('cur-a'), uniqueUser('cur-b')];
  const alice = await login(a);
  for (let i = 1; i <= 4; i++) await within(alice.send(b, `n${i}`));
  const bob = await login(b, 'tablet', { autoAck: false });
  const seen = [];
  const four = new Promise((res) => bob.on('deliver', (d) => {
    seen.push(d.seq);
    if (d.seq === 4) res();
  }));
  await within(four);
  bob.ack(2);
  await within(bob.logout()); // logout flushes the ack before leaving
  const again = await login(b, 'tablet');
  const first = await waitFor(again, 'deliver');
  assert.equal(first.seq, 3);
  assert.equal(first.text, 'n3');
  again.close();
  alice.close();
});
