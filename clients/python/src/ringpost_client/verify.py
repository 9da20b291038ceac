"""A bounds verifier for server frames.

flatc's Python output has no verifier (unlike the Rust one the broker uses), so this checks,
before any accessor runs, that every offset the decoder follows stays inside the buffer; garbage
is a ProtocolError instead of an IndexError or a plausible-looking frame.

Layout (FlatBuffers): buf[0:4] = u32 offset of the root table. A table at ``t`` starts with an
i32 ``t - vtable``; the vtable is u16 vtable size, u16 inline table size, then one u16 per field
slot (offset inside the table, 0 = absent). Strings and vectors are a u32 count followed by the
data (strings also by a NUL).
"""

import struct
from typing import Dict, Optional, Sequence, Tuple, Union

from .errors import ProtocolError

#: A field slot holds a scalar of N bytes, ``"string"``, ``"bytes"``, ``"table"`` (a sub-table,
#: not checked further), ``"strings"`` (a vector of strings) or a tuple of field kinds (a vector
#: of tables with those slots).
FieldKind = Union[int, str, tuple]

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


def _fail(what: str):
    raise ProtocolError(f"malformed frame: {what}")


def _in(b: bytes, p: int, n: int) -> bool:
    return 0 <= p and 0 <= n and p + n <= len(b)


def _table(b: bytes, pos: int, what: str) -> Tuple[int, int, int, int]:
    if not _in(b, pos, 4):
        _fail(f"{what} table out of bounds")
    vtable = pos - _I32.unpack_from(b, pos)[0]
    if not _in(b, vtable, 4):
        _fail(f"{what} vtable out of bounds")
    vt_size, t_size = _U16.unpack_from(b, vtable)[0], _U16.unpack_from(b, vtable + 2)[0]
    if vt_size < 4 or vt_size % 2 or not _in(b, vtable, vt_size):
        _fail(f"{what} vtable size {vt_size}")
    if t_size < 4 or not _in(b, pos, t_size):
        _fail(f"{what} table size {t_size}")
    return pos, vtable, vt_size, t_size


def _field_pos(b: bytes, t, slot: int) -> int:
    pos, vtable, vt_size, _ = t
    entry = 4 + 2 * slot
    if entry >= vt_size:
        return 0
    off = _U16.unpack_from(b, vtable + entry)[0]
    return pos + off if off else 0


def _vector_bytes(b: bytes, target: int, string: bool, what: str) -> None:
    if not _in(b, target, 4):
        _fail(f"{what} points out of bounds")
    n = _U32.unpack_from(b, target)[0]
    extra = 1 if string else 0
    if not _in(b, target + 4, n + extra):
        _fail(f"{what} length {n} out of bounds")
    if string and b[target + 4 + n] != 0:
        _fail(f"{what} is not NUL-terminated")


def _offset_vector(b: bytes, target: int, what: str):
    """Positions of the elements of a vector of offsets (strings or tables)."""
    if not _in(b, target, 4):
        _fail(f"{what} points out of bounds")
    n = _U32.unpack_from(b, target)[0]
    if not _in(b, target + 4, n * 4):
        _fail(f"{what} length {n} out of bounds")
    for i in range(n):
        slot = target + 4 + 4 * i
        yield i, slot + _U32.unpack_from(b, slot)[0]


def _table_fields(b: bytes, t, kinds: Sequence[FieldKind], what: str) -> None:
    for slot, kind in enumerate(kinds):
        _field(b, t, slot, kind, what)


def _field(b: bytes, t, slot: int, kind: FieldKind, what: str) -> Optional[tuple]:
    p = _field_pos(b, t, slot)
    if p == 0:
        return None
    size = kind if isinstance(kind, int) else 4
    if p + size > t[0] + t[3]:
        _fail(f"{what} field {slot} outside its table")
    if isinstance(kind, int):
        return None
    target = p + _U32.unpack_from(b, p)[0]
    name = f"{what} field {slot}"
    if kind == "table":
        return _table(b, target, what)
    if kind in ("string", "bytes"):
        _vector_bytes(b, target, kind == "string", f"{what} string field {slot}" if kind == "string" else name)
    elif kind == "strings":
        for i, pos in _offset_vector(b, target, name):
            _vector_bytes(b, pos, True, f"{name}[{i}]")
    else:
        for i, pos in _offset_vector(b, target, name):
            _table_fields(b, _table(b, pos, f"{name}[{i}]"), kind, f"{name}[{i}]")
    return None


def verify_frame(b: bytes, bodies: Dict[int, Sequence[FieldKind]]) -> int:
    """Verifies a Frame and its body table against ``bodies[tag]``; returns the union tag.

    A tag missing from ``bodies`` is not verified further (the caller treats it as unknown and
    does not read it).
    """
    if len(b) < 12:
        _fail(f"{len(b)} bytes is too short for a frame")
    root = _table(b, _U32.unpack_from(b, 0)[0], "Frame")
    tag_pos = _field_pos(b, root, 0)
    if tag_pos and tag_pos + 1 > root[0] + root[3]:
        _fail("Frame body type outside its table")
    tag = b[tag_pos] if tag_pos else 0
    kinds = bodies.get(tag)
    if tag == 0 or kinds is None:
        return tag
    body = _field(b, root, 1, "table", "Frame body")
    if body is None:
        _fail("frame has a body type but no body")
    _table_fields(b, body, kinds, f"body {tag}")
    return tag
