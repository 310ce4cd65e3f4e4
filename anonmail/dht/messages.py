"""DHT RPC messages (tags 20-29).

FIND_NODE answers with signed NodeCerts only: a contact is never learned from a bare (id, address)
pair, so an id cannot be claimed without its key (S/Kademlia §4.1). A certificate the asker listed
in `have` comes back as its tag in `known` instead (dht/tags.py): one the asker verified itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from anonmail import wire
from anonmail.net import rpc
from anonmail.records.certs import NodeCert
from anonmail.wire import Embedded, Range, Size

MAX_NODES = 64
TAG_BYTES = 4  # dht/tags.py
MAX_HAVE = 64
CERT_BYTES = Size(105, 1024)  # a NodeCert's encoding: no endpoints .. MAX_ENDPOINTS long ones


@rpc.request(tag=20)
@dataclass(frozen=True, slots=True)
class Ping:
    pass


@rpc.response(tag=21)
@dataclass(frozen=True, slots=True)
class Pong:
    pass


@rpc.request(tag=22)
@dataclass(frozen=True, slots=True)
class FindNode:
    target: Annotated[bytes, Size(32)]
    count: Annotated[int, Range(1, MAX_NODES)]
    have: Annotated[bytes, Size(0, MAX_HAVE * TAG_BYTES)] = b""  # tags of certs the asker holds


@rpc.response(tag=23)
@dataclass(frozen=True, slots=True)
class Nodes:
    # Each certificate as its encoded bytes (wire.Embedded): one a client has seen decodes to
    # the object it already verified, at the cost of a dict lookup.
    certs: Annotated[tuple[Annotated[NodeCert, Embedded(CERT_BYTES)], ...], Size(0, MAX_NODES)]
    known: Annotated[bytes, Size(0, MAX_NODES * TAG_BYTES)] = b""  # tags from the asker's `have`


@wire.message(tag=24)
@dataclass(frozen=True, slots=True)
class ContactList:
    """A saved routing table (written to the node's data directory)."""

    certs: Annotated[tuple[NodeCert, ...], Size(0, 20_000)]
