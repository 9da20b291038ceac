// Reconnect: the broker killed and restarted, an ack lost on the way, a frozen broker found by
// heartbeats, a graceful shutdown. Unacked sends are re-sent with the same client_msg_id and
// the recipient sees each message once.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Code, connect } from '../dist/index.js';
import { Broker, mintToken, uniqueUser, waitFor, within } from './support/broker.mjs';
import { Proxy } from './support/net.mjs';

const fast = { backoff: { initialMs: 20, maxMs: 200 }, loginTimeoutMs: 3000 };
const settle = () => new Promise((r) => setImmediate(r));

test('broker killed and restarted: both resume, the unacked send is re-sent and seen once', async (t) => {
  const broker = await Broker.start({ shards: 2 });
  t.after(() => broker.stop());
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  let aliceLogins = 0;
  const alice = await connect({ url: broker.url, token: () => (aliceLogins++, mintToken(a)), deviceId: 'd', ...fast });
  const bob = await connect({ url: broker.url, token: mintToken(b), deviceId: 'd', ...fast });
  t.after(() => (alice.close(), bob.close()));
  const texts = [];
  bob.on('deliver', (d) => texts.push([d.seq, d.text]));

  const first = waitFor(bob, 'deliver');
  await within(alice.send(b, 'before'));
  await first;
  await settle(); // bob has processed seq 1 (autoAck)
  assert.equal(bob.lastSeq, 1);

  // Frozen, the broker cannot read: this Send is written to the socket and never answered.
  await broker.freeze();
  const written = waitFor(alice, 'sent', (s) => s.attempt === 1);
  const pending = alice.send(b, 'during the outage');
  const { clientMsgId } = await written;
  const aliceDown = waitFor(alice, 'state', (s) => s.state === 'reconnecting');
  const bobDown = waitFor(bob, 'state', (s) => s.state === 'reconnecting');
  await broker.kill();
  await within(Promise.all([aliceDown, bobDown]));
  assert.equal(alice.pendingSends, 1);

  const resent = waitFor(alice, 'sent', (s) => s.attempt === 2);
  const bobBack = waitFor(bob, 'login');
  await broker.restart();
  assert.equal((await within(resent)).clientMsgId, clientMsgId);
  const result = await within(pending);
  // Never read before the kill: stored by the re-send, its copy skipped for this connection.
  assert.deepEqual(result, { clientMsgId, to: b, ownSeq: result.ownSeq });
  assert.ok(result.ownSeq > 0, `ownSeq ${result.ownSeq}`);
  assert.equal((await bobBack).resumedFrom, 1, 'bob resumes after the last seq it processed');
  assert.ok(aliceLogins >= 2, 'the token function ran again for the new login');

  const marker = waitFor(bob, 'deliver', (d) => d.text === 'marker');
  await within(alice.send(b, 'marker'));
  await marker;
  assert.deepEqual(texts, [[1, 'before'], [2, 'during the outage'], [3, 'marker']]);
});

test('an ack lost in transit: the re-send is answered from the broker\'s dedup, not delivered twice', async (t) => {
  const broker = await Broker.start({ shards: 2 });
  const proxy = await Proxy.start(broker.port);
  t.after(async () => (await proxy.close(), await broker.stop()));
  const [a, b] = [uniqueUser('alice'), uniqueUser('bob')];
  const alice = await connect({ url: proxy.url, token: mintToken(a), deviceId: 'd', ...fast });
  const bob = await connect({ url: broker.url, token: mintToken(b), deviceId: 'd', ...fast });
  t.after(() => (alice.close(), bob.close()));
  const got = [];
  bob.on('deliver', (d) => got.push(d));

  proxy.swallowDownstream = true; // alice hears nothing from here on: her SendAck is lost
  const delivered = waitFor(bob, 'deliver');
  const pending = alice.send(b, 'once only');
  await delivered; // the broker stored it (and acked it into the void)
  const resent = waitFor(alice, 'sent', (s) => s.attempt === 2);
  proxy.cutAll();
  proxy.swallowDownstream = false;
  const ack = await within(pending);
  assert.equal((await resent).clientMsgId, ack.clientMsgId);
  assert.equal(ack.ownSeq, 0, 'a re-send answered from the dedup window names no copy');

  const marker = waitFor(bob, 'deliver', (d) => d.text === 'marker');
  await within(alice.send(b, 'marker'));
  await marker;
  assert.deepEqual(got.map((d) => [d.seq, d.text, d.clientMsgId]), [[1, 'once only', ack.clientMsgId], [2, 'marker', got[1].clientMsgId]]);
});

test('a frozen broker is noticed by heartbeats; the client reconnects when it thaws', async (t) => {
  const broker = await Broker.start({ shards: 1 });
  t.after(() => broker.stop());
  const c = await connect({ url: broker.url, token: mintToken(uniqueUser('pinger')), deviceId: 'd', heartbeatMs: 200, ...fast });
  t.after(() => c.close());
  broker.signal('SIGSTOP');
  const down = await within(waitFor(c, 'state', (s) => s.state === 'reconnecting'));
  assert.match(down.error.message, /no answer to a ping within 200 ms/);
  const back = waitFor(c, 'state', (s) => s.state === 'online');
  broker.signal('SIGCONT');
  await within(back);
});

test('heartbeats keep an idle connection inside the broker\'s idle_timeout', async (t) => {
  const broker = await Broker.start({ shards: 1, limits: 'idle_timeout = "1s"' });
  t.after(() => broker.stop());
  const c = await connect({ url: broker.url, token: mintToken(uniqueUser('idle')), deviceId: 'd', ...fast });
  t.after(() => c.close());
  assert.equal(c.login.heartbeatMs, 333);
  const changes = [];
  c.on('state', (s) => changes.push(s));
  // Nothing signals "was not disconnected": wait two idle timeouts and look.
  await new Promise((r) => setTimeout(r, 2100));
  assert.deepEqual(changes, []);
  assert.equal(c.state, 'online');
});

test('GoAway(SHUTDOWN) on SIGTERM is transient: the client waits for the broker to come back', async (t) => {
  const broker = await Broker.start({ shards: 1 });
  t.after(() => broker.stop());
  const c = await connect({ url: broker.url, token: mintToken(uniqueUser('patient')), deviceId: 'd', ...fast });
  t.after(() => c.close());
  const goaway = waitFor(c, 'goaway');
  const down = waitFor(c, 'state', (s) => s.state === 'reconnecting');
  broker.signal('SIGTERM');
  assert.equal((await within(goaway)).code, Code.SHUTDOWN);
  assert.equal((await within(down)).error.codeName, 'SHUTDOWN');
  assert.equal((await broker.exited).code, 0);
  const back = waitFor(c, 'state', (s) => s.state === 'online');
  await broker.restart();
  await within(back);
});
