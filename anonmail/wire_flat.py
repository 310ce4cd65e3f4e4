"""A direct codec for flat messages: those whose fields are all byte strings, integers and
booleans (FIND_NODE's `FindTags` and `Tags`, pings, most store requests).

The generic path (wire.py) encodes through cbor2 and decodes by pre-scan, cbor2 and schema; for
a message of two or three scalar fields that machinery was most of the codec's cost on every
RPC (issue 11: ~6 us a decode against ~1.5 us here). A flat message's canonical encoding is
fixed by its schema:

    array(2 + n) uint(tag) uint(version) field1 ... fieldn

each field a byte string, an integer (major type 0, or 1 when negative) or true/false, every
head in its shortest form (RFC 8949 §4.2.1), so it can be written and read directly.

Invariants, held as properties against the generic path (tests/test_wire_flat.py):
* `encode` returns exactly the generic path's bytes, or None (then the generic path encodes):
  None for any field whose value is not exactly of its declared type;
* `decode` returns exactly what the generic path returns for the same bytes, or None: for
  anything but the canonical encoding with every field within its Size or Range it returns
  None, never raises, so every verdict on a bad input (and its message) is the generic path's.
  What it accepts is an honest encoding of its type, which the generic decode budget admits by
  construction (wire.py "Cost invariant"); its own cost is linear in the number of fields.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from anonmail.wire_schema import U64, _Schema, _split

_BYTES, _INT, _BOOL = 0, 1, 2
_MAJOR_UINT, _MAJOR_NINT, _MAJOR_BYTES, _MAJOR_ARRAY = 0x00, 0x20, 0x40, 0x80
WIDTHS = {24: 1, 25: 2, 26: 4, 27: 8}  # a head's additional-info value -> argument bytes
SHORTEST = {1: 24, 2: 0x100, 4: 0x10000, 8: 0x100000000}  # least argument of each width
_TRUE, _FALSE = 0xF5, 0xF4


def head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type `major` with argument `n` (0 <= n < 2**64)."""
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major | 26,)) + n.to_bytes(4, "big")
    return bytes((major | 27,)) + n.to_bytes(8, "big")


_U64_END = 1 << 64  # CBOR's integer heads end here; beyond it wire needs a bignum


class FlatCodec:
    """The direct encoder and decoder of one flat message type (the module docstring)."""

    __slots__ = ("_cls", "_fields", "_names", "_prefix")

    def __init__(self, schema: _Schema, fields: tuple[tuple[int, int, int], ...]) -> None:
        assert schema.tag is not None
        self._cls = schema.cls
        self._names = schema.names
        self._fields = fields  # (kind, lo, hi) per field
        self._prefix = (head(_MAJOR_ARRAY, 2 + len(fields)) + head(_MAJOR_UINT, schema.tag)
                        + head(_MAJOR_UINT, schema.version))

    def encode(self, obj: Any) -> bytes | None:
        parts = [self._prefix]
        append = parts.append
        for name, (kind, _, _) in zip(self._names, self._fields, strict=True):
            v = getattr(obj, name)
            if kind == _BYTES:
                if type(v) is not bytes:
                    return None
                append(head(_MAJOR_BYTES, len(v)))
                append(v)
            elif kind == _INT:
                if type(v) is not int or not -_U64_END <= v < _U64_END:
                    return None
                append(head(_MAJOR_UINT, v) if v >= 0 else head(_MAJOR_NINT, -1 - v))
            else:
                if type(v) is not bool:
                    return None
                append(b"\xf5" if v else b"\xf4")
        return b"".join(parts)

    def decode(self, data: bytes) -> Any:
        """The message, or None (the module docstring)."""
        prefix = self._prefix
        if not data.startswith(prefix):
            return None
        pos = len(prefix)
        end = len(data)
        values: list[Any] = []
        append = values.append
        for kind, lo, hi in self._fields:
            if pos >= end:
                return None
            first = data[pos]
            pos += 1
            if kind == _BOOL:
                if first == _TRUE:
                    append(True)
                elif first == _FALSE:
                    append(False)
                else:
                    return None
                continue
            n = first & 0x1F
            if n >= 24:
                width = WIDTHS.get(n)
                if width is None or pos + width > end:
                    return None
                n = int.from_bytes(data[pos:pos + width], "big")
                if n < SHORTEST[width]:
                    return None
                pos += width
            major = first & 0xE0
            if kind == _BYTES:
                if major != _MAJOR_BYTES or not lo <= n <= hi or pos + n > end:
                    return None
                append(data[pos:pos + n])
                pos += n
            else:
                if major == _MAJOR_UINT:
                    v = n
                elif major == _MAJOR_NINT:
                    v = -1 - n
                else:
                    return None
                if not lo <= v <= hi:
                    return None
                append(v)
        if pos != end:
            return None
        return self._cls(*values)


def flat_codec(schema: _Schema) -> FlatCodec | None:
    """The direct codec for `schema`'s message type, or None if it is not flat (a struct, or
    any field that is not bytes, int or bool: text, tuples, optionals, enums, nested types)."""
    if schema.tag is None:
        return None
    fields: list[tuple[int, int, int]] = []
    for hint in schema.hints:
        tp, _, size, rng = _split(hint)
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            return None
        if tp is bytes and size is not None:
            fields.append((_BYTES, size.min, size.hi))
        elif tp is bool:
            fields.append((_BOOL, 0, 1))
        elif tp is int:  # exactly int: an IntEnum field is not flat
            r = rng or U64
            fields.append((_INT, r.lo, r.hi))
        else:
            return None
    return FlatCodec(schema, tuple(fields))


# The flat message types registered with wire, and their codecs: wire.encode and wire.decode
# try these first.
CODECS: dict[type, FlatCodec] = {}


def register(schema: _Schema) -> None:
    """Record (or forget, if it is not flat) the direct codec of a type wire just registered."""
    codec = flat_codec(schema)
    if codec is None:
        CODECS.pop(schema.cls, None)
    else:
        CODECS[schema.cls] = codec
