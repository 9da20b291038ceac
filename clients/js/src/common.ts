// What both entry points export.

export { RingpostClient, Delivery } from './client.js';
export type {
  ClientEvents, ClientOptions, DialerFactory, LoginInfo, RetryInfo, SendOptions, SendResult, State, StateChange,
} from './client.js';
export { Backoff, type BackoffOptions } from './backoff.js';
export { Code, codeName, isPermanent } from './codes.js';
export { ClosedError, ConnectionError, ProtocolError, RingpostError, SendError } from './errors.js';
export { decodeServer, encodeClient, encodeServer, type ClientMsg, type ServerMsg } from './codec.js';
export type { Dialer, DialOptions, Transport, TransportHandlers } from './transport.js';
export { webSocketDialer, type WebSocketCtor, type WebSocketLike } from './websocket.js';
