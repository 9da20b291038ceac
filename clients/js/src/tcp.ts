// TCP transport (Node only, node:net): each frame is a u32 little-endian length N followed by
// N bytes of FlatBuffers `Frame`, 1 <= N <= maxFrame (schema/ringpost.fbs, src/protocol/layout.rs).

import * as net from 'node:net';

import { ConnectionError, ProtocolError } from './errors.js';
import type { DialOptions, Dialer, Transport, TransportHandlers } from './transport.js';

/** Bytes of the length prefix before every frame on the TCP stream. */
export const LEN_PREFIX = 4;

/** Splits a byte stream into frames; reports framing errors instead of buffering them. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly maxFrame: number) {}

  /** Appends `chunk` and returns every frame now complete. Throws ProtocolError on a bad prefix. */
  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const frames: Buffer[] = [];
    while (this.buf.length >= LEN_PREFIX) {
      const len = this.buf.readUInt32LE(0);
      // Checked as soon as the prefix is readable, without waiting for the body.
      if (len === 0) throw new ProtocolError('zero-length frame');
      if (len > this.maxFrame) throw new ProtocolError(`frame of ${len} bytes exceeds the limit of ${this.maxFrame} bytes`);
      if (this.buf.length < LEN_PREFIX + len) break;
      frames.push(this.buf.subarray(LEN_PREFIX, LEN_PREFIX + len));
      this.buf = this.buf.subarray(LEN_PREFIX + len);
    }
    return frames;
  }
}

/** Parses "tcp://host:port" (IPv6 hosts in brackets). */
export function parseTcpUrl(url: string): { host: string; port: number } {
  const u = new URL(url);
  if (u.protocol !== 'tcp:') throw new TypeError(`not a tcp:// URL: ${url}`);
  const port = Number(u.port);
  if (!u.hostname || !Number.isInteger(port) || port <= 0) throw new TypeError(`tcp URL needs host:port: ${url}`);
  return { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port };
}

/** A Dialer for `tcp://host:port`. */
export function tcpDialer(url: string): Dialer {
  const { host, port } = parseTcpUrl(url);
  return (handlers: TransportHandlers, opts: DialOptions) =>
    new Promise<Transport>((resolve, reject) => {
      const socket = net.connect({ host, port });
      socket.setNoDelay(true);
      const reader = new FrameReader(opts.maxFrame);
      let connected = false;
      let closed = false;
      const finish = (error: Error | null) => {
        if (closed) return;
        closed = true;
        socket.destroy();
        if (connected) handlers.onClose(error);
        else reject(error ?? new ConnectionError(`connection to ${host}:${port} closed before it was established`));
      };
      socket.once('connect', () => {
        connected = true;
        resolve({
          send: (frame) => {
            if (closed) return;
            const prefix = Buffer.allocUnsafe(LEN_PREFIX);
            prefix.writeUInt32LE(frame.length, 0);
            socket.write(prefix);
            socket.write(frame);
          },
          close: () => finish(null),
        });
      });
      socket.on('data', (chunk: Buffer) => {
        let frames: Buffer[];
        try {
          frames = reader.push(chunk);
        } catch (e) {
          finish(e as Error);
          return;
        }
        for (const f of frames) {
          if (closed) return;
          handlers.onFrame(f);
        }
      });
      socket.on('error', (e) => finish(new ConnectionError(`tcp ${host}:${port}: ${e.message}`, { cause: e })));
      socket.on('close', () => finish(null));
    });
}
