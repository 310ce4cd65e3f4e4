"""A storage node's handlers at a fixed `now` for tests/test_store_*.py (store/handlers.py).

One node key and certificate, one trusted CA, Bob's CA-issued address and its inbox, four delete
secrets; a `StoreContext` on an in-memory database (the `ctx` fixture, which a test module uses
by importing `ctx_fixture`, or `make_ctx` with other limits); and one-line STORE / FETCH / DELETE
/ READ / APPEND calls, STORE and APPEND checking the receipt they get, READ and ACK carrying
Bob's owner proofs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from anonmail import crypto
from anonmail.records import ids
from anonmail.records.certs import AddressCert, CertificateAuthority, NodeCert
from anonmail.records.params import testnet as make_testnet
from anonmail.records.receipts import StoreOp, store_terms
from anonmail.rng import SeededRng
from anonmail.store.client import check_receipt
from anonmail.store.db import StoreDb
from anonmail.store.handlers import (
    StoreContext,
    StoreLimits,
    handle_append,
    handle_delete,
    handle_fetch,
    handle_read,
    handle_store,
)
from anonmail.store.messages import (
    VERSIONED,
    Append,
    Delete,
    Entries,
    Fetch,
    Fetched,
    ObjectKind,
    OwnerOp,
    OwnerProof,
    Read,
    Store,
    args_digest_read,
    blob_digest,
    delete_hash,
    entry_id,
)
from anonmail.store.proofs import make_owner_proof

NOW = 1_800_000_000.0
PARAMS = make_testnet()
NODE_KEY = crypto.SigningKey(b"\x11" * 32)
NODE_ID = ids.node_id(NODE_KEY.public)
PEER = b"\x22" * 32
CA = CertificateAuthority(crypto.SigningKey(b"\x33" * 32))
BOB = "bob@example.org"
BOB_SIGN = crypto.SigningKey(b"\x44" * 32)
BOB_CERT = CA.issue(BOB, BOB_SIGN.public, b"\x55" * 32, NOW - 3600)
INBOX = ids.inbox_key(BOB)
SECRETS = [bytes([i]) * 32 for i in range(1, 5)]
BODY_KEY = ids.body_key("<r4nd0m@anonmail>")
NODE_CERT = NodeCert.issue(NODE_KEY, (), NOW, PARAMS)


def make_ctx(db: StoreDb | None = None, **limits: int) -> StoreContext:
    return StoreContext(db if db is not None else StoreDb(":memory:"), NODE_KEY, PARAMS,
                        frozenset({CA.public}), StoreLimits(**limits))


@pytest.fixture(name="ctx")
def ctx_fixture() -> Iterator[StoreContext]:
    c = make_ctx()
    yield c
    c.db.close()


def store(ctx: StoreContext, blob: bytes = b"ciphertext", *, key: bytes = BODY_KEY,
          kind: ObjectKind = ObjectKind.BODY, ttl: int = 3600,
          secrets: list[bytes] | None = None, now: float = NOW) -> int:
    """STORE; returns the receipt's expiry after checking the receipt."""
    hashes = tuple(delete_hash(s) for s in (SECRETS[:1] if secrets is None else secrets))
    reply = handle_store(ctx, Store(key, kind, blob, ttl, hashes), now)
    check_receipt(reply.receipt, NODE_CERT, StoreOp.STORE, key, blob_digest(blob), now,
                  terms=store_terms(() if kind in VERSIONED else hashes), ttl=ttl)
    return reply.receipt.expires


def fetch(ctx: StoreContext, key: bytes = BODY_KEY, now: float = NOW) -> bytes | None:
    reply = handle_fetch(ctx, Fetch(key), now)
    return reply.blob if isinstance(reply, Fetched) else None


def delete(ctx: StoreContext, secret: bytes, key: bytes = BODY_KEY, now: float = NOW) -> object:
    return handle_delete(ctx, Delete(key, secret), now)


def proof(op: OwnerOp, args: bytes, *, now: float = NOW, node_id: bytes = NODE_ID,
          inbox: bytes = INBOX, rng: SeededRng | None = None,
          cert: AddressCert = BOB_CERT, key: crypto.SigningKey = BOB_SIGN) -> OwnerProof:
    return make_owner_proof(key, cert, op, inbox, [node_id], args, now,
                            rng if rng is not None else SeededRng(repr((op, args, now)).encode()))


def read(ctx: StoreContext, after: int = 0, now: float = NOW,
         rng: SeededRng | None = None) -> Entries:
    p = proof(OwnerOp.READ, args_digest_read(after), now=now, rng=rng)
    reply = handle_read(ctx, Read(INBOX, after, p), now)
    assert isinstance(reply, Entries)  # a whole read (not brief)
    return reply


def append(ctx: StoreContext, entry: bytes, ttl: int = 3600, now: float = NOW,
           inbox: bytes = INBOX) -> int:
    reply = handle_append(ctx, Append(inbox, entry, ttl, None), PEER, now)
    check_receipt(reply.receipt, NODE_CERT, StoreOp.APPEND, inbox, entry_id(entry), now)
    return reply.receipt.expires
