// ringpost client, browser entry: ws:// and wss:// with the browser's WebSocket. Bundled into
// src/web/ringpost-client.js for the chat page (scripts/bundle.mjs).

import { RingpostClient, type ClientOptions, type DialerFactory } from './client.js';
import { globalWebSocket, scheme } from './dialers.js';
import { webSocketDialer } from './websocket.js';

export * from './common.js';

export const browserDialer: DialerFactory = (url) => {
  const s = scheme(url);
  if (s !== 'ws:' && s !== 'wss:') throw new TypeError(`ringpost: browsers connect with ws:// or wss://, not ${url}`);
  const ctor = globalWebSocket();
  if (!ctor) throw new TypeError('ringpost: this environment has no WebSocket');
  return webSocketDialer(url, ctor);
};

/** Creates a client for `opts.url` (ws:// or wss://) without connecting. */
export function createClient(opts: ClientOptions): RingpostClient {
  return new RingpostClient(opts, browserDialer);
}

/** Creates a client and waits for its first login (see RingpostClient.connect). */
export async function connect(opts: ClientOptions): Promise<RingpostClient> {
  const client = createClient(opts);
  await client.connect();
  return client;
}
