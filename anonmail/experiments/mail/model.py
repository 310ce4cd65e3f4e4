"""Mail delivery reliability under hostile storage nodes and churn: the model (issue 3;
DESIGN.md §4, §5, §9; seed 003 §6.1 reliability, seed 002 §2.3-2.4 republish and repair).

The experiment: N storage nodes (sim/storage.py: honest `StoreService`s and a fraction f of
`StorageDropper`s, republishing every hour, under churn) carry the mail of a set of user agents
(`mail.user_agent.MailAgent`, the real send / check / retrieve code) on client connections to
the DHT (their own keys, no endpoints: they never store, and churn does not take them). M
messages with random bodies go from random agents to random other agents at times spread over
`send_hours`; each recipient checks `delay` hours after the send returned (run.py, workload.py).
A message is *delivered* when its recipient retrieved exactly the bytes sent.

This module holds the configuration, what one letter went through (`Letter`), the report of a
run (`MailReport`) and the prediction beside it (seed 003 §6.1, formula (2):
p_disaster = (1 - p_a)^n with n = r):

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

Invariants: the formulas are pure functions of their arguments; results are frozen (a
`Letter` is the one record the workload fills in while the run lasts).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from anonmail.anon.client import AnonStats
from anonmail.sim.anon_adversary import HostileStats
from anonmail.sim.metrics import WireMeter
from anonmail.sim.storage import HOUR, StorageConfig
from anonmail.sim.storage_adversary import DropStats
from anonmail.store.service import StoreStats


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
    anonymous: bool = False  # agents send, check and retrieve through go-betweens (anon/);
    # the droppers are then also hostile go-betweens (sim/anon_adversary.py)
    look_ahead: bool = True  # a send looks its independent keys up at once (MailAgent)

    def storage(self) -> StorageConfig:
        """What the storage nodes of this run do (sim/storage.py)."""
        return StorageConfig(self.nodes, self.droppers, self.lying, self.churn, self.churn_step,
                             self.republish, self.republish_interval, self.republish_paths,
                             relays=self.anonymous, hostile_relays=self.anonymous)


# -- the prediction -------------------------------------------------------------------------------


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


# -- letters and the report -----------------------------------------------------------------------


@dataclass(eq=False)
class Letter:
    """One planned message and what became of it (filled in by the workload)."""

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


def holding(letters: Sequence[Letter]) -> list[float]:
    """How long each letter's body was held: send -> retrieval, or for a lost letter until
    its check."""
    return [x.delay if x.retrieved is None or x.sent is None else x.retrieved - x.sent
            for x in letters]


def prediction_for(config: MailConfig, letters: Sequence[Letter]) -> Prediction:
    """`predict` for a run of `config` whose letters were held as `letters` say."""
    return predict(config.droppers, config.churn, config.replication, holding(letters),
                   config.republish_interval, config.churn_step)


@dataclass(frozen=True)
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
    anon: AnonStats | None = None  # the agents' go-between counts (anonymous runs)
    hostile: HostileStats | None = None  # what the hostile go-betweens did

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
