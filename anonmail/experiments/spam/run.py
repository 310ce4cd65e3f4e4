"""Running the spam experiment (model.py) on one simulated network.

`run_async` builds the scenario (oracle-filled tables) with every node serving a permit-gated
store (`permit.gate.gated_store` on an in-memory database; no republish loops: nothing here
needs repair), publishes each victim's policy from an owners' client connection, then lets the
spammer, on its own client connection, try (a) the inboxes, (c) the request inboxes for free,
(b) the request inboxes with real stamps (model.py), one append at a time, and finally reads
every node's database. `run` does that in its own `trio.run` under `MockClock` with a bound on
virtual time, so a deadlock fails loudly instead of hanging.

The spammer's choices: it looks each victim's keys up once and keeps the answer (`Remembered`:
the r replicas do not move in a run without churn, and a smart spammer does not pay for a
lookup per append); each append goes to the r closest with one round (a refusal is an answer;
asking farther nodes would only meet NO_POLICY); its identities take turns signing forged
tokens. Entries are random bytes: a sealed RTS carries its sender's certificate inside the
seal, so no node can tell one sender from a thousand, and an identity buys nothing. Minting is
timed with `time.process_time` around `permit.records.mint_stamp` alone: the simulation's own
CPU in the same process is not counted.

Invariants: reproducible from `config.seed` (SeededRng forks, MockClock, trio's scheduler
seeded), except the CPU seconds, which are measured; the gate, the store and the client are
used unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
import trio.testing

from anonmail import crypto, wire
from anonmail.dht.dht_node import DhtNode
from anonmail.dht.lookup import LookupResult
from anonmail.errors import ErrorCode, UserError
from anonmail.experiments.spam.model import Attack, SpamConfig, SpamReport, Tally
from anonmail.mail.identity import AddressIdentity
from anonmail.permit.gate import REQUEST_ENTRIES, REQUEST_TTL, gated_store
from anonmail.permit.records import (
    PolicyMode,
    Stamp,
    issue_tokens,
    make_policy,
    mint_stamp,
    spend,
    stamp_day,
    stamp_work,
)
from anonmail.records import ids
from anonmail.records.certs import NodeCert
from anonmail.rng import SeededRng
from anonmail.sim.determinism import seed_scheduler
from anonmail.sim.scenario import Scenario, make_key, sim_params
from anonmail.store.client import Lookup, Placement, append_replicated, store_replicated
from anonmail.store.db import StoreDb
from anonmail.store.messages import AppendProof, AppendProofKind, ObjectKind, entry_id
from anonmail.store.service import StoreService

Progress = Callable[[str], None]

POLICY_TTL = 30 * 86400
SPAM_TTL = 7 * 86400
STEP = 10.0  # virtual seconds an append may take at worst, for the run's time bound


class Remembered:
    """A `store.client.Lookup` that looks each key up once and remembers the answer."""

    def __init__(self, dht: Lookup) -> None:
        self.dht = dht
        self.known: dict[tuple[bytes, int | None], LookupResult] = {}
        self.lookups = 0

    async def lookup(self, key: bytes, k: int | None = None) -> LookupResult:
        found = self.known.get((key, k))
        if found is None:
            self.lookups += 1
            found = self.known[key, k] = await self.dht.lookup(key, k)
        return found


async def connect(s: Scenario, rng: SeededRng, label: str) -> DhtNode:
    """A user's connection to the DHT: its own key, no endpoints (it serves nothing),
    bootstrapped through a random node."""
    key = make_key(rng, s.params)
    cnet = s.world.attach(NodeCert.issue(key, (), s.clock.now(), s.params))
    dht = DhtNode(cnet, key, s.params, s.clock, rng.fork(f"{label}-dht"), s.contacts)
    introducer = s.random_node(rng)
    await dht.bootstrap(introducer.cert.endpoints, paths=1)
    return dht


def gate_every_node(s: Scenario, rng: SeededRng) -> dict[bytes, StoreService]:
    """Every node of `s` serves a permit-gated store on an in-memory database."""
    stores = {}
    for i, node in enumerate(s.nodes):
        svc = gated_store(node.net, node.dht, node.key, s.params, s.clock,
                          rng.fork(f"store-{i}"), StoreDb(":memory:"))
        node.services.add(svc)
        stores[node.node_id] = svc
    return stores


async def publish_policies(s: Scenario, owners: DhtNode,
                           victims: list[AddressIdentity]) -> int:
    """Each victim's owner signs a PERMITS policy at the network's difficulty and stores it
    under its inbox key and its request-inbox key; the receipts that came back."""
    placed = 0
    for v in victims:
        policy = make_policy(v.sign, v.cert, 1, PolicyMode.PERMITS, s.params.stamp_bits, ())
        blob = wire.encode(policy)
        for key in (ids.inbox_key(v.address), ids.requests_key(v.address)):
            got = await store_replicated(owners.net, owners, key, ObjectKind.POLICY, blob,
                                         POLICY_TTL, (), s.params.replication, clock=s.clock)
            placed += len(got.receipts)
    return placed


class Spammer:
    """I certified identities, no permits; one client connection (module docstring)."""

    def __init__(self, s: Scenario, dht: DhtNode, config: SpamConfig, rng: SeededRng) -> None:
        self.s = s
        self.net = dht.net
        self.lookup = Remembered(dht)
        self.config = config
        self.rng = rng
        now = s.clock.now()
        id_rng = rng.fork("identities")
        self.identities = [AddressIdentity.create_anon(f"offer{i}", id_rng, now)
                           for i in range(config.identities)]
        self.turn = 0
        self.tallies = {a: Tally() for a in Attack}
        self.filled = 0

    def identity(self) -> AddressIdentity:
        ident = self.identities[self.turn % len(self.identities)]
        self.turn += 1
        return ident

    def entry(self) -> bytes:
        return self.rng.bytes(self.config.entry_size)

    def mint(self, attack: Attack, key: bytes, eid: bytes) -> AppendProof:
        """A stamp at the difficulty; its CPU seconds go to `attack`'s tally."""
        t0 = time.process_time()
        stamp = mint_stamp(key, eid, self.config.bits, self.s.clock.now(), self.rng)
        self.tallies[attack].cpu += time.process_time() - t0
        return AppendProof(AppendProofKind.STAMP, wire.encode(stamp))

    def weak(self, key: bytes, eid: bytes) -> AppendProof:
        """A stamp below the difficulty: random nonces, one hash each, until one falls short."""
        day = stamp_day(self.s.clock.now())
        while True:
            stamp = Stamp(day, self.rng.bytes(crypto.STAMP_NONCE_SIZE))
            if stamp_work(stamp, key, eid) < self.config.bits:
                return AppendProof(AppendProofKind.STAMP, wire.encode(stamp))

    def forged(self, inbox: bytes, eid: bytes, own: bool) -> AppendProof:
        """A token one of the spammer's identities signed: for the victim's inbox, or (`own`)
        a genuine token of that identity's own inbox; spent on this entry in `inbox`."""
        ident = self.identity()
        target = ids.inbox_key(ident.address) if own else inbox
        held = issue_tokens(ident.sign, target, 1, self.s.clock.now(), self.rng)[0]
        return AppendProof(AppendProofKind.PERMIT, wire.encode(spend(held, inbox, eid)))

    async def append(self, attack: Attack, key: bytes, entry: bytes,
                     proof: AppendProof | None, ttl: int = SPAM_TTL) -> Placement:
        got = await append_replicated(self.net, self.lookup, key, entry, ttl, proof,
                                      self.s.params.replication, clock=self.s.clock, rounds=1)
        t = self.tallies[attack]
        t.tried += 1
        t.receipts += len(got.receipts)
        t.accepted += bool(got.receipts)
        t.refusals.update(e.code.name for e in got.refusals.values())
        t.failures += len(got.failures)
        return got

    # -- the attacks -----------------------------------------------------------------------------

    async def inbox(self, victim: AddressIdentity) -> None:
        """(a): the victim's inbox, without a permit of its owner."""
        key = ids.inbox_key(victim.address)
        for i in range(self.config.spam):
            await self.append(Attack.INBOX_BARE, key, self.entry(), None)
            entry = self.entry()
            await self.append(Attack.INBOX_FORGED, key, entry,
                              self.forged(key, entry_id(entry), own=i % 2 == 1))
        entry = self.entry()
        await self.append(Attack.INBOX_STAMPED, key, entry,
                          self.mint(Attack.INBOX_STAMPED, key, entry_id(entry)))

    async def free(self, victim: AddressIdentity) -> None:
        """(c): the victim's request inbox, without paying for a stamp."""
        key = ids.requests_key(victim.address)
        for _ in range(self.config.flood):
            await self.append(Attack.REQUEST_BARE, key, self.entry(), None, REQUEST_TTL)
            entry = self.entry()
            await self.append(Attack.REQUEST_WEAK, key, entry, self.weak(key, entry_id(entry)),
                              REQUEST_TTL)

    async def rts(self, victim: AddressIdentity) -> None:
        """(b): RTS with real stamps until the replicas say the request inbox is full."""
        key = ids.requests_key(victim.address)
        for _ in range(self.config.max_rts):
            entry = self.entry()
            got = await self.append(Attack.RTS, key, entry,
                                    self.mint(Attack.RTS, key, entry_id(entry)), REQUEST_TTL)
            if not got.receipts and any(e.code is ErrorCode.INBOX_FULL
                                        for e in got.refusals.values()):
                self.filled += 1
                return


@dataclass(frozen=True)
class Holdings:
    inbox_entries: int
    inbox_holders: int
    request_entries: int
    request_max: int
    replicas_full: int
    replicas_held: int
    distinct_max: int


def count_holdings(stores: dict[bytes, StoreService], victims: list[AddressIdentity],
                   now: float) -> Holdings:
    """What every node's database holds in the victims' inboxes and request inboxes."""
    inbox_entries = request_entries = request_max = full = held = distinct_max = 0
    holders: set[bytes] = set()
    for v in victims:
        inbox, requests = ids.inbox_key(v.address), ids.requests_key(v.address)
        distinct: set[bytes] = set()
        for nid, svc in stores.items():
            n, _ = svc.db.inbox_usage(inbox, now)
            if n:
                inbox_entries += n
                holders.add(nid)
            n, _ = svc.db.inbox_usage(requests, now)
            if n:
                request_entries += n
                request_max = max(request_max, n)
                held += 1
                full += n >= REQUEST_ENTRIES
                distinct.update(row.entry_id for row in svc.db.inbox_entries(requests, now))
        distinct_max = max(distinct_max, len(distinct))
    return Holdings(inbox_entries, len(holders), request_entries, request_max, full, held,
                    distinct_max)


def _every(n: int) -> int:
    """Report progress about ten times over n steps."""
    return max(1, n // 10)


async def run_async(config: SpamConfig, progress: Progress | None = None) -> SpamReport:
    """The whole experiment (model.py)."""
    if config.nodes < config.replication + 2 or config.victims < 1 or config.identities < 1:
        raise UserError("need r + 2 nodes, a victim and an identity")
    seed_scheduler(config.seed)
    say = progress if progress is not None else (lambda _: None)
    wall0 = time.perf_counter()
    s = Scenario(config.nodes, seed=config.seed,
                 params=sim_params(stamp_bits=config.bits, replication=config.replication))
    await s.build("oracle")
    rng = s.rng.fork("spam")
    stores = gate_every_node(s, rng.fork("stores"))
    try:
        owners = await connect(s, rng.fork("owners"), "owners")
        now = s.clock.now()
        v_rng = rng.fork("victims")
        victims = [AddressIdentity.create_anon(f"victim{i}", v_rng, now)
                   for i in range(config.victims)]
        placed = await publish_policies(s, owners, victims)
        spammer = Spammer(s, await connect(s, rng.fork("spammer"), "spammer"), config,
                          rng.fork("spammer-work"))
        wall1 = time.perf_counter()
        say(f"built {config.nodes} gated nodes, {config.victims} victims' policies "
            f"({placed} receipts) and {config.identities} spammer identities in "
            f"{wall1 - wall0:.1f} s")
        for v in victims:
            await spammer.inbox(v)
        say(f"direct spam: {sum(t.tried for a, t in spammer.tallies.items() if a.on_inbox)} "
            "appends tried")
        for v in victims:
            await spammer.free(v)
        rts = spammer.tallies[Attack.RTS]
        for i, v in enumerate(victims):
            await spammer.rts(v)
            if (i + 1) % _every(config.victims) == 0 or i + 1 == config.victims:
                say(f"RTS: {i + 1}/{config.victims} victims, {rts.accepted}/{rts.tried} "
                    f"accepted, {rts.cpu:.1f} CPU s minting at {config.bits} bits")
        h = count_holdings(stores, victims, s.clock.now())
        return SpamReport(
            config, spammer.tallies, placed, h.inbox_entries, h.inbox_holders,
            h.request_entries, h.request_max, REQUEST_ENTRIES, h.replicas_full,
            h.replicas_held, h.distinct_max, spammer.filled, trio.current_time(),
            wall1 - wall0, time.perf_counter() - wall1)
    finally:
        for svc in stores.values():
            svc.db.close()


def planned_appends(config: SpamConfig) -> int:
    return config.victims * (2 * config.spam + 1 + 2 * config.flood + config.max_rts)


def run(config: SpamConfig, progress: Progress | None = None) -> SpamReport:
    """`run_async` in its own trio run under MockClock, its virtual time bounded."""
    bound = 86400 + STEP * (planned_appends(config) + 4 * config.victims)

    async def main() -> SpamReport:
        with trio.fail_after(bound):
            return await run_async(config, progress)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
