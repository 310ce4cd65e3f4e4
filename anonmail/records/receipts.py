"""Storage receipts: a storing node's signed statement that it holds something (seed 002 §4).

A receipt names the operation, the key, a digest of what was stored, the terms it is held on
(for a STORE, a digest of the requester's delete hashes, all recorded: `store_terms`), its
expiry, the node, and the time, signed by the node's key under the "receipt" domain. The terms
and expiry let a sender see that what was stored is what it asked for: an anonymizer that
stripped the delete hashes or lengthened the TTL of a STORE it forwarded gets a receipt the
sender refuses (threat T-ANON-RECEIPTS). A sender verifies every receipt
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


class StoreOp(enum.IntEnum):
    STORE = 1
    APPEND = 2


@wire.message(tag=3)
@dataclass(frozen=True, slots=True)
class Receipt:
    op: StoreOp
    key: Annotated[bytes, Size(32)]
    digest: Annotated[bytes, Size(32)]
    terms: Annotated[bytes, Size(32)]  # store_terms(delete hashes), or NO_TERMS
    expires: Annotated[int, wire.U64]
    node_id: Annotated[bytes, Size(32)]
    time: Annotated[int, wire.U64]
    signature: Annotated[bytes, Size(64)]

    @classmethod
    def issue(cls, key: crypto.SigningKey, op: StoreOp, store_key: bytes, digest: bytes,
              expires: int, now: float, terms: bytes = NO_TERMS) -> Receipt:
        unsigned = cls(op, store_key, digest, terms, expires, ids.node_id(key.public),
                       int(now), bytes(64))
        sig = key.sign(RECEIPT_DOMAIN, wire.signing_bytes(unsigned))
        return cls(op, store_key, digest, terms, expires, unsigned.node_id, int(now), sig)

    def verify(self, node_public_key: bytes) -> None:
        if ids.node_id(node_public_key) != self.node_id:
            raise RemoteProtocolError("receipt signed by a different node")
        crypto.verify(node_public_key, RECEIPT_DOMAIN, wire.signing_bytes(self), self.signature)
