"""One anonymous send in the linkage model: which nodes a message goes through (`path`) and
when each of them sees it (`timing`), as the sender does it (DESIGN.md §7; seed 002 §4.1
channels, §4.2 delivery; anon/gobetweens.py and anon/client.py; `AnonOptions` turns the
defences on).

A channel to an anonymizer: X = the node closest to a random key (or, with `guard`, the
sender's long-lived guard), asked for Z = the node closest to another random key; with
`cross_check`, Y (closest to a third key, asked through X) answers too and A retries on a
disagreement, charging it to whichever named the farther node -- so only a lying X costs the
guard, and the guard goes after `guard_disagreements` such lies. With hops = 2, A then picks a
middle relay M itself (the node closest to a fresh key), never from X's answer. A hostile X
substitutes a coalition member for Z: a *greedy* X always, a *patient* X only when the Y it
relays to is hostile (otherwise it forwards honestly and stays unseen); without a cross-check
both substitute at no risk. With `disrupt`, a hostile Y contradicts an honest X (a retry, and
Y is charged). With `lookup_leak` (the code before its pool), A finds Y and M by its own DHT
lookup just before use, which queries them: a hostile Y or M learns A. Without it (the code:
Y and M come from a pool found at least 5 minutes earlier) they do not. A second channel, to
W, is built the same way.
Through Z, A looks up the body replicas (cross-checked through W), STOREs the body and APPENDs
the header to the recipient's inbox on its r replicas. Z holds a STORE or APPEND for
Exp(delay_mean) and, with batching, sends it at the next multiple of batch_interval of the
shared clock; lookups are not held.

Times: a link costs its fixed one-way latency (network.py); a DHT lookup costs
`lookup_rounds` round trips, each the slowest of 3 in flight; an attempt costs the longer of X's
answer and Y's (through X); the session key costs a round trip through the channel. The
latency of a send is from its start to the header being on every inbox replica.

Invariants: all randomness comes from the `SeededRng` given; a `Path` depends only on the
sender's state and the rng, a `Timing` on the path, its start time and the rng; `Sender` is the
only state kept between messages (the guard and the lies charged to it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from anonmail.anon.options import AnonOptions
from anonmail.experiments.anonymity.model import AnonConfig, size_class
from anonmail.experiments.anonymity.network import Network
from anonmail.rng import SeededRng

MAX_TRIES = 64  # a sender gives up arguing after this many disagreements in one channel
MAX_HOLD = 60.0  # seconds: the longest Z holds a Forward (anon/messages.py MAX_FORWARD_DELAY_MS)
LAYER_BYTES = 40  # per-hop layer (nonce, tag, next hop) of a channel cell
ENVELOPE_BYTES = 64  # the APPEND request around a header


@dataclass(slots=True)
class Sender:
    node: int
    contacts: list[int]
    guard: int = -1
    guard_until: float = -1.0
    disagreements: int = 0
    guards_used: int = 0


@dataclass(slots=True)
class Path:
    sender: int
    recipient: int
    header: int  # sealed header bytes
    key: int  # the body key (random: only compared for equality)
    z_tries: list[tuple[int, int]]  # (X, Y) of each attempt, the last one used; Y -1 if none
    m: int  # middle relay (-1 with one hop)
    z: int
    w_tries: list[tuple[int, int]]
    mw: int
    w: int
    body: list[int] = field(default_factory=list)  # body replicas, drawn only when they matter

    @property
    def x(self) -> int:
        return self.z_tries[-1][0]

    @property
    def xw(self) -> int:
        return self.w_tries[-1][0]


@dataclass(slots=True)
class Timing:
    abandoned: list[tuple[float, int, int]]  # (time X got the request, X, Y): abandoned tries
    z_used: float  # X got the first request of the Z channel's attempt that was used
    w_used: float  # ... of the W channel's
    stream: float  # X relays the APPEND cell
    z_arrive: float  # Z gets the APPEND
    act: float  # Z sends it to the inbox replicas
    body_obs: float  # the first hostile body replica (or a random one) gets the STORE
    delivery: float  # the header is on every inbox replica


class Protocol:
    def __init__(self, net: Network, options: AnonOptions, config: AnonConfig,
                 rng: SeededRng, guard_rng: SeededRng | None = None) -> None:
        """`guard_rng`: where guards are drawn from (default `rng`); a stream of their own
        gives every row of a run the same first guards (common random numbers)."""
        self.net, self.o, self.rng = net, options, rng
        self.guard_rng = guard_rng or rng
        self.greedy = config.strategy == "greedy"
        self.disrupt = config.disrupt
        self.leak = config.lookup_leak
        self.replication = config.replication
        self.rounds = config.lookup_rounds
        self.header = config.header
        self.overhead = ENVELOPE_BYTES + LAYER_BYTES * (options.hops + 1)

    # -- who ----------------------------------------------------------------------------------

    def channel(self, s: Sender, now: float) -> tuple[list[tuple[int, int]], int, int]:
        """Build one channel: the attempts (X, Y), then the M and Z used."""
        o, net, rng, a = self.o, self.net, self.rng, s.node
        hostile, pick = net.hostile, net.all.pick_not
        tries: list[tuple[int, int]] = []
        z = -1
        for _ in range(MAX_TRIES):
            if o.guard:
                if s.guard < 0 or now >= s.guard_until:
                    s.guard, s.guard_until = pick(self.guard_rng, (a,)), now + o.guard_lifetime
                    s.disagreements = 0
                    s.guards_used += 1
                x = s.guard
            else:
                x = pick(rng, (a,))
            y = pick(rng, (a, x)) if o.cross_check else -1
            tries.append((x, y))
            yh = y >= 0 and hostile[y] == 1
            substitute = hostile[x] == 1 and (self.greedy or not o.cross_check or yh)
            z = net.coalition.pick_not(rng, (x,)) if substitute else -1
            if z >= 0:  # X names a hostile Z: farther from keyZ than the true closest node
                x_lied = disagree = o.cross_check and not yh
            else:
                z = pick(rng, (a, x))
                x_lied = False
                disagree = o.cross_check and yh and self.disrupt and not hostile[x]
            if not disagree:
                break
            # the one that named the farther node is charged (anon/gobetweens.py): a hostile
            # Y contradicting an honest guard costs a retry, never the guard
            if o.guard and x_lied:
                s.disagreements += 1
                if s.disagreements >= o.guard_disagreements:
                    s.guard = -1
        m = pick(rng, (a, tries[-1][0], z)) if o.hops == 2 else -1  # A's own random node
        return tries, m, z

    def path(self, s: Sender, now: float) -> Path:
        rng = self.rng
        u = rng.random  # int(u() * n): a uniform draw below n, cheaper than randbelow
        recipient = s.contacts[int(u() * len(s.contacts))]
        header = self.header[0] + int(u() * (self.header[1] - self.header[0] + 1))
        key = int(u() * (1 << 52))
        z_tries, m, z = self.channel(s, now)
        w_tries, mw, w = self.channel(s, now)
        p = Path(s.node, recipient, header, key, z_tries, m, z, w_tries, mw, w)
        if self.needs_body(p):
            net = self.net
            while len(p.body) < self.replication:
                b = net.all.pick(rng)
                if b not in p.body:
                    p.body.append(b)
        return p

    def needs_body(self, p: Path) -> bool:
        """Do the body replicas matter to the adversary: W hostile and tied to A (it knows the
        body key), or a hostile X of a 2-hop channel matching the exact STORE size (no
        padding)?"""
        h = self.net.hostile
        if self.w_linked(p):
            return True
        return (self.o.hops == 2 and not self.o.padding and h[p.x] == 1 and h[p.m] == 0)

    def sees_a(self, x: int, y: int, m: int) -> bool:
        """Does a hostile node of this channel know A: X always sees A; with the lookup leak,
        so do the Y and M that A found by its own lookup."""
        h = self.net.hostile
        return h[x] == 1 or (self.leak and ((y >= 0 and h[y] == 1) or (m >= 0 and h[m] == 1)))

    def w_linked(self, p: Path) -> bool:
        """W is hostile and the coalition can tie it to A: through X_w (and M_w with two hops)
        or, with the lookup leak, through Y_w or M_w, which know A and where W is."""
        h = self.net.hostile
        if not h[p.w]:
            return False
        yw = p.w_tries[-1][1]
        if h[p.xw] and (self.o.hops == 1 or h[p.mw]):
            return True
        return self.leak and ((yw >= 0 and h[yw] == 1) or (p.mw >= 0 and h[p.mw] == 1))

    def size_key(self, header: int) -> int:
        """What a relay can tell of an APPEND cell's size: its class, or the header's bytes."""
        return size_class(header + self.overhead) if self.o.padding else header

    # -- when ---------------------------------------------------------------------------------

    def lookup(self) -> float:
        """A DHT lookup: `rounds` round trips, each the slowest of 3 (max of 3 uniforms)."""
        net, r = self.net, self.rng
        total = 0.0
        for _ in range(self.rounds):
            total += 2 * (net.lat_lo + net.lat_span * r.random() ** (1 / 3))
        return total

    def act(self, t: float) -> float:
        """When an anonymizer that got a STORE or APPEND at t sends it on (lookups through Z
        and W are not held: anon/client.py times only STORE and APPEND)."""
        o = self.o
        if o.delay_mean > 0:
            t += min(MAX_HOLD, -o.delay_mean * math.log(1.0 - self.rng.random()))
        if o.batch_interval > 0:
            t = math.ceil(t / o.batch_interval) * o.batch_interval
        return t

    def _build(self, a: int, tries: list[tuple[int, int]], m: int, z: int, t: float,
               abandoned: list[tuple[float, int, int]]) -> tuple[float, float, float]:
        """Time the attempts of a channel from t: (ready, one-way channel latency A -> Z, when
        the used attempt's X got its first request); abandoned attempts go to `abandoned`."""
        lat = self.net.lat
        used = t
        for i, (x, y) in enumerate(tries):
            ax = lat(a, x)
            if i < len(tries) - 1:
                abandoned.append((t + ax, x, y))
            else:
                used = t + ax
            d = 2 * ax + self.lookup()
            if y >= 0:
                d = max(d, 2 * ax + 2 * lat(x, y) + self.lookup())
            t += d
        x = tries[-1][0]
        c = lat(a, x) + (lat(x, z) if m < 0 else lat(x, m) + lat(m, z))
        return t + 2 * c, c, used

    def timing(self, p: Path, t0: float) -> Timing:
        net, a, z = self.net, p.sender, p.z
        lat = net.lat
        abandoned: list[tuple[float, int, int]] = []
        z_ready, c, z_used = self._build(a, p.z_tries, p.m, z, t0, abandoned)
        w_ready, cw, w_used = self._build(a, p.w_tries, p.mw, p.w, t0, abandoned)
        ready = max(z_ready, w_ready)
        # the body replicas' lookup through Z, cross-checked through W (never delayed)
        t1 = ready + max(2 * c, 2 * cw) + self.lookup()
        stored = self.act(t1 + c)  # Z STOREs the body on the r replicas
        hostile_body = [b for b in p.body if net.hostile[b]]
        body_obs = stored + (lat(z, hostile_body[0]) if hostile_body
                             else net.lat_lo + net.lat_span * self.rng.random())
        slowest = net.lat_lo + net.lat_span * self.rng.random() ** (1 / self.replication)
        t2 = stored + 2 * slowest + c  # receipts back at A
        z_arrive = t2 + c
        act = self.act(z_arrive)
        delivery = act + max(lat(z, r) for r in net.inbox[p.recipient])
        return Timing(abandoned, z_used, w_used, t2 + lat(a, p.x), z_arrive, act, body_obs,
                      delivery)
