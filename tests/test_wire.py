"""Properties of the canonical wire format (anonmail.wire).

1. Every registered message type, and every struct reachable from one, round-trips
   encode → decode to an equal value; the strategies are built from the wire schema (the
   dataclass annotations), so message types added later are covered without touching this file.
2. The decoder raises only `RemoteProtocolError` on hostile input, and whatever it accepts is the
   one canonical encoding of what it returns: random bytes, mutations, truncations, trailing
   bytes, oversized input, deep nesting, wrong tags and versions, non-minimal heads, indefinite
   lengths, duplicate map keys, floats, semantic tags, invalid UTF-8, wrongly typed fields.

cbor2 is imported by anonmail.wire only (tests/test_layers.py); the hostile encodings here are
assembled by hand with the small encoder below (RFC 8949 §3, §4.2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import pkgutil
import struct
import types
import typing
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import anonmail
from anonmail import wire
from anonmail.errors import AnonmailError, RemoteProtocolError
from anonmail.wire import Range, Size


def _import_everything() -> dict[str, str]:
    """Import every anonmail module so every message type is registered; return failures."""
    failures: dict[str, str] = {}

    def onerror(name: str) -> None:
        failures[name] = "package failed to import"

    for info in pkgutil.walk_packages(anonmail.__path__, "anonmail.", onerror=onerror):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as e:  # reported by test_every_module_imports
            failures[info.name] = f"{type(e).__name__}: {e}"
    return failures


IMPORT_FAILURES = _import_everything()
MESSAGES: tuple[type, ...] = tuple(wire.registered_messages().values())
FEWER = settings(max_examples=max(20, settings().max_examples // 3))


def test_every_module_imports() -> None:
    assert not IMPORT_FAILURES, IMPORT_FAILURES


def test_registry_is_populated() -> None:
    names = {cls.__name__ for cls in MESSAGES}
    assert {"NodeCert", "AddressCert", "Receipt", "SealedKey", "ErrorReply", "FindNode",
            "Nodes"} <= names


# Tag ranges from anonmail/net/rpc.py, by the defining module's layer.
TAG_RANGES: dict[str, range] = {
    "anonmail.records": range(1, 10), "anonmail.crypto": range(1, 10),
    "anonmail.net": range(10, 20),
    "anonmail.dht": range(20, 30), "anonmail.store": range(30, 60),
    "anonmail.permit": range(60, 80), "anonmail.anon": range(80, 100),
    "anonmail.mail": range(100, 1 << 64),
}


def test_tags_are_in_their_layers_range() -> None:
    wrong = []
    for tag, cls in wire.registered_messages().items():
        for prefix, allowed in TAG_RANGES.items():
            in_layer = cls.__module__ == prefix or cls.__module__.startswith(prefix + ".")
            if in_layer and tag not in allowed:
                wrong.append(f"{cls.__module__}.{cls.__name__} has tag {tag}, "
                             f"expected {allowed.start}-{allowed.stop - 1}")
    assert not wrong, wrong


def test_a_tag_cannot_be_taken_twice() -> None:
    """Another class claiming a registered tag is our bug, even one with the same name."""
    from anonmail.errors import LocalError

    @dataclasses.dataclass(frozen=True)
    class NodeCert:
        x: int

    NodeCert.__qualname__ = "NodeCert"
    NodeCert.__module__ = "anonmail.elsewhere"
    with pytest.raises(LocalError, match="wire tag 1"):
        wire.message(tag=1)(NodeCert)
    assert wire.registered_messages()[1].__module__ == "anonmail.records.certs"


# ---------------------------------------------------------------------------------------------
# Strategies built from the schema


def _meta(tp: Any) -> tuple[Any, Size | None, Range | None]:
    meta: tuple[Any, ...] = ()
    if typing.get_origin(tp) is typing.Annotated:
        tp, *rest = typing.get_args(tp)
        meta = tuple(rest)
    size = next((m for m in meta if isinstance(m, Size)), None)
    rng = next((m for m in meta if isinstance(m, Range)), None)
    return tp, size, rng


def strategy_for_type(tp: Any, where: str) -> st.SearchStrategy[Any]:
    """A strategy for values the wire schema of annotation `tp` accepts (mirrors wire._compile).
    Lengths are capped so examples stay small; bounds themselves are still drawn."""
    bare, size, rng = _meta(tp)
    origin = typing.get_origin(bare)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(bare) if a is not type(None)]
        assert len(args) == 1, f"{where}: only Optional unions"
        inner = typing.Annotated[(args[0], *[m for m in (size, rng) if m])] if (size or rng) \
            else args[0]
        return st.none() | strategy_for_type(inner, where)
    if bare is bytes:
        assert size is not None, where
        return st.binary(min_size=size.min, max_size=min(size.hi, size.min + 40))
    if bare is str:
        assert size is not None, where
        return st.text(min_size=size.min, max_size=min(size.hi, size.min + 20))
    if bare is bool:
        return st.booleans()
    if isinstance(bare, type) and issubclass(bare, enum.IntEnum):
        return st.sampled_from(list(bare))
    if bare is int:
        r = rng or wire.U64
        return st.integers(r.lo, r.hi)
    if origin is tuple:
        item_tp, ellipsis = typing.get_args(bare)
        assert ellipsis is Ellipsis and size is not None, where
        item = strategy_for_type(item_tp, where + "[]")
        return st.lists(item, min_size=size.min, max_size=min(size.hi, size.min + 3)).map(tuple)
    if isinstance(bare, type) and dataclasses.is_dataclass(bare):
        return strategy_for(bare)
    raise AssertionError(f"{where}: wire type {bare!r} unknown to the strategy builder; "
                         "teach tests/test_wire.py::strategy_for_type about it")


def _construct(cls: type) -> Callable[..., Any]:
    def make(*args: Any) -> Any:
        try:
            return cls(*args)
        except (ValueError, TypeError, AnonmailError):  # a __post_init__ refused the values
            return None

    return make


@cache
def strategy_for(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [strategy_for_type(hints[f.name], f"{cls.__name__}.{f.name}")
              for f in dataclasses.fields(cls)]
    return st.builds(_construct(cls), *fields).filter(lambda v: v is not None)


def _reachable_structs() -> tuple[type, ...]:
    seen: dict[type, None] = {}

    def walk(tp: Any) -> None:
        bare, _, _ = _meta(tp)
        for arg in typing.get_args(bare):
            walk(arg)
        if isinstance(bare, type) and dataclasses.is_dataclass(bare) and bare not in seen:
            if bare not in MESSAGES:
                seen[bare] = None
            for hint in typing.get_type_hints(bare, include_extras=True).values():
                walk(hint)

    for cls in MESSAGES:
        for hint in typing.get_type_hints(cls, include_extras=True).values():
            walk(hint)
    return tuple(seen)


STRUCTS = _reachable_structs()
any_message = st.sampled_from(MESSAGES).flatmap(strategy_for)


# ---------------------------------------------------------------------------------------------
# A small hand-written CBOR encoder, canonical by default, with targeted deviations


def head(major: int, n: int, width: int | None = None) -> bytes:
    """The head of a data item; `width` forces 0 (inline), 1, 2, 4 or 8 argument bytes."""
    if width is None:
        width = 0 if n < 24 else 1 if n < 1 << 8 else 2 if n < 1 << 16 else 4 if n < 1 << 32 \
            else 8
    if width == 0:
        return bytes([major << 5 | n])
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | ai]) + n.to_bytes(width, "big")


def _wider(n: int) -> int | None:
    minimal = len(head(0, n)) - 1
    return next((w for w in (1, 2, 4, 8) if w > minimal), None)


Kind = str  # see Mutation.apply
KINDS = ("wide", "indef", "float64", "half", "undefined", "simple2", "dupmap", "unsorted",
         "badutf8", "tag")
SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 25, 28, 29, 30, 32, 33, 34, 35, 36, 37, 256,
                 258, 260, 261, 1001, 55799, 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1)


class Encoder:
    """Encodes a CBOR data-model value (None, bool, int, bytes, str, list, dict, float); if
    `target` is set, the `target`-th item in pre-order is encoded the `kind` way instead."""

    def __init__(self, target: int | None = None, kind: Kind = "", tag: int = 0) -> None:
        self.target, self.kind, self.tag = target, kind, tag
        self.index = 0
        self.applied = False

    def encode(self, v: Any) -> bytes:
        i = self.index
        self.index += 1
        if i == self.target:
            out = self._deviant(v)
            if out is not None:
                self.applied = True
                return out
        return self._plain(v)

    def _plain(self, v: Any, width: int | None = None) -> bytes:
        if v is None:
            return b"\xf6"
        if v is True:
            return b"\xf5"
        if v is False:
            return b"\xf4"
        if isinstance(v, int):
            n = v if v >= 0 else -1 - v
            if n >= 1 << 64:  # a bignum (RFC 8949 §3.4.3), canonical as cbor2 writes it
                return head(6, 2 if v >= 0 else 3) + self._plain(
                    n.to_bytes((n.bit_length() + 7) // 8, "big"))
            return head(0 if v >= 0 else 1, n, width)
        if isinstance(v, float):
            return b"\xfb" + struct.pack(">d", v)
        if isinstance(v, bytes):
            return head(2, len(v), width) + v
        if isinstance(v, str):
            raw = v.encode()
            return head(3, len(raw), width) + raw
        if isinstance(v, (list, tuple)):
            return head(4, len(v), width) + b"".join(self.encode(x) for x in v)
        if isinstance(v, dict):
            items = sorted((self.encode(k), self.encode(x)) for k, x in v.items())
            return head(5, len(items), width) + b"".join(k + x for k, x in items)
        raise TypeError(f"cannot encode {v!r}")

    def _deviant(self, v: Any) -> bytes | None:
        kind = self.kind
        if kind == "wide":
            if v is None or isinstance(v, bool):
                return b"\xf8" + self._plain(v)[-1:]  # a simple value < 32 in two bytes
            n = v if isinstance(v, int) and v >= 0 else -1 - v if isinstance(v, int) else \
                len(v.encode()) if isinstance(v, str) else len(v)
            w = _wider(n)
            return None if w is None else self._plain(v, w)
        if kind == "indef":
            if isinstance(v, bytes):
                return b"\x5f" + head(2, len(v)) + v + b"\xff"
            if isinstance(v, str):
                return b"\x7f" + head(3, len(v.encode())) + v.encode() + b"\xff"
            if isinstance(v, (list, tuple)):
                return b"\x9f" + b"".join(self.encode(x) for x in v) + b"\xff"
            return None
        if kind == "float64":  # a number that is not an int, non-minimally encoded
            return b"\xfb" + struct.pack(">d", float(v) if isinstance(v, int) and
                                         abs(v) < 1 << 53 else 0.5)
        if kind == "half":  # a canonical (shortest) float
            return b"\xf9\x3c\x00"
        if kind == "undefined":
            return b"\xf7"
        if kind == "simple2":
            return b"\xf8\x20"
        if kind == "dupmap":
            x = self._plain(v)
            return b"\xa2\x00" + x + b"\x00" + x
        if kind == "unsorted":
            x = self._plain(v)
            return b"\xa2\x01" + x + b"\x00" + x
        if kind == "badutf8":
            if not isinstance(v, str):
                return None
            raw = v.encode()
            bad = b"\xff" + raw[1:] if raw else b"\xc3"
            return head(3, len(bad)) + bad
        if kind == "tag":
            return head(6, self.tag) + self._plain(v)
        raise AssertionError(kind)


def cbor(v: Any) -> bytes:
    return Encoder().encode(v)


def count_items(v: Any) -> int:
    if isinstance(v, (list, tuple)):
        return 1 + sum(count_items(x) for x in v)
    if isinstance(v, dict):
        return 1 + sum(count_items(k) + count_items(x) for k, x in v.items())
    return 1


def accepted(data: bytes, allowed: tuple[type, ...] = MESSAGES) -> Any:
    """Decode with every registered type allowed. Only RemoteProtocolError may escape wire;
    anything it accepts must be the canonical encoding of what it returned."""
    try:
        value = wire.decode_any(data, allowed)
    except RemoteProtocolError:
        return None
    assert type(value) in allowed
    assert wire.encode(value) == data, "wire accepted a non-canonical encoding"
    return value


def assert_rejected(data: bytes, cls: type) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode(data, cls)
    with pytest.raises(RemoteProtocolError):
        wire.decode_any(data, MESSAGES)


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.threat("T-MALFORMED")
@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_message_roundtrip(cls: type, data: st.DataObject) -> None:
    msg = data.draw(strategy_for(cls))
    encoded = wire.encode(msg)
    assert wire.decode(encoded, cls) == msg
    assert wire.decode_any(encoded, MESSAGES) == msg
    assert wire.encode(wire.decode(encoded, cls)) == encoded
    # the value model is [tag, version, fields...], and the bytes are RFC 8949 deterministic
    value = wire.to_value(msg)
    assert value[0] == wire.schema_of(cls).tag and value[1] == wire.schema_of(cls).version
    assert cbor(value) == encoded


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
@FEWER
@given(data=st.data())
def test_struct_roundtrip(cls: type, data: st.DataObject) -> None:
    value = data.draw(strategy_for(cls))
    encoded = wire.encode(value)
    assert wire.decode(encoded, cls) == value
    assert cbor(wire.to_value(value)) == encoded


@FEWER
@given(any_message, st.data())
def test_signing_bytes_omit_only_the_signature(msg: Any, data: st.DataObject) -> None:
    names = wire.schema_of(type(msg)).names
    if "signature" not in names:
        return
    value = wire.to_value(msg)
    offset = 2
    idx = names.index("signature") + offset
    assert wire.signing_bytes(msg) == cbor(value[:idx] + value[idx + 1:])
    # changing the signature does not change what is signed
    other = dataclasses.replace(msg, signature=bytes(len(msg.signature)))
    assert wire.signing_bytes(other) == wire.signing_bytes(msg)


@FEWER
@given(any_message, st.sampled_from(MESSAGES))
def test_decode_refuses_other_types(msg: Any, expect: type) -> None:
    if type(msg) is expect:
        return
    with pytest.raises(RemoteProtocolError):
        wire.decode(wire.encode(msg), expect)
    with pytest.raises(RemoteProtocolError):
        wire.decode_any(wire.encode(msg), tuple(c for c in MESSAGES if c is not type(msg)))


# ---------------------------------------------------------------------------------------------
# Hostile input


@pytest.mark.threat("T-MALFORMED")
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    accepted(data)
    for cls in (MESSAGES[0], *STRUCTS[:1]):
        with contextlib.suppress(RemoteProtocolError):
            wire.decode(data, cls)


@pytest.mark.threat("T-MALFORMED")
@given(any_message, st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "set"]),
                                       st.integers(0, 1 << 16), st.integers(0, 255)),
                             min_size=1, max_size=4))
def test_mutated_encodings(msg: Any, edits: list[tuple[str, int, int]]) -> None:
    data = bytearray(wire.encode(msg))
    for op, pos, byte in edits:
        i = pos % (len(data) + 1)
        if op == "insert":
            data.insert(i, byte)
        elif data and i < len(data):
            if op == "delete":
                del data[i]
            elif op == "flip":
                data[i] ^= byte or 0x80
            else:
                data[i] = byte
    accepted(bytes(data))


@pytest.mark.threat("T-MALFORMED")
@given(any_message, st.data())
def test_truncated_encodings(msg: Any, data: st.DataObject) -> None:
    encoded = wire.encode(msg)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    assert_rejected(encoded[:cut], type(msg))


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_every_prefix_is_rejected(cls: type) -> None:
    msg = _example(cls)
    encoded = wire.encode(msg)
    for cut in range(len(encoded)):
        assert_rejected(encoded[:cut], cls)


def _example(cls: type) -> Any:
    """A deterministic, maximal-ish instance (every optional set, every tuple at its minimum+1)."""

    def value(tp: Any) -> Any:
        bare, size, rng = _meta(tp)
        origin = typing.get_origin(bare)
        if origin in (typing.Union, types.UnionType):
            inner = next(a for a in typing.get_args(bare) if a is not type(None))
            return value(typing.Annotated[(inner, *[m for m in (size, rng) if m])]
                         if (size or rng) else inner)
        if bare is bytes:
            assert size is not None
            return bytes(range(size.hi)) if size.hi <= 64 else b"\x01" * size.min
        if bare is str:
            assert size is not None
            return "é" * size.hi if size.hi <= 64 else "a" * size.min
        if bare is bool:
            return True
        if isinstance(bare, type) and issubclass(bare, enum.IntEnum):
            return max(bare)
        if bare is int:
            return (rng or wire.U64).hi
        if origin is tuple:
            assert size is not None
            return tuple(value(typing.get_args(bare)[0]) for _ in range(min(size.min + 1,
                                                                             size.hi)))
        if isinstance(bare, type) and dataclasses.is_dataclass(bare):
            return _example(bare)
        raise AssertionError(bare)

    hints = typing.get_type_hints(cls, include_extras=True)
    return cls(*[value(hints[f.name]) for f in dataclasses.fields(cls)])


@pytest.mark.threat("T-MALFORMED")
@given(any_message, st.binary(min_size=1, max_size=20))
def test_trailing_bytes(msg: Any, tail: bytes) -> None:
    assert_rejected(wire.encode(msg) + tail, type(msg))


@pytest.mark.threat("T-MALFORMED")
@FEWER
@given(any_message)
def test_size_cap(msg: Any) -> None:
    encoded = wire.encode(msg)
    assert wire.decode(encoded, type(msg), max_size=len(encoded)) == msg
    with pytest.raises(RemoteProtocolError):
        wire.decode(encoded, type(msg), max_size=len(encoded) - 1)
    with pytest.raises(RemoteProtocolError):
        wire.decode_any(encoded, MESSAGES, max_size=len(encoded) - 1)


@pytest.mark.threat("T-MALFORMED")
@pytest.mark.parametrize(
    "data",
    [
        bytes(wire.DEFAULT_MAX_SIZE + 1),
        head(2, wire.DEFAULT_MAX_SIZE) + bytes(wire.DEFAULT_MAX_SIZE),  # a 1 MiB byte string
        head(4, 1 << 20) + b"\x00" * (1 << 20),  # an array of a million items
    ],
    ids=["zeros", "bytestring", "array"],
)
def test_oversized_input(data: bytes) -> None:
    for cls in MESSAGES:
        with pytest.raises(RemoteProtocolError):
            wire.decode(data, cls)


@pytest.mark.parametrize(
    "data",
    [head(2, 1 << 62), head(3, (1 << 64) - 1), head(4, (1 << 64) - 1), head(5, 1 << 40),
     head(4, 1 << 27), head(2, 1 << 27) + b"x"],
    ids=["bytes-2^62", "text-2^64", "array-2^64", "map-2^40", "array-2^27", "bytes-2^27"],
)
def test_lengths_beyond_the_data(data: bytes) -> None:
    """A head may claim any length; nothing of that size is allocated or awaited."""
    assert_rejected(data, MESSAGES[0])


@pytest.mark.threat("T-MALFORMED")
@pytest.mark.parametrize("depth", [wire.MAX_DEPTH + 1, 100, 10_000, 200_000])
@pytest.mark.parametrize(
    ("opener", "leaf"),
    [(b"\x81", b"\x00"), (b"\xa1\x00", b"\x00"), (b"\xc6", b"\x00"), (b"\x9f", b""),
     (b"\xd8\x1c", b"\x00"), (b"\x82\x01", b"\x00")],
    ids=["arrays", "maps", "tags", "indefinite", "shareable", "pairs"],
)
def test_deep_nesting(depth: int, opener: bytes, leaf: bytes) -> None:
    assert_rejected(opener * depth + leaf, MESSAGES[0])


@pytest.mark.parametrize("depth", [wire.MAX_DEPTH + 1, 50_000])
@FEWER
@given(msg=any_message, data=st.data())
def test_deep_nesting_inside_a_message(depth: int, msg: Any, data: st.DataObject) -> None:
    value = wire.to_value(msg)
    if len(value) <= 2:
        value = [*value, None]
    i = data.draw(st.integers(2, len(value) - 1))
    deep = b"\x81" * depth + b"\x00"
    fields = [cbor(x) for x in value]
    fields[i] = deep
    assert_rejected(head(4, len(value)) + b"".join(fields), type(msg))


@pytest.mark.threat("T-MALFORMED")
@given(any_message, st.integers(-(1 << 64), (1 << 64) - 1))
def test_wrong_tags(msg: Any, tag: int) -> None:
    value = wire.to_value(msg)
    if tag == value[0]:
        return
    value[0] = tag
    assert_rejected(cbor(value), type(msg))
    if tag not in wire.registered_messages():
        with pytest.raises(RemoteProtocolError):
            wire.decode_any(cbor(value), MESSAGES)


@pytest.mark.threat("T-MALFORMED")
@given(any_message, st.integers(-(1 << 64), (1 << 64) - 1))
def test_wrong_versions(msg: Any, version: int) -> None:
    value = wire.to_value(msg)
    if version == value[1]:
        return
    value[1] = version
    assert_rejected(cbor(value), type(msg))


@pytest.mark.parametrize(
    "value",
    [[], [1], ["1", 1], [1, "1"], [1.0, 1], [True, 1], [None, None], [b"\x01", 1], {1: 1},
     1, "x", b"x", None],
    ids=repr,
)
def test_not_a_message_array(value: Any) -> None:
    assert_rejected(cbor(value), MESSAGES[0])


@pytest.mark.threat("T-MALFORMED")
@given(any_message, st.data())
def test_non_canonical_and_foreign_items(msg: Any, data: st.DataObject) -> None:
    """One item of a valid message encoded another way: a non-minimal head, an indefinite
    length, a float, undefined, a two-byte simple value, a map (duplicate or unsorted keys),
    invalid UTF-8 or a semantic tag. Every such encoding is refused."""
    value = wire.to_value(msg)
    target = data.draw(st.integers(0, count_items(value) - 1), label="target")
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    tag = data.draw(st.sampled_from(SEMANTIC_TAGS), label="tag") if kind == "tag" else 0
    enc = Encoder(target, kind, tag)
    encoded = enc.encode(value)
    assume(enc.applied)
    assert_rejected(encoded, type(msg))


@st.composite
def cbor_values(draw: st.DrawFn) -> Any:
    leaves = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
              | st.binary(max_size=40) | st.text(max_size=10)
              | st.floats(allow_nan=True, allow_infinity=True))
    return draw(st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(0, 3) | st.text(max_size=2), inner, max_size=3),
        max_leaves=12,
    ))


@pytest.mark.threat("T-MALFORMED")
@given(any_message, st.data(), cbor_values())
def test_wrongly_typed_fields(msg: Any, data: st.DataObject, junk: Any) -> None:
    """A valid message with one item swapped for arbitrary CBOR: refused, or (if the item
    happens to fit the schema) accepted only in canonical form."""
    value = wire.to_value(msg)
    paths = list(_paths(value))
    path = data.draw(st.sampled_from(paths))
    replaced = _replace(value, path, junk)
    accepted(cbor(replaced))


def _paths(v: Any, prefix: tuple[int, ...] = ()) -> Iterator[tuple[int, ...]]:
    yield prefix
    if isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, (*prefix, i))


def _replace(v: Any, path: tuple[int, ...], new: Any) -> Any:
    if not path:
        return new
    out = list(v)
    out[path[0]] = _replace(v[path[0]], path[1:], new)
    return out


@pytest.mark.threat("T-MALFORMED")
@given(st.sampled_from(MESSAGES), cbor_values())
def test_random_values_under_a_valid_tag(cls: type, junk: Any) -> None:
    schema = wire.schema_of(cls)
    fields = junk if isinstance(junk, list) else [junk]
    accepted(cbor([schema.tag, schema.version, *fields]))


INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
                b"\xe0\x80\xaf", b"a\x80", b"\xf8\x88\x80\x80\x80"]


@pytest.mark.threat("T-MALFORMED")
@pytest.mark.parametrize("bad", INVALID_UTF8, ids=lambda b: b.hex())
def test_invalid_utf8_in_a_text_field(bad: bytes) -> None:
    from anonmail.net.rpc import ErrorCode, ErrorReply

    value = wire.to_value(ErrorReply(ErrorCode.REFUSED, "x"))
    # array head, tag, version, code, then a text string holding the bad bytes
    encoded = head(4, len(value)) + b"".join(cbor(x) for x in value[:-1]) + head(3, len(bad)) \
        + bad
    assert_rejected(encoded, ErrorReply)


@pytest.mark.threat("T-MALFORMED")
@pytest.mark.parametrize(
    "item",
    [b"\xf9\x7e\x00", b"\xf9\x7c\x00", b"\xf9\x80\x00", b"\xfa\x3f\x80\x00\x00",
     b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00", b"\xc1\x1a\x00\x00\x00\x01", b"\xc0\x61x",
     b"\xc2\x41\x01", b"\xd8\x25\x50" + bytes(16), b"\xd9\xd9\xf7\x01", b"\xd8\x18\x41\x00",
     b"\xd9\x01\x02\x80", b"\xd8\x1e\x82\x01\x02", b"\xd8\x23\x61a", b"\xd8\x24\x60",
     b"\xf7", b"\xf8\xff", b"\xe0", b"\x1c", b"\xff", b"\x5f\xff", b"\x7f\xff", b"\x9f\xff",
     b"\xbf\xff", b"\xa2\x00\x00\x00\x00", b"\xa2\x01\x00\x00\x00"],
    ids=lambda b: b.hex(),
)
def test_foreign_items_as_whole_input_and_as_a_field(item: bytes) -> None:
    """Floats (NaN, inf, -0.0, single, double), semantic tags (epoch and text datetimes,
    bignums, UUID, self-describe, embedded CBOR, sets, rationals, regex, MIME), undefined,
    simple values, reserved and break codes, indefinite lengths, duplicate and unsorted keys."""
    assert_rejected(item, MESSAGES[0])
    from anonmail.dht.messages import FindNode

    value = wire.to_value(FindNode(bytes(32), 3))
    for i in range(len(value)):
        fields = [cbor(x) for x in value]
        fields[i] = item
        assert_rejected(head(4, len(value)) + b"".join(fields), FindNode)


_T32 = b"\x58\x20" + bytes(32)  # the target: a 32-byte byte string
FIND_NODE_CASES = {
    "reference": b"\x84\x16\x01" + _T32 + b"\x03",  # FindNode(bytes(32), 3), valid
    "tag-2-bytes": b"\x84\x18\x16\x01" + _T32 + b"\x03",
    "version-2-bytes": b"\x84\x16\x18\x01" + _T32 + b"\x03",
    "length-3-bytes": b"\x84\x16\x01\x59\x00\x20" + bytes(32) + b"\x03",
    "count-2-bytes": b"\x84\x16\x01" + _T32 + b"\x18\x03",
    "count-9-bytes": b"\x84\x16\x01" + _T32 + b"\x1b" + (3).to_bytes(8, "big"),
    "array-head-2-bytes": b"\x98\x04\x16\x01" + _T32 + b"\x03",
    "indefinite-array": b"\x9f\x16\x01" + _T32 + b"\x03\xff",
    "indefinite-bytes": b"\x84\x16\x01\x5f" + _T32 + b"\xff\x03",
    "chunked-bytes": b"\x84\x16\x01\x5f\x50" + bytes(16) + b"\x50" + bytes(16) + b"\xff\x03",
    "trailing-byte": b"\x84\x16\x01" + _T32 + b"\x03\x00",
    "count-as-double": b"\x84\x16\x01" + _T32 + b"\xfb\x40\x08" + bytes(6),
    "count-as-half": b"\x84\x16\x01" + _T32 + b"\xf9\x42\x00",
    "count-as-bignum": b"\x84\x16\x01" + _T32 + b"\xc2\x41\x03",
    "target-as-text": b"\x84\x16\x01\x78\x20" + bytes(32) + b"\x03",
    "count-as-true": b"\x84\x16\x01" + _T32 + b"\xf5",
    "count-negative": b"\x84\x16\x01" + _T32 + b"\x22",
    "target-31-bytes": b"\x84\x16\x01\x58\x1f" + bytes(31) + b"\x03",
    "version-2": b"\x84\x16\x02" + _T32 + b"\x03",
    "field-missing": b"\x83\x16\x01" + _T32,
    "field-extra": b"\x85\x16\x01" + _T32 + b"\x03\x03",
    "count-65-over-max": b"\x84\x16\x01" + _T32 + b"\x18\x41",
}


@pytest.mark.threat("T-MALFORMED")
@pytest.mark.parametrize("case", sorted(FIND_NODE_CASES))
def test_hand_assembled_find_node(case: str) -> None:
    """Non-minimal heads, indefinite lengths, trailing bytes, floats, tags and wrong types, one
    at a time, in a message small enough to read."""
    from anonmail.dht.messages import FindNode

    encoded = FIND_NODE_CASES[case]
    assert wire.encode(FindNode(bytes(32), 3)) == FIND_NODE_CASES["reference"]
    if case == "reference":
        assert wire.decode(encoded, FindNode) == FindNode(bytes(32), 3)
    else:
        assert_rejected(encoded, FindNode)


def test_decode_rejects_non_bytes_as_our_bug() -> None:
    from anonmail.errors import LocalError

    with pytest.raises(LocalError):
        wire.decode("not bytes", MESSAGES[0])  # type: ignore[arg-type]
    view = memoryview(wire.encode(_example(MESSAGES[0])))
    assert wire.decode(view, MESSAGES[0]) == _example(MESSAGES[0])  # type: ignore[arg-type]
