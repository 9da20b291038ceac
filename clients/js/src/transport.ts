// What the client needs from a connection: send one frame, receive frames, learn when it ends.
// Frames are whole FlatBuffers `Frame`s without a length prefix, whatever the transport.

export interface TransportHandlers {
  /** One complete frame arrived. */
  onFrame(frame: Uint8Array): void;
  /** The connection ended; `error` says why (null: closed cleanly by the peer or by close()). Called once. */
  onClose(error: Error | null): void;
}

export interface Transport {
  /** Queues one frame for sending (frames are written in order). */
  send(frame: Uint8Array): void;
  /** Closes the connection; onClose follows (with null) unless it already ran. */
  close(): void;
}

export interface DialOptions {
  /** Largest frame accepted from the server; a bigger one ends the connection with a ProtocolError. */
  maxFrame: number;
}

/** Opens a connection; resolves once it can carry frames (TCP connected, WebSocket open). */
export type Dialer = (handlers: TransportHandlers, opts: DialOptions) => Promise<Transport>;
