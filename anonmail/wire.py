"""Canonical CBOR encoding; the ONLY module that imports `cbor2`.

A message type is a frozen dataclass registered with `@message(tag)`; a nested structure with
`@struct`. Field annotations carry the schema: `Annotated[bytes, Size(32)]`, `Annotated[int,
Range(0, 65535)]`, `Annotated[tuple[X, ...], Size(0, 20)]`, `Optional[X]`, `IntEnum`s, `bool`, and
other structs. On the wire a message is the CBOR array `[tag, version, field1, field2, ...]`, a
struct the array of its fields.

Decoding is, in order: size cap → type tag read from the first two heads (the message type
decides the budget) → cost pre-scan (wire_scan.scan: every head walked, no object built; maps,
tags, floats, indefinite lengths, non-minimal heads, trailing bytes, depth beyond MAX_DEPTH and
more units of work than the type's `Budget` allows for the input's size are refused, so every
value has exactly one encoding and signatures over canonical bytes are unambiguous) → CBOR
parse with a depth cap → schema → frozen dataclass. Any failure on the way raises
`RemoteProtocolError`, never anything else. Flat messages (every field bytes, int or bool) are
written and read directly when they are canonical and in range (wire_flat.py), with exactly
the same bytes and results; anything else takes the path above.

Cost invariant (docs/protocol.md "Decode cost"): the CPU spent on an input is bounded by a
constant times the units the pre-scan let through, and the units are bounded by what an honest
encoding of the same size and type can have: `Budget` is derived from the schema itself (field
types, Size and Range bounds), so every honest encoding passes by construction and no input
costs more per byte than the densest honest encoding of its type.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import cbor2

from anonmail import wire_flat, wire_scan
from anonmail.errors import LocalError
from anonmail.wire_schema import (  # re-exported: field annotations are written wire.Size etc.
    _BUDGETS,
    _BY_TAG,
    _SCHEMAS,
    U64,
    Embedded,
    Range,
    Size,
    _budget_of,
    _Decoder,
    _Encoder,
    _fail,
    _optional_inner,
    _Schema,
    _split,
    budget_of,
    schema_of,
)

__all__ = ["U64", "Embedded", "Range", "Size", "budget_of", "cached", "decode", "decode_any",
           "encode", "message", "registered_messages", "schema_of", "signing_bytes", "struct",
           "to_value"]

T = TypeVar("T")
MAX_DEPTH = 24
DEFAULT_MAX_SIZE = 1 << 20


def _compile(tp: Any, where: str) -> tuple[_Decoder, _Encoder]:
    """Build (decoder, encoder) for one annotated field type."""
    tp, meta, size, rng = _split(tp)
    origin = typing.get_origin(tp)

    if origin in (typing.Union, types.UnionType):
        dec, enc = _compile(_optional_inner(tp, meta, where), where)
        return (lambda v: None if v is None else dec(v)), (lambda v: None if v is None else enc(v))

    if tp is bytes or tp is str:
        if size is None:
            raise LocalError(f"{where}: {tp.__name__} fields need a Size")
        lo, hi = size.min, size.hi
        expected = "expected bytes" if tp is bytes else "expected text"

        def dec_sized(v: Any) -> Any:
            if type(v) is not tp:
                _fail(where, expected)
            if not lo <= len(v) <= hi:
                _fail(where, f"length {len(v)} outside [{lo}, {hi}]")
            return v

        return dec_sized, lambda v: v

    if tp is bool:

        def dec_bool(v: Any) -> bool:
            if type(v) is not bool:
                _fail(where, "expected bool")
            return bool(v)

        return dec_bool, lambda v: v

    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        enum_tp = tp

        def dec_enum(v: Any) -> Any:
            if type(v) is not int:
                _fail(where, "expected enum int")
            try:
                return enum_tp(v)
            except ValueError:
                _fail(where, f"unknown {enum_tp.__name__} {v}")

        return dec_enum, lambda v: int(v)

    if tp is int:
        r = rng or U64
        if r.lo < -(1 << 64) or r.hi >= 1 << 64:  # beyond that CBOR needs a bignum tag (§3.4.3)
            raise LocalError(f"{where}: int ranges end within 64 bits (wire_scan refuses tags)")

        def dec_int(v: Any) -> int:
            if type(v) is not int:
                _fail(where, "expected int")
            if not r.lo <= v <= r.hi:
                _fail(where, f"{v} outside [{r.lo}, {r.hi}]")
            return int(v)

        return dec_int, lambda v: v

    if origin is tuple:
        targs = typing.get_args(tp)
        if len(targs) != 2 or targs[1] is not Ellipsis:
            raise LocalError(f"{where}: only tuple[X, ...] is supported")
        if size is None:
            raise LocalError(f"{where}: tuple fields need a Size")
        lo, hi = size.min, size.hi
        item_dec, item_enc = _compile(targs[0], where + "[]")

        def dec_tuple(v: Any) -> tuple[Any, ...]:
            if type(v) is not list:
                _fail(where, "expected array")
            if not lo <= len(v) <= hi:
                _fail(where, f"{len(v)} items outside [{lo}, {hi}]")
            return tuple(item_dec(x) for x in v)

        return dec_tuple, lambda v: [item_enc(x) for x in v]

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        nested = tp

        def dec_struct(v: Any) -> Any:
            return _decode_fields(schema_of(nested), v, where)

        embedded = next((m for m in meta if isinstance(m, Embedded)), None)
        if embedded is not None:
            return _embedded_decoder(nested, embedded.size, where), _nested_bytes
        if nested in _CACHED:
            return dec_struct, lambda v: _Raw(_nested_bytes(v))
        return dec_struct, lambda v: _encode_fields(schema_of(nested), v)

    raise LocalError(f"{where}: unsupported field type {tp!r}")


def _register(cls: type[T], tag: int | None, version: int) -> type[T]:
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise LocalError(f"{cls.__name__} must be a frozen dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    pairs = [_compile(hints[f.name], f"{cls.__name__}.{f.name}") for f in fields]
    schema = _Schema(
        cls=cls,
        names=tuple(f.name for f in fields),
        decoders=tuple(p[0] for p in pairs),
        encoders=tuple(p[1] for p in pairs),
        tag=tag,
        version=version,
        hints=tuple(hints[f.name] for f in fields),
    )
    _SCHEMAS[cls] = schema
    wire_flat.register(schema)
    _BUDGETS.clear()  # a re-registered class may change the budget of any type holding it
    if tag is not None:
        # the same class re-registered (a module reloaded) is fine; another class is not, even
        # one of the same name in another module
        old = _BY_TAG[tag].cls if tag in _BY_TAG else cls
        if (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise LocalError(f"wire tag {tag} used by {old.__module__}.{old.__qualname__} "
                             f"and {cls.__module__}.{cls.__qualname__}")
        _BY_TAG[tag] = schema
    return cls


def struct(cls: type[T]) -> type[T]:
    """Register a frozen dataclass as a nested wire structure (encoded as an array)."""
    return _register(cls, None, 1)


def message(tag: int, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Register a frozen dataclass as a top-level message with a unique type tag."""

    def deco(cls: type[T]) -> type[T]:
        return _register(cls, tag, version)

    return deco


# Types whose nested encoding is remembered per object (`cached`): a NodeCert is encoded once,
# however many FIND_NODE answers carry it (issue 11). Keyed by id(), with a weak reference to
# the object: an entry goes when its object does (an id is reused only after that), so equal
# objects decoded again and again (a guard file each session, certificates in circuit
# answers) are not kept alive by the cache; it holds the encodings of live objects only.
# FIFO-bounded as well, since a miss costs only a re-encoding.
_CACHED: set[type] = set()
# OrderedDicts: popping a plain dict's first key again and again is O(n) in CPython (the
# deleted slots at the front are scanned each time).
_NESTED: OrderedDict[int, tuple[weakref.ref[Any], bytes]] = OrderedDict()
MAX_CACHED_ENCODINGS = 65_536


class _Raw:
    """Bytes already in canonical CBOR, written as they are into an enclosing encoding."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _write_raw(encoder: Any, value: Any) -> None:
    if type(value) is not _Raw:
        raise LocalError(f"cannot encode {type(value).__name__}")
    encoder.write(value.data)


def cached(cls: type[T]) -> type[T]:
    """Remember the nested encoding of each object of this registered, immutable type (apply
    after `message` / `struct`, before any type holding it is registered). The type must take
    weak references (`@dataclass(..., weakref_slot=True)` with slots)."""
    schema_of(cls)
    if not hasattr(cls, "__weakref__"):
        raise LocalError(f"{cls.__name__}: a cached type needs weakref_slot=True")
    _CACHED.add(cls)
    return cls


def _nested_bytes(obj: Any) -> bytes:
    key = id(obj)
    hit = _NESTED.get(key)
    if hit is not None and hit[0]() is obj:
        return hit[1]
    data = _dumps(_encode_fields(schema_of(type(obj)), obj))
    if len(_NESTED) >= MAX_CACHED_ENCODINGS:
        _NESTED.popitem(last=False)
    _NESTED[key] = (weakref.ref(obj, lambda ref: _forget(key, ref)), data)
    return data


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    """An object whose encoding is cached has gone: drop its entry (unless the id was reused
    and re-entered since, or the entry was evicted)."""
    hit = _NESTED.get(key)
    if hit is not None and hit[0] is ref:
        del _NESTED[key]


# Decoded embedded structs, by their bytes, least recently used first: a node's routing
# certificates come back in answer after answer and stay; one-off certificates (other users'
# session keys) age out first.
_EMBEDDED: dict[type, OrderedDict[bytes, Any]] = {}
MAX_EMBEDDED = 32_768  # per type: a 10,000-node network's certificates, with room (~20 MB)


def _embedded_decoder(cls: type, size: Size, where: str) -> _Decoder:
    lo, hi = size.min, size.hi
    memo = _EMBEDDED.setdefault(cls, OrderedDict())

    def dec_embedded(v: Any) -> Any:
        if type(v) is not bytes:
            _fail(where, "expected an embedded encoding (bytes)")
        hit = memo.get(v)
        if hit is not None:
            memo.move_to_end(v)
            return hit
        if not lo <= len(v) <= hi:
            _fail(where, f"embedded length {len(v)} outside [{lo}, {hi}]")
        schema = schema_of(cls)
        obj = _decode_fields(schema, _parse(v, schema), where)
        if len(memo) >= MAX_EMBEDDED:
            memo.popitem(last=False)
        memo[v] = obj
        return obj

    return dec_embedded


def _encode_fields(schema: _Schema, obj: Any) -> list[Any]:
    return [enc(getattr(obj, n)) for n, enc in zip(schema.names, schema.encoders, strict=True)]


def _decode_fields(schema: _Schema, v: Any, where: str) -> Any:
    if type(v) is not list:
        _fail(where, f"{schema.cls.__name__}: expected array")
    if len(v) != len(schema.names):
        _fail(where, f"{schema.cls.__name__}: {len(v)} fields, expected {len(schema.names)}")
    return schema.cls(*[dec(x) for dec, x in zip(schema.decoders, v, strict=True)])


def _dumps(value: Any) -> bytes:
    return bytes(cbor2.dumps(value, canonical=True, default=_write_raw))


def _value(obj: Any) -> list[Any]:
    """What `encode` dumps: the value, with cached nested encodings as `_Raw`."""
    schema = schema_of(type(obj))
    if schema.tag is None:
        return _encode_fields(schema, obj)
    return [schema.tag, schema.version, *_encode_fields(schema, obj)]


def to_value(obj: Any) -> list[Any]:
    """The CBOR data model value of a registered message (array with tag and version)."""
    return typing.cast(list[Any], cbor2.loads(encode(obj)))


def encode(obj: Any) -> bytes:
    """Canonical bytes of a registered message or struct."""
    flat = wire_flat.CODECS.get(type(obj))  # a flat message: written directly (wire_flat.py)
    if flat is not None:
        data = flat.encode(obj)
        if data is not None:
            return data
    return _dumps(_value(obj))


def signing_bytes(obj: Any, exclude: str = "signature") -> bytes:
    """Canonical bytes of a record without its signature field: what its signer signs."""
    schema = schema_of(type(obj))
    value = [
        enc(getattr(obj, n))
        for n, enc in zip(schema.names, schema.encoders, strict=True)
        if n != exclude
    ]
    if schema.tag is not None:
        value = [schema.tag, schema.version, *value]
    return _dumps(value)


# ---------------------------------------------------------------------------------------------
# Decoding


def _checked(data: bytes, max_size: int) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LocalError("decode takes bytes")
    data = bytes(data)
    if len(data) > max_size:
        _fail("wire", f"{len(data)} bytes exceeds the cap of {max_size}")
    return data


def _pick(data: bytes, table: dict[int, _Schema]) -> _Schema:
    """The schema a message names by its tag (read from its first two heads), before any work."""
    tag = wire_scan.peek_tag(data)
    if tag is None:
        _fail("wire", "a message is an array [tag, version, ...]")
    schema = table.get(tag)
    if schema is None:
        _fail("wire", f"unexpected message tag {tag}")
    return schema


def _parse(data: bytes, schema: _Schema) -> Any:
    """Pre-scan within `schema`'s budget, then parse.

    The pre-scan is also the canonical-form check: it refuses every head that is not the
    shortest form of its argument, indefinite lengths, maps, tags, floats, simple values other
    than false/true/null and trailing bytes, and cbor2 refuses text that is not UTF-8; what is
    left has exactly one encoding (RFC 8949 §4.2.1), so re-encoding the parsed value to compare
    (what this did before issue 11, a third of the cost of decoding a FIND_NODE answer) cannot
    fail. tests/test_wire_canonical.py holds that equivalence as a property."""
    wire_scan.scan(data, _budget_of(schema).limit(len(data)), MAX_DEPTH)
    try:
        return cbor2.loads(data, max_depth=MAX_DEPTH, allow_indefinite=False,
                           allow_duplicate_keys=False)
    except RecursionError:
        _fail("wire", "nesting too deep")
    except Exception as e:  # cbor2 raises many types on hostile input; all are the peer's fault
        _fail("wire", f"malformed CBOR ({type(e).__name__})")


def decode(data: bytes, expect: type[T], *, max_size: int = DEFAULT_MAX_SIZE) -> T:
    """Decode one message of type `expect` (or a struct encoded on its own)."""
    flat = wire_flat.CODECS.get(expect)  # a flat message: read directly unless it is unusual
    if flat is not None and type(data) is bytes and len(data) <= max_size:
        obj = flat.decode(data)
        if obj is not None:
            return typing.cast(T, obj)
    data = _checked(data, max_size)
    schema = schema_of(expect)
    if schema.tag is None:
        return typing.cast(T, _decode_fields(schema, _parse(data, schema), expect.__name__))
    table = {schema.tag: schema}
    return typing.cast(T, _decode_tagged(_parse(data, _pick(data, table)), table))


def decode_any(data: bytes, allowed: tuple[type, ...], *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Decode one message whose type is any of `allowed` (dispatch on the tag)."""
    data = _checked(data, max_size)
    table = {}
    for cls in allowed:
        s = schema_of(cls)
        if s.tag is None:
            raise LocalError("decode_any takes tagged messages")
        table[s.tag] = s
    return _decode_tagged(_parse(data, _pick(data, table)), table)


def _decode_tagged(value: Any, table: dict[int, _Schema]) -> Any:
    if type(value) is not list or len(value) < 2:
        _fail("wire", "a message is an array [tag, version, ...]")
    tag, version = value[0], value[1]
    if type(tag) is not int or type(version) is not int:
        _fail("wire", "tag and version are integers")
    schema = table.get(tag)
    if schema is None:
        _fail("wire", f"unexpected message tag {tag}")
    if version != schema.version:
        _fail("wire", f"{schema.cls.__name__} version {version} not supported")
    return _decode_fields(schema, value[2:], schema.cls.__name__)


def registered_messages() -> dict[int, type]:
    """Every registered top-level message by tag (for docs and property tests)."""
    return {tag: s.cls for tag, s in sorted(_BY_TAG.items())}
