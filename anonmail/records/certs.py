"""Signed certificates: NodeCert (who a node is and where to reach it), AddressCert (which keys
speak for an e-mail address), and the CA that issues address certificates.

Invariants:
* a NodeCert is self-signed; its node id is H("node", key) and is never sent separately, so an id
  that does not match its key cannot exist (DESIGN.md §2). `verify` also checks the static puzzle,
  the validity window and that every endpoint is an IP literal (no DNS: a peer cannot make us
  resolve names) and, on a real network, a public unicast address (a peer cannot point us at our
  own loopback or LAN services);
* an AddressCert for `name@domain` is signed by a CA the network trusts; one for
  `name@<fingerprint>.anon` is signed by its own key and the fingerprint binds the key to the name;
* signatures cover `wire.signing_bytes` (canonical CBOR of every field but the signature) under a
  per-record domain tag.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

from anonmail import crypto, wire
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.records import ids
from anonmail.records.params import NetworkParams
from anonmail.wire import Range, Size

NODE_CERT_DOMAIN = "node-cert"
ADDRESS_CERT_DOMAIN = "address-cert"
MAX_ENDPOINTS = 4


@wire.struct
@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP literal and TCP port where a node accepts connections."""

    host: Annotated[str, Size(2, 45)]
    port: Annotated[int, Range(1, 65535)]

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse `host:port` or `[v6]:port`; raises UserError with the accepted form."""
        # [0-9], not \d: \d also matches other scripts' digits, and int() of a very long digit
        # string raises ValueError (Python's int-conversion limit), not a UserError.
        m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:([0-9]{1,5})|([0-9.]+):([0-9]{1,5})",
                         text.strip())
        if not m:
            raise UserError(
                f"bad endpoint {text!r}: write IPv4 as 1.2.3.4:7000, IPv6 as [::1]:7000")
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4))
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise UserError(f"bad endpoint {text!r}: {host!r} is not an IP address") from None
        if not 1 <= port <= 65535:
            raise UserError(f"bad endpoint {text!r}: port must be 1-65535")
        return cls(host, port)

    def subnet(self) -> str:
        """The /24 (IPv4) or /48 (IPv6) this endpoint is in: the unit of diversity limits."""
        ip = ipaddress.ip_address(self.host)
        prefix = 24 if ip.version == 4 else 48
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _check_endpoint(ep: Endpoint, allow_private: bool) -> None:
    try:
        ip = ipaddress.ip_address(ep.host)
    except ValueError:
        raise RemoteProtocolError("endpoint host is not an IP literal") from None
    if str(ip) != ep.host:
        raise RemoteProtocolError("endpoint host not in canonical form")
    if ip.is_unspecified or ip.is_multicast:
        raise RemoteProtocolError("endpoint is unspecified or multicast")
    if not allow_private and not ip.is_global:
        raise RemoteProtocolError("endpoint is not a public address")


@wire.cached  # encoded once, however many FIND_NODE answers carry it (issue 11)
@wire.message(tag=1)
@dataclass(frozen=True, slots=True, weakref_slot=True)  # weak: wire's cache holds it so
class NodeCert:
    public_key: Annotated[bytes, Size(32)]
    endpoints: Annotated[tuple[Endpoint, ...], Size(0, MAX_ENDPOINTS)]  # () = client only
    issued: Annotated[int, wire.U64]
    expires: Annotated[int, wire.U64]
    seq: Annotated[int, wire.U64]  # a higher seq supersedes (new endpoints)
    signature: Annotated[bytes, Size(64)]

    @property
    def node_id(self) -> ids.NodeId:
        return ids.node_id(self.public_key)

    @classmethod
    def issue(cls, key: crypto.SigningKey, endpoints: tuple[Endpoint, ...], now: float,
              params: NetworkParams, seq: int | None = None) -> NodeCert:
        issued = int(now)
        unsigned = cls(key.public, endpoints, issued, issued + params.cert_lifetime,
                       issued if seq is None else seq, bytes(64))
        return unsigned.with_signature(key.sign(NODE_CERT_DOMAIN, wire.signing_bytes(unsigned)))

    def with_signature(self, signature: bytes) -> NodeCert:
        return NodeCert(self.public_key, self.endpoints, self.issued, self.expires, self.seq,
                        signature)

    def verify(self, params: NetworkParams, now: float) -> None:
        """Raise RemoteProtocolError unless this certificate is valid on this network now."""
        crypto.verify(self.public_key, NODE_CERT_DOMAIN, wire.signing_bytes(self), self.signature)
        self.check_unsigned(params, now)

    def check_unsigned(self, params: NetworkParams, now: float) -> None:
        """The checks other than the signature (run on every use, even for cached certs)."""
        if ids.puzzle_bits(self.node_id) < params.puzzle_bits:
            raise RemoteProtocolError("node id does not solve the static puzzle")
        if not self.issued - params.clock_skew <= now <= self.expires + params.clock_skew:
            raise RemoteProtocolError("node certificate not valid now")
        if self.expires - self.issued > params.cert_lifetime:
            raise RemoteProtocolError("node certificate lifetime too long")
        for ep in self.endpoints:
            _check_endpoint(ep, params.allow_private_endpoints)

    @property
    def is_server(self) -> bool:
        """A node that accepts connections (has endpoints) rather than a client-only agent."""
        return bool(self.endpoints)


class CertCache:
    """Remembers which NodeCert encodings have verified, so a cert seen again costs a hash, not
    an Ed25519 verification. Bounded (LRU). Sharing one between simulated nodes is sound:
    verification is a pure function of the bytes."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self.capacity = capacity
        self.verifications = 0  # signatures checked (misses)
        self.hits = 0  # certificates seen again: no signature checked

    def verify(self, cert: NodeCert, params: NetworkParams, now: float) -> None:
        digest = crypto.hash("cert-cache", wire.encode(cert))
        if digest in self._seen:
            self.hits += 1
            self._seen.move_to_end(digest)
            cert.check_unsigned(params, now)
            return
        self.verifications += 1
        cert.verify(params, now)
        self._seen[digest] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)


# ---------------------------------------------------------------------------------------------
# Address certificates

_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
ANON_SUFFIX = ".anon"
FINGERPRINT_BYTES = 20


def normalize_address(address: str) -> str:
    """Validate an RFC 5322 dot-atom addr-spec and lower-case its domain."""
    address = address.strip()
    if len(address) > 254 or address.count("@") != 1:
        raise UserError(f"bad address {address!r}: write it as name@domain")
    local, domain = address.split("@")
    if not (len(local) <= 64 and _LOCAL_PART.fullmatch(local) and _DOMAIN.fullmatch(domain)):
        raise UserError(f"bad address {address!r}: write it as name@domain")
    return f"{local}@{domain.lower()}"


def anon_domain(public_key: bytes) -> str:
    fp = crypto.hash("anon-address", public_key)[:FINGERPRINT_BYTES]
    return base64.b32encode(fp).decode().lower().rstrip("=") + ANON_SUFFIX


def anon_address(name: str, public_key: bytes) -> str:
    """A self-certifying address: the domain is the fingerprint of the address key."""
    return normalize_address(f"{name}@{anon_domain(public_key)}")


def is_anon_address(address: str) -> bool:
    return address.endswith(ANON_SUFFIX)


def fingerprint_words(public_key: bytes) -> str:
    """A fingerprint a person can read aloud: 8 groups of 4 base32 characters."""
    fp = base64.b32encode(crypto.hash("fingerprint", public_key)[:20]).decode()
    return " ".join(fp[i:i + 4] for i in range(0, 32, 4))


@wire.message(tag=2)
@dataclass(frozen=True, slots=True)
class AddressCert:
    address: Annotated[str, Size(3, 254)]
    sign_key: Annotated[bytes, Size(32)]  # Ed25519: owner proofs, permits, non-repudiation
    seal_key: Annotated[bytes, Size(32)]  # X25519: what senders seal headers to
    issued: Annotated[int, wire.U64]
    expires: Annotated[int, wire.U64]
    issuer: Annotated[bytes, Size(32)]  # CA key, or sign_key itself for a .anon address
    signature: Annotated[bytes, Size(64)]

    @property
    def key(self) -> ids.Key:
        return ids.cert_key(self.address)

    def verify(self, trusted_cas: frozenset[bytes], now: float, skew: int = 600) -> None:
        """Raise RemoteProtocolError unless the certificate is authentic and valid now."""
        if normalize_address_or_none(self.address) != self.address:
            raise RemoteProtocolError("address certificate names a malformed address")
        if is_anon_address(self.address):
            if self.issuer != self.sign_key:
                raise RemoteProtocolError(".anon certificates are self-signed")
            if self.address.split("@")[1] != anon_domain(self.sign_key):
                raise RemoteProtocolError(".anon address does not match its key")
        elif self.issuer not in trusted_cas:
            raise RemoteProtocolError("address certificate from an untrusted CA")
        if not self.issued - skew <= now <= self.expires + skew:
            raise RemoteProtocolError("address certificate expired or not yet valid")
        crypto.verify(self.issuer, ADDRESS_CERT_DOMAIN, wire.signing_bytes(self), self.signature)


def normalize_address_or_none(address: str) -> str | None:
    try:
        return normalize_address(address)
    except UserError:
        return None


def self_certify(name: str, sign: crypto.SigningKey, seal_public: bytes, now: float,
                 lifetime: int = 365 * 86400) -> AddressCert:
    """Issue the certificate of a self-certifying `name@<fingerprint>.anon` address."""
    address = anon_address(name, sign.public)
    unsigned = AddressCert(address, sign.public, seal_public, int(now), int(now) + lifetime,
                           sign.public, bytes(64))
    return _signed(unsigned, sign)


def _signed(unsigned: AddressCert, signer: crypto.SigningKey) -> AddressCert:
    sig = signer.sign(ADDRESS_CERT_DOMAIN, wire.signing_bytes(unsigned))
    return AddressCert(unsigned.address, unsigned.sign_key, unsigned.seal_key, unsigned.issued,
                       unsigned.expires, unsigned.issuer, sig)


@dataclass
class CertificateAuthority:
    """A CA that binds `name@domain` addresses to keys (seeds 000, 002). The network trusts it by
    listing its public key; the e-mail one-time-code check before issuing is a later issue."""

    key: crypto.SigningKey
    lifetime: int = 365 * 86400

    @property
    def public(self) -> bytes:
        return self.key.public

    def issue(self, address: str, sign_key: bytes, seal_key: bytes, now: float) -> AddressCert:
        address = normalize_address(address)
        if is_anon_address(address):
            raise UserError(".anon addresses are self-certifying; a CA does not issue them")
        unsigned = AddressCert(address, sign_key, seal_key, int(now), int(now) + self.lifetime,
                               self.public, bytes(64))
        return _signed(unsigned, self.key)
