// What both entry points export.

export { RingpostClient, Delivery } from './client.js';
export type {
  ClientEvents, ClientOptions, DialerFactory, GroupChange, GroupPage, GroupSendResult, LoginInfo, RetryInfo, SendOptions,
  SendResult, State, StateChange,
} from './client.js';
export { Backoff, type BackoffOptions } from './backoff.js';
export { Code, codeName, isPermanent } from './codes.js';
export { ClosedError, ConnectionError, GroupError, ProtocolError, RingpostError, SendError } from './errors.js';
export {
  EntryKind, decodeServer, encodeClient, encodeServer, type ClientMsg, type DeliverMsg, type GroupMemberInfo, type GroupReplyMsg,
  type ServerInput, type ServerMsg,
} from './codec.js';
export type { Dialer, DialOptions, Transport, TransportHandlers } from './transport.js';
export { webSocketDialer, type WebSocketCtor, type WebSocketLike } from './websocket.js';
