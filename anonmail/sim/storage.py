"""Storage nodes on a simulated DHT: honest stores, droppers and churn (DESIGN.md §4, §9;
seed 002 §2.3-2.4 republish and repair; seed 003 §6.1 reliability).

`StorageNetwork` turns the nodes of a built `Scenario` into storage nodes: each gets an honest
`StoreService` on an in-memory SQLite database, or, for exactly round(f N) of them, a
`StorageDropper` around one (sim/storage_adversary.py: valid receipts, nothing kept), added to
the node's `ServiceRegistry` beside its DHT. Storage nodes run their republish loop
(`StoreService.serve`: every `republish_interval`, jittered) so data follows the current r
closest; their republish lookups go over `republish_paths` disjoint paths (`FixedPaths`).

Churn (`StorageNetwork.churn`): every `churn_step`, `churn * nodes * step / 1 h` random live
storage nodes crash unannounced and never come back, and as many new nodes join, each through a
random live, bootstrapped node (`DhtNode.bootstrap` over one path), with a fresh StoreService (a
dropper with probability f), so N stays constant. Nodes do not run `DhtNode.maintain` (bucket
refresh): routing tables learn of joins only from traffic and forget the dead by failure counts.

Invariants: every random draw comes from the `SeededRng` given (forked per purpose, drawn in a
fixed order), so a network and its churn replay exactly from the seed; a node that left never
answers again and its database goes with it; adversaries are handlers, never monkey-patches.
Runs inside trio (virtual time under `MockClock`); call `close()` after the nursery is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import trio

from anonmail.anon.relay import RelayService
from anonmail.dht.dht_node import DhtNode
from anonmail.dht.lookup import LookupResult
from anonmail.permit.gate import gated_store
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.rng import SeededRng
from anonmail.sim.anon_adversary import RECEIPT_DEEDS, HostileRelay, HostileStats, Misdeed
from anonmail.sim.metrics import add_counts
from anonmail.sim.network import sim_address
from anonmail.sim.scenario import SIM_PORT, Scenario, SimNode, make_key
from anonmail.sim.storage_adversary import DropStats, StorageDropper
from anonmail.store.db import StoreDb
from anonmail.store.service import StoreService, StoreStats

HOUR = 3600.0


@dataclass(frozen=True)
class StorageConfig:
    """What the storage nodes do; `nodes` is N, the size churn is a fraction of."""

    nodes: int
    droppers: float = 0.0  # fraction f of storage nodes that drop what they store
    lying: bool = False  # droppers also claim, in Probe, to hold everything
    churn: float = 0.0  # fraction c of N that leaves (and joins) per virtual hour
    churn_step: float = 600.0  # virtual seconds between churn events
    republish: bool = True
    republish_interval: float = HOUR
    republish_paths: int = 1  # disjoint paths of the nodes' republish lookups
    relays: bool = False  # every node also runs the relay role (anon/relay.py)
    hostile_relays: bool = False  # droppers are also hostile go-betweens (sim/anon_adversary)


class FixedPaths:
    """A `store.client.Lookup` that looks up over a fixed number of disjoint paths."""

    def __init__(self, dht: DhtNode, paths: int) -> None:
        self.dht = dht
        self.paths = paths

    async def lookup(self, key: bytes, k: int | None = None) -> LookupResult:
        return await self.dht.lookup(key, k, paths=self.paths)


@dataclass(eq=False)
class StorageNode:
    node: SimNode
    service: StoreService
    dropper: StorageDropper | None
    scope: trio.CancelScope
    joined: float  # virtual time
    left: float | None = None
    ready: bool = True  # bootstrapped: may introduce others

    @property
    def node_id(self) -> bytes:
        return self.node.node_id


class StorageNetwork:
    """The storage nodes of a scenario, their services, and churn (module docstring)."""

    def __init__(self, scenario: Scenario, config: StorageConfig, nursery: trio.Nursery,
                 rng: SeededRng) -> None:
        self.s = scenario
        self.config = config
        self.nursery = nursery
        self.rng = rng
        self.key_rng, self.addr_rng = rng.fork("join-keys"), rng.fork("join-addresses")
        self.all: dict[bytes, StorageNode] = {}
        self.live: list[StorageNode] = []
        self.taken = {ep.host for node in scenario.nodes for ep in node.cert.endpoints}
        self.joined = 0
        self.left = 0
        self.hostile_relays = 0
        self.hostile_stats = HostileStats()

    def populate(self) -> None:
        """Services for the scenario's nodes; exactly round(f * N) of them droppers."""
        nodes = list(self.s.nodes)
        pick = self.rng.fork("droppers")
        for i in range(len(nodes) - 1, 0, -1):
            j = pick.randbelow(i + 1)
            nodes[i], nodes[j] = nodes[j], nodes[i]
        hostile = {n.node_id for n in nodes[:round(self.config.droppers * len(nodes))]}
        for i, node in enumerate(self.s.nodes):
            sn = self._install(node, node.node_id in hostile, f"node-{i}")
            self._start(sn)

    def _install(self, node: SimNode, dropper: bool, label: str) -> StorageNode:
        cfg, s = self.config, self.s
        lookup = FixedPaths(node.dht, cfg.republish_paths)
        service = gated_store(node.net, lookup, node.key, s.params, s.clock,
                              self.rng.fork(f"store-{label}"), StoreDb(":memory:"),
                              republish_interval=cfg.republish_interval)
        drop = StorageDropper(service, lie_in_probe=cfg.lying) if dropper else None
        node.services.add(service if drop is None else drop)
        if cfg.relays:
            node.services.add(self._relay(node, dropper, label))
        sn = StorageNode(node, service, drop, trio.CancelScope(), trio.current_time())
        self.all[node.node_id] = sn
        self.live.append(sn)
        return sn

    def _relay(self, node: SimNode, hostile: bool, label: str) -> RelayService:
        """The node's relay role: honest, or (a dropper with `hostile_relays`) a coalition
        member that lies, refuses to relay outside the coalition and tampers with receipts,
        each tamperer one way (FORGE, ALTER, WITHHOLD, SUBSTITUTE in turn)."""
        s, rng = self.s, self.rng.fork(f"relay-{label}")
        if not (hostile and self.config.hostile_relays):
            return RelayService(node.net, node.dht, node.key, s.params, s.clock, rng,
                                cert_cache=node.dht.contacts_cache.cert_cache)
        deeds = Misdeed.LIE | Misdeed.REFUSE | RECEIPT_DEEDS[self.hostile_relays %
                                                            len(RECEIPT_DEEDS)]
        self.hostile_relays += 1
        return HostileRelay(node.net, node.dht, node.key, s.params, s.clock, rng, deeds=deeds,
                            coalition=self.coalition, stats=self.hostile_stats,
                            cert_cache=node.dht.contacts_cache.cert_cache)

    def coalition(self) -> list[NodeCert]:
        return [sn.node.cert for sn in self.live if sn.dropper is not None]

    def _start(self, sn: StorageNode) -> None:
        if not self.config.republish:
            return

        async def serve() -> None:
            with sn.scope:
                await sn.service.serve()

        self.nursery.start_soon(serve)

    def honest_live(self) -> list[StorageNode]:
        return [sn for sn in self.live if sn.dropper is None and sn.ready]

    def pick(self, rng: SeededRng, among: Sequence[StorageNode] | None = None) -> StorageNode:
        pool = self.live if among is None else among
        return pool[rng.randbelow(len(pool))]

    def leave(self, sn: StorageNode) -> None:
        """Crash unannounced, for good: its loops stop, its data is gone with it."""
        self.s.crash_ids((sn.node_id,))
        sn.scope.cancel()
        sn.left = trio.current_time()
        self.live.remove(sn)
        self.left += 1

    def prepare_join(self) -> tuple[StorageNode, Endpoint]:
        """Make a new node (all random draws here, in order) and its introducer."""
        s, now = self.s, self.s.clock.now()
        key = make_key(self.key_rng, s.params)
        cert = NodeCert.issue(key, (Endpoint(sim_address(self.addr_rng, self.taken),
                                             SIM_PORT),), now, s.params)
        net = s.world.attach(cert)
        label = f"join-{self.joined}"
        dht = DhtNode(net, key, s.params, s.clock, self.rng.fork(label), s.contacts)
        services = dht.registry()
        net.set_handler(services.handle)
        node = SimNode(key, s.contacts.contact(cert, now), net, dht, services)
        introducer = self.pick(self.rng, [sn for sn in self.live if sn.ready])
        dropper = self.rng.random() < self.config.droppers
        s.nodes.append(node)
        s.by_id[node.node_id] = node
        self.joined += 1
        sn = self._install(node, dropper, label)
        sn.ready = False
        return sn, introducer.node.cert.endpoints[0]

    async def join(self, sn: StorageNode, introducer: Endpoint) -> None:
        with sn.scope:  # it may leave again while joining
            await sn.node.dht.bootstrap((introducer,), paths=1)
        if sn.left is None:
            sn.ready = True
            sn.scope = trio.CancelScope()
            self._start(sn)

    async def churn(self) -> None:
        """Every churn_step: some leave, as many join (module docstring). Runs until cancelled."""
        cfg = self.config
        pick = self.rng.fork("churn")
        owed = 0.0
        while True:
            await trio.sleep(cfg.churn_step)
            owed += cfg.churn * cfg.nodes * cfg.churn_step / HOUR
            count = min(int(owed), len(self.live) - 1)
            owed -= count
            for _ in range(count):
                self.leave(self.pick(pick))
            for _ in range(count):
                self.nursery.start_soon(self.join, *self.prepare_join())

    def store_stats(self) -> StoreStats:
        total = StoreStats()
        for sn in self.all.values():
            add_counts(total, sn.service.stats)
        return total

    def drop_stats(self) -> DropStats:
        total = DropStats()
        for sn in self.all.values():
            if sn.dropper is not None:
                add_counts(total, sn.dropper.stats)
        return total

    def close(self) -> None:
        for sn in self.all.values():
            sn.service.db.close()
