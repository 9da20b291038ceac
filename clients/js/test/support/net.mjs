// Network fault injection for tests: a TCP proxy between a client and the broker (either of
// its ports: TCP frames or WebSocket) that can swallow the broker's bytes or cut connections,
// and a raw TCP server for playing a misbehaving peer.

import net from 'node:net';

export class Proxy {
  /** Listens on 127.0.0.1:0 and forwards every connection to targetPort. */
  static async start(targetPort) {
    const p = new Proxy();
    p.targetPort = targetPort;
    p.swallowDownstream = false;
    p.pairs = new Set();
    p.idleWaiters = [];
    p.server = net.createServer((client) => p.accept(client));
    await new Promise((res) => p.server.listen(0, '127.0.0.1', res));
    p.port = p.server.address().port;
    p.url = `tcp://127.0.0.1:${p.port}`;
    return p;
  }

  accept(client) {
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    const pair = { client, upstream };
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
      this.wakeIfUnlinked();
    };
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => {
      if (!this.swallowDownstream) client.write(d);
    });
    for (const s of [client, upstream]) {
      s.on('error', end);
      s.on('close', end);
    }
  }

  /** Destroys every proxied connection (both sides see a reset/close). */
  cutAll() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
    this.wakeIfUnlinked();
  }

  /**
   * Resolves once no proxied connection is open. After a broker's kill, every byte it had
   * written (an ack still in its socket buffer included) has then reached the proxy and met
   * the swallow setting of that moment.
   */
  unlinked() {
    if (this.pairs.size === 0) return Promise.resolve();
    return new Promise((res) => this.idleWaiters.push(res));
  }

  wakeIfUnlinked() {
    if (this.pairs.size !== 0) return;
    for (const res of this.idleWaiters.splice(0)) res();
  }

  async close() {
    this.cutAll();
    await new Promise((res) => this.server.close(res));
  }
}

/** A TCP server on 127.0.0.1:0 that calls onConnection(socket, index) for each client. */
export async function rawServer(onConnection) {
  let n = 0;
  const sockets = new Set();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onConnection(s, n++);
  });
  await new Promise((res) => server.listen(0, '127.0.0.1', res));
  return {
    url: `tcp://127.0.0.1:${server.address().port}`,
    port: server.address().port,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((res) => server.close(res));
    },
  };
}

/** `frame` with its u32 LE length prefix. */
export function prefixed(frame) {
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32LE(frame.length, 0);
  return Buffer.concat([prefix, Buffer.from(frame)]);
}
