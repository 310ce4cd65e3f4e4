"""The store's SQLite schema, its rows and the byte accounting (store/db.py uses them).

Invariants: the schema holds only what nodes see on the wire (keys, ciphertext, entry bytes,
digests, delete hashes, times: threat T-STORE-READ); `SCHEMA_VERSION` names it, and a database
of another version is refused, not guessed at; every row's accounted size is its bytes plus a
fixed overhead per row (`object_size`, `entry_size`, and the ACK and nonce overheads), so a
quota bounds the disk a peer can make us use, indexes included; every accounted row is charged
to the party that asked for it (`charges`, store/ledger.py), so budgets survive restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 4

# Accounted bytes beyond the payload: rows, index entries and keys are not free, and without a
# per-row charge a flood of tiny objects would be unbounded in everything but bytes. Measured
# on disk (SQLite 3, 4 KiB pages, the row, its indexes and its `charges` row; an audit found the
# earlier figures 1.4-4.6x low, so node_bytes undercounted the file): an ACK record 295 bytes,
# a 1-byte entry 304, a 1-byte object 229, each delete hash ~89. tests/test_store_db.py checks
# the file stays within the accounted bytes for floods of each kind of row.
OBJECT_OVERHEAD = 240
HASH_OVERHEAD = 96
ENTRY_OVERHEAD = 320
ACKED_OVERHEAD = 320
NONCE_OVERHEAD = 320
SPENT_OVERHEAD = 352

SCHEMA = """
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE objects (
    key BLOB PRIMARY KEY,
    kind INTEGER NOT NULL,
    blob BLOB,                    -- NULL: deleted, a tombstone until `expires`
    digest BLOB NOT NULL,         -- messages.blob_digest(blob)
    expires INTEGER NOT NULL,
    cert_issued INTEGER,          -- CERT: the certificate's `issued`; POLICY: its version
    deletable INTEGER NOT NULL,   -- 0: stored without delete hashes, only its TTL removes it
    touched REAL NOT NULL,        -- last STORE of it (republish skips recently pushed keys)
    size INTEGER NOT NULL         -- accounted bytes (payload + overheads)
) WITHOUT ROWID;
CREATE INDEX objects_expires ON objects (expires);
CREATE TABLE delete_hashes (
    key BLOB NOT NULL,
    hash BLOB NOT NULL,           -- H("delete", secret); the secret is never stored
    removed INTEGER NOT NULL,     -- 1: used by a DELETE; remembered so no merge re-adds it
    PRIMARY KEY (key, hash)
) WITHOUT ROWID;
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: the READ cursor
    inbox BLOB NOT NULL,
    entry_id BLOB NOT NULL,       -- messages.entry_id(entry)
    entry BLOB NOT NULL,          -- sealed header: ciphertext
    proof BLOB,                   -- the encoded AppendProof, kept for re-checks at replication
    expires INTEGER NOT NULL,
    size INTEGER NOT NULL,
    UNIQUE (inbox, entry_id)
);
CREATE INDEX entries_expires ON entries (expires);
CREATE TABLE acked (
    inbox BLOB NOT NULL,
    entry_id BLOB NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (inbox, entry_id)
) WITHOUT ROWID;
CREATE INDEX acked_expires ON acked (expires);
CREATE TABLE nonces (
    scope BLOB PRIMARY KEY,       -- H(inbox, nonce) of an accepted owner proof
    expires INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX nonces_expires ON nonces (expires);
"""

# Version 2 (permits, DESIGN.md §6): the one-time rights spent on entries, kept until they lapse,
# so a token is spent once per replica even after its entry is ACKed.
SPENT = """
CREATE TABLE spent (
    inbox BLOB NOT NULL,
    spend BLOB NOT NULL,          -- a one-time right the append policy named (a token id)
    entry_id BLOB NOT NULL,       -- the one entry it was spent on
    expires INTEGER NOT NULL,     -- when the right lapses anyway
    PRIMARY KEY (inbox, spend)
) WITHOUT ROWID;
CREATE INDEX spent_expires ON spent (expires);
"""
SCHEMA += SPENT

# Version 3 (storage budgets, store/budget.py): who each accounted row is charged to
# (store/ledger.py), and each key's and source's total, kept with the rows so budgets survive
# restarts. IF NOT EXISTS: a migration may meet a database whose tables came from a later script.
CHARGES = """
CREATE TABLE IF NOT EXISTS charges (
    tab TEXT NOT NULL,            -- o object, e entry, a ACK record, n nonce, s spent right
    k1 BLOB NOT NULL,             -- the row's key: object key, inbox, or nonce scope
    k2 BLOB NOT NULL,             -- entry id or spent right; X'' for objects and nonces
    party BLOB NOT NULL,          -- keyed pseudonym of the requesting node id; X'': this node
    source BLOB NOT NULL,         -- keyed pseudonym of its source address; X'': none (by key)
    bytes INTEGER NOT NULL,       -- this party's part of the row's accounted size
    PRIMARY KEY (tab, k1, k2, party, source)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    kind TEXT NOT NULL,           -- k: a key's total, s: a source's total
    who BLOB NOT NULL,            -- the party or source pseudonym
    bytes INTEGER NOT NULL,
    PRIMARY KEY (kind, who)
) WITHOUT ROWID;
"""
SCHEMA += CHARGES

# Rows already held when a version-2 database is opened: charged to this node (X''), whose
# share is not limited, so nothing held is refused or lost and every budget starts empty.
# (The only values formatted in are this module's int constants.)
CHARGE_HELD = f"""
DELETE FROM charges;
DELETE FROM usage;
INSERT INTO charges SELECT 'o', key, X'', X'', X'', size FROM objects;
INSERT INTO charges SELECT 'e', inbox, entry_id, X'', X'', size FROM entries;
INSERT INTO charges SELECT 'a', inbox, entry_id, X'', X'', {ACKED_OVERHEAD} FROM acked;
INSERT INTO charges SELECT 'n', scope, X'', X'', X'', {NONCE_OVERHEAD} FROM nonces;
INSERT INTO charges SELECT 's', inbox, spend, X'', X'', {SPENT_OVERHEAD} FROM spent;
INSERT INTO usage SELECT 'k', X'', total FROM (SELECT SUM(bytes) AS total FROM charges)
    WHERE total > 0;
"""  # noqa: S608

# Version 3 to 4: the per-row overheads above were raised to what rows cost on disk. Every row
# is resized, and charged anew to this node, as CHARGE_HELD does (parties' budgets start empty
# again: nothing held is refused or lost).
RESIZE = f"""
UPDATE objects SET size = {OBJECT_OVERHEAD} + COALESCE(length(blob), 0)
    + {HASH_OVERHEAD} * (SELECT COUNT(*) FROM delete_hashes d WHERE d.key = objects.key);
UPDATE entries SET size = {ENTRY_OVERHEAD} + length(entry) + COALESCE(length(proof), 0);
{CHARGE_HELD}
UPDATE meta SET value = (SELECT COALESCE(SUM(bytes), 0) FROM charges) WHERE name = 'used_bytes';
"""  # noqa: S608

# What turns a database of version v into version v + 1 (applied in order at open).
MIGRATIONS: dict[int, str] = {1: SPENT, 2: CHARGES + CHARGE_HELD, 3: RESIZE}


def statements(script: str) -> list[str]:
    """Split a schema script into statements (comments dropped first: they contain ';')."""
    text = "\n".join(line.split("--")[0] for line in script.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


@dataclass(frozen=True, slots=True)
class ObjectRow:
    key: bytes
    kind: int
    blob: bytes | None  # None: tombstone
    digest: bytes
    expires: int
    cert_issued: int | None
    deletable: bool
    touched: float


@dataclass(frozen=True, slots=True)
class EntryRow:
    seq: int
    entry_id: bytes
    entry: bytes
    proof: bytes | None
    expires: int


@dataclass(frozen=True, slots=True)
class Expired:
    objects: int = 0
    entries: int = 0
    acked: int = 0
    nonces: int = 0


def object_size(blob: bytes | None, hashes: int) -> int:
    return OBJECT_OVERHEAD + (0 if blob is None else len(blob)) + HASH_OVERHEAD * hashes


def entry_size(entry: bytes, proof: bytes | None) -> int:
    return ENTRY_OVERHEAD + len(entry) + (0 if proof is None else len(proof))
