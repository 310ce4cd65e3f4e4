"""DHT RPC messages (tags 20-29).

FIND_NODE answers with signed NodeCerts only: a contact is never learned from a bare (id, address)
pair, so an id cannot be claimed without its key (S/Kademlia §4.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from anonmail import wire
from anonmail.net import rpc
from anonmail.records.certs import NodeCert
from anonmail.wire import Range, Size

MAX_NODES = 64


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


@rpc.response(tag=23)
@dataclass(frozen=True, slots=True)
class Nodes:
    certs: Annotated[tuple[NodeCert, ...], Size(0, MAX_NODES)]


@wire.message(tag=24)
@dataclass(frozen=True, slots=True)
class ContactList:
    """A saved routing table (written to the node's data directory)."""

    certs: Annotated[tuple[NodeCert, ...], Size(0, 20_000)]
