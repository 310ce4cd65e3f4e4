"""The decode budget (wire_scan, wire.budget_of): no honest encoding is refused, hostile shapes
are refused before they are built, and the budget arithmetic never under-estimates.

The cost claim itself (hostile CPU per byte within 10x the densest honest request's) is measured
by `anonmail bench decode` (a command, not a timed test); here its hostile inputs are checked to
be refused and its honest ones to decode, so the benchmark measures what it says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import types
import typing
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wiregen import MESSAGES, any_message, split_meta

from anonmail import wire, wire_scan
from anonmail.errors import RemoteProtocolError
from anonmail.experiments.bench import decode as bench
from anonmail.net import rpc

BIG = 1 << 40


def _units(data: bytes) -> int:
    return wire_scan.scan(data, BIG, wire.MAX_DEPTH)


@pytest.mark.threat("T-DECODE-COST")
@given(any_message)
def test_every_honest_encoding_fits_its_budget(msg: Any) -> None:
    data = wire.encode(msg)
    assert _units(data) <= wire.budget_of(type(msg)).limit(len(data))


def _densest(tp: Any, count: int) -> Any:
    """The value of annotation `tp` with the most items per byte: shortest strings and ints,
    None for Optionals, `count` items in every tuple (clamped to its Size)."""
    bare, size, rng = split_meta(tp)
    origin = typing.get_origin(bare)
    if origin in (typing.Union, types.UnionType):
        return None
    if bare is bytes:
        assert size is not None
        return bytes(size.min)
    if bare is str:
        assert size is not None
        return "a" * size.min
    if bare is bool:
        return False
    if isinstance(bare, type) and issubclass(bare, enum.IntEnum):
        return min(bare, key=lambda v: wire_scan.int_len(int(v), int(v)))
    if bare is int:
        r = rng or wire.U64
        return 0 if r.lo <= 0 <= r.hi else (r.lo if r.lo > 0 else r.hi)
    if origin is tuple:
        assert size is not None
        n = max(size.min, min(count, size.hi))
        return tuple(_densest(typing.get_args(bare)[0], count) for _ in range(n))
    assert isinstance(bare, type) and dataclasses.is_dataclass(bare)
    hints = typing.get_type_hints(bare, include_extras=True)
    return bare(*[_densest(hints[f.name], count) for f in dataclasses.fields(bare)])


@pytest.mark.parametrize("count", [0, 1, 24, 100])
@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_the_densest_honest_encoding_fits_its_budget(cls: type, count: int) -> None:
    try:
        msg = _densest(cls, count)
    except (ValueError, TypeError):  # a __post_init__ refuses the degenerate values
        pytest.skip(f"{cls.__name__} refuses its densest values")
    data = wire.encode(msg)
    assert _units(data) <= wire.budget_of(cls).limit(len(data))
    assert wire.decode(data, cls, max_size=len(data)) == msg


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 200)), min_size=1, max_size=6),
       st.integers(0, 30), st.integers(0, 30), st.integers(0, 5000))
def test_budget_arithmetic_never_under_estimates(parts: list[tuple[int, int]], lo: int,
                                                 extra: int, size: int) -> None:
    """An array of fields, repeated lo..hi times: units and the d*u - b slack bound every
    concrete shape (checked by building the shape's size and units directly)."""
    hi = lo + extra
    field_budgets = [wire_scan.Budget.scalar(b) for b, _ in parts]
    struct = wire_scan.Budget.array(field_budgets)
    rep = struct.repeated(lo, hi)
    field_bytes = sum(b + pad for b, pad in parts)
    for n in {lo, hi, (lo + hi) // 2}:
        struct_bytes = wire_scan.head_len(len(parts)) + field_bytes
        units = wire_scan.ARRAY_UNITS + n * (wire_scan.ARRAY_UNITS + len(parts))
        nbytes = wire_scan.head_len(n) + n * struct_bytes
        assert units <= rep.units
        assert units <= rep.limit(nbytes)
    assert rep.limit(size) <= rep.units


HOSTILE_ITEMS = {
    "a map": bytes([0xA0]),
    "a tag": bytes([0xC2, 0x41, 0x01]),
    "a float": bytes([0xF9, 0x00, 0x00]),
    "undefined": bytes([0xF7]),
    "an indefinite array": bytes([0x9F, 0xFF]),
    "an indefinite string": bytes([0x5F, 0xFF]),
    "a break": bytes([0xFF]),
    "reserved information": bytes([0x1C]),
    "a non-minimal int": bytes([0x18, 0x05]),
    "a non-minimal length": bytes([0x59, 0x00, 0x01, 0x00]),
}


@pytest.mark.threat("T-DECODE-COST")
@pytest.mark.parametrize("name", sorted(HOSTILE_ITEMS))
def test_what_no_schema_holds_is_refused_by_the_scan(name: str) -> None:
    item = HOSTILE_ITEMS[name]
    data = wire_scan.head(4, 3) + wire_scan.head(0, 20) + wire_scan.head(0, 1) + item
    with pytest.raises(RemoteProtocolError):
        wire_scan.scan(data, BIG, wire.MAX_DEPTH)


@pytest.mark.threat("T-DECODE-COST")
def test_the_scan_stops_at_its_budget() -> None:
    """A million items are refused after the budget's worth, not after a million."""
    data = wire_scan.head(4, 1_000_000) + bytes(1_000_000)
    with pytest.raises(RemoteProtocolError, match="more than 100 units"):
        wire_scan.scan(data, 100, wire.MAX_DEPTH)


@given(st.binary(max_size=64))
def test_scan_refuses_only_with_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        wire_scan.scan(data, 1000, wire.MAX_DEPTH)


@pytest.mark.threat("T-DECODE-COST")
@pytest.mark.parametrize("size", [4 << 10, 64 << 10])
def test_the_benchmark_inputs_are_what_it_says(size: int) -> None:
    for build in bench.HONEST.values():
        bench._decode(build(size))
    for name, hostile in bench.HOSTILE.items():
        for tag in sorted(set(rpc.REQUEST_TYPES.values())):
            frame = bench._envelope(tag, hostile(tag, size))
            assert abs(len(frame) - size) < size // 4, name
            with pytest.raises(RemoteProtocolError):
                bench._decode(frame)
