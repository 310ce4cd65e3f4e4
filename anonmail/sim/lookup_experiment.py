"""The S/Kademlia lookup experiment (Baumgart & Mies 2007, §5, Figure 4), and a plain variant.

Hardened run: N nodes, a fraction m of them colluding adversaries (`sim.adversary.Collusion`:
FIND_NODE answered only with colluders closest to the target). For each m and each number of
disjoint paths d, honest nodes look up random keys; a lookup succeeds when its result holds the
true closest honest node to the key (the node that would hold the data). The paper's claim to
reproduce: with d = 8 and m = 0.2, nearly every lookup still succeeds, while d = 1 (plain
Kademlia) degrades fast.

Plain run: no adversaries; reports the exact-match rate (result = the true k closest live nodes,
ourselves included) and the hop histogram per d.

One network is built per run and reused for every cell: hostile sets are nested (the colluders
at m = 0.1 are among those at m = 0.2), every cell uses the same (initiator, key) pairs, and the
initiators are honest at every m, so cells differ only in m and d. Lookups run one after another
under trio's MockClock; the cost is CPU only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio
import trio.testing

from anonmail.rng import SeededRng
from anonmail.sim.adversary import Collusion
from anonmail.sim.scenario import Bootstrap, IdIndex, Scenario, SimNode, sim_params


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


@dataclass
class Cell:
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


@dataclass
class Report:
    config: ExperimentConfig
    plain: bool
    cells: list[Cell]
    virtual_seconds: float = 0.0

    def cell(self, m: float, d: int) -> Cell:
        return next(c for c in self.cells if c.m == m and c.d == d)


def _pairs(scenario: Scenario, honest: Sequence[SimNode], n: int,
           rng: SeededRng) -> list[tuple[SimNode, bytes]]:
    return [(scenario.random_node(rng, honest), scenario.random_key(rng)) for _ in range(n)]


async def run_hardened(scenario: Scenario, config: ExperimentConfig,
                       progress: Callable[[Cell], None] | None = None) -> list[Cell]:
    """The S/Kademlia table on an already built scenario."""
    rng = scenario.rng.fork("experiment")
    order = list(scenario.nodes)
    for i in range(len(order) - 1, 0, -1):  # Fisher-Yates: who turns hostile first
        j = rng.randbelow(i + 1)
        order[i], order[j] = order[j], order[i]
    worst = round(max(config.hostile, default=0.0) * len(order))
    pairs = _pairs(scenario, order[worst:], config.lookups, rng)
    cells = []
    for m in config.hostile:
        collusion = Collusion(scenario, order[: round(m * len(order))]).install()
        honest = IdIndex(node.contact for node in collusion.honest())
        for d in config.paths:
            cell = Cell(m, d)
            for node, key in pairs:
                result = await node.dht.lookup(key, config.k, paths=d)
                target = honest.closest(key, 1)[0].node_id
                cell.lookups += 1
                cell.successes += target in result.node_ids
                cell.hops[result.hops] += 1
                cell.requests += result.queried
            cells.append(cell)
            if progress is not None:
                progress(cell)
        collusion.uninstall()
    return cells


async def run_plain(scenario: Scenario, config: ExperimentConfig,
                    progress: Callable[[Cell], None] | None = None) -> list[Cell]:
    """Exact-match rate and hops against the oracle, no adversaries."""
    cells = []
    for d in config.paths:
        cell = Cell(0.0, d)
        # The same seed for every d: the same (initiator, key) pairs.
        for run in await scenario.run_lookups(config.lookups, scenario.rng.fork("plain"),
                                              k=config.k, paths=d):
            cell.lookups += 1
            cell.exact += run.exact
            cell.hops[run.result.hops] += 1
            cell.requests += run.result.queried
        cells.append(cell)
        if progress is not None:
            progress(cell)
    return cells


def run(config: ExperimentConfig, *, plain: bool = False,
        on_built: Callable[[Scenario], None] | None = None,
        progress: Callable[[Cell], None] | None = None) -> Report:
    """Build the network and run every cell, in virtual time (trio MockClock)."""

    async def main() -> Report:
        scenario = Scenario(config.nodes, seed=config.seed, params=sim_params(k=config.k,
                                                                    alpha=config.alpha))
        await scenario.build(config.bootstrap)
        if on_built is not None:
            on_built(scenario)
        if plain:
            cells = await run_plain(scenario, config, progress)
        else:
            cells = await run_hardened(scenario, config, progress)
        return Report(config, plain, cells, trio.current_time())

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def format_report(report: Report) -> str:
    cfg = report.config
    ds = cfg.paths
    head = "".join(f"{'d=' + str(d):>9}" for d in ds)
    lines = [f"{cfg.nodes} nodes ({cfg.bootstrap} tables), k={cfg.k}, alpha={cfg.alpha}, "
             f"{cfg.lookups} lookups per cell, seed {cfg.seed}"]

    def table(title: str, rows: Sequence[float], value: Callable[[Cell], str],
              label: Callable[[float], str]) -> None:
        lines.append("")
        lines.append(f"{title:<16}{head}")
        for m in rows:
            cells = [report.cell(m, d) for d in ds]
            lines.append(f"{label(m):<16}" + "".join(f"{value(c):>9}" for c in cells))

    if report.plain:
        lines.append("no adversaries; exact = the result is the true k closest live nodes")
        table("exact %", [0.0], lambda c: f"{100 * c.exact_rate:.1f}", lambda m: "")
        table("mean hops", [0.0], lambda c: f"{c.mean_hops:.2f}", lambda m: "")
        table("mean requests", [0.0], lambda c: f"{c.mean_requests:.1f}", lambda m: "")
        lines.append("")
        lines.append("hop histogram (lookups per number of hops)")
        hops = [h for c in report.cells for h in c.hops]
        lines.append(f"{'hops':<16}{head}")
        for h in range(min(hops, default=0), max(hops, default=-1) + 1):
            lines.append(f"{h:<16}" + "".join(f"{report.cell(0.0, d).hops[h]:>9}" for d in ds))
    else:
        lines.append("success = the result holds the true closest honest node to the key")
        ms = cfg.hostile
        table("success %", ms, lambda c: f"{100 * c.success_rate:.1f}", lambda m: f"m={m:g}")
        table("mean hops", ms, lambda c: f"{c.mean_hops:.2f}", lambda m: f"m={m:g}")
        table("mean requests", ms, lambda c: f"{c.mean_requests:.1f}", lambda m: f"m={m:g}")
    return "\n".join(lines)
