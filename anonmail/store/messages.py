"""Storage RPC messages (wire tags 30-59) and the digests they are judged by (DESIGN.md §4).

Client primitives (seed 002 §2.2, seed 001 §3; DESIGN.md §4 table):

| tag | request   | answer                        |
|-----|-----------|-------------------------------|
| 30  | Store     | 31 Stored (a signed Receipt)  |
| 32  | Fetch     | 33 Fetched, or 34 NotFound    |
| 35  | Delete    | 36 Deleted, or 34 NotFound    |
| 37  | Append    | 38 Appended (a signed Receipt)|
| 39  | Read      | 40 Entries, or 47 EntryIds    |
| 41  | Ack       | 42 Acked                      |

Node-to-node repair (republish, seed 002 §2.3-2.4): 43 Probe -> 44 Needs ("which of these do you
lack?"), 45 Replicate -> 46 Replicated (inbox entries with their original append proofs).
Objects are pushed with a plain Store. Refusals are `ErrorReply(REFUSED)` (store/errors.py).

Invariants:
* what a node stores is opaque ciphertext: no field here carries an address, a subject or any
  plaintext; the only structured content a node parses is an AddressCert (public by design);
* `blob_digest` is what receipts sign for STORE and what a body's reader checks at fetch;
  `entry_id` (= the APPEND receipt digest) names an inbox entry, so replicas and duplicate
  APPENDs of the same entry collapse into one;
* every size is capped in the schema, so decoding bounds memory before any handler runs, and a
  maximum STORE (or FETCH answer) fits in one default frame (`NetworkParams.max_frame`, 1 MiB):
  `MAX_BLOB` leaves 64 KiB for the envelope and the delete hashes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated

from anonmail import crypto, wire
from anonmail.net import rpc
from anonmail.records.certs import AddressCert
from anonmail.records.receipts import Receipt
from anonmail.wire import Range, Size

MAX_BLOB = (1 << 20) - (64 << 10)  # per-object cap; the fragment size of large bodies
MAX_ENTRY = 64 << 10  # a sealed inbox header is a few KiB
MAX_TTL_WIRE = (1 << 32) - 1  # what the schema admits; nodes clamp to StoreLimits.max_ttl
MAX_DELETE_HASHES = 256  # per request (one per recipient)
MAX_SECRET = 64
MAX_PAGE = 1024  # entries per READ answer
MAX_ACK = 1024  # entry ids per ACK
MAX_PROOF_DATA = 4096
MAX_PROBE_ITEMS = 64
MAX_PROBE_IDS = 1024
MAX_REPLICATE = 256  # entries per Replicate
MAX_PROOF_NODES = 32  # nodes one owner proof names (the r replicas of an inbox, r <= 32)
NONCE_SIZE = 16

Key32 = Annotated[bytes, Size(32)]
Ttl = Annotated[int, Range(1, MAX_TTL_WIRE)]
# An inbox's READ cursor: a sequence number of the replica's SQLite table, whose integers are
# signed 64-bit (a U64 above them raised OverflowError in the handler instead of MALFORMED).
Cursor = Annotated[int, Range(0, (1 << 63) - 1)]

DELETE_HASH_TAG = "delete"
BLOB_DIGEST_TAG = "blob"
ENTRY_ID_TAG = "entry"


def delete_hash(secret: bytes) -> bytes:
    """What a STORE carries for a delete right: H("delete", secret). The secret itself travels
    only inside the recipient's sealed header (DESIGN.md §4, deviation from seed 002 §2.2)."""
    return crypto.hash(DELETE_HASH_TAG, secret)


def blob_digest(blob: bytes) -> bytes:
    """The digest a STORE receipt signs and a body's reader checks (seed 002 §3.3)."""
    return crypto.hash(BLOB_DIGEST_TAG, blob)


def entry_id(entry: bytes) -> bytes:
    """An inbox entry's id; also the digest its APPEND receipt signs."""
    return crypto.hash(ENTRY_ID_TAG, entry)


class ObjectKind(enum.IntEnum):
    BODY = 1  # key = H("body", message id); opaque to the node. Fragment descriptors are BODYs.
    FRAGMENT = 2  # key = H("fragment", blob): content-addressed, checked by the node
    CERT = 3  # blob = an encoded AddressCert, key = H("cert", its address): checked by the node
    POLICY = 4  # blob = an owner-signed InboxPolicy (permit/records.py) under its inbox key or
    #             request-inbox key: checked by the node through the permit layer's rule


# Kinds whose blob the node verifies and versions: a later version replaces the held one, and
# they win a key from an opaque kind (a BODY someone stored under H("cert", a) or an inbox key
# squats it; no honest opaque object can have such a key).
VERSIONED = frozenset({ObjectKind.CERT, ObjectKind.POLICY})


class AppendProofKind(enum.IntEnum):
    PERMIT = 1  # a Permit and the sender's signature with its key P (permit layer, DESIGN.md §6)
    STAMP = 2  # a proof-of-work stamp for request inboxes (DESIGN.md §6)


class OwnerOp(enum.IntEnum):
    READ = 1
    ACK = 2


class ItemKind(enum.IntEnum):
    OBJECT = 1
    INBOX = 2


@wire.struct
@dataclass(frozen=True, slots=True)
class AppendProof:
    """Why an APPEND may write to an inbox. Opaque to the store: the node's append policy
    (store/handlers.py `AppendPolicy`) judges it; the permit layer supplies that policy."""

    kind: AppendProofKind
    data: Annotated[bytes, Size(0, MAX_PROOF_DATA)]


@wire.struct
@dataclass(frozen=True, slots=True)
class OwnerProof:
    """The address owner's authorisation of one READ or ACK on the nodes it names
    (store/proofs.py): one replica, or the replicas an anonymizer fans one request out to."""

    cert: AddressCert
    node_ids: Annotated[tuple[Key32, ...], Size(1, MAX_PROOF_NODES)]  # useless at any other
    time: Annotated[int, wire.U64]
    nonce: Annotated[bytes, Size(NONCE_SIZE)]
    signature: Annotated[bytes, Size(64)]


@wire.struct
@dataclass(frozen=True, slots=True)
class OwnerStatement:
    """What an OwnerProof's signature covers (never sent on its own). `args` binds the request's
    arguments (the READ cursor, the ACKed ids), so a relay cannot reuse a proof for other work."""

    op: OwnerOp
    inbox: Key32
    node_ids: Annotated[tuple[Key32, ...], Size(1, MAX_PROOF_NODES)]
    time: Annotated[int, wire.U64]
    nonce: Annotated[bytes, Size(NONCE_SIZE)]
    args: Key32


@wire.struct
@dataclass(frozen=True, slots=True)
class InboxEntry:
    entry: Annotated[bytes, Size(1, MAX_ENTRY)]
    expires: Annotated[int, wire.U64]


@wire.struct
@dataclass(frozen=True, slots=True)
class ReplicaEntry:
    entry: Annotated[bytes, Size(1, MAX_ENTRY)]
    ttl: Ttl  # remaining lifetime (relative: node clocks differ by up to clock_skew)
    proof: AppendProof | None  # the original APPEND's proof, judged again by the receiver


@wire.struct
@dataclass(frozen=True, slots=True)
class ProbeItem:
    what: ItemKind
    key: Key32
    ids: Annotated[tuple[Key32, ...], Size(0, MAX_PROBE_IDS)]  # (blob digest,) or entry ids


@wire.struct
@dataclass(frozen=True, slots=True)
class Wanted:
    ids: Annotated[tuple[Key32, ...], Size(0, MAX_PROBE_IDS)]


# -- client primitives ----------------------------------------------------------------------------


@rpc.request(tag=30)
@dataclass(frozen=True, slots=True)
class Store:
    key: Key32
    kind: ObjectKind
    blob: Annotated[bytes, Size(1, MAX_BLOB)]
    ttl: Ttl
    delete_hashes: Annotated[tuple[Key32, ...], Size(0, MAX_DELETE_HASHES)]


@rpc.response(tag=31)
@dataclass(frozen=True, slots=True)
class Stored:
    receipt: Receipt


@rpc.request(tag=32)
@dataclass(frozen=True, slots=True)
class Fetch:
    key: Key32


@rpc.response(tag=33)
@dataclass(frozen=True, slots=True)
class Fetched:
    kind: ObjectKind
    blob: Annotated[bytes, Size(1, MAX_BLOB)]
    expires: Annotated[int, wire.U64]


@rpc.response(tag=34)
@dataclass(frozen=True, slots=True)
class NotFound:
    pass


@rpc.request(tag=35)
@dataclass(frozen=True, slots=True)
class Delete:
    key: Key32
    secret: Annotated[bytes, Size(16, MAX_SECRET)]


@rpc.response(tag=36)
@dataclass(frozen=True, slots=True)
class Deleted:
    """Deliberately empty: whether the object is now gone would tell one recipient whether the
    others have read the message."""


@rpc.request(tag=37)
@dataclass(frozen=True, slots=True)
class Append:
    inbox: Key32
    entry: Annotated[bytes, Size(1, MAX_ENTRY)]
    ttl: Ttl
    proof: AppendProof | None


@rpc.response(tag=38)
@dataclass(frozen=True, slots=True)
class Appended:
    receipt: Receipt


@rpc.request(tag=39)
@dataclass(frozen=True, slots=True)
class Read:
    inbox: Key32
    after: Cursor  # 0, then the `next` of the previous page
    proof: OwnerProof
    # Only the ids of the entries (`EntryIds`): a check reads one replica whole and the others
    # briefly, and reads another whole only if it holds an entry the first lacked (issue 11).
    brief: bool = False


@rpc.response(tag=40)
@dataclass(frozen=True, slots=True)
class Entries:
    entries: Annotated[tuple[InboxEntry, ...], Size(0, MAX_PAGE)]
    next: Cursor
    more: bool


@rpc.response(tag=47)
@dataclass(frozen=True, slots=True)
class EntryIds:
    """A brief READ's answer: the ids of a page of entries (`entry_id`)."""

    ids: Annotated[tuple[Key32, ...], Size(0, MAX_PAGE)]
    next: Cursor
    more: bool


@rpc.request(tag=41)
@dataclass(frozen=True, slots=True)
class Ack:
    inbox: Key32
    entry_ids: Annotated[tuple[Key32, ...], Size(1, MAX_ACK)]
    proof: OwnerProof


@rpc.response(tag=42)
@dataclass(frozen=True, slots=True)
class Acked:
    pass


# -- node-to-node repair --------------------------------------------------------------------------


@rpc.request(tag=43)
@dataclass(frozen=True, slots=True)
class Probe:
    items: Annotated[tuple[ProbeItem, ...], Size(1, MAX_PROBE_ITEMS)]


@rpc.response(tag=44)
@dataclass(frozen=True, slots=True)
class Needs:
    """Per probed item, in order: the ids the prober offered that this node lacks and would
    take (a deleted object or an ACKed entry is never wanted back)."""

    items: Annotated[tuple[Wanted, ...], Size(0, MAX_PROBE_ITEMS)]


@rpc.request(tag=45)
@dataclass(frozen=True, slots=True)
class Replicate:
    inbox: Key32
    entries: Annotated[tuple[ReplicaEntry, ...], Size(1, MAX_REPLICATE)]


@rpc.response(tag=46)
@dataclass(frozen=True, slots=True)
class Replicated:
    accepted: Annotated[int, Range(0, MAX_REPLICATE)]


def args_digest_read(after: int, brief: bool = False) -> bytes:
    return crypto.hash("owner-args-read-brief" if brief else "owner-args-read",
                       after.to_bytes(8, "big"))


def args_digest_ack(entry_ids: tuple[bytes, ...]) -> bytes:
    return crypto.hash("owner-args-ack", *entry_ids)


REQUESTS: tuple[type, ...] = (Store, Fetch, Delete, Append, Read, Ack, Probe, Replicate)
# The requests a client makes, which an anonymizer may forward for a sender (anon/anonymizer.py);
# Probe and Replicate pass only between storing nodes.
FORWARDABLE: tuple[type, ...] = (Store, Fetch, Delete, Append, Read, Ack)
