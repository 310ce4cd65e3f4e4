"""Storage budgets: how much of this node's storage one requesting party may hold (and, beside
them, the per-inbox quota checks of APPEND and Replicate).

Every stored row is charged to the party whose request wrote it (store/ledger.py): its node key
(`peer.cert.node_id`) and its source address (`net.admission.source_of`: an IPv4 address or an
IPv6 /64). Loopback is every local process's address, and on a testnet every node may sit
behind one address, so there a party is judged by its key alone (`party_of`), as the transport
judges faults (net/admission.py). Both are kept as keyed pseudonyms (BLAKE2b keyed with a secret
derived from the node key): the ledger tells parties apart, but the database alone does not say
which node or address stored what (threat T-STORE-READ). The store answers a request only if,
after it,

* the node holds at most `node_bytes` (the global budget);
* the key holds at most its share, `key_share` of the node (1/32: 32 MiB of 1 GiB);
* the source, all its keys together, holds at most `source_share` (1/8: 128 MiB);
* and, once the node is filled beyond `open_share` (3/4), the party is *light*: its key holds
  at most `reserve_key_share` (1/256: 4 MiB) and its source `reserve_source_share` (1/64:
  16 MiB). The last quarter is the reserve: whoever flooded the node cannot enter it, so honest
  parties keep getting receipts while the flood lasts.

Invariants (tests/test_store_budgets.py with a property test of `judge`; test_store_charges.py):
* no key holds more than its share and no source more than its share; the node never holds
  more than `node_bytes`; this node itself (`LOCAL`: its own writes and rows older than the
  budgets) is bounded only by `node_bytes`;
* bytes held beyond the reserve share of their key never exceed the open part (3/4): the
  reserve is taken only by light parties, at most one reserve share per key and per source; so
  filling the node takes many sources (or, judged by key, many keys), never one party. (READ
  nonces and ACK records are exempt from this one: they are how an owner empties the node);
* growth only is charged: storing an object that is already held (a republish, a second
  recipient's copy, a retry) costs nothing but the delete hashes it adds; a refusal is an honest
  `QuotaExceeded` (code QUOTA), never a fault.

Shares never fall below what one request at the size caps needs (two objects per key, one in
the reserve), so a small node still takes a large body.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from anonmail import crypto
from anonmail.net.admission import is_loopback, source_of
from anonmail.store.context import Admission, StoreContext, StoreLimits
from anonmail.store.db import StoreDb
from anonmail.store.errors import ErrorCode, QuotaExceeded
from anonmail.store.ledger import LOCAL, Party
from anonmail.store.messages import MAX_DELETE_HASHES
from anonmail.store.schema import (
    ACKED_OVERHEAD,
    HASH_OVERHEAD,
    NONCE_OVERHEAD,
    OBJECT_OVERHEAD,
    SPENT_OVERHEAD,
)

__all__ = ["FULL", "KEY_SHARE", "LOCAL", "RESERVE", "SOURCE_SHARE", "Party", "Shares", "admit",
           "admit_ack", "as_party", "inbox_room", "judge", "party_of", "shares", "spend_cost"]

# Refusal details (fixed phrases: never a key or an address). All are code QUOTA.
FULL = "quota: node storage full"
KEY_SHARE = "quota: your share of this node's storage is used"
SOURCE_SHARE = "quota: your address's share of this node's storage is used"
RESERVE = "quota: node storage nearly full; the rest is kept for light users"


@dataclass(frozen=True, slots=True)
class Shares:
    """The budgets in bytes (`shares` derives them from StoreLimits)."""

    node: int
    open: int  # filled beyond this, only light parties add
    key: int
    source: int
    reserve_key: int
    reserve_source: int


def shares(lim: StoreLimits) -> Shares:
    n = lim.node_bytes
    one = OBJECT_OVERHEAD + lim.max_blob + HASH_OVERHEAD * MAX_DELETE_HASHES  # largest STORE
    key = max(int(n * lim.key_share), 2 * one)
    reserve_key = max(int(n * lim.reserve_key_share), one)
    return Shares(node=n, open=int(n * lim.open_share), key=key,
                  source=max(int(n * lim.source_share), key), reserve_key=reserve_key,
                  reserve_source=max(int(n * lim.reserve_source_share), reserve_key))


def judge(sh: Shares, total: int, node_grow: int, key_used: int, source_used: int | None,
          grow: int, *, reserve: bool = True) -> str | None:
    """The refusal detail, or None to admit. The node holds `total` and would grow by
    `node_grow`; the party's key holds `key_used` and its source `source_used` (None: judged by
    key alone), and its charge would grow by `grow`. (The two growths differ when a request
    takes over or frees rows charged to others.) `reserve=False` for READ and ACK: the owner
    collecting mail empties the node, and must not be shut out of it."""
    if node_grow > 0 and total + node_grow > sh.node:
        return FULL
    if grow <= 0:
        return None
    if key_used + grow > sh.key:
        return KEY_SHARE
    if source_used is not None and source_used + grow > sh.source:
        return SOURCE_SHARE
    if reserve and total + max(node_grow, 0) > sh.open and (
            key_used + grow > sh.reserve_key
            or (source_used is not None and source_used + grow > sh.reserve_source)):
        return RESERVE
    return None


def admit(ctx: StoreContext, party: Party, grow: int, node_grow: int | None = None, *,
          reserve: bool = True) -> None:
    """Raise QuotaExceeded unless `party` may add `grow` charged bytes (the node `node_grow`,
    by default the same). This node itself is bounded by the node's total only."""
    total = ctx.db.used_bytes()
    node_grow = grow if node_grow is None else node_grow
    sh = shares(ctx.limits)
    if party.key == LOCAL.key:
        detail = FULL if node_grow > 0 and total + node_grow > sh.node else None
    else:
        key_used, source_used = ctx.db.ledger.usage(party)
        detail = judge(sh, total, node_grow, key_used,
                       None if party.source is None else source_used, grow, reserve=reserve)
    if detail is not None:
        raise QuotaExceeded(detail)


def inbox_room(ctx: StoreContext, party: Party, inbox: bytes, now: float, count: int,
               size: int, adm: Admission, extra: int = 0) -> None:
    """Raise QuotaExceeded unless the inbox has room for `count` more entries of `size`
    accounted bytes in total (the admission may set tighter inbox quotas), and the party's
    budget has room for those and `extra` bytes of spent rights."""
    held, used = ctx.db.inbox_usage(inbox, now)
    lim = ctx.limits
    if held + count > min(lim.inbox_entries, adm.entries or lim.inbox_entries):
        raise QuotaExceeded("quota: inbox full (entries)", ErrorCode.INBOX_FULL)
    if used + size > min(lim.inbox_bytes, adm.bytes or lim.inbox_bytes):
        raise QuotaExceeded("quota: inbox full (bytes)", ErrorCode.INBOX_FULL)
    admit(ctx, party, size + extra)


def spend_cost(db: StoreDb, inbox: bytes, adm: Admission) -> int:
    """The accounted bytes the admission's one-time right adds (0 if already recorded)."""
    return 0 if adm.spend is None or db.spent_on(inbox, adm.spend) else SPENT_OVERHEAD


def admit_ack(ctx: StoreContext, party: Party, inbox: bytes, eids: Iterable[bytes]) -> None:
    """The budget of an ACK: its nonce and each new ACK record are the owner's; a record for a
    held entry frees that entry (at least 128 bytes, released to its appender), so the node
    grows only by the ids it does not hold."""
    db = ctx.db
    new = [e for e in dict.fromkeys(eids) if not db.is_acked(inbox, e)]
    held = sum(1 for e in new if db.has_entry(inbox, e) is not None)
    admit(ctx, party, NONCE_OVERHEAD + ACKED_OVERHEAD * len(new),
          NONCE_OVERHEAD + ACKED_OVERHEAD * (len(new) - 2 * held), reserve=False)


def party_of(secret: bytes, node_id: bytes, address: str | None, *,
             shared: bool = False) -> Party:
    """The party a request from `node_id` at the observed `address` is charged to, as
    pseudonyms under `secret` (StoreContext.party_secret). `shared`: every address is shared (a
    testnet), so judge by key alone, as on loopback."""
    key = crypto.kdf(secret, "store-party-key", node_id)
    if address is None or shared:
        return Party(key)
    source = source_of(address)  # maps ::ffff:127.0.0.1 to 127.0.0.1 and keeps ::1
    if is_loopback(source):
        return Party(key)
    return Party(key, crypto.kdf(secret, "store-party-source", source.encode()))


def as_party(ctx: StoreContext, peer: bytes | Party) -> Party:
    """Handlers take a Party; a bare node id (tests, tools) is a party judged by key alone."""
    return peer if isinstance(peer, Party) else party_of(ctx.party_secret, peer, None)
