// Backoff bounds, alone and as the client applies them to a broker that is not there.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { Backoff, ConnectionError, createClient } from '../dist/index.js';
import { mintToken, waitFor } from './support/broker.mjs';

test('delays double from initial up to max, each in [d/2, d]', () => {
  for (const r of [0, 0.5, 0.999999]) {
    const b = new Backoff({ initialMs: 100, maxMs: 1000 }, () => r);
    const got = Array.from({ length: 7 }, () => b.next());
    [100, 200, 400, 800, 1000, 1000, 1000].forEach((hi, i) => {
      assert.ok(got[i] >= hi / 2 && got[i] <= hi, `delay ${i} = ${got[i]} not in [${hi / 2}, ${hi}]`);
      assert.equal(got[i], hi / 2 + (r * hi) / 2);
    });
    b.reset();
    assert.ok(b.next() <= 100);
  }
  assert.throws(() => new Backoff({ initialMs: 0 }), RangeError);
  assert.throws(() => new Backoff({ initialMs: 500, maxMs: 100 }), RangeError);
});

test('a client retries a refused connection with growing, bounded delays until closed', async () => {
  // A port with nothing listening: bind one, note it, close it.
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const port = srv.address().port;
  await new Promise((r) => srv.close(r));

  const client = createClient({ url: `tcp://127.0.0.1:${port}`, token: mintToken('nobody'), backoff: { initialMs: 20, maxMs: 80 } });
  const retries = [];
  const fifth = new Promise((res) => client.on('retry', (r) => {
    retries.push(r);
    if (retries.length === 5) res();
  }));
  const connecting = client.connect();
  await fifth;
  assert.equal(client.state, 'connecting');
  retries.forEach((r, i) => {
    const hi = Math.min(20 * 2 ** i, 80);
    assert.equal(r.attempt, i + 1);
    assert.ok(r.delayMs >= hi / 2 && r.delayMs <= hi, `retry ${i + 1}: ${r.delayMs} not in [${hi / 2}, ${hi}]`);
    assert.ok(r.error instanceof ConnectionError, String(r.error));
  });
  const closed = waitFor(client, 'state', (s) => s.state === 'closed');
  client.close();
  await closed;
  await assert.rejects(connecting, { name: 'ClosedError' });
});
