"""The vocabulary of wire schemas and the decode budget derived from them (cbor2-free; split
out of anonmail/wire.py, which compiles the schemas into codecs and is the one cbor2 user).

`Size`, `Range`, `Embedded` annotate fields; `_Schema` is a registered type's compiled schema,
`_SCHEMAS` and `_BY_TAG` the registry wire.py fills; `_budget_of` derives from a schema how many
wire_scan units an honest encoding of it can have (wire.py's module docstring, "Cost invariant").
Names keep their leading underscore: they are wire's internals, imported by wire.py alone.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anonmail import wire_scan
from anonmail.errors import LocalError, RemoteProtocolError
from anonmail.wire_scan import Budget, head_len


@dataclass(frozen=True, slots=True)
class Size:
    """Length bounds for bytes and str (in bytes / characters) and element count for tuples."""

    min: int
    max: int | None = None  # None: exactly `min`

    @property
    def hi(self) -> int:
        return self.min if self.max is None else self.max


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds for an int field."""

    lo: int
    hi: int


U64 = Range(0, (1 << 64) - 1)


@dataclass(frozen=True, slots=True)
class Embedded:
    """Marks a struct field that travels as a byte string holding the struct's canonical
    encoding, `size` bounding its length. Decoding goes through a memo keyed by those bytes, so
    a struct seen before costs a dict lookup instead of a decode, and yields the very object
    decoded before (issue 11: the certificates in FIND_NODE answers, where a client meets the
    same few hundred again and again). The bytes are decoded as any message is, pre-scan within
    the struct's own budget first, so the cost per byte stays bounded."""

    size: Size

_Decoder = Callable[[Any], Any]
_Encoder = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Schema:
    cls: type
    names: tuple[str, ...]
    decoders: tuple[_Decoder, ...]
    encoders: tuple[_Encoder, ...]
    tag: int | None
    version: int
    hints: tuple[Any, ...]  # the field annotations, for the decode budget


_SCHEMAS: dict[type, _Schema] = {}
_BY_TAG: dict[int, _Schema] = {}


def _fail(where: str, why: str) -> typing.NoReturn:
    raise RemoteProtocolError(f"{where}: {why}")


def _split(tp: Any) -> tuple[Any, tuple[Any, ...], Size | None, Range | None]:
    """An annotation's bare type, its metadata, and the Size and Range among them."""
    meta: tuple[Any, ...] = ()
    if typing.get_origin(tp) is typing.Annotated:
        tp, *rest = typing.get_args(tp)
        meta = tuple(rest)
    size = next((m for m in meta if isinstance(m, Size)), None)
    rng = next((m for m in meta if isinstance(m, Range)), None)
    return tp, meta, size, rng


def _optional_inner(tp: Any, meta: tuple[Any, ...], where: str) -> Any:
    """X of Optional[X], with the Optional's metadata carried over to X."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) != 1:
        raise LocalError(f"{where}: only Optional[X] unions are supported")
    return typing.Annotated[(args[0], *meta)] if meta else args[0]


def schema_of(cls: type) -> _Schema:
    try:
        return _SCHEMAS[cls]
    except KeyError:
        raise LocalError(f"{cls.__name__} is not registered with wire") from None


# ---------------------------------------------------------------------------------------------
# The decode budget: how many wire_scan units an honest encoding of a type can have


_BUDGETS: dict[type, Budget] = {}


def _budget_of(schema: _Schema, inside: tuple[type, ...] = ()) -> Budget:
    """A struct or message: the array of its fields (after tag and version for a message)."""
    cached = _BUDGETS.get(schema.cls)
    if cached is not None:
        return cached
    if schema.cls in inside:
        raise LocalError(f"{schema.cls.__name__}: a recursive schema has no decode budget")
    inside = (*inside, schema.cls)
    parts = [_type_budget(tp, f"{schema.cls.__name__}.{name}", inside)
             for tp, name in zip(schema.hints, schema.names, strict=True)]
    if schema.tag is not None:
        parts = [Budget.scalar(head_len(schema.tag)), Budget.scalar(head_len(schema.version)),
                 *parts]
    budget = Budget.array(parts)
    _BUDGETS[schema.cls] = budget
    return budget


def _type_budget(tp: Any, where: str, inside: tuple[type, ...]) -> Budget:
    """The budget of one annotated field type (mirrors _compile)."""
    tp, meta, size, rng = _split(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = _type_budget(_optional_inner(tp, meta, where), where, inside)
        return inner.either(Budget.scalar(1))  # null: one byte (RFC 8949 §3.3)
    if tp is bytes or tp is str:  # a str's Size counts characters: at least as many bytes
        assert size is not None  # _compile has refused the schema otherwise
        return Budget.scalar(head_len(size.min) + size.min)
    if tp is bool:
        return Budget.scalar(1)
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return Budget.scalar(min(wire_scan.int_len(v, v) for v in map(int, tp)))
    if tp is int:
        r = rng or U64
        return Budget.scalar(wire_scan.int_len(r.lo, r.hi))
    if origin is tuple:
        assert size is not None
        item = _type_budget(typing.get_args(tp)[0], where + "[]", inside)
        return item.repeated(size.min, size.hi)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        embedded = next((m for m in meta if isinstance(m, Embedded)), None)
        if embedded is not None:  # one byte string to the outer scan
            return Budget.scalar(head_len(embedded.size.min) + embedded.size.min)
        return _budget_of(schema_of(tp), inside)
    raise LocalError(f"{where}: unsupported field type {tp!r}")


def budget_of(cls: type) -> Budget:
    """The decode budget of a registered message or struct (for tests and the benchmark)."""
    return _budget_of(schema_of(cls))
