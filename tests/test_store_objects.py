"""The storage primitives for objects as pure handlers (anonmail/store/handlers.py, at the fixed
`now` of tests/storectx.py).

STORE / FETCH with receipts, TTL clamping and expiry; content-addressed fragments; delete-hash
semantics (one body, three recipients; merges add rights but never restore or remove one;
tombstones); certificate validation and replacement; and a hypothesis model of STORE / DELETE.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storectx import (
    BOB,
    BOB_CERT,
    BOB_SIGN,
    BODY_KEY,
    CA,
    NODE_CERT,
    NOW,
    PARAMS,
    SECRETS,
    delete,
    fetch,
    make_ctx,
    store,
)
from storectx import ctx_fixture as ctx_fixture  # the `ctx` fixture

from anonmail import crypto, wire
from anonmail.errors import ErrorCode, Refusal, RemoteProtocolError
from anonmail.records import ids
from anonmail.records.certs import AddressCert, CertificateAuthority, self_certify
from anonmail.records.receipts import StoreOp, store_terms
from anonmail.store.client import check_receipt, receipt_terms
from anonmail.store.errors import Denied, Invalid
from anonmail.store.handlers import StoreContext, handle_fetch, handle_store
from anonmail.store.messages import (
    Deleted,
    Fetch,
    NotFound,
    ObjectKind,
    Store,
    blob_digest,
    delete_hash,
)

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
    with pytest.raises(Denied) as e:  # the attacker tries to merge its own right in ...
        store(ctx, secrets=[SECRETS[0]])
    assert e.value.code is ErrorCode.CONFLICT  # (no receipt saying it was recorded)
    with pytest.raises(Denied):
        delete(ctx, SECRETS[0])  # ... which was not taken
    assert fetch(ctx) == b"ciphertext"


@pytest.mark.threat("T-ANON-RECEIPTS")
def test_a_receipt_binds_the_delete_rights_and_lifetime_asked_for(ctx: StoreContext) -> None:
    """A STORE's receipt signs its delete hashes (all recorded) and its expiry, so the sender
    refuses one for a request altered on the way (a Z that stripped the hashes, so nobody may
    delete the body, or lengthened its TTL); and a copy held without delete rights or for
    longer (someone stored the blob first) is not merged into: CONFLICT, not a receipt that
    says otherwise."""
    blob = b"sealed body" * 10
    asked = Store(BODY_KEY, ObjectKind.BODY, blob, 3600, tuple(delete_hash(s) for s in SECRETS))
    terms, ttl = receipt_terms(asked)
    assert terms == store_terms(reversed(asked.delete_hashes)) != store_terms(())
    for altered in (dataclasses.replace(asked, delete_hashes=()),
                    dataclasses.replace(asked, ttl=30 * 86400)):
        fresh = make_ctx()
        try:
            receipt = handle_store(fresh, altered, NOW).receipt
            with pytest.raises(RemoteProtocolError):
                check_receipt(receipt, NODE_CERT, StoreOp.STORE, BODY_KEY, blob_digest(blob),
                              NOW, terms=terms, ttl=ttl)
            with pytest.raises(Denied) as e:  # the honest STORE after it
                handle_store(fresh, asked, NOW)
            assert e.value.code is ErrorCode.CONFLICT
        finally:
            fresh.db.close()
    receipt = handle_store(ctx, asked, NOW).receipt
    check_receipt(receipt, NODE_CERT, StoreOp.STORE, BODY_KEY, blob_digest(blob), NOW,
                  terms=terms, ttl=ttl)


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
                elif (hs and not m.deletable) or m.expires > now + n + PARAMS.clock_skew:
                    # its receipt would say rights were recorded, or a lifetime asked, that
                    # were not (T-ANON-RECEIPTS)
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
