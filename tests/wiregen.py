"""Generators for the wire-format tests (tests/test_wire_*.py).

Every anonmail module is imported, so every message type is registered (`MESSAGES`); hypothesis
strategies are built from the wire schema (the dataclass annotations), so message types added
later are covered without touching the tests; and a small hand-written CBOR encoder (RFC 8949 §3,
§4.2), canonical by default, assembles the hostile encodings with targeted deviations (cbor2 is
imported by anonmail.wire only: tests/test_layers.py). `accepted` and `assert_rejected` are the
two judgements the tests make of the decoder.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import pkgutil
import struct
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from hypothesis import assume, settings
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


# ---------------------------------------------------------------------------------------------
# Strategies built from the schema


def split_meta(tp: Any) -> tuple[Any, Size | None, Range | None]:
    """An annotation's bare type, and its Size and Range (None where absent)."""
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
    bare, size, rng = split_meta(tp)
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
                         "teach tests/wiregen.py::strategy_for_type about it")


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
        bare, _, _ = split_meta(tp)
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


def rewrite_one_item(msg: Any, data: st.DataObject) -> bytes:
    """`msg` encoded with one item written another way (a `KINDS` deviation: a non-minimal
    head, an indefinite length, a float, undefined, a two-byte simple value, a map, invalid
    UTF-8 or a semantic tag); draws where no deviation applies are discarded."""
    value = wire.to_value(msg)
    target = data.draw(st.integers(0, count_items(value) - 1), label="target")
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    tag = data.draw(st.sampled_from(SEMANTIC_TAGS), label="tag") if kind == "tag" else 0
    enc = Encoder(target, kind, tag)
    encoded = enc.encode(value)
    assume(enc.applied)
    return encoded


# Up to three byte edits of an encoding: (what, where, byte), applied by `apply_edits`.
EDITS = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "cut"]),
                           st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=3)


def apply_edits(encoded: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(encoded)
    for what, at, byte in edits:
        at %= len(data) + 1
        if what == "flip" and at < len(data):
            data[at] ^= byte or 1
        elif what == "insert":
            data[at:at] = bytes([byte])
        elif what == "delete" and at < len(data):
            del data[at]
        elif what == "cut":
            del data[at:]
    return bytes(data)


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
