"""The coalition's view of a send and the Bayesian adversary of rule (b) (model.py; DESIGN.md
§7 "a stronger, realistic one pools what all its nodes see, with times and sizes").

What hostile nodes log of one send, pooled into one `Sighting` (`evidence`):
  * a node that knows A (X; with the lookup leak, also the Y and M A looked up) in an
    abandoned attempt: A's identity and the time (ABANDONED: A did not come back); in the W
    channel used: the same (W_USED); a hostile Y of the Z channel used that learnt A: A, the
    time and Z, which it named itself (Z_USED);
  * the hostile X (or, leaking, M) of the channel used: A, the time it relays the APPEND cell,
    the cell's size (its class with padding, else exact) and its next hop -- Z itself with one
    hop; with two, M, and Z too when M is hostile (M names both neighbours) or, without
    padding, when a hostile body replica got a STORE of exactly the size X relayed (STREAM);
  * a hostile W tied to A (protocol.w_linked) knows the body key A asked about; a hostile body
    replica that got that key's STORE names the Z that sent it (BODY, with its time);
and of the delivery (`Observation`): a hostile Z knows the recipient, the header size, the body
key, the time and its previous hop; else the first hostile inbox replica knows the recipient,
the size, the time and that it came from Z. X and Z hostile (with M on two hops) is rule (a); a
hostile W tied to A and a hostile Z share the body key; a Y or M that learnt A by the lookup
and a hostile Z share Z: all are certain, and count so in (b).

The adversary (`Adversary.score`) weighs each sighting s against a delivery o:
    w(s) = density_kind(e)(t_o - t_e), e = s's latest event (the others add nothing to it;
           a Gaussian kernel estimate, model.Density)
           * per hop fact of o (Z; Z's previous hop if known): 1 if s knows it and agrees,
             0 if s knows it and disagrees, its prior (the node's id-space share) if s does not
           * size: 1 / 0 if s knows the cell's size key, else the prior of o's key
           * 0 if both know the body key and it differs;
and the unseen sends (no hostile node saw the sender, at rate load * P(unseen)) by
    U = rate_unseen * g(t_o) * the priors of all of o's facts,
where g is the relative intensity of deliveries at t_o: 1 without batching; with batching,
B * the density of (t mod B) of deliveries, since every send is phase-locked to the shared
batch clock and deliveries bunch just after its ticks. For the same reason, with batching the
timing term of an event is P(delivered at o's tick | the event's phase) * the density of o's
offset from its tick (model.TickModel), except X -> Z, which is latency alone; without this,
the adversary takes a whole tick's bunch for one sender and is wrong most of the time;
a sender's posterior is its best sighting's weight over (every sender's best weight + U). The
densities are learnt from a calibration run of the same protocol: the adversary knows the
latency, delay and batching distributions, not the realisations. It does not reason about
which deliveries other sightings already explain (no exclusion across deliveries).

Invariants: `evidence` is a pure function of a path, its timing and the network; `score` does
not change the index; equal inputs give equal outputs.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from anonmail.experiments.anonymity.model import Density, TickModel, entropy_degree
from anonmail.experiments.anonymity.network import Network
from anonmail.experiments.anonymity.protocol import Path, Protocol, Timing

ABANDONED, W_USED, Z_USED, STREAM, BODY = 0, 1, 2, 3, 4
KINDS = (ABANDONED, W_USED, Z_USED, STREAM, BODY)
Samples = dict[tuple[int, int], list[tuple[float, float]]]  # (event time, delivery time)
AT_Z, AT_REPLICA = 0, 1


@dataclass(frozen=True, slots=True)
class Sighting:
    sender: int
    events: tuple[tuple[int, float], ...]  # (kind, time) of what hostile nodes logged
    z: int  # the Z the coalition can tie this send to, or -1
    pre_z: int  # the hop before Z it can tie it to (X with one hop, M with two), or -1
    size: int  # the APPEND cell's size key if a hostile X relayed it, else -1
    key: int  # the body key if a hostile W tied to A was asked about it, else -1


@dataclass(frozen=True, slots=True)
class Observation:
    kind: int  # AT_Z or AT_REPLICA
    t: float
    z: int
    prev: int  # Z's previous hop, known at a hostile Z; -1 at a replica
    size: int  # size key of the header
    key: int  # the body key, known at a hostile Z; -1 at a replica


@dataclass(frozen=True, slots=True)
class Evidence:
    sighting: Sighting | None
    observation: Observation | None
    by_a: bool  # rule (a): X and Z (and M) hostile
    certain: bool  # rule (a), or Z hostile and tied to A (through W, or a leaking Y or M)


def rule_a(proto: Protocol, p: Path) -> bool:
    """The seed's rule: X and Z hostile (and M, with two hops)."""
    h = proto.net.hostile
    return h[p.x] == 1 and h[p.z] == 1 and (proto.o.hops == 1 or h[p.m] == 1)


def evidence(proto: Protocol, p: Path, tm: Timing) -> Evidence:
    net = proto.net
    h = net.hostile
    two = proto.o.hops == 2
    leak = proto.leak
    events = [(ABANDONED, t) for t, x, y in tm.abandoned if proto.sees_a(x, y, -1)]
    if proto.sees_a(p.xw, p.w_tries[-1][1], p.mw):
        events.append((W_USED, tm.w_used))
    z = pre_z = size = key = -1
    y = p.z_tries[-1][1]
    y_knows = leak and y >= 0 and h[y] == 1  # Y learnt A by the lookup, and it named Z
    m_knows = leak and two and h[p.m] == 1  # M learnt A by the lookup, and relays to Z
    body_hostile = any(h[b] for b in p.body)
    if h[p.x] or m_knows:  # the APPEND cell passes a node that knows A
        if not two or h[p.m] or (not proto.o.padding and body_hostile):
            z = p.z
        pre_z, size = (p.m if two else p.x), proto.size_key(p.header)
        events.append((STREAM, tm.stream))
    if y_knows:
        z = p.z
        if not two:
            pre_z = p.x
        events.append((Z_USED, tm.z_used))
    w_linked = proto.w_linked(p)
    if w_linked:
        key = p.key
        if body_hostile:
            z = p.z
            events.append((BODY, tm.body_obs))
    sighting = Sighting(p.sender, tuple(events), z, pre_z, size, key) if events else None
    by_a = rule_a(proto, p)
    hsize = proto.size_key(p.header)
    obs: Observation | None = None
    if h[p.z]:
        obs = Observation(AT_Z, tm.z_arrive, p.z, p.m if two else p.x, hsize, p.key)
    else:
        seen = [tm.act + net.lat(p.z, r) for r in net.inbox_hostile[p.recipient]]
        if seen:
            obs = Observation(AT_REPLICA, min(seen), p.z, -1, hsize, -1)
    certain = by_a or (h[p.z] == 1 and (w_linked or y_knows or m_knows))
    return Evidence(sighting, obs, by_a, certain)


def might_link(proto: Protocol, p: Path) -> bool:
    """Could `evidence` of this path link it (some delivery seen and some sender event or
    certainty)? Decided from the path alone, so a history skips the timing of the rest."""
    h, net = proto.net.hostile, proto.net
    if not h[p.z] and not net.inbox_hostile[p.recipient]:
        return False
    return (any(proto.sees_a(x, y, -1) for x, y in p.z_tries + p.w_tries)
            or proto.sees_a(p.x, -1, p.m) or proto.sees_a(p.xw, -1, p.mw)
            or proto.w_linked(p))


def calibration_samples(proto: Protocol, p: Path, tm: Timing, replica: int,
                        out: Samples) -> None:
    """Add one send's (event time, delivery time) pairs per (event kind, observation kind) to
    `out`, from every attempt and a given inbox replica, whoever is hostile."""
    rep = tm.act + proto.net.lat(p.z, replica)
    starts = [(ABANDONED, t) for t, _, _ in tm.abandoned]
    starts += [(W_USED, tm.w_used), (Z_USED, tm.z_used), (STREAM, tm.stream),
               (BODY, tm.body_obs)]
    for kind, t in starts:
        out[kind, AT_Z].append((t, tm.z_arrive))
        out[kind, AT_REPLICA].append((t, rep))


@dataclass(frozen=True, slots=True)
class Verdict:
    linked: bool  # the true sender, with posterior >= threshold
    wrong: bool  # another sender named with posterior >= threshold
    degree: float


class Adversary:
    def __init__(self, net: Network, samples: Samples, batch: float, latest: float,
                 sightings: list[Sighting], unseen_rate: float, size_prior: dict[int, float],
                 senders: int, threshold: float) -> None:
        """`batch`: the interval B (0: none); `latest`: the longest link latency -- with B
        above it, deliveries fall just after their tick and the tick model applies."""
        self.share = net.share
        self.batch = batch if batch > latest else 0.0
        self.dens: dict[tuple[int, int], Density] = {}
        self.ticks: dict[tuple[int, int], TickModel] = {}
        for key, pairs in samples.items():
            if self.batch and key != (STREAM, AT_Z):  # X -> Z is latency alone
                self.ticks[key] = TickModel(pairs, self.batch)
            else:
                self.dens[key] = Density([to - te for te, to in pairs])
        self.window = {key: (m.lo, m.hi) for key, m in self.dens.items()}
        self.window.update({key: (m.lo, m.hi) for key, m in self.ticks.items()})
        # where in the interval deliveries are seen (relative to the tick)
        self.phase = {obs: Density([to % self.batch for key, pairs in samples.items()
                                    if key == (STREAM, obs) for _, to in pairs], 100)
                      for obs in (AT_Z, AT_REPLICA)} if self.batch else {}
        self.unseen_rate, self.size_prior = unseen_rate, size_prior
        self.senders, self.threshold = senders, threshold
        self.sightings = sightings
        index: list[list[tuple[float, int]]] = [[] for _ in KINDS]
        for i, s in enumerate(sightings):
            for kind, t in s.events:
                index[kind].append((t, i))
        for entries in index:
            entries.sort()
        self.times = [[t for t, _ in entries] for entries in index]
        self.owners = [[i for _, i in entries] for entries in index]

    def timing(self, kind: int, o: Observation, t: float) -> float:
        """The likelihood (per second) of delivery o at o.t given an event of `kind` at t."""
        key = (kind, o.kind)
        tick = self.ticks.get(key)
        if tick is None:
            return self.dens[key](o.t - t)
        return tick(o.t, t) * self.phase[o.kind](o.t % self.batch)

    def weight(self, s: Sighting, o: Observation) -> float:
        kind, t = max(s.events, key=lambda e: e[1])  # the latest says the most
        w = self.timing(kind, o, t)
        if w <= 0 or (s.key >= 0 and o.key >= 0 and s.key != o.key):
            return 0.0
        if s.z >= 0:
            if s.z != o.z:
                return 0.0
        else:
            w *= self.share[o.z]
        if o.prev >= 0:
            if s.pre_z >= 0:
                if s.pre_z != o.prev:
                    return 0.0
            else:
                w *= self.share[o.prev]
        if s.size >= 0:
            return w if s.size == o.size else 0.0
        return w * self.size_prior.get(o.size, 0.0)

    def unseen(self, o: Observation) -> float:
        """U: the weight of the sends no hostile node saw the sender of."""
        u = self.unseen_rate * self.share[o.z] * self.size_prior.get(o.size, 0.0)
        if self.batch:
            u *= self.batch * self.phase[o.kind](o.t % self.batch)
        if o.prev >= 0:
            u *= self.share[o.prev]
        return u

    def score(self, o: Observation, sender: int, own: Sighting | None = None) -> Verdict:
        """The posterior over senders for delivery `o`; `own` is a sighting not in the index
        (a history's send placed in the main run's traffic)."""
        near: set[int] = set()
        for kind in KINDS:
            first, last = self.window[kind, o.kind]
            times = self.times[kind]
            lo = bisect.bisect_left(times, o.t - last)
            hi = bisect.bisect_right(times, o.t - first)
            near.update(self.owners[kind][lo:hi])
        best: dict[int, float] = {}
        candidates = [self.sightings[i] for i in sorted(near)]
        if own is not None:
            candidates.append(own)
        for s in candidates:
            w = self.weight(s, o)
            if w > best.get(s.sender, 0.0):
                best[s.sender] = w
        unseen = self.unseen(o)
        if not best:
            return Verdict(False, False, 1.0)
        top = max(best, key=lambda k: (best[k], -k))
        posterior = best[top] / (sum(best.values()) + unseen)
        named = posterior >= self.threshold
        degree = entropy_degree(list(best.values()), unseen, self.senders)
        return Verdict(named and top == sender, named and top != sender, degree)
