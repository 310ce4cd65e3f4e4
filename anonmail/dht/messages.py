"""DHT RPC messages (tags 20-29).

FIND_NODE answers with signed NodeCerts only: a contact is never learned from a bare (id, address)
pair, so an id cannot be claimed without its key (S/Kademlia §4.1). Two forms (dht/tags.py):

* `FindNode` -> `Nodes`: a certificate per contact, except those the asker listed in `have`,
  which come back as their tags in `known` (the form of bench rpc and of simple clients);
* `FindTags` -> `Tags`, then `GetCerts` -> `Nodes`: the lookup's form. The answer names every
  contact by tag; the asker resolves the tags of certificates it holds and fetches, from the
  same answerer, only the ones it lacks. What it gets is always a signed certificate whose tag
  it asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from anonmail import wire
from anonmail.net import rpc
from anonmail.records.certs import NodeCert
from anonmail.wire import Embedded, Range, Size

MAX_NODES = 64
TAG_BYTES = 8  # dht/tags.py: 64 bits, so no certificate can be ground to match another's
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


@rpc.request(tag=25)
@dataclass(frozen=True, slots=True)
class FindTags:
    """FIND_NODE answered by tags (`Tags`); the asker gets the certificates it lacks with
    `GetCerts`."""

    target: Annotated[bytes, Size(32)]
    count: Annotated[int, Range(1, MAX_NODES)]


@rpc.response(tag=26)
@dataclass(frozen=True, slots=True)
class Tags:
    tags: Annotated[bytes, Size(0, MAX_NODES * TAG_BYTES)]  # the contacts, nearest first


@rpc.request(tag=27)
@dataclass(frozen=True, slots=True)
class GetCerts:
    """The certificates behind `want`, tags of an answer to `FindTags(target, count)`; answered
    with `Nodes` holding those the answerer still names (its table may have changed)."""

    target: Annotated[bytes, Size(32)]
    count: Annotated[int, Range(1, MAX_NODES)]
    want: Annotated[bytes, Size(TAG_BYTES, MAX_NODES * TAG_BYTES)]


@wire.message(tag=24)
@dataclass(frozen=True, slots=True)
class ContactList:
    """A saved routing table (written to the node's data directory)."""

    certs: Annotated[tuple[NodeCert, ...], Size(0, 20_000)]
