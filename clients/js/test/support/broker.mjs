// Test harness: the real ringpost broker (target/debug/ringpost, or $RINGPOST_BIN) started on
// port 0 with a per-test config, as tests/support/mod.rs does for the Rust tests; tokens minted
// here with node:crypto (JWT HS256, `sub` + `exp`).

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const SECRET = 'js-client-test-secret';
const HERE = dirname(fileURLToPath(import.meta.url));
export const BROKER_BIN = process.env.RINGPOST_BIN ?? resolve(HERE, '../../../../target/debug/ringpost');
/** Upper bound for one expected event on a loaded 2-core CI box. */
export const WAIT_MS = 10_000;

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

/** An HS256 JWT with `sub` = user and `exp` = now + ttlSec (negative: already expired). */
export function mintToken(user, { ttlSec = 3600, secret = SECRET, claims = {} } = {}) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify({ sub: user, exp: Math.floor(Date.now() / 1000) + ttlSec, ...claims }));
  const sig = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

let nextUser = 0;
/** A user name no other test of this process uses. */
export function uniqueUser(prefix) {
  nextUser += 1;
  return `${prefix}-${process.pid}-${nextUser}`;
}

export class Broker {
  /**
   * Starts a broker. `limits` / `server` are extra TOML lines for those tables. `dir` reuses a
   * data directory (a restart); `port` pins the listen port (a restart on the same address).
   */
  static async start({ shards = 2, limits = '', server = '', dir = null, port = 0, wsPort = 0 } = {}) {
    const b = new Broker();
    b.ownsDir = dir === null;
    b.dir = dir ?? mkdtempSync(join(tmpdir(), 'ringpost-js-'));
    b.shards = shards;
    b.opts = { shards, limits, server };
    await b.spawn(port, wsPort);
    return b;
  }

  async spawn(port, wsPort) {
    const d = this.dir;
    const config = join(d, 'ringpost.toml');
    writeFileSync(config, [
      '[server]', `listen = "127.0.0.1:${port}"`, `shards = ${this.opts.shards}`, 'shutdown_grace = "5s"',
      // Own ports for WebSocket too (tests run brokers side by side): the same port again on
      // a restart. Own-send sync stays on (the default): every test sees its users' echoes.
      `ws_listen = "127.0.0.1:${wsPort}"`, this.opts.server,
      '[storage]', `data_dir = "${d}/data"`, 'segment_size = "4MiB"',
      '[auth]', `secret_file = "${d}/auth.secret"`,
      '[limits]', this.opts.limits,
      // No admin listener: its default port would clash between brokers run side by side.
      '[admin]', 'listen = ""', '',
    ].join('\n'));
    const stderr = openSync(join(d, 'stderr.log'), 'a');
    this.child = spawn(BROKER_BIN, ['--config', config], {
      env: { ...process.env, RINGPOST_AUTH_SECRET: SECRET, RUST_LOG: 'info' },
      stdio: ['ignore', 'pipe', stderr],
    });
    closeSync(stderr);
    this.exited = new Promise((res) => this.child.once('exit', (code, signal) => res({ code, signal })));
    const lines = createInterface({ input: this.child.stdout });
    // The first line names the TCP address, the second the WebSocket one.
    const [first, second] = await new Promise((res, rej) => {
      const got = [];
      const timer = setTimeout(() => rej(new Error(`broker did not start within ${WAIT_MS} ms:\n${this.stderr()}`)), WAIT_MS);
      lines.on('line', (l) => {
        got.push(l);
        if (got.length === 2) {
          clearTimeout(timer);
          res(got);
        }
      });
      this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        rej(new Error(`broker exited (${code ?? signal}) before listening:\n${this.stderr()}`));
      });
    });
    const m = /^ringpost listening on (\S+)/.exec(first);
    if (!m) throw new Error(`unexpected first line: ${first}`);
    const w = /^ringpost websocket on (\S+)/.exec(second);
    if (!w) throw new Error(`unexpected second line: ${second}`);
    this.addr = m[1];
    this.port = Number(m[1].split(':').pop());
    this.url = `tcp://${this.addr}`;
    this.wsAddr = w[1];
    this.wsPort = Number(w[1].split(':').pop());
    this.wsUrl = `ws://${this.wsAddr}/ws`;
    /** The chat page the broker serves. */
    this.pageUrl = `http://${this.wsAddr}/`;
  }

  token(user, opts) {
    return mintToken(user, opts);
  }

  stderr() {
    try {
      return readFileSync(join(this.dir, 'stderr.log'), 'utf8');
    } catch {
      return '';
    }
  }

  signal(sig) {
    this.child.kill(sig);
  }

  /**
   * SIGSTOP, resolved once every thread of the broker is stopped (/proc/PID/task/TID/stat in
   * state T). kill(2) returns before the other threads have taken the stop, so a frame written
   * right after it could still be read (seen: ~1 run in 20 of the kill-and-restart test).
   */
  async freeze() {
    const pid = this.child.pid;
    this.child.kill('SIGSTOP');
    const stopped = () => readdirSync(`/proc/${pid}/task`).every((tid) => {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      return 'tT'.includes(stat[stat.lastIndexOf(')') + 2]); // the state, after "(comm) "
    });
    const deadline = Date.now() + 10_000;
    while (!stopped()) {
      if (Date.now() > deadline) throw new Error(`broker ${pid} did not stop within 10 s of SIGSTOP`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** SIGKILL (a crash); the data directory stays for restart(). */
  async kill() {
    this.child.kill('SIGKILL');
    await this.exited;
  }

  /** Starts the broker again over the same data directory and the same port. */
  async restart() {
    await this.spawn(this.port, this.wsPort);
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
    if (this.ownsDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Resolves with the first `event` value of `emitter` matching `pred`, or rejects after WAIT_MS. */
export function waitFor(emitter, event, pred = () => true, ms = WAIT_MS) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => {
      off();
      rej(new Error(`no matching '${event}' event within ${ms} ms`));
    }, ms);
    const off = emitter.on(event, (v) => {
      if (!pred(v)) return;
      clearTimeout(timer);
      off();
      res(v);
    });
  });
}

/** Collects every `event` value of `emitter` into an array. */
export function collect(emitter, event) {
  const out = [];
  emitter.on(event, (v) => out.push(v));
  return out;
}

/** Rejects if `p` does not settle within ms. */
export function within(p, ms = WAIT_MS, what = 'operation') {
  let timer;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`${what} did not finish within ${ms} ms`)), ms))),
  ]);
}

/**
 * Records a client's stream as the app sees it: 'deliver' entries and, unless `echoes` is
 * false, 'echo' entries (both are handed out in seq order), and lets a test wait on it.
 */
export class Entries {
  constructor(client, { echoes = true } = {}) {
    this.all = [];
    this.waiters = [];
    client.on('deliver', (d) => this.push(d));
    if (echoes) client.on('echo', (d) => this.push(d));
  }

  push(d) {
    this.all.push(d);
    this.waiters = this.waiters.filter((w) => !w());
  }

  /** Resolves with the first entry after the `from`-th (default: any) matching `pred`. */
  find(pred, { from = 0, what = 'entry', ms = WAIT_MS } = {}) {
    return this.until(() => this.all.slice(from).find(pred), what, ms);
  }

  /** Resolves once `check()` returns something truthy (checked now and on each entry). */
  until(check, what = 'condition', ms = WAIT_MS) {
    return new Promise((res, rej) => {
      const now = check();
      if (now) return res(now);
      let timer;
      const w = () => {
        const v = check();
        if (!v) return false;
        clearTimeout(timer);
        res(v);
        return true;
      };
      timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        rej(new Error(`no ${what} within ${ms} ms; have ${JSON.stringify(this.all.map(summary))}`));
      }, ms);
      this.waiters.push(w);
    });
  }

  /** Waits for `n` entries in all and returns them. */
  count(n, what = `${n} entries`) {
    return this.until(() => this.all.length >= n && this.all.slice(0, n), what);
  }
}

/** A short, readable form of a Delivery for failure messages. */
export function summary(d) {
  return `${d.seq}:${d.kindName}${d.groupId ? `#${d.groupId}@${d.groupSeq}` : ''}:${d.from}${d.outgoing ? '>' : ''}${d.echo ? '(echo)' : ''}:${d.text}`;
}
