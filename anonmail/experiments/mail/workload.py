"""The mail experiment's workload: user agents, the letters they send, and their checks.

`make_seats` gives each of the config's agents a `MailAgent` (the real mail layer, unchanged) on
its own client connection to the simulated DHT, bootstrapped through a random honest storage
node, with its address certificate published. `plan` draws the letters: random sender, random
other recipient, send time uniform over `send_hours`, check delay uniform over `delay_hours`,
body size uniform over `size`. `Workload.run` sends every letter at its time (a send the agent
reports as failed is retried, a fresh message, up to `send_attempts` times, `retry_pause`
apart); each recipient checks `delay` after the send returned: the check saves and ACKs every
new header, then retrieves the letters that are due, so each body is held for its letter's whole
delay (a retrieval that fails is retried at the recipient's later checks). After the last
scheduled check every agent still owed a message checks once more and retrieves everything.

Invariants: a seat does one operation at a time (its lock); every random draw comes from the
`SeededRng`s given, in a fixed order; a letter counts as delivered only when the bytes
retrieved equal the bytes its (last successful) attempt sent. Runs inside trio.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from anonmail.anon.client import AnonymousStore
from anonmail.anon.gobetweens import GoBetweens
from anonmail.dht.dht_node import DhtNode
from anonmail.errors import UserError
from anonmail.experiments.mail.model import Letter, MailConfig
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.permits import introduce
from anonmail.mail.send import SendFailed
from anonmail.mail.user_agent import MailAgent
from anonmail.net.base import Network
from anonmail.permit.book import GRANT_BATCH
from anonmail.records.certs import NodeCert
from anonmail.rng import SeededRng
from anonmail.sim.metrics import OPERATION
from anonmail.sim.scenario import Scenario, make_key
from anonmail.sim.storage import HOUR, StorageNetwork
from anonmail.store.client import Lookup


@dataclass(eq=False)
class Seat:
    """One user: a MailAgent on its own client connection, used one operation at a time."""

    agent: MailAgent
    anon: AnonymousStore | None = None  # its go-betweens, in an anonymous run
    lock: trio.Lock = field(default_factory=trio.Lock)


def text(rng: SeededRng, size: int) -> str:
    """`size` characters of random hex in lines of 76: no repeats for a compressor to find
    (deflate still halves it, to its 4 bits a character; the mail layer does not compress)."""
    raw = rng.bytes((size + 1) // 2).hex()[:size]
    return "\n".join(raw[i:i + 76] for i in range(0, len(raw), 76)) + "\n"


def plan(config: MailConfig, rng: SeededRng) -> list[Letter]:
    """The letters of a run, in the order of their send times."""
    out = []
    lo, hi = config.delay_hours
    for i in range(config.messages):
        sender = rng.randbelow(config.agents)
        recipient = (sender + 1 + rng.randbelow(config.agents - 1)) % config.agents
        out.append(Letter(i, sender, recipient, rng.random() * config.send_hours * HOUR,
                          (lo + (hi - lo) * rng.random()) * HOUR,
                          config.size[0] + rng.randbelow(config.size[1] - config.size[0] + 1)))
    return sorted(out, key=lambda x: x.send_at)


async def make_seats(s: Scenario, net: StorageNetwork, config: MailConfig, tmp: Path,
                     rng: SeededRng) -> list[Seat]:
    """The agents, each keeping its mail under `tmp`/user<i>."""
    seats = []
    now = s.clock.now()
    for i in range(config.agents):
        key = make_key(rng, s.params)
        cnet = s.world.attach(NodeCert.issue(key, (), now, s.params))
        dht = DhtNode(cnet, key, s.params, s.clock, rng.fork(f"agent-dht-{i}"), s.contacts)
        ident = AddressIdentity.create_anon(f"user{i}", rng.fork(f"id-{i}"), now)
        store: Network = cnet
        lookup: Lookup = dht
        anon = None
        if config.anonymous:
            anon = AnonymousStore(GoBetweens(cnet, dht, s.params, s.clock,
                                             rng.fork(f"agent-anon-{i}"),
                                             cert_cache=s.contacts.cert_cache))
            store = lookup = anon
        agent = MailAgent(ident, store, lookup, tmp / f"user{i}", s.params, s.clock,
                          rng.fork(f"agent-{i}"), look_ahead=config.look_ahead)
        seats.append(Seat(agent, anon))
        introducer = net.pick(rng, net.honest_live())
        await dht.bootstrap(introducer.node.cert.endpoints, paths=1)
        await agent.publish_cert()
    return seats


def introduce_letters(seats: Sequence[Seat], letters: Sequence[Letter]) -> None:
    """Every pair that exchanges a letter starts as contacts, with tokens for a whole run."""
    pairs = {tuple(sorted((x.sender, x.recipient))) for x in letters}
    need = max((sum(1 for x in letters if {x.sender, x.recipient} == set(p)) for p in pairs),
               default=0)
    for i, j in sorted(pairs):
        introduce(seats[i].agent.permits, seats[j].agent.permits,
                  max(GRANT_BATCH, need + 1), save=False)
    for seat in seats:
        seat.agent.permits.book.save()


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
        # Everything sent from here, by the agents or on their behalf, is the mail's cost.
        token = OPERATION.set("mail")
        try:
            async with trio.open_nursery() as work:
                for letter, body in zip(self.letters, self.texts, strict=True):
                    work.start_soon(self.send, letter, body)
            # Whoever is still owed a message checks once more.
            for i in sorted({x.recipient for x in self.letters if x.sent is not None
                             and not x.intact}):
                self.swept += await self.collect(self.seats[i], everything=True)
        finally:
            OPERATION.reset(token)

    async def send(self, letter: Letter, body: str) -> None:
        cfg = self.config
        seat, rcpt = self.seats[letter.sender], self.seats[letter.recipient]
        await trio.sleep_until(self.t0 + letter.send_at)
        for attempt in range(cfg.send_attempts):
            if attempt:
                await trio.sleep(cfg.retry_pause)
            letter.attempts += 1
            async with seat.lock:
                msg = seat.agent.compose([rcpt.agent.address], subject=f"letter {letter.index}",
                                         body=body)
                letter.message_id, letter.data = msg.message_id, msg.data
                self.by_id[msg.message_id] = letter
                self.data[msg.message_id] = msg.data
                try:
                    await seat.agent.send_composed(msg)
                except SendFailed:
                    self.errors["send failed (retried)"] += 1
                    continue
                except UserError:  # no anonymous channel now (anon/gobetweens.py)
                    self.errors["no channel (retried)"] += 1
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
        return got
