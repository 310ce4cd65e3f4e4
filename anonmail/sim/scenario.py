"""Build a simulated DHT of N nodes on one `SimWorld`, reproducibly from a seed.

Two ways to get a network into shape:
* "join": nodes join one after another through real `DhtNode.bootstrap` (introduce, own-id
  lookup, bucket refresh; Kademlia §2.3) via a random earlier node. Faithful, and the test that
  lookups work on tables the protocol itself built; costs O(N log N) lookups (up to ~2,000 nodes);
* "oracle": every routing table is filled directly as a converged Kademlia table would be: for
  each bucket, up to k nodes drawn at random from all nodes sharing exactly that prefix length
  (found by bisecting a sorted id list), subject to the subnet limit. Fast enough for 10,000
  nodes. Certificates are verified once, when made (they are our own).

Also here: crashing a fraction of nodes without telling anyone, and the oracle answer (the true
k closest live nodes to a key, computed over all nodes) that lookups are judged against.
Must run inside trio (the nodes read the virtual clock), normally under
`trio.testing.MockClock(autojump_threshold=0)`.
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from anonmail import crypto
from anonmail.clock import TrioClock
from anonmail.dht.dht_node import DhtNode
from anonmail.dht.lookup import LookupResult
from anonmail.dht.routing import Contact, ContactCache
from anonmail.errors import LocalError
from anonmail.net.services import ServiceRegistry
from anonmail.records import ids
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.ids import ID_BITS
from anonmail.records.params import NetworkParams, testnet
from anonmail.rng import SeededRng
from anonmail.sim.network import SimNetwork, SimWorld, sim_address

SIM_PORT = 7000
Bootstrap = Literal["join", "oracle"]


def sim_params(**changes: object) -> NetworkParams:
    """Testnet parameters with a 2-bit puzzle: key generation stays cheap for 10,000 nodes,
    while a node id that fails the puzzle is still a thing that can happen (and is rejected)."""
    base: dict[str, object] = {"puzzle_bits": 2}
    base.update(changes)
    return testnet(**base)


def make_key(rng: SeededRng, params: NetworkParams) -> crypto.SigningKey:
    """A signing key whose node id solves the static puzzle (S/Kademlia §4.1)."""
    while True:
        key = crypto.SigningKey.generate(rng)
        if ids.puzzle_bits(ids.node_id(key.public)) >= params.puzzle_bits:
            return key


@dataclass(eq=False)
class SimNode:
    key: crypto.SigningKey
    contact: Contact
    net: SimNetwork
    dht: DhtNode
    services: ServiceRegistry  # the node's one way in: the DHT, and what else it serves

    @property
    def cert(self) -> NodeCert:
        return self.contact.cert

    @property
    def node_id(self) -> bytes:
        return self.contact.node_id


@dataclass(frozen=True, eq=False)
class LookupRun:
    node: SimNode
    key: bytes
    result: LookupResult
    exact: bool  # the result is the oracle's k closest live nodes, in order


class IdIndex:
    """Contacts sorted by id, answering "the n XOR-closest to a key" without a full sort.

    The ids sharing at least L leading bits with the key form one contiguous run of the sorted
    list, and each of them is closer than any id outside it. So: find the longest L whose run
    still holds n ids, sort just that run by distance."""

    def __init__(self, contacts: Iterable[Contact]) -> None:
        self.contacts = sorted(contacts, key=lambda c: c.int_id)
        self.ints = [c.int_id for c in self.contacts]

    def __len__(self) -> int:
        return len(self.ints)

    def run(self, key_int: int, prefix: int) -> tuple[int, int]:
        """Index range of the ids sharing the first `prefix` bits of `key_int`."""
        shift = ID_BITS - prefix
        lo_val = (key_int >> shift) << shift
        return (bisect.bisect_left(self.ints, lo_val),
                bisect.bisect_left(self.ints, lo_val + (1 << shift)))

    def closest(self, key: bytes, n: int) -> list[Contact]:
        t = int.from_bytes(key, "big")
        lo_len, hi_len = 0, ID_BITS  # invariant: run(lo_len) holds >= n ids
        while lo_len < hi_len:
            mid = (lo_len + hi_len + 1) // 2
            a, b = self.run(t, mid)
            if b - a >= n:
                lo_len = mid
            else:
                hi_len = mid - 1
        a, b = self.run(t, lo_len)
        return sorted(self.contacts[a:b], key=lambda c: c.int_id ^ t)[:n]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building 10,000 nodes allocates millions of
    long-lived objects and no garbage, and the collections this triggers (full ones over the
    whole growing heap) were a fifth of the build's time (issue 11). Only for synchronous
    code: no other task runs meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _random_order(rng: SeededRng, lo: int, hi: int) -> Iterator[int]:
    """lo..hi-1 in random order, lazily (a partial Fisher-Yates over a sparse swap map)."""
    swapped: dict[int, int] = {}
    get = swapped.get
    randbelow = rng.randbelow
    m = hi - lo
    for j in range(m):
        r = j + randbelow(m - j)
        pick = get(r, r)
        swapped[r] = get(j, j)
        yield lo + pick


class Scenario:
    """N simulated DHT nodes on one SimWorld, built by `build` (see the module docstring).

    `nodes` in creation order, `by_id` by node id; `world` for faults and adversaries;
    `contacts` is the ContactCache every node shares (one verification per cert per run)."""

    def __init__(self, n: int, *, seed: int = 0, params: NetworkParams | None = None,
                 encode: bool = False, loss: float = 0.0,
                 latency: tuple[float, float] = (0.010, 0.150)) -> None:
        if n < 1:
            raise LocalError("a scenario needs at least one node")
        self.n = n
        self.params = params if params is not None else sim_params()
        self.rng = SeededRng(seed)
        self.world = SimWorld(self.params, self.rng.fork("world"), latency=latency, loss=loss,
                              encode=encode)
        self.clock = TrioClock()
        self.contacts = ContactCache(self.params, CertCache(capacity=4 * n + 1000),
                                     capacity=4 * n + 1000)
        self.nodes: list[SimNode] = []
        self.by_id: dict[bytes, SimNode] = {}
        self._index: IdIndex | None = None
        self._live: IdIndex | None = None

    # -- building ------------------------------------------------------------------------------

    def _make_nodes(self) -> None:
        key_rng, addr_rng, node_rng = (self.rng.fork(x) for x in ("keys", "addresses", "nodes"))
        now = self.clock.now()
        taken: set[str] = set()
        for i in range(self.n):
            key = make_key(key_rng, self.params)
            ep = Endpoint(sim_address(addr_rng, taken), SIM_PORT)
            cert = NodeCert.issue(key, (ep,), now, self.params)
            net = self.world.attach(cert)
            dht = DhtNode(net, key, self.params, self.clock, node_rng.fork(str(i)), self.contacts)
            services = dht.registry()
            net.set_handler(services.handle)
            node = SimNode(key, self.contacts.contact(cert, now), net, dht, services)
            self.nodes.append(node)
            self.by_id[node.node_id] = node
        self._index = IdIndex(node.contact for node in self.nodes)

    async def build(self, bootstrap: Bootstrap = "oracle", *, join_paths: int | None = 1,
                    progress: Callable[[int], None] | None = None) -> None:
        """Make the nodes and bring the network into shape. `join_paths`: the d of the
        bootstrap lookups in "join" mode (None: params.disjoint_paths; 1 keeps joins cheap)."""
        if self.nodes:
            raise LocalError("already built")
        if bootstrap not in ("oracle", "join"):
            raise LocalError(f"unknown bootstrap mode {bootstrap!r}")
        with _gc_paused():
            self._make_nodes()
            if bootstrap == "oracle":
                self._fill_oracle()
        if bootstrap == "join":
            await self._join(join_paths, progress)

    async def _join(self, paths: int | None, progress: Callable[[int], None] | None) -> None:
        pick = self.rng.fork("introducers")
        for i, node in enumerate(self.nodes[1:], start=1):
            introducer = self.nodes[pick.randbelow(i)]
            await node.dht.bootstrap(introducer.cert.endpoints, paths=paths)
            if progress is not None:
                progress(i)

    def _fill_oracle(self) -> None:
        index = self.index
        rng = self.rng.fork("oracle-tables")
        now = self.clock.now()
        pick = index.contacts.__getitem__
        for node in self.nodes:
            table = node.dht.table
            own = node.contact.int_id
            for i in range(ID_BITS):
                # Ids sharing exactly i bits with ours: our first i bits, then the other bit i.
                flipped = own ^ (1 << (ID_BITS - 1 - i))
                lo, hi = index.run(flipped, i + 1)
                # `fill` takes candidates until the bucket holds k, one random draw each (the
                # draws, and so the tables, are those of offering them to `add` one by one).
                table.fill(i, map(pick, _random_order(rng, lo, hi)), now)
                a, b = index.run(own, i + 1)
                if b - a <= 1:
                    break  # nobody else shares i+1 bits with us: deeper buckets stay empty
            # A node that built its table by talking to these contacts holds their certificates
            # (dht/tags.py): FIND_NODE answers naming them need not send them.
            remember = node.dht.tags.add
            for c in table:
                remember(c)

    # -- faults and answers ----------------------------------------------------------------------

    @property
    def index(self) -> IdIndex:
        if self._index is None:
            raise LocalError("build the scenario first")
        return self._index

    def live(self) -> list[SimNode]:
        return [node for node in self.nodes if node.net.up]

    def crash(self, fraction: float, *, keep: Iterable[SimNode] = ()) -> list[SimNode]:
        """Crash round(fraction * N) random nodes unannounced (none of `keep`)."""
        spared = {node.node_id for node in keep}
        pool = [node for node in self.live() if node.node_id not in spared]
        rng = self.rng.fork(f"crash-{len(self.nodes) - len(pool)}")
        count = min(len(pool), round(fraction * len(self.nodes)))
        order = _random_order(rng, 0, len(pool))
        victims = [pool[next(order)] for _ in range(count)]
        self.crash_ids(node.node_id for node in victims)
        return victims

    def crash_ids(self, node_ids: Iterable[bytes]) -> None:
        """Crash these nodes unannounced."""
        for nid in node_ids:
            self.world.crash(nid)
        self._live = None

    def restart_all(self) -> None:
        for node in self.nodes:
            self.world.restart(node.node_id)
        self._live = None

    def oracle(self, key: bytes, n: int) -> list[Contact]:
        """The true n closest live nodes to `key`, over all nodes, closest first."""
        if self._live is None:
            self._live = IdIndex(node.contact for node in self.live())
        return self._live.closest(key, n)

    async def run_lookups(self, count: int, rng: SeededRng, *, k: int | None = None,
                          paths: int | None = None,
                          among: Sequence[SimNode] | None = None) -> list[LookupRun]:
        """`count` lookups of random keys from random live nodes (of `among`), one after the
        other, each judged against the oracle."""
        k = self.params.k if k is None else k
        pool = self.live() if among is None else among
        runs = []
        for _ in range(count):
            node = self.random_node(rng, pool)
            key = self.random_key(rng)
            result = await node.dht.lookup(key, k, paths=paths)
            truth = tuple(c.node_id for c in self.oracle(key, k))
            runs.append(LookupRun(node, key, result, result.node_ids == truth))
        return runs

    def random_key(self, rng: SeededRng) -> bytes:
        return rng.bytes(ids.ID_BYTES)

    def random_node(self, rng: SeededRng, among: Sequence[SimNode] | None = None) -> SimNode:
        pool = self.live() if among is None else among
        return pool[rng.randbelow(len(pool))]
