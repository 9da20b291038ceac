// The ringpost client: one logical session over a sequence of connections.
//
//   connect() ──► dial ──► Login{token, device_id, last_seq = last processed seq} ──► LoginOk
//        ▲                                                                   │ online: re-send
//        │ backoff (equal jitter)                                            ▼ unacked sends
//   reconnecting ◄── connection lost / transient refusal ◄── Deliver/SendAck/Pong, heartbeats
//
// Every Send and GroupSend stays pending until its SendAck; a connection lost in between
// re-sends it with the same client_msg_id after the next login (the broker's dedup answers
// with the original SendAck and does not deliver twice). Deliveries carry a per-user seq; the
// client resumes after the last seq the application *processed* (autoAck: its listeners
// returned; otherwise what it passed to ack()), and drops replayed seqs it already handed out
// on this instance.
//
// Own-send sync: the broker puts every message the user sends into the user's own stream too
// (`outgoing`), on every device. A 1:1 send's copy is not sent to the connection that made the
// send: its SendAck names the copy's seq (`own_seq`, SendResult.ownSeq) and the stream, as this
// connection sees it, has a hole there. Nothing here needs seqs to be contiguous; the client
// never moves its resume point over a hole on the SendAck alone (the copy may not be durable
// yet), only with the next entry after it, and the broker counts an ack of the entry before a
// hole as covering it. A login that resumes from before the hole gets the copy replayed; the
// client remembers the client_msg_ids it sent (across its reconnects), flags such an entry
// `echo` — as it does the sender's copy of a group message — and hands it to 'echo' listeners
// and, unless `deliverEchoes`, not to 'deliver' ones, so an app that shows its sends at once
// sees each message once. Group operations are requests answered by a GroupReply with their
// request_id; the membership change itself also arrives as a stream entry, in either order.

import { Backoff, type BackoffOptions } from './backoff.js';
import {
  type ClientMsg, type DeliverMsg, EntryKind, type GroupMemberInfo, type GroupReplyMsg, type ServerMsg, decodeServer,
  encodeClient,
} from './codec.js';
import { Code, codeName, isPermanent } from './codes.js';
import { Emitter } from './emitter.js';
import { ClosedError, ConnectionError, GroupError, ProtocolError, RingpostError, SendError } from './errors.js';
import type { Dialer, Transport } from './transport.js';

export type State = 'idle' | 'connecting' | 'online' | 'reconnecting' | 'closed';

export interface ClientOptions {
  /** `tcp://host:port` (Node) or `ws(s)://host:port/ws`. Not needed when `dial` is given. */
  url?: string;
  /** The login token (JWT HS256 minted by the app backend), or a function called before every login. */
  token: string | (() => string | Promise<string>);
  /** Stable per-device identifier (at most 64 bytes). A second login with the same one replaces this one. */
  deviceId?: string;
  /** Highest seq this device already processed (persisted by the application); 0: the broker's stored cursor for this device. */
  lastSeq?: number;
  /** Count a delivery as processed (and ack it) once its 'deliver' listeners returned or their promises settled. Default true. */
  autoAck?: boolean;
  /**
   * Also hand echoes (the stream entries of this client's own sends, `echo: true`) to 'deliver'
   * listeners, for apps that rebuild their view from the stream alone. Default false: echoes go
   * only to 'echo' listeners, and each message reaches 'deliver' once. Note that the copy of a
   * 1:1 send is not sent to the connection that made it (only replayed after a reconnect that
   * resumes before it): such apps place it with SendResult.ownSeq.
   */
  deliverEchoes?: boolean;
  /** Reconnect after transient failures. Default true. */
  reconnect?: boolean;
  /** Reconnect delays. Default 100 ms doubling up to 30 s, equal jitter. */
  backoff?: BackoffOptions;
  /** Limit for connect plus Login → LoginOk, ms. Default 10 000. */
  loginTimeoutMs?: number;
  /** Ping at least this often (ms); the broker's LoginOk.heartbeat_ms is used when it is smaller. */
  heartbeatMs?: number;
  /** A connection that answers nothing for this long after a Ping is dropped and reconnected, ms. Default: the heartbeat interval. */
  pongTimeoutMs?: number;
  /** Largest frame accepted from the server, bytes. Default 16 MiB. */
  maxFrame?: number;
  /** Largest Send frame this client writes (the broker's limits.max_frame), bytes. Default 64 KiB. */
  maxSendFrame?: number;
  /** Opens connections; overrides `url`. */
  dial?: Dialer;
  /** Source of randomness for backoff jitter and client_msg_ids' start (tests). */
  random?: () => number;
}

/** What LoginOk said, plus where this login resumed from. */
export interface LoginInfo {
  userId: string;
  shard: number;
  headSeq: number;
  heartbeatMs: number;
  oldestSeq: number;
  /** Part of what this device asked for was already removed by retention. */
  gap: boolean;
  /** The last_seq this login sent. */
  resumedFrom: number;
  /** The broker's newest seq is below what this device had processed (its data was reset); seqs restart from headSeq. */
  reset: boolean;
}

/**
 * One entry of the user's stream: a message to the user (1:1 or in a group), a message the
 * user sent (`outgoing`, own-send sync), or a group event (`kind` other than Message).
 */
export class Delivery {
  readonly seq: number;
  /** The sender (messages) or who made the change (group events). */
  readonly from: string;
  readonly clientMsgId: bigint;
  /** Broker clock (ms since the epoch) when the message was accepted. */
  readonly sentAtMs: number;
  readonly body: Uint8Array;
  /** Group entries: the group; "" for 1:1 messages. */
  readonly groupId: string;
  /** Group entries: the place in the group's own order (0 for 1:1). */
  readonly groupSeq: number;
  readonly kind: EntryKind;
  /** The user sent this message, from this device or another one. */
  readonly outgoing: boolean;
  /** Outgoing 1:1 messages: the recipient ("" otherwise). */
  readonly to: string;
  /** Group events: the users the group was created with, added, removed, or who left. */
  readonly members: readonly string[];
  /**
   * The echo of a send made by this client (outgoing, and this client sent its client_msg_id):
   * the message the app already shows, now in the stream. For a group send, the sender's copy
   * as a member; for a 1:1 send, only its copy replayed after a reconnect of this client that
   * resumed before it (the broker does not send that copy to the sending connection live; see
   * SendResult.ownSeq). Outgoing entries of sends from the user's other devices (or an earlier
   * run of this app) have `echo` false.
   */
  readonly echo: boolean;

  constructor(m: Omit<DeliverMsg, 'type'>, echo = false) {
    this.seq = m.seq;
    this.from = m.fromUser;
    this.clientMsgId = m.clientMsgId;
    this.sentAtMs = m.sentAtMs;
    this.body = m.body;
    this.groupId = m.groupId;
    this.groupSeq = m.groupSeq;
    this.kind = m.kind;
    this.outgoing = m.outgoing;
    this.to = m.toUser;
    this.members = m.members;
    this.echo = echo;
  }

  /** The body as UTF-8 text (invalid sequences become U+FFFD). */
  get text(): string {
    return new TextDecoder().decode(this.body);
  }

  /** A group message or group event. */
  get isGroup(): boolean {
    return this.groupId !== '';
  }

  /** A message (1:1 or group), not a group event. */
  get isMessage(): boolean {
    return this.kind === EntryKind.Message;
  }

  /** "Message", "GroupCreated", "MembersAdded", "MembersRemoved", "MemberLeft" (or "Unknown"). */
  get kindName(): string {
    return (EntryKind as unknown as Record<number, string | undefined>)[this.kind] ?? 'Unknown';
  }

  /** 1:1 messages: the other user of the conversation (the recipient when outgoing); "" for group entries. */
  get peer(): string {
    if (this.isGroup) return '';
    return this.outgoing ? this.to : this.from;
  }

  /**
   * Identifies the entry across re-sends and devices: messages by sender and client_msg_id
   * (`from/id`, the same key the sender can compute for what it sent), group events by group
   * and group_seq (`group#n`).
   */
  get key(): string {
    return this.isMessage ? `${this.from}/${this.clientMsgId}` : `${this.groupId}#${this.groupSeq}`;
  }
}

export interface SendResult {
  clientMsgId: bigint;
  to: string;
  /**
   * Own-send sync: the seq of this message's copy (`outgoing`) in the user's own stream, the
   * entry the user's other devices get; useful for placing the message in stream order. The
   * broker does not send that entry to this connection, so this client sees no Deliver at that
   * seq unless a reconnect resumes before it (then it comes flagged `echo`). 0 when no copy was
   * skipped: own-send sync off, a re-send answered from the broker's dedup window (after a
   * reconnect; the copy, if this client is sent it, is an echo), or the broker sent the copy as
   * usual (more than 256 of this connection's copies not yet covered by its acks). lastSeq
   * does not move over it on this answer alone; the next entry after it moves it.
   */
  ownSeq: number;
}

export interface GroupSendResult {
  clientMsgId: bigint;
  groupId: string;
}

/** What a membership change (create, add, remove, leave) resolves with. */
export interface GroupChange {
  groupId: string;
  /** The group_seq of the change (0 when nothing changed). */
  groupSeq: number;
}

/** A page of a group's members (groupInfo). */
export interface GroupPage {
  groupId: string;
  /** In user-ID order. */
  members: GroupMemberInfo[];
  /** Pass as `after` for the next page; "" on the last page. */
  nextAfter: string;
  memberCount: number;
}

export interface SendOptions {
  /** Reuse an ID (e.g. a message persisted before a reload); default: the next of this client's IDs. */
  clientMsgId?: bigint | number;
}

export interface StateChange {
  state: State;
  previous: State;
  /** Why the connection ended (reconnecting, closed), if it was not asked for. */
  error?: Error;
}

export interface RetryInfo {
  /** 1 for the first retry after a failure, counting up until a login succeeds. */
  attempt: number;
  delayMs: number;
  error: Error;
}

export interface ClientEvents {
  state: StateChange;
  login: LoginInfo;
  /** Every stream entry except echoes of this client's own sends (see deliverEchoes), in seq order. */
  deliver: Delivery;
  /**
   * The stream entry of a message this client sent (Delivery.echo), in seq order with
   * 'deliver': its copy of a group send, or a 1:1 send's copy replayed after a reconnect.
   */
  echo: Delivery;
  /** A Send or GroupSend frame was written; attempt > 1 is a re-send after a reconnect. `to` is "" for a group, `groupId` "" for 1:1. */
  sent: { clientMsgId: bigint; to: string; groupId: string; attempt: number };
  retry: RetryInfo;
  goaway: { code: number; codeName: string; reason: string };
  /** Something went wrong that the client handles itself (it reconnects); for logging. */
  error: Error;
}

interface PendingSend {
  id: bigint;
  /** 1:1: the recipient; group sends: "". */
  to: string;
  /** Group sends: the group; 1:1: "". */
  groupId: string;
  frame: Uint8Array;
  attempts: number;
  /** Place among everything queued (sends and group operations): re-sent in this order. */
  order: number;
  promise: Promise<SendResult | GroupSendResult>;
  resolve: (r: SendResult | GroupSendResult) => void;
  reject: (e: Error) => void;
}

/** A group operation waiting for its GroupReply. */
interface PendingOp {
  requestId: bigint;
  op: string;
  groupId: string;
  frame: Uint8Array;
  /** List and info change nothing: safe to ask again on the next connection. */
  readOnly: boolean;
  /** The connection it was written on (null: not yet written). */
  conn: Conn | null;
  order: number;
  resolve: (r: GroupReplyMsg) => void;
  reject: (e: Error) => void;
}

/** A delivery not yet handed out, with the seq of the entry before it (for echo processing). */
interface Held {
  d: Delivery;
  prev: number;
}

/** One connection attempt and, if it logs in, its online life. */
interface Conn {
  transport: Transport | null;
  /** Frames that arrived before `transport` was set. */
  early: Uint8Array[];
  loggedIn: boolean;
  /** Set when the connection ended; why. */
  ended: boolean;
  endError: Error | null;
  /** The broker's refusal (Error/GoAway) seen on this connection, if any. */
  refusal: RingpostError | null;
  onLogin: ((info: ServerMsg & { type: 'LoginOk' }) => void) | null;
  onEnd: (() => void) | null;
  lastTx: number;
  lastRx: number;
  pingSentAt: number;
  heartbeat: ReturnType<typeof setInterval> | null;
}

const U64_MASK = (1n << 64n) - 1n;

/** The default receive limit: generous, the broker bounds what it sends by its own limits. */
const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;
/** The broker's default limits.max_frame. */
const DEFAULT_MAX_SEND_FRAME = 64 * 1024;
/** Used when LoginOk carries no heartbeat_ms. */
const DEFAULT_HEARTBEAT_MS = 30_000;
/** How long logout() waits for GoAway(LOGGED_OUT) before closing anyway. */
const LOGOUT_WAIT_MS = 2_000;
/** How many recent client_msg_ids the client remembers to recognise its own echoes (as the Rust client). */
const ECHO_MEMORY = 4096;

/** Resolves an options URL to a Dialer; set by the entry point (index.ts for Node, browser.ts). */
export type DialerFactory = (url: string) => Dialer;

export class RingpostClient extends Emitter<ClientEvents> {
  private readonly opts: ClientOptions;
  private readonly dial: Dialer;
  private readonly backoff: Backoff;
  private _state: State = 'idle';
  private conn: Conn | null = null;
  private everOnline = false;
  private processed: number;
  private emitted: number;
  private ackSent = 0;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private processing: Promise<void> = Promise.resolve();
  private readonly pending = new Map<bigint, PendingSend>();
  private readonly ops = new Map<bigint, PendingOp>();
  private nextRequestId = 1n;
  private nextOrder = 0;
  /**
   * client_msg_ids this client sent, oldest first (bounded by ECHO_MEMORY). Kept across this
   * client's reconnects: a copy replayed after a resume from before it is still its echo.
   */
  private readonly sentIds = new Set<bigint>();
  /** Echoes skipped with autoAck off: processed once everything before them is (ack()). */
  private echoWait: { prev: number; seq: number }[] = [];
  /** Deliveries not yet given to a listener (none was registered). */
  private readonly held: Held[] = [];
  private nextId: bigint;
  private nextNonce = 1n;
  private sleepTimer: ReturnType<typeof setTimeout> | null = null;
  private wake: (() => void) | null = null;
  private running: Promise<void> | null = null;
  private firstLogin: { resolve: (i: LoginInfo) => void; reject: (e: Error) => void } | null = null;
  private loginInfo: LoginInfo | null = null;
  private closeError: Error | null = null;
  private loggingOut = false;

  constructor(opts: ClientOptions, dialerFor?: DialerFactory) {
    super();
    this.opts = opts;
    if (opts.dial) this.dial = opts.dial;
    else if (opts.url && dialerFor) this.dial = dialerFor(opts.url);
    else throw new TypeError('ringpost: give `url` (with a transport for it) or `dial`');
    const random = opts.random ?? Math.random;
    this.backoff = new Backoff(opts.backoff, random);
    this.processed = opts.lastSeq ?? 0;
    this.emitted = this.processed;
    // Random start: client_msg_ids must not repeat across devices and restarts of this user
    // within the broker's dedup window, or a new message would be taken for a resend.
    const hi = BigInt(Math.floor(random() * 2 ** 31));
    const lo = BigInt(Math.floor(random() * 2 ** 32));
    this.nextId = (hi << 32n) | lo;
  }

  get state(): State {
    return this._state;
  }

  /** Highest seq processed so far: what the next login resumes after. Persist it to resume across restarts. */
  get lastSeq(): number {
    return this.processed;
  }

  /** What the latest LoginOk said (null before the first login). */
  get login(): LoginInfo | null {
    return this.loginInfo;
  }

  /** Sends written or queued but not yet answered by a SendAck. */
  get pendingSends(): number {
    return this.pending.size;
  }

  /** A fresh client_msg_id (for applications that store a message before sending it). */
  newClientMsgId(): bigint {
    this.nextId = (this.nextId + 1n) & U64_MASK;
    return this.nextId;
  }

  /**
   * Starts the session. Resolves with the first LoginOk; rejects on a permanent refusal
   * (RingpostError: AUTH_FAILED, TOKEN_EXPIRED, ...), on close(), or — with reconnect: false —
   * on the first failure. Transient failures are retried with backoff meanwhile.
   */
  connect(): Promise<LoginInfo> {
    if (this._state === 'closed') return Promise.reject(new ClosedError('client is closed', { cause: this.closeError }));
    if (this.loginInfo && this._state === 'online') return Promise.resolve(this.loginInfo);
    const first = new Promise<LoginInfo>((resolve, reject) => {
      const prev = this.firstLogin;
      this.firstLogin = {
        resolve: (i) => {
          prev?.resolve(i);
          resolve(i);
        },
        reject: (e) => {
          prev?.reject(e);
          reject(e);
        },
      };
    });
    this.running ??= this.run();
    return first;
  }

  /**
   * Sends `body` to user `to`. Resolves when the broker's SendAck says OK (the message is in the
   * recipient's inbox), with the seq of its copy in the user's own stream (`ownSeq`, 0 when
   * none was skipped for this connection); rejects with SendError (code + name) on any other
   * status. While offline the message waits and is sent after the next login; unanswered
   * sends are re-sent after a reconnect with the same client_msg_id.
   */
  send(to: string, body: string | Uint8Array, options: SendOptions = {}): Promise<SendResult> {
    return this.enqueueSend('', to, body, options) as Promise<SendResult>;
  }

  /**
   * Sends `body` to group `groupId` (members only). Resolves on SendAck OK (the group's owner
   * stored it and fans it out to every member, the sender included); rejects with SendError
   * otherwise (NOT_A_MEMBER, GROUP_NOT_FOUND, ...). Queued and re-sent like send().
   */
  sendToGroup(groupId: string, body: string | Uint8Array, options: SendOptions = {}): Promise<GroupSendResult> {
    return this.enqueueSend(groupId, '', body, options) as Promise<GroupSendResult>;
  }

  private enqueueSend(groupId: string, to: string, body: string | Uint8Array, options: SendOptions): Promise<SendResult | GroupSendResult> {
    if (this._state === 'closed') return Promise.reject(new ClosedError('client is closed', { cause: this.closeError }));
    const id = options.clientMsgId === undefined ? this.newClientMsgId() : BigInt(options.clientMsgId);
    const existing = this.pending.get(id);
    if (existing) return existing.promise;
    const bytes = typeof body === 'string' ? new TextEncoder().encode(body) : body;
    let frame: Uint8Array;
    try {
      frame = encodeClient(groupId
        ? { type: 'GroupSend', clientMsgId: id, groupId, body: bytes }
        : { type: 'Send', clientMsgId: id, toUser: to, body: bytes });
    } catch (e) {
      return Promise.reject(e);
    }
    const limit = this.opts.maxSendFrame ?? DEFAULT_MAX_SEND_FRAME;
    if (frame.length > limit) {
      return Promise.reject(new SendError(Code.FRAME_TOO_LARGE, id, to,
        `the ${groupId ? 'GroupSend' : 'Send'} frame is ${frame.length} bytes, over maxSendFrame (${limit}); not sent`, groupId));
    }
    let resolve!: (r: SendResult | GroupSendResult) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<SendResult | GroupSendResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const p: PendingSend = { id, to, groupId, frame, attempts: 0, order: this.nextOrder++, promise, resolve, reject };
    this.pending.set(id, p);
    this.noteSent(id);
    if (this.conn?.loggedIn) this.writeSend(this.conn, p);
    return promise;
  }

  /** Remembers `id` as sent by this client, so its echo is recognised. */
  private noteSent(id: bigint): void {
    if (this.sentIds.has(id)) return;
    this.sentIds.add(id);
    if (this.sentIds.size > ECHO_MEMORY) {
      const oldest = this.sentIds.values().next().value as bigint;
      this.sentIds.delete(oldest);
    }
  }

  // ---- groups ------------------------------------------------------------------------------

  /**
   * Creates `groupId` (1..=128 bytes) with this user as its first admin and `members`.
   * Resolves with the change's group_seq on GroupReply OK; rejects with GroupError (code +
   * name: GROUP_EXISTS, GROUP_FULL, TOO_MANY_GROUPS, INVALID_GROUP, ...) otherwise.
   */
  async createGroup(groupId: string, members: readonly string[] = []): Promise<GroupChange> {
    const r = await this.groupRequest('create', groupId, (requestId) => ({ type: 'GroupCreate', requestId, groupId, members }), false);
    return { groupId: r.groupId || groupId, groupSeq: r.groupSeq };
  }

  /** Admins only: adds `members`. Rejects with GroupError (NOT_GROUP_ADMIN, ALREADY_A_MEMBER, GROUP_FULL, ...). */
  async addMembers(groupId: string, members: readonly string[]): Promise<GroupChange> {
    const r = await this.groupRequest('add', groupId, (requestId) => ({ type: 'GroupAdd', requestId, groupId, members }), false);
    return { groupId: r.groupId || groupId, groupSeq: r.groupSeq };
  }

  /** Admins only: removes `members`. Rejects with GroupError (NOT_GROUP_ADMIN, NOT_A_MEMBER, ...). */
  async removeMembers(groupId: string, members: readonly string[]): Promise<GroupChange> {
    const r = await this.groupRequest('remove', groupId, (requestId) => ({ type: 'GroupRemove', requestId, groupId, members }), false);
    return { groupId: r.groupId || groupId, groupSeq: r.groupSeq };
  }

  /** Leaves the group (any member). Rejects with GroupError (NOT_A_MEMBER, GROUP_NOT_FOUND). */
  async leaveGroup(groupId: string): Promise<GroupChange> {
    const r = await this.groupRequest('leave', groupId, (requestId) => ({ type: 'GroupLeave', requestId, groupId }), false);
    return { groupId: r.groupId || groupId, groupSeq: r.groupSeq };
  }

  /** The groups this user is a member of, in ID order. */
  async listGroups(): Promise<string[]> {
    const r = await this.groupRequest('list', '', (requestId) => ({ type: 'GroupList', requestId }), true);
    return r.groups;
  }

  /**
   * One page of a group's members (members only), in user-ID order, starting after `after`
   * ("" = from the start), at most `limit` (0 = the broker's page size, 1000).
   */
  async groupInfo(groupId: string, options: { after?: string; limit?: number } = {}): Promise<GroupPage> {
    const after = options.after ?? '';
    const limit = options.limit ?? 0;
    const r = await this.groupRequest('info', groupId, (requestId) => ({ type: 'GroupInfo', requestId, groupId, after, limit }), true);
    return { groupId: r.groupId || groupId, members: r.members, nextAfter: r.nextAfter, memberCount: r.memberCount };
  }

  /** Every member of a group: groupInfo page after page (`pageSize` per request, 0 = the broker's). */
  async groupMembers(groupId: string, options: { pageSize?: number } = {}): Promise<GroupMemberInfo[]> {
    const all: GroupMemberInfo[] = [];
    let after = '';
    for (;;) {
      const page = await this.groupInfo(groupId, { after, limit: options.pageSize ?? 0 });
      all.push(...page.members);
      if (!page.nextAfter) return all;
      after = page.nextAfter;
    }
  }

  /**
   * Queues a group request; written now when online, else after the next login. A request
   * written on a connection that is lost before its GroupReply is asked again on the next one
   * if it only reads (list, info); a change (create, add, remove, leave) is rejected with
   * ConnectionError instead, because it may or may not have been applied.
   */
  private groupRequest(op: string, groupId: string, make: (requestId: bigint) => ClientMsg, readOnly: boolean): Promise<GroupReplyMsg> {
    if (this._state === 'closed') return Promise.reject(new ClosedError('client is closed', { cause: this.closeError }));
    const requestId = this.nextRequestId++;
    let frame: Uint8Array;
    try {
      frame = encodeClient(make(requestId));
    } catch (e) {
      return Promise.reject(e);
    }
    const limit = this.opts.maxSendFrame ?? DEFAULT_MAX_SEND_FRAME;
    if (frame.length > limit) {
      return Promise.reject(new GroupError(Code.FRAME_TOO_LARGE, requestId, op, groupId,
        `the group ${op} frame is ${frame.length} bytes, over maxSendFrame (${limit}); not sent`));
    }
    return new Promise<GroupReplyMsg>((resolve, reject) => {
      const p: PendingOp = { requestId, op, groupId, frame, readOnly, conn: null, order: this.nextOrder++, resolve, reject };
      this.ops.set(requestId, p);
      if (this.conn?.loggedIn) this.writeOp(this.conn, p);
    });
  }

  private writeOp(c: Conn, p: PendingOp): void {
    p.conn = c;
    this.write(c, p.frame);
  }

  private onGroupReply(r: GroupReplyMsg): void {
    const p = this.ops.get(r.requestId);
    if (!p) return; // not ours (or already given up on)
    this.ops.delete(r.requestId);
    if (r.status === Code.OK) p.resolve(r);
    else p.reject(new GroupError(r.status, r.requestId, p.op, r.groupId || p.groupId, r.message));
  }

  /**
   * Marks every delivery with seq <= `seq` processed and acks it (needed with autoAck: false).
   * Counts only up to the last entry handed out: acking the entry right before a send's
   * `ownSeq` is enough, the broker takes that as covering the copy this connection never got.
   */
  ack(seq: number): void {
    const upTo = Math.min(seq, this.emitted);
    const before = this.processed;
    if (upTo > this.processed) this.processed = upTo;
    this.advanceEchoes();
    if (this.processed > before) this.scheduleAck();
  }

  /** Skipped echoes (autoAck off) count as processed once everything before them is. */
  private advanceEchoes(): void {
    while (this.echoWait.length > 0 && this.processed >= this.echoWait[0].prev) {
      const { seq } = this.echoWait.shift() as { prev: number; seq: number };
      if (seq > this.processed) this.processed = seq;
    }
  }

  /** Logs out (the broker answers GoAway(LOGGED_OUT)) and closes. */
  async logout(): Promise<void> {
    const c = this.conn;
    if (c?.loggedIn && c.transport && !c.ended) {
      this.loggingOut = true;
      this.flushAck();
      const ended = new Promise<void>((resolve) => {
        const prev = c.onEnd;
        c.onEnd = () => {
          prev?.();
          resolve();
        };
      });
      c.transport.send(encodeClient({ type: 'Logout' }));
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([ended, new Promise<void>((r) => (timer = setTimeout(r, LOGOUT_WAIT_MS)))]);
      clearTimeout(timer);
    }
    this.close();
  }

  /** Closes the connection and stops reconnecting; pending sends are rejected with ClosedError. */
  close(): void {
    this.finish(null);
  }

  // ---- the connection loop -----------------------------------------------------------------

  private async run(): Promise<void> {
    let failures = 0;
    while (this._state !== 'closed') {
      this.setState(this.everOnline ? 'reconnecting' : 'connecting');
      const outcome = await this.session();
      if ((this._state as State) === 'closed') return; // close() ran meanwhile
      if (outcome.loggedIn) failures = 0;
      const error = outcome.error;
      if ((error instanceof RingpostError && isPermanent(error.code)) || this.opts.reconnect === false) {
        const asked = error instanceof RingpostError && error.code === Code.LOGGED_OUT && this.loggingOut;
        this.finish(asked ? null : error);
        return;
      }
      failures += 1;
      const delayMs = this.backoff.next();
      this.setState(this.everOnline ? 'reconnecting' : 'connecting', error);
      this.emit('error', error);
      this.emit('retry', { attempt: failures, delayMs, error });
      await this.sleep(delayMs);
    }
  }

  /** One connection: dial, log in, serve until it ends. Says why it ended and whether it logged in. */
  private async session(): Promise<{ error: Error; loggedIn: boolean }> {
    const c: Conn = {
      transport: null, early: [], loggedIn: false, ended: false, endError: null, refusal: null,
      onLogin: null, onEnd: null, lastTx: 0, lastRx: 0, pingSentAt: 0, heartbeat: null,
    };
    this.conn = c;
    const ended = new Promise<void>((resolve) => (c.onEnd = resolve));
    const timeoutMs = this.opts.loginTimeoutMs ?? 10_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new ConnectionError(`no LoginOk within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      const token = typeof this.opts.token === 'function' ? await this.opts.token() : this.opts.token;
      const transport = await Promise.race([
        this.dial(
          {
            // A frame can arrive in the same turn as the open event, before the await below
            // hands us the transport: keep it until then.
            onFrame: (f) => (c.transport ? this.onFrame(c, f) : c.early.push(f.slice())),
            onClose: (e) => this.onClose(c, e),
          },
          { maxFrame: this.opts.maxFrame ?? DEFAULT_MAX_FRAME },
        ),
        timeout,
      ]);
      if (this.conn !== c || this._state === 'closed') {
        transport.close();
        throw new ClosedError();
      }
      c.transport = transport;
      // LoginOk is handled synchronously, in the same turn as its frame: the replay that
      // follows it in the same read must find the connection online.
      const loggedIn = new Promise<ServerMsg & { type: 'LoginOk' }>((resolve) => {
        c.onLogin = (ok) => {
          clearTimeout(timer);
          this.online(c, ok);
          resolve(ok);
        };
      });
      this.write(c, encodeClient({
        type: 'Login', token, deviceId: this.opts.deviceId ?? '', lastSeq: this.processed,
      }));
      for (const f of c.early.splice(0)) this.onFrame(c, f);
      const ok = await Promise.race([loggedIn, ended.then(() => null), timeout]);
      if (ok === null) throw c.refusal ?? c.endError ?? new ConnectionError('connection closed during login');
      await ended;
      return { error: c.refusal ?? c.endError ?? new ConnectionError('connection closed by the broker'), loggedIn: true };
    } catch (e) {
      this.endConn(c, e as Error);
      c.transport?.close();
      return { error: e instanceof Error ? e : new Error(String(e)), loggedIn: false };
    } finally {
      clearTimeout(timer);
      if (c.heartbeat) clearInterval(c.heartbeat);
      if (this.conn === c) this.conn = null;
    }
  }

  private online(c: Conn, ok: ServerMsg & { type: 'LoginOk' }): void {
    const resumedFrom = this.processed;
    const reset = ok.headSeq < this.processed;
    if (reset) {
      // The broker has fewer messages than this device processed (its data was wiped): seqs
      // start again after headSeq, and keeping the old high-water mark would drop them all.
      this.processed = ok.headSeq;
      this.emitted = ok.headSeq;
      this.echoWait = [];
    }
    // The broker counts the login's last_seq as acked by this connection.
    this.ackSent = this.processed;
    c.loggedIn = true;
    c.lastRx = c.lastTx = Date.now();
    this.everOnline = true;
    this.backoff.reset();
    const info: LoginInfo = {
      userId: ok.userId, shard: ok.shard, headSeq: ok.headSeq, heartbeatMs: ok.heartbeatMs,
      oldestSeq: ok.oldestSeq, gap: ok.gap, resumedFrom, reset,
    };
    this.loginInfo = info;
    this.startHeartbeat(c, ok.heartbeatMs);
    this.setState('online');
    this.emit('login', info);
    const first = this.firstLogin;
    this.firstLogin = null;
    first?.resolve(info);
    // Everything queued, in the order the app asked for it (a group created before a send to it).
    const queued: Array<PendingSend | PendingOp> = [...this.pending.values()];
    for (const op of this.ops.values()) if (op.conn === null) queued.push(op);
    queued.sort((a, b) => a.order - b.order);
    for (const p of queued) {
      if (c.ended || !c.loggedIn) break;
      if ('requestId' in p) this.writeOp(c, p);
      else this.writeSend(c, p);
    }
  }

  private startHeartbeat(c: Conn, brokerMs: number): void {
    const interval = Math.max(50, Math.min(brokerMs || DEFAULT_HEARTBEAT_MS, this.opts.heartbeatMs ?? Infinity));
    const pongTimeout = this.opts.pongTimeoutMs ?? interval;
    const half = interval / 2;
    // Ticks every half interval: a Ping goes out when nothing was written for half an interval
    // (so the broker hears from us more often than heartbeat_ms), or when nothing was heard for
    // as long (so a dead path is noticed even while we keep writing).
    c.heartbeat = setInterval(() => {
      if (c.ended) return;
      const now = Date.now();
      const outstanding = c.pingSentAt > c.lastRx; // a Ping went out and nothing came back since
      if (outstanding && now - c.pingSentAt >= pongTimeout) {
        this.dropConn(c, new ConnectionError(`no answer to a ping within ${pongTimeout} ms`));
        return;
      }
      if (now - c.lastTx >= half || (!outstanding && now - c.lastRx >= half)) {
        if (!outstanding) c.pingSentAt = now;
        this.write(c, encodeClient({ type: 'Ping', nonce: this.nextNonce++ }));
      }
    }, half);
    (c.heartbeat as { unref?: () => void }).unref?.();
  }

  private write(c: Conn, frame: Uint8Array): void {
    if (c.ended || !c.transport) return;
    c.lastTx = Date.now();
    c.transport.send(frame);
  }

  private writeSend(c: Conn, p: PendingSend): void {
    p.attempts += 1;
    this.write(c, p.frame);
    this.emit('sent', { clientMsgId: p.id, to: p.to, groupId: p.groupId, attempt: p.attempts });
  }

  private onFrame(c: Conn, bytes: Uint8Array): void {
    if (c.ended) return;
    c.lastRx = Date.now();
    let msg: ServerMsg;
    try {
      msg = decodeServer(bytes);
    } catch (e) {
      this.dropConn(c, e as Error);
      return;
    }
    if (!c.loggedIn) {
      switch (msg.type) {
        case 'LoginOk':
          c.onLogin?.(msg);
          return;
        case 'Error':
        case 'GoAway':
          this.refused(c, msg.type === 'Error' ? msg.message : msg.reason, msg.code, msg.type === 'GoAway');
          return;
        case 'Unknown':
          return;
        default:
          this.dropConn(c, new ProtocolError(`expected LoginOk, got ${msg.type}`));
          return;
      }
    }
    switch (msg.type) {
      case 'Deliver':
        this.onDeliver(msg);
        return;
      case 'SendAck':
        this.onSendAck(msg.clientMsgId, msg.status, msg.ownSeq);
        return;
      case 'GroupReply':
        this.onGroupReply(msg);
        return;
      case 'Pong':
      case 'Unknown':
        return;
      case 'Error':
        this.refused(c, msg.message, msg.code, false);
        return;
      case 'GoAway':
        this.refused(c, msg.reason, msg.code, true);
        return;
      case 'LoginOk':
        this.dropConn(c, new ProtocolError('LoginOk after login'));
        return;
    }
  }

  private refused(c: Conn, detail: string, code: number, goAway: boolean): void {
    c.refusal = new RingpostError(code, detail);
    if (goAway) this.emit('goaway', { code, codeName: codeName(code), reason: detail });
    // The broker closes after an Error/GoAway; closing here too saves waiting for it.
    this.dropConn(c, c.refusal);
  }

  private onDeliver(m: DeliverMsg): void {
    if (m.seq <= this.emitted) return; // replayed after a reconnect: already handed out
    const prev = this.emitted;
    this.emitted = m.seq;
    // Group events carry client_msg_id 0: only messages can be echoes.
    const echo = m.outgoing && m.kind === EntryKind.Message && this.sentIds.has(m.clientMsgId);
    this.held.push({ d: new Delivery(m, echo), prev });
    this.dispatch();
  }

  /**
   * Hands held entries out in seq order: echoes to 'echo' listeners (and to 'deliver' ones with
   * deliverEchoes), everything else to 'deliver' listeners; holds them while a 'deliver'
   * listener is needed and there is none.
   */
  private dispatch(): void {
    while (this.held.length > 0) {
      const { d, prev } = this.held[0];
      const skip = d.echo && this.opts.deliverEchoes !== true;
      if (!skip && this.listenerCount('deliver') === 0) return;
      this.held.shift();
      const results = d.echo ? this.emit('echo', d) : [];
      if (!skip) results.push(...this.emit('deliver', d));
      if (this.opts.autoAck !== false) {
        this.processWhenSettled(d.seq, results);
      } else if (skip) {
        this.echoWait.push({ prev, seq: d.seq });
        this.advanceEchoes();
        this.scheduleAck();
      }
    }
  }

  /** autoAck: `seq` is processed once its listeners' promises settled and every earlier seq is. */
  private processWhenSettled(seq: number, results: unknown[]): void {
    if (!results.some((r) => r instanceof Promise)) {
      this.processing = this.processing.then(() => this.ack(seq));
      return;
    }
    const settled = Promise.allSettled(results).then((rs) => {
      for (const r of rs) if (r.status === 'rejected') this.onListenerError(r.reason, 'deliver');
    });
    this.processing = this.processing.then(() => settled).then(() => this.ack(seq));
  }

  /**
   * Adds a listener. Deliveries that arrived while no 'deliver' listener was registered (say,
   * the replay right after login, before `await connect()` returned) were held, not acked;
   * the first 'deliver' listener gets them, in order, on the next microtask.
   */
  override on<K extends keyof ClientEvents>(event: K, fn: (value: ClientEvents[K]) => unknown): () => void {
    const off = super.on(event, fn);
    if ((event === 'deliver' || event === 'echo') && this.held.length > 0) queueMicrotask(() => this.dispatch());
    return off;
  }

  /**
   * Settles the send. `ownSeq` (1:1 only) is the hole its copy leaves in this connection's
   * stream: handed to the app, and deliberately not counted as processed (see the file head).
   */
  private onSendAck(id: bigint, status: number, ownSeq: number): void {
    const p = this.pending.get(id);
    if (!p) return; // e.g. the original's ack after a resend was answered already
    this.pending.delete(id);
    if (status === Code.OK) p.resolve(p.groupId ? { clientMsgId: id, groupId: p.groupId } : { clientMsgId: id, to: p.to, ownSeq });
    else p.reject(new SendError(status, id, p.to, '', p.groupId));
  }

  // ---- acks --------------------------------------------------------------------------------

  /** Coalesces acks: one Ack frame per turn of the event loop, for the highest processed seq. */
  private scheduleAck(): void {
    if (this.ackTimer !== null) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      this.flushAck();
    }, 0);
  }

  private flushAck(): void {
    const c = this.conn;
    if (!c?.loggedIn || this.processed <= this.ackSent) return;
    this.ackSent = this.processed;
    this.write(c, encodeClient({ type: 'Ack', upToSeq: this.processed }));
  }

  // ---- endings -----------------------------------------------------------------------------

  private onClose(c: Conn, error: Error | null): void {
    this.endConn(c, error);
  }

  /** Closes `c` because of `error`; the loop reconnects (or stops, for a permanent refusal). */
  private dropConn(c: Conn, error: Error): void {
    this.endConn(c, error); // first: closing the transport reports a plain close
    c.transport?.close();
  }

  private endConn(c: Conn, error: Error | null): void {
    if (c.ended) return;
    c.ended = true;
    c.endError = error;
    c.loggedIn = false;
    if (c.heartbeat) clearInterval(c.heartbeat);
    for (const op of [...this.ops.values()]) {
      if (op.conn !== c) continue;
      if (op.readOnly) {
        op.conn = null; // asked again after the next login
      } else {
        this.ops.delete(op.requestId);
        op.reject(new ConnectionError(
          `the connection was lost before the broker answered group ${op.op} ${JSON.stringify(op.groupId)}; it may or may not have been applied`,
          { cause: error ?? undefined }));
      }
    }
    c.onEnd?.();
  }

  private finish(error: Error | null): void {
    if (this._state === 'closed') return;
    this.closeError = error;
    const closedOps = new ClosedError(error ? `client closed: ${error.message}` : 'client closed', { cause: error });
    for (const op of this.ops.values()) op.reject(error instanceof RingpostError ? error : closedOps);
    this.ops.clear();
    const c = this.conn;
    this.conn = null;
    if (c) {
      this.endConn(c, error);
      c.transport?.close();
    }
    if (this.sleepTimer !== null) clearTimeout(this.sleepTimer);
    this.wake?.();
    if (this.ackTimer !== null) clearTimeout(this.ackTimer);
    this.setState('closed', error ?? undefined);
    const closed = new ClosedError(error ? `client closed: ${error.message}` : 'client closed', { cause: error });
    for (const p of this.pending.values()) p.reject(error instanceof RingpostError ? error : closed);
    this.pending.clear();
    const first = this.firstLogin;
    this.firstLogin = null;
    first?.reject(error ?? closed);
  }

  private setState(state: State, error?: Error): void {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this.emit('state', error ? { state, previous, error } : { state, previous });
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = () => {
        this.wake = null;
        this.sleepTimer = null;
        resolve();
      };
      this.sleepTimer = setTimeout(() => this.wake?.(), ms);
    });
  }

  protected override onListenerError(error: unknown, event: string): void {
    if (event !== 'error' && this.listenerCount('error') > 0) {
      const e = error instanceof Error ? error : new Error(String(error));
      this.emit('error', e);
    } else {
      super.onListenerError(error, event);
    }
  }
}
