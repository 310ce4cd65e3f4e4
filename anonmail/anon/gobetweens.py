"""Choosing go-betweens and building a channel to a cross-checked Z (seed 002 §4.1).

For each channel the sender A:

1. takes X: its guard (a long-lived X, `AnonOptions.guard`, as Tor's entry guards: a fresh X
   per message would give every hostile node many chances to be A's X) or the node closest to
   a fresh random keyX;
2. draws keyZ and asks X (directly: X is the one node that sees A) where the node closest to
   keyZ is; the answer is a `Located` signed by X;
3. with `cross_check`, draws keyY, finds Y (the node closest to keyY) and asks Y the same
   *through X* (a circuit A -> X -> Y: Y sees X, never A). If the signed answers differ, both
   are kept as evidence, the disagreement is recorded against X and Y, the one that named the
   farther node is charged a lie, and A starts over with fresh keys (the guard is replaced
   once it has been the liar `guard_disagreements` times);
4. opens the circuit A -> X (-> a random middle relay, with `hops` = 2) -> Z.

Nodes that disagreed or failed as go-betweens `Blame.limit` times are avoided from then on: a
node that refuses to relay (selective denial, to push A toward hostile go-betweens) only makes
A draw another random key, and after a few refusals it is never drawn again.

Invariants: every choice comes from the injected Rng (random keys, so no node can place itself
on a sender's path except by being closest to a key it cannot predict); A never uses a Z it
did not get agreeing, signed answers for (with `cross_check`); A itself, X and Z are distinct.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import trio

from anonmail import wire
from anonmail.anon import messages as am
from anonmail.anon.circuit import ChannelError, Circuit
from anonmail.anon.options import DEFAULT, AnonOptions
from anonmail.clock import Clock
from anonmail.dht.messages import Ping
from anonmail.errors import ErrorCode, Refused, RemoteProtocolError, TransportError, UserError
from anonmail.fileio import write_private
from anonmail.net.base import Network
from anonmail.records import ids
from anonmail.records.certs import CertCache, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.store.client import Lookup, closest
from anonmail.wire import Range, Size

MAX_ATTEMPTS = 12  # channel attempts before giving up
LOCATE_TIMEOUT = 60.0  # X looks the key up first: a lookup past dead contacts takes a while
DENSITY_SAMPLES = 64  # own lookups remembered for the density test (anon/client.py)
POOL_SIZE = 16  # pre-found nodes for Y and middle relays
POOL_MIN_AGE = 300.0  # seconds between finding a pool node and using it
POOL_MAX_AGE = 86400.0  # older entries are dropped: their nodes may well have left
REFILL_PER_CHANNEL = 2
REFILL_BUDGET = 5.0  # seconds a channel build may spend refilling the pool
UNUSABLE_Z = "Z was unusable (X itself, the other channel's end, or avoided)"


class AnonUnavailable(UserError):
    """No anonymous channel could be built now (too few nodes answered, or every path failed):
    try again later, or send with --direct (the storage nodes then see your node)."""


class Disagreement(Exception):
    """X and Y named different nodes as closest to keyZ (internal: the attempt starts over)."""


@dataclass
class Blame:
    """What this sender holds against nodes as go-betweens (seed 002 §4.1: "records the
    disagreement"): the signed conflicting answers (against both nodes), which of the two named
    the farther node (`lies`: a node ids are self-certifying, so a liar cannot name a node
    closer than the true closest, only a farther one), and failures (refusing to relay,
    withholding or forging receipts). Only lies and failures make a node avoided: counting
    bare disagreements would let hostile Ys get an honest guard replaced."""

    limit: int = 3
    disagreements: Counter[bytes] = field(default_factory=Counter)
    lies: Counter[bytes] = field(default_factory=Counter)
    failures: Counter[bytes] = field(default_factory=Counter)
    evidence: list[tuple[am.Located, am.Located]] = field(default_factory=list)

    def avoid(self, node_id: bytes) -> bool:
        return self.lies[node_id] + self.failures[node_id] >= self.limit


@dataclass
class Guard:
    cert: NodeCert
    chosen: float
    disagreements: int = 0


@wire.struct
@dataclass(frozen=True, slots=True)
class GuardRecord:
    """A guard as kept on disk between sessions (the user's home; never sent)."""

    cert: NodeCert
    chosen: Annotated[int, wire.U64]
    disagreements: Annotated[int, Range(0, 1000)]


@wire.struct
@dataclass(frozen=True, slots=True)
class PoolRecord:
    cert: NodeCert
    found: Annotated[int, wire.U64]


@wire.struct
@dataclass(frozen=True, slots=True)
class SenderState:
    """What a sender keeps between sessions: its guard and its pool of pre-found nodes."""

    guard: GuardRecord | None
    pool: Annotated[tuple[PoolRecord, ...], Size(0, 64)]


def save_state(path: Path, gb: GoBetweens) -> None:
    g = gb.guard
    guard = None if g is None else GuardRecord(g.cert, int(g.chosen), min(g.disagreements, 1000))
    pool = tuple(PoolRecord(c, int(t)) for c, t in gb.pool[-64:])
    write_private(path, wire.encode(SenderState(guard, pool)))


def load_state(path: Path, gb: GoBetweens) -> None:
    """Restore the guard and the pool saved by `save_state` (what is still valid); a missing or
    unreadable file leaves a fresh sender (a new guard will be chosen)."""
    now = gb.clock.now()
    try:
        state = wire.decode(path.read_bytes(), SenderState, max_size=64 << 10)
    except (OSError, RemoteProtocolError):
        return
    for rec in state.pool:
        try:
            rec.cert.verify(gb.params, now)
        except RemoteProtocolError:
            continue
        gb.pool.append((rec.cert, float(rec.found)))
    if state.guard is not None:
        try:
            state.guard.cert.verify(gb.params, now)
        except RemoteProtocolError:
            return
        gb.guard = Guard(state.guard.cert, float(state.guard.chosen), state.guard.disagreements)


@dataclass
class ChannelStats:
    built: int = 0
    attempts: int = 0
    disagreements: int = 0
    failures: int = 0
    guards: int = 0  # guards chosen
    pooled: int = 0  # Ys and middle relays taken from the pool (found long before)
    fresh: int = 0  # ... found by a lookup just before their use (the pool was empty)


class GoBetweens:
    """Builds channels for one sender node (module docstring)."""

    def __init__(self, net: Network, dht: Lookup, params: NetworkParams, clock: Clock,
                 rng: Rng, *, options: AnonOptions = DEFAULT, blame: Blame | None = None,
                 guard: Guard | None = None, cert_cache: CertCache | None = None) -> None:
        self.net = net
        # Verified NodeCerts (issue 11): Zs' answers and Locate statements name the same
        # nodes again and again. The session's own cache when given, else a private one.
        self.cert_cache = cert_cache if cert_cache is not None else CertCache()
        self.dht = dht
        self.params = params
        self.clock = clock
        self.rng = rng
        self.options = options
        self.blame = blame or Blame()
        self.guard = guard
        self.stats = ChannelStats()
        self._samples: deque[int] = deque(maxlen=DENSITY_SAMPLES)
        self.pool: list[tuple[NodeCert, float]] = []  # (node, when found) for Y and middles

    @property
    def me(self) -> bytes:
        return self.net.local_cert.node_id

    def density(self) -> float | None:
        """The median distance from a random key to its r-th closest node, over this sender's
        own recent lookups (None before the first): what an honest answer looks like here."""
        if not self._samples:
            return None
        return float(statistics.median(self._samples))

    async def random_node(self, exclude: Iterable[bytes] = ()) -> NodeCert:
        """A random node for Y or a middle relay, skipping `exclude`, A and avoided nodes:
        from the pool when it holds one found at least POOL_MIN_AGE ago, else the node closest
        to a fresh random key (`stats.fresh`: the lookup that found it queried it just now)."""
        skip = {self.me, *exclude}
        now = self.clock.now()
        self.pool = [(c, found) for c, found in self.pool if now - found <= POOL_MAX_AGE]
        ready = [i for i, (c, found) in enumerate(self.pool)
                 if now - found >= POOL_MIN_AGE and c.node_id not in skip and c.expires > now
                 and not self.blame.avoid(c.node_id)]
        if ready:
            cert, _ = self.pool.pop(ready[self.rng.randbelow(len(ready))])
            self.stats.pooled += 1
            return cert
        self.stats.fresh += 1
        return await self._lookup_random(skip)

    async def _lookup_random(self, skip: set[bytes]) -> NodeCert:
        for _ in range(3):
            key = self.rng.bytes(32)
            found = await closest(self.dht, key, self.params.replication)
            if len(found) >= self.params.replication:
                self._samples.append(ids.distance(found[-1].node_id, key))
            for cert in found:
                if cert.node_id not in skip and not self.blame.avoid(cert.node_id):
                    return cert
        raise AnonUnavailable(
            "too few nodes to choose go-betweens from: try again later, or send with --direct")

    async def refill(self, count: int = POOL_SIZE) -> None:
        """Find up to `count` random nodes for later channels (the pool), each the node
        closest to a fresh random key. Their use comes at least POOL_MIN_AGE later, so a node
        cannot tie the lookup that reached it (which shows our address) to the channel it then
        serves on (issue 8: the lookup leak `anonmail sim anonymity` measured)."""
        for _ in range(max(0, min(count, POOL_SIZE - len(self.pool)))):
            try:
                cert = await self._lookup_random({self.me})
            except AnonUnavailable:
                return
            self.pool.append((cert, self.clock.now()))

    async def relay(self) -> NodeCert:
        """X: the guard while it lasts, else a fresh random node."""
        if not self.options.guard:
            return await self.random_node()
        now = self.clock.now()
        g = self.guard
        if g is None or now - g.chosen > self.options.guard_lifetime or \
                g.cert.expires <= now or self.blame.avoid(g.cert.node_id) or \
                g.disagreements >= self.options.guard_disagreements:
            self.guard = g = Guard(await self.random_node(), now)
            self.stats.guards += 1
        return g.cert

    async def _guard_failed(self, e: ChannelError) -> None:
        """Replace the guard at once when it refused to relay (an honest node refuses only
        when full) or is gone (it does not answer a Ping either); otherwise the failure only
        counts towards Blame.limit. Keeping a guard through a passing fault matters: an
        adversary that could make us drop honest guards at will would cycle us onto its own."""
        g = self.guard
        assert g is not None
        if e.code is not None and e.code is not ErrorCode.QUOTA:
            self.guard = None
            return
        try:
            await self.net.request(g.cert, Ping(), timeout=LOCATE_TIMEOUT)
        except (TransportError, Refused, RemoteProtocolError):
            self.guard = None

    def _checked(self, answer: object, signer: NodeCert, key: bytes) -> NodeCert:
        if not isinstance(answer, am.Located) or answer.statement.key != key:
            raise ChannelError("wrong answer to Locate", signer.node_id)
        try:
            answer.verify(signer)
            self.cert_cache.verify(answer.statement.cert, self.params, self.clock.now())
        except RemoteProtocolError:
            raise ChannelError("Locate answer did not verify", signer.node_id) from None
        return answer.statement.cert

    async def locate_z(self, x: NodeCert) -> NodeCert:
        """Z for a fresh keyZ, as X says and (with `cross_check`) Y confirms through X."""
        key_z = self.rng.bytes(32)
        try:
            from_x = await self.net.request(x, am.Locate(key_z), timeout=LOCATE_TIMEOUT)
        except Refused as e:
            raise ChannelError("X refused Locate", x.node_id, e.code) from e
        except (TransportError, RemoteProtocolError) as e:
            raise ChannelError("X did not answer Locate", x.node_id) from e
        z = self._checked(from_x, x, key_z)
        if not self.options.cross_check:
            return z
        y = await self.random_node(exclude=(x.node_id,))
        circuit = await Circuit.open(self.net, [x, y], self.rng, now=self.clock.now(),
                                     padded=self.options.padding)
        try:
            from_y = await circuit.call(am.Locate(key_z))
        finally:
            await circuit.close()
        if isinstance(from_y, am.OpFailed):
            raise ChannelError("Y could not locate", y.node_id)
        z_by_y = self._checked(from_y, y, key_z)
        if z_by_y.node_id != z.node_id:
            assert isinstance(from_x, am.Located) and isinstance(from_y, am.Located)
            self.blame.evidence.append((from_x, from_y))
            self.blame.disagreements.update((x.node_id, y.node_id))
            x_farther = ids.distance(z.node_id, key_z) > ids.distance(z_by_y.node_id, key_z)
            self.blame.lies[x.node_id if x_farther else y.node_id] += 1
            if x_farther and self.guard is not None and self.guard.cert.node_id == x.node_id:
                self.guard.disagreements += 1
            self.stats.disagreements += 1
            raise Disagreement
        return z

    async def channel(self, exclude: Iterable[bytes] = ()) -> Circuit:
        """A circuit to a fresh, cross-checked Z not in `exclude` (module docstring)."""
        skip = set(exclude)
        why: Counter[str] = Counter()
        # A Z that is unusable here (X itself, the other channel's end: common in a network
        # of a handful of nodes) costs a Locate, not a failure: it gets attempts of its own.
        for _ in range(2 * MAX_ATTEMPTS):
            if sum(why.values()) - why[UNUSABLE_Z] // 2 >= MAX_ATTEMPTS:
                break
            self.stats.attempts += 1
            try:
                x = await self.relay()
                z = await self.locate_z(x)
                if z.node_id in {self.me, x.node_id, *skip} or self.blame.avoid(z.node_id):
                    why[UNUSABLE_Z] += 1
                    continue
                hops = [x]
                for _ in range(self.options.hops - 1):
                    hops.append(await self.random_node(exclude={x.node_id, z.node_id}))
                circuit = await Circuit.open(self.net, [*hops, z], self.rng,
                                             now=self.clock.now(), padded=self.options.padding)
            except ChannelError as e:
                why[str(e)] += 1
                self.stats.failures += 1
                if e.at is not None:
                    self.blame.failures[e.at] += 1
                    if self.guard is not None and e.at == self.guard.cert.node_id:
                        await self._guard_failed(e)
                continue
            except Disagreement:
                why["X and Y disagreed on Z"] += 1
                continue
            self.stats.built += 1
            # A little for later channels, but never long: the circuit must carry its first
            # cell before the hops' idle timers drop it (RelayLimits.idle).
            with trio.move_on_after(REFILL_BUDGET):
                await self.refill(REFILL_PER_CHANNEL)
            return circuit
        common = why.most_common(1)[0][0] if why else "no attempt"
        raise AnonUnavailable(
            f"could not build an anonymous channel ({sum(why.values())} attempts, mostly: "
            f"{common}): try again later, or send with --direct")

    def delay_ms(self) -> int:
        """A Forward's hold at Z: an exponential draw with mean `delay_mean` (capped)."""
        mean = self.options.delay_mean
        if mean <= 0:
            return 0
        draw = -mean * math.log(1.0 - self.rng.random())
        return min(am.MAX_FORWARD_DELAY_MS, int(draw * 1000))
