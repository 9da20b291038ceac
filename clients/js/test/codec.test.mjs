// In-process: frame encoding/decoding, the bounds verifier on hostile bytes, TCP framing.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Code, EntryKind, ProtocolError, codeName, decodeServer, encodeClient, encodeServer, FrameReader } from '../dist/index.js';

const noGroup = { groupId: '', groupSeq: 0, kind: EntryKind.Message, outgoing: false, toUser: '', members: [] };

const samples = [
  { type: 'LoginOk', userId: 'alice', shard: 1, headSeq: 42, heartbeatMs: 30000, oldestSeq: 3, gap: true },
  { type: 'SendAck', clientMsgId: (1n << 64n) - 1n, status: Code.INBOX_FULL, ownSeq: 0 },
  { type: 'SendAck', clientMsgId: 7n, status: Code.OK, ownSeq: 2 ** 53 - 1 },
  { type: 'Deliver', seq: 7, fromUser: 'bob', clientMsgId: 99n, sentAtMs: 1700000000123, body: new Uint8Array([0, 1, 255]), ...noGroup },
  { type: 'Deliver', seq: 8, fromUser: 'me', clientMsgId: 5n, sentAtMs: 1, body: new Uint8Array([104, 105]), ...noGroup, outgoing: true, toUser: 'bob' },
  {
    type: 'Deliver', seq: 9, fromUser: 'alice', clientMsgId: 0n, sentAtMs: 2, body: new Uint8Array(0), groupId: 'team',
    groupSeq: 4, kind: EntryKind.MembersAdded, outgoing: false, toUser: '', members: ['carol', 'dave'],
  },
  {
    type: 'GroupReply', requestId: 12n, status: Code.OK, groupId: 'team', groupSeq: 0, groups: [],
    members: [{ userId: 'alice', admin: true }, { userId: 'bob', admin: false }], nextAfter: 'bob', memberCount: 7, message: '',
  },
  {
    type: 'GroupReply', requestId: 13n, status: Code.GROUP_EXISTS, groupId: 'team', groupSeq: 0, groups: ['a', 'b'],
    members: [], nextAfter: '', memberCount: 0, message: 'group "team" already exists',
  },
  { type: 'Pong', nonce: 5n },
  { type: 'Error', code: Code.AUTH_FAILED, message: 'bad signature' },
  { type: 'GoAway', code: Code.SHUTDOWN, reason: 'broker is shutting down' },
];

test('every server frame survives encode → decode', () => {
  for (const msg of samples) assert.deepEqual(decodeServer(encodeServer(msg)), msg);
});

test('encodeServer fills in what a 1:1 Deliver leaves out, and a SendAck\'s ownSeq', () => {
  const m = { type: 'Deliver', seq: 1, fromUser: 'a', clientMsgId: 1n, sentAtMs: 3, body: new Uint8Array([1]) };
  assert.deepEqual(decodeServer(encodeServer(m)), { ...m, ...noGroup });
  const ack = { type: 'SendAck', clientMsgId: 9n, status: Code.OK };
  assert.deepEqual(decodeServer(encodeServer(ack)), { ...ack, ownSeq: 0 });
});

test('every group request encodes (the broker decodes them in its own tests)', () => {
  const frames = [
    { type: 'GroupCreate', requestId: 1n, groupId: 'g', members: ['a', 'b'] },
    { type: 'GroupAdd', requestId: 2n, groupId: 'g', members: ['c'] },
    { type: 'GroupRemove', requestId: 3n, groupId: 'g', members: [] },
    { type: 'GroupLeave', requestId: 4n, groupId: 'g' },
    { type: 'GroupList', requestId: 5n },
    { type: 'GroupInfo', requestId: 6n, groupId: 'g', after: 'b', limit: 10 },
    { type: 'GroupSend', clientMsgId: 7n, groupId: 'g', body: new Uint8Array([1, 2]) },
  ].map((m) => encodeClient(m));
  // Each is a client frame: the server-side decoder refuses it as one.
  for (const f of frames) assert.throws(() => decodeServer(f), /unexpected frame type Group/);
  assert.throws(() => encodeClient({ type: 'GroupInfo', requestId: 1n, groupId: 'g', after: '', limit: -1 }), RangeError);
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

for (const [name, sample] of [['Deliver', samples[2]], ['group Deliver', samples[4]], ['GroupReply', samples[5]]]) test(`truncated and bit-flipped ${name} frames never decode into garbage silently`, () => {
  const deliver = encodeServer(sample);
  // A cut either fails or only removed trailing alignment padding (then the frame is intact).
  let cutRefused = 0;
  for (let n = 0; n < deliver.length; n++) {
    let m;
    try {
      m = decodeServer(deliver.subarray(0, n));
    } catch (e) {
      assert.ok(e instanceof ProtocolError, `truncated to ${n}: ${e}`);
      cutRefused++;
      continue;
    }
    assert.ok(n >= deliver.length - 7, `truncated to ${n} of ${deliver.length} and still decoded`);
    assert.deepEqual(m, sample, `truncated to ${n}`);
  }
  assert.ok(cutRefused >= deliver.length - 7);
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
  const a = encodeServer(samples[7]);
  const b = encodeServer(samples[8]);
  const stream = Buffer.concat([prefix(a), Buffer.from(a), prefix(b), Buffer.from(b)]);
  const r = new FrameReader(1024);
  const out = [];
  for (const byte of stream) out.push(...r.push(Buffer.from([byte])));
  assert.deepEqual(out.map((f) => decodeServer(f)), [samples[7], samples[8]]);
  assert.throws(() => new FrameReader(1024).push(Buffer.from([0, 0, 0, 0])), /zero-length/);
  assert.throws(() => new FrameReader(1024).push(Buffer.from([1, 4, 0, 0])), /1025 bytes exceeds the limit of 1024/);
});

function prefix(frame) {
  const p = Buffer.alloc(4);
  p.writeUInt32LE(frame.length, 0);
  return p;
}
