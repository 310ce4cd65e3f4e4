"""Non-canonical and foreign encodings refused by the wire decoder (anonmail.wire, RFC 8949 §4.2).

One item of a valid message encoded another way (a non-minimal head, an indefinite length, a
float, undefined, a two-byte simple value, duplicate or unsorted map keys, invalid UTF-8, a
semantic tag); a field swapped for arbitrary CBOR; arbitrary values under a valid tag; the same
foreign items as whole input and as a field; hand-assembled FindNode encodings. Each is refused,
or (if it happens to fit the schema) accepted only in canonical form.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wiregen import (
    MESSAGES,
    accepted,
    any_message,
    assert_rejected,
    cbor,
    head,
    rewrite_one_item,
)

from anonmail import wire


@pytest.mark.threat("T-MALFORMED")
@given(any_message, st.data())
def test_non_canonical_and_foreign_items(msg: Any, data: st.DataObject) -> None:
    """One item of a valid message encoded another way: a non-minimal head, an indefinite
    length, a float, undefined, a two-byte simple value, a map (duplicate or unsorted keys),
    invalid UTF-8 or a semantic tag. Every such encoding is refused."""
    assert_rejected(rewrite_one_item(msg, data), type(msg))


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
_E = b"\x40"  # `have`: the empty byte string
FIND_NODE_CASES = {
    "reference": b"\x85\x16\x01" + _T32 + b"\x03" + _E,  # FindNode(bytes(32), 3), valid
    "tag-2-bytes": b"\x85\x18\x16\x01" + _T32 + b"\x03" + _E,
    "version-2-bytes": b"\x85\x16\x18\x01" + _T32 + b"\x03" + _E,
    "length-3-bytes": b"\x85\x16\x01\x59\x00\x20" + bytes(32) + b"\x03" + _E,
    "count-2-bytes": b"\x85\x16\x01" + _T32 + b"\x18\x03" + _E,
    "count-9-bytes": b"\x85\x16\x01" + _T32 + b"\x1b" + (3).to_bytes(8, "big") + _E,
    "array-head-2-bytes": b"\x98\x05\x16\x01" + _T32 + b"\x03" + _E,
    "indefinite-array": b"\x9f\x16\x01" + _T32 + b"\x03" + _E + b"\xff",
    "indefinite-bytes": b"\x85\x16\x01\x5f" + _T32 + b"\xff\x03" + _E,
    "chunked-bytes": b"\x85\x16\x01\x5f\x50" + bytes(16) + b"\x50" + bytes(16) + b"\xff\x03"
                     + _E,
    "have-indefinite": b"\x85\x16\x01" + _T32 + b"\x03\x5f\xff",
    "have-length-2-bytes": b"\x85\x16\x01" + _T32 + b"\x03\x58\x00",
    "trailing-byte": b"\x85\x16\x01" + _T32 + b"\x03" + _E + b"\x00",
    "count-as-double": b"\x85\x16\x01" + _T32 + b"\xfb\x40\x08" + bytes(6) + _E,
    "count-as-half": b"\x85\x16\x01" + _T32 + b"\xf9\x42\x00" + _E,
    "count-as-bignum": b"\x85\x16\x01" + _T32 + b"\xc2\x41\x03" + _E,
    "target-as-text": b"\x85\x16\x01\x78\x20" + bytes(32) + b"\x03" + _E,
    "count-as-true": b"\x85\x16\x01" + _T32 + b"\xf5" + _E,
    "count-negative": b"\x85\x16\x01" + _T32 + b"\x22" + _E,
    "target-31-bytes": b"\x85\x16\x01\x58\x1f" + bytes(31) + b"\x03" + _E,
    "version-2": b"\x85\x16\x02" + _T32 + b"\x03" + _E,
    "field-missing": b"\x84\x16\x01" + _T32 + b"\x03",
    "field-extra": b"\x86\x16\x01" + _T32 + b"\x03" + _E + b"\x03",
    "count-65-over-max": b"\x85\x16\x01" + _T32 + b"\x18\x41" + _E,
    "have-as-text": b"\x85\x16\x01" + _T32 + b"\x03\x60",
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
