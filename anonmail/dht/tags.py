"""Short tags naming exact NodeCerts, so that FIND_NODE answers do not resend what the asker has.

A FIND_NODE answer used to carry a full certificate for every contact it named, though a lookup
meets the same few nodes near its key again and again: ~95% of the bytes of a send were
certificates the asker already held (issue 11). Now the asker lists, in `FindNode.have`, the tags
of the verified certificates it holds nearest the target (its routing table's and what this
lookup has learned, at most `MAX_HAVE`, and 3 per node the lookup asks for); the answer carries
a full certificate only for contacts whose tag is not listed, and just the tag for the others
(`Nodes.known`).

A tag is the first `TAG_BYTES` of H("node-cert-tag", the certificate's canonical bytes): it names
one version of one certificate, so a renewed certificate (new endpoints, new expiry) is sent in
full to an asker holding only the old one.

Invariants (S/Kademlia §4.1, signed contacts only):
* a tag resolves only to a certificate the asker verified and listed itself in that request; an
  answer naming any other tag is the answerer's fault. So nothing unsigned ever enters a lookup
  or a routing table, and an answer of tags costs the asker a dict lookup per tag;
* a collision between a listed tag and the tag of a contact the answerer meant (about
  listed x named / 2^32 per answer) makes the asker take its own listed, verified contact in its
  place: a node it knew, near the key. A hostile answerer gains nothing it could not get by
  naming that contact outright;
* what `have` tells the answerer: which certificates the asker holds near a key the request
  already names. Lookups made for an anonymous sender run at the anonymizer (anon/), so they
  list the anonymizer's contacts, never the sender's.

A contact's tag is made once, with the contact (`Contact.tag`, dht/contacts.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from anonmail.dht.contacts import Contact, cert_tag
from anonmail.dht.messages import MAX_HAVE, TAG_BYTES
from anonmail.errors import RemoteProtocolError
from anonmail.records.certs import NodeCert

__all__ = ["HAVE_PER_RESULT", "MAX_HAVE", "TAG_BYTES", "Known", "answer_parts", "split", "tag_of"]

# A lookup for k nodes lists at most HAVE_PER_RESULT * k tags (and never more than MAX_HAVE):
# answers name k contacts near the key, and a longer list costs more request bytes than the
# certificates it spares. At k = 8, 1,000 nodes: 2k 2.27x the floor, 3k 2.27x, 4k 2.30x, 8k
# 2.36x (`anonmail bench mail --sim-nodes 1000`); at k = 20, 64 was the best (docs/performance.md).
HAVE_PER_RESULT = 3

tag_of = cert_tag  # the tag of one exact certificate (a Contact carries its own: Contact.tag)


def split(packed: bytes) -> list[bytes]:
    """The tags in a `have` or `known` field; raises RemoteProtocolError if it is not whole
    tags."""
    if len(packed) % TAG_BYTES:
        raise RemoteProtocolError(f"{len(packed)} bytes is not a whole number of tags")
    return [packed[i:i + TAG_BYTES] for i in range(0, len(packed), TAG_BYTES)]


class Known:
    """The verified contacts one lookup holds, nearest its key first, and the `have` list they
    make (module docstring)."""

    __slots__ = ("_by_tag", "_have", "_limit", "_listed", "_near", "_t")

    def __init__(self, key: bytes, contacts: Iterable[Contact] = (), limit: int = MAX_HAVE
                 ) -> None:
        self._t = int.from_bytes(key, "big")
        self._limit = max(0, min(MAX_HAVE, limit))
        self._near: list[tuple[int, bytes]] = []  # (distance to the key, tag), nearest first
        self._by_tag: dict[bytes, Contact] = {}
        self._have: bytes | None = b""
        self._listed: tuple[bytes, frozenset[bytes]] = (b"", frozenset())  # have, its tags
        self.add(contacts)

    def add(self, contacts: Iterable[Contact]) -> None:
        by_tag, t = self._by_tag, self._t
        new = []
        for c in contacts:
            tag = c.tag
            if tag not in by_tag:
                by_tag[tag] = c
                new.append((c.int_id ^ t, tag))
        if not new:
            return
        near = self._near
        limit = self._limit
        if len(near) >= limit:
            if not near:
                return
            new = [e for e in new if e < near[-1]]  # farther than all we list: not listed
            if not new:
                return
        near.extend(new)
        near.sort()
        del near[limit:]
        self._have = None

    def have(self) -> bytes:
        """The packed tags of the (at most MAX_HAVE) contacts nearest the key."""
        if self._have is None:
            self._have = b"".join(tag for _, tag in self._near)
        return self._have

    def resolve(self, known: bytes, listed: bytes) -> list[Contact]:
        """The contacts an answer named by tag; every tag must be one of `listed` (the `have`
        sent with that request), else RemoteProtocolError."""
        out: list[Contact] = []
        if not known:
            return out
        if self._listed[0] != listed:  # parsed once per list, not per answer
            self._listed = (listed, frozenset(split(listed)))
        allowed = self._listed[1]
        for tag in split(known):
            if tag not in allowed:
                raise RemoteProtocolError("an answer named a certificate tag we did not list")
            out.append(self._by_tag[tag])
        return out


def answer_parts(near: Iterable[Contact], have: bytes) -> tuple[tuple[NodeCert, ...], bytes]:
    """The server's side: (full certificates, packed tags) naming `near`, a tag for each contact
    whose tag the asker listed in `have`."""
    if not have:
        return tuple(c.cert for c in near), b""
    listed = _parsed(have)
    certs: list[NodeCert] = []
    tags: list[bytes] = []
    for c in near:
        tag = c.tag
        if tag in listed:
            tags.append(tag)
        else:
            certs.append(c.cert)
    return tuple(certs), b"".join(tags)


_PARSED: OrderedDict[bytes, frozenset[bytes]] = OrderedDict()
MAX_PARSED = 1024  # `have` lists remembered parsed: a lookup sends the same one again and again


def _parsed(have: bytes) -> frozenset[bytes]:
    hit = _PARSED.get(have)
    if hit is None:
        hit = frozenset(split(have))  # raises on a malformed list before anything is kept
        if len(_PARSED) >= MAX_PARSED:
            _PARSED.popitem(last=False)
        _PARSED[have] = hit
    return hit
