"""SQLite persistence of one node's stored objects, inbox entries and seen owner-proof nonces.

One `StoreDb` owns one connection (stdlib `sqlite3`); the StoreService is its only user. Every
change happens inside `transaction()`, which runs `BEGIN IMMEDIATE` ... `COMMIT`; a handler signs
its receipt only after `transaction()` has returned, i.e. after COMMIT returned, and with
`journal_mode=WAL` + `synchronous=FULL` a returned COMMIT is on disk (the WAL is fsynced at every
commit). So a node never signs for data a crash can take back (DESIGN.md §4: a receipt is
evidence). A failing commit rolls back and raises `StorageFailure`: no receipt.

Invariants:
* schema versioned: `meta.schema_version` is `SCHEMA_VERSION`; an unknown version is refused
  rather than guessed at;
* `meta.used_bytes` equals the sum of the `size` columns of objects and entries plus the fixed
  overheads of ACK tombstones and nonces; it is updated in the same transaction as the rows, so
  it is right after any crash (`recount()` recomputes it, for tests);
* every accounted row is charged to the party whose request wrote it (`transaction(payer)`), in
  the ledger (store/ledger.py), and released with the row, in the same transaction;
* the schema holds only what nodes see on the wire: keys (hashes), ciphertext blobs, entry
  bytes, digests, delete hashes (never the secrets), times, and requesters only as keyed
  pseudonyms. No address, name or plaintext field exists (threat T-STORE-READ);
* an object row with `blob IS NULL` is a tombstone: the object was deleted and its key stays
  refused until `expires`, so a stale replica cannot bring it back (store/handlers.py);
* the database file is created 0600 (SQLite gives its -wal and -shm files the same mode).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from anonmail.errors import LocalError
from anonmail.store.errors import StorageFailure
from anonmail.store.ledger import LOCAL, Ledger, Party, object_item
from anonmail.store.schema import (
    ACKED_OVERHEAD,
    MIGRATIONS,
    NONCE_OVERHEAD,
    SCHEMA,
    SCHEMA_VERSION,
    SPENT_OVERHEAD,
    EntryRow,
    Expired,
    ObjectRow,
    entry_size,
    object_size,
    statements,
)

__all__ = ["EntryRow", "Expired", "ObjectRow", "StoreDb", "entry_size", "object_size"]


class StoreDb:
    """The store's SQLite database. `path` ":memory:" gives a private in-memory database
    (simulations); anything else is a file, created 0600."""

    def __init__(self, path: str | Path, *, threads: bool = False) -> None:
        """`threads`: allow use from a worker thread (the service serialises all use)."""
        self.path = str(path)
        self.threads = threads
        if self.path != ":memory:":
            # Born 0600: blobs are ciphertext, but which keys a node holds is nobody's business.
            try:
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as e:
                raise StorageFailure(f"cannot open the store database: {e}") from e
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None,
                                         check_same_thread=not threads)
        except sqlite3.Error as e:
            raise StorageFailure(f"cannot open the store database: {e}") from e
        self._in_tx = False
        self._payer = LOCAL
        self.ledger = Ledger(self._conn)
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        c = self._conn
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if self.path != ":memory:" and str(mode).lower() != "wal":
            raise StorageFailure(f"the store database refused WAL mode ({mode})")
        # FULL: the WAL is fsynced at every commit, so a returned COMMIT survives power loss.
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA foreign_keys=OFF")
        have = c.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if have is None:
            with self.transaction():
                for stmt in statements(SCHEMA):
                    c.execute(stmt)
                c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                c.execute("INSERT INTO meta VALUES ('used_bytes', 0)")
        version = self._meta("schema_version")
        while version < SCHEMA_VERSION and version in MIGRATIONS:
            with self.transaction():  # each step whole or not at all
                for stmt in statements(MIGRATIONS[version]):
                    c.execute(stmt)
                version += 1
                c.execute("UPDATE meta SET value=? WHERE name='schema_version'", (version,))
        if version != SCHEMA_VERSION:
            raise StorageFailure(f"store database has schema version {version}; this program "
                                 f"knows version {SCHEMA_VERSION}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> StoreDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, payer: Party = LOCAL) -> Iterator[None]:
        """Run the block atomically. Exceptions roll back and propagate (sqlite3 errors as
        `StorageFailure`); the block's changes are durable once this returns. Rows the block
        adds are charged to `payer` (the requesting party; LOCAL: this node)."""
        if self._in_tx:
            raise LocalError("store transactions do not nest")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StorageFailure(f"store database: {e}") from e
        self._in_tx = True
        self._payer = payer
        try:
            yield
            self._commit()
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StorageFailure(f"store database: {e}") from e
            raise
        finally:
            self._in_tx = False
            self._payer = LOCAL

    def _commit(self) -> None:
        """COMMIT (a separate method so tests can make it fail)."""
        self._conn.execute("COMMIT")

    def _need_tx(self) -> None:
        if not self._in_tx:
            raise LocalError("store writes happen inside transaction()")

    def _meta(self, name: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        if row is None:
            raise StorageFailure(f"store database lacks meta.{name}")
        return int(row[0])

    def _adjust(self, delta: int) -> None:
        if delta:
            self._conn.execute("UPDATE meta SET value = value + ? WHERE name='used_bytes'",
                               (delta,))

    # -- usage -----------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        return self._meta("used_bytes")

    def recount(self) -> int:
        """Recompute used bytes from the rows (tests compare it with `used_bytes`)."""
        c = self._conn
        objects = c.execute("SELECT COALESCE(SUM(size), 0) FROM objects").fetchone()[0]
        entries = c.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
        acked = c.execute("SELECT COUNT(*) FROM acked").fetchone()[0]
        nonces = c.execute("SELECT COUNT(*) FROM nonces").fetchone()[0]
        spent = c.execute("SELECT COUNT(*) FROM spent").fetchone()[0]
        return int(objects + entries + ACKED_OVERHEAD * acked + NONCE_OVERHEAD * nonces
                   + SPENT_OVERHEAD * spent)

    # -- objects ---------------------------------------------------------------------------------

    def get_object(self, key: bytes) -> ObjectRow | None:
        row = self._conn.execute(
            "SELECT key, kind, blob, digest, expires, cert_issued, deletable, touched "
            "FROM objects WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        return ObjectRow(bytes(row[0]), int(row[1]), None if row[2] is None else bytes(row[2]),
                         bytes(row[3]), int(row[4]), None if row[5] is None else int(row[5]),
                         bool(row[6]), float(row[7]))

    def get_hashes(self, key: bytes) -> tuple[set[bytes], set[bytes]]:
        """(live delete hashes, removed delete hashes) of an object."""
        live: set[bytes] = set()
        removed: set[bytes] = set()
        for h, gone in self._conn.execute(
                "SELECT hash, removed FROM delete_hashes WHERE key=?", (key,)):
            (removed if gone else live).add(bytes(h))
        return live, removed

    def put_object(self, row: ObjectRow, live: Iterable[bytes], removed: Iterable[bytes], *,
                   replace: bool = False) -> None:
        """Insert or replace an object together with its whole delete-hash state. `replace`: a
        new object under the key, charged wholly to the payer; else the held one rewritten (a
        merge, a delete): its payers keep their charges and the payer pays any growth."""
        self._forget_object(row.key)  # (checks that a transaction is open)
        live_set, removed_set = set(live), set(removed) - set(live)
        size = object_size(row.blob, len(live_set) + len(removed_set))
        c = self._conn
        c.execute("INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (row.key, row.kind, row.blob, row.digest, row.expires, row.cert_issued,
                   int(row.deletable), row.touched, size))
        c.executemany("INSERT INTO delete_hashes VALUES (?, ?, ?)",
                      [(row.key, h, 0) for h in sorted(live_set)]
                      + [(row.key, h, 1) for h in sorted(removed_set)])
        self._adjust(size)
        (self.ledger.replace if replace else self.ledger.settle)(object_item(row.key), size,
                                                                 self._payer)

    def use_delete_right(self, key: bytes, h: bytes, last: bool) -> None:
        """Mark the delete hash `h` of `key` used, in place; if it was the `last` live one, drop
        the blob too and keep the row as a tombstone until expiry. A DELETE writes a few rows,
        never the blob or the other hashes again: its cost is its own size, not the object's."""
        self._need_tx()
        c = self._conn
        c.execute("UPDATE delete_hashes SET removed=1 WHERE key=? AND hash=?", (key, h))
        if not last:
            return  # as many hashes as before: the accounted size is unchanged
        row = c.execute("SELECT size FROM objects WHERE key=?", (key,)).fetchone()
        (hashes,) = c.execute("SELECT COUNT(*) FROM delete_hashes WHERE key=?", (key,)).fetchone()
        size = object_size(None, int(hashes))
        c.execute("UPDATE objects SET blob=NULL, size=? WHERE key=?", (size, key))
        self._adjust(size - int(row[0]))
        self.ledger.settle(object_item(key), size, self._payer)

    def drop_object(self, key: bytes) -> bool:
        """Forget an object entirely (no tombstone), and its charges. True if there was one."""
        if not self._forget_object(key):
            return False
        self.ledger.release(object_item(key))
        return True

    def _forget_object(self, key: bytes) -> bool:
        self._need_tx()
        c = self._conn
        row = c.execute("SELECT size FROM objects WHERE key=?", (key,)).fetchone()
        if row is None:
            return False
        c.execute("DELETE FROM objects WHERE key=?", (key,))
        c.execute("DELETE FROM delete_hashes WHERE key=?", (key,))
        self._adjust(-int(row[0]))
        return True

    def stored_size(self, key: bytes) -> int:
        """Accounted bytes of an object row (0 if none)."""
        row = self._conn.execute("SELECT size FROM objects WHERE key=?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def object_keys(self, now: float) -> list[tuple[bytes, int, float]]:
        """(key, kind, touched) of every live (not deleted, not expired) object, by key."""
        return [(bytes(k), int(kind), float(t)) for k, kind, t in self._conn.execute(
            "SELECT key, kind, touched FROM objects WHERE blob IS NOT NULL AND expires > ? "
            "ORDER BY key", (now,))]

    def count_objects(self) -> int:
        return int(self._conn.execute(
            "SELECT COUNT(*) FROM objects WHERE blob IS NOT NULL").fetchone()[0])

    # -- inbox entries ---------------------------------------------------------------------------

    def inbox_usage(self, inbox: bytes, now: float) -> tuple[int, int]:
        """(entries, accounted bytes) of an inbox's unexpired entries."""
        row = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries WHERE inbox=? AND expires > ?",
            (inbox, now)).fetchone()
        return int(row[0]), int(row[1])

    def has_entry(self, inbox: bytes, eid: bytes) -> int | None:
        """The expiry of an entry this inbox holds, or None."""
        row = self._conn.execute("SELECT expires FROM entries WHERE inbox=? AND entry_id=?",
                                 (inbox, eid)).fetchone()
        return None if row is None else int(row[0])

    def is_acked(self, inbox: bytes, eid: bytes) -> bool:
        return self._conn.execute("SELECT 1 FROM acked WHERE inbox=? AND entry_id=?",
                                  (inbox, eid)).fetchone() is not None

    def add_entry(self, inbox: bytes, eid: bytes, entry: bytes, proof: bytes | None,
                  expires: int) -> None:
        self._need_tx()
        size = entry_size(entry, proof)
        self._conn.execute(
            "INSERT INTO entries (inbox, entry_id, entry, proof, expires, size) "
            "VALUES (?, ?, ?, ?, ?, ?)", (inbox, eid, entry, proof, expires, size))
        self._adjust(size)
        self.ledger.charge(("e", inbox, eid), self._payer, size)

    def extend_entry(self, inbox: bytes, eid: bytes, expires: int) -> None:
        self._need_tx()
        self._conn.execute(
            "UPDATE entries SET expires = MAX(expires, ?) WHERE inbox=? AND entry_id=?",
            (expires, inbox, eid))

    def read_entries(self, inbox: bytes, after: int, now: float, max_bytes: int,
                     max_count: int) -> tuple[list[EntryRow], bool]:
        """Unexpired entries with seq > `after`, oldest first, at most `max_count` and (beyond
        the first) `max_bytes` of entry bytes; and whether more remain."""
        out: list[EntryRow] = []
        total = 0
        cur = self._conn.execute(
            "SELECT seq, entry_id, entry, proof, expires FROM entries "
            "WHERE inbox=? AND seq > ? AND expires > ? ORDER BY seq", (inbox, after, now))
        for seq, eid, entry, proof, expires in cur:
            if len(out) >= max_count or (out and total + len(entry) > max_bytes):
                cur.close()
                return out, True
            total += len(entry)
            out.append(EntryRow(int(seq), bytes(eid), bytes(entry),
                                None if proof is None else bytes(proof), int(expires)))
        return out, False

    def inbox_entries(self, inbox: bytes, now: float) -> list[EntryRow]:
        rows, _ = self.read_entries(inbox, 0, now, 1 << 62, 1 << 62)
        return rows

    def ack(self, inbox: bytes, eids: Iterable[bytes], default_expires: int) -> int:
        """Delete these entries and remember them as ACKed until `default_expires` (or their own
        expiry, if later), so no replica can hand them back. Not only until their expiry: its
        TTL is the sender's choice, and an entry ACKed and then forgotten could be appended
        again on the same proof-of-work stamp, which stays valid for days (a refill for free;
        the stamp's whole life is shorter than the longest TTL). Returns how many were held."""
        self._need_tx()
        c = self._conn
        held = 0
        for eid in eids:
            expires = self._remove_entry(inbox, eid)
            if expires is not None:
                held += 1
            expires = default_expires if expires is None else max(expires, default_expires)
            old = c.execute("SELECT 1 FROM acked WHERE inbox=? AND entry_id=?",
                            (inbox, eid)).fetchone()
            if old is None:
                c.execute("INSERT INTO acked VALUES (?, ?, ?)", (inbox, eid, expires))
                self._adjust(ACKED_OVERHEAD)
                self.ledger.charge(("a", inbox, eid), self._payer, ACKED_OVERHEAD)
        return held

    def inbox_keys(self, now: float) -> list[bytes]:
        return [bytes(k) for (k,) in self._conn.execute(
            "SELECT DISTINCT inbox FROM entries WHERE expires > ? ORDER BY inbox", (now,))]

    def drop_entries(self, inbox: bytes, eids: Iterable[bytes]) -> int:
        """Forget these entries (handover; no ACK tombstone)."""
        self._need_tx()
        return sum(1 for eid in eids if self._remove_entry(inbox, eid) is not None)

    def _remove_entry(self, inbox: bytes, eid: bytes) -> int | None:
        """Delete one entry and its accounted bytes; its expiry, or None if not held."""
        c = self._conn
        row = c.execute("SELECT expires, size FROM entries WHERE inbox=? AND entry_id=?",
                        (inbox, eid)).fetchone()
        if row is None:
            return None
        c.execute("DELETE FROM entries WHERE inbox=? AND entry_id=?", (inbox, eid))
        self._adjust(-int(row[1]))
        self.ledger.release(("e", inbox, eid))
        return int(row[0])

    # -- owner-proof nonces ----------------------------------------------------------------------

    def nonce_seen(self, scope: bytes) -> bool:
        return self._conn.execute("SELECT 1 FROM nonces WHERE scope=?",
                                  (scope,)).fetchone() is not None

    def add_nonce(self, scope: bytes, expires: int) -> None:
        self._need_tx()
        self._conn.execute("INSERT INTO nonces VALUES (?, ?)", (scope, expires))
        self._adjust(NONCE_OVERHEAD)
        self.ledger.charge(("n", scope, b""), self._payer, NONCE_OVERHEAD)

    # -- spent one-time rights (permit tokens) ----------------------------------------------------

    def spent_on(self, inbox: bytes, spend: bytes) -> bytes | None:
        """The entry id a one-time right was spent on here, or None."""
        row = self._conn.execute("SELECT entry_id FROM spent WHERE inbox=? AND spend=?",
                                 (inbox, spend)).fetchone()
        return None if row is None else bytes(row[0])

    def add_spent(self, inbox: bytes, spend: bytes, eid: bytes, expires: int) -> None:
        self._need_tx()
        if self.spent_on(inbox, spend) is None:
            self._conn.execute("INSERT INTO spent VALUES (?, ?, ?, ?)",
                               (inbox, spend, eid, expires))
            self._adjust(SPENT_OVERHEAD)
            self.ledger.charge(("s", inbox, spend), self._payer, SPENT_OVERHEAD)

    # -- expiry ----------------------------------------------------------------------------------

    def expire(self, now: float) -> Expired:
        """Drop everything whose time has come (objects and tombstones, entries, ACK
        tombstones, nonces). Runs its own transaction."""
        c = self._conn
        with self.transaction():
            keys = [bytes(k) for (k,) in c.execute(
                "SELECT key FROM objects WHERE expires <= ?", (now,))]
            for key in keys:
                self.drop_object(key)
            self.ledger.release_expired(now)
            freed = c.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries "
                              "WHERE expires <= ?", (now,)).fetchone()
            c.execute("DELETE FROM entries WHERE expires <= ?", (now,))
            acked = c.execute("DELETE FROM acked WHERE expires <= ?", (now,)).rowcount
            nonces = c.execute("DELETE FROM nonces WHERE expires <= ?", (now,)).rowcount
            spent = c.execute("DELETE FROM spent WHERE expires <= ?", (now,)).rowcount
            self._adjust(-int(freed[1]) - ACKED_OVERHEAD * acked - NONCE_OVERHEAD * nonces
                         - SPENT_OVERHEAD * spent)
        return Expired(len(keys), int(freed[0]), acked, nonces)
