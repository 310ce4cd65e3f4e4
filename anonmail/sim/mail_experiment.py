"""Mail delivery reliability under hostile storage nodes and churn (issue 3; DESIGN.md §4, §5,
§9; seed 003 §6.1 reliability, seed 002 §2.3-2.4 republish and repair).

The experiment: N storage nodes (sim/scenario.py, oracle-filled tables) each run an honest
`StoreService` on an in-memory SQLite database, or, for a fraction of them, a
`StorageDropper` (sim/storage_adversary.py: valid receipts, nothing kept). Storage nodes run
their republish loop (`StoreService.serve`: every `republish_interval`, jittered) so data
follows the current r closest. Churn: every `churn_step`, `churn * N * step / 1 h` random
storage nodes crash unannounced and never come back, and as many new nodes join, each through a
random live node (`DhtNode.bootstrap`), with a fresh StoreService (a dropper with probability
f), so N stays constant. A set of user agents (`mail.user_agent.MailAgent`, the real send /
check / retrieve code) run on client connections to the DHT (their own keys, no endpoints: they
never store, and churn does not take them); M messages with random bodies go from random agents
to random other agents at times spread over `send_hours`; each recipient checks `delay` hours
after the send returned: the check saves and ACKs every new header, then retrieves the letters
that are due, so each body is held for its letter's whole delay (a retrieval that fails is
retried at the recipient's later checks). A message is *delivered* when its recipient retrieved
exactly the bytes sent; a send the agent reported as failed is retried (a fresh message) up to
`send_attempts` times; after the last scheduled check every agent still owed a message checks
once more and retrieves everything.

Costs and what is left out, to keep 1,000 nodes x 1,000 messages within minutes: messages are
passed as objects (`encode=False`) unless asked; the nodes' republish lookups and the joins'
bootstrap lookups use one path (`republish_paths`; droppers route honestly, so disjoint paths
buy nothing against them), while the agents look up over the network's d = 8 as in production;
nodes do not run `DhtNode.maintain` (bucket refresh), so routing tables learn of joins only from
traffic and forget the dead by failure counts; `run_parallel` spreads the messages and agents
over independent networks of N nodes, one process each (`anonmail sim mail --jobs`).

Measured: delivery rate, messages lost (and whether the header or the body went missing),
virtual latency send -> retrieved, messages and bytes on the wire per delivered mail (split
into the agents' own traffic and the nodes' upkeep: republish, repair, joins). Bytes: with
`encode=True` the world encodes every message (exact); either way a `WireMeter` policy encodes
one message in `sample_every` per (category, type) and scales by the counts, which is what the
default run (encode=False, to stay within minutes) reports as "estimated".

Predicted, beside it (seed 003 §6.1, formula (2): p_disaster = (1 - p_a)^n with n = r):

    p_a(t) = (1 - f) * s(t)           a replica placed t hours ago is still there when read:
                                      its node is honest (1 - f) and has not left;
    s(t) = (1 - c D)^(t / D)          survival under churn: every D hours (churn_step) c N D
                                      random live nodes leave, so one node survives a step
                                      with probability 1 - c D; s(t) ~ exp(-c t) (0.905 for
                                      c = 0.1/h, t = 1 h, D = 10 min)
    no repair:  P(key kept)  = 1 - (1 - p_a(H))^r        H = holding time, send -> read
    repair every T hours: each interval is a fresh trial, since a live holder re-places the
    data on the current r closest: P(key kept) = prod over the windows w of H of
    (1 - (1 - p_a(w))^r), windows of T, except that a body's first window is 2T (a replica
    skips republishing an object placed within the last interval, store/service.py);
    a mail needs its body and its inbox entry: P(delivered) = P(body kept) * P(entry kept),
    averaged over the messages' holding times.

Invariants: everything is reproducible from `seed` (SeededRng forks, MockClock, hash-based
latency; trio's scheduler tie-breaking RNG is seeded too, see `_seed_scheduler`); agents use the
mail layer unchanged; adversaries are handlers; runs inside `trio.run` under
`MockClock(autojump_threshold=0)` (`run` does that).
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio
import trio.testing

from anonmail import wire
from anonmail.certs import Endpoint, NodeCert
from anonmail.dht.lookup import LookupResult
from anonmail.dht.node import DhtNode
from anonmail.errors import UserError
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.send import SendFailed
from anonmail.mail.user_agent import MailAgent
from anonmail.net.base import Handler, Peer
from anonmail.net.sim import SimNetwork, sim_address
from anonmail.rng import SeededRng
from anonmail.sim.scenario import SIM_PORT, Scenario, SimNode, make_key, sim_params
from anonmail.sim.storage_adversary import DropStats, StorageDropper
from anonmail.store.db import StoreDb
from anonmail.store.service import StoreService, StoreStats

HOUR = 3600.0


@dataclass(frozen=True)
class MailConfig:
    nodes: int = 1_000
    messages: int = 1_000
    agents: int = 50
    replication: int = 8  # r = params.replication
    droppers: float = 0.2  # fraction f of storage nodes that drop what they store
    lying: bool = False  # droppers also claim, in Probe, to hold everything
    churn: float = 0.1  # fraction c of N that leaves (and joins) per virtual hour
    churn_step: float = 600.0  # virtual seconds between churn events
    send_hours: float = 6.0  # sends spread uniformly over this many virtual hours
    delay_hours: tuple[float, float] = (1.0, 6.0)  # send -> recipient's check, uniform
    size: tuple[int, int] = (2_000, 20_000)  # body text bytes, uniform
    republish: bool = True
    republish_interval: float = HOUR
    republish_paths: int = 1  # disjoint paths of republish lookups (agents use params')
    send_attempts: int = 3
    retry_pause: float = 600.0
    encode: bool = False  # encode every message (exact bytes; ~3x the CPU)
    sample_every: int = 32  # WireMeter: encode one message in this many per (category, type)
    seed: int = 1


# -- the model ------------------------------------------------------------------------------------


def survival(c: float, hours: float, step: float = 600.0) -> float:
    """s(t): a node is still there `hours` later, when c N step/1 h random live nodes leave
    every `step` seconds."""
    d = step / HOUR
    return float(max(0.0, 1.0 - c * d) ** (hours / d))


def availability(f: float, c: float, hours: float, step: float = 600.0) -> float:
    """p_a: a replica placed `hours` ago is available (honest node that has not left)."""
    return (1.0 - f) * survival(c, hours, step)


def p_disaster(p_a: float, r: int) -> float:
    """Seed 003 §6.1 (2): every one of the r replicas is unavailable."""
    return float((1.0 - p_a) ** r)


def _kept(pa: Callable[[float], float], r: int, held: float, window: float,
          first: float) -> float:
    """P(a key survives `held` seconds with repair every `window`, the first window `first`)."""
    p, left, w = 1.0, held, first
    while left > 1e-9:
        span = min(w, left)
        p *= 1.0 - p_disaster(pa(span / HOUR), r)
        left -= span
        w = window
    return p


@dataclass(frozen=True)
class Prediction:
    holding_hours: float  # mean holding time H
    p_a_hold: float  # p_a(H): no repair
    p_disaster_hold: float
    no_repair: float  # mean P(delivered) without repair
    interval_hours: float  # T
    p_a_interval: float  # p_a(T)
    p_disaster_interval: float
    with_repair: float  # mean P(delivered) with repair every T


def predict(f: float, c: float, r: int, holding: Sequence[float], interval: float = HOUR,
            step: float = 600.0) -> Prediction:
    """The module docstring's formulas, averaged over the holding times (seconds); `step`
    is the churn step (seconds)."""
    if not holding:
        holding = [0.0]

    def pa(hours: float) -> float:
        return availability(f, c, hours, step)

    no_rep = [(1.0 - p_disaster(pa(h / HOUR), r)) ** 2 for h in holding]
    rep = [_kept(pa, r, h, interval, 2 * interval) * _kept(pa, r, h, interval, interval)
           for h in holding]
    mean_h = statistics.fmean(holding) / HOUR
    pa_h, pa_t = pa(mean_h), pa(interval / HOUR)
    return Prediction(mean_h, pa_h, p_disaster(pa_h, r), statistics.fmean(no_rep),
                      interval / HOUR, pa_t, p_disaster(pa_t, r), statistics.fmean(rep))


# -- storage nodes, droppers and churn ------------------------------------------------------------


class FixedPaths:
    """A `store.client.Lookup` that looks up over a fixed number of disjoint paths."""

    def __init__(self, dht: DhtNode, paths: int) -> None:
        self.dht = dht
        self.paths = paths

    async def lookup(self, key: bytes, k: int | None = None) -> LookupResult:
        return await self.dht.lookup(key, k, paths=self.paths)


def route(store: Handler, dht: DhtNode) -> Handler:
    """A node's handler: store requests to `store` (honest or not), the rest to the DHT."""

    async def handle(peer: Peer, msg: Any) -> Any:
        if StoreService.handles(msg):
            return await store(peer, msg)
        return await dht.handle(peer, msg)

    return handle


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

    def __init__(self, scenario: Scenario, config: MailConfig, nursery: trio.Nursery,
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
        service = StoreService(node.net, lookup, node.key, s.params, s.clock,
                               self.rng.fork(f"store-{label}"), StoreDb(":memory:"),
                               republish_interval=cfg.republish_interval)
        drop = StorageDropper(service, lie_in_probe=cfg.lying) if dropper else None
        node.net.set_handler(route(service.handle if drop is None else drop.handle, node.dht))
        sn = StorageNode(node, service, drop, trio.CancelScope(), trio.current_time())
        self.all[node.node_id] = sn
        self.live.append(sn)
        return sn

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
        node = SimNode(key, s.contacts.contact(cert, now), net, dht)
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
            for name, value in vars(sn.service.stats).items():
                setattr(total, name, getattr(total, name) + value)
        return total

    def drop_stats(self) -> DropStats:
        total = DropStats()
        for sn in self.all.values():
            if sn.dropper is not None:
                for name, value in vars(sn.dropper.stats).items():
                    setattr(total, name, getattr(total, name) + value)
        return total

    def close(self) -> None:
        for sn in self.all.values():
            sn.service.db.close()


# -- the wire -------------------------------------------------------------------------------------


class WireMeter:
    """A world policy that lets everything through and counts it: messages per (category,
    type), and the encoded size of one in `sample_every` of each (category, type). Category
    "mail": to or from an agent; "upkeep": between storage nodes (republish, repair, joins)."""

    def __init__(self, agents: set[bytes], sample_every: int = 8) -> None:
        self.agents = agents
        self.sample_every = max(1, sample_every)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.sampled: Counter[tuple[str, str]] = Counter()
        self.sampled_bytes: Counter[tuple[str, str]] = Counter()

    def __call__(self, src: SimNetwork, dst: SimNetwork, msg: Any) -> bool:
        cat = "mail" if src.node_id in self.agents or dst.node_id in self.agents else "upkeep"
        kind = (cat, type(msg).__name__)
        n = self.counts[kind]
        self.counts[kind] = n + 1
        if msg is not None and n % self.sample_every == 0:
            self.sampled[kind] += 1
            self.sampled_bytes[kind] += len(wire.encode(msg))
        return True

    def messages(self, cat: str) -> int:
        return sum(n for (c, _), n in self.counts.items() if c == cat)

    def bytes(self, cat: str | None = None) -> float:
        """Estimated bytes of a category (all: None): per (category, type), count x mean
        sampled size."""
        return sum(self.bytes_by_type(cat).values())

    def bytes_by_type(self, cat: str | None = None) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, n in self.counts.items():
            if (cat is None or k[0] == cat) and self.sampled[k]:
                out[k[1]] = out.get(k[1], 0.0) + n * self.sampled_bytes[k] / self.sampled[k]
        return out


# -- agents and letters ---------------------------------------------------------------------------


@dataclass(eq=False)
class Seat:
    """One user: a MailAgent on its own client connection, used one operation at a time."""

    agent: MailAgent
    lock: trio.Lock = field(default_factory=trio.Lock)


@dataclass(eq=False)
class Letter:
    index: int
    sender: int  # seat index
    recipient: int
    send_at: float  # virtual seconds after the start of the workload
    delay: float  # seconds from the send's return to the recipient's check
    size: int  # body text bytes
    message_id: str = ""
    data: bytes = b""  # the exact RFC 5322 bytes sent
    attempts: int = 0
    sent: float | None = None  # when the successful send returned
    header_seen: bool = False
    retrieved: float | None = None
    intact: bool = False

    @property
    def latency(self) -> float | None:
        return None if self.retrieved is None else self.retrieved - self.send_at


def _text(rng: SeededRng, size: int) -> str:
    raw = rng.bytes((size + 1) // 2).hex()[:size]
    return "\n".join(raw[i:i + 76] for i in range(0, len(raw), 76)) + "\n"


def plan(config: MailConfig, rng: SeededRng) -> list[Letter]:
    out = []
    lo, hi = config.delay_hours
    for i in range(config.messages):
        sender = rng.randbelow(config.agents)
        recipient = (sender + 1 + rng.randbelow(config.agents - 1)) % config.agents
        out.append(Letter(i, sender, recipient, rng.random() * config.send_hours * HOUR,
                          (lo + (hi - lo) * rng.random()) * HOUR,
                          config.size[0] + rng.randbelow(config.size[1] - config.size[0] + 1)))
    return sorted(out, key=lambda x: x.send_at)


@dataclass
class MailReport:
    config: MailConfig
    letters: list[Letter]
    prediction: Prediction
    meter: WireMeter
    store: StoreStats
    drops: DropStats
    joined: int
    left: int
    errors: Counter[str]
    virtual_seconds: float
    wall_build: float = 0.0
    wall_run: float = 0.0
    exact_bytes: int | None = None  # world.stats.wire_bytes over the workload (encode=True)
    world_requests: int = 0  # requests sent over the workload (incl. to dead nodes)
    swept: int = 0  # delivered by the final check
    shards: int = 1  # independent networks the letters were spread over (run_parallel)

    @property
    def delivered(self) -> int:
        return sum(1 for x in self.letters if x.intact)

    @property
    def send_failed(self) -> int:
        return sum(1 for x in self.letters if x.sent is None)

    @property
    def lost(self) -> list[Letter]:
        """Sent (the agent said so) and never retrieved intact."""
        return [x for x in self.letters if x.sent is not None and not x.intact]

    @property
    def rate(self) -> float:
        return self.delivered / len(self.letters) if self.letters else 0.0

    def latencies(self) -> list[float]:
        return sorted(x.latency for x in self.letters if x.intact and x.latency is not None)

    @property
    def mean_size(self) -> float:
        sizes = [len(x.data) for x in self.letters if x.data]
        return statistics.fmean(sizes) if sizes else 0.0


async def _make_seats(s: Scenario, net: StorageNetwork, config: MailConfig, tmp: Path,
                      rng: SeededRng) -> list[Seat]:
    seats = []
    now = s.clock.now()
    for i in range(config.agents):
        key = make_key(rng, s.params)
        cnet = s.world.attach(NodeCert.issue(key, (), now, s.params))
        dht = DhtNode(cnet, key, s.params, s.clock, rng.fork(f"agent-dht-{i}"), s.contacts)
        ident = AddressIdentity.create_anon(f"user{i}", rng.fork(f"id-{i}"), now)
        agent = MailAgent(ident, cnet, dht, tmp / f"user{i}", s.params, s.clock,
                          rng.fork(f"agent-{i}"))
        seats.append(Seat(agent))
        introducer = net.pick(rng, net.honest_live())
        await dht.bootstrap(introducer.node.cert.endpoints, paths=1)
        await agent.publish_cert()
    return seats


class Workload:
    """The letters in flight: sends, checks and retrievals, timed from `t0`."""

    def __init__(self, config: MailConfig, seats: Sequence[Seat], letters: Sequence[Letter],
                 texts: Sequence[str]) -> None:
        self.config = config
        self.seats = seats
        self.letters = letters
        self.texts = texts
        self.by_id: dict[str, Letter] = {}  # every attempt's message id
        self.data: dict[str, bytes] = {}  # the exact bytes each attempt sent
        self.errors: Counter[str] = Counter()
        self.t0 = trio.current_time()
        self.swept = 0

    def now(self) -> float:
        return trio.current_time() - self.t0

    async def run(self) -> None:
        async with trio.open_nursery() as work:
            for letter, text in zip(self.letters, self.texts, strict=True):
                work.start_soon(self.send, letter, text)
        # Whoever is still owed a message checks once more.
        for i in sorted({x.recipient for x in self.letters if x.sent is not None
                         and not x.intact}):
            self.swept += await self.collect(self.seats[i], everything=True)

    async def send(self, letter: Letter, text: str) -> None:
        cfg = self.config
        seat, rcpt = self.seats[letter.sender], self.seats[letter.recipient]
        await trio.sleep_until(self.t0 + letter.send_at)
        for attempt in range(cfg.send_attempts):
            if attempt:
                await trio.sleep(cfg.retry_pause)
            letter.attempts += 1
            async with seat.lock:
                msg = seat.agent.compose([rcpt.agent.address], subject=f"letter {letter.index}",
                                         body=text)
                letter.message_id, letter.data = msg.message_id, msg.data
                self.by_id[msg.message_id] = letter
                self.data[msg.message_id] = msg.data
                try:
                    await seat.agent.send_composed(msg)
                except SendFailed:
                    self.errors["send failed (retried)"] += 1
                    continue
            letter.sent = self.now()
            break
        else:
            self.errors["send failed (gave up)"] += 1
            return
        await trio.sleep(letter.delay)
        await self.collect(rcpt)

    def due(self, mid: str) -> bool:
        letter = self.by_id.get(mid)
        return (letter is None or letter.sent is None
                or self.now() >= letter.sent + letter.delay - 1e-6)

    async def collect(self, seat: Seat, *, everything: bool = False) -> int:
        """Check (every new header is saved and ACKed), then retrieve the letters that are due
        (all, with `everything`): a body stays on the network for its letter's whole delay.
        Returns how many letters were delivered."""
        got = 0
        async with seat.lock:
            agent = seat.agent
            try:
                report = await agent.check()
            except UserError:
                self.errors["check failed"] += 1
            else:
                for notice in report.new:
                    letter = self.by_id.get(notice.header.message_id)
                    if letter is not None:
                        letter.header_seen = True
            for notice in agent.pending():
                mid = notice.header.message_id
                if not (everything or self.due(mid)):
                    continue
                try:
                    out = await agent.retrieve(mid)
                except UserError:
                    self.errors["retrieve failed"] += 1
                    continue
                letter = self.by_id.get(mid)
                if letter is None:
                    self.errors["unexpected message"] += 1
                    continue
                if letter.intact:
                    continue  # an earlier, failed attempt of a letter already delivered
                letter.retrieved = self.now()
                letter.intact = out.data == self.data[mid]
                got += letter.intact
                if not letter.intact:
                    self.errors["retrieved bytes differ"] += 1
        return got


def _holding(letters: Sequence[Letter]) -> list[float]:
    """How long each letter's body was held: send -> retrieval, or for a lost letter until
    its check."""
    return [x.delay if x.retrieved is None or x.sent is None else x.retrieved - x.sent
            for x in letters]


def _seed_scheduler(seed: int) -> None:
    """Trio breaks ties between tasks that become runnable together (a nursery's new tasks,
    requests started in parallel) with its own module-level RNG. Seeding it makes a run
    reproducible from `seed` alone. A private attribute: if it ever moves, runs stay valid,
    only less exactly reproducible."""
    core = getattr(getattr(trio, "_core", None), "_run", None)
    r = getattr(core, "_r", None)
    if isinstance(r, random.Random):
        r.seed(seed)


async def run_async(config: MailConfig, tmp: Path,
                    progress: Callable[[str], None] | None = None) -> MailReport:
    """The whole experiment (module docstring); agents keep their mail under `tmp`."""
    if config.agents < 2 or config.nodes < config.replication + 2 or config.messages < 1:
        raise UserError("need at least 2 agents, r + 2 nodes and 1 message")
    _seed_scheduler(config.seed)
    say = progress if progress is not None else (lambda _: None)
    wall0 = time.perf_counter()
    s = Scenario(config.nodes, seed=config.seed, encode=config.encode,
                 params=sim_params(replication=config.replication))
    await s.build("oracle")
    rng = s.rng.fork("mail")
    async with trio.open_nursery() as services:
        net = StorageNetwork(s, config, services, rng.fork("storage"))
        try:
            net.populate()
            seats = await _make_seats(s, net, config, tmp, rng.fork("agents"))
            say(f"built {config.nodes} nodes and {config.agents} agents in "
                f"{time.perf_counter() - wall0:.1f} s")
            wall1 = time.perf_counter()
            meter = WireMeter({st.agent.net.local_cert.node_id for st in seats},
                              config.sample_every)
            s.world.add_policy(meter)
            bytes0, requests0 = s.world.stats.wire_bytes, s.world.stats.requests
            letters = plan(config, rng.fork("letters"))
            text_rng = rng.fork("texts")
            work = Workload(config, seats, letters, [_text(text_rng, x.size) for x in letters])
            async with trio.open_nursery() as churn:
                if config.churn > 0:
                    churn.start_soon(net.churn)
                await work.run()
                churn.cancel_scope.cancel()
            report = MailReport(
                config, letters,
                predict(config.droppers, config.churn, config.replication, _holding(letters),
                        config.republish_interval, config.churn_step),
                meter, net.store_stats(), net.drop_stats(), net.joined, net.left, work.errors,
                work.now(), wall1 - wall0, time.perf_counter() - wall1,
                s.world.stats.wire_bytes - bytes0 if config.encode else None,
                s.world.stats.requests - requests0, work.swept)
        finally:
            services.cancel_scope.cancel()
    net.close()
    return report


def run(config: MailConfig, progress: Callable[[str], None] | None = None,
        tmp: Path | None = None) -> MailReport:
    """`run_async` in its own trio run under MockClock; agents' mail in a temporary directory
    (in memory, /dev/shm, where there is one)."""

    # A bound on virtual time: a deadlock jumps to it (MockClock) and fails loudly.
    bound = (config.send_hours + config.delay_hours[1]) * HOUR * 4 + 86400

    async def main(where: Path) -> MailReport:
        with trio.fail_after(bound):
            return await run_async(config, where, progress)

    clock = trio.testing.MockClock(autojump_threshold=0)
    if tmp is not None:
        return trio.run(main, tmp, clock=clock)
    shm = Path("/dev/shm")  # noqa: S108 -- a private TemporaryDirectory inside it
    base = str(shm) if shm.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="anonmail-sim-", dir=base) as where:
        return trio.run(main, Path(where), clock=clock)


def shards(config: MailConfig, jobs: int) -> list[MailConfig]:
    """Split a run into `jobs` independent networks of `config.nodes` nodes each, sharing out
    the messages and agents; shard j of seed s uses seed 1000 s + j + 1. Messages are lost
    independently of each other, so the delivery rate over the shards' messages estimates the
    same probability as one network carrying them all (each node carries less load)."""
    jobs = min(jobs, config.agents // 2, config.messages)  # each: 2 agents, 1 message
    if jobs <= 1:
        return [config]
    return [replace(config, messages=config.messages // jobs + (j < config.messages % jobs),
                    agents=config.agents // jobs + (j < config.agents % jobs),
                    seed=1000 * config.seed + j + 1) for j in range(jobs)]


def merge(config: MailConfig, parts: Sequence[MailReport]) -> MailReport:
    """One report over the shards' reports."""
    if len(parts) == 1:
        return parts[0]
    meter = WireMeter(set(), config.sample_every)
    store, drops = StoreStats(), DropStats()
    errors: Counter[str] = Counter()
    for p in parts:
        for table in ("counts", "sampled", "sampled_bytes"):
            getattr(meter, table).update(getattr(p.meter, table))
        for total, part in ((store, p.store), (drops, p.drops)):
            for name, value in vars(part).items():
                setattr(total, name, getattr(total, name) + value)
        errors.update(p.errors)
    letters = [x for p in parts for x in p.letters]
    exact = [p.exact_bytes for p in parts]
    return MailReport(
        config, letters,
        predict(config.droppers, config.churn, config.replication, _holding(letters),
                config.republish_interval, config.churn_step),
        meter, store, drops, sum(p.joined for p in parts), sum(p.left for p in parts), errors,
        max(p.virtual_seconds for p in parts), max(p.wall_build for p in parts),
        max(p.wall_run for p in parts),
        None if None in exact else sum(x or 0 for x in exact),
        sum(p.world_requests for p in parts), sum(p.swept for p in parts), len(parts))


def run_parallel(config: MailConfig, jobs: int,
                 progress: Callable[[str], None] | None = None) -> MailReport:
    """`run` over `shards(config, jobs)`, one process each (CPU-bound: one core per job)."""
    parts = shards(config, jobs)
    if len(parts) == 1:
        return run(config, progress)
    say = progress if progress is not None else (lambda _: None)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(parts), mp_context=ctx) as pool:
        futures = [pool.submit(run, part) for part in parts]
        done = []
        for i, future in enumerate(futures):
            done.append(future.result())
            say(f"shard {i + 1}/{len(parts)}: {done[-1].delivered}/{len(done[-1].letters)} "
                f"delivered")
    return merge(config, done)


# -- the table ------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _size(n: float) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def format_report(rep: MailReport) -> str:
    cfg, pr = rep.config, rep.prediction
    n = len(rep.letters)
    lost = rep.lost
    no_header = sum(1 for x in lost if not x.header_seen)
    lat = [x / HOUR for x in rep.latencies()]
    kind = "lying in Probe" if cfg.lying else "plain"
    rep_line = (f"republish every {cfg.republish_interval / HOUR:g} h (lookups over "
                f"{cfg.republish_paths} path{'s' if cfg.republish_paths > 1 else ''})"
                if cfg.republish else "NO republish")
    where = (f"{cfg.nodes} nodes" if rep.shards == 1 else
             f"{rep.shards} independent networks of {cfg.nodes} nodes (messages and agents "
             f"shared out)")
    lines = [
        f"anonmail sim mail: {where}, {cfg.agents} agents, {n} messages of "
        f"{_size(cfg.size[0])}-{_size(cfg.size[1])} text, r={cfg.replication}, seed {cfg.seed}",
        f"droppers {cfg.droppers:.0%} ({kind}); churn {cfg.churn:.0%} of N per hour "
        f"({rep.left} left, {rep.joined} joined); {rep_line}",
        f"sends over {cfg.send_hours:g} h, checks {cfg.delay_hours[0]:g}-{cfg.delay_hours[1]:g} h "
        f"after; virtual time {rep.virtual_seconds / HOUR:.1f} h",
        "",
        f"{'':44}{'measured':>14}{'predicted':>12}",
        f"{'delivered intact':44}{rep.delivered:>7}/{n:<6}",
        f"{'delivery rate':44}{_pct(rep.rate):>14}{_pct(pr.with_repair):>12}"
        if cfg.republish else
        f"{'delivery rate':44}{_pct(rep.rate):>14}{_pct(pr.no_repair):>12}",
        f"{'  lost silently (header / body missing)':44}{len(lost):>7} "
        f"({no_header} / {len(lost) - no_header})",
        f"{'  send failed, sender told':44}{rep.send_failed:>7}",
        f"{'  delivered by the final check':44}{rep.swept:>7}",
        "",
        "p_a(t) = (1-f) s(t), s(t) = (1-cD)^(t/D) ~ exp(-ct), p_disaster = (1-p_a)^r "
        "(seed 003 §6.1)",
        f"  f={cfg.droppers:g}, c={cfg.churn:g}/h, D={cfg.churn_step / 60:g} min, "
        f"r={cfg.replication}",
        f"  with repair, T={pr.interval_hours:g} h: p_a(T)={pr.p_a_interval:.3f}  "
        f"p_disaster={pr.p_disaster_interval:.2e}/key/interval  delivery {_pct(pr.with_repair)}",
        f"  no repair, mean H={pr.holding_hours:.1f} h: p_a(H)={pr.p_a_hold:.3f}  "
        f"p_disaster={pr.p_disaster_hold:.2e}/key  delivery {_pct(pr.no_repair)}",
        "",
    ]
    if lat:
        lines.append(f"latency send -> retrieved (virtual h): mean {statistics.fmean(lat):.2f}, "
                     f"median {statistics.median(lat):.2f}, p99 "
                     f"{lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]:.2f}, "
                     f"max {lat[-1]:.2f}")
    d = max(rep.delivered, 1)
    m = rep.meter
    mail_b, up_b = m.bytes("mail"), m.bytes("upkeep")
    how = ("exact" if rep.exact_bytes is not None
           else f"estimated from 1 in {m.sample_every} encoded")
    lines += [
        f"wire per delivered mail ({how}):",
        f"  {'agents (send, check, retrieve)':34}{m.messages('mail') / d:>9.0f} msgs "
        f"{_size(mail_b / d):>10}",
        f"  {'nodes (republish, repair, joins)':34}{m.messages('upkeep') / d:>9.0f} msgs "
        f"{_size(up_b / d):>10}",
        f"  {'floor: message size x r':34}{'':>14}{_size(rep.mean_size * cfg.replication):>10}"
        f"  ({_size(rep.mean_size)} x {cfg.replication})",
    ]
    if rep.exact_bytes is not None:
        lines.append(f"  {'all bytes, counted by the world':34}{'':>14}"
                     f"{_size(rep.exact_bytes / d):>10}")
    by_type = sorted(m.bytes_by_type().items(), key=lambda kv: -kv[1])
    total = sum(v for _, v in by_type) or 1.0
    lines.append("  largest shares: " + ", ".join(f"{name} {v / total:.0%}"
                                                  for name, v in by_type[:4]))
    st, dr = rep.store, rep.drops
    lines += [
        f"repair: {st.pushed_objects} objects and {st.pushed_entries} entries pushed, "
        f"{st.handed_over} handovers; droppers signed {dr.receipts} receipts, dropped "
        f"{dr.objects} objects and {dr.entries} entries, lied {dr.lies} times",
    ]
    if rep.errors:
        lines.append("agent errors: " + ", ".join(f"{k} {v}" for k, v in sorted(
            rep.errors.items())))
    return "\n".join(lines)


# -- bench ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchResult:
    nodes: int
    messages: int
    delivered: int
    wall_seconds: float  # the workload only (not building the network)
    virtual_seconds: float
    wire_bytes: int  # every byte on the simulated wire during the workload (encoded)
    mail_bytes: float  # of which to or from the agents
    wire_messages: int  # requests and replies during the workload
    mean_size: float  # bytes of one RFC 5322 message
    replication: int

    @property
    def rate(self) -> float:
        """Deliveries per wall-clock second."""
        return self.delivered / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def bytes_per_delivered(self) -> float:
        return self.wire_bytes / max(self.delivered, 1)

    @property
    def floor(self) -> float:
        """The least any design moves: the message stored on r replicas."""
        return self.mean_size * self.replication


def bench_sim(*, nodes: int = 200, messages: int = 100, agents: int = 20, size: int = 5_000,
              replication: int = 8, seed: int = 1) -> BenchResult:
    """The simulated half of `anonmail bench mail`: honest nodes, no churn, every message
    encoded; sends over 1 virtual hour, each read 0.1-0.5 h later. Call outside trio (it runs
    its own, under MockClock)."""
    config = MailConfig(nodes=nodes, messages=messages, agents=agents, replication=replication,
                        droppers=0.0, churn=0.0, send_hours=1.0, delay_hours=(0.1, 0.5),
                        size=(size, size), encode=True, seed=seed)
    rep = run(config)
    return BenchResult(nodes, messages, rep.delivered, rep.wall_run, rep.virtual_seconds,
                       rep.exact_bytes or 0, rep.meter.bytes("mail"),
                       rep.meter.messages("mail") + rep.meter.messages("upkeep"), rep.mean_size,
                       replication)


def format_bench(b: BenchResult) -> str:
    return "\n".join([
        f"simulated: {b.nodes} nodes, {b.messages} messages of {_size(b.mean_size)}, "
        f"r={b.replication}, every message encoded",
        f"  deliveries per second (wall clock)   {b.rate:>12.1f}   "
        f"({b.delivered} in {b.wall_seconds:.1f} s)",
        f"  bytes on the wire per delivery       {_size(b.bytes_per_delivered):>12}   "
        f"({b.bytes_per_delivered / max(b.floor, 1):.1f}x the floor)",
        f"  of which the agents' own             {_size(b.mail_bytes / max(b.delivered, 1)):>12}",
        f"  floor: message size x r              {_size(b.floor):>12}",
        f"  messages on the wire per delivery    "
        f"{b.wire_messages / max(b.delivered, 1):>12.0f}",
    ])


