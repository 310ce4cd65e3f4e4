"""The flat codec (anonmail/wire_flat.py) held against wire's generic path as its reference.

For every flat message type registered (tests/wiregen.py imports them all): encoding gives the
generic path's bytes exactly; decoding gives the generic path's result exactly, and everything
the flat decoder does not accept goes to the generic path, which gives the verdict: valid
messages, every non-canonical or foreign rewrite of one item, random byte edits, arbitrary
input after a valid prefix, and the size cap.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wiregen import EDITS, MESSAGES, apply_edits, rewrite_one_item, strategy_for

from anonmail import wire, wire_flat
from anonmail.dht.messages import FindTags, Nodes, Tags
from anonmail.errors import RemoteProtocolError
from anonmail.net.rpc import ErrorReply

FLAT = tuple(cls for cls in MESSAGES if cls in wire_flat.CODECS)
MAX_SIZE = 1 << 20
flat_messages = st.sampled_from(FLAT).flatmap(strategy_for)


def generic_encode(obj: Any) -> bytes:
    return wire._dumps(wire._value(obj))


def generic_decode(data: bytes, cls: type, max_size: int = MAX_SIZE) -> Any:
    """wire.decode without the flat path (decode_any never takes it)."""
    try:
        return wire.decode_any(data, (cls,), max_size=max_size)
    except RemoteProtocolError:
        return "refused"


def assert_same(data: bytes, cls: type, max_size: int = MAX_SIZE) -> None:
    theirs = generic_decode(data, cls, max_size)
    try:
        ours: Any = wire.decode(data, cls, max_size=max_size)
    except RemoteProtocolError:
        ours = "refused"
    assert ours == theirs, (cls.__name__, data[:40])
    assert type(ours) is type(theirs)
    fast = wire_flat.CODECS[cls].decode(data)
    if fast is not None:  # what it accepts, the generic path accepts as the same message
        assert fast == generic_decode(data, cls)


def test_the_dht_and_store_requests_on_the_hot_path_are_flat() -> None:
    assert {FindTags, Tags} <= set(FLAT)
    assert len(FLAT) >= 8
    # tuples, text, enums and nested types stay with the generic path
    assert Nodes not in wire_flat.CODECS and ErrorReply not in wire_flat.CODECS


@given(flat_messages)
def test_encoding_is_the_generic_paths(msg: Any) -> None:
    assert wire_flat.CODECS[type(msg)].encode(msg) == generic_encode(msg) == wire.encode(msg)


@given(flat_messages)
def test_valid_messages_decode_as_the_generic_path_decodes_them(msg: Any) -> None:
    data = generic_encode(msg)
    assert wire_flat.CODECS[type(msg)].decode(data) == msg
    assert_same(data, type(msg))


@pytest.mark.threat("T-MALFORMED")
@given(flat_messages, st.data())
def test_non_canonical_and_foreign_items_judged_as_the_generic_path(
        msg: Any, data: st.DataObject) -> None:
    encoded = rewrite_one_item(msg, data)
    assert wire_flat.CODECS[type(msg)].decode(encoded) is None
    assert_same(encoded, type(msg))


@pytest.mark.threat("T-MALFORMED")
@given(flat_messages, EDITS)
def test_edited_bytes_judged_as_the_generic_path(msg: Any,
                                                 edits: list[tuple[str, int, int]]) -> None:
    data = apply_edits(generic_encode(msg), edits)
    for cls in FLAT:  # read as its own type and as every other flat type
        assert_same(data, cls)


@pytest.mark.threat("T-MALFORMED")
@given(st.sampled_from(FLAT), st.binary(max_size=64))
def test_arbitrary_input_after_a_valid_prefix_judged_as_the_generic_path(
        cls: type, tail: bytes) -> None:
    prefix = wire_flat.CODECS[cls]._prefix
    assert_same(prefix + tail, cls)


def test_size_cap_out_of_range_and_wrong_types_go_to_the_generic_path() -> None:
    data = generic_encode(Tags(bytes(80)))
    assert_same(data, Tags, max_size=len(data) - 1)
    with pytest.raises(RemoteProtocolError):
        wire.decode(data, Tags, max_size=len(data) - 1)
    too_many = generic_encode(FindTags(bytes(32), 1))[:-1] + b"\x18\xff"  # count 255 > MAX_NODES
    assert wire_flat.CODECS[FindTags].decode(too_many) is None
    assert_same(too_many, FindTags)
    odd = FindTags(bytearray(32), 5)  # type: ignore[arg-type]  # not bytes: generic path
    assert wire_flat.CODECS[FindTags].encode(odd) is None
    assert wire.encode(odd) == generic_encode(odd)
