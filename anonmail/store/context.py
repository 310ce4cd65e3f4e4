"""What a store handler works with: its context (database, key, parameters, limits) and the two
points the permit layer plugs into (DESIGN.md §6): the append policy, which admits an APPEND
and names the one-time right it spends, and the rules for verified record kinds (POLICY).

Invariants: a policy judges the proof alone, never the peer (entries arrive through relays and by
replication), and refuses with `Denied` only (an honest refusal, never a fault); limits are
per node, per inbox and per requesting party (store/budget.py), and an admission can only tighten
the inbox's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from anonmail import crypto
from anonmail.records import ids
from anonmail.records.params import NetworkParams
from anonmail.store.db import StoreDb
from anonmail.store.messages import MAX_BLOB, MAX_ENTRY, AppendProof, ObjectKind

DAY = 86400


@dataclass(frozen=True, slots=True)
class Admission:
    """What an append policy grants one entry (see the module docstring)."""

    spend: bytes | None = None  # a one-time right the entry uses; None: nothing is spent
    spend_until: int = 0  # remember the spent right until then (its lapse)
    entries: int | None = None  # a tighter per-inbox entry quota for this inbox
    bytes: int | None = None  # a tighter per-inbox byte quota
    max_ttl: int | None = None  # a shorter longest TTL


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """What a verified record (CERT, POLICY) says about itself: its version (a later one
    replaces a held one) and when it stops being valid."""

    version: int
    expires: int


# (inbox, entry, proof, now, replicated): `replicated` is True when another replica pushes an
# entry it took earlier (a proof judged "for today" then must still count days later).
AppendPolicy = Callable[[bytes, bytes, AppendProof | None, float, bool], Admission | None]
RecordRule = Callable[[bytes, bytes, float], RecordFacts]  # (key, blob, now); raises to refuse


def accept_within_quotas(inbox: bytes, entry: bytes, proof: AppendProof | None, now: float,
                         replicated: bool) -> Admission | None:
    """The default append policy: anything the quotas admit (a node without the permit gate)."""
    return None


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """A node's storage limits. Proposed as NetworkParams fields where the whole network must
    agree (max_ttl, max_blob, max_entry): see docs/storage.md."""

    max_ttl: int = 30 * DAY  # every TTL is clamped to this
    max_blob: int = MAX_BLOB  # bytes per object (the fragment size of large bodies)
    max_entry: int = MAX_ENTRY  # bytes per inbox entry
    node_bytes: int = 1 << 30  # accounted bytes this node stores in total
    inbox_entries: int = 1000  # unexpired entries per inbox
    inbox_bytes: int = 8 << 20  # accounted bytes per inbox
    max_delete_hashes: int = 1024  # live + removed delete hashes per object
    read_page_bytes: int = 512 << 10  # entry bytes per READ answer (the frame is 1 MiB)
    # Budgets (store/budget.py, docs/storage.md "Storage budgets"), as fractions of node_bytes:
    key_share: float = 1 / 32  # what one requesting node key may hold here
    source_share: float = 1 / 8  # ... one source address (IPv4, IPv6 /64), all its keys together
    open_share: float = 3 / 4  # filled beyond this, the node is in its reserve: ...
    reserve_key_share: float = 1 / 256  # ... only keys holding less than this add more,
    reserve_source_share: float = 1 / 64  # ... and only from sources holding less than this


@dataclass(slots=True)
class StoreContext:
    db: StoreDb
    key: crypto.SigningKey
    params: NetworkParams
    trusted_cas: frozenset[bytes] = frozenset()
    limits: StoreLimits = field(default_factory=StoreLimits)
    append_policy: AppendPolicy = accept_within_quotas
    record_rules: dict[ObjectKind, RecordRule] = field(default_factory=dict)
    node_id: bytes = b""
    party_secret: bytes = b""  # keys the pseudonyms budgets are kept under (store/budget.py)

    def __post_init__(self) -> None:
        self.node_id = ids.node_id(self.key.public)
        # From the node key: stable across restarts (the ledger on disk stays usable), and a
        # copy of the database without the key file cannot reverse a pseudonym to an address.
        self.party_secret = crypto.kdf(self.key.seed(), "store-party-pseudonyms")


