"""A simulated storage grid for tests: a Scenario whose nodes each run a StoreService, and the
questions tests ask of it (who holds a key, which nodes are truly closest). `serving_grid`
builds one; tests/mailsim.py and tests/storesim.py wrap it in their `sim` fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from anonmail.anon.relay import RelayService
from anonmail.net.base import Peer
from anonmail.permit.gate import gated_store
from anonmail.records import ids
from anonmail.sim.scenario import Scenario, SimNode
from anonmail.store.db import StoreDb
from anonmail.store.service import StoreService

R = 8  # params.replication (the default)


@dataclass
class StoreGrid:
    s: Scenario
    svc: dict[bytes, StoreService]

    def node(self, i: int) -> SimNode:
        return self.s.nodes[i]

    def closest(self, key: bytes, n: int = R) -> list[SimNode]:
        """The true n closest live nodes."""
        live = [x for x in self.s.nodes if x.net.up]
        return sorted(live, key=lambda x: ids.distance(x.node_id, key))[:n]

    def holders(self, key: bytes) -> set[bytes]:
        """Nodes holding a live (not deleted) copy of the object under `key`."""
        out = set()
        for nid, svc in self.svc.items():
            row = svc.db.get_object(key)
            if row is not None and row.blob is not None:
                out.add(nid)
        return out


@asynccontextmanager
async def serving_grid(n: int, seed: int, trusted_cas: frozenset[bytes], *, permits: bool = True
                       ) -> AsyncIterator[tuple[Scenario, dict[bytes, StoreService]]]:
    """`n` nodes (sim/scenario.py, oracle-filled routing tables, every message encoded and
    decoded), each serving a StoreService on an in-memory database and the relay role
    (anon/relay.py); the databases are closed on exit. `permits`: behind the permit gate, as
    every real node (False: the bare store, for tests of the storage primitives themselves)."""
    s = Scenario(n, seed=seed, encode=True)
    await s.build("oracle")
    make = gated_store if permits else StoreService
    svc = {x.node_id: make(x.net, x.dht, x.key, s.params, s.clock, s.rng.fork(f"store-{i}"),
                           StoreDb(":memory:"), trusted_cas=trusted_cas)
           for i, x in enumerate(s.nodes)}
    for i, x in enumerate(s.nodes):
        x.services.add(svc[x.node_id])
        x.services.add(RelayService(x.net, x.dht, x.key, s.params, s.clock,
                                    s.rng.fork(f"relay-{i}")))
    try:
        yield s, svc
    finally:
        for service in svc.values():
            service.db.close()


def record_requests(node: SimNode, *kinds: type) -> list[Any]:
    """Every request of one of `kinds` that `node` receives, in order (its handler wrapped)."""
    seen: list[Any] = []
    handler = node.services.handle

    async def h(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, kinds):
            seen.append(msg)
        return await handler(peer, msg)

    node.net.set_handler(h)
    return seen
