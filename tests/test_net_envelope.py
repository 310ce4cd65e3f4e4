"""The envelope fast codec (anonmail/net/envelope.py) held against wire as its reference.

Encoding gives wire's bytes exactly; decoding gives wire's result exactly, and refuses exactly
what wire refuses: on valid envelopes, on every non-canonical or foreign rewrite of one item
(tests/wiregen.py), on random byte edits, and on arbitrary input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wiregen import EDITS, apply_edits, rewrite_one_item

from anonmail import wire
from anonmail.errors import RemoteProtocolError
from anonmail.net import envelope
from anonmail.net.envelope import MAX_BODY, Request, Response

MAX_SIZE = 1 << 20
# ids and lengths around every head width's edges, and anything in range
ids = st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]) \
    | st.integers(0, 2**64 - 1)
kinds = st.sampled_from([0, 23, 24, 255, 256, 65535]) | st.integers(0, 65535)
bodies = st.sampled_from([0, 23, 24, 255, 256, 65535, 65536]).map(bytes) | st.binary(max_size=300)
requests = st.builds(Request, ids, kinds, bodies)
responses = st.builds(Response, ids, bodies)
envelopes = requests | responses


def outcome(decode: Callable[[], Any]) -> Any:
    try:
        return decode()
    except RemoteProtocolError:
        return "refused"


def assert_same(data: bytes, max_size: int = MAX_SIZE) -> Any:
    """The fast decoders and wire agree on `data`, for both envelope types."""
    for cls, fast in ((Request, envelope.decode_request), (Response, envelope.decode_response)):
        theirs = outcome(lambda: wire.decode(data, cls, max_size=max_size))  # noqa: B023
        ours = outcome(lambda: fast(data, max_size))  # noqa: B023
        assert ours == theirs, (cls.__name__, data[:40])
        assert type(ours) is type(theirs)
        if isinstance(ours, cls):
            assert type(ours.body) is bytes


def fast_encode(env: Request | Response) -> bytes:
    if isinstance(env, Request):
        return envelope.encode_request(env.req_id, env.kind, env.body)
    return envelope.encode_response(env.req_id, env.body)


@given(envelopes)
def test_encoding_is_wires(env: Request | Response) -> None:
    assert fast_encode(env) == wire.encode(env)


@given(envelopes)
def test_valid_envelopes_decode_as_wire_decodes_them(env: Request | Response) -> None:
    data = wire.encode(env)
    assert_same(data)
    fast = envelope.decode_request if isinstance(env, Request) else envelope.decode_response
    assert fast(data, MAX_SIZE) == env


@pytest.mark.threat("T-MALFORMED")
@given(envelopes, st.data())
def test_non_canonical_and_foreign_items_refused_as_wire_refuses_them(
        env: Request | Response, data: st.DataObject) -> None:
    assert_same(rewrite_one_item(env, data))


@pytest.mark.threat("T-MALFORMED")
@given(envelopes, EDITS)
def test_edited_bytes_judged_as_wire_judges_them(env: Request | Response,
                                                 edits: list[tuple[str, int, int]]) -> None:
    assert_same(apply_edits(wire.encode(env), edits))


@pytest.mark.threat("T-MALFORMED")
@given(st.binary(max_size=64), st.sampled_from([b"", b"\x85\x0d\x01", b"\x84\x0e\x01"]))
def test_arbitrary_input_judged_as_wire_judges_it(tail: bytes, start: bytes) -> None:
    assert_same(start + tail)


def test_size_cap_and_body_bound_as_wire() -> None:
    data = wire.encode(Response(1, bytes(100)))
    assert_same(data, max_size=len(data) - 1)
    assert_same(data, max_size=len(data))
    over = envelope.encode_response(1, bytes(MAX_BODY + 1))
    assert_same(over, max_size=len(over))
    assert_same(envelope.encode_request(1, 65536, b""))  # kind out of range


def test_a_bytearray_is_decoded_to_bytes() -> None:
    data = wire.encode(Request(3, 20, b"abc"))
    assert envelope.decode_request(bytearray(data), MAX_SIZE) == Request(3, 20, b"abc")
    assert type(envelope.decode_request(bytearray(data), MAX_SIZE).body) is bytes
