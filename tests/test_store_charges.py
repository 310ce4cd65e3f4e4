"""Charges (anonmail/store/ledger.py): every stored row is charged to the party that asked for
it, and only growth is charged. They follow the rows (merge, delete, READ and ACK, expiry,
handover), a shrink never raises anyone's charge (property test), they survive a restart and
the schema version 2 -> 3 migration, and a republish charges the pushing replica once, never
again for what the target holds (in simulation).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
from hypothesis import given
from hypothesis import strategies as st
from storebudget import TTL, MiB, add, blob, check_books, party, put
from storectx import INBOX, NOW, SECRETS, make_ctx, proof
from storegrid import R
from storesim import DAY, TIMEOUT, Sim
from storesim import sim_fixture as sim_fixture  # the `sim` fixture
from trio.testing import MockClock

from anonmail.records import ids
from anonmail.store.budget import party_of
from anonmail.store.db import StoreDb
from anonmail.store.handlers import handle_ack, handle_delete, handle_read
from anonmail.store.ledger import LOCAL, Party
from anonmail.store.messages import (
    Ack,
    Delete,
    ObjectKind,
    OwnerOp,
    Read,
    Store,
    args_digest_ack,
    args_digest_read,
    blob_digest,
    delete_hash,
    entry_id,
)
from anonmail.store.schema import (
    ACKED_OVERHEAD,
    CHARGES,
    NONCE_OVERHEAD,
    SCHEMA,
    SCHEMA_VERSION,
    SPENT_OVERHEAD,
    entry_size,
    object_size,
)


def test_charges_follow_merges_deletes_acks_expiry_and_handover() -> None:
    ctx = make_ctx()
    db = ctx.db
    try:
        alice, bob, replica = (party(ctx, n, f"192.0.2.{n}") for n in (1, 2, 3))
        owner = party(ctx, 4, "192.0.2.4")
        body = b"b" * 5000
        assert put(ctx, alice, body, secrets=tuple(SECRETS[:2]))
        first = object_size(body, 2)
        assert db.ledger.usage(alice) == (first, first)
        # Stored again, by alice (a retry) or a replica (a republish): nothing is charged twice.
        assert put(ctx, alice, body, secrets=tuple(SECRETS[:2]))
        assert put(ctx, replica, body, secrets=tuple(SECRETS[:2]))
        assert db.ledger.usage(alice)[0] == first and db.ledger.usage(replica) == (0, 0)
        # A merge that adds a delete hash: only the hash, to whoever added it.
        assert put(ctx, bob, body, secrets=(SECRETS[2],))
        assert db.ledger.usage(bob)[0] == object_size(body, 3) - first
        check_books(ctx)
        # Deleting: using a hash keeps the size; the last leaves a tombstone, whose smaller
        # charge is split in proportion and raises nobody's.
        for secret in SECRETS[:3]:
            handle_delete(ctx, Delete(ids.body_key(body[:32].hex()), secret), NOW)
            check_books(ctx)
        a, b = db.ledger.usage(alice)[0], db.ledger.usage(bob)[0]
        assert a + b == object_size(None, 3) and a <= first and b <= 48
        # Entries: the appender's; READ and ACK records: the owner's; ACK releases entries.
        entries = [b"entry %d" % i for i in range(3)]
        assert all(add(ctx, alice, e) for e in entries)
        handle_read(ctx, Read(INBOX, 0, proof(OwnerOp.READ, args_digest_read(0))), NOW, owner)
        acked = tuple(entry_id(e) for e in entries[:2])
        handle_ack(ctx, Ack(INBOX, acked, proof(OwnerOp.ACK, args_digest_ack(acked))), NOW,
                   owner)
        assert db.ledger.usage(alice)[0] == a + entry_size(entries[2], None)
        assert db.ledger.usage(owner)[0] == 2 * NONCE_OVERHEAD + 2 * ACKED_OVERHEAD
        check_books(ctx)
        # Handover: a dropped object releases its charges.
        assert put(ctx, bob, b"handed over")
        with db.transaction():
            db.drop_object(ids.body_key(b"handed over"[:32].hex()))
        assert db.ledger.usage(bob)[0] == b
        # Expiry releases everything.
        db.expire(NOW + 40 * DAY)
        check_books(ctx)
        assert db.ledger.total() == 0 and all(
            db.ledger.usage(p) == (0, 0) for p in (alice, bob, replica, owner))
    finally:
        db.close()


def test_charges_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    ctx = make_ctx(StoreDb(path), node_bytes=64 * MiB)
    attacker, honest = party(ctx, 0xA, "203.0.113.66"), party(ctx, 0xB, "198.51.100.7")
    taken = 0
    while put(ctx, attacker, blob(taken)):
        taken += 1
    before = ctx.db.ledger.usage(attacker)
    ctx.db.close()
    ctx = make_ctx(StoreDb(path), node_bytes=64 * MiB)  # the same node key: the same pseudonyms
    try:
        assert party(ctx, 0xA, "203.0.113.66") == attacker
        assert ctx.db.ledger.usage(attacker) == before
        assert not put(ctx, attacker, blob(taken))
        assert put(ctx, honest, b"still welcome")
        check_books(ctx)
    finally:
        ctx.db.close()


def test_a_version_2_database_migrates_and_keeps_its_rows(tmp_path: Path) -> None:
    """Through version 3 (charges) to 4 (rows resized to the overheads they cost on disk)."""
    assert SCHEMA_VERSION == 4 and CHARGES in SCHEMA
    path = tmp_path / "store.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA.replace(CHARGES, ""))
    k = b"\x01" * 32
    rows = [("INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
             (k, int(ObjectKind.BODY), b"body", blob_digest(b"body"), int(NOW) + TTL, None, 1,
              NOW, 164 + 48)),  # version 2's overheads
            ("INSERT INTO delete_hashes VALUES (?, ?, 0)", (k, delete_hash(SECRETS[0]))),
            ("INSERT INTO entries (inbox, entry_id, entry, proof, expires, size) VALUES "
             "(?, ?, ?, NULL, ?, ?)", (INBOX, entry_id(b"old"), b"old", int(NOW) + TTL,
                                       128 + 3)),
            ("INSERT INTO acked VALUES (?, ?, ?)", (INBOX, b"\x02" * 32, int(NOW) + TTL)),
            ("INSERT INTO nonces VALUES (?, ?)", (b"\x03" * 32, int(NOW) + TTL)),
            ("INSERT INTO spent VALUES (?, ?, ?, ?)", (INBOX, b"\x04" * 32, entry_id(b"old"),
                                                       int(NOW) + TTL))]
    for sql, args in rows:
        conn.execute(sql, args)
    used = 164 + 48 + 131 + 64 + 64 + 96  # as version 2 counted them
    conn.execute("INSERT INTO meta VALUES ('schema_version', 2)")
    conn.execute("INSERT INTO meta VALUES ('used_bytes', ?)", (used,))
    conn.commit()
    conn.close()
    db = StoreDb(path)
    try:
        assert db.used_bytes() == db.recount() == (
            object_size(b"body", 1) + entry_size(b"old", None) + ACKED_OVERHEAD
            + NONCE_OVERHEAD + SPENT_OVERHEAD) > used
        ctx = make_ctx(db)
        obj = db.get_object(k)
        assert obj is not None and obj.blob == b"body"
        assert [r.entry for r in db.inbox_entries(INBOX, NOW)] == [b"old"]
        # Everything held before is this node's own (unlimited) charge; budgets start empty.
        assert db.ledger.usage(LOCAL)[0] == db.ledger.total() == db.used_bytes()
        someone = party(ctx, 7, "192.0.2.7")
        assert db.ledger.usage(someone) == (0, 0)
        assert put(ctx, someone, b"new body") and add(ctx, someone, b"new entry")
        check_books(ctx)
    finally:
        db.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone() \
            == (SCHEMA_VERSION,)
    finally:
        conn.close()
    db = StoreDb(path)  # opening a v3 file again changes nothing
    try:
        assert db.ledger.total() == db.used_bytes() and db.ledger.consistent()
    finally:
        db.close()


# -- republish in simulation ----------------------------------------------------------------------


async def test_republish_charges_the_pusher_once(sim: Sim, autojump_clock: MockClock) -> None:
    key = ids.body_key("<budget-republish@anonmail>")
    far = sim.far_node(key)
    agent = sim.node(5)
    with trio.fail_after(TIMEOUT):
        # A stale agent stored onto a node that is not responsible; that node pushes it to the
        # r closest (charged to it there) and drops its own copy (released here).
        await agent.net.request(far.cert, Store(key, ObjectKind.BODY, b"blob" * 100, DAY, ()))
        far_svc = sim.svc[far.node_id]
        assert far_svc.db.ledger.total() > 0
        await far_svc.republish(force=True)
        assert far_svc.db.ledger.total() == 0
        size = object_size(b"blob" * 100, 0)
        closest = sim.closest(key)
        for x in closest:
            svc = sim.svc[x.node_id]
            pusher = party_of(svc.ctx.party_secret, far.node_id, far.net.address,
                              shared=svc.shared_sources)
            assert svc.db.ledger.usage(pusher)[0] == size
        # Every replica republishes again and again: they all hold it, nothing is charged.
        for _ in range(2):
            await sim.republish_all(force=True)
        for x in closest:
            svc = sim.svc[x.node_id]
            assert svc.db.ledger.total() == svc.db.used_bytes() == size
            assert svc.db.ledger.consistent()
        assert len(closest) == R


@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=8), st.data())
def test_a_shrink_splits_the_charge_in_proportion_and_raises_nobody(
        held: list[int], data: st.DataObject) -> None:
    db = StoreDb(":memory:")
    try:
        item = ("o", b"k" * 32, b"")
        payers = [Party(bytes([i]) * 32, None if i % 2 else bytes([i + 100]) * 32)
                  for i in range(len(held))]
        with db.transaction():
            for p, amount in zip(payers, held, strict=True):
                db.ledger.charge(item, p, amount)
        size = data.draw(st.integers(0, sum(held)))
        with db.transaction():
            db.ledger.settle(item, size, Party(b"x" * 32))
        after = db.ledger.charges(item)
        assert sum(after.values()) == size
        assert all(after.get(p, 0) <= old for p, old in zip(payers, held, strict=True))
        assert db.ledger.consistent()
    finally:
        db.close()
