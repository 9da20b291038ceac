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
import { GroupAdd } from './generated/ringpost/wire/group-add.js';
import { GroupCreate } from './generated/ringpost/wire/group-create.js';
import { GroupInfo } from './generated/ringpost/wire/group-info.js';
import { GroupLeave } from './generated/ringpost/wire/group-leave.js';
import { GroupList } from './generated/ringpost/wire/group-list.js';
import { GroupMember } from './generated/ringpost/wire/group-member.js';
import { GroupRemove } from './generated/ringpost/wire/group-remove.js';
import { GroupReply } from './generated/ringpost/wire/group-reply.js';
import { GroupSend } from './generated/ringpost/wire/group-send.js';
import { Login } from './generated/ringpost/wire/login.js';
import { LoginOk } from './generated/ringpost/wire/login-ok.js';
import { Logout } from './generated/ringpost/wire/logout.js';
import { Ping } from './generated/ringpost/wire/ping.js';
import { Pong } from './generated/ringpost/wire/pong.js';
import { Send } from './generated/ringpost/wire/send.js';
import { SendAck } from './generated/ringpost/wire/send-ack.js';
import { ProtocolError } from './errors.js';
import { type FieldKind, verifyFrame } from './verify.js';

export { Body, EntryKind };

/** Client → server messages. */
export type ClientMsg =
  | { type: 'Login'; token: string; deviceId: string; lastSeq: number }
  | { type: 'Send'; clientMsgId: bigint; toUser: string; body: Uint8Array }
  | { type: 'Ack'; upToSeq: number }
  | { type: 'Ping'; nonce: bigint }
  | { type: 'Logout' }
  | { type: 'GroupCreate' | 'GroupAdd' | 'GroupRemove'; requestId: bigint; groupId: string; members: readonly string[] }
  | { type: 'GroupLeave'; requestId: bigint; groupId: string }
  | { type: 'GroupList'; requestId: bigint }
  | { type: 'GroupInfo'; requestId: bigint; groupId: string; after: string; limit: number }
  | { type: 'GroupSend'; clientMsgId: bigint; groupId: string; body: Uint8Array };

/** One member in a GroupReply to GroupInfo. */
export interface GroupMemberInfo {
  userId: string;
  admin: boolean;
}

/** A Deliver frame: one entry of the user's stream. */
export interface DeliverMsg {
  type: 'Deliver';
  seq: number;
  /** The sender (messages) or who made the change (group events). */
  fromUser: string;
  clientMsgId: bigint;
  sentAtMs: number;
  body: Uint8Array;
  /** Group entries: the group ("" for 1:1) and the entry's place in the group's order. */
  groupId: string;
  groupSeq: number;
  kind: EntryKind;
  /** The user sent this message (from this device or another one). */
  outgoing: boolean;
  /** Outgoing 1:1 messages: the recipient. */
  toUser: string;
  /** Group events: the users created with, added, removed, or who left. */
  members: string[];
}

/** A GroupReply frame: the answer to a group operation. */
export interface GroupReplyMsg {
  type: 'GroupReply';
  requestId: bigint;
  status: number;
  groupId: string;
  groupSeq: number;
  groups: string[];
  members: GroupMemberInfo[];
  nextAfter: string;
  memberCount: number;
  message: string;
}

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
  | {
      type: 'SendAck';
      clientMsgId: bigint;
      status: number;
      /**
       * Own-send sync: the seq of this send's copy in the sender's own stream, which the broker
       * does not send to this connection; 0 when none is skipped.
       */
      ownSeq: number;
    }
  | DeliverMsg
  | GroupReplyMsg
  | { type: 'Pong'; nonce: bigint }
  | { type: 'Error'; code: number; message: string }
  | { type: 'GoAway'; code: number; reason: string }
  | { type: 'Unknown'; tag: number };

/** Field slots of each server body table, in schema order (schema/ringpost.fbs). */
const SERVER_BODIES: Readonly<Record<number, readonly FieldKind[]>> = {
  [Body.LoginOk]: ['string', 2, 8, 4, 8, 1],
  [Body.SendAck]: [8, 2, 8],
  [Body.Deliver]: [8, 'string', 8, 8, 'bytes', 'string', 8, 1, 1, 'string', 'strings'],
  [Body.GroupReply]: [8, 2, 'string', 8, 'strings', { tables: ['string', 1] }, 'string', 4, 'string'],
  [Body.Pong]: [8],
  [Body.Error]: [2, 'string'],
  [Body.GoAway]: [2, 'string'],
};

/** Client body tags: a server sending one of these is a protocol error. */
const CLIENT_TAGS: ReadonlySet<number> = new Set([
  Body.Login, Body.Send, Body.Ack, Body.Ping, Body.Logout, Body.GroupCreate, Body.GroupAdd, Body.GroupRemove,
  Body.GroupLeave, Body.GroupList, Body.GroupInfo, Body.GroupSend,
]);

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

function stringVector(b: Builder, items: readonly string[]): number {
  const offsets = items.map((m) => b.createString(m));
  return GroupCreate.createMembersVector(b, offsets);
}

/** A first guess at the frame's size (the builder grows if it is short). */
function sizeHint(msg: ClientMsg): number {
  switch (msg.type) {
    case 'Send':
      return msg.body.length + msg.toUser.length * 3;
    case 'GroupSend':
      return msg.body.length + msg.groupId.length * 3;
    case 'GroupCreate':
    case 'GroupAdd':
    case 'GroupRemove':
      return msg.groupId.length * 3 + msg.members.reduce((n, m) => n + 8 + m.length * 3, 0);
    default:
      return 0;
  }
}

/** Encodes one client frame (no length prefix). */
export function encodeClient(msg: ClientMsg): Uint8Array {
  const b = new Builder(64 + sizeHint(msg));
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
    case 'GroupCreate':
    case 'GroupAdd':
    case 'GroupRemove': {
      const group = b.createString(msg.groupId);
      const members = stringVector(b, msg.members);
      const id = u64(msg.requestId, 'requestId');
      if (msg.type === 'GroupCreate') {
        body = GroupCreate.createGroupCreate(b, id, group, members);
        tag = Body.GroupCreate;
      } else if (msg.type === 'GroupAdd') {
        body = GroupAdd.createGroupAdd(b, id, group, members);
        tag = Body.GroupAdd;
      } else {
        body = GroupRemove.createGroupRemove(b, id, group, members);
        tag = Body.GroupRemove;
      }
      break;
    }
    case 'GroupLeave': {
      const group = b.createString(msg.groupId);
      body = GroupLeave.createGroupLeave(b, u64(msg.requestId, 'requestId'), group);
      tag = Body.GroupLeave;
      break;
    }
    case 'GroupList':
      body = GroupList.createGroupList(b, u64(msg.requestId, 'requestId'));
      tag = Body.GroupList;
      break;
    case 'GroupInfo': {
      const group = b.createString(msg.groupId);
      const after = b.createString(msg.after);
      if (!Number.isInteger(msg.limit) || msg.limit < 0 || msg.limit > 0xffffffff) throw new RangeError(`limit ${msg.limit} is not a u32`);
      body = GroupInfo.createGroupInfo(b, u64(msg.requestId, 'requestId'), group, after, msg.limit);
      tag = Body.GroupInfo;
      break;
    }
    case 'GroupSend': {
      const group = b.createString(msg.groupId);
      const bytes = GroupSend.createBodyVector(b, msg.body);
      body = GroupSend.createGroupSend(b, u64(msg.clientMsgId, 'clientMsgId'), group, bytes);
      tag = Body.GroupSend;
      break;
    }
  }
  b.finish(Frame.createFrame(b, tag, body));
  return b.asUint8Array();
}

/**
 * A server message as encodeServer takes it: Deliver's group fields may be left out (1:1
 * message), and SendAck's ownSeq (0).
 */
export type ServerInput =
  | Exclude<ServerMsg, { type: 'Unknown' } | { type: 'SendAck' } | DeliverMsg | GroupReplyMsg>
  | (Omit<Extract<ServerMsg, { type: 'SendAck' }>, 'ownSeq'> & { ownSeq?: number })
  | (Pick<DeliverMsg, 'type' | 'seq' | 'fromUser' | 'clientMsgId' | 'sentAtMs' | 'body'> & Partial<DeliverMsg>)
  | (Pick<GroupReplyMsg, 'type' | 'requestId' | 'status'> & Partial<GroupReplyMsg>);

/**
 * Encodes one server frame (no length prefix). The client never sends these; tests and tools
 * use it to play a broker's part.
 */
export function encodeServer(msg: ServerInput): Uint8Array {
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
      body = SendAck.createSendAck(b, u64(msg.clientMsgId, 'clientMsgId'), msg.status, u64(msg.ownSeq ?? 0, 'ownSeq'));
      tag = Body.SendAck;
      break;
    case 'Deliver': {
      const from = b.createString(msg.fromUser);
      const bytes = Deliver.createBodyVector(b, msg.body);
      const group = msg.groupId ? b.createString(msg.groupId) : 0;
      const to = msg.toUser ? b.createString(msg.toUser) : 0;
      const members = msg.members?.length ? stringVector(b, msg.members) : 0;
      body = Deliver.createDeliver(b, u64(msg.seq, 'seq'), from, u64(msg.clientMsgId, 'clientMsgId'),
        u64(msg.sentAtMs, 'sentAtMs'), bytes, group, u64(msg.groupSeq ?? 0, 'groupSeq'), msg.kind ?? EntryKind.Message,
        msg.outgoing ?? false, to, members);
      tag = Body.Deliver;
      break;
    }
    case 'GroupReply': {
      const group = b.createString(msg.groupId ?? '');
      const groups = msg.groups?.length ? stringVector(b, msg.groups) : 0;
      const memberOffsets = (msg.members ?? []).map((m) => GroupMember.createGroupMember(b, b.createString(m.userId), m.admin));
      const members = memberOffsets.length ? GroupReply.createMembersVector(b, memberOffsets) : 0;
      const next = b.createString(msg.nextAfter ?? '');
      const text = b.createString(msg.message ?? '');
      body = GroupReply.createGroupReply(b, u64(msg.requestId, 'requestId'), msg.status, group,
        u64(msg.groupSeq ?? 0, 'groupSeq'), groups, members, next, msg.memberCount ?? 0, text);
      tag = Body.GroupReply;
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
      return { type: 'SendAck', clientMsgId: m.clientMsgId(), status: m.status(), ownSeq: count(m.ownSeq(), 'own_seq') };
    }
    case Body.Deliver: {
      const m = frame.body(new Deliver()) as Deliver;
      const members: string[] = [];
      for (let i = 0; i < m.membersLength(); i++) members.push(m.members(i) ?? '');
      return {
        type: 'Deliver',
        seq: count(m.seq(), 'seq'),
        fromUser: m.fromUser() ?? '',
        clientMsgId: m.clientMsgId(),
        sentAtMs: count(m.sentAtMs(), 'sent_at_ms'),
        // A copy: the frame's buffer may be reused by the transport.
        body: (m.bodyArray() ?? new Uint8Array(0)).slice(),
        groupId: m.groupId() ?? '',
        groupSeq: count(m.groupSeq(), 'group_seq'),
        kind: m.kind(),
        outgoing: m.outgoing(),
        toUser: m.toUser() ?? '',
        members,
      };
    }
    case Body.GroupReply: {
      const m = frame.body(new GroupReply()) as GroupReply;
      const groups: string[] = [];
      for (let i = 0; i < m.groupsLength(); i++) groups.push(m.groups(i) ?? '');
      const members: GroupMemberInfo[] = [];
      for (let i = 0; i < m.membersLength(); i++) {
        const gm = m.members(i);
        members.push({ userId: gm?.userId() ?? '', admin: gm?.admin() ?? false });
      }
      return {
        type: 'GroupReply',
        requestId: m.requestId(),
        status: m.status(),
        groupId: m.groupId() ?? '',
        groupSeq: count(m.groupSeq(), 'group_seq'),
        groups,
        members,
        nextAfter: m.nextAfter() ?? '',
        memberCount: m.memberCount(),
        message: m.message() ?? '',
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
