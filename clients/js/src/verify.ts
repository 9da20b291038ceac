// A bounds verifier for server frames. flatc's TypeScript output has no verifier (unlike the
// Rust one the broker uses), and out-of-range reads in the flatbuffers JS runtime yield zeros
// instead of failing, so garbage would decode as plausible frames. This checks, before any
// accessor runs, that every offset the decoder follows stays inside the buffer.
//
// Layout (FlatBuffers): buf[0..4] = u32 offset of the root table. A table at `t` starts with an
// i32 `t - vtable`; the vtable is u16 vtable size, u16 inline table size, then one u16 per field
// slot (offset of the field inside the table, 0 = absent). Strings and vectors are a u32 count
// followed by the data (strings also by a NUL).

import { ProtocolError } from './errors.js';

/**
 * What a field slot holds: a scalar of N bytes, a string, a byte vector, a sub-table (not
 * checked further), a vector of strings, or a vector of tables whose slots are `tables`.
 */
export type FieldKind = 1 | 2 | 4 | 8 | 'string' | 'bytes' | 'table' | 'strings' | { readonly tables: readonly FieldKind[] };

function fail(what: string): never {
  throw new ProtocolError(`malformed frame: ${what}`);
}

function u16(b: Uint8Array, p: number): number {
  return b[p] | (b[p + 1] << 8);
}

function u32(b: Uint8Array, p: number): number {
  return (b[p] | (b[p + 1] << 8) | (b[p + 2] << 16)) + b[p + 3] * 0x1000000;
}

function inBounds(b: Uint8Array, p: number, n: number): boolean {
  return Number.isInteger(p) && p >= 0 && n >= 0 && p + n <= b.length;
}

/** A table whose vtable and inline part lie inside the buffer. */
export interface TableRef {
  pos: number;
  vtable: number;
  vtableSize: number;
  tableSize: number;
}

export function table(b: Uint8Array, pos: number, what: string): TableRef {
  if (!inBounds(b, pos, 4)) fail(`${what} table out of bounds`);
  const soffset = u32(b, pos) | 0; // i32
  const vtable = pos - soffset;
  if (!inBounds(b, vtable, 4)) fail(`${what} vtable out of bounds`);
  const vtableSize = u16(b, vtable);
  const tableSize = u16(b, vtable + 2);
  if (vtableSize < 4 || vtableSize % 2 !== 0 || !inBounds(b, vtable, vtableSize)) {
    fail(`${what} vtable size ${vtableSize}`);
  }
  if (tableSize < 4 || !inBounds(b, pos, tableSize)) fail(`${what} table size ${tableSize}`);
  return { pos, vtable, vtableSize, tableSize };
}

/** Absolute position of field `slot`, or 0 when absent. */
function fieldPos(b: Uint8Array, t: TableRef, slot: number): number {
  const entry = 4 + 2 * slot;
  if (entry >= t.vtableSize) return 0;
  const off = u16(b, t.vtable + entry);
  return off === 0 ? 0 : t.pos + off;
}

/** A string or byte vector at `target`: u32 count, the bytes, and a NUL for strings. */
function vectorBytes(b: Uint8Array, target: number, string: boolean, what: string): void {
  if (!inBounds(b, target, 4)) fail(`${what} points out of bounds`);
  const len = u32(b, target);
  const extra = string ? 1 : 0;
  if (!inBounds(b, target + 4, len + extra)) fail(`${what} length ${len} out of bounds`);
  if (string && b[target + 4 + len] !== 0) fail(`${what} is not NUL-terminated`);
}

/** A vector of offsets at `target` (strings or tables); calls `each` with every element's position. */
function offsetVector(b: Uint8Array, target: number, what: string, each: (pos: number, i: number) => void): void {
  if (!inBounds(b, target, 4)) fail(`${what} points out of bounds`);
  const len = u32(b, target);
  if (!inBounds(b, target + 4, len * 4)) fail(`${what} length ${len} out of bounds`);
  for (let i = 0; i < len; i++) {
    const slot = target + 4 + 4 * i;
    each(slot + u32(b, slot), i);
  }
}

/** Checks a table's slots against `kinds`. */
function tableFields(b: Uint8Array, t: TableRef, kinds: readonly FieldKind[], what: string): void {
  kinds.forEach((kind, slot) => field(b, t, slot, kind, what));
}

/** Checks one field; returns the sub-table for kind 'table' (null when absent). */
function field(b: Uint8Array, t: TableRef, slot: number, kind: FieldKind, what: string): TableRef | null {
  const p = fieldPos(b, t, slot);
  if (p === 0) return null;
  const size = typeof kind === 'number' ? kind : 4;
  if (p + size > t.pos + t.tableSize) fail(`${what} field ${slot} outside its table`);
  if (typeof kind === 'number') return null;
  const target = p + u32(b, p);
  const name = `${what} field ${slot}`;
  if (kind === 'table') return table(b, target, what);
  if (kind === 'string' || kind === 'bytes') {
    vectorBytes(b, target, kind === 'string', kind === 'string' ? `${what} string field ${slot}` : name);
  } else if (kind === 'strings') {
    offsetVector(b, target, name, (pos, i) => vectorBytes(b, pos, true, `${name}[${i}]`));
  } else {
    offsetVector(b, target, name, (pos, i) => tableFields(b, table(b, pos, `${name}[${i}]`), kind.tables, `${name}[${i}]`));
  }
  return null;
}

/**
 * Verifies a Frame: the root table, its union tag and body offset, and the body table against
 * `bodies[tag]` (the kinds of its field slots, in schema order). A tag missing from `bodies` is
 * not verified further (the caller treats it as unknown and does not read it). Returns the tag.
 */
export function verifyFrame(b: Uint8Array, bodies: Readonly<Record<number, readonly FieldKind[]>>): number {
  if (b.length < 12) fail(`${b.length} bytes is too short for a frame`);
  const root = table(b, u32(b, 0), 'Frame');
  const tagPos = fieldPos(b, root, 0);
  if (tagPos !== 0 && tagPos + 1 > root.pos + root.tableSize) fail('Frame body type outside its table');
  const tag = tagPos === 0 ? 0 : b[tagPos];
  const kinds = bodies[tag];
  if (tag === 0 || kinds === undefined) return tag;
  const body = field(b, root, 1, 'table', 'Frame body');
  if (body === null) fail('frame has a body type but no body');
  tableFields(b, body, kinds, `body ${tag}`);
  return tag;
}
