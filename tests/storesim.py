"""The storage-service simulation for tests/test_store_service.py and test_store_client.py.

The `sim` fixture is a few hundred nodes (tests/storegrid.py: oracle-filled routing tables, every
message encoded and decoded), each running a StoreService on an in-memory database that trusts
one CA, under trio's MockClock with autojump. `Sim` adds what these tests ask of it: who holds an
inbox's entries, republish on every live node, the node farthest from a key. A test module uses
the fixture by importing it: `from storesim import sim_fixture as sim_fixture`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from storegrid import StoreGrid, serving_grid

from anonmail import crypto
from anonmail.records import ids
from anonmail.records.certs import CertificateAuthority
from anonmail.sim.scenario import SimNode

N = 300
DAY = 86400
CA = CertificateAuthority(crypto.SigningKey(b"\x33" * 32))
TIMEOUT = 20 * DAY  # virtual seconds: a deadlock jumps here and fails


@dataclass
class Sim(StoreGrid):

    def inbox_holders(self, inbox: bytes, now: float) -> dict[bytes, int]:
        counts = {nid: svc.db.inbox_usage(inbox, now)[0] for nid, svc in self.svc.items()}
        return {nid: c for nid, c in counts.items() if c}

    async def republish_all(self, *, force: bool = False,
                            skip: frozenset[bytes] = frozenset()) -> None:
        for x in self.s.nodes:
            if x.net.up and x.node_id not in skip:
                await self.svc[x.node_id].republish(force=force)

    def far_node(self, key: bytes) -> SimNode:
        return sorted(self.s.nodes, key=lambda x: ids.distance(x.node_id, key))[-1]


@pytest.fixture(name="sim")
async def sim_fixture() -> AsyncIterator[Sim]:
    """Tests take `autojump_clock` themselves: pytest-trio picks the clock from the test's own
    arguments only."""
    # The storage primitives themselves: no permit gate (tests/test_permit_*.py test that).
    async with serving_grid(N, 7, frozenset({CA.public}), permits=False) as (s, svc):
        yield Sim(s, svc)
