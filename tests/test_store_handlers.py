"""The storage primitives as pure handlers (anonmail/store/handlers.py), at a fixed `now`.

Every op; TTL clamping and expiry; quotas; delete-hash semantics (one body, three recipients);
content-addressed fragments; certificate validation and replacement; owner proofs (replay,
also across a reopened database; wrong node; stale time; altered arguments); receipts only
after commit; a hypothesis model of STORE/DELETE; what the database holds (ciphertext only).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonmail import crypto, wire
from anonmail.errors import ErrorCode, Refusal, RemoteProtocolError
from anonmail.records import ids
from anonmail.records.certs import AddressCert, CertificateAuthority, NodeCert, self_certify
from anonmail.records.params import testnet as make_testnet
from anonmail.records.receipts import StoreOp
from anonmail.rng import SeededRng
from anonmail.store.client import check_receipt
from anonmail.store.db import StoreDb
from anonmail.store.errors import Denied, Invalid, QuotaExceeded, StorageFailure
from anonmail.store.handlers import (
    StoreContext,
    StoreLimits,
    dispatch,
    handle_ack,
    handle_append,
    handle_delete,
    handle_fetch,
    handle_probe,
    handle_read,
    handle_replicate,
    handle_store,
)
from anonmail.store.messages import (
    Ack,
    Append,
    AppendProof,
    AppendProofKind,
    Delete,
    Deleted,
    Entries,
    Fetch,
    Fetched,
    ItemKind,
    NotFound,
    ObjectKind,
    OwnerOp,
    OwnerProof,
    Probe,
    ProbeItem,
    Read,
    ReplicaEntry,
    Replicate,
    Store,
    args_digest_ack,
    args_digest_read,
    blob_digest,
    delete_hash,
    entry_id,
)
from anonmail.store.proofs import make_owner_proof

NOW = 1_800_000_000.0
PARAMS = make_testnet()
NODE_KEY = crypto.SigningKey(b"\x11" * 32)
NODE_ID = ids.node_id(NODE_KEY.public)
PEER = b"\x22" * 32
CA = CertificateAuthority(crypto.SigningKey(b"\x33" * 32))
BOB = "bob@example.org"
BOB_SIGN = crypto.SigningKey(b"\x44" * 32)
BOB_CERT = CA.issue(BOB, BOB_SIGN.public, b"\x55" * 32, NOW - 3600)
INBOX = ids.inbox_key(BOB)
SECRETS = [bytes([i]) * 32 for i in range(1, 5)]
BODY_KEY = ids.body_key("<r4nd0m@anonmail>")
NODE_CERT = NodeCert.issue(NODE_KEY, (), NOW, PARAMS)


def make_ctx(db: StoreDb | None = None, **limits: int) -> StoreContext:
    return StoreContext(db if db is not None else StoreDb(":memory:"), NODE_KEY, PARAMS,
                        frozenset({CA.public}), StoreLimits(**limits))


@pytest.fixture
def ctx() -> Iterator[StoreContext]:
    c = make_ctx()
    yield c
    c.db.close()


def store(ctx: StoreContext, blob: bytes = b"ciphertext", *, key: bytes = BODY_KEY,
          kind: ObjectKind = ObjectKind.BODY, ttl: int = 3600,
          secrets: list[bytes] | None = None, now: float = NOW) -> int:
    """STORE; returns the receipt's expiry after checking the receipt."""
    hashes = tuple(delete_hash(s) for s in (SECRETS[:1] if secrets is None else secrets))
    reply = handle_store(ctx, Store(key, kind, blob, ttl, hashes), now)
    check_receipt(reply.receipt, NODE_CERT, StoreOp.STORE, key, blob_digest(blob), now)
    return reply.receipt.expires


def fetch(ctx: StoreContext, key: bytes = BODY_KEY, now: float = NOW) -> bytes | None:
    reply = handle_fetch(ctx, Fetch(key), now)
    return reply.blob if isinstance(reply, Fetched) else None


def delete(ctx: StoreContext, secret: bytes, key: bytes = BODY_KEY, now: float = NOW) -> object:
    return handle_delete(ctx, Delete(key, secret), now)


def proof(op: OwnerOp, args: bytes, *, now: float = NOW, node_id: bytes = NODE_ID,
          inbox: bytes = INBOX, rng: SeededRng | None = None,
          cert: AddressCert = BOB_CERT, key: crypto.SigningKey = BOB_SIGN) -> OwnerProof:
    return make_owner_proof(key, cert, op, inbox, node_id, args, now,
                            rng if rng is not None else SeededRng(repr((op, args, now)).encode()))


def read(ctx: StoreContext, after: int = 0, now: float = NOW,
         rng: SeededRng | None = None) -> Entries:
    p = proof(OwnerOp.READ, args_digest_read(after), now=now, rng=rng)
    return handle_read(ctx, Read(INBOX, after, p), now)


def append(ctx: StoreContext, entry: bytes, ttl: int = 3600, now: float = NOW,
           inbox: bytes = INBOX) -> int:
    reply = handle_append(ctx, Append(inbox, entry, ttl, None), PEER, now)
    check_receipt(reply.receipt, NODE_CERT, StoreOp.APPEND, inbox, entry_id(entry), now)
    return reply.receipt.expires


# -- STORE / FETCH --------------------------------------------------------------------------------


def test_store_fetch_round_trip_and_receipt(ctx: StoreContext) -> None:
    expires = store(ctx, b"\x00\xffopaque")
    assert expires == int(NOW) + 3600
    assert fetch(ctx) == b"\x00\xffopaque"
    assert isinstance(handle_fetch(ctx, Fetch(b"\x99" * 32), NOW), NotFound)


def test_ttl_is_clamped_and_expired_objects_vanish(ctx: StoreContext) -> None:
    expires = store(ctx, ttl=10**9)
    assert expires == int(NOW) + ctx.limits.max_ttl
    assert fetch(ctx, now=expires - 1) == b"ciphertext"
    assert fetch(ctx, now=expires) is None
    gone = ctx.db.expire(expires)
    assert gone.objects == 1 and ctx.db.count_objects() == 0
    assert ctx.db.used_bytes() == ctx.db.recount() == 0


@pytest.mark.threat("T-STORE-TAMPER")
def test_different_blob_under_existing_key_refused(ctx: StoreContext) -> None:
    store(ctx, b"first")
    with pytest.raises(Denied, match="another object"):
        store(ctx, b"second")
    assert fetch(ctx) == b"first"


@pytest.mark.threat("T-STORE-TAMPER")
def test_fragment_must_match_its_content_address(ctx: StoreContext) -> None:
    blob = b"fragment ciphertext"
    store(ctx, blob, key=ids.fragment_key(blob), kind=ObjectKind.FRAGMENT)
    with pytest.raises(Invalid, match="content address") as e:
        store(ctx, b"other bytes", key=ids.fragment_key(blob) [::-1], kind=ObjectKind.FRAGMENT)
    assert isinstance(e.value, RemoteProtocolError)  # the peer's fault: counted by the transport
    assert fetch(ctx, ids.fragment_key(blob)) == blob


def test_same_key_other_kind_refused(ctx: StoreContext) -> None:
    blob = b"x"
    store(ctx, blob, key=ids.fragment_key(blob), kind=ObjectKind.FRAGMENT)
    with pytest.raises(Denied):
        store(ctx, blob, key=ids.fragment_key(blob), kind=ObjectKind.BODY)


# -- DELETE ---------------------------------------------------------------------------------------


@pytest.mark.threat("T-DELETE-OTHERS")
def test_one_body_three_recipients_goes_after_the_third_secret(ctx: StoreContext) -> None:
    store(ctx, secrets=SECRETS[:3])
    used = ctx.db.used_bytes()
    for i, secret in enumerate(SECRETS[:3]):
        assert fetch(ctx) == b"ciphertext", f"gone after {i} deletes"
        assert isinstance(delete(ctx, secret), Deleted)
    assert fetch(ctx) is None
    assert ctx.db.used_bytes() < used
    assert ctx.db.used_bytes() == ctx.db.recount()


@pytest.mark.threat("T-DELETE-OTHERS")
def test_wrong_secret_is_refused_without_blame(ctx: StoreContext) -> None:
    store(ctx, secrets=SECRETS[:2])
    with pytest.raises(Denied, match="secret") as e:
        delete(ctx, SECRETS[3])
    assert isinstance(e.value, Refusal) and e.value.code is ErrorCode.WRONG_SECRET
    with pytest.raises(Denied):
        delete(ctx, delete_hash(SECRETS[0]))  # the hash itself is not the preimage
    assert fetch(ctx) == b"ciphertext"


def test_a_merge_does_not_postpone_republish(ctx: StoreContext) -> None:
    """Only the STORE that placed an object delays its republish; re-storing it later (anyone
    holding the blob can) must not keep its replicas from repairing it."""
    store(ctx)
    store(ctx, now=NOW + 3000)
    row = ctx.db.get_object(BODY_KEY)
    assert row is not None and row.touched == NOW


def test_repeated_delete_is_idempotent_and_missing_key_not_found(ctx: StoreContext) -> None:
    store(ctx, secrets=SECRETS[:2])
    assert isinstance(delete(ctx, SECRETS[0]), Deleted)
    assert isinstance(delete(ctx, SECRETS[0]), Deleted)  # the first answer was lost
    assert fetch(ctx) == b"ciphertext"
    assert isinstance(delete(ctx, SECRETS[0], key=b"\x01" * 32), NotFound)


@pytest.mark.threat("T-DELETE-OTHERS")
def test_merge_adds_rights_but_never_restores_or_removes_one(ctx: StoreContext) -> None:
    e1 = store(ctx, secrets=SECRETS[:2], ttl=100)
    # Same blob again (a retry, a replica's push, or an attacker with the blob): merges.
    e2 = store(ctx, secrets=[SECRETS[2]], ttl=200)
    assert e2 == int(NOW) + 200 > e1
    assert isinstance(delete(ctx, SECRETS[0]), Deleted)
    # A stale replica pushes the original set: the used hash stays used.
    store(ctx, secrets=SECRETS[:2], ttl=50)
    live, removed = ctx.db.get_hashes(BODY_KEY)
    assert live == {delete_hash(SECRETS[1]), delete_hash(SECRETS[2])}
    assert removed == {delete_hash(SECRETS[0])}
    delete(ctx, SECRETS[1])
    delete(ctx, SECRETS[2])
    assert fetch(ctx) is None
    # Deleted: the tombstone refuses the same blob until the old expiry (no resurrection).
    with pytest.raises(Denied, match="deleted"):
        store(ctx, secrets=[SECRETS[3]])
    ctx.db.expire(NOW + 200)
    store(ctx, secrets=[SECRETS[3]], now=NOW + 201)


@pytest.mark.threat("T-DELETE-OTHERS")
def test_undeletable_object_takes_no_hash_an_attacker_could_then_use(ctx: StoreContext) -> None:
    store(ctx, secrets=[])
    with pytest.raises(Denied):
        delete(ctx, SECRETS[0])
    store(ctx, secrets=[SECRETS[0]])  # the attacker merges its own right in ...
    with pytest.raises(Denied):
        delete(ctx, SECRETS[0])  # ... which was not taken
    assert fetch(ctx) == b"ciphertext"


# -- certificates ---------------------------------------------------------------------------------


def cert_store(ctx: StoreContext, cert: AddressCert, key: bytes | None = None,
               now: float = NOW) -> int:
    return store(ctx, wire.encode(cert), key=cert.key if key is None else key,
                 kind=ObjectKind.CERT, secrets=[], ttl=10**9, now=now)


def test_certificates_are_verified_and_renewed(ctx: StoreContext) -> None:
    expires = cert_store(ctx, BOB_CERT)
    assert expires == min(int(NOW) + ctx.limits.max_ttl, BOB_CERT.expires)
    assert fetch(ctx, BOB_CERT.key) == wire.encode(BOB_CERT)
    newer = CA.issue(BOB, BOB_SIGN.public, b"\x66" * 32, NOW)
    cert_store(ctx, newer)
    assert fetch(ctx, BOB_CERT.key) == wire.encode(newer)
    with pytest.raises(Denied, match="newer"):
        cert_store(ctx, BOB_CERT)  # a stale replica's push does not roll back
    assert fetch(ctx, BOB_CERT.key) == wire.encode(newer)
    cert_store(ctx, newer)  # the same one again: fine (merge)
    anon = self_certify("carol", crypto.SigningKey(b"\x77" * 32), b"\x88" * 32, NOW)
    cert_store(ctx, anon)  # self-certifying: no CA needed


@pytest.mark.parametrize("case", ["wrong key", "untrusted CA", "garbage", "expired", "forged"])
def test_bad_certificates_are_refused(ctx: StoreContext, case: str) -> None:
    cert, key, blob = BOB_CERT, BOB_CERT.key, None
    if case == "wrong key":
        key = ids.cert_key("mallory@example.org")
    elif case == "untrusted CA":
        cert = CertificateAuthority(crypto.SigningKey(b"\x99" * 32)).issue(
            BOB, BOB_SIGN.public, b"\x55" * 32, NOW)
    elif case == "garbage":
        blob = b"\x82\x01\x02"
    elif case == "expired":
        cert = CA.issue(BOB, BOB_SIGN.public, b"\x55" * 32, NOW - 2 * CA.lifetime)
    elif case == "forged":
        raw = bytearray(wire.encode(BOB_CERT))
        raw[-1] ^= 1
        blob = bytes(raw)
    data = wire.encode(cert) if blob is None else blob
    with pytest.raises(Invalid) as e:
        handle_store(ctx, Store(key, ObjectKind.CERT, data, 3600, ()), NOW)
    assert "bob" not in str(e.value)  # details never name an address
    assert fetch(ctx, key) is None


# -- quotas ---------------------------------------------------------------------------------------


def test_quotas_refuse_without_blame() -> None:
    ctx = make_ctx(max_blob=100, node_bytes=2000, max_entry=50, inbox_entries=3,
                   inbox_bytes=10_000, max_delete_hashes=2)
    try:
        with pytest.raises(QuotaExceeded, match="quota: object too large") as e:
            store(ctx, b"x" * 101)
        assert isinstance(e.value, Refusal)
        with pytest.raises(QuotaExceeded, match="delete hashes"):
            store(ctx, secrets=SECRETS[:3])
        store(ctx, secrets=SECRETS[:2])
        with pytest.raises(QuotaExceeded, match="delete hashes"):
            store(ctx, secrets=SECRETS[2:3])  # a merge past the cap
        with pytest.raises(QuotaExceeded, match="entry too large"):
            append(ctx, b"e" * 51)
        for i in range(3):
            append(ctx, b"entry %d" % i)
        append(ctx, b"entry 0")  # a duplicate needs no room
        with pytest.raises(QuotaExceeded, match="inbox full"):
            append(ctx, b"entry 3")
        append(ctx, b"entry 3", inbox=ids.inbox_key("carol@example.org"))
        with pytest.raises(QuotaExceeded, match="node storage full"):
            for i in range(20):
                store(ctx, b"y" * 100, key=bytes([i]) * 32)
        assert ctx.db.used_bytes() <= 2000
        assert ctx.db.used_bytes() == ctx.db.recount()
    finally:
        ctx.db.close()


@pytest.mark.threat("T-INBOX-FLOOD")
def test_inbox_flood_is_bounded_per_inbox_and_in_bytes() -> None:
    ctx = make_ctx(inbox_entries=1000, inbox_bytes=64 << 10, max_entry=4096)
    try:
        accepted = 0
        with pytest.raises(QuotaExceeded):
            for i in range(10_000):
                append(ctx, i.to_bytes(4, "big") * 1000)
                accepted += 1
        held, used = ctx.db.inbox_usage(INBOX, NOW)
        assert held == accepted and used <= 64 << 10
        # Other inboxes on the node are unaffected; the flood expires with its TTL.
        append(ctx, b"hello", inbox=ids.inbox_key("carol@example.org"))
        ctx.db.expire(NOW + 3600)
        assert ctx.db.inbox_usage(INBOX, NOW + 3600) == (0, 0)
    finally:
        ctx.db.close()


# -- APPEND / READ / ACK --------------------------------------------------------------------------


def test_append_read_ack(ctx: StoreContext) -> None:
    entries = [b"sealed header %d" % i for i in range(3)]
    for e in entries:
        append(ctx, e)
    assert append(ctx, entries[0], ttl=7200) == int(NOW) + 7200  # duplicate: one entry, later
    got = read(ctx)
    assert [x.entry for x in got.entries] == entries and not got.more
    assert got.entries[0].expires == int(NOW) + 7200
    ids_ = (entry_id(entries[0]), entry_id(entries[2]), b"\x01" * 32)
    p = proof(OwnerOp.ACK, args_digest_ack(ids_))
    handle_ack(ctx, Ack(INBOX, ids_, p), NOW)
    assert [x.entry for x in read(ctx, now=NOW + 1).entries] == [entries[1]]
    with pytest.raises(Denied, match="acknowledged"):
        append(ctx, entries[0])  # an ACKed entry does not come back
    assert read(ctx, now=NOW + 3600).entries == ()  # expired


def test_read_pages_through_a_full_inbox() -> None:
    ctx = make_ctx(read_page_bytes=3000)
    try:
        entries = [bytes([i]) * 1000 for i in range(10)]
        for e in entries:
            append(ctx, e)
        got: list[bytes] = []
        after, pages = 0, 0
        while True:
            page = read(ctx, after)
            got.extend(x.entry for x in page.entries)
            pages += 1
            if not page.more:
                break
            after = page.next
        assert got == entries and pages == 4
    finally:
        ctx.db.close()


def test_requests_inbox_belongs_to_the_same_owner(ctx: StoreContext) -> None:
    rts = ids.requests_key(BOB)
    append(ctx, b"rts", inbox=rts)
    p = proof(OwnerOp.READ, args_digest_read(0), inbox=rts)
    assert [x.entry for x in handle_read(ctx, Read(rts, 0, p), NOW).entries] == [b"rts"]


def test_append_policy_plugs_in(ctx: StoreContext) -> None:
    seen: list[tuple[bytes, AppendProof | None, bytes]] = []

    def permits_only(inbox: bytes, entry: bytes, proof: AppendProof | None, peer: bytes,
                     now: float) -> None:
        seen.append((entry, proof, peer))
        if proof is None or proof.kind is not AppendProofKind.PERMIT:
            raise Denied("no permit")

    ctx.append_policy = permits_only
    with pytest.raises(Denied, match="permit"):
        handle_append(ctx, Append(INBOX, b"spam", 60, None), PEER, NOW)
    permit = AppendProof(AppendProofKind.PERMIT, b"signed permit")
    handle_append(ctx, Append(INBOX, b"mail", 60, permit), PEER, NOW)
    assert seen[-1] == (b"mail", permit, PEER)
    # The proof is kept with the entry, and replication re-judges it.
    rows = ctx.db.inbox_entries(INBOX, NOW)
    assert [wire.decode(r.proof, AppendProof) for r in rows if r.proof] == [permit]
    reply = handle_replicate(ctx, Replicate(INBOX, (ReplicaEntry(b"spam2", 60, None),
                                                    ReplicaEntry(b"mail2", 60, permit))),
                             PEER, NOW)
    assert reply.accepted == 1


# -- owner proofs ---------------------------------------------------------------------------------


@pytest.mark.threat("T-REPLAY-OWNER")
def test_replayed_owner_proof_is_refused(ctx: StoreContext) -> None:
    append(ctx, b"x")
    p = proof(OwnerOp.READ, args_digest_read(0))
    handle_read(ctx, Read(INBOX, 0, p), NOW)
    with pytest.raises(Invalid, match="replayed") as e:
        handle_read(ctx, Read(INBOX, 0, p), NOW + 5)
    assert isinstance(e.value, RemoteProtocolError)
    ids_ = (entry_id(b"x"),)
    ack = proof(OwnerOp.ACK, args_digest_ack(ids_))
    handle_ack(ctx, Ack(INBOX, ids_, ack), NOW)
    with pytest.raises(Invalid, match="replayed"):
        handle_ack(ctx, Ack(INBOX, ids_, ack), NOW)
    # After the skew the nonce may be forgotten: the time check refuses the proof anyway.
    ctx.db.expire(NOW + PARAMS.clock_skew + 2)
    with pytest.raises(Denied, match="clock skew"):
        handle_read(ctx, Read(INBOX, 0, p), NOW + PARAMS.clock_skew + 2)


@pytest.mark.threat("T-REPLAY-OWNER")
def test_replay_refused_after_reopening_the_database(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    ctx = make_ctx(StoreDb(path))
    append(ctx, b"x")
    p = proof(OwnerOp.READ, args_digest_read(0))
    handle_read(ctx, Read(INBOX, 0, p), NOW)
    ctx.db.close()
    ctx = make_ctx(StoreDb(path))
    try:
        with pytest.raises(Invalid, match="replayed"):
            handle_read(ctx, Read(INBOX, 0, p), NOW + 1)
    finally:
        ctx.db.close()


@pytest.mark.threat("T-REPLAY-OWNER")
@pytest.mark.parametrize("case", ["other node", "stale", "future", "other inbox", "other args",
                                  "op swapped", "forged", "untrusted CA", "not the owner"])
def test_bad_owner_proofs_are_refused(ctx: StoreContext, case: str) -> None:
    append(ctx, b"x")
    inbox, args, op = INBOX, args_digest_read(0), OwnerOp.READ
    kw: dict[str, object] = {}
    if case == "other node":
        kw["node_id"] = b"\x01" * 32
    elif case == "stale":
        kw["now"] = NOW - PARAMS.clock_skew - 1
    elif case == "future":
        kw["now"] = NOW + PARAMS.clock_skew + 1
    elif case == "other inbox":
        inbox = ids.inbox_key("carol@example.org")
    elif case == "other args":
        args = args_digest_read(5)
    elif case == "op swapped":
        op = OwnerOp.ACK
    elif case == "forged":
        kw["key"] = crypto.SigningKey(b"\x01" * 32)
    elif case == "untrusted CA":
        rogue = CertificateAuthority(crypto.SigningKey(b"\x02" * 32))
        kw["cert"] = rogue.issue(BOB, BOB_SIGN.public, b"\x55" * 32, NOW)
    elif case == "not the owner":
        mallory = crypto.SigningKey(b"\x03" * 32)
        kw["cert"] = CA.issue("mallory@example.org", mallory.public, b"\x55" * 32, NOW)
        kw["key"] = mallory
    p = proof(op, args, inbox=inbox, **kw)  # type: ignore[arg-type]
    with pytest.raises((Refusal, RemoteProtocolError)) as e:
        handle_read(ctx, Read(INBOX, 0, p), NOW)
    # Honest clocks drift: a stale or future proof is refused without blame.
    assert isinstance(e.value, RemoteProtocolError) == (case not in ("stale", "future"))
    assert "bob" not in str(e.value) and "mallory" not in str(e.value)


@pytest.mark.threat("T-REPLAY-OWNER")
def test_a_relay_cannot_turn_a_proof_into_an_ack_of_other_entries(ctx: StoreContext) -> None:
    for e in (b"a", b"b"):
        append(ctx, e)
    mine = (entry_id(b"a"),)
    p = proof(OwnerOp.ACK, args_digest_ack(mine))
    with pytest.raises(Invalid):
        handle_ack(ctx, Ack(INBOX, (entry_id(b"b"),), p), NOW)
    assert len(read(ctx).entries) == 2


# -- repair handlers ------------------------------------------------------------------------------


def test_probe_says_what_is_lacking(ctx: StoreContext) -> None:
    store(ctx, b"held")
    append(ctx, b"e1")
    append(ctx, b"e2")
    ack_ids = (entry_id(b"e2"),)
    handle_ack(ctx, Ack(INBOX, ack_ids, proof(OwnerOp.ACK, args_digest_ack(ack_ids))), NOW)
    blob = b"absent"
    items = (ProbeItem(ItemKind.OBJECT, BODY_KEY, (blob_digest(b"held"),)),
             ProbeItem(ItemKind.OBJECT, ids.fragment_key(blob), (blob_digest(blob),)),
             ProbeItem(ItemKind.INBOX, INBOX, (entry_id(b"e1"), entry_id(b"e2"),
                                               entry_id(b"e3"))))
    needs = handle_probe(ctx, Probe(items), NOW)
    assert [w.ids for w in needs.items] == [(), (blob_digest(blob),), (entry_id(b"e3"),)]
    with pytest.raises(Invalid):
        handle_probe(ctx, Probe((ProbeItem(ItemKind.OBJECT, BODY_KEY, ()),)), NOW)


def test_replicate_skips_acked_and_duplicates_and_stops_when_full() -> None:
    ctx = make_ctx(inbox_entries=3)
    try:
        append(ctx, b"have")
        ack_ids = (entry_id(b"acked"),)
        handle_ack(ctx, Ack(INBOX, ack_ids, proof(OwnerOp.ACK, args_digest_ack(ack_ids))), NOW)
        batch = tuple(ReplicaEntry(e, 60, None)
                      for e in (b"have", b"acked", b"new1", b"new1", b"new2", b"new3"))
        assert handle_replicate(ctx, Replicate(INBOX, batch), PEER, NOW).accepted == 2
        assert {x.entry for x in read(ctx).entries} == {b"have", b"new1", b"new2"}
    finally:
        ctx.db.close()


def test_dispatch_routes_and_refuses_strangers(ctx: StoreContext) -> None:
    reply = dispatch(ctx, PEER, Store(BODY_KEY, ObjectKind.BODY, b"b", 60, ()), NOW)
    assert reply.receipt.op is StoreOp.STORE
    assert isinstance(dispatch(ctx, PEER, Fetch(BODY_KEY), NOW), Fetched)
    with pytest.raises(Invalid):
        dispatch(ctx, PEER, object(), NOW)


# -- durability -----------------------------------------------------------------------------------


class FailingCommitDb(StoreDb):
    fail = False

    def _commit(self) -> None:
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        super()._commit()


@pytest.mark.threat("T-RECEIPT-DROP")
def test_no_receipt_without_a_commit() -> None:
    db = FailingCommitDb(":memory:")
    ctx = make_ctx(db)
    try:
        db.fail = True
        with pytest.raises(StorageFailure):
            handle_store(ctx, Store(BODY_KEY, ObjectKind.BODY, b"b", 60, ()), NOW)
        with pytest.raises(StorageFailure):
            handle_append(ctx, Append(INBOX, b"e", 60, None), PEER, NOW)
        db.fail = False
        assert fetch(ctx) is None  # rolled back: nothing half-stored
        assert ctx.db.inbox_usage(INBOX, NOW) == (0, 0)
        assert ctx.db.used_bytes() == ctx.db.recount() == 0
        # A READ whose nonce cannot be recorded is not answered either.
        append(ctx, b"e")
        db.fail = True
        with pytest.raises(StorageFailure):
            read(ctx)
    finally:
        db.close()


# -- what a storage node sees ---------------------------------------------------------------------


ALLOWED_COLUMNS = {
    "meta": {"name", "value"},
    "objects": {"key", "kind", "blob", "digest", "expires", "cert_issued", "deletable",
                "touched", "size"},
    "delete_hashes": {"key", "hash", "removed"},
    "entries": {"seq", "inbox", "entry_id", "entry", "proof", "expires", "size"},
    "acked": {"inbox", "entry_id", "expires"},
    "nonces": {"scope", "expires"},
}


@pytest.mark.threat("T-STORE-READ")
def test_database_holds_only_the_ciphertext_given(tmp_path: Path) -> None:
    """The schema has no field for plaintext (no address, subject, sender, recipient); a node
    stores exactly the bytes it was given; owner proofs leave no address behind."""
    path = tmp_path / "store.sqlite"
    ctx = make_ctx(StoreDb(path))
    blob = crypto.aead_encrypt(b"k" * 32, b"n" * 24, b"Subject: secret plans")
    store(ctx, blob, secrets=SECRETS[:2])
    append(ctx, b"sealed-header-bytes")
    read(ctx)
    ids_ = (entry_id(b"sealed-header-bytes"),)
    handle_ack(ctx, Ack(INBOX, ids_, proof(OwnerOp.ACK, args_digest_ack(ids_))), NOW)
    conn = sqlite3.connect(path)
    try:
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if not n.startswith("sqlite_")}
        assert tables == set(ALLOWED_COLUMNS)
        for t in tables:
            cols = {row[1] for row in conn.execute(f"PRAGMA table_info({t})")}
            assert cols == ALLOWED_COLUMNS[t], t
        assert conn.execute("SELECT blob FROM objects").fetchone()[0] == blob
        assert conn.execute("SELECT COUNT(*) FROM delete_hashes WHERE hash IN (?, ?)",
                            tuple(SECRETS[:2])).fetchone()[0] == 0  # secrets never stored
    finally:
        conn.close()
        ctx.db.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"secret plans" not in raw
    assert BOB.encode() not in raw and b"example.org" not in raw


# -- a model of STORE / DELETE --------------------------------------------------------------------


@dataclass
class Model:
    """What one key should look like: the reference semantics of docs/storage.md."""

    blob: bytes | None = None
    live: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    deletable: bool = False
    tomb: bool = False
    expires: int = 0

    def alive(self, now: int) -> bool:
        return self.blob is not None and not self.tomb and now < self.expires


Op = tuple[str, int, frozenset[int], int, int]
ops = st.lists(st.tuples(st.sampled_from(["store", "store", "delete", "delete", "wait"]),
                         st.integers(0, 1), st.frozensets(st.integers(0, 3), max_size=3),
                         st.integers(0, 3), st.integers(50, 600)),
               max_size=30)


@settings(max_examples=max(30, settings().max_examples // 2))
@given(ops)
def test_store_delete_semantics_match_the_model(seq: list[Op]) -> None:
    ctx = make_ctx()
    m = Model()
    now = int(NOW)
    blobs = [b"blob-A", b"blob-B"]
    try:
        for op, which, hs, i, n in seq:
            if op == "wait":
                now += n
                continue
            if m.blob is not None and now >= m.expires:
                m = Model()  # expired: as good as never stored
            if op == "store":
                blob = blobs[which]
                try:
                    store(ctx, blob, secrets=[SECRETS[i] for i in sorted(hs)], ttl=n, now=now)
                    outcome = "ok"
                except Denied:
                    outcome = "denied"
                if m.blob is None:
                    assert outcome == "ok"
                    m = Model(blob, set(hs), set(), bool(hs), False, now + n)
                elif m.tomb or m.blob != blob:
                    assert outcome == "denied"
                else:
                    assert outcome == "ok"
                    if m.deletable:
                        m.live |= set(hs) - m.removed
                    m.expires = max(m.expires, now + n)
            else:
                try:
                    reply = delete(ctx, SECRETS[i], now=now)
                    outcome = "deleted" if isinstance(reply, Deleted) else "notfound"
                except Denied:
                    outcome = "denied"
                if m.blob is None:
                    assert outcome == "notfound"
                elif i in m.removed:
                    assert outcome == "deleted"
                elif m.tomb:
                    assert outcome == "notfound"
                elif i in m.live:
                    assert outcome == "deleted"
                    m.live.discard(i)
                    m.removed.add(i)
                    m.tomb = not m.live
                else:
                    assert outcome == "denied"
            assert fetch(ctx, now=now) == (m.blob if m.alive(now) else None)
            assert ctx.db.used_bytes() == ctx.db.recount()
    finally:
        ctx.db.close()
