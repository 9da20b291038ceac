// The ringpost client: one logical session over a sequence of connections.
//
//   connect() ──► dial ──► Login{token, device_id, last_seq = last processed seq} ──► LoginOk
//        ▲                                                                   │ online: re-send
//        │ backoff (equal jitter)                                            ▼ unacked sends
//   reconnecting ◄── connection lost / transient refusal ◄── Deliver/SendAck/Pong, heartbeats
//
// Every Send stays pending until its SendAck; a connection lost in between re-sends it with
// the same client_msg_id after the next login (the broker's dedup answers with the original
// SendAck and does not deliver twice). Deliveries carry a per-user seq; the client resumes
// after the last seq the application *processed* (autoAck: its listeners returned; otherwise
// what it passed to ack()), and drops replayed seqs it already handed out on this instance.

import { Backoff, type BackoffOptions } from './backoff.js';
import { type ServerMsg, decodeServer, encodeClient } from './codec.js';
import { Code, codeName, isPermanent } from './codes.js';
import { Emitter } from './emitter.js';
import { ClosedError, ConnectionError, ProtocolError, RingpostError, SendError } from './errors.js';
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

/** A delivered message. */
export class Delivery {
  constructor(
    readonly seq: number,
    readonly from: string,
    readonly clientMsgId: bigint,
    readonly sentAtMs: number,
    readonly body: Uint8Array,
  ) {}

  /** The body as UTF-8 text (invalid sequences become U+FFFD). */
  get text(): string {
    return new TextDecoder().decode(this.body);
  }

  /** A key that identifies the message across re-sends: sender and client_msg_id. */
  get key(): string {
    return `${this.from}/${this.clientMsgId}`;
  }
}

export interface SendResult {
  clientMsgId: bigint;
  to: string;
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
  deliver: Delivery;
  /** A Send frame was written; attempt > 1 is a re-send after a reconnect. */
  sent: { clientMsgId: bigint; to: string; attempt: number };
  retry: RetryInfo;
  goaway: { code: number; codeName: string; reason: string };
  /** Something went wrong that the client handles itself (it reconnects); for logging. */
  error: Error;
}

interface PendingSend {
  id: bigint;
  to: string;
  frame: Uint8Array;
  attempts: number;
  promise: Promise<SendResult>;
  resolve: (r: SendResult) => void;
  reject: (e: Error) => void;
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
  /** Deliveries not yet given to a listener (none was registered). */
  private readonly held: Delivery[] = [];
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
   * recipient's inbox); rejects with SendError (code + name) on any other status. While offline
   * the message waits and is sent after the next login; unanswered sends are re-sent after a
   * reconnect with the same client_msg_id.
   */
  send(to: string, body: string | Uint8Array, options: SendOptions = {}): Promise<SendResult> {
    if (this._state === 'closed') return Promise.reject(new ClosedError('client is closed', { cause: this.closeError }));
    const id = options.clientMsgId === undefined ? this.newClientMsgId() : BigInt(options.clientMsgId);
    const existing = this.pending.get(id);
    if (existing) return existing.promise;
    const bytes = typeof body === 'string' ? new TextEncoder().encode(body) : body;
    let frame: Uint8Array;
    try {
      frame = encodeClient({ type: 'Send', clientMsgId: id, toUser: to, body: bytes });
    } catch (e) {
      return Promise.reject(e);
    }
    const limit = this.opts.maxSendFrame ?? DEFAULT_MAX_SEND_FRAME;
    if (frame.length > limit) {
      return Promise.reject(new SendError(Code.FRAME_TOO_LARGE, id, to,
        `the Send frame is ${frame.length} bytes, over maxSendFrame (${limit}); not sent`));
    }
    let resolve!: (r: SendResult) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<SendResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const p: PendingSend = { id, to, frame, attempts: 0, promise, resolve, reject };
    this.pending.set(id, p);
    if (this.conn?.loggedIn) this.writeSend(this.conn, p);
    return promise;
  }

  /** Marks every delivery with seq <= `seq` processed and acks it (needed with autoAck: false). */
  ack(seq: number): void {
    const upTo = Math.min(seq, this.emitted);
    if (upTo <= this.processed) return;
    this.processed = upTo;
    this.scheduleAck();
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
    for (const p of this.pending.values()) {
      if (c.ended || !c.loggedIn) break;
      this.writeSend(c, p);
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
    this.emit('sent', { clientMsgId: p.id, to: p.to, attempt: p.attempts });
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
        this.onSendAck(msg.clientMsgId, msg.status);
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

  private onDeliver(m: ServerMsg & { type: 'Deliver' }): void {
    if (m.seq <= this.emitted) return; // replayed after a reconnect: already handed out
    this.emitted = m.seq;
    this.held.push(new Delivery(m.seq, m.fromUser, m.clientMsgId, m.sentAtMs, m.body));
    this.dispatch();
  }

  /** Hands held deliveries to the 'deliver' listeners, in seq order; holds them while there are none. */
  private dispatch(): void {
    while (this.held.length > 0 && this.listenerCount('deliver') > 0) {
      const d = this.held.shift() as Delivery;
      const results = this.emit('deliver', d);
      if (this.opts.autoAck !== false) this.processWhenSettled(d.seq, results);
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
    if (event === 'deliver' && this.held.length > 0) queueMicrotask(() => this.dispatch());
    return off;
  }

  private onSendAck(id: bigint, status: number): void {
    const p = this.pending.get(id);
    if (!p) return; // e.g. the original's ack after a resend was answered already
    this.pending.delete(id);
    if (status === Code.OK) p.resolve({ clientMsgId: id, to: p.to });
    else p.reject(new SendError(status, id, p.to));
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
    c.onEnd?.();
  }

  private finish(error: Error | null): void {
    if (this._state === 'closed') return;
    this.closeError = error;
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
