// In-process: frame encoding/decoding, the bounds verifier on hostile bytes, TCP framing.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Code, ProtocolError, codeName, decodeServer, encodeClient, encodeServer, FrameReader } from '../dist/index.js';

const samples = [
  { type: 'LoginOk', userId: 'alice', shard: 1, headSeq: 42, heartbeatMs: 30000, oldestSeq: 3, gap: true },
  { type: 'SendAck', clientMsgId: (1n << 64n) - 1n, status: Code.INBOX_FULL },
  { type: 'Deliver', seq: 7, fromUser: 'bob', clientMsgId: 99n, sentAtMs: 1700000000123, body: new Uint8Array([0, 1, 255]) },
  { type: 'Pong', nonce: 5n },
  { type: 'Error', code: Code.AUTH_FAILED, message: 'bad signature' },
  { type: 'GoAway', code: Code.SHUTDOWN, reason: 'broker is shutting down' },
];

test('every server frame survives encode → decode', () => {
  for (const msg of samples) assert.deepEqual(decodeServer(encodeServer(msg)), msg);
});

test('code names come from the schema', () => {
  assert.equal(codeName(Code.TOKEN_EXPIRED), 'TOKEN_EXPIRED');
  assert.equal(codeName(101), 'TOKEN_EXPIRED');
  assert.equal(codeName(65000), 'UNKNOWN');
});

test('a client frame from the server is a protocol error', () => {
  const login = encodeClient({ type: 'Login', token: 't', deviceId: 'd', lastSeq: 0 });
  assert.throws(() => decodeServer(login), (e) => e instanceof ProtocolError && /unexpected frame type Login/.test(e.message));
});

test('truncated and bit-flipped frames never decode into garbage silently', () => {
  const deliver = encodeServer(samples[2]);
  for (let n = 0; n < deliver.length; n++) {
    assert.throws(() => decodeServer(deliver.subarray(0, n)), ProtocolError, `truncated to ${n}`);
  }
  // Random flips: the decoder either refuses (ProtocolError) or returns a well-typed message;
  // any other exception (TypeError, RangeError) would be a decoder bug.
  let refused = 0;
  for (let i = 0; i < 3000; i++) {
    const b = Uint8Array.from(deliver);
    b[i % b.length] ^= 1 + (i * 37) % 255;
    try {
      const m = decodeServer(b);
      assert.ok(typeof m.type === 'string');
    } catch (e) {
      assert.ok(e instanceof ProtocolError, `flip ${i}: ${e}`);
      refused++;
    }
  }
  assert.ok(refused > 0);
});

test('random bytes are refused', () => {
  let seed = 1;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (let i = 0; i < 2000; i++) {
    const b = Uint8Array.from({ length: 1 + Math.floor(rand() * 64) }, () => Math.floor(rand() * 256));
    try {
      decodeServer(b);
    } catch (e) {
      assert.ok(e instanceof ProtocolError, `${e}`);
    }
  }
});

test('FrameReader splits a stream and rejects bad prefixes at once', () => {
  const a = encodeServer(samples[3]);
  const b = encodeServer(samples[4]);
  const stream = Buffer.concat([prefix(a), Buffer.from(a), prefix(b), Buffer.from(b)]);
  const r = new FrameReader(1024);
  const out = [];
  for (const byte of stream) out.push(...r.push(Buffer.from([byte])));
  assert.deepEqual(out.map((f) => decodeServer(f)), [samples[3], samples[4]]);
  assert.throws(() => new FrameReader(1024).push(Buffer.from([0, 0, 0, 0])), /zero-length/);
  assert.throws(() => new FrameReader(1024).push(Buffer.from([1, 4, 0, 0])), /1025 bytes exceeds the limit of 1024/);
});

function prefix(frame) {
  const p = Buffer.alloc(4);
  p.writeUInt32LE(frame.length, 0);
  return p;
}
