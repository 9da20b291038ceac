// Encoding of client frames and verified decoding of server frames. A frame here is one
// FlatBuffers `Frame` without any length prefix: the TCP transport adds and strips the u32 LE
// prefix, a WebSocket binary message carries exactly one frame.

import { Builder, ByteBuffer } from 'flatbuffers';

import { Ack } from './generated/ringpost/wire/ack.js';
import { Body } from './generated/ringpost/wire/body.js';
import { Deliver } from './generated/ringpost/wire/deliver.js';
import { EntryKind } from './generated/ringpost/wire/entry-kind.js';
import { Error as ErrorFrame } from './generated/ringpost/wire/error.js';
import { Frame } from './generated/ringpost/wire/frame.js';
import { GoAway } from './generated/ringpost/wire/go-away.js';
import { Login } from './generated/ringpost/wire/login.js';
import { LoginOk } from './generated/ringpost/wire/login-ok.js';
import { Logout } from './generated/ringpost/wire/logout.js';
import { Ping } from './generated/ringpost/wire/ping.js';
import { Pong } from './generated/ringpost/wire/pong.js';
import { Send } from './generated/ringpost/wire/send.js';
import { SendAck } from './generated/ringpost/wire/send-ack.js';
import { ProtocolError } from './errors.js';
import { type FieldKind, verifyFrame } from './verify.js';

export { Body };

/** Client → server messages. */
export type ClientMsg =
  | { type: 'Login'; token: string; deviceId: string; lastSeq: number }
  | { type: 'Send'; clientMsgId: bigint; toUser: string; body: Uint8Array }
  | { type: 'Ack'; upToSeq: number }
  | { type: 'Ping'; nonce: bigint }
  | { type: 'Logout' };

/** Server → client messages. `Unknown` is a frame type newer than this build (ignored). */
export type ServerMsg =
  | {
      type: 'LoginOk';
      userId: string;
      shard: number;
      headSeq: number;
      heartbeatMs: number;
      oldestSeq: number;
      gap: boolean;
    }
  | { type: 'SendAck'; clientMsgId: bigint; status: number }
  | { type: 'Deliver'; seq: number; fromUser: string; clientMsgId: bigint; sentAtMs: number; body: Uint8Array }
  | { type: 'Pong'; nonce: bigint }
  | { type: 'Error'; code: number; message: string }
  | { type: 'GoAway'; code: number; reason: string }
  | { type: 'Unknown'; tag: number };

/** Field slots of each server body table, in schema order (schema/ringpost.fbs). */
const SERVER_BODIES: Readonly<Record<number, readonly FieldKind[]>> = {
  [Body.LoginOk]: ['string', 2, 8, 4, 8, 1],
  [Body.SendAck]: [8, 2],
  [Body.Deliver]: [8, 'string', 8, 8, 'bytes'],
  [Body.Pong]: [8],
  [Body.Error]: [2, 'string'],
  [Body.GoAway]: [2, 'string'],
};

/** Client body tags: a server sending one of these is a protocol error. */
const CLIENT_TAGS: ReadonlySet<number> = new Set([Body.Login, Body.Send, Body.Ack, Body.Ping, Body.Logout]);

/** Converts a u64 that counts something (seq, ms) to a number; beyond 2^53 is a protocol error. */
function count(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError(`${what} ${v} exceeds 2^53`);
  return Number(v);
}

const U64_MAX = (1n << 64n) - 1n;

function u64(v: number | bigint, what: string): bigint {
  const b = BigInt(v);
  if (b < 0n || b > U64_MAX) throw new RangeError(`${what} ${v} is not a u64`);
  return b;
}

/** Encodes one client frame (no length prefix). */
export function encodeClient(msg: ClientMsg): Uint8Array {
  const b = new Builder(64 + (msg.type === 'Send' ? msg.body.length + msg.toUser.length * 3 : 0));
  let tag: Body;
  let body: number;
  switch (msg.type) {
    case 'Login': {
      const token = b.createString(msg.token);
      const device = b.createString(msg.deviceId);
      body = Login.createLogin(b, token, device, u64(msg.lastSeq, 'lastSeq'));
      tag = Body.Login;
      break;
    }
    case 'Send': {
      const to = b.createString(msg.toUser);
      const bytes = Send.createBodyVector(b, msg.body);
      body = Send.createSend(b, u64(msg.clientMsgId, 'clientMsgId'), to, bytes);
      tag = Body.Send;
      break;
    }
    case 'Ack':
      body = Ack.createAck(b, u64(msg.upToSeq, 'upToSeq'));
      tag = Body.Ack;
      break;
    case 'Ping':
      body = Ping.createPing(b, u64(msg.nonce, 'nonce'));
      tag = Body.Ping;
      break;
    case 'Logout':
      body = Logout.createLogout(b);
      tag = Body.Logout;
      break;
  }
  b.finish(Frame.createFrame(b, tag, body));
  return b.asUint8Array();
}

/**
 * Encodes one server frame (no length prefix). The client never sends these; tests and tools
 * use it to play a broker's part.
 */
export function encodeServer(msg: Exclude<ServerMsg, { type: 'Unknown' }>): Uint8Array {
  const b = new Builder(64 + (msg.type === 'Deliver' ? msg.body.length : 0));
  let tag: Body;
  let body: number;
  switch (msg.type) {
    case 'LoginOk': {
      const user = b.createString(msg.userId);
      body = LoginOk.createLoginOk(b, user, msg.shard, u64(msg.headSeq, 'headSeq'), msg.heartbeatMs,
        u64(msg.oldestSeq, 'oldestSeq'), msg.gap);
      tag = Body.LoginOk;
      break;
    }
    case 'SendAck':
      body = SendAck.createSendAck(b, u64(msg.clientMsgId, 'clientMsgId'), msg.status);
      tag = Body.SendAck;
      break;
    case 'Deliver': {
      const from = b.createString(msg.fromUser);
      const bytes = Deliver.createBodyVector(b, msg.body);
      body = Deliver.createDeliver(b, u64(msg.seq, 'seq'), from, u64(msg.clientMsgId, 'clientMsgId'),
        u64(msg.sentAtMs, 'sentAtMs'), bytes, 0, 0n, EntryKind.Message, false, 0, 0);
      tag = Body.Deliver;
      break;
    }
    case 'Pong':
      body = Pong.createPong(b, u64(msg.nonce, 'nonce'));
      tag = Body.Pong;
      break;
    case 'Error': {
      const m = b.createString(msg.message);
      body = ErrorFrame.createError(b, msg.code, m);
      tag = Body.Error;
      break;
    }
    case 'GoAway': {
      const r = b.createString(msg.reason);
      body = GoAway.createGoAway(b, msg.code, r);
      tag = Body.GoAway;
      break;
    }
  }
  b.finish(Frame.createFrame(b, tag, body));
  return b.asUint8Array();
}

/** Decodes one server frame (no length prefix); throws ProtocolError for anything invalid. */
export function decodeServer(bytes: Uint8Array): ServerMsg {
  const tag = verifyFrame(bytes, SERVER_BODIES);
  if (tag === Body.NONE) throw new ProtocolError('malformed frame: missing frame body');
  if (CLIENT_TAGS.has(tag)) throw new ProtocolError(`unexpected frame type ${Body[tag]} from the server`);
  if (SERVER_BODIES[tag] === undefined) return { type: 'Unknown', tag };
  const frame = Frame.getRootAsFrame(new ByteBuffer(bytes));
  switch (tag) {
    case Body.LoginOk: {
      const m = frame.body(new LoginOk()) as LoginOk;
      return {
        type: 'LoginOk',
        userId: m.userId() ?? '',
        shard: m.shard(),
        headSeq: count(m.headSeq(), 'head_seq'),
        heartbeatMs: m.heartbeatMs(),
        oldestSeq: count(m.oldestSeq(), 'oldest_seq'),
        gap: m.gap(),
      };
    }
    case Body.SendAck: {
      const m = frame.body(new SendAck()) as SendAck;
      return { type: 'SendAck', clientMsgId: m.clientMsgId(), status: m.status() };
    }
    case Body.Deliver: {
      const m = frame.body(new Deliver()) as Deliver;
      return {
        type: 'Deliver',
        seq: count(m.seq(), 'seq'),
        fromUser: m.fromUser() ?? '',
        clientMsgId: m.clientMsgId(),
        sentAtMs: count(m.sentAtMs(), 'sent_at_ms'),
        // A copy: the frame's buffer may be reused by the transport.
        body: (m.bodyArray() ?? new Uint8Array(0)).slice(),
      };
    }
    case Body.Pong: {
      const m = frame.body(new Pong()) as Pong;
      return { type: 'Pong', nonce: m.nonce() };
    }
    case Body.Error: {
      const m = frame.body(new ErrorFrame()) as ErrorFrame;
      return { type: 'Error', code: m.code(), message: m.message() ?? '' };
    }
    case Body.GoAway: {
      const m = frame.body(new GoAway()) as GoAway;
      return { type: 'GoAway', code: m.code(), reason: m.reason() ?? '' };
    }
    default:
      return { type: 'Unknown', tag };
  }
}
