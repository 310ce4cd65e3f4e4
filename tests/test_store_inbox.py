"""The storage primitives for inboxes as pure handlers (anonmail/store/handlers.py, at the fixed
`now` of tests/storectx.py).

APPEND / READ / ACK, paging, the requests inbox, a pluggable append policy; owner proofs (replay,
also across a reopened database; wrong node; stale time; altered arguments; a relay turning a
proof into an ACK of other entries); and the repair handlers (PROBE, REPLICATE, dispatch).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from storectx import (
    BOB,
    BOB_CERT,
    BOB_SIGN,
    BODY_KEY,
    CA,
    INBOX,
    NODE_ID,
    NOW,
    PARAMS,
    PEER,
    append,
    make_ctx,
    proof,
    read,
    store,
)
from storectx import ctx_fixture as ctx_fixture  # the `ctx` fixture

from anonmail import crypto, wire
from anonmail.errors import LocalError, Refusal, RemoteProtocolError
from anonmail.records import ids
from anonmail.records.certs import CertificateAuthority
from anonmail.records.receipts import StoreOp
from anonmail.rng import SeededRng
from anonmail.store.db import StoreDb
from anonmail.store.errors import Denied, Invalid
from anonmail.store.handlers import (
    StoreContext,
    dispatch,
    handle_ack,
    handle_append,
    handle_probe,
    handle_read,
    handle_replicate,
)
from anonmail.store.messages import (
    MAX_PROOF_NODES,
    Ack,
    Append,
    AppendProof,
    AppendProofKind,
    Entries,
    EntryIds,
    Fetch,
    Fetched,
    ItemKind,
    ObjectKind,
    OwnerOp,
    Probe,
    ProbeItem,
    Read,
    ReplicaEntry,
    Replicate,
    Store,
    args_digest_ack,
    args_digest_read,
    blob_digest,
    entry_id,
)
from anonmail.store.proofs import make_owner_proof

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


def test_a_read_cursor_beyond_sqlites_integers_is_malformed(ctx: StoreContext) -> None:
    """READ's cursor is a sequence number of a signed 64-bit SQLite column: 2^63 and beyond
    are refused by the schema (MALFORMED), not raised as an OverflowError in the handler; the
    largest cursor reads an empty page."""
    append(ctx, b"an entry")
    p = proof(OwnerOp.READ, args_digest_read(2 ** 63))
    with pytest.raises(RemoteProtocolError):
        wire.decode(wire.encode(Read(INBOX, 2 ** 63, p)), Read)
    last = read(ctx, 2 ** 63 - 1)
    assert last.entries == () and not last.more
    with pytest.raises(RemoteProtocolError):  # a replica's reply cannot set the cursor there
        wire.decode(wire.encode(Entries((), 2 ** 63, True)), Entries)


def test_requests_inbox_belongs_to_the_same_owner(ctx: StoreContext) -> None:
    rts = ids.requests_key(BOB)
    append(ctx, b"rts", inbox=rts)
    p = proof(OwnerOp.READ, args_digest_read(0), inbox=rts)
    reply = handle_read(ctx, Read(rts, 0, p), NOW)
    assert isinstance(reply, Entries) and [x.entry for x in reply.entries] == [b"rts"]
    # Brief: the ids only, under a proof that says so (one for a whole read is refused).
    p = proof(OwnerOp.READ, args_digest_read(0, brief=True), inbox=rts)
    brief = handle_read(ctx, Read(rts, 0, p, brief=True), NOW)
    assert isinstance(brief, EntryIds) and brief.ids == (entry_id(b"rts"),)
    whole = proof(OwnerOp.READ, args_digest_read(0), inbox=rts, now=NOW + 1)
    with pytest.raises(Invalid, match="bad signature"):
        handle_read(ctx, Read(rts, 0, whole, brief=True), NOW + 1)


def test_append_policy_plugs_in(ctx: StoreContext) -> None:
    seen: list[tuple[bytes, AppendProof | None]] = []

    def permits_only(inbox: bytes, entry: bytes, proof: AppendProof | None,
                     now: float, replicated: bool) -> None:
        seen.append((entry, proof))
        if proof is None or proof.kind is not AppendProofKind.PERMIT:
            raise Denied("no permit")

    ctx.append_policy = permits_only
    with pytest.raises(Denied, match="permit"):
        handle_append(ctx, Append(INBOX, b"spam", 60, None), PEER, NOW)
    permit = AppendProof(AppendProofKind.PERMIT, b"signed permit")
    handle_append(ctx, Append(INBOX, b"mail", 60, permit), PEER, NOW)
    assert seen[-1] == (b"mail", permit)  # judged on the proof, never on the peer
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


@pytest.mark.threat("T-REPLAY-OWNER")
def test_a_proof_naming_several_replicas_serves_each_once(ctx: StoreContext) -> None:
    """Issue 11: through an anonymizer one READ or ACK goes to several replicas under one proof
    naming them. Each accepts it once; a second use is a refusal, not a fault, because a named
    replica may have raced the anonymizer's copy here; a forgery carrying the used nonce, a node
    it does not name, or a list altered after signing is refused as the presenter's fault."""
    append(ctx, b"x")
    others = [b"\x01" * 32, b"\x02" * 32]
    args = args_digest_read(0, True)
    signed = make_owner_proof(BOB_SIGN, BOB_CERT, OwnerOp.READ, INBOX,
                              [others[0], NODE_ID, others[1]], args, NOW, SeededRng(b"set"))
    first = handle_read(ctx, Read(INBOX, 0, signed, True), NOW)
    assert isinstance(first, EntryIds) and first.ids == (entry_id(b"x"),)
    with pytest.raises(Denied, match="already used") as again:
        handle_read(ctx, Read(INBOX, 0, signed, True), NOW + 1)
    assert not isinstance(again.value, RemoteProtocolError)
    forged = dataclasses.replace(signed, signature=bytes(64))  # a used nonce, not the owner's
    with pytest.raises(Invalid, match="owner proof"):
        handle_read(ctx, Read(INBOX, 0, forged, True), NOW + 1)
    elsewhere = make_owner_proof(BOB_SIGN, BOB_CERT, OwnerOp.READ, INBOX, others, args, NOW,
                                 SeededRng(b"elsewhere"))
    with pytest.raises(Invalid, match="another node"):
        handle_read(ctx, Read(INBOX, 0, elsewhere, True), NOW)
    widened = dataclasses.replace(elsewhere, node_ids=(*others, NODE_ID))
    with pytest.raises(Invalid, match="owner proof"):
        handle_read(ctx, Read(INBOX, 0, widened, True), NOW)
    with pytest.raises(LocalError):
        make_owner_proof(BOB_SIGN, BOB_CERT, OwnerOp.READ, INBOX,
                         [bytes([i]) * 32 for i in range(MAX_PROOF_NODES + 1)], args, NOW,
                         SeededRng(b"too many"))
    assert ctx.db.inbox_usage(INBOX, NOW)[0] == 1  # nothing was changed by the refusals


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
