"""The wire decoder on hostile input (anonmail.wire).

It raises only `RemoteProtocolError`, and whatever it accepts is the one canonical encoding of
what it returns: random bytes, mutations, truncations and every prefix, trailing bytes, oversized
input, lengths beyond the data, deep nesting (alone and inside a message), wrong tags and
versions, values that are not a message array; bytes that are not bytes are our bug.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import types
import typing
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from wiregen import (
    FEWER,
    MESSAGES,
    STRUCTS,
    accepted,
    any_message,
    assert_rejected,
    cbor,
    head,
    split_meta,
)

from anonmail import wire
from anonmail.anon.messages import FindNodes
from anonmail.errors import RemoteProtocolError


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
        bare, size, rng = split_meta(tp)
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
@example(FindNodes(bytes(32), 1), 25)  # anon's FindNodes has the fields of the DHT's FindTags
def test_wrong_tags(msg: Any, tag: int) -> None:
    """A message under another type's tag is never read as its own type. Under an unknown
    tag nothing reads it; under a known one it is either refused or read as that type (two
    types may have the same fields: then the bytes are simply that other message)."""
    value = wire.to_value(msg)
    if tag == value[0]:
        return
    value[0] = tag
    data = cbor(value)
    with pytest.raises(RemoteProtocolError):
        wire.decode(data, type(msg))
    other = wire.registered_messages().get(tag)
    if other is None:
        with pytest.raises(RemoteProtocolError):
            wire.decode_any(data, MESSAGES)
    else:
        got = accepted(data)
        assert got is None or type(got) is other


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


def test_decode_rejects_non_bytes_as_our_bug() -> None:
    from anonmail.errors import LocalError

    with pytest.raises(LocalError):
        wire.decode("not bytes", MESSAGES[0])  # type: ignore[arg-type]
    view = memoryview(wire.encode(_example(MESSAGES[0])))
    assert wire.decode(view, MESSAGES[0]) == _example(MESSAGES[0])  # type: ignore[arg-type]
