"""What a storage node bounds and keeps, as pure handlers (anonmail/store/handlers.py, at the
fixed `now` of tests/storectx.py).

Quotas refuse without blame (object size, delete hashes, entry size, entries and bytes per inbox,
node storage) and bound an inbox flood; no receipt is given without a commit; the database holds
only the ciphertext it was given (no plaintext field, no delete secret, no address).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from storectx import (
    BOB,
    BODY_KEY,
    INBOX,
    NOW,
    PEER,
    SECRETS,
    append,
    delete,
    fetch,
    make_ctx,
    proof,
    read,
    store,
)

from anonmail import crypto
from anonmail.errors import Refusal
from anonmail.records import ids
from anonmail.store.db import StoreDb
from anonmail.store.errors import QuotaExceeded, StorageFailure
from anonmail.store.handlers import handle_ack, handle_append, handle_store
from anonmail.store.messages import (
    Ack,
    Append,
    Deleted,
    ObjectKind,
    OwnerOp,
    Store,
    args_digest_ack,
    entry_id,
)

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


# -- durability -----------------------------------------------------------------------------------


class FailingCommitDb(StoreDb):
    fail = False

    def _commit(self) -> None:
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        super()._commit()


@pytest.mark.threat("T-RECEIPT-DROP")
@pytest.mark.threat("T-STORE-HOG")
def test_a_delete_writes_its_own_size_not_the_objects() -> None:
    """A DELETE (~70 bytes, charged to nobody) marks one delete hash used in place; it used to
    rewrite the whole row, blob and every hash (audit: 200 DELETEs of a 960 KiB body with 1,024
    hashes wrote 274 MB). Only the last right drops the blob and shrinks the charge."""
    ctx = make_ctx()
    try:
        secrets = [i.to_bytes(2, "big") * 16 for i in range(256)]
        store(ctx, b"b" * 200_000, secrets=secrets)
        used = ctx.db.used_bytes()
        conn = ctx.db._conn
        for s in secrets[:-1]:
            before = conn.total_changes
            assert isinstance(delete(ctx, s), Deleted)
            assert conn.total_changes - before == 1  # one hash row, whatever the object's size
        assert fetch(ctx) == b"b" * 200_000 and ctx.db.used_bytes() == used
        assert isinstance(delete(ctx, secrets[-1]), Deleted)
        assert fetch(ctx) is None and ctx.db.used_bytes() == used - 200_000  # a tombstone
        assert isinstance(delete(ctx, secrets[0]), Deleted)  # a repeat: idempotent
        live, removed = ctx.db.get_hashes(BODY_KEY)
        assert live == set() and len(removed) == 256
    finally:
        ctx.db.close()


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
    "spent": {"inbox", "spend", "entry_id", "expires"},  # token ids: random keys, no sender
    # storage budgets (store/ledger.py): who a row is charged to, as pseudonyms keyed by the
    # node's own key, so the file alone names no node and no address
    "charges": {"tab", "k1", "k2", "party", "source", "bytes"},
    "usage": {"kind", "who", "bytes"},
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
