"""Permit records (anonmail/permit/records.py, DESIGN.md §6) on their own, without a store.

Tokens: the owner's signature covers every field (any altered field, any flipped bit, another
owner's key: refused); token expiry is one value per epoch, 30 to 60 days ahead; a spend binds
the token to one inbox and one entry. Stamps: the work is bound to inbox, day and entry. The
inbox policy: signed over every field, covers its own inbox and request inbox only, revocations
sorted and de-duplicated, and at its bound it still fits a stored object. Wire round trips of
real (signed) records.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonmail import crypto, wire
from anonmail.errors import BadSignature, RemoteProtocolError
from anonmail.permit.records import (
    DAY,
    EPOCH,
    MAX_POLICY,
    MAX_REVOKED,
    HeldToken,
    InboxPolicy,
    PermitProof,
    PolicyMode,
    Stamp,
    Token,
    check_use,
    issue_tokens,
    make_policy,
    mint_stamp,
    spend,
    stamp_day,
    stamp_work,
    token_expiry,
    token_id,
)
from anonmail.records import ids
from anonmail.records.certs import AddressCert, self_certify
from anonmail.rng import SeededRng
from anonmail.store.messages import MAX_BLOB, MAX_PROOF_DATA, entry_id

NOW = 1_800_000_000.0
FEWER = settings(max_examples=max(20, settings().max_examples // 3))


def owner(name: str) -> tuple[crypto.SigningKey, AddressCert]:
    sign = crypto.SigningKey(crypto.hash("test-permit-owner", name.encode()))
    return sign, self_certify(name, sign, crypto.hash("seal", name.encode()), NOW - 3600)


BOB_SIGN, BOB_CERT = owner("bob")
EVE_SIGN, EVE_CERT = owner("eve")
INBOX = ids.inbox_key(BOB_CERT.address)
REQUESTS = ids.requests_key(BOB_CERT.address)
ENTRY = entry_id(b"sealed header")
OTHER_ENTRY = entry_id(b"another sealed header")


def tokens(count: int = 3, now: float = NOW, inbox: bytes = INBOX,
           seed: bytes = b"tokens") -> list[HeldToken]:
    return issue_tokens(BOB_SIGN, inbox, count, now, SeededRng(seed))


def flips(data: bytes) -> list[bytes]:
    """Every single-bit variant of `data`."""
    out = []
    for i in range(len(data) * 8):
        b = bytearray(data)
        b[i // 8] ^= 0x80 >> (i % 8)
        out.append(bytes(b))
    return out


# -- tokens ---------------------------------------------------------------------------------------


def test_issued_tokens_verify_under_the_owner_key_only() -> None:
    held = tokens(4)
    assert len({h.token.key for h in held}) == 4  # one key per token: nothing links two appends
    assert len({h.token.id for h in held}) == 4
    for h in held:
        assert h.token.inbox == INBOX
        assert crypto.SigningKey(h.seed).public == h.token.key  # the secret matches the key
        assert h.token.id == token_id(h.token.key)
        h.token.verify(BOB_SIGN.public)
        with pytest.raises(BadSignature):
            h.token.verify(EVE_SIGN.public)


@pytest.mark.threat("T-PERMIT-REPLAY")
@pytest.mark.parametrize("field", ["inbox", "key", "expires", "signature"])
def test_a_token_with_any_field_altered_is_refused(field: str) -> None:
    token = tokens(1)[0].token
    value: Any = getattr(token, field)
    changed: Any = value + 1 if isinstance(value, int) else bytes([value[0] ^ 1]) + value[1:]
    with pytest.raises(BadSignature):
        dataclasses.replace(token, **{field: changed}).verify(BOB_SIGN.public)


@pytest.mark.threat("T-PERMIT-REPLAY")
def test_every_bit_flip_of_an_encoded_token_is_refused() -> None:
    data = wire.encode(tokens(1)[0].token)
    for bad in flips(data):
        with pytest.raises(RemoteProtocolError):
            wire.decode(bad, Token).verify(BOB_SIGN.public)


@given(st.integers(0, 1 << 40))
def test_token_expiry_is_one_value_per_epoch_30_to_60_days_ahead(now: int) -> None:
    expires = token_expiry(now)
    assert EPOCH < expires - now <= 2 * EPOCH
    assert 30 * DAY < expires - now <= 60 * DAY
    start = now - now % EPOCH
    assert token_expiry(start) == expires == token_expiry(start + EPOCH - 1)
    assert token_expiry(start + EPOCH) == expires + EPOCH  # the next epoch: the next value
    assert token_expiry(now + 0.999) == expires  # fractions of a second change nothing


@FEWER
@given(st.integers(0, EPOCH - 1), st.integers(0, EPOCH - 1), st.binary(max_size=8))
def test_tokens_issued_in_one_epoch_carry_the_same_expiry(a: int, b: int, seed: bytes) -> None:
    base = (int(NOW) // EPOCH) * EPOCH
    first = tokens(2, base + a, seed=seed)
    second = tokens(2, base + b, seed=seed + b"/2")
    assert {h.token.expires for h in first + second} == {token_expiry(NOW)}


def test_tokens_from_two_epochs_differ_in_expiry_only_by_whole_epochs() -> None:
    a, b = tokens(1, NOW)[0].token, tokens(1, NOW + EPOCH)[0].token
    assert b.expires - a.expires == EPOCH


# -- spending -------------------------------------------------------------------------------------


@pytest.mark.threat("T-PERMIT-REPLAY")
def test_a_spend_binds_the_token_to_one_inbox_and_one_entry() -> None:
    held = tokens(2)
    proof = spend(held[0], INBOX, ENTRY)
    assert proof.token == held[0].token
    check_use(proof, INBOX, ENTRY)
    for inbox, eid in ((INBOX, OTHER_ENTRY), (REQUESTS, ENTRY),
                       (ids.inbox_key(EVE_CERT.address), ENTRY)):
        with pytest.raises(BadSignature):
            check_use(proof, inbox, eid)
    # Another token's key did not sign this use: a stolen token without its secret is useless.
    with pytest.raises(BadSignature):
        check_use(dataclasses.replace(proof, token=held[1].token), INBOX, ENTRY)
    # The use signature is not the owner's signature over a token (separate domains).
    with pytest.raises(BadSignature):
        dataclasses.replace(held[0].token, signature=proof.signature).verify(BOB_SIGN.public)


@FEWER
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.binary(min_size=32, max_size=32))
def test_spend_and_check_use_agree_and_nothing_else_passes(inbox: bytes, eid: bytes,
                                                           other: bytes) -> None:
    held = tokens(1, inbox=inbox)[0]
    proof = spend(held, inbox, eid)
    check_use(proof, inbox, eid)
    if other != eid:
        with pytest.raises(BadSignature):
            check_use(proof, inbox, other)
    if other != inbox:
        with pytest.raises(BadSignature):
            check_use(proof, other, eid)


def test_every_bit_flip_of_an_encoded_permit_proof_is_refused() -> None:
    data = wire.encode(spend(tokens(1)[0], INBOX, ENTRY))
    assert len(data) <= MAX_PROOF_DATA
    for bad in flips(data):
        with pytest.raises(RemoteProtocolError):
            p = wire.decode(bad, PermitProof, max_size=MAX_PROOF_DATA)
            p.token.verify(BOB_SIGN.public)
            check_use(p, INBOX, ENTRY)


# -- stamps ---------------------------------------------------------------------------------------


@pytest.mark.threat("T-RTS-FLOOD")
def test_a_stamp_shows_its_work_for_its_inbox_entry_and_day_only() -> None:
    bits = 16  # a wrong binding passes by chance with probability 2**-16
    stamp = mint_stamp(REQUESTS, ENTRY, bits, NOW, SeededRng(b"stamp"))
    assert stamp.day == stamp_day(NOW) == int(NOW) // DAY
    assert stamp_work(stamp, REQUESTS, ENTRY) >= bits
    assert stamp_work(stamp, REQUESTS, OTHER_ENTRY) < bits
    assert stamp_work(stamp, ids.requests_key(EVE_CERT.address), ENTRY) < bits
    assert stamp_work(stamp, INBOX, ENTRY) < bits
    for day in (stamp.day - 1, stamp.day + 1):
        assert stamp_work(dataclasses.replace(stamp, day=day), REQUESTS, ENTRY) < bits


@FEWER
@given(st.integers(0, 10), st.binary(min_size=32, max_size=32),
       st.binary(min_size=32, max_size=32), st.integers(0, 1 << 33), st.binary(max_size=8))
def test_minted_stamps_verify_at_their_difficulty(bits: int, inbox: bytes, eid: bytes,
                                                   now: int, seed: bytes) -> None:
    stamp = mint_stamp(inbox, eid, bits, now, SeededRng(seed))
    assert stamp.day == now // DAY
    assert stamp_work(stamp, inbox, eid) >= bits
    assert wire.decode(wire.encode(stamp), Stamp) == stamp


def test_stamp_search_starts_at_a_random_nonce() -> None:
    """Two minters of one stamp do not race through the same nonces."""
    a = mint_stamp(REQUESTS, ENTRY, 0, NOW, SeededRng(1))
    b = mint_stamp(REQUESTS, ENTRY, 0, NOW, SeededRng(2))
    assert a.nonce != b.nonce
    assert mint_stamp(REQUESTS, ENTRY, 0, NOW, SeededRng(1)) == a  # deterministic given the rng


# -- the inbox policy -----------------------------------------------------------------------------


def policy(version: int = 1, revoked: tuple[bytes, ...] = (), *,
           mode: PolicyMode = PolicyMode.PERMITS, bits: int = 12) -> InboxPolicy:
    return make_policy(BOB_SIGN, BOB_CERT, version, mode, bits, revoked)


def test_policy_verifies_and_sorts_its_revocations() -> None:
    ids_ = [h.token.id for h in tokens(3)]
    p = policy(2, (ids_[2], ids_[0], ids_[2], ids_[1]))
    p.verify()
    assert p.revoked == tuple(sorted(set(ids_)))
    assert (p.version, p.mode, p.stamp_bits) == (2, PolicyMode.PERMITS, 12)


@pytest.mark.threat("T-POLICY-SQUAT")
@pytest.mark.parametrize(("field", "value"), [
    ("version", 3), ("mode", PolicyMode.OPEN), ("stamp_bits", 0), ("revoked", ()),
    ("cert", EVE_CERT), ("signature", bytes(64)),
])
def test_a_policy_with_any_field_altered_is_refused(field: str, value: Any) -> None:
    p = policy(2, (b"\x01" * 32,))
    with pytest.raises(BadSignature):
        dataclasses.replace(p, **{field: value}).verify()


@pytest.mark.threat("T-POLICY-SQUAT")
def test_a_policy_signed_by_another_key_than_its_certificates_is_refused() -> None:
    forged = make_policy(EVE_SIGN, BOB_CERT, 9, PolicyMode.OPEN, 0, ())
    with pytest.raises(BadSignature):
        forged.verify()
    make_policy(EVE_SIGN, EVE_CERT, 9, PolicyMode.OPEN, 0, ()).verify()  # Eve's own is fine


@pytest.mark.threat("T-POLICY-SQUAT")
def test_every_bit_flip_of_an_encoded_policy_is_refused() -> None:
    data = wire.encode(policy(1, tuple(h.token.id for h in tokens(2))))
    for bad in flips(data):
        with pytest.raises(RemoteProtocolError):
            wire.decode(bad, InboxPolicy, max_size=MAX_POLICY).verify()


def test_a_policy_covers_its_inbox_and_request_inbox_only() -> None:
    p = policy()
    assert p.covers(INBOX) and p.covers(REQUESTS)
    for key in (ids.cert_key(BOB_CERT.address), ids.inbox_key(EVE_CERT.address),
                ids.requests_key(EVE_CERT.address), ids.devices_key(BOB_CERT.address)):
        assert not p.covers(key)


def test_a_policy_at_its_revocation_bound_fits_one_stored_object() -> None:
    revoked = tuple(crypto.hash("revoked", i.to_bytes(4, "big")) for i in range(MAX_REVOKED))
    full = policy(1, revoked)
    data = wire.encode(full)
    assert len(data) <= MAX_POLICY <= MAX_BLOB
    assert wire.decode(data, InboxPolicy, max_size=MAX_POLICY) == full
    too_many = dataclasses.replace(full, revoked=(*full.revoked, b"\xff" * 32))
    with pytest.raises(RemoteProtocolError):
        wire.decode(wire.encode(too_many), InboxPolicy, max_size=MAX_POLICY)


# -- wire round trips of signed records -----------------------------------------------------------


@FEWER
@given(st.binary(max_size=16), st.integers(1, 4), st.integers(0, 1 << 40),
       st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_signed_records_round_trip_and_still_verify(seed: bytes, count: int, now: int,
                                                     inbox: bytes, eid: bytes) -> None:
    for held in issue_tokens(BOB_SIGN, inbox, count, now, SeededRng(seed)):
        assert wire.decode(wire.encode(held), HeldToken) == held
        token = wire.decode(wire.encode(held.token), Token)
        assert token == held.token
        token.verify(BOB_SIGN.public)
        proof = wire.decode(wire.encode(spend(held, inbox, eid)), PermitProof,
                            max_size=MAX_PROOF_DATA)
        check_use(proof, inbox, eid)


@FEWER
@given(st.integers(0, (1 << 63) - 1), st.sampled_from(list(PolicyMode)), st.integers(0, 40),
       st.lists(st.binary(min_size=32, max_size=32), max_size=6))
def test_policies_round_trip_and_still_verify(version: int, mode: PolicyMode, bits: int,
                                              revoked: list[bytes]) -> None:
    p = make_policy(BOB_SIGN, BOB_CERT, version, mode, bits, tuple(revoked))
    back = wire.decode(wire.encode(p), InboxPolicy, max_size=MAX_POLICY)
    assert back == p
    back.verify()
    assert list(back.revoked) == sorted(set(revoked))
