// Login against the real broker: LoginOk, and refusals that must stop reconnecting.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Code, RingpostError, connect, createClient } from '../dist/index.js';
import { Broker, mintToken, uniqueUser, waitFor, within } from './support/broker.mjs';

let broker;
before(async () => (broker = await Broker.start({ shards: 2 })));
after(() => broker.stop());

test('login ok: LoginOk names the user, its shard and an empty inbox', async () => {
  const user = uniqueUser('alice');
  const states = [];
  const c = createClient({ url: broker.url, token: mintToken(user), deviceId: 'laptop' });
  c.on('state', (s) => states.push(s.state));
  const info = await within(c.connect());
  assert.equal(info.userId, user);
  assert.ok(info.shard < broker.shards);
  assert.equal(info.headSeq, 0);
  assert.equal(info.gap, false);
  assert.equal(info.heartbeatMs, 30000); // idle_timeout 90 s / 3
  assert.equal(c.state, 'online');
  c.close();
  assert.deepEqual(states, ['connecting', 'online', 'closed']);
});

for (const [name, token, code] of [
  ['bad signature', () => mintToken('mallory', { secret: 'not-the-secret' }), Code.AUTH_FAILED],
  ['not a JWT', () => 'definitely.not.ajwt', Code.AUTH_FAILED],
  ['expired', () => mintToken('late', { ttlSec: -3600 }), Code.TOKEN_EXPIRED],
]) {
  test(`login refused (${name}): ${Code[code]} rejects connect and stops reconnecting`, async () => {
    const c = createClient({ url: broker.url, token: token(), backoff: { initialMs: 10, maxMs: 10 } });
    let retries = 0;
    c.on('retry', () => retries++);
    const closed = waitFor(c, 'state', (s) => s.state === 'closed');
    const err = await within(c.connect()).then(() => assert.fail('login succeeded'), (e) => e);
    assert.ok(err instanceof RingpostError, String(err));
    assert.equal(err.code, code);
    assert.equal(err.codeName, Code[code]);
    assert.match(err.message, new RegExp(`^${Code[code]} \\(${code}\\)`));
    const s = await closed;
    assert.equal(s.error, err);
    assert.equal(retries, 0);
    await assert.rejects(c.send('bob', 'x'), { name: 'ClosedError' });
  });
}

test('a token function is called before the login', async () => {
  const user = uniqueUser('rotating');
  let calls = 0;
  const c = await connect({ url: broker.url, token: async () => (calls++, mintToken(user)), deviceId: 'd' });
  assert.equal(calls, 1);
  c.close();
});

test('a second connection with the same device id replaces the first, which stops', async () => {
  const user = uniqueUser('twin');
  const first = await connect({ url: broker.url, token: mintToken(user), deviceId: 'phone' });
  const replaced = waitFor(first, 'state', (s) => s.state === 'closed');
  const second = await connect({ url: broker.url, token: mintToken(user), deviceId: 'phone' });
  const s = await replaced;
  assert.equal(s.error.code, Code.SESSION_REPLACED);
  assert.equal(second.state, 'online');
  second.close();
});

test('logout: GoAway(LOGGED_OUT), closed, later sends refused', async () => {
  const c = await connect({ url: broker.url, token: mintToken(uniqueUser('leaver')), deviceId: 'd' });
  const goaway = waitFor(c, 'goaway');
  await within(c.logout());
  assert.equal((await goaway).codeName, 'LOGGED_OUT');
  assert.equal(c.state, 'closed');
  await assert.rejects(c.send('x', 'y'), { name: 'ClosedError' });
});
