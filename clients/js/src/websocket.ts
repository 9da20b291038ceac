// WebSocket transport: each *binary* message carries exactly one FlatBuffers `Frame`, with no
// length prefix. A text message from the server is a protocol error. Works with the browser's
// WebSocket, Node's global WebSocket (Node 22+) and the `ws` package (same constructor shape).

import { ConnectionError, ProtocolError } from './errors.js';
import type { DialOptions, Dialer, Transport, TransportHandlers } from './transport.js';

/** The part of the WHATWG WebSocket interface the transport uses. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketCtor = new (url: string, ...rest: never[]) => WebSocketLike;

/** Close code sent when the server's message is not one binary frame (RFC 6455: 1003 unsupported data, 1009 too big). */
const UNSUPPORTED_DATA = 1003;
const MESSAGE_TOO_BIG = 1009;

function asBytes(data: unknown): Uint8Array | null {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}

/** A Dialer for `ws://` / `wss://` URLs using the given WebSocket constructor. */
export function webSocketDialer(url: string, WebSocketImpl: WebSocketCtor): Dialer {
  const u = new URL(url);
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new TypeError(`not a ws:// or wss:// URL: ${url}`);
  return (handlers: TransportHandlers, opts: DialOptions) =>
    new Promise<Transport>((resolve, reject) => {
      const ws = new WebSocketImpl(url);
      ws.binaryType = 'arraybuffer';
      let open = false;
      let closed = false;
      const finish = (error: Error | null, code = 1000, reason = '') => {
        if (closed) return;
        closed = true;
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        try {
          ws.close(code, reason);
        } catch {
          // already closing
        }
        if (open) handlers.onClose(error);
        else reject(error ?? new ConnectionError(`websocket ${url} closed before it opened`));
      };
      ws.onopen = () => {
        open = true;
        resolve({
          send: (frame) => {
            if (!closed) ws.send(frame);
          },
          close: () => finish(null),
        });
      };
      ws.onmessage = (ev) => {
        const frame = asBytes(ev.data);
        if (frame === null) {
          finish(new ProtocolError('text message from the server (frames are binary messages)'), UNSUPPORTED_DATA, 'binary frames only');
        } else if (frame.length > opts.maxFrame) {
          finish(new ProtocolError(`frame of ${frame.length} bytes exceeds the limit of ${opts.maxFrame} bytes`), MESSAGE_TOO_BIG, 'frame too large');
        } else {
          handlers.onFrame(frame);
        }
      };
      // Browsers give no detail on errors; the close event that follows has the code.
      ws.onerror = () => {};
      ws.onclose = (ev) => {
        const clean = ev.code === 1000 || ev.code === 1001;
        finish(clean ? null : new ConnectionError(`websocket ${url} closed (${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`));
      };
    });
}
