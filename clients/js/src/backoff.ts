// Exponential backoff with "equal jitter", as src/client.rs does it: the n-th delay (from 0) is
// drawn uniformly from [d/2, d] with d = min(initial * 2^n, max). Half of each delay is fixed so
// retries never bunch up at 0; the random half spreads a crowd of clients reconnecting at once.

export interface BackoffOptions {
  /** First delay's upper bound, ms (default 100). */
  initialMs?: number;
  /** Upper bound of every delay, ms (default 30 000). */
  maxMs?: number;
}

export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  private attempt = 0;
  private readonly random: () => number;

  constructor(opts: BackoffOptions = {}, random: () => number = Math.random) {
    this.initialMs = opts.initialMs ?? 100;
    this.maxMs = opts.maxMs ?? 30_000;
    if (!(this.initialMs > 0) || !(this.maxMs >= this.initialMs)) {
      throw new RangeError(`backoff needs 0 < initialMs <= maxMs, got ${this.initialMs} and ${this.maxMs}`);
    }
    this.random = random;
  }

  /** Upper bound of the next delay (before jitter). */
  ceiling(): number {
    return Math.min(this.initialMs * 2 ** Math.min(this.attempt, 40), this.maxMs);
  }

  /** The next delay in ms; each call doubles the ceiling up to maxMs. */
  next(): number {
    const d = this.ceiling();
    this.attempt += 1;
    return d / 2 + this.random() * (d / 2);
  }

  /** After a successful login: the next delay starts from initialMs again. */
  reset(): void {
    this.attempt = 0;
  }
}
