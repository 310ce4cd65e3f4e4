"""The wire schema (anonmail.wire): registration and round trips.

Every anonmail module imports; every message type has a tag in its layer's range, and a tag is
taken once. Every registered message type, and every struct reachable from one, round-trips
encode → decode to an equal value whose bytes are the RFC 8949 deterministic encoding of its
value model; signing bytes omit only the signature; a message does not decode as another type.
The strategies are built from the schema (tests/wiregen.py), so message types added later are
covered without touching this file.
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wiregen import FEWER, IMPORT_FAILURES, MESSAGES, STRUCTS, any_message, cbor, strategy_for

from anonmail import crypto, wire
from anonmail.dht.messages import Nodes
from anonmail.errors import LocalError, RemoteProtocolError
from anonmail.records import params as netparams
from anonmail.records.certs import NodeCert
from anonmail.rng import SeededRng


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



def test_cached_encodings_do_not_keep_their_objects_alive() -> None:
    # Found by a soak of `anonmail run`: certificates decoded anew every session (the guard
    # file, circuit answers) stayed alive in the encoding cache until 65,536 had piled up.
    params = netparams.testnet(puzzle_bits=0)
    certs = [NodeCert.issue(crypto.SigningKey.generate(SeededRng(i)), (), 1_700_000_000, params)
             for i in range(50)]
    held = [wire._nested_bytes(c) for c in certs]
    before = len(wire._NESTED)
    assert wire._nested_bytes(certs[0]) is held[0]  # a live object's encoding is reused
    # equal objects decoded again: cached while alive, gone with them
    again = [wire.decode(wire.encode(c), NodeCert) for c in certs]
    assert [wire._nested_bytes(c) for c in again] == held
    assert len(wire._NESTED) == before + len(again)
    refs = [weakref.ref(c) for c in again]
    del again
    gc.collect()
    assert all(r() is None for r in refs)
    assert len(wire._NESTED) == before
    assert wire._nested_bytes(certs[0]) is held[0]


def test_a_cached_type_must_take_weak_references() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class NoWeakRefs:
        n: int

    wire.struct(NoWeakRefs)
    with pytest.raises(LocalError, match="weakref_slot"):
        wire.cached(NoWeakRefs)


def test_the_decoded_certificate_memo_keeps_what_keeps_coming_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A node's routing certificates come back in answer after answer; other users' one-off
    # session certificates pass through once. The memo must not let the second push out the
    # first (it evicted first-in first-out before).
    monkeypatch.setattr(wire, "MAX_EMBEDDED", 8)
    memo = wire._EMBEDDED[NodeCert]  # the decoder's own memo: emptied here, refilled after
    kept = list(memo.items())
    memo.clear()
    try:
        _lru_run(memo)
    finally:
        memo.clear()
        memo.update(kept)


def _lru_run(memo: dict[bytes, Any]) -> None:
    params = netparams.testnet(puzzle_bits=0)

    def cert(i: int) -> NodeCert:
        return NodeCert.issue(crypto.SigningKey.generate(SeededRng(10_000 + i)), (),
                              1_700_000_000, params)

    routing = wire.decode(wire.encode(Nodes((cert(0),))), Nodes).certs[0]
    for i in range(1, 40):  # 39 one-offs through an 8-entry memo, the routing cert between
        wire.decode(wire.encode(Nodes((cert(i),))), Nodes)
        again = wire.decode(wire.encode(Nodes((cert(0),))), Nodes).certs[0]
        assert again is routing  # still the object decoded (and verified) the first time
    one_off = wire.decode(wire.encode(Nodes((cert(1),))), Nodes).certs[0]
    assert wire.decode(wire.encode(Nodes((cert(1),))), Nodes).certs[0] is one_off
    assert len(memo) == 8
