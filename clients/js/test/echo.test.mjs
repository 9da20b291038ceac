// Own-send sync (the broker's default): every message a user sends also enters the user's own
// stream, on every device. The user's other devices get the copy of a 1:1 send on 'deliver' as
// outgoing, not an echo. The connection that made the send is not sent that copy: its SendAck
// names the copy's seq (SendResult.ownSeq), its stream has a hole there, and an ack of the
// entry before the hole covers the copy. A reconnect of the same client that resumes from
// before the copy gets it replayed, flagged `echo` and handed to 'echo' listeners instead of
// 'deliver' ones (unless deliverEchoes), so each message is presented once. A group message
// still reaches its sender as a member, flagged echo.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { EntryKind, connect, createClient } from '../dist/index.js';
import { Broker, Entries, collect, mintToken, summary, uniqueUser, waitFor, within } from './support/broker.mjs';
import { Proxy } from './support/net.mjs';

let broker;
before(async () => (broker = await Broker.start({ shards: 2 })));
after(() => broker.stop());

async function login(t, user, device, extra = {}) {
  const c = await connect({ url: broker.url, token: mintToken(user), deviceId: device, ...extra });
  t.after(() => c.close());
  return c;
}

/** autoAck counts a delivery processed on a microtask after its listeners ran. */
const settle = () => new Promise((r) => setImmediate(r));

test('the sending client is not sent the copy of its 1:1 send: its SendAck names the seq at which the user\'s other device gets it', async (t) => {
  const [a, b] = [uniqueUser('echo-a'), uniqueUser('echo-b')];
  const phone = await login(t, a, 'phone');
  const laptop = await login(t, a, 'laptop');
  const bob = await login(t, b, 'd');
  // 'deliver' and 'echo' entries alike: the phone must get neither for its own send.
  const [onPhone, onLaptop, onBob] = [new Entries(phone), new Entries(laptop), new Entries(bob)];

  const ack = await within(phone.send(b, 'hi bob'));
  assert.deepEqual(ack, { clientMsgId: ack.clientMsgId, to: b, ownSeq: 1 }, 'the copy takes the next seq of the sender\'s stream');
  const other = await onLaptop.find((d) => d.clientMsgId === ack.clientMsgId);
  assert.deepEqual([other.seq, other.from, other.to, other.peer, other.text, other.outgoing, other.echo, other.kind],
    [ack.ownSeq, a, b, b, 'hi bob', true, false, EntryKind.Message], 'on the other device: outgoing, not its echo');
  assert.equal(other.key, `${a}/${ack.clientMsgId}`, 'the key the sender computes for what it sent');

  // A reply (alice's seq 2): the broker sends a connection its entries in seq order, so once the
  // phone has seq 2 it would have had the copy at seq 1 too. It has only the reply.
  const reply = await within(bob.send(a, 'hi alice'));
  await onPhone.find((d) => d.clientMsgId === reply.clientMsgId);
  await onLaptop.find((d) => d.clientMsgId === reply.clientMsgId);
  assert.deepEqual(onPhone.all.map(summary), [`2:Message:${b}:hi alice`], 'a hole at seq 1, no gap error');
  assert.deepEqual(onLaptop.all.map(summary), [`1:Message:${a}>:hi bob`, `2:Message:${b}:hi alice`]);
  await settle();
  assert.equal(phone.lastSeq, 2, 'the entry after the hole moves lastSeq past it');
  // Bob's stream: alice's message at 1, the copy of his reply at 2 (not sent to him either).
  assert.equal(reply.ownSeq, 2);
  const bye = await within(phone.send(b, 'bye'));
  assert.equal(bye.ownSeq, 3);
  await onBob.find((d) => d.clientMsgId === bye.clientMsgId);
  assert.deepEqual(onBob.all.map(summary), [`1:Message:${a}:hi bob`, `3:Message:${a}:bye`]);
  const third = await onLaptop.find((d) => d.clientMsgId === bye.clientMsgId);
  assert.deepEqual([third.seq, third.outgoing, third.echo], [3, true, false]);
  assert.deepEqual(onPhone.all.map(summary), [`2:Message:${b}:hi alice`]);
});

test('group messages: the sender\'s copy is its echo; deliverEchoes hands echoes to deliver too, flagged', async (t) => {
  const a = uniqueUser('gecho-a');
  const group = uniqueUser('gecho');
  const phone = await login(t, a, 'phone');
  const tablet = await login(t, a, 'tablet', { deliverEchoes: true });
  const [onPhone, onTablet] = [new Entries(phone), new Entries(tablet, { echoes: false })];
  const tabletEchoes = [];
  tablet.on('echo', (d) => tabletEchoes.push(d));
  await phone.createGroup(group);
  const fromPhone = await phone.sendToGroup(group, 'from the phone');
  const fromTablet = await tablet.sendToGroup(group, 'from the tablet');
  await onPhone.count(3);
  await onTablet.count(3);
  const flags = (e) => e.all.map((d) => [d.seq, d.kindName, d.groupSeq, d.clientMsgId, d.outgoing, d.echo]);
  assert.deepEqual(flags(onPhone), [
    [1, 'GroupCreated', 1, 0n, true, false], [2, 'Message', 2, fromPhone.clientMsgId, true, true],
    [3, 'Message', 3, fromTablet.clientMsgId, true, false]]);
  assert.deepEqual(flags(onTablet), [
    [1, 'GroupCreated', 1, 0n, true, false], [2, 'Message', 2, fromPhone.clientMsgId, true, false],
    [3, 'Message', 3, fromTablet.clientMsgId, true, true]], 'deliverEchoes: every entry on deliver, the echo flagged');
  assert.deepEqual(tabletEchoes.map((d) => d.seq), [3], "'echo' fires for the echo in both modes");
});

test('autoAck off: acking the entry before the hole covers the copy; a fresh client from the stored cursor gets nothing more', async (t) => {
  const [a, b] = [uniqueUser('ack-a'), uniqueUser('ack-b')];
  const bob = await login(t, b, 'd');
  const alice = await login(t, a, 'manual', { autoAck: false });
  // The user's other device: its copy says the entry is committed. The broker covers a copy
  // with the ack before it once it has passed over it, which is at that commit; a logout before
  // (possible after a cross-shard send's SendAck) would leave the cursor before the copy.
  const onLaptop = new Entries(await login(t, a, 'laptop'));
  const onAlice = new Entries(alice);
  await within(bob.send(a, 'one'));
  await onAlice.find((d) => d.seq === 1);
  const two = await within(alice.send(b, 'two'));
  assert.equal(two.ownSeq, 2);
  await onLaptop.find((d) => d.seq === two.ownSeq);
  assert.equal(alice.lastSeq, 0, 'nothing processed yet; the SendAck alone does not move it');
  alice.ack(two.ownSeq);
  assert.equal(alice.lastSeq, 1, 'only what was handed out counts: the copy may not be durable when the SendAck comes');
  assert.deepEqual(onAlice.all.map(summary), [`1:Message:${b}:one`]);
  await within(alice.logout()); // flushes the ack (1)

  const again = await login(t, a, 'manual');
  const onAgain = new Entries(again);
  const three = await within(bob.send(a, 'three'));
  await onAgain.find((d) => d.clientMsgId === three.clientMsgId);
  assert.deepEqual(onAgain.all.map(summary), [`3:Message:${b}:three`], 'the ack of seq 1 covered the copy at 2: nothing replayed');
});

test('autoAck: a bot that only sends leaves no backlog: its copies are covered though it never gets them', async (t) => {
  const [botUser, b] = [uniqueUser('sender-only'), uniqueUser('bot-peer')];
  const bob = await login(t, b, 'd');
  const bot = await login(t, botUser, 'd');
  const botSees = new Entries(bot);
  const onWatcher = new Entries(await login(t, botUser, 'watcher')); // says when the copies are committed
  const acks = [];
  for (let i = 0; i < 3; i++) acks.push(await within(bot.send(b, `x${i}`)));
  assert.deepEqual(acks.map((r) => r.ownSeq), [1, 2, 3]);
  await onWatcher.count(3); // all three copies are in the stream
  assert.deepEqual(botSees.all, []);
  assert.equal(bot.lastSeq, 0);
  await within(bot.logout());

  const fresh = await login(t, botUser, 'd');
  const onFresh = new Entries(fresh);
  const ping = await within(bob.send(botUser, 'ping'));
  await onFresh.find((d) => d.clientMsgId === ping.clientMsgId);
  assert.deepEqual(onFresh.all.map(summary), [`4:Message:${b}:ping`], 'nothing replayed from the stored cursor');
});

for (const mode of [{}, { deliverEchoes: true }, { autoAck: false }]) {
  test(`a reconnect that resumes from before the copy gets it flagged echo (${JSON.stringify(mode)})`, async (t) => {
    const proxy = await Proxy.start(broker.port);
    t.after(() => proxy.close());
    const [a, b] = [uniqueUser('replay-a'), uniqueUser('replay-b')];
    const bob = await login(t, b, 'd');
    const phone = await connect({ url: proxy.url, token: mintToken(a), deviceId: 'phone', backoff: { initialMs: 20, maxMs: 50 }, ...mode });
    t.after(() => phone.close());
    const manual = mode.autoAck === false;
    const onPhone = new Entries(phone);
    const [delivered, echoes] = [collect(phone, 'deliver'), collect(phone, 'echo')];
    if (manual) phone.on('deliver', (d) => phone.ack(d.seq));
    await within(bob.send(a, 'one'));
    await onPhone.find((d) => d.seq === 1);
    await settle();
    assert.equal(phone.lastSeq, 1);
    const two = await within(phone.send(b, 'two'));
    assert.equal(two.ownSeq, 2);

    const back = waitFor(phone, 'login');
    proxy.cutAll();
    assert.equal((await within(back)).resumedFrom, 1, 'resumes from its own last seq, before the copy');
    const e = await onPhone.find((d) => d.seq === 2);
    assert.deepEqual([e.from, e.to, e.clientMsgId, e.text, e.outgoing, e.echo], [a, b, two.clientMsgId, 'two', true, true],
      'the client remembers what it sent across its reconnects');
    await settle();
    assert.equal(phone.lastSeq, 2, manual ? 'an echo right after a processed entry counts as processed' : 'acked like any entry');

    const three = await within(bob.send(a, 'three'));
    await onPhone.find((d) => d.clientMsgId === three.clientMsgId);
    assert.deepEqual(echoes.map(summary), [`2:Message:${a}>(echo):two`]);
    assert.deepEqual(delivered.map(summary), mode.deliverEchoes
      ? [`1:Message:${b}:one`, `2:Message:${a}>(echo):two`, `3:Message:${b}:three`]
      : [`1:Message:${b}:one`, `3:Message:${b}:three`]);
  });
}

test('a send re-sent by a new client (same client_msg_id, after a page reload): dedup answers it, its replayed copy is the echo', async (t) => {
  const [a, b] = [uniqueUser('reload-a'), uniqueUser('reload-b')];
  const bob = await login(t, b, 'd');
  const first = await login(t, a, 'browser');
  const onFirst = new Entries(first);
  await within(bob.send(a, 'before'));
  await onFirst.find((d) => d.seq === 1);
  await settle();
  const id = first.newClientMsgId();
  const ack = await within(first.send(b, 'stored before the reload', { clientMsgId: id }));
  assert.equal(ack.ownSeq, 2);
  // The page went away before it recorded the ack: it stored the message as unsent, and lastSeq 1.
  first.close();
  const again = createClient({ url: broker.url, token: mintToken(a), deviceId: 'browser', lastSeq: first.lastSeq });
  t.after(() => again.close());
  const onAgain = new Entries(again);
  const delivered = collect(again, 'deliver');
  const resent = again.send(b, 'stored before the reload', { clientMsgId: id }); // written right after login
  await within(again.connect());
  assert.deepEqual(await within(resent), { clientMsgId: id, to: b, ownSeq: 0 }, 'answered from the dedup window: no second copy');
  const e = await onAgain.find((d) => d.clientMsgId === id);
  assert.deepEqual([e.seq, e.clientMsgId, e.outgoing, e.echo, e.text], [2, id, true, true, 'stored before the reload']);
  assert.deepEqual(delivered, [], 'not on deliver: the page shows it already');
});
