"""Contacts: verified NodeCerts with what the routing table needs precomputed, and the cache
that makes them (moved out of dht/routing.py, which re-exports both, to keep modules short).

Invariants (see dht/routing.py): a `Contact` is only ever made from a NodeCert that verified
(S/Kademlia, Baumgart & Mies 2007, §4.1: no contact from a bare id/address pair); the cache
re-checks the validity window, the one part of verification that depends on `now`, on every
use. `subnets` are the cert's diversity units (/24 IPv4, /48 IPv6); loopback endpoints are
exempt (one-machine testnets; a real network never accepts them).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from anonmail import crypto, wire
from anonmail.dht.messages import TAG_BYTES
from anonmail.errors import RemoteProtocolError
from anonmail.records.certs import CertCache, NodeCert
from anonmail.records.params import NetworkParams


def _subnets(cert: NodeCert) -> frozenset[str]:
    """The diversity units of a cert's endpoints (loopback exempt, see the module docstring)."""
    return frozenset(ep.subnet() for ep in cert.endpoints
                     if not ipaddress.ip_address(ep.host).is_loopback)


def cert_tag(cert: NodeCert) -> bytes:
    """The short tag naming this exact certificate in FIND_NODE (dht/tags.py): the first
    TAG_BYTES of H("node-cert-tag", its canonical bytes)."""
    return crypto.hash("node-cert-tag", wire.encode(cert))[:TAG_BYTES]


@dataclass(frozen=True, slots=True, eq=False)
class Contact:
    """A verified NodeCert with what routing needs precomputed. Build with `Contact.of`."""

    cert: NodeCert
    node_id: bytes
    int_id: int
    subnets: frozenset[str]
    tag: bytes  # cert_tag(cert): made once, read on every FIND_NODE answered and received

    @classmethod
    def of(cls, cert: NodeCert) -> Contact:
        nid = cert.node_id
        return cls(cert, nid, int.from_bytes(nid, "big"), _subnets(cert), cert_tag(cert))


class ContactCache:
    """Turns NodeCerts into verified `Contact`s, remembering the result.

    The first sight of a cert costs a `CertCache.verify` (signature, puzzle, endpoints); later
    sights of an equal cert cost a dict lookup plus the validity-window check, the one part of
    verification that depends on `now`. Equal NodeCerts (dataclass equality over every field)
    have equal canonical bytes, so the memo is exactly as sound as `CertCache`. Bound to one
    `NetworkParams`; shareable between simulated nodes of one network.
    """

    def __init__(self, params: NetworkParams, cert_cache: CertCache | None = None,
                 capacity: int = 200_000) -> None:
        self.params = params
        self.cert_cache = cert_cache if cert_cache is not None else CertCache()
        self.capacity = capacity
        self._skew = params.clock_skew
        self._memo: dict[NodeCert, Contact] = {}
        # The same cert object seen again (the common case in a simulation without encoding):
        # keyed by id(), which is safe because the memo's Contact keeps that object alive, and
        # holding the validity window, so a hit costs one dict probe and two comparisons
        # (it runs for every certificate of every FIND_NODE answer: issue 11).
        self._by_object: dict[int, tuple[Contact, int, int]] = {}

    def contact(self, cert: NodeCert, now: float) -> Contact:
        """The verified Contact for `cert`; raises RemoteProtocolError if it is not valid now."""
        hit = self._by_object.get(id(cert))
        if hit is not None and hit[0].cert is cert:
            if not hit[1] <= now <= hit[2]:
                raise RemoteProtocolError("node certificate not valid now")
            return hit[0]
        skew = self._skew
        found = self._memo.get(cert)
        if found is not None:
            if not cert.issued - skew <= now <= cert.expires + skew:
                raise RemoteProtocolError("node certificate not valid now")
            return found
        self.cert_cache.verify(cert, self.params, now)
        made = Contact.of(cert)
        self._memo[cert] = made
        self._by_object[id(cert)] = (made, cert.issued - skew, cert.expires + skew)
        if len(self._memo) > self.capacity:  # FIFO is enough: a re-verify is only a cost
            old = self._memo.pop(next(iter(self._memo)))
            self._by_object.pop(id(old.cert), None)
        return made
