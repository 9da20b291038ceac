// Groups over the real broker (2 shards): the lifecycle with every refusal as a typed
// GroupError, messages in one group order for members on different shards, the removal and
// join boundaries, and a group send whose SendAck was lost, resent after a kill -9 restart and
// stored once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Code, EntryKind, GroupError, SendError, connect } from '../dist/index.js';
import { Broker, Entries, mintToken, summary, uniqueUser, waitFor, within } from './support/broker.mjs';
import { Proxy } from './support/net.mjs';
import { groupOwner, nameOn, owner } from './support/routing.mjs';

const SHARDS = 2;
const userOn = (prefix, shard) => nameOn(uniqueUser(prefix), shard, (n) => owner(n, SHARDS));
const groupOn = (prefix, shard) => nameOn(uniqueUser(prefix), shard, (g) => groupOwner(g, SHARDS));
const fast = { backoff: { initialMs: 20, maxMs: 200 }, loginTimeoutMs: 3000 };

let broker;
before(async () => (broker = await Broker.start({ shards: SHARDS, limits: 'sends_per_sec = 100000' })));
after(() => broker.stop());

/** Logs `user` in; the client is closed when test `t` ends (pass or fail). */
async function login(t, user, device = 'd', extra = {}) {
  const c = await connect({ url: broker.url, token: mintToken(user), deviceId: device, ...extra });
  t.after(() => c.close());
  assert.equal(c.login.shard, owner(user, SHARDS), `${user} is served by its owner shard`);
  return c;
}

async function refusal(p) {
  return p.then((v) => assert.fail(`accepted: ${JSON.stringify(v)}`), (e) => e);
}

const kindIs = (kind, group) => (d) => d.kind === kind && d.groupId === group;

test('group lifecycle: create, list, info in pages, add, remove, leave; refusals are GroupErrors with code and name', async (t) => {
  const [a, b, c] = [userOn('life-admin', 0), userOn('life-bob', 1), userOn('life-carol', 1)];
  const group = groupOn('life', 1);
  const [alice, bob, carol] = await Promise.all([login(t, a), login(t, b), login(t, c)]);
  const [ea, eb, ec] = [new Entries(alice), new Entries(bob), new Entries(carol)];

  assert.deepEqual(await within(alice.createGroup(group, [b])), { groupId: group, groupSeq: 1 });
  for (const [e, who] of [[ea, a], [eb, b]]) {
    const d = await e.find(kindIs(EntryKind.GroupCreated, group));
    assert.equal(d.kindName, 'GroupCreated');
    assert.deepEqual([d.seq, d.groupSeq, d.from, d.members], [1, 1, a, [a, b]], 'the creator comes first');
    assert.equal(d.outgoing, who === a, 'the creator made it');
    assert.equal(d.echo, false, 'a group event is never an echo');
    assert.equal(d.isGroup, true);
    assert.equal(d.key, `${group}#1`);
  }
  assert.deepEqual(await bob.listGroups(), [group]);

  const exists = await refusal(bob.createGroup(group));
  assert.ok(exists instanceof GroupError, String(exists));
  assert.deepEqual([exists.code, exists.codeName, exists.op, exists.groupId], [Code.GROUP_EXISTS, 'GROUP_EXISTS', 'create', group]);
  assert.equal(typeof exists.requestId, 'bigint');
  assert.match(exists.message, /^GROUP_EXISTS \(601\)/);
  const notAdmin = await refusal(bob.addMembers(group, [c]));
  assert.deepEqual([notAdmin.code, notAdmin.codeName, notAdmin.op], [603, 'NOT_GROUP_ADMIN', 'add']);
  assert.equal((await refusal(alice.createGroup(''))).codeName, 'INVALID_GROUP');
  assert.equal((await refusal(alice.leaveGroup(uniqueUser('no-such-group')))).codeName, 'GROUP_NOT_FOUND');

  assert.deepEqual(await alice.addMembers(group, [c]), { groupId: group, groupSeq: 2 });
  const added = await ec.find(kindIs(EntryKind.MembersAdded, group));
  assert.deepEqual([added.seq, added.groupSeq, added.from, added.members], [1, 2, a, [c]], 'carol starts at her addition');
  await eb.find(kindIs(EntryKind.MembersAdded, group));
  assert.equal((await refusal(alice.addMembers(group, [c]))).codeName, 'ALREADY_A_MEMBER');

  // Info: all at once, and one member per page.
  const everyone = [a, b, c].sort().map((u) => ({ userId: u, admin: u === a }));
  assert.deepEqual(await carol.groupInfo(group), { groupId: group, members: everyone, nextAfter: '', memberCount: 3 });
  const first = await carol.groupInfo(group, { limit: 1 });
  assert.deepEqual([first.members, first.nextAfter, first.memberCount], [everyone.slice(0, 1), everyone[0].userId, 3]);
  const second = await carol.groupInfo(group, { after: first.nextAfter, limit: 1 });
  assert.deepEqual(second.members, everyone.slice(1, 2));
  assert.deepEqual(await carol.groupMembers(group, { pageSize: 1 }), everyone);

  // Remove bob: his removal is the last group entry he gets, and the group is closed to him.
  assert.deepEqual(await alice.removeMembers(group, [b]), { groupId: group, groupSeq: 3 });
  const removed = await eb.find(kindIs(EntryKind.MembersRemoved, group));
  assert.deepEqual([removed.groupSeq, removed.members], [3, [b]]);
  const refused = await refusal(bob.sendToGroup(group, 'let me in'));
  assert.ok(refused instanceof SendError, String(refused));
  assert.deepEqual([refused.code, refused.codeName, refused.groupId, refused.to], [Code.NOT_A_MEMBER, 'NOT_A_MEMBER', group, '']);
  assert.equal((await refusal(bob.groupInfo(group))).codeName, 'NOT_A_MEMBER');
  assert.deepEqual(await bob.listGroups(), []);

  // Carol leaves.
  assert.deepEqual(await carol.leaveGroup(group), { groupId: group, groupSeq: 4 });
  const left = await ea.find(kindIs(EntryKind.MemberLeft, group));
  assert.deepEqual([left.from, left.groupSeq, left.outgoing], [c, 4, false]);
  const ownLeave = await ec.find(kindIs(EntryKind.MemberLeft, group));
  assert.equal(ownLeave.outgoing, true, 'carol made that change herself');
  assert.deepEqual(await carol.listGroups(), []);
  assert.deepEqual(await alice.listGroups(), [group]);
  assert.deepEqual(ea.all.map((d) => d.kindName), ['GroupCreated', 'MembersAdded', 'MembersRemoved', 'MemberLeft'], ea.all.map(summary).join(' '));
});

test('members on different shards see the group\'s messages in one order, each once, in gap-free streams', async (t) => {
  const [a, b] = [userOn('order-a', 0), userOn('order-b', 1)];
  const group = groupOn('order', 1); // owned by the shard alice is not on
  const [alice, bob] = await Promise.all([login(t, a), login(t, b)]);
  const [ea, eb] = [new Entries(alice), new Entries(bob)];
  await alice.createGroup(group, [b]);
  const N = 15;
  // Both send at once, without waiting for each other's acks.
  const acks = await within(Promise.all(Array.from({ length: N }, (_, i) => [
    alice.sendToGroup(group, `a${i}`), bob.sendToGroup(group, `b${i}`),
  ]).flat()));
  assert.deepEqual(acks[0], { clientMsgId: acks[0].clientMsgId, groupId: group });
  const views = [];
  for (const [e, me] of [[ea, a], [eb, b]]) {
    const all = await e.count(1 + 2 * N);
    assert.deepEqual(all.map((d) => d.seq), Array.from({ length: 1 + 2 * N }, (_, i) => i + 1), 'gap-free stream');
    const msgs = all.slice(1);
    assert.deepEqual(msgs.map((d) => d.groupSeq), Array.from({ length: 2 * N }, (_, i) => i + 2), 'group_seq counts up by one');
    for (const d of msgs) {
      assert.equal(d.groupId, group);
      assert.equal(d.kind, EntryKind.Message);
      assert.equal(d.outgoing, d.from === me, summary(d));
      assert.equal(d.echo, d.from === me, `own messages are this client's echoes: ${summary(d)}`);
    }
    views.push(msgs.map((d) => `${d.groupSeq}:${d.from}:${d.text}`));
  }
  assert.deepEqual(views[0], views[1], 'both members see the same order');
  const texts = views[0].map((v) => v.split(':')[2]);
  for (const p of ['a', 'b']) {
    assert.deepEqual(texts.filter((t) => t[0] === p), Array.from({ length: N }, (_, i) => `${p}${i}`), `${p}'s messages once each, in send order`);
  }
});

test('a removed member gets nothing after its removal; an added one nothing before its addition', async (t) => {
  const [a, b, c] = [userOn('rm-admin', 0), userOn('rm-bob', 1), userOn('rm-carol', 1)];
  const group = groupOn('boundary', 0);
  const [alice, bob, carol] = await Promise.all([login(t, a), login(t, b), login(t, c)]);
  const [eb, ec] = [new Entries(bob), new Entries(carol)];
  await alice.createGroup(group, [b]);
  await alice.sendToGroup(group, 'before');
  assert.equal((await alice.removeMembers(group, [b])).groupSeq, 3);
  assert.equal((await alice.addMembers(group, [c])).groupSeq, 4);
  await alice.sendToGroup(group, 'after');
  // Carol shares bob's shard: once "after" reached her, the fan-out to that shard is done.
  await ec.find((d) => d.text === 'after');
  const marker = await alice.send(b, 'marker');
  await eb.find((d) => d.clientMsgId === marker.clientMsgId);
  assert.deepEqual(eb.all.map(summary), [
    `1:GroupCreated#${group}@1:${a}:`, `2:Message#${group}@2:${a}:before`, `3:MembersRemoved#${group}@3:${a}:`,
    `4:Message:${a}:marker`,
  ]);
  assert.deepEqual(ec.all.map(summary), [`1:MembersAdded#${group}@4:${a}:`, `2:Message#${group}@5:${a}:after`]);
  // A new device of carol's replays her stream from the log: the same two entries.
  const tablet = await login(t, c, 'tablet');
  const et = new Entries(tablet);
  assert.deepEqual((await et.count(2)).map(summary), ec.all.map(summary));
});

test('a group send whose SendAck was lost is re-sent after a kill -9 restart and stored once', async (t) => {
  const own = await Broker.start({ shards: SHARDS });
  const proxy = await Proxy.start(own.port);
  t.after(async () => (await proxy.close(), await own.stop()));
  const [a, b] = [userOn('crash-a', 0), userOn('crash-b', 1)];
  const group = groupOn('crash', 1);
  const alice = await connect({ url: proxy.url, token: mintToken(a), deviceId: 'd', ...fast });
  const bob = await connect({ url: own.url, token: mintToken(b), deviceId: 'd', ...fast });
  t.after(() => (alice.close(), bob.close()));
  const eb = new Entries(bob);
  await alice.createGroup(group, [b]);

  proxy.swallowDownstream = true; // alice hears nothing from here on: her SendAck is lost
  const pending = alice.sendToGroup(group, 'once only');
  await eb.find((d) => d.text === 'once only'); // stored and fanned out (and acked into the void)
  const resent = waitFor(alice, 'sent', (s) => s.attempt === 2);
  await own.kill(); // SIGKILL
  // The ack may still sit in the dead broker's socket buffer: the kernel sends it after the
  // kill. Only once the proxy saw that link end has everything the broker wrote been swallowed.
  await within(proxy.unlinked());
  proxy.swallowDownstream = false;
  await own.restart(); // same data directory, same port
  const ack = await within(pending);
  assert.equal((await within(resent)).clientMsgId, ack.clientMsgId);
  assert.equal((await resent).groupId, group);

  // The same client_msg_id from a fresh client of alice's is answered OK and not stored again.
  const again = await connect({ url: own.url, token: mintToken(a), deviceId: 'other' });
  t.after(() => again.close());
  assert.deepEqual(await within(again.sendToGroup(group, 'once only', { clientMsgId: ack.clientMsgId })), { clientMsgId: ack.clientMsgId, groupId: group });
  const marker = await within(alice.sendToGroup(group, 'marker'));
  await eb.find((d) => d.clientMsgId === marker.clientMsgId);
  assert.deepEqual(eb.all.map((d) => [d.seq, d.groupSeq, d.text]), [[1, 1, ''], [2, 2, 'once only'], [3, 3, 'marker']]);
  // And in the log: a fresh device of bob's replays the same three entries.
  const fresh = await connect({ url: own.url, token: mintToken(b), deviceId: 'fresh' });
  t.after(() => fresh.close());
  const ef = new Entries(fresh);
  assert.deepEqual((await ef.count(3)).map((d) => [d.seq, d.groupSeq, d.text]), [[1, 1, ''], [2, 2, 'once only'], [3, 3, 'marker']]);
});
