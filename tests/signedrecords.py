"""Signed records for tests/test_records_*.py, at a fixed `now` on a test network (6-bit puzzle).

Keys whose node ids solve the static puzzle (found once from a seeded stream, cached), a NodeCert
with public IPv4 and IPv6 endpoints, a CA and an address key with which to issue a CA AddressCert
and a self-certifying .anon one, and a Receipt for an APPEND.
"""

from __future__ import annotations

from functools import cache

from anonmail import crypto
from anonmail.records import ids
from anonmail.records.certs import (
    AddressCert,
    CertificateAuthority,
    Endpoint,
    NodeCert,
    self_certify,
)
from anonmail.records.params import NetworkParams
from anonmail.records.params import testnet as make_testnet
from anonmail.records.receipts import Receipt, StoreOp
from anonmail.rng import SeededRng

NOW = 1_800_000_000.0
TEST = make_testnet(puzzle_bits=6)
PUBLIC = TEST.replace(allow_private_endpoints=False)


@cache
def puzzle_key(bits: int, seed: int = 0) -> crypto.SigningKey:
    """The first key (from a seeded stream) whose node id solves a `bits`-bit static puzzle."""
    rng = SeededRng(f"puzzle-{bits}-{seed}".encode())
    while True:
        key = crypto.SigningKey.generate(rng)
        if ids.puzzle_bits(ids.node_id(key.public)) >= bits:
            return key


def node_cert(params: NetworkParams = TEST, endpoints: tuple[Endpoint, ...] | None = None,
              key: crypto.SigningKey | None = None) -> NodeCert:
    key = key or puzzle_key(params.puzzle_bits)
    eps = (Endpoint("203.0.113.7", 7000), Endpoint("2a00:1450:4001::1", 7001)) \
        if endpoints is None else endpoints
    return NodeCert.issue(key, eps, NOW, params)


CA = CertificateAuthority(crypto.SigningKey(b"\xca" * 32))
TRUSTED = frozenset({CA.public})
ADDRESS_KEY = crypto.SigningKey(b"\xad" * 32)
SEAL = crypto.KeyPair.generate(SeededRng(b"seal"))


def ca_cert() -> AddressCert:
    return CA.issue("Alice@Example.COM", ADDRESS_KEY.public, SEAL.public, NOW)


def anon_cert() -> AddressCert:
    return self_certify("bob", ADDRESS_KEY, SEAL.public, NOW)


STORE_KEY = ids.inbox_key("alice@example.com")
DIGEST = crypto.hash("blob", b"hello")


def receipt() -> Receipt:
    return Receipt.issue(puzzle_key(0), StoreOp.APPEND, STORE_KEY, DIGEST, int(NOW) + 3600, NOW)
