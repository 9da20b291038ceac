// Stable wire codes (schema/ringpost.fbs `enum Code`) and how the client treats them.

import { Code } from './generated/ringpost/wire/code.js';

export { Code };

/** Readable name of a code, e.g. "AUTH_FAILED"; "UNKNOWN" for a code this build does not know. */
export function codeName(code: number): string {
  return (Code as unknown as Record<number, string | undefined>)[code] ?? 'UNKNOWN';
}

/**
 * Codes after which reconnecting cannot help: the token is bad, this client sent something the
 * broker will refuse again, another connection took over this device, or the user logged out.
 * Every other code (SHUTDOWN, IDLE_TIMEOUT, SLOW_CONSUMER, TOO_MANY_DEVICES, INTERNAL, codes
 * newer than this build...) is retried with backoff.
 */
const PERMANENT: ReadonlySet<number> = new Set([
  Code.AUTH_FAILED,
  Code.TOKEN_EXPIRED,
  Code.NOT_LOGGED_IN,
  Code.ALREADY_LOGGED_IN,
  Code.FRAME_TOO_LARGE,
  Code.MALFORMED_FRAME,
  Code.UNKNOWN_FRAME,
  Code.UNEXPECTED_FRAME,
  Code.SESSION_REPLACED,
  Code.LOGGED_OUT,
]);

/** True when a refusal with this code stops reconnecting. */
export function isPermanent(code: number): boolean {
  return PERMANENT.has(code);
}
