"""Channel messages (wire tags 80-99; DESIGN.md §7, seed 002 §4.1).

Between nodes (RPC requests, answered by every node's relay service, anon/relay.py):

| tag | request  | answer            | what                                                   |
|-----|----------|-------------------|--------------------------------------------------------|
| 80  | Open     | 81 Opened         | extend a circuit by one hop (onion layer sealed to it)  |
| 82  | Cell     | 83 CellReply      | one request along an open circuit, one reply back      |
| 84  | Locate   | 85 Located        | "which node is closest to this key?", answer signed    |
| 86  | Destroy  | 87 Destroyed      | tear a circuit down (best effort, forwarded)           |

Inside a circuit, only the last hop (Z, or Y when A cross-checks) reads the request, an `Op`:
`Locate` (as above), `FindNodes` -> `Found` (Z's lookup of the r closest), `Forward` ->
`Forwarded` (Z sends one storage request to the listed nodes and returns each node's answer,
receipts included, as the bytes the node sent).

Invariants: every size is bounded in the schema (decode bounds memory before any handler
runs); a circuit id is random and names the circuit on one link only (each hop draws a fresh
one for the next link), so two hops cannot match a circuit by its id; what a relay forwards is
ciphertext under a key only the sender and that hop share, so a relay can neither read nor
alter it (an altered cell fails authentication at the next layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from anonmail import crypto, wire
from anonmail.errors import RemoteProtocolError
from anonmail.net import rpc
from anonmail.records.certs import NodeCert
from anonmail.wire import Range, Size

CIRCUIT_ID_SIZE = 16
MAX_CELL = (1 << 20) - (16 << 10)  # the largest padded cell, with every hop's layer
MAX_ONION = 4096  # an Open's onion: three layers of a few hundred bytes each
MAX_TARGETS = 16  # nodes one Forward reaches (r is 8): bounds Z's fan-out per request
MAX_FORWARD_REQUEST = MAX_CELL - 8192  # an encoded storage request inside a Forward
MAX_FORWARD_DELAY_MS = 60_000  # the longest a sender may ask Z to hold a Forward
MAX_FOUND = 32
MAX_OPENED = 256  # an Open's confirmation: one 16-byte layer per hop over `onion.OPENED`

LOCATE_DOMAIN = "anon-located"

CircuitId = Annotated[bytes, Size(CIRCUIT_ID_SIZE)]
Key32 = Annotated[bytes, Size(32)]


# -- between nodes --------------------------------------------------------------------------------


@rpc.request(tag=80)
@dataclass(frozen=True, slots=True)
class Open:
    circuit: CircuitId
    onion: Annotated[bytes, Size(crypto.SEALED_BOX_OVERHEAD, MAX_ONION)]


@rpc.response(tag=81)
@dataclass(frozen=True, slots=True)
class Opened:
    box: Annotated[bytes, Size(1, MAX_OPENED)]  # the last hop's confirmation, one layer per hop


@rpc.request(tag=82)
@dataclass(frozen=True, slots=True)
class Cell:
    circuit: CircuitId
    box: Annotated[bytes, Size(1, MAX_CELL)]


@rpc.response(tag=83)
@dataclass(frozen=True, slots=True)
class CellReply:
    box: Annotated[bytes, Size(1, MAX_CELL)]


@rpc.request(tag=86)
@dataclass(frozen=True, slots=True)
class Destroy:
    circuit: CircuitId


@rpc.response(tag=87)
@dataclass(frozen=True, slots=True)
class Destroyed:
    pass


@wire.struct
@dataclass(frozen=True, slots=True)
class OnionLayer:
    """What one hop finds when it opens its layer of an Open (sealed to its node key)."""

    key: Key32  # the hop's session key with the sender
    next: NodeCert | None  # the next hop; None: this hop is the end of the circuit
    inner: Annotated[bytes, Size(0, MAX_ONION)]  # the next hop's onion (empty at the end)
    # When the sender built the onion (UNIX seconds, its clock): a hop refuses a layer outside
    # params.clock_skew of its own clock, or whose key it has admitted before (anon/replay.py).
    created: Annotated[int, wire.U64]


# -- Locate: asked of X directly, of Y through X --------------------------------------------------


@rpc.request(tag=84)
@dataclass(frozen=True, slots=True)
class Locate:
    key: Key32


@wire.struct
@dataclass(frozen=True, slots=True)
class LocateStatement:
    """A node's signed claim: "the node closest to `key` is `cert`" (seed 002 §4.1: answers
    are signed by the node giving them, so a disagreement is evidence against both)."""

    key: Key32
    cert: NodeCert
    by: Key32  # the answering node's id
    time: Annotated[int, wire.U64]


@rpc.response(tag=85)
@dataclass(frozen=True, slots=True)
class Located:
    statement: LocateStatement
    signature: Annotated[bytes, Size(64)]

    def verify(self, signer: NodeCert) -> None:
        """Raise RemoteProtocolError unless `signer` made this statement."""
        if self.statement.by != signer.node_id:
            raise RemoteProtocolError("located answer from another node")
        crypto.verify(signer.public_key, LOCATE_DOMAIN, wire.encode(self.statement),
                      self.signature)


def sign_located(key: crypto.SigningKey, statement: LocateStatement) -> Located:
    return Located(statement, key.sign(LOCATE_DOMAIN, wire.encode(statement)))


# -- operations at the end of a circuit (never RPC requests on their own) ------------------------


@wire.message(tag=90)
@dataclass(frozen=True, slots=True)
class FindNodes:
    key: Key32
    count: Annotated[int, Range(1, MAX_FOUND)]


@wire.message(tag=91)
@dataclass(frozen=True, slots=True)
class Found:
    certs: Annotated[tuple[NodeCert, ...], Size(0, MAX_FOUND)]


@wire.message(tag=92)
@dataclass(frozen=True, slots=True)
class Forward:
    targets: Annotated[tuple[NodeCert, ...], Size(1, MAX_TARGETS)]
    request: Annotated[bytes, Size(1, MAX_FORWARD_REQUEST)]  # an encoded storage request
    delay_ms: Annotated[int, Range(0, MAX_FORWARD_DELAY_MS)]  # hold this long before acting
    align_ms: Annotated[int, Range(0, MAX_FORWARD_DELAY_MS)]  # then to a multiple of this


@wire.struct
@dataclass(frozen=True, slots=True)
class TargetReply:
    node_id: Key32
    reply: Annotated[bytes, Size(0, MAX_FORWARD_REQUEST)]  # the encoded answer; b"": no answer


@wire.message(tag=93)
@dataclass(frozen=True, slots=True)
class Forwarded:
    replies: Annotated[tuple[TargetReply, ...], Size(0, MAX_TARGETS)]


@wire.message(tag=94)
@dataclass(frozen=True, slots=True)
class OpFailed:
    """The end of the circuit could not do the operation (its lookup failed, a bad request)."""

    reason: Annotated[str, Size(0, 120)]


OPS = (Locate, FindNodes, Forward)
ANSWERS = (Located, Found, Forwarded, OpFailed)
