// Shared by both entry points: picks a transport by URL scheme.

import type { Dialer } from './transport.js';
import { type WebSocketCtor, webSocketDialer } from './websocket.js';

/** The WebSocket constructor of this environment, if it has one (browsers, Node 22+). */
export function globalWebSocket(): WebSocketCtor | undefined {
  return (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
}

/** A Dialer that resolves the WebSocket constructor lazily, on the first connection. */
export function lazyWebSocketDialer(url: string, resolve: () => Promise<WebSocketCtor>): Dialer {
  let dialer: Dialer | null = null;
  return async (handlers, opts) => {
    dialer ??= webSocketDialer(url, await resolve());
    return dialer(handlers, opts);
  };
}

export function scheme(url: string): string {
  return new URL(url).protocol;
}
