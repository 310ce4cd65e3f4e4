"""The permit gate on a storage node's handlers (anonmail/permit/gate.py in
anonmail/store/handlers.py, DESIGN.md §6), at the fixed `now` of tests/storectx.py.

The inbox policy as a stored record: under its inbox and request-inbox keys only, a newer
version replaces, an older one is refused, and it evicts an opaque object squatting its key.
APPEND to an inbox: no policy, no proof, a valid token (spent once, idempotent for its own
entry, remembered past the entry's ACK), tokens for another inbox, of another signer, expired or
revoked; replication of two entries spending one token. The request inbox: stamps (missing,
weak, for another day, good), its quota and TTL; an OPEN inbox takes a stamp. Every refusal is
an honest `Refusal`, answered with its code and never counted as a fault. A schema v1 database
migrates to v2 with its rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from storectx import NODE_CERT, NODE_KEY, NOW, PARAMS, PEER

from anonmail import wire
from anonmail.clock import FixedClock
from anonmail.errors import ErrorCode, Refusal, RemoteProtocolError
from anonmail.mail.identity import AddressIdentity
from anonmail.net.base import Peer
from anonmail.net.rpc import ErrorReply
from anonmail.net.services import ServiceRegistry
from anonmail.permit.gate import (
    REQUEST_ENTRIES,
    REQUEST_TTL,
    PermitGate,
    gated_store,
)
from anonmail.permit.records import (
    DAY,
    EPOCH,
    HeldToken,
    InboxPolicy,
    PolicyMode,
    Stamp,
    issue_tokens,
    make_policy,
    mint_stamp,
    spend,
    stamp_work,
)
from anonmail.records import ids
from anonmail.records.certs import self_certify
from anonmail.records.receipts import StoreOp
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario
from anonmail.store.client import check_receipt
from anonmail.store.db import StoreDb
from anonmail.store.errors import Denied, Invalid
from anonmail.store.handlers import (
    StoreContext,
    StoreLimits,
    dispatch,
    handle_ack,
    handle_append,
    handle_delete,
    handle_fetch,
    handle_replicate,
    handle_store,
)
from anonmail.store.messages import (
    Ack,
    Append,
    AppendProof,
    AppendProofKind,
    Delete,
    Fetch,
    Fetched,
    ObjectKind,
    OwnerOp,
    ReplicaEntry,
    Replicate,
    Store,
    args_digest_ack,
    blob_digest,
    delete_hash,
    entry_id,
)
from anonmail.store.proofs import make_owner_proof
from anonmail.store.schema import SCHEMA, SCHEMA_VERSION, SPENT, entry_size, object_size

OWNER = AddressIdentity.create_anon("bob", SeededRng(b"permit-gate-owner"), NOW - 3600)
EVE = AddressIdentity.create_anon("eve", SeededRng(b"permit-gate-eve"), NOW - 3600)
# Another .anon address of the owner's keys (name@<fingerprint>.anon: the name is free).
CAROL = AddressIdentity(OWNER.sign, OWNER.seal,
                        self_certify("carol", OWNER.sign, OWNER.seal.public, NOW - 3600))
INBOX = ids.inbox_key(OWNER.address)
REQUESTS = ids.requests_key(OWNER.address)
BITS = 10  # the test policy's stamp difficulty (testnet minimum: 8)
TTL = 3600


def make_ctx(db: StoreDb | None = None, **limits: int) -> StoreContext:
    db = db if db is not None else StoreDb(":memory:")
    gate = PermitGate(db, PARAMS)
    return StoreContext(db, NODE_KEY, PARAMS, frozenset(), StoreLimits(**limits),
                        append_policy=gate.admit, record_rules=gate.rules())


@pytest.fixture(name="ctx")
def ctx_fixture() -> Iterator[StoreContext]:
    c = make_ctx()
    yield c
    c.db.close()


def policy(version: int = 1, revoked: tuple[bytes, ...] = (), *,
           mode: PolicyMode = PolicyMode.PERMITS, bits: int = BITS,
           who: AddressIdentity = OWNER) -> InboxPolicy:
    return make_policy(who.sign, who.cert, version, mode, bits, revoked)


def put_policy(ctx: StoreContext, pol: InboxPolicy, key: bytes | None = None,
               now: float = NOW) -> None:
    """STORE the policy under `key` (default: both of its keys), checking the receipts."""
    blob = wire.encode(pol)
    keys = (ids.inbox_key(pol.cert.address), ids.requests_key(pol.cert.address)) \
        if key is None else (key,)
    for k in keys:
        reply = handle_store(ctx, Store(k, ObjectKind.POLICY, blob, 30 * DAY, ()), now)
        check_receipt(reply.receipt, NODE_CERT, StoreOp.STORE, k, blob_digest(blob), now)


def held_policy(ctx: StoreContext, key: bytes = INBOX) -> InboxPolicy | None:
    row = ctx.db.get_object(key)
    if row is None or row.blob is None or row.kind != ObjectKind.POLICY:
        return None
    return wire.decode(row.blob, InboxPolicy)


def tokens(count: int = 2, now: float = NOW, inbox: bytes = INBOX,
           who: AddressIdentity = OWNER, seed: bytes = b"tokens") -> list[HeldToken]:
    return issue_tokens(who.sign, inbox, count, now, SeededRng(seed))


def permit(held: HeldToken, entry: bytes, inbox: bytes = INBOX) -> AppendProof:
    return AppendProof(AppendProofKind.PERMIT,
                       wire.encode(spend(held, inbox, entry_id(entry))))


def stamped(entry: bytes, bits: int = BITS, inbox: bytes = REQUESTS, now: float = NOW,
            seed: bytes = b"stamp") -> AppendProof:
    stamp = mint_stamp(inbox, entry_id(entry), bits, now, SeededRng(seed + entry))
    return AppendProof(AppendProofKind.STAMP, wire.encode(stamp))


def append(ctx: StoreContext, entry: bytes, proof: AppendProof | None,
           inbox: bytes = INBOX, ttl: int = TTL, now: float = NOW) -> int:
    """APPEND; returns the receipt's expiry after checking the receipt."""
    reply = handle_append(ctx, Append(inbox, entry, ttl, proof), PEER, now)
    check_receipt(reply.receipt, NODE_CERT, StoreOp.APPEND, inbox, entry_id(entry), now)
    return reply.receipt.expires


def refused(ctx: StoreContext, entry: bytes, proof: AppendProof | None, code: ErrorCode,
            inbox: bytes = INBOX, now: float = NOW) -> None:
    """APPEND is refused with `code`, as an honest refusal (never a fault), storing nothing."""
    before = ctx.db.inbox_usage(inbox, now)
    with pytest.raises(Refusal) as e:
        handle_append(ctx, Append(inbox, entry, TTL, proof), PEER, now)
    assert e.value.code is code, e.value.detail
    assert not isinstance(e.value, RemoteProtocolError) and not e.value.code.is_fault
    assert ctx.db.inbox_usage(inbox, now) == before


def entries(ctx: StoreContext, inbox: bytes = INBOX) -> list[bytes]:
    return [r.entry for r in ctx.db.inbox_entries(inbox, NOW)]


# -- the policy as a stored record ----------------------------------------------------------------


def test_policy_is_stored_under_its_inbox_and_request_inbox_keys(ctx: StoreContext) -> None:
    pol = policy()
    put_policy(ctx, pol)
    for key in (INBOX, REQUESTS):
        got = handle_fetch(ctx, Fetch(key), NOW)
        assert isinstance(got, Fetched) and got.kind is ObjectKind.POLICY
        assert wire.decode(got.blob, InboxPolicy) == pol
        row = ctx.db.get_object(key)
        assert row is not None and row.cert_issued == 1  # the version, for replacement
        assert row.expires <= pol.cert.expires  # lives no longer than its certificate


@pytest.mark.threat("T-POLICY-SQUAT")
def test_policy_under_another_key_is_refused_as_invalid(ctx: StoreContext) -> None:
    blob = wire.encode(policy())
    for key in (ids.inbox_key(EVE.address), ids.cert_key(OWNER.address), b"\x07" * 32):
        with pytest.raises(Invalid, match="another key"):
            handle_store(ctx, Store(key, ObjectKind.POLICY, blob, TTL, ()), NOW)
        assert ctx.db.get_object(key) is None


@pytest.mark.threat("T-POLICY-SQUAT")
def test_forged_or_garbage_policy_is_refused_as_invalid(ctx: StoreContext) -> None:
    forged = make_policy(EVE.sign, OWNER.cert, 9, PolicyMode.OPEN, 0, ())
    for blob in (wire.encode(forged), b"not a policy"):
        with pytest.raises(Invalid, match="policy refused"):
            handle_store(ctx, Store(INBOX, ObjectKind.POLICY, blob, TTL, ()), NOW)
    assert ctx.db.get_object(INBOX) is None


@pytest.mark.threat("T-POLICY-SQUAT", "T-PERMIT-REVOKED")
def test_a_newer_policy_replaces_and_an_older_one_is_refused(ctx: StoreContext) -> None:
    put_policy(ctx, policy(1))
    put_policy(ctx, policy(2, (b"\x01" * 32,)))
    assert held_policy(ctx) == policy(2, (b"\x01" * 32,))
    for old in (policy(1), policy(2, mode=PolicyMode.OPEN)):  # older, or as new but other
        for key in (INBOX, REQUESTS):
            with pytest.raises(Denied) as e:
                put_policy(ctx, old, key)
            assert e.value.code is ErrorCode.CONFLICT
    assert held_policy(ctx) == held_policy(ctx, REQUESTS) == policy(2, (b"\x01" * 32,))
    put_policy(ctx, policy(2, (b"\x01" * 32,)))  # the same again merges (republish)
    assert ctx.db.used_bytes() == ctx.db.recount()


@pytest.mark.threat("T-POLICY-SQUAT")
def test_a_policy_evicts_an_opaque_object_squatting_its_key(ctx: StoreContext) -> None:
    for key in (INBOX, REQUESTS):
        handle_store(ctx, Store(key, ObjectKind.BODY, b"squatter", 30 * DAY, ()), NOW)
    refused(ctx, b"mail", permit(tokens()[0], b"mail"), ErrorCode.NO_POLICY)
    put_policy(ctx, policy())
    assert held_policy(ctx) == held_policy(ctx, REQUESTS) == policy()
    assert ctx.db.used_bytes() == ctx.db.recount()
    # ... and the squatter cannot take the key back.
    with pytest.raises(Denied) as e:
        handle_store(ctx, Store(INBOX, ObjectKind.BODY, b"squatter", 30 * DAY, ()), NOW)
    assert e.value.code is ErrorCode.CONFLICT
    append(ctx, b"mail", permit(tokens()[0], b"mail"))


@pytest.mark.threat("T-POLICY-SQUAT")
def test_whoever_stores_a_policy_cannot_delete_it(ctx: StoreContext) -> None:
    """A policy is public: anyone can STORE it. Delete hashes on it would let them tombstone it
    (and the owner's same version would be refused until the tombstone expired)."""
    secret = b"\x0a" * 32
    blob = wire.encode(policy())
    handle_store(ctx, Store(INBOX, ObjectKind.POLICY, blob, 30 * DAY, (delete_hash(secret),)),
                 NOW)
    with pytest.raises(Denied) as e:
        handle_delete(ctx, Delete(INBOX, secret), NOW)
    assert e.value.code is ErrorCode.WRONG_SECRET
    put_policy(ctx, policy(), INBOX)  # the owner's republish merges, as before
    assert held_policy(ctx) == policy()
    append(ctx, b"mail", permit(tokens()[0], b"mail"))


# -- APPEND to an inbox ---------------------------------------------------------------------------


@pytest.mark.threat("T-PERMIT-SPAM")
def test_append_without_a_policy_or_a_permit_is_refused(ctx: StoreContext) -> None:
    held = tokens()[0]
    refused(ctx, b"mail", permit(held, b"mail"), ErrorCode.NO_POLICY)
    refused(ctx, b"spam", None, ErrorCode.NO_POLICY)
    put_policy(ctx, policy())
    refused(ctx, b"spam", None, ErrorCode.PERMIT_REQUIRED)
    # A stamp, however strong, does not open a PERMITS inbox.
    refused(ctx, b"spam", stamped(b"spam", 14, inbox=INBOX), ErrorCode.PERMIT_REQUIRED)
    append(ctx, b"mail", permit(held, b"mail"))
    assert entries(ctx) == [b"mail"]
    # A policy held past its expiry is no policy (it lives no longer than its TTL or cert).
    row = ctx.db.get_object(INBOX)
    assert row is not None
    later = tokens(now=row.expires, seed=b"later")[0]
    refused(ctx, b"late", permit(later, b"late"), ErrorCode.NO_POLICY, now=row.expires)


@pytest.mark.threat("T-PERMIT-REPLAY")
def test_a_token_is_spent_once_and_repeats_of_its_entry_are_idempotent(
        ctx: StoreContext) -> None:
    put_policy(ctx, policy())
    held = tokens()[0]
    first = append(ctx, b"mail", permit(held, b"mail"))
    assert ctx.db.spent_on(INBOX, held.token.id) == entry_id(b"mail")
    refused(ctx, b"second mail", permit(held, b"second mail"), ErrorCode.PERMIT_SPENT)
    # The same entry again (a lost answer, another path): accepted, nothing spent twice.
    assert append(ctx, b"mail", permit(held, b"mail"), ttl=2 * TTL) == first + TTL
    assert entries(ctx) == [b"mail"]
    assert ctx.db.used_bytes() == ctx.db.recount()


@pytest.mark.threat("T-PERMIT-REPLAY")
def test_the_spent_token_outlives_the_acked_entry(ctx: StoreContext) -> None:
    put_policy(ctx, policy())
    held = tokens()[0]
    append(ctx, b"mail", permit(held, b"mail"))
    proof = make_owner_proof(OWNER.sign, OWNER.cert, OwnerOp.ACK, INBOX,
                             [ids.node_id(NODE_KEY.public)], args_digest_ack((entry_id(b"mail"),)),
                             NOW, SeededRng(b"ack"))
    handle_ack(ctx, Ack(INBOX, (entry_id(b"mail"),), proof), NOW)
    assert entries(ctx) == []
    refused(ctx, b"replayed", permit(held, b"replayed"), ErrorCode.PERMIT_SPENT)
    refused(ctx, b"mail", permit(held, b"mail"), ErrorCode.GONE)
    # Later too: the spend is kept until the token lapses, not until the entry's short TTL.
    refused(ctx, b"replayed", permit(held, b"replayed"), ErrorCode.PERMIT_SPENT,
            now=NOW + 10 * DAY)
    ctx.db.expire(NOW + 10 * DAY)
    refused(ctx, b"replayed", permit(held, b"replayed"), ErrorCode.PERMIT_SPENT,
            now=NOW + 10 * DAY)


@pytest.mark.threat("T-PERMIT-REPLAY")
def test_tokens_for_another_inbox_of_another_signer_or_expired_are_invalid(
        ctx: StoreContext) -> None:
    put_policy(ctx, policy())
    put_policy(ctx, policy(who=EVE))
    eve_inbox = ids.inbox_key(EVE.address)
    # Bob's token, spent towards Eve's inbox (signed for Bob's): another inbox.
    bobs = tokens()[0]
    refused(ctx, b"m1", permit(bobs, b"m1", inbox=eve_inbox), ErrorCode.PERMIT_INVALID,
            inbox=eve_inbox)
    # ... and towards another inbox of the same owner key, where the signatures all verify.
    put_policy(ctx, policy(who=CAROL))
    carol_inbox = ids.inbox_key(CAROL.address)
    assert CAROL.cert.sign_key == OWNER.cert.sign_key and carol_inbox != INBOX
    refused(ctx, b"m1", permit(bobs, b"m1", inbox=carol_inbox), ErrorCode.PERMIT_INVALID,
            inbox=carol_inbox)
    # A token for Bob's inbox that Eve signed.
    refused(ctx, b"m2", permit(tokens(who=EVE)[0], b"m2"), ErrorCode.PERMIT_INVALID)
    # A token whose key signed another entry than the one appended.
    bad_use = permit(tokens(seed=b"other")[0], b"m3")
    refused(ctx, b"m4", bad_use, ErrorCode.PERMIT_INVALID)
    # Expired: issued two epochs ago, used after its expiry.
    old = tokens(now=NOW - 2 * EPOCH, seed=b"old")[0]
    assert old.token.expires <= NOW
    refused(ctx, b"m5", permit(old, b"m5"), ErrorCode.PERMIT_INVALID)
    # Not yet valid: dated beyond any token the owner can have issued by now.
    future = tokens(now=NOW + EPOCH + DAY, seed=b"future")[0]
    refused(ctx, b"m6", permit(future, b"m6"), ErrorCode.PERMIT_INVALID)
    # A request-inbox proof is not a token; garbage in a PERMIT proof is malformed, no fault.
    refused(ctx, b"m7", AppendProof(AppendProofKind.PERMIT, b"\x00garbage"),
            ErrorCode.PERMIT_INVALID)
    assert entries(ctx) == entries(ctx, eve_inbox) == entries(ctx, carol_inbox) == []
    # Nothing refused was spent: the valid token still works where it belongs.
    append(ctx, b"m1", permit(bobs, b"m1"))


@pytest.mark.threat("T-PERMIT-REVOKED")
def test_a_revoked_token_is_refused_and_others_still_work(ctx: StoreContext) -> None:
    put_policy(ctx, policy(1))
    held = tokens(3)
    append(ctx, b"m0", permit(held[0], b"m0"))
    put_policy(ctx, policy(2, (held[1].token.id,)))  # `block`: a newer version revokes
    refused(ctx, b"m1", permit(held[1], b"m1"), ErrorCode.PERMIT_REVOKED)
    append(ctx, b"m2", permit(held[2], b"m2"))
    # The old version, replayed to the node, does not lift the revocation.
    with pytest.raises(Denied):
        put_policy(ctx, policy(1), INBOX)
    refused(ctx, b"m1", permit(held[1], b"m1"), ErrorCode.PERMIT_REVOKED)
    assert entries(ctx) == [b"m0", b"m2"]


@pytest.mark.threat("T-PERMIT-REPLAY", "T-PERMIT-REVOKED")
def test_replication_keeps_one_entry_per_token_and_drops_revoked_ones(
        ctx: StoreContext) -> None:
    put_policy(ctx, policy(2, (tokens(3)[2].token.id,)))
    held = tokens(3)
    batch = (ReplicaEntry(b"a", TTL, permit(held[0], b"a")),
             ReplicaEntry(b"b", TTL, permit(held[0], b"b")),  # the same token, once per replica
             ReplicaEntry(b"c", TTL, permit(held[1], b"c")),
             ReplicaEntry(b"d", TTL, permit(held[2], b"d")),  # revoked since
             ReplicaEntry(b"e", TTL, None))  # no permit
    assert handle_replicate(ctx, Replicate(INBOX, batch), PEER, NOW).accepted == 2
    assert entries(ctx) == [b"a", b"c"]
    # A later push of the other entry: the token is spent here already.
    again = (ReplicaEntry(b"b", TTL, permit(held[0], b"b")),)
    assert handle_replicate(ctx, Replicate(INBOX, again), PEER, NOW).accepted == 0
    assert ctx.db.spent_on(INBOX, held[0].token.id) == entry_id(b"a")
    assert ctx.db.used_bytes() == ctx.db.recount()


# -- the request inbox (RTS) ----------------------------------------------------------------------


@pytest.mark.threat("T-RTS-FLOOD")
def test_request_inbox_takes_a_good_stamp_only(ctx: StoreContext) -> None:
    put_policy(ctx, policy(bits=BITS))
    refused(ctx, b"rts", None, ErrorCode.STAMP_REQUIRED, inbox=REQUESTS)
    refused(ctx, b"rts", permit(tokens()[0], b"rts", inbox=REQUESTS), ErrorCode.STAMP_REQUIRED,
            inbox=REQUESTS)  # a token does not replace work
    refused(ctx, b"rts", AppendProof(AppendProofKind.STAMP, b"junk"), ErrorCode.STAMP_REQUIRED,
            inbox=REQUESTS)
    # Enough for the network's minimum, too little for this owner's policy.
    weak = next(p for seed in range(100)
                if PARAMS.stamp_bits <= stamp_work(wire.decode(
                    (p := stamped(b"rts", PARAMS.stamp_bits, seed=b"%d" % seed)).data, Stamp),
                    REQUESTS, entry_id(b"rts")) < BITS)
    refused(ctx, b"rts", weak, ErrorCode.STAMP_REQUIRED, inbox=REQUESTS)
    # Work for another request inbox, another entry, two days ago or two days ahead.
    refused(ctx, b"rts", stamped(b"rts", inbox=ids.requests_key(EVE.address)),
            ErrorCode.STAMP_REQUIRED, inbox=REQUESTS)
    other = wire.decode(stamped(b"other rts").data, Stamp)
    refused(ctx, b"rts", AppendProof(AppendProofKind.STAMP, wire.encode(other)),
            ErrorCode.STAMP_REQUIRED, inbox=REQUESTS)
    for when in (NOW - 2 * DAY, NOW + 2 * DAY):
        refused(ctx, b"rts", stamped(b"rts", now=when), ErrorCode.STAMP_REQUIRED,
                inbox=REQUESTS)
    # Yesterday's and tomorrow's stamps still count (clocks and midnight); today's, of course.
    append(ctx, b"rts-y", stamped(b"rts-y", now=NOW - DAY), inbox=REQUESTS)
    append(ctx, b"rts-t", stamped(b"rts-t", now=NOW + DAY), inbox=REQUESTS)
    append(ctx, b"rts", stamped(b"rts"), inbox=REQUESTS)
    assert entries(ctx, REQUESTS) == [b"rts-y", b"rts-t", b"rts"]


@pytest.mark.threat("T-RTS-FLOOD")
def test_replication_keeps_a_request_its_stamp_day_has_passed(ctx: StoreContext) -> None:
    """A request taken 10 days ago may be pushed to a new replica today (repair): its stamp
    was for its own day. A fresh APPEND with the same old stamp is still refused."""
    put_policy(ctx, policy(bits=PARAMS.stamp_bits))
    old = stamped(b"old rts", PARAMS.stamp_bits, now=NOW - 10 * DAY)
    refused(ctx, b"old rts", old, ErrorCode.STAMP_REQUIRED, inbox=REQUESTS)
    push = (ReplicaEntry(b"old rts", 4 * DAY, old),)
    assert handle_replicate(ctx, Replicate(REQUESTS, push), PEER, NOW).accepted == 1
    older = stamped(b"older rts", PARAMS.stamp_bits, now=NOW - REQUEST_TTL - 3 * DAY)
    push = (ReplicaEntry(b"older rts", 60, older),)
    assert handle_replicate(ctx, Replicate(REQUESTS, push), PEER, NOW).accepted == 0


@pytest.mark.threat("T-PERMIT-REPLAY")
def test_an_entry_lives_no_longer_than_its_token(ctx: StoreContext) -> None:
    put_policy(ctx, policy())
    # A token issued 35 days ago: it lapses in about two weeks, before the longest TTL.
    token = tokens(now=NOW - 35 * DAY)[0]
    assert NOW < token.token.expires < NOW + ctx.limits.max_ttl
    expiry = append(ctx, b"mail", permit(token, b"mail"), ttl=365 * DAY)
    assert expiry == token.token.expires


@pytest.mark.threat("T-RTS-FLOOD")
def test_the_network_minimum_applies_when_the_policy_asks_less(ctx: StoreContext) -> None:
    put_policy(ctx, policy(bits=0))
    cheap = next(p for seed in range(100)
                 if stamp_work(wire.decode((p := stamped(b"rts", 0, seed=b"%d" % seed)).data,
                                           Stamp), REQUESTS, entry_id(b"rts"))
                 < PARAMS.stamp_bits)
    refused(ctx, b"rts", cheap, ErrorCode.STAMP_REQUIRED, inbox=REQUESTS)
    append(ctx, b"rts", stamped(b"rts", PARAMS.stamp_bits), inbox=REQUESTS)


@pytest.mark.threat("T-RTS-FLOOD")
def test_request_inbox_quota_and_ttl(ctx: StoreContext) -> None:
    assert ctx.limits.inbox_entries > REQUEST_ENTRIES and ctx.limits.max_ttl > REQUEST_TTL
    put_policy(ctx, policy(bits=PARAMS.stamp_bits))
    rts = [b"rts %d" % i for i in range(REQUEST_ENTRIES + 1)]
    expiry = append(ctx, rts[0], stamped(rts[0], PARAMS.stamp_bits), inbox=REQUESTS,
                    ttl=30 * DAY)
    assert expiry == int(NOW) + REQUEST_TTL  # clamped to the request inbox's TTL
    for e in rts[1:REQUEST_ENTRIES]:
        append(ctx, e, stamped(e, PARAMS.stamp_bits), inbox=REQUESTS)
    refused(ctx, rts[-1], stamped(rts[-1], PARAMS.stamp_bits), ErrorCode.INBOX_FULL,
            inbox=REQUESTS)
    assert len(entries(ctx, REQUESTS)) == REQUEST_ENTRIES
    # The same quota binds replication; the owner's inbox proper is not affected.
    push = (ReplicaEntry(rts[-1], TTL, stamped(rts[-1], PARAMS.stamp_bits)),)
    assert handle_replicate(ctx, Replicate(REQUESTS, push), PEER, NOW).accepted == 0
    append(ctx, b"mail", permit(tokens()[0], b"mail"))


@pytest.mark.threat("T-RTS-FLOOD")
def test_an_acked_stamped_request_cannot_come_back_on_the_same_stamp(
        ctx: StoreContext) -> None:
    """The owner's ACK outlives the sender's short TTL: the same entry on the same stamp is
    refused by APPEND within the stamp's days and by a Replicate 14 days on (the ACK record
    used to last only until the entry's own expiry, so one stamp refilled a slot for free)."""
    put_policy(ctx, policy())
    rts = b"a stranger's request" * 4
    stamp = stamped(rts)
    append(ctx, rts, stamp, inbox=REQUESTS, ttl=60)
    ack = make_owner_proof(OWNER.sign, OWNER.cert, OwnerOp.ACK, REQUESTS, [ctx.node_id],
                           args_digest_ack((entry_id(rts),)), NOW + 10, SeededRng(b"ack"))
    handle_ack(ctx, Ack(REQUESTS, (entry_id(rts),), ack), NOW + 10)
    ctx.db.expire(NOW + 61)  # the entry's own expiry has passed
    with pytest.raises(Refusal) as e:
        handle_append(ctx, Append(REQUESTS, rts, 60, stamp), PEER, NOW + 61)
    assert e.value.code is ErrorCode.GONE
    later = NOW + 14 * DAY
    ctx.db.expire(later)
    push = (ReplicaEntry(rts, 60, stamp),)
    assert handle_replicate(ctx, Replicate(REQUESTS, push), PEER, later).accepted == 0


@pytest.mark.threat("T-PERMIT-SPAM")
def test_an_open_inbox_takes_a_stamp_or_a_token(ctx: StoreContext) -> None:
    put_policy(ctx, policy(mode=PolicyMode.OPEN, bits=BITS))
    refused(ctx, b"spam", None, ErrorCode.STAMP_REQUIRED)
    refused(ctx, b"spam", stamped(b"spam", inbox=REQUESTS), ErrorCode.STAMP_REQUIRED)
    append(ctx, b"hello", stamped(b"hello", inbox=INBOX))
    append(ctx, b"mail", permit(tokens()[0], b"mail"))
    assert entries(ctx) == [b"hello", b"mail"]
    # An open inbox keeps the normal quotas and TTL (only request inboxes are tight).
    assert append(ctx, b"long", stamped(b"long", inbox=INBOX), ttl=20 * DAY) \
        == int(NOW) + 20 * DAY


# -- refusals are never faults --------------------------------------------------------------------


@pytest.mark.threat("T-PERMIT-SPAM", "T-PERMIT-REPLAY", "T-PERMIT-REVOKED", "T-RTS-FLOOD")
async def test_every_permit_refusal_is_answered_and_counted_as_no_fault() -> None:
    s = Scenario(2, seed=3)
    await s.build("oracle")
    x, other = s.nodes
    svc = gated_store(x.net, x.dht, x.key, PARAMS, FixedClock(NOW), SeededRng(1),
                      StoreDb(":memory:"))
    try:
        registry = ServiceRegistry([svc])
        peer = Peer(other.cert, None)
        blob = wire.encode(policy(2, (tokens(3)[2].token.id,)))
        for key in (INBOX, REQUESTS):
            await registry.handle(peer, Store(key, ObjectKind.POLICY, blob, DAY, ()))
        held = tokens(3)
        eve_inbox = ids.inbox_key(EVE.address)
        assert not isinstance(await registry.handle(
            peer, Append(INBOX, b"a", TTL, permit(held[0], b"a"))), ErrorReply)
        cases = [
            (Append(eve_inbox, b"x", TTL, None), ErrorCode.NO_POLICY),
            (Append(INBOX, b"x", TTL, None), ErrorCode.PERMIT_REQUIRED),
            (Append(INBOX, b"b", TTL, permit(held[0], b"b")), ErrorCode.PERMIT_SPENT),
            (Append(INBOX, b"d", TTL, permit(held[2], b"d")), ErrorCode.PERMIT_REVOKED),
            (Append(INBOX, b"e", TTL, permit(tokens(who=EVE)[0], b"e")),
             ErrorCode.PERMIT_INVALID),
            (Append(INBOX, b"f", TTL, AppendProof(AppendProofKind.PERMIT, b"junk")),
             ErrorCode.PERMIT_INVALID),
            (Append(REQUESTS, b"r", TTL, None), ErrorCode.STAMP_REQUIRED),
            (Append(REQUESTS, b"r", TTL, AppendProof(AppendProofKind.STAMP, b"junk")),
             ErrorCode.STAMP_REQUIRED),
        ]
        for msg, code in cases:
            reply = await registry.handle(peer, msg)
            assert isinstance(reply, ErrorReply) and reply.code is code, (code, reply)
            assert not reply.code.is_fault
        assert svc.stats.refused == len(cases) and svc.stats.faults == 0
    finally:
        svc.db.close()


def test_dispatch_raises_refusals_not_protocol_errors_for_bad_permits(
        ctx: StoreContext) -> None:
    put_policy(ctx, policy())
    for msg in (Append(INBOX, b"x", TTL, None),
                Append(INBOX, b"x", TTL, AppendProof(AppendProofKind.PERMIT, bytes(300))),
                Append(REQUESTS, b"x", TTL, AppendProof(AppendProofKind.STAMP, bytes(9)))):
        with pytest.raises(Refusal) as e:
            dispatch(ctx, PEER, msg, NOW)
        assert not isinstance(e.value, RemoteProtocolError)


# -- schema v1 -> v2 ------------------------------------------------------------------------------


def test_a_schema_v1_database_migrates_to_v2_and_keeps_its_rows(tmp_path: Path) -> None:
    assert SCHEMA_VERSION >= 2 and SPENT in SCHEMA
    path = tmp_path / "store.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA.replace(SPENT, ""))
    conn.execute("INSERT INTO meta VALUES ('schema_version', 1)")
    conn.execute("INSERT INTO meta VALUES ('used_bytes', 0)")
    conn.commit()
    conn.close()
    assert "spent" not in tables(path)
    # Rows written by a version-1 node (through StoreDb's own writes would need v2: by hand).
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (b"\x01" * 32, int(ObjectKind.BODY), b"body", blob_digest(b"body"),
                  int(NOW) + TTL, None, 0, NOW, 164))
    conn.execute("INSERT INTO entries (inbox, entry_id, entry, proof, expires, size) "
                  "VALUES (?, ?, ?, ?, ?, ?)",
                  (INBOX, entry_id(b"old mail"), b"old mail", None, int(NOW) + TTL, 136))
    conn.execute("UPDATE meta SET value=300 WHERE name='used_bytes'")
    conn.commit()
    conn.close()

    db = StoreDb(path)
    try:
        obj = db.get_object(b"\x01" * 32)
        assert obj is not None and obj.blob == b"body"
        assert [r.entry for r in db.inbox_entries(INBOX, NOW)] == [b"old mail"]
        # resized at version 4 with the current overheads (schema.RESIZE)
        assert db.used_bytes() == db.recount() == (
            object_size(b"body", 0) + entry_size(b"old mail", None))
        ctx = make_ctx(db)
        put_policy(ctx, policy())
        held = tokens()[0]
        append(ctx, b"new mail", permit(held, b"new mail"))
        assert db.spent_on(INBOX, held.token.id) == entry_id(b"new mail")
        assert db.used_bytes() == db.recount()
    finally:
        db.close()
    assert "spent" in tables(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone() \
            == (SCHEMA_VERSION,)
    finally:
        conn.close()
    StoreDb(path).close()  # opening a v2 file again changes nothing


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()

