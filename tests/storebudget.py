"""Budgeted requests for tests/test_store_budgets.py and test_store_charges.py: parties (as a
node's service would see them: pseudonymous key and source), STORE and APPEND that report a quota
refusal as False, and the ledger's invariants (store/ledger.py, store/budget.py)."""

from __future__ import annotations

from storectx import INBOX, NODE_CERT, NOW, SECRETS

from anonmail.records import ids
from anonmail.records.receipts import StoreOp, store_terms
from anonmail.store.budget import Party, party_of
from anonmail.store.client import check_receipt
from anonmail.store.errors import ErrorCode, QuotaExceeded
from anonmail.store.handlers import StoreContext, handle_append, handle_store
from anonmail.store.messages import (
    MAX_BLOB,
    Append,
    ObjectKind,
    Store,
    blob_digest,
    delete_hash,
    entry_id,
)

MiB = 1 << 20
TTL = 3600


def party(ctx: StoreContext, n: int, address: str | None) -> Party:
    return party_of(ctx.party_secret, n.to_bytes(32, "big"), address)


def put(ctx: StoreContext, who: Party, blob: bytes, key: bytes | None = None,
        secrets: tuple[bytes, ...] = (SECRETS[0],), now: float = NOW) -> bool:
    """STORE; True with a verified receipt, False on a quota refusal (code QUOTA)."""
    key = ids.body_key(blob[:32].hex()) if key is None else key
    try:
        reply = handle_store(ctx, Store(key, ObjectKind.BODY, blob, TTL,
                                        tuple(delete_hash(s) for s in secrets)), now, who)
    except QuotaExceeded as e:
        assert e.code is ErrorCode.QUOTA and e.detail.startswith("quota")
        return False
    check_receipt(reply.receipt, NODE_CERT, StoreOp.STORE, key, blob_digest(blob), now,
                  terms=store_terms(delete_hash(s) for s in secrets))
    return True


def add(ctx: StoreContext, who: Party, entry: bytes, inbox: bytes = INBOX) -> bool:
    try:
        reply = handle_append(ctx, Append(inbox, entry, TTL, None), who, NOW)
    except QuotaExceeded:
        return False
    check_receipt(reply.receipt, NODE_CERT, StoreOp.APPEND, inbox, entry_id(entry), NOW)
    return True


def blob(tag: int, size: int = MAX_BLOB) -> bytes:
    return tag.to_bytes(8, "big") * (size // 8)


def check_books(ctx: StoreContext) -> None:
    """The ledger's invariants and the node budget."""
    db = ctx.db
    assert db.used_bytes() == db.recount() == db.ledger.total() <= ctx.limits.node_bytes
    assert db.ledger.consistent()
