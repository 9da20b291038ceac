// A minimal typed event emitter that works the same in browsers and Node.

export type Listener<T> = (value: T) => unknown;

export class Emitter<Events extends { [K in keyof Events]: unknown }> {
  private listeners: { [K in keyof Events]?: Listener<Events[K]>[] } = {};

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    (this.listeners[event] ??= []).push(fn);
    return () => this.off(event, fn);
  }

  off<K extends keyof Events>(event: K, fn: Listener<Events[K]>): void {
    const list = this.listeners[event];
    if (list) this.listeners[event] = list.filter((l) => l !== fn);
  }

  /** Resolves with the next value of `event`. */
  once<K extends keyof Events>(event: K): Promise<Events[K]> {
    return new Promise((resolve) => {
      const off = this.on(event, (v) => {
        off();
        resolve(v);
      });
    });
  }

  listenerCount<K extends keyof Events>(event: K): number {
    return this.listeners[event]?.length ?? 0;
  }

  /**
   * Calls every listener of `event` in order and returns what they returned (promises from
   * async listeners included). A throwing listener does not stop the others: its error goes
   * to `onListenerError`.
   */
  protected emit<K extends keyof Events>(event: K, value: Events[K]): unknown[] {
    const results: unknown[] = [];
    for (const fn of this.listeners[event] ?? []) {
      try {
        results.push(fn(value));
      } catch (e) {
        this.onListenerError(e, String(event));
      }
    }
    return results;
  }

  protected onListenerError(error: unknown, event: string): void {
    console.error(`ringpost: a '${event}' listener threw`, error);
  }
}
