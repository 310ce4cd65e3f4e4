"""The network-parameters record: one place for every tunable the whole network must agree on.

Two nodes with different `network_id`s refuse each other in the handshake, so a test network
(`testnet()`: tiny puzzle, loopback endpoints allowed) can never mix with a real one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated

from anonmail import wire
from anonmail.wire import Range, Size


@wire.struct
@dataclass(frozen=True, slots=True)
class NetworkParams:
    network_id: Annotated[bytes, Size(16)]
    k: Annotated[int, Range(1, 64)] = 20  # routing bucket size and lookup result size
    alpha: Annotated[int, Range(1, 16)] = 3  # parallel requests per lookup path
    disjoint_paths: Annotated[int, Range(1, 16)] = 8  # S/Kademlia d
    replication: Annotated[int, Range(1, 64)] = 8  # r: replicas of stored data (DESIGN.md §4)
    puzzle_bits: Annotated[int, Range(0, 40)] = 16  # S/Kademlia static puzzle c1
    cert_lifetime: Annotated[int, Range(60, 10 * 365 * 86400)] = 30 * 86400
    clock_skew: Annotated[int, Range(0, 86400)] = 600  # seconds of tolerated clock disagreement
    subnet_limit: Annotated[int, Range(1, 64)] = 2  # contacts per /24 (/48) in one bucket
    failure_limit: Annotated[int, Range(1, 16)] = 3  # failed requests before a contact is dropped
    rpc_timeout_ms: Annotated[int, Range(10, 120_000)] = 2_000
    refresh_interval: Annotated[int, Range(1, 86400)] = 3600  # bucket refresh (Kademlia: 1 h)
    max_frame: Annotated[int, Range(1024, 16 << 20)] = 1 << 20
    allow_private_endpoints: bool = False  # loopback/private endpoints in NodeCerts (testnets)
    # The least proof of work an RTS (or an append to an open inbox) carries; an owner's inbox
    # policy may ask more, never less (DESIGN.md §6). 18 bits: a median ~0.1 s of one core,
    # p95 ~0.5 s at 1.3-1.4 M hashes/s (`anonmail bench pow`); 19 bits had p95 > 1 s here.
    stamp_bits: Annotated[int, Range(0, 40)] = 18

    @property
    def rpc_timeout(self) -> float:
        return self.rpc_timeout_ms / 1000.0

    def replace(self, **changes: object) -> NetworkParams:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


MAINNET = NetworkParams(network_id=b"anonmail-main-v1")


def testnet(**changes: object) -> NetworkParams:
    """Parameters for a local test network: cheap puzzle, loopback endpoints allowed."""
    base = NetworkParams(network_id=b"anonmail-test-v1", puzzle_bits=4, stamp_bits=8,
                         allow_private_endpoints=True)
    return base.replace(**changes)
