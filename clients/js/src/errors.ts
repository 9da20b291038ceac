// Typed errors. Every error the broker reports carries its stable numeric code and its name.

import { codeName } from './codes.js';

/** The broker refused something with a stable code (Error/GoAway frame, or a login refusal). */
export class RingpostError extends Error {
  /** Numeric code from schema/ringpost.fbs, e.g. 100. */
  readonly code: number;
  /** Its name, e.g. "AUTH_FAILED". */
  readonly codeName: string;
  /** The broker's readable detail ("" when none). */
  readonly detail: string;

  constructor(code: number, detail: string) {
    const name = codeName(code);
    super(detail ? `${name} (${code}): ${detail}` : `${name} (${code})`);
    this.name = 'RingpostError';
    this.code = code;
    this.codeName = name;
    this.detail = detail;
  }
}

/** A Send or GroupSend the broker answered with a non-OK SendAck status (or that the client refused to send). */
export class SendError extends RingpostError {
  readonly clientMsgId: bigint;
  /** The recipient of a 1:1 send ("" for a group send). */
  readonly to: string;
  /** The group of a group send ("" for a 1:1 send). */
  readonly groupId: string;

  constructor(code: number, clientMsgId: bigint, to: string, detail = '', groupId = '') {
    const target = groupId ? `group ${JSON.stringify(groupId)}` : JSON.stringify(to);
    super(code, detail || `send #${clientMsgId} to ${target} was not accepted`);
    this.name = 'SendError';
    this.clientMsgId = clientMsgId;
    this.to = to;
    this.groupId = groupId;
  }
}

/** A group operation answered by a GroupReply with a non-OK status (GROUP_EXISTS 601, NOT_A_MEMBER 602, ...). */
export class GroupError extends RingpostError {
  readonly requestId: bigint;
  /** "create", "add", "remove", "leave", "list" or "info". */
  readonly op: string;
  readonly groupId: string;

  constructor(code: number, requestId: bigint, op: string, groupId: string, detail = '') {
    super(code, detail || `group ${op} ${JSON.stringify(groupId)} was refused`);
    this.name = 'GroupError';
    this.requestId = requestId;
    this.op = op;
    this.groupId = groupId;
  }
}

/** The network path failed: connect refused, connection lost, login or ping timed out. */
export class ConnectionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ConnectionError';
  }
}

/** The peer sent bytes that are not a valid frame for this side. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** The client was closed (close(), logout, or a permanent refusal) before the operation finished. */
export class ClosedError extends Error {
  constructor(message = 'client is closed', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ClosedError';
  }
}
