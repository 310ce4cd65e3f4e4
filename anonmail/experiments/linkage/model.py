"""Can an inbox replica group one sender's appends? The model (DESIGN.md §6, §7; threat
T-PERMIT-LINK).

The experiment: one inbox owner and S senders, the owner's contacts (as after RTS/CTS, each
holding enough of the owner's one-time tokens for all its messages), each sending M messages
to the owner at random times over `hours` virtual hours; in two modes: `DIRECT` (each agent on
its own client node talks to the storage nodes itself: `anonmail send --direct`) and `ANONYMOUS`
(the product's default: through go-betweens, anon/client.py, so the storage nodes see Z).

Every inbox replica of the owner logs each APPEND it accepts, as it sees it (`Logged`): arrival
time, the peer node id that sent it, the entry's size, the ttl, the entry id, and the proof's
visible fields (its `PermitProof`'s token key and token expiry). The replica is the adversary:
from its own log only, it groups appends by sender with a rule "two appends that agree on these
features come from one sender". Per replica and rule the score is pairwise (`RuleScore`):

    grouped    the pairs of distinct entries the rule puts together
    precision  the share of grouped pairs that really come from one sender
    recall     the share of the same-sender pairs the rule puts together
    chance     the share of all pairs that come from one sender: what a rule that knows
               nothing achieves (sum n_s (n_s - 1) / (n (n - 1)); about 1/S)

The features (`FEATURES`): peer node id, token expiry, entry size, ttl, token key (equal
values), and arrival gap: two appends that arrived at most tau apart, tau the `gap_quantile`
quantile of the gaps between adjacent arrivals at that replica (one sender's bursts), and
two appends that arrived within `window` seconds (default: the longest a sender reuses one
channel, anon/circuit.py LIFETIME_REUSE: with the peer, "the same Z within its lifetime"). A
combination is the intersection of its features' pairs (e.g. the same peer within tau). Rules
are ranked by `RuleScore.excess`, the standard errors by which their same-sender pairs exceed
chance's share of the pairs they group (0 for a rule that groups everything); the best rule
of a replica is the top one, and the best combination the top one of two or more features.
The precision's interval is Wilson's score interval on (same, grouped); pairs share appends,
so it is somewhat too narrow, and the best of many rules is picked after the fact: both
favour the adversary.

Invariants: pure functions of the logs; a repeat of one entry (the same entry id: a sender's
retry, collapsed by the store) counts once, at its first arrival; results are frozen.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from anonmail.anon.circuit import LIFETIME_REUSE

HOUR = 3600.0
Z95 = 1.959963984540054

PEER = "peer node id"
EXPIRES = "token expires"
SIZE = "entry size"
TTL = "ttl"
KEY = "token key"
GAP = "arrival within tau"
WINDOW = "arrival within the window"
FEATURES = (PEER, EXPIRES, SIZE, TTL, KEY, GAP, WINDOW)


class Mode(enum.Enum):
    DIRECT = "direct"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class LinkageConfig:
    nodes: int = 300
    senders: int = 4  # S
    messages: int = 50  # M, per sender
    hours: float = 6.0  # each sender's sends are uniform over this many virtual hours
    size: tuple[int, int] = (200, 4_000)  # body text bytes, uniform
    replication: int = 8  # r = params.replication
    gap_quantile: float = 0.1  # tau of the arrival-gap feature: this quantile of the gaps
    window: float = LIFETIME_REUSE  # seconds: the arrival-window feature (a channel's lifetime)
    modes: tuple[Mode, ...] = (Mode.DIRECT, Mode.ANONYMOUS)
    send_attempts: int = 3
    retry_pause: float = 600.0
    seed: int = 1


@dataclass(frozen=True)
class Logged:
    """One APPEND to the owner's inbox a replica accepted: what it saw, and (`sender`, which
    the replica does not see) the sender whose token it spends (-1: none of ours)."""

    replica: bytes
    at: float  # virtual seconds
    peer: bytes
    size: int
    ttl: int
    entry_id: bytes
    token_key: bytes | None
    expires: int | None
    sender: int


def wilson(same: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion same/n (n > 0)."""
    p = same / n
    d = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class RuleScore:
    """A grouping rule's pairwise score at one replica (module docstring)."""

    rule: tuple[str, ...]
    grouped: int
    same: int  # grouped pairs from one sender
    same_total: int  # same-sender pairs in the log
    pairs_total: int

    @property
    def name(self) -> str:
        return " + ".join(self.rule)

    @property
    def precision(self) -> float | None:
        return self.same / self.grouped if self.grouped else None

    @property
    def recall(self) -> float:
        return self.same / self.same_total if self.same_total else 0.0

    @property
    def chance(self) -> float:
        return self.same_total / self.pairs_total if self.pairs_total else 0.0

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.same, self.grouped) if self.grouped else None

    @property
    def excess(self) -> float:
        """How many standard errors the rule's same-sender pairs exceed what chance would
        put together (0 for a rule that groups nothing or everything)."""
        c = self.chance
        if not self.grouped or c >= 1.0:
            return 0.0
        expected = self.grouped * c
        if c <= 0.0:
            return math.inf if self.same else 0.0
        return (self.same - expected) / math.sqrt(expected * (1.0 - c))

    @property
    def above_chance(self) -> bool:
        """The precision's 95% interval lies wholly above chance."""
        iv = self.interval
        return iv is not None and iv[0] > self.chance

    def key(self) -> tuple[float, int]:
        """How the adversary ranks rules: the most significant excess over chance first."""
        return self.excess, self.grouped


@dataclass(frozen=True)
class ReplicaResult:
    replica: bytes
    among_closest: bool  # one of the r nodes closest to the inbox key
    appends: int  # accepted APPENDs logged, repeats included
    repeats: int  # of an entry already logged (same entry id: counted once)
    unknown: int  # entries spending no token of ours (left out of the scores)
    entries: int  # distinct entries scored
    senders: int  # senders among them
    tau: float  # the arrival-gap feature's threshold, seconds
    distinct: dict[str, int]  # feature -> distinct values among the entries
    keys_shared: int  # token keys spent on two or more different entries
    peer_is_sender: int  # entries whose peer is the sender's own node
    scores: dict[str, RuleScore]  # per feature
    combination: RuleScore | None  # the best of two or more features

    @property
    def chance(self) -> float:
        return next(iter(self.scores.values())).chance if self.scores else 0.0

    def rules(self) -> list[RuleScore]:
        out = list(self.scores.values())
        if self.combination is not None:
            out.append(self.combination)
        return out


@dataclass(frozen=True)
class ModeResult:
    mode: Mode
    replicas: list[ReplicaResult]
    planned: int  # messages to send
    sent: int  # sends that returned without failure
    failed_attempts: int
    delivered: int  # distinct entries (of ours) that at least one replica accepted
    expiry_values: int  # distinct token expiries over every replica's log
    sizes: tuple[int, ...]  # distinct entry sizes over every replica's log
    ttls: tuple[int, ...]  # distinct ttls over every replica's log
    keys_shared: int  # token keys spent on two different entries, summed over replicas
    virtual_seconds: float
    wall: float = 0.0

    def best(self) -> tuple[ReplicaResult, RuleScore] | None:
        """The most confident rule of any replica (module docstring)."""
        found = [(rep, s) for rep in self.replicas for s in rep.rules() if s.grouped]
        if not found:
            return None
        return max(found, key=lambda x: x[1].key())

    def most_precise(self) -> tuple[ReplicaResult, RuleScore] | None:
        """The rule of any replica with the highest precision (ties: the most pairs)."""
        found = [(rep, s) for rep in self.replicas for s in rep.rules() if s.grouped]
        if not found:
            return None
        return max(found, key=lambda x: (x[1].same / x[1].grouped, x[1].grouped))

    def best_for(self, feature: str | None) -> tuple[ReplicaResult, RuleScore] | None:
        """The replica where `feature` (None: the best combination) scores best."""
        found = [(rep, rep.scores[feature] if feature is not None else rep.combination)
                 for rep in self.replicas]
        some = [(rep, s) for rep, s in found if s is not None]
        if not some:
            return None
        return max(some, key=lambda x: x[1].key())


@dataclass(frozen=True)
class LinkageReport:
    config: LinkageConfig
    results: list[ModeResult] = field(default_factory=list)
    wall: float = 0.0  # seconds, every mode


# -- the adversary's rules ------------------------------------------------------------------------


def first_arrivals(log: Iterable[Logged]) -> tuple[list[Logged], int]:
    """Each entry once, at its first arrival, in arrival order; and how many repeats."""
    seen: dict[bytes, Logged] = {}
    repeats = 0
    for x in sorted(log, key=lambda x: x.at):
        if x.entry_id in seen:
            repeats += 1
        else:
            seen[x.entry_id] = x
    return list(seen.values()), repeats


def _equal_pairs(values: Sequence[Hashable]) -> frozenset[int]:
    n = len(values)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, v in enumerate(values):
        groups[v].append(i)
    return frozenset(i * n + j for g in groups.values() for i, j in itertools.combinations(g, 2))


def quantile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def near_pairs(times: Sequence[float], within: float) -> frozenset[int]:
    """Arrivals (times sorted) at most `within` seconds apart."""
    n = len(times)
    out = []
    for i in range(n):
        j = i + 1
        while j < n and times[j] - times[i] <= within:
            out.append(i * n + j)
            j += 1
    return frozenset(out)


def gap_tau(times: Sequence[float], q: float) -> float:
    """The q-quantile of the gaps between adjacent arrivals (times sorted)."""
    return quantile([times[i + 1] - times[i] for i in range(len(times) - 1)], q)


def relations(entries: Sequence[Logged], q: float,
              window: float) -> tuple[dict[str, frozenset[int]], float]:
    """Per feature, the pairs (i * n + j, i < j, arrival order) it puts together; and tau."""
    getters: dict[str, Callable[[Logged], Hashable]] = {
        PEER: lambda x: x.peer, EXPIRES: lambda x: x.expires, SIZE: lambda x: x.size,
        TTL: lambda x: x.ttl, KEY: lambda x: x.token_key}
    out = {name: _equal_pairs([get(x) for x in entries]) for name, get in getters.items()}
    times = [x.at for x in entries]
    tau = gap_tau(times, q)
    out[GAP] = near_pairs(times, tau)
    out[WINDOW] = near_pairs(times, window)
    return out, tau


def score(rule: tuple[str, ...], pairs: frozenset[int], senders: Sequence[int],
          same_total: int) -> RuleScore:
    n = len(senders)
    same = sum(1 for c in pairs if senders[c // n] == senders[c % n])
    return RuleScore(rule, len(pairs), same, same_total, n * (n - 1) // 2)


def best_combination(rels: dict[str, frozenset[int]], senders: Sequence[int],
                     same_total: int) -> RuleScore | None:
    """The combination of two or more features whose score ranks highest."""
    best: RuleScore | None = None
    names = list(rels)
    for k in range(2, len(names) + 1):
        for rule in itertools.combinations(names, k):
            pairs = frozenset.intersection(*(rels[f] for f in rule))
            if not pairs:
                continue
            s = score(rule, pairs, senders, same_total)
            if best is None or s.key() > best.key():
                best = s
    return best


def analyse(replica: bytes, log: Sequence[Logged], q: float, window: float,
            among_closest: bool, sender_nodes: dict[int, bytes]) -> ReplicaResult:
    """What `replica` can do with its own log (module docstring)."""
    firsts, repeats = first_arrivals(log)
    ours = [x for x in firsts if x.sender >= 0]
    senders = [x.sender for x in ours]
    counts = Counter(senders)
    same_total = sum(c * (c - 1) // 2 for c in counts.values())
    rels, tau = relations(ours, q, window)
    scores = {f: score((f,), rels[f], senders, same_total) for f in FEATURES}
    distinct = {PEER: len({x.peer for x in ours}), EXPIRES: len({x.expires for x in ours}),
                SIZE: len({x.size for x in ours}), TTL: len({x.ttl for x in ours}),
                KEY: len({x.token_key for x in ours})}
    by_key: dict[bytes | None, set[bytes]] = defaultdict(set)
    for x in firsts:
        by_key[x.token_key].add(x.entry_id)
    shared = sum(1 for k, es in by_key.items() if k is not None and len(es) > 1)
    peer_is_sender = sum(1 for x in ours if sender_nodes.get(x.sender) == x.peer)
    return ReplicaResult(replica, among_closest, len(log), repeats, len(firsts) - len(ours),
                         len(ours), len(counts), tau, distinct, shared, peer_is_sender, scores,
                         best_combination(rels, senders, same_total))


def verdict(best: RuleScore | None) -> str:
    """'no better than chance' when the best rule's 95% interval reaches down to chance (the
    best rule: `RuleScore.key`, so no other rule's interval lies above chance either, up to the
    difference between a z-score and Wilson's interval)."""
    if best is None or best.precision is None or best.interval is None:
        return "no better than chance (no rule groups any pair)"
    lo, hi = best.interval
    chance = best.chance
    if not best.above_chance:
        return (f"no better than chance (the best rule's precision {best.precision:.3f} has "
                f"95% interval [{lo:.3f}, {hi:.3f}], which includes chance {chance:.3f})")
    ratio = best.precision / chance if chance else math.inf
    return (f"better than chance: precision {best.precision:.3f} = {ratio:.2f} x chance "
            f"{chance:.3f} (95% interval [{lo:.3f}, {hi:.3f}], +{best.precision - chance:.3f}), "
            f"recall {best.recall:.3f}, by '{best.name}' over {best.grouped} pairs")
