// ringpost client, Node entry: tcp://host:port (node:net) and ws(s):// (Node's WebSocket where
// it exists, else the `ws` package). Browsers get ./browser.ts through the "browser" condition.

import { RingpostClient, type ClientOptions, type DialerFactory } from './client.js';
import { globalWebSocket, lazyWebSocketDialer, scheme } from './dialers.js';
import type { WebSocketCtor } from './websocket.js';

export * from './common.js';
export { tcpDialer, FrameReader, LEN_PREFIX } from './tcp.js';

async function nodeWebSocket(): Promise<WebSocketCtor> {
  const builtin = globalWebSocket();
  if (builtin) return builtin;
  try {
    const mod = (await import('ws')) as unknown as { default: WebSocketCtor };
    return mod.default;
  } catch (e) {
    throw new Error('ringpost: ws:// on this Node needs the `ws` package (npm install ws)', { cause: e });
  }
}

export const nodeDialer: DialerFactory = (url) => {
  switch (scheme(url)) {
    case 'ws:':
    case 'wss:':
      return lazyWebSocketDialer(url, nodeWebSocket);
    case 'tcp:': {
      // Loaded on first use so that bundlers targeting browsers never need node:net.
      let dialer: ReturnType<typeof import('./tcp.js').tcpDialer> | null = null;
      return async (handlers, opts) => {
        dialer ??= (await import('./tcp.js')).tcpDialer(url);
        return dialer(handlers, opts);
      };
    }
    default:
      throw new TypeError(`ringpost: unsupported URL scheme in ${url} (tcp://, ws://, wss://)`);
  }
};

/** Creates a client for `opts.url` (tcp://, ws://, wss://) without connecting. */
export function createClient(opts: ClientOptions): RingpostClient {
  return new RingpostClient(opts, nodeDialer);
}

/** Creates a client and waits for its first login (see RingpostClient.connect). */
export async function connect(opts: ClientOptions): Promise<RingpostClient> {
  const client = createClient(opts);
  await client.connect();
  return client;
}
