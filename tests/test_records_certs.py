"""Signed records (NodeCert, AddressCert, Receipt): issue → verify; any single altered byte or
field is refused and signatures do not transfer between record kinds; the static puzzle and node
ids bound to keys; the certificate cache; validity windows and the lifetime cap; what a receipt
binds. The records come from tests/signedrecords.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from signedrecords import (
    ADDRESS_KEY,
    DIGEST,
    NOW,
    PUBLIC,
    STORE_KEY,
    TEST,
    TRUSTED,
    anon_cert,
    ca_cert,
    node_cert,
    puzzle_key,
    receipt,
)

from anonmail import crypto, wire
from anonmail.errors import RemoteProtocolError
from anonmail.records import ids
from anonmail.records.certs import (
    ADDRESS_CERT_DOMAIN,
    NODE_CERT_DOMAIN,
    AddressCert,
    CertCache,
    Endpoint,
    NodeCert,
    anon_address,
    is_anon_address,
)
from anonmail.records.params import MAINNET
from anonmail.records.params import testnet as make_testnet
from anonmail.records.receipts import Receipt, StoreOp
from anonmail.rng import SeededRng

FEWER = settings(max_examples=max(15, settings().max_examples // 5))


@cache
def failing_key(bits: int) -> crypto.SigningKey:
    """A key whose node id does NOT solve a `bits`-bit puzzle."""
    rng = SeededRng(b"no-puzzle")
    while True:
        key = crypto.SigningKey.generate(rng)
        if ids.puzzle_bits(ids.node_id(key.public)) < bits:
            return key


def sign_node_cert(key: crypto.SigningKey, unsigned: NodeCert) -> NodeCert:
    return unsigned.with_signature(key.sign(NODE_CERT_DOMAIN, wire.signing_bytes(unsigned)))


# ---------------------------------------------------------------------------------------------
# Issue → verify


def test_node_cert_issue_verify() -> None:
    cert = node_cert()
    cert.verify(TEST, NOW)
    assert cert.node_id == ids.node_id(cert.public_key)
    assert cert.is_server and not node_cert(endpoints=()).is_server
    assert wire.decode(wire.encode(cert), NodeCert) == cert
    wire.decode(wire.encode(cert), NodeCert).verify(TEST, NOW)


def test_address_certs_issue_verify() -> None:
    cert = ca_cert()
    assert cert.address == "Alice@example.com"  # local part kept, domain lower-cased
    cert.verify(TRUSTED, NOW)
    assert cert.key == ids.cert_key("Alice@example.com")
    anon = anon_cert()
    assert anon.address == anon_address("bob", ADDRESS_KEY.public)
    assert is_anon_address(anon.address) and not is_anon_address(cert.address)
    anon.verify(frozenset(), NOW)  # needs no CA
    for c in (cert, anon):
        assert wire.decode(wire.encode(c), AddressCert) == c


def test_receipt_issue_verify() -> None:
    r = receipt()
    r.verify(puzzle_key(0).public)
    assert r.node_id == ids.node_id(puzzle_key(0).public)
    with pytest.raises(RemoteProtocolError):
        r.verify(puzzle_key(1).public)  # another node's key


# ---------------------------------------------------------------------------------------------
# Any single altered byte is refused

RecordCase = tuple[type, Callable[[], Any], Callable[[Any], None]]
RECORDS: dict[str, RecordCase] = {
    "NodeCert": (NodeCert, node_cert, lambda c: c.verify(TEST, NOW)),
    "AddressCert-CA": (AddressCert, ca_cert, lambda c: c.verify(TRUSTED, NOW)),
    "AddressCert-anon": (AddressCert, anon_cert, lambda c: c.verify(frozenset(), NOW)),
    "Receipt": (Receipt, receipt, lambda r: r.verify(puzzle_key(0).public)),
}


def _decode_and_verify(cls: type, data: bytes, verify: Callable[[Any], None]) -> None:
    verify(wire.decode(data, cls))


@pytest.mark.threat("T-FORGE")
@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_single_bit_flip_is_refused(name: str) -> None:
    cls, make, verify = RECORDS[name]
    encoded = wire.encode(make())
    _decode_and_verify(cls, encoded, verify)
    for i in range(len(encoded)):
        for bit in range(8):
            altered = encoded[:i] + bytes([encoded[i] ^ (1 << bit)]) + encoded[i + 1:]
            with pytest.raises(RemoteProtocolError):
                _decode_and_verify(cls, altered, verify)


@pytest.mark.threat("T-FORGE")
@pytest.mark.parametrize("name", sorted(RECORDS))
@FEWER
@given(data=st.data())
def test_any_single_byte_change_is_refused(name: str, data: st.DataObject) -> None:
    cls, make, verify = RECORDS[name]
    encoded = wire.encode(make())
    i = data.draw(st.integers(0, len(encoded) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != encoded[i]))
    with pytest.raises(RemoteProtocolError):
        _decode_and_verify(cls, encoded[:i] + bytes([new]) + encoded[i + 1:], verify)


@pytest.mark.threat("T-FORGE")
@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_field_change_breaks_the_signature(name: str) -> None:
    """Re-encoding a record with any one field changed (a well-formed forgery, not a broken
    encoding) fails signature verification."""
    _, make, verify = RECORDS[name]
    record = make()
    for f in dataclasses.fields(record):
        if f.name == "signature":
            continue
        old = getattr(record, f.name)
        new: Any
        if isinstance(old, bytes):
            new = bytes([old[0] ^ 1]) + old[1:]
        elif isinstance(old, StoreOp):
            new = StoreOp.STORE if old is StoreOp.APPEND else StoreOp.APPEND
        elif isinstance(old, int):
            new = old - 1
        elif isinstance(old, str):
            new = old.replace("lice", "lize").replace("bob", "rob")
        elif isinstance(old, tuple):
            new = old[:-1]
        else:
            raise AssertionError(f.name)
        with pytest.raises(RemoteProtocolError):
            verify(dataclasses.replace(record, **{f.name: new}))


@pytest.mark.threat("T-FORGE")
def test_signatures_are_not_transferable_between_record_kinds() -> None:
    """A node-cert signature is no address-cert signature over the same bytes, and vice versa."""
    key = ADDRESS_KEY
    unsigned = dataclasses.replace(anon_cert(), signature=bytes(64))
    sig = key.sign(NODE_CERT_DOMAIN, wire.signing_bytes(unsigned))
    with pytest.raises(RemoteProtocolError):
        dataclasses.replace(unsigned, signature=sig).verify(frozenset(), NOW)
    cert = node_cert()
    with pytest.raises(RemoteProtocolError):
        crypto.verify(cert.public_key, ADDRESS_CERT_DOMAIN, wire.signing_bytes(cert),
                      cert.signature)


# ---------------------------------------------------------------------------------------------
# The static puzzle and node ids


@pytest.mark.threat("T-SYBIL")
def test_puzzle_is_enforced() -> None:
    params = make_testnet(puzzle_bits=8)
    good = node_cert(params)
    good.verify(params, NOW)
    assert ids.puzzle_bits(good.node_id) >= 8
    bad = NodeCert.issue(failing_key(8), good.endpoints, NOW, params)
    with pytest.raises(RemoteProtocolError, match="puzzle"):
        bad.verify(params, NOW)
    bad.verify(params.replace(puzzle_bits=0), NOW)  # same cert, cheaper network: fine


@pytest.mark.threat("T-SYBIL")
def test_node_id_is_bound_to_the_key() -> None:
    """A NodeCert carries no separate id: the id is H("node", key), so claiming an id means
    holding a key that hashes to it; swapping in another key breaks the signature."""
    cert = node_cert()
    assert "node_id" not in wire.schema_of(NodeCert).names
    other = puzzle_key(TEST.puzzle_bits, seed=1)
    assert ids.node_id(other.public) != cert.node_id
    with pytest.raises(RemoteProtocolError):
        dataclasses.replace(cert, public_key=other.public).verify(TEST, NOW)


@pytest.mark.threat("T-SYBIL")
def test_mainnet_puzzle_is_at_least_16_bits() -> None:
    assert MAINNET.puzzle_bits >= 16
    assert not MAINNET.allow_private_endpoints
    assert make_testnet().network_id != MAINNET.network_id


@pytest.mark.threat("T-SYBIL")
def test_cert_cache_still_checks_puzzle_window_and_endpoints() -> None:
    cache_ = CertCache(capacity=2)
    cert = node_cert()
    cache_.verify(cert, TEST, NOW)
    cache_.verify(cert, TEST, NOW)
    assert cache_.verifications == 1
    with pytest.raises(RemoteProtocolError):
        cache_.verify(cert, TEST.replace(puzzle_bits=40), NOW)
    with pytest.raises(RemoteProtocolError):
        cache_.verify(cert, TEST, NOW + TEST.cert_lifetime + TEST.clock_skew + 1)
    with pytest.raises(RemoteProtocolError):
        cache_.verify(node_cert(endpoints=(Endpoint("127.0.0.1", 1),)), PUBLIC, NOW)
    forged = dataclasses.replace(cert, seq=cert.seq + 1)
    with pytest.raises(RemoteProtocolError):
        cache_.verify(forged, TEST, NOW)  # a different encoding is verified afresh


# ---------------------------------------------------------------------------------------------
# Validity window and lifetime


@pytest.mark.parametrize(
    ("offset", "ok"),
    [(-TEST.clock_skew - 1, False), (-TEST.clock_skew, True), (0, True),
     (TEST.cert_lifetime + TEST.clock_skew, True),
     (TEST.cert_lifetime + TEST.clock_skew + 1, False)],
)
def test_node_cert_validity_window(offset: int, ok: bool) -> None:
    cert = node_cert()
    if ok:
        cert.verify(TEST, NOW + offset)
    else:
        with pytest.raises(RemoteProtocolError, match="not valid now"):
            cert.verify(TEST, NOW + offset)


def test_node_cert_lifetime_cap() -> None:
    key = puzzle_key(TEST.puzzle_bits)
    base = node_cert()
    too_long = sign_node_cert(key, dataclasses.replace(
        base, expires=base.issued + TEST.cert_lifetime + 1, signature=bytes(64)))
    with pytest.raises(RemoteProtocolError, match="lifetime"):
        too_long.verify(TEST, NOW)
    just_right = sign_node_cert(key, dataclasses.replace(
        base, expires=base.issued + TEST.cert_lifetime, signature=bytes(64)))
    just_right.verify(TEST, NOW)


@pytest.mark.parametrize(("offset", "ok"), [(-601, False), (-600, True), (0, True),
                                            (365 * 86400 + 600, True),
                                            (365 * 86400 + 601, False)])
def test_address_cert_validity_window(offset: int, ok: bool) -> None:
    for cert, cas in ((ca_cert(), TRUSTED), (anon_cert(), frozenset[bytes]())):
        if ok:
            cert.verify(cas, NOW + offset)
        else:
            with pytest.raises(RemoteProtocolError, match="expired or not yet valid"):
                cert.verify(cas, NOW + offset)


# ---------------------------------------------------------------------------------------------
# Receipts


@pytest.mark.threat("T-FORGE")
def test_receipt_binds_op_key_digest_and_node() -> None:
    r = receipt()
    key = puzzle_key(0)
    for change in ({"op": StoreOp.STORE}, {"key": DIGEST}, {"digest": STORE_KEY},
                   {"expires": r.expires + 1}, {"time": r.time - 1}):
        with pytest.raises(RemoteProtocolError):
            dataclasses.replace(r, **change).verify(key.public)
    other = puzzle_key(0, seed=7)
    stolen = dataclasses.replace(r, node_id=ids.node_id(other.public))
    with pytest.raises(RemoteProtocolError):  # claims the other node, signed by the first
        stolen.verify(other.public)


def test_grinding_a_key_leaves_the_node_id_cache_alone() -> None:
    # A main-network session key takes ~65,536 tries; through node_id's cache they would evict
    # every id the routing code keeps there (found by a soak of `anonmail run`).
    kept = crypto.SigningKey.generate(SeededRng(1)).public
    nid = ids.node_id(kept)
    before = ids.node_id.cache_info()
    key = ids.grind_node_key(10, SeededRng(2))  # ~1,024 tries
    after = ids.node_id.cache_info()
    assert ids.puzzle_bits_of_key(key.public) >= 10
    assert (after.currsize, after.misses) == (before.currsize, before.misses)
    assert ids.node_id(kept) is nid and ids.node_id.cache_info().hits == after.hits + 1
