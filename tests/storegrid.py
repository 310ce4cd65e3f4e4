"""A simulated storage grid for tests: a Scenario whose nodes each run a StoreService, and the
questions tests ask of it (who holds a key, which nodes are truly closest)."""

from __future__ import annotations

from dataclasses import dataclass

from anonmail.records import ids
from anonmail.sim.scenario import Scenario, SimNode
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
