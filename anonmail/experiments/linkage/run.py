"""Running the linkage experiment (model.py): one simulated network per mode.

`run_mode` builds the scenario (oracle-filled tables) and the storage network (sim/storage.py:
honest, permit-gated stores that republish, every node also a relay, no churn), puts an
`AppendLog` in front of every node's store for APPEND (`ServiceRegistry.add(replace=True)`: a
handler, never a monkey-patch; the store and the gate run unchanged), makes the agents on their
own client connections (the owner and the S senders: `MailAgent`s, through go-betweens in the
anonymous mode, as `anonmail sim mail` does), makes each sender the owner's contact with
enough tokens for all its messages (`introduce`), and lets each sender send its M messages at
its planned times, one at a time (a failed send is retried, a fresh message, `send_attempts`
times). Then each node that accepted an APPEND to the owner's inbox is analysed, from its own
log only (model.analyse). The ground truth, which no replica sees, is the token: each token
key was given to one sender.

`run` runs the modes one after the other, each in its own `trio.run` under
`MockClock(autojump_threshold=0)` with a bound on virtual time; both modes use the same seed,
so they see the same network, agents and send times.

Invariants: reproducible from `config.seed` (SeededRng forks, MockClock, hash-based latency,
trio's scheduler seeded by `sim.determinism`); the mail, permit, store and anon code is used
unchanged.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from anonmail import wire
from anonmail.anon.client import AnonymousStore
from anonmail.anon.gobetweens import GoBetweens
from anonmail.dht.dht_node import DhtNode
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.experiments.linkage.model import (
    HOUR,
    LinkageConfig,
    LinkageReport,
    Logged,
    Mode,
    ModeResult,
    analyse,
)
from anonmail.experiments.mail.workload import text
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.permits import introduce
from anonmail.mail.user_agent import MailAgent
from anonmail.net.base import Network, Peer
from anonmail.permit.book import GRANT_BATCH, MAX_HELD
from anonmail.permit.records import PermitProof
from anonmail.records import ids
from anonmail.records.certs import NodeCert
from anonmail.rng import SeededRng
from anonmail.sim.determinism import seed_scheduler
from anonmail.sim.scenario import Scenario, make_key, sim_params
from anonmail.sim.storage import StorageConfig, StorageNetwork
from anonmail.store import messages as sm
from anonmail.store.client import Lookup
from anonmail.store.service import StoreService

Progress = Callable[[str], None]


class AppendLog:
    """A node's APPEND handling with a log in front: the store answers; each APPEND to `inbox`
    it accepted is recorded as the node saw it (a `Service` for net/services.py)."""

    requests: tuple[type, ...] = (sm.Append,)

    def __init__(self, store: StoreService, node_id: bytes, inbox: bytes,
                 sink: list[Logged], truth: dict[bytes, int]) -> None:
        self.store = store
        self.node_id = node_id
        self.inbox = inbox
        self.sink = sink
        self.truth = truth  # token key -> sender (the experiment's, never the node's)

    async def handle(self, peer: Peer, msg: Any) -> Any:
        at = trio.current_time()
        reply = await self.store.handle(peer, msg)  # a refusal raises: not logged
        if isinstance(msg, sm.Append) and msg.inbox == self.inbox \
                and isinstance(reply, sm.Appended):
            key = expires = None
            if msg.proof is not None and msg.proof.kind is sm.AppendProofKind.PERMIT:
                try:
                    proof = wire.decode(msg.proof.data, PermitProof, max_size=sm.MAX_PROOF_DATA)
                except RemoteProtocolError:
                    pass
                else:
                    key, expires = proof.token.key, proof.token.expires
            sender = self.truth.get(key, -1) if key is not None else -1
            self.sink.append(Logged(self.node_id, at, peer.node_id, len(msg.entry), msg.ttl,
                                    sm.entry_id(msg.entry), key, expires, sender))
        return reply


def install_logs(net: StorageNetwork, inbox: bytes,
                 truth: dict[bytes, int]) -> dict[bytes, list[Logged]]:
    """An `AppendLog` in front of every storage node's store; the logs by node id."""
    logs: dict[bytes, list[Logged]] = defaultdict(list)
    for nid, sn in net.all.items():
        sn.node.services.add(AppendLog(sn.service, nid, inbox, logs[nid], truth), replace=True)
    return logs


async def make_agent(s: Scenario, net: StorageNetwork, mode: Mode, name: str, tmp: Path,
                     rng: SeededRng) -> tuple[MailAgent, bytes]:
    """An agent on its own client connection (its own key, no endpoints), bootstrapped through
    a random storage node, its certificate and policy published; and its node id."""
    now = s.clock.now()
    key = make_key(rng, s.params)
    cnet = s.world.attach(NodeCert.issue(key, (), now, s.params))
    dht = DhtNode(cnet, key, s.params, s.clock, rng.fork(f"dht-{name}"), s.contacts)
    store: Network = cnet
    lookup: Lookup = dht
    if mode is Mode.ANONYMOUS:
        anon = AnonymousStore(GoBetweens(cnet, dht, s.params, s.clock, rng.fork(f"anon-{name}"),
                                         cert_cache=s.contacts.cert_cache))
        store = lookup = anon
    ident = AddressIdentity.create_anon(name, rng.fork(f"id-{name}"), now)
    agent = MailAgent(ident, store, lookup, tmp / name, s.params, s.clock,
                      rng.fork(f"agent-{name}"))
    introducer = net.pick(rng, net.honest_live())
    await dht.bootstrap(introducer.node.cert.endpoints, paths=1)
    await agent.publish_cert()
    return agent, cnet.local_cert.node_id


def tokens_per_sender(config: LinkageConfig) -> int:
    """Enough of the owner's tokens for every message and its retries, within the book's
    bound."""
    return min(MAX_HELD, config.messages + max(GRANT_BATCH, config.messages // 2))


class Senders:
    """The senders' messages: each sender sends its own, one at a time, at its planned times."""

    def __init__(self, config: LinkageConfig, agents: list[MailAgent], owner: str,
                 rng: SeededRng) -> None:
        self.config = config
        self.agents = agents
        self.owner = owner
        self.rng = rng
        span = config.hours * HOUR
        self.times = [sorted(rng.random() * span for _ in range(config.messages))
                      for _ in agents]
        lo, hi = config.size
        self.bodies = [[text(rng, lo + rng.randbelow(hi - lo + 1)) for _ in range(config.messages)]
                       for _ in agents]
        self.sent = 0
        self.failed_attempts = 0
        self.t0 = trio.current_time()

    async def run(self) -> None:
        async with trio.open_nursery() as work:
            for i in range(len(self.agents)):
                work.start_soon(self.sender, i)

    async def sender(self, i: int) -> None:
        agent = self.agents[i]
        for k, (at, body) in enumerate(zip(self.times[i], self.bodies[i], strict=True)):
            await trio.sleep_until(self.t0 + at)
            for attempt in range(self.config.send_attempts):
                if attempt:
                    await trio.sleep(self.config.retry_pause)
                try:
                    await agent.send([self.owner], subject=f"message {k}", body=body)
                except UserError:  # SendFailed, or no anonymous channel now
                    self.failed_attempts += 1
                    continue
                self.sent += 1
                break


async def run_mode(config: LinkageConfig, mode: Mode, tmp: Path,
                   progress: Progress | None = None) -> ModeResult:
    """One mode of the experiment (module docstring); agents keep their mail under `tmp`."""
    if config.senders < 1 or config.messages < 1 or config.nodes < config.replication + 2:
        raise UserError("need a sender, a message and r + 2 nodes")
    seed_scheduler(config.seed)
    say = progress if progress is not None else (lambda _: None)
    wall0 = time.perf_counter()
    s = Scenario(config.nodes, seed=config.seed,
                 params=sim_params(replication=config.replication))
    await s.build("oracle")
    rng = s.rng.fork("linkage")
    async with trio.open_nursery() as services:
        net = StorageNetwork(s, StorageConfig(config.nodes, relays=True), services,
                             rng.fork("storage"))
        try:
            net.populate()
            a_rng = rng.fork("agents")
            owner, _ = await make_agent(s, net, mode, "owner", tmp, a_rng)
            senders, nodes = [], {}
            for i in range(config.senders):
                agent, nid = await make_agent(s, net, mode, f"sender{i}", tmp, a_rng)
                senders.append(agent)
                nodes[i] = nid
            inbox = ids.inbox_key(owner.address)
            truth: dict[bytes, int] = {}
            count = tokens_per_sender(config)
            for i, agent in enumerate(senders):
                introduce(agent.permits, owner.permits, count)
                for held in agent.permits.book.get(owner.address).held:
                    truth[held.token.key] = i
            logs = install_logs(net, inbox, truth)
            say(f"{mode.value}: built {config.nodes} nodes, the owner and {config.senders} "
                f"senders in {time.perf_counter() - wall0:.1f} s")
            work = Senders(config, senders, owner.address, rng.fork("plan"))
            await work.run()
            closest = {c.node_id for c in s.oracle(inbox, config.replication)}
            replicas = [analyse(nid, log, config.gap_quantile, config.window, nid in closest,
                                nodes)
                        for nid, log in sorted(logs.items()) if log]
            every = [x for log in logs.values() for x in log]
            delivered = len({x.entry_id for x in every if x.sender >= 0})
            expiries = len({x.expires for x in every if x.expires is not None})
            result = ModeResult(mode, replicas, config.senders * config.messages, work.sent,
                                work.failed_attempts, delivered, expiries,
                                tuple(sorted({x.size for x in every})),
                                tuple(sorted({x.ttl for x in every})),
                                sum(r.keys_shared for r in replicas), trio.current_time(),
                                time.perf_counter() - wall0)
            say(f"{mode.value}: {work.sent}/{result.planned} sent, {delivered} entries "
                f"logged by {len(replicas)} replicas in {result.wall:.1f} s")
        finally:
            services.cancel_scope.cancel()
    net.close()
    return result


def bound(config: LinkageConfig) -> float:
    """Virtual seconds a mode may take: a deadlock jumps here (MockClock) and fails loudly."""
    return 2 * config.hours * HOUR + config.send_attempts * config.retry_pause + 86400


def run(config: LinkageConfig, progress: Progress | None = None) -> LinkageReport:
    """Each mode in its own trio run under MockClock; agents' mail in a temporary directory
    (in memory, /dev/shm, where there is one)."""
    wall0 = time.perf_counter()

    async def main(mode: Mode, where: Path) -> ModeResult:
        with trio.fail_after(bound(config)):
            return await run_mode(config, mode, where, progress)

    shm = Path("/dev/shm")  # noqa: S108 -- a private TemporaryDirectory inside it
    base = str(shm) if shm.is_dir() else None
    results = []
    for mode in config.modes:
        with tempfile.TemporaryDirectory(prefix="anonmail-linkage-", dir=base) as where:
            results.append(trio.run(main, mode, Path(where),
                                    clock=trio.testing.MockClock(autojump_threshold=0)))
    return LinkageReport(config, results, time.perf_counter() - wall0)
