// Own-send sync (the broker's default): every message a user sends also enters the user's own
// stream, on every device. The client flags the entry of its own send as `echo` and hands it to
// 'echo' listeners instead of 'deliver' ones, so each message is presented once; the user's
// other devices get it on 'deliver' as outgoing, not an echo.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { EntryKind, connect } from '../dist/index.js';
import { Broker, Entries, mintToken, summary, uniqueUser, waitFor, within } from './support/broker.mjs';

let broker;
before(async () => (broker = await Broker.start({ shards: 2 })));
after(() => broker.stop());

async function login(t, user, device, extra = {}) {
  const c = await connect({ url: broker.url, token: mintToken(user), deviceId: device, ...extra });
  t.after(() => c.close());
  return c;
}

test('the echo of a send is flagged on the sending client and arrives as outgoing on the user\'s other device', async (t) => {
  const [a, b] = [uniqueUser('echo-a'), uniqueUser('echo-b')];
  const phone = await login(t, a, 'phone');
  const laptop = await login(t, a, 'laptop');
  const bob = await login(t, b, 'd');
  const [onPhone, onLaptop] = [new Entries(phone, { echoes: false }), new Entries(laptop, { echoes: false })];
  const phoneEchoes = [];
  phone.on('echo', (d) => phoneEchoes.push(d));

  const echo = waitFor(phone, 'echo');
  const ack = await within(phone.send(b, 'hi bob'));
  const e = await within(echo);
  assert.deepEqual([e.seq, e.from, e.to, e.peer, e.clientMsgId, e.text, e.outgoing, e.echo, e.kind],
    [1, a, b, b, ack.clientMsgId, 'hi bob', true, true, EntryKind.Message]);
  assert.equal(e.key, `${a}/${ack.clientMsgId}`, 'the key the sender computes for what it sent');
  const other = await onLaptop.find((d) => d.clientMsgId === ack.clientMsgId);
  assert.deepEqual([other.seq, other.from, other.to, other.peer, other.text, other.outgoing, other.echo],
    [1, a, b, b, 'hi bob', true, false], 'the same entry, same seq, on the other device: not its echo');

  // A reply: the phone's 'deliver' gets it and only it; its own message went to 'echo'.
  const reply = await within(bob.send(a, 'hi alice'));
  await onPhone.find((d) => d.clientMsgId === reply.clientMsgId);
  await onLaptop.find((d) => d.clientMsgId === reply.clientMsgId);
  assert.deepEqual(onPhone.all.map(summary), [`2:Message:${b}:hi alice`]);
  assert.deepEqual(onLaptop.all.map(summary), [`1:Message:${a}>:hi bob`, `2:Message:${b}:hi alice`]);
  assert.equal(phoneEchoes.length, 1);
  // Bob's stream: alice's message (held for the first 'deliver' listener), then his reply as his echo.
  const bobEcho = waitFor(bob, 'echo');
  assert.deepEqual([(await waitFor(bob, 'deliver')).seq, (await within(bobEcho)).seq], [1, 2]);
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

test('echoes are processed in seq order: acked with autoAck, and with autoAck off once everything before them is', async (t) => {
  const [a, b] = [uniqueUser('ack-a'), uniqueUser('ack-b')];
  const bob = await login(t, b, 'd');
  const alice = await login(t, a, 'manual', { autoAck: false });
  const seen = [];
  alice.on('deliver', (d) => seen.push(d.seq));
  const echoes = [];
  alice.on('echo', (d) => echoes.push(d.seq));
  const first = waitFor(alice, 'deliver');
  await bob.send(a, 'one');
  await within(first);
  // Alice's own send lands at seq 2, behind the unprocessed seq 1: it waits for it.
  const echoed = waitFor(alice, 'echo');
  await alice.send(b, 'two');
  await within(echoed);
  assert.equal(alice.lastSeq, 0, 'nothing processed yet');
  alice.ack(1);
  assert.equal(alice.lastSeq, 2, 'the echo right after seq 1 counts as processed with it');
  assert.deepEqual([seen, echoes], [[1], [2]]);
  await within(alice.logout()); // flushes the ack (2)
  const again = await login(t, a, 'manual');
  const next = waitFor(again, 'deliver');
  await bob.send(a, 'three');
  const d = await within(next);
  assert.deepEqual([d.seq, d.text], [3, 'three'], 'the stored cursor covered the echo: nothing replayed');

  // autoAck: an echo as the last entry is acked too (a bot that only sends leaves no backlog).
  const bot = await login(t, uniqueUser('sender-only'), 'd');
  const botEcho = waitFor(bot, 'echo');
  await bot.send(b, 'x');
  const e = await within(botEcho);
  await new Promise((r) => setImmediate(r));
  assert.equal(bot.lastSeq, e.seq);
});

test('a send re-sent by a new client (same client_msg_id, e.g. after a page reload) has its echo recognised', async (t) => {
  const [a, b] = [uniqueUser('reload-a'), uniqueUser('reload-b')];
  const first = await login(t, a, 'browser');
  const id = first.newClientMsgId();
  first.close(); // the app stored the message with its id, then the page went away
  const again = await login(t, a, 'browser');
  const echo = waitFor(again, 'echo');
  const ack = await within(again.send(b, 'stored before the reload', { clientMsgId: id }));
  assert.equal(ack.clientMsgId, id);
  const e = await within(echo);
  assert.deepEqual([e.clientMsgId, e.echo, e.text], [id, true, 'stored before the reload']);
});
