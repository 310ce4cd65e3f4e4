"""SQLite persistence (anonmail/store/db.py): schema versioning, WAL + synchronous=FULL, a 0600
file, transactions that roll back completely, byte accounting, and crash safety: a process that
dies without closing the database (after the commit a receipt was signed for) loses nothing."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anonmail.errors import LocalError
from anonmail.store.db import (
    ObjectRow,
    StoreDb,
    object_size,
)
from anonmail.store.errors import StorageFailure
from anonmail.store.messages import blob_digest
from anonmail.store.schema import ACKED_OVERHEAD, NONCE_OVERHEAD, SCHEMA_VERSION

NOW = 1_800_000_000.0
KEY = b"\x01" * 32
INBOX = b"\x02" * 32


def row(key: bytes = KEY, blob: bytes | None = b"blob", expires: int = int(NOW) + 60) -> ObjectRow:
    return ObjectRow(key, 1, blob, blob_digest(blob or b""), expires, None, True, NOW)


def test_schema_is_versioned_and_unknown_versions_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    StoreDb(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone() == (
        SCHEMA_VERSION,)
    conn.execute("UPDATE meta SET value=99 WHERE name='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StorageFailure, match="schema version 99"):
        StoreDb(path)


def on_disk(db: StoreDb) -> int:
    """Bytes of the database file in use (after a checkpoint moved the WAL into it)."""
    c = db._conn
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = c.execute("PRAGMA page_count").fetchone()[0] - \
        c.execute("PRAGMA freelist_count").fetchone()[0]
    return int(pages * c.execute("PRAGMA page_size").fetchone()[0])


@pytest.mark.parametrize("kind", ["acks", "entries", "objects", "hashes", "nonces", "spent"])
@pytest.mark.threat("T-STORE-HOG")
def test_a_flood_of_small_rows_costs_no_more_disk_than_it_is_charged(
        tmp_path: Path, kind: str) -> None:
    """node_bytes and every share bound accounted bytes: a flood of the smallest rows of each
    kind must not fill more of the file than it is charged for (an audit found ACK records
    taking 4.6x their charge on disk)."""
    db = StoreDb(tmp_path / "s.sqlite")
    try:
        before, used = on_disk(db), db.used_bytes()
        n = 40 if kind == "hashes" else 3000
        with db.transaction():
            for i in range(n):
                k = i.to_bytes(4, "big") * 8
                if kind == "acks":
                    db.ack(INBOX, [k], int(NOW) + 60)
                elif kind == "entries":
                    db.add_entry(k, k, b"e", None, int(NOW) + 60)
                elif kind == "objects":
                    db.put_object(row(k, b"x"), [], [])
                elif kind == "hashes":
                    db.put_object(row(k, b"x"), [bytes([j]) * 32 for j in range(256)], [])
                elif kind == "nonces":
                    db.add_nonce(k, int(NOW) + 60)
                else:
                    db.add_spent(INBOX, k, k, int(NOW) + 60)
        disk, charged = on_disk(db) - before, db.used_bytes() - used
        assert charged == db.recount() and disk <= charged, (disk / n, charged / n)
    finally:
        db.close()


def test_wal_full_sync_and_private_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    old = os.umask(0)
    try:
        db = StoreDb(path)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        conn = db._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with db.transaction():
            db.put_object(row(), [b"h" * 32], [])
        wal = path.with_name(path.name + "-wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
    finally:
        db.close()


def test_transactions_roll_back_whole_and_do_not_nest() -> None:
    db = StoreDb(":memory:")
    try:
        with pytest.raises(ValueError), db.transaction():
            db.put_object(row(), [b"h" * 32], [])
            db.add_entry(INBOX, b"e" * 32, b"entry", None, int(NOW) + 60)
            raise ValueError("refused half way")
        assert db.get_object(KEY) is None and db.inbox_usage(INBOX, NOW) == (0, 0)
        assert db.used_bytes() == 0
        with pytest.raises(LocalError, match="nest"), db.transaction(), db.transaction():
            pass
        with pytest.raises(LocalError, match="inside transaction"):
            db.put_object(row(), [], [])
    finally:
        db.close()


def test_used_bytes_follow_every_change() -> None:
    db = StoreDb(":memory:")
    try:
        with db.transaction():
            db.put_object(row(), [b"a" * 32, b"b" * 32], [])
            db.add_entry(INBOX, b"e" * 32, b"entry", b"proof", int(NOW) + 10)
            db.add_nonce(b"n" * 32, int(NOW) + 5)
        assert db.used_bytes() == db.recount()
        assert db.stored_size(KEY) == object_size(b"blob", 2)
        with db.transaction():
            db.put_object(row(blob=None), [], [b"a" * 32, b"b" * 32])  # tombstone
            db.ack(INBOX, [b"e" * 32, b"f" * 32], int(NOW) + 100)
        assert db.used_bytes() == db.recount() == (
            object_size(None, 2) + NONCE_OVERHEAD + 2 * ACKED_OVERHEAD)
        gone = db.expire(NOW + 60)  # ACK records outlive the entry's own expiry (T-RTS-FLOOD)
        assert (gone.objects, gone.nonces, gone.acked) == (1, 1, 0)
        assert db.used_bytes() == db.recount() == 2 * ACKED_OVERHEAD
        db.expire(NOW + 100)
        assert db.used_bytes() == db.recount() == 0
    finally:
        db.close()


def test_commit_is_visible_to_another_connection_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    db = StoreDb(path)
    try:
        with db.transaction():
            db.put_object(row(), [], [])
        other = StoreDb(path)  # no checkpoint, no close of the first
        try:
            got = other.get_object(KEY)
            assert got is not None and got.blob == b"blob"
        finally:
            other.close()
    finally:
        db.close()


CRASHER = textwrap.dedent("""
    import os, sys
    from anonmail import crypto
    from anonmail.records.params import testnet
    from anonmail.store.db import StoreDb
    from anonmail.store.handlers import StoreContext, handle_append, handle_store
    from anonmail.store.messages import Append, ObjectKind, Store
    ctx = StoreContext(StoreDb(sys.argv[1]), crypto.SigningKey(b"\\x11" * 32), testnet())
    r = handle_store(ctx, Store(b"\\x01" * 32, ObjectKind.BODY, b"durable blob", 3600, ()),
                     1_800_000_000.0)
    handle_append(ctx, Append(b"\\x02" * 32, b"durable entry", 3600, None), b"\\x00" * 32,
                  1_800_000_000.0)
    sys.stdout.write(r.receipt.digest.hex())
    sys.stdout.flush()
    os._exit(0)  # die: no close, no checkpoint, no atexit
""")


def test_data_survives_a_process_that_dies_without_closing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    out = subprocess.run([sys.executable, "-c", CRASHER, str(path)], capture_output=True,
                         check=True, timeout=60)
    assert bytes.fromhex(out.stdout.decode()) == blob_digest(b"durable blob")
    assert path.with_name(path.name + "-wal").stat().st_size > 0  # it was in the WAL only
    db = StoreDb(path)
    try:
        got = db.get_object(b"\x01" * 32)
        assert got is not None and got.blob == b"durable blob"
        assert [r.entry for r in db.inbox_entries(b"\x02" * 32, NOW)] == [b"durable entry"]
        assert db.used_bytes() == db.recount()
    finally:
        db.close()


def test_unusable_path_is_a_storage_failure(tmp_path: Path) -> None:
    with pytest.raises(StorageFailure, match="cannot open"):
        StoreDb(tmp_path / "missing-dir" / "s.sqlite")
