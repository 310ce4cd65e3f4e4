"""Storage receipts: a storing node's signed statement that it holds something (seed 002 §4).

A receipt names the operation, the key, a digest of what was stored and on what terms, its
expiry, the node, and the time, signed by the node's key under the "receipt" domain. For a
STORE with delete hashes the digest is `receipt_digest(blob digest, store_terms(hashes))`, the
hashes all recorded as rights to delete; otherwise the blob digest or entry id itself. Terms
and expiry let a sender see that what was stored is what it asked for: an anonymizer that
stripped the delete hashes or lengthened the TTL of a STORE it forwarded gets a receipt the
sender refuses (threat T-ANON-RECEIPTS). The terms are folded into the digest rather than
sent: the sender knows them, and 32 more bytes a receipt pushed the answer of an 8-replica
Forward over its 2 KiB cell class (issue 11). A sender verifies every receipt
against the NodeCert it cross-checked; a node that signs and then drops the data has signed
evidence against it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from anonmail import crypto, wire
from anonmail.errors import RemoteProtocolError
from anonmail.records import ids
from anonmail.wire import Size

RECEIPT_DOMAIN = "receipt"
NO_TERMS = bytes(32)  # an APPEND's, or a STORE's without delete rights


def store_terms(delete_hashes: Iterable[bytes]) -> bytes:
    """What a STORE receipt says of the delete rights: a digest of the requested delete hashes
    (order and repeats do not matter), every one of them recorded as a right to delete;
    NO_TERMS when there are none."""
    hashes = sorted(set(delete_hashes))
    return crypto.hash("store-terms", *hashes) if hashes else NO_TERMS


def receipt_digest(digest: bytes, terms: bytes = NO_TERMS) -> bytes:
    """What a receipt's digest field holds for `digest` (a blob digest or an entry id) stored
    on `terms`: `digest` itself when there are no terms."""
    return digest if terms == NO_TERMS else crypto.hash("receipt-digest", digest, terms)


class StoreOp(enum.IntEnum):
    STORE = 1
    APPEND = 2


@wire.message(tag=3)
@dataclass(frozen=True, slots=True)
class Receipt:
    op: StoreOp
    key: Annotated[bytes, Size(32)]
    digest: Annotated[bytes, Size(32)]  # receipt_digest(what was stored, its terms)
    expires: Annotated[int, wire.U64]
    node_id: Annotated[bytes, Size(32)]
    time: Annotated[int, wire.U64]
    signature: Annotated[bytes, Size(64)]

    @classmethod
    def issue(cls, key: crypto.SigningKey, op: StoreOp, store_key: bytes, digest: bytes,
              expires: int, now: float, terms: bytes = NO_TERMS) -> Receipt:
        digest = receipt_digest(digest, terms)
        unsigned = cls(op, store_key, digest, expires, ids.node_id(key.public), int(now),
                       bytes(64))
        sig = key.sign(RECEIPT_DOMAIN, wire.signing_bytes(unsigned))
        return cls(op, store_key, digest, expires, unsigned.node_id, int(now), sig)

    def verify(self, node_public_key: bytes) -> None:
        if ids.node_id(node_public_key) != self.node_id:
            raise RemoteProtocolError("receipt signed by a different node")
        crypto.verify(node_public_key, RECEIPT_DOMAIN, wire.signing_bytes(self), self.signature)
