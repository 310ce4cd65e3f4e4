"""Sender-anonymity linkage (issue 8; DESIGN.md §7; seed 002 §4): what is measured, the
formulas it is printed beside, and the records of a run.

The experiment (run.py, protocol.py, adversary.py): N nodes with random 64-bit ids; a coalition
of round(f N) uniformly chosen nodes pools everything its members see; `senders` honest users
send anonymous mail to their contacts at a network-wide Poisson `load` (messages/s), each send
building a channel A -> X [-> M] -> Z (and a second one to W) as `AnonOptions` say. A message
is *linked* when the adversary ties its sender to its recipient:

(a) the seed's rule (seed 002 §4.2, last paragraph): X and Z both hostile (with hops = 2: X, M
    and Z). Beside it, f^2 (the seed's per-message figure) and 3f^2 - 2f^3.
    3f^2 - 2f^3 = P(at least two of X, Y, Z hostile), for three independent picks each hostile
    with probability f. Two of those pairs link by rule (a): X and Y hostile (Y confirms X's
    bogus Z) and X and Z hostile (X honestly finds a Z that happens to be hostile) -- together
    "X and Z hostile, or X and Y hostile" = 2f^2 - f^3, the rate of a *patient* adversary
    (below) with a fresh X. The third pair, Y and Z hostile with X honest, links only through
    the lookup leak (protocol.py: A finds Y by its own lookup, so Y learns A, and it named Z
    itself); the pooled adversary counts that as certain, so with the leak 3f^2 - 2f^3 is the
    certain-link rate of a fresh X against a patient X (one hop, W aside), without it an upper
    bound that over-counts f^2 (1 - f).
    `predicted_a` gives the model's own rate for a fresh X per channel (no guard), in terms of
    h, the coalition's share of the id space (~f; nodes are picked by XOR-cell size):
      greedy (X always substitutes a hostile Z; an honest Y's disagreement makes A retry):
          P = h^2 q / (1 - h (1 - h) [- (1 - h) h if hostile Ys also disrupt])  ~ f^2 (1 + f)
      patient (X substitutes only when the Y it relays to is hostile, else forwards honestly):
          P = (h^2 + h (1 - h) h) q / (1 [- (1 - h) h if disrupting])           ~ 2f^2 - f^3
      no cross-check: P = h q (X substitutes at no risk);
      q = 1 with one hop, h with two (A picks M itself, hostile by chance).
(b) pooled evidence: a Bayesian adversary (adversary.py) scores, for each delivery it sees at a
    hostile inbox replica or a hostile Z, every sender event its first hops saw, by the density
    of the time difference (latency + delay + batching; learnt from a calibration run of the
    same protocol), size-class compatibility and the hop identities it knows, against the
    expected mass of unseen senders at the stated load; it links when the true sender is the
    top candidate with posterior >= `threshold`. Direct evidence counts as certain.
Degree of anonymity (Díaz, Seys, Claessens, Preneel 2002): d = H(posterior) / log2(senders),
averaged over messages (1 for a delivery the adversary did not see, 0 for a certain link).

Invariants: the formulas are pure; every record is frozen; a run is a function of the config.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from anonmail.anon.options import DEFAULT, SIZE_CLASSES, AnonOptions

STRATEGIES = ("greedy", "patient")


@dataclass(frozen=True)
class AnonConfig:
    nodes: int = 1_000
    senders: int = 500  # honest users; each also receives (its inbox on the r closest nodes)
    messages: int = 10_000  # measured messages of the main run
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2)
    load: float = 1.0  # network-wide anonymous messages per second (Poisson)
    replication: int = 8  # r: replicas of a body and of an inbox
    contacts: int = 5  # each sender writes to this many fixed contacts, uniformly
    history: int = 100  # messages in one sender's history (the "chance of >= 1 link" column)
    history_days: float = 20.0  # ... spread over this many days (guards age meanwhile)
    history_senders: int = 500  # senders whose histories are simulated
    calibration: int = 2_000  # messages from which the adversary learns the time densities
    threshold: float = 0.5  # posterior at which the adversary names the sender
    strategy: str = "greedy"  # hostile X: "greedy" or "patient" (module docstring)
    disrupt: bool = False  # a hostile Y contradicts an honest X, forcing a retry
    lookup_leak: bool = False  # A finds Y and M by a lookup just before use (no pool)
    delay_mean: float = 1.0  # the "+ delay" row's delay at Z (seconds)
    batch_interval: float = 5.0  # the "+ batch" row's batching at Z (seconds)
    extra: tuple[tuple[str, AnonOptions], ...] = ()  # more rows (`--also`)
    latency: tuple[float, float] = (0.010, 0.150)  # one-way, per link (sim/network.py)
    lookup_rounds: int = 3  # rounds of a DHT lookup, each the slowest of 3 round trips
    header: tuple[int, int] = (2_048, 3_072)  # sealed header bytes, uniform
    body: tuple[int, int] = (1_000, 200_000)  # body bytes, uniform
    seed: int = 1


@dataclass(frozen=True)
class Variant:
    label: str
    options: AnonOptions


def variants(config: AnonConfig) -> tuple[Variant, ...]:
    """The rows of each fraction: the seed, each defence alone on top of it, the defaults."""
    seed = AnonOptions.seed_only()
    rows = [
        Variant("seed-only", seed),
        Variant("- cross-check", seed.replace(cross_check=False)),
        Variant("+ guard X", seed.replace(guard=True)),
        Variant(f"+ delay {config.delay_mean:g}s", seed.replace(delay_mean=config.delay_mean)),
        Variant(f"+ batch {config.batch_interval:g}s",
                seed.replace(batch_interval=config.batch_interval)),
        Variant("+ 2 hops", seed.replace(hops=2)),
        Variant("+ padding", seed.replace(padding=True)),
        Variant("defaults", DEFAULT),
    ]
    rows += [Variant(label, options) for label, options in config.extra]
    return tuple(rows)


def describe(options: AnonOptions) -> str:
    """A short line naming what `options` turn on."""
    parts = ["Y" if options.cross_check else "no Y"]
    if options.guard:
        parts.append(f"guard {options.guard_lifetime / 86400:g}d/{options.guard_disagreements}")
    parts.append(f"hops {options.hops}")
    if options.delay_mean:
        parts.append(f"delay {options.delay_mean:g}s")
    if options.batch_interval:
        parts.append(f"batch {options.batch_interval:g}s")
    if options.padding:
        parts.append("padding")
    return ", ".join(parts)


# -- formulas -------------------------------------------------------------------------------------


def seed_rule(f: float) -> float:
    """Seed 002 §4.2: X and Z both hostile, f^2 per message."""
    return f * f


def majority(f: float) -> float:
    """3f^2 - 2f^3: at least two of three independent picks X, Y, Z hostile (docstring)."""
    return 3 * f * f - 2 * f ** 3


def predicted_a(h: float, options: AnonOptions, strategy: str, disrupt: bool) -> float | None:
    """Rule (a) per message for a fresh X per channel, h = the coalition's id-space share
    (docstring); None with a guard, whose rate depends on the sender's history."""
    if options.guard:
        return None
    q_m = h if options.hops == 2 else 1.0  # A picks M itself: hostile by chance
    if not options.cross_check:
        return h * q_m
    retry = (1 - h) * h if disrupt else 0.0
    if strategy == "greedy":
        return h * h * q_m / (1 - h * (1 - h) - retry)
    return (h * h + h * (1 - h) * h) * q_m / (1 - retry)


def size_class(n: int) -> int:
    """Index of the smallest of SIZE_CLASSES holding n bytes (len(SIZE_CLASSES) if none)."""
    return bisect.bisect_left(SIZE_CLASSES, n)


# -- a learnt density -----------------------------------------------------------------------------


class Density:
    """A density of a delay (seconds) learnt from samples: a Gaussian kernel estimate
    (Silverman's bandwidth) computed on a grid, so that the posterior does not jump with the
    sampling noise of a histogram. Zero outside the grid; `lo`, `hi` bound the window worth
    searching."""

    def __init__(self, samples: Sequence[float], grid: int = 256) -> None:
        xs = sorted(samples) or [0.0, 1.0]
        n = len(xs)
        mean = sum(xs) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / max(1, n - 1))
        iqr = xs[(3 * n) // 4] - xs[n // 4]
        spread = min(sd, iqr / 1.34) if iqr > 0 else sd
        h = max(0.9 * spread * n ** -0.2, 1e-4)
        self.lo, self.hi = xs[0] - 3 * h, xs[-1] + 3 * h
        w = max((self.hi - self.lo) / grid, h / 20)
        cells = int((self.hi - self.lo) / w) + 1
        counts = [0] * cells
        for x in xs:
            counts[min(cells - 1, int((x - self.lo) / w))] += 1
        r = int(3 * h / w) + 1
        kernel = [math.exp(-0.5 * (k * w / h) ** 2) for k in range(-r, r + 1)]
        norm = sum(kernel) * n * w
        self.step = w
        self.heights = [0.0] * cells
        for i, c in enumerate(counts):
            if c:
                for k, kv in enumerate(kernel):
                    j = i + k - r
                    if 0 <= j < cells:
                        self.heights[j] += c * kv / norm

    def __call__(self, x: float) -> float:
        if x < self.lo or x > self.hi:
            return 0.0
        return self.heights[min(len(self.heights) - 1, int((x - self.lo) / self.step))]


class TickModel:
    """With batching at a shared clock of period B, when a send's delivery is released: the
    probability that a send whose event happened at t_e is delivered at the tick
    floor(t_o / B), i.e. j = that tick - t_e's tick ticks later, given t_e's phase in its own
    interval (`bins` phase bins; the marginal where a bin has few samples). Deliveries bunch just
    after the ticks and every send is phase-locked to them, so the tick, not the exact delay, is
    what timing tells. Learnt from (event time, delivery time) pairs."""

    def __init__(self, pairs: Sequence[tuple[float, float]], batch: float, bins: int = 20,
                 least: int = 30) -> None:
        self.batch, self.bins = batch, bins
        groups: list[dict[int, int]] = [{} for _ in range(bins)]
        overall: dict[int, int] = {}
        for te, to in pairs:
            j = math.floor(to / batch) - math.floor(te / batch)
            g = groups[self._bin(te)]
            g[j] = g.get(j, 0) + 1
            overall[j] = overall.get(j, 0) + 1
        n = sum(overall.values()) or 1
        marginal = {j: c / n for j, c in overall.items()}
        self.table = [{j: c / sum(g.values()) for j, c in g.items()}
                      if sum(g.values()) >= least else marginal for g in groups]
        self.jmin, self.jmax = min(overall, default=0), max(overall, default=0)
        # the event times worth searching: t_o - hi <= t_e <= t_o - lo
        self.lo, self.hi = (self.jmin - 1) * batch, (self.jmax + 1) * batch

    def _bin(self, t: float) -> int:
        return min(self.bins - 1, int((t % self.batch) / self.batch * self.bins))

    def __call__(self, to: float, te: float) -> float:
        j = math.floor(to / self.batch) - math.floor(te / self.batch)
        return self.table[self._bin(te)].get(j, 0.0)


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One configuration at one hostile fraction."""

    label: str
    options: AnonOptions
    messages: int
    linked_a: int
    linked_b: int
    misattributed: int  # the adversary named a wrong sender with posterior >= threshold
    observed: int  # deliveries seen at a hostile inbox replica or a hostile Z
    degree: float  # mean d over the messages
    latency: float  # mean seconds from the start of a send to its header on every replica
    histories: int
    history_a: int  # histories with >= 1 message linked by (a)
    history_b: int  # ... by (b)
    attempts: float  # mean channel attempts per channel (1 = never a disagreement)
    predicted: float | None  # predicted_a, fresh X only

    @property
    def rate_a(self) -> float:
        return self.linked_a / self.messages if self.messages else 0.0

    @property
    def rate_b(self) -> float:
        return self.linked_b / self.messages if self.messages else 0.0

    @property
    def p_history_a(self) -> float:
        return self.history_a / self.histories if self.histories else 0.0

    @property
    def p_history_b(self) -> float:
        return self.history_b / self.histories if self.histories else 0.0


@dataclass(frozen=True)
class FractionResult:
    f: float
    hostile: int  # coalition size round(f N)
    share: float  # h: the coalition's share of the id space
    rows: tuple[Row, ...]

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)


@dataclass(frozen=True)
class AnonymityReport:
    config: AnonConfig
    results: tuple[FractionResult, ...]


def entropy_degree(weights: Sequence[float], unseen: float, senders: int) -> float:
    """d = H / log2(senders) of the posterior that gives each named sender its weight and
    spreads `unseen` evenly over all senders (Díaz et al. 2002)."""
    total = sum(weights) + unseen
    if senders < 2:
        return 0.0
    if total <= 0:
        return 1.0
    u = unseen / (total * senders)
    h = 0.0
    for w in weights:
        p = w / total + u
        if p > 0:
            h -= p * math.log2(p)
    if u > 0:
        h -= (senders - len(weights)) * u * math.log2(u)
    return max(0.0, min(1.0, h / math.log2(senders)))
