"""The S/Kademlia lookup experiment (Baumgart & Mies 2007, §5, Figure 4), and a plain variant:
what is measured, and the records it is reported in.

Hardened run: N nodes, a fraction m of them colluding adversaries (`sim.adversary.Collusion`:
FIND_NODE answered only with colluders closest to the target). For each m and each number of
disjoint paths d, honest nodes look up random keys; a lookup succeeds when its result holds the
true closest honest node to the key (the node that would hold the data). The paper's claim to
reproduce: with d = 8 and m = 0.2, nearly every lookup still succeeds, while d = 1 (plain
Kademlia) degrades fast.

Plain run: no adversaries; reports the exact-match rate (result = the true k closest live nodes,
ourselves included) and the hop histogram per d.

Invariants: one `Cell` per (m, d), its rates derived from its counts (0 for no lookups); a
`Report` holds one cell per (m, d) of the config (plain: m = 0 only). All records are frozen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from anonmail.sim.scenario import Bootstrap


@dataclass(frozen=True)
class ExperimentConfig:
    nodes: int = 10_000
    lookups: int = 500  # per (m, d) cell: ~2 minutes for the default table on 2 cores
    k: int = 16
    alpha: int = 3  # requests in flight per path
    hostile: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    paths: tuple[int, ...] = (1, 2, 4, 8)
    seed: int = 1
    bootstrap: Bootstrap = "oracle"


@dataclass(frozen=True)
class Cell:
    """The lookups of one (hostile fraction m, disjoint paths d)."""

    m: float
    d: int
    lookups: int = 0
    successes: int = 0  # hardened run: closest honest node found
    exact: int = 0  # plain run: result == true k closest
    hops: Counter[int] = field(default_factory=Counter)
    requests: int = 0

    @property
    def success_rate(self) -> float:
        return self.successes / self.lookups if self.lookups else 0.0

    @property
    def exact_rate(self) -> float:
        return self.exact / self.lookups if self.lookups else 0.0

    @property
    def mean_hops(self) -> float:
        return sum(h * n for h, n in self.hops.items()) / self.lookups if self.lookups else 0.0

    @property
    def mean_requests(self) -> float:
        return self.requests / self.lookups if self.lookups else 0.0


@dataclass(frozen=True)
class Report:
    config: ExperimentConfig
    plain: bool
    cells: tuple[Cell, ...]
    virtual_seconds: float = 0.0

    def cell(self, m: float, d: int) -> Cell:
        return next(c for c in self.cells if c.m == m and c.d == d)
