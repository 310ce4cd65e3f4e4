"""Running the lookup experiment (model.py) on one simulated network.

One network is built per run and reused for every cell: hostile sets are nested (the colluders
at m = 0.1 are among those at m = 0.2), every cell uses the same (initiator, key) pairs, and the
initiators are honest at every m, so cells differ only in m and d. Lookups run one after another
in virtual time (sim/vclock.py: MockClock(autojump_threshold=0)'s instants, cheaper); the cost is
CPU only.

Invariants: reproducible from `config.seed` (SeededRng forks, virtual time, hash-based latency;
lookups run one at a time, their events at distinct instants, so trio's unseeded tie-breaking
never matters); colluders are installed as handlers and uninstalled after their m.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Sequence

import trio

from anonmail.experiments.lookup.model import Cell, ExperimentConfig, Report
from anonmail.rng import SeededRng
from anonmail.sim.adversary import Collusion
from anonmail.sim.scenario import Bootstrap, IdIndex, Scenario, SimNode, sim_params
from anonmail.sim.vclock import VirtualClock

CellDone = Callable[[Cell], None]


def _pairs(scenario: Scenario, honest: Sequence[SimNode], n: int,
           rng: SeededRng) -> list[tuple[SimNode, bytes]]:
    return [(scenario.random_node(rng, honest), scenario.random_key(rng)) for _ in range(n)]


async def run_hardened(scenario: Scenario, config: ExperimentConfig,
                       progress: CellDone | None = None) -> list[Cell]:
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
            successes, requests, hops = 0, 0, Counter[int]()
            for node, key in pairs:
                result = await node.dht.lookup(key, config.k, paths=d)
                target = honest.closest(key, 1)[0].node_id
                successes += target in result.node_ids
                hops[result.hops] += 1
                requests += result.queried
            cell = Cell(m, d, lookups=len(pairs), successes=successes, hops=hops,
                        requests=requests)
            cells.append(cell)
            if progress is not None:
                progress(cell)
        collusion.uninstall()
    return cells


async def run_plain(scenario: Scenario, config: ExperimentConfig,
                    progress: CellDone | None = None) -> list[Cell]:
    """Exact-match rate and hops against the oracle, no adversaries."""
    cells = []
    for d in config.paths:
        # The same seed for every d: the same (initiator, key) pairs.
        runs = await scenario.run_lookups(config.lookups, scenario.rng.fork("plain"),
                                          k=config.k, paths=d)
        cell = Cell(0.0, d, lookups=len(runs), exact=sum(run.exact for run in runs),
                    hops=Counter(run.result.hops for run in runs),
                    requests=sum(run.result.queried for run in runs))
        cells.append(cell)
        if progress is not None:
            progress(cell)
    return cells


def run(config: ExperimentConfig, *, plain: bool = False,
        on_built: Callable[[Scenario], None] | None = None,
        progress: CellDone | None = None) -> Report:
    """Build the network and run every cell, in virtual time (trio MockClock)."""

    async def main() -> Report:
        scenario = Scenario(config.nodes, seed=config.seed, params=sim_params(k=config.k,
                                                                    alpha=config.alpha))
        await _build(scenario, config.bootstrap)
        if on_built is not None:
            on_built(scenario)
        if plain:
            cells = await run_plain(scenario, config, progress)
        else:
            cells = await run_hardened(scenario, config, progress)
        return Report(config, plain, tuple(cells), trio.current_time())

    try:
        # VirtualClock: MockClock(autojump_threshold=0)'s instants, a cheaper jump (sim/vclock.py).
        return trio.run(main, clock=VirtualClock())
    finally:
        gc.unfreeze()  # what `_build` froze (with anything else frozen) is garbage now, or soon


async def _build(scenario: Scenario, bootstrap: Bootstrap) -> None:
    """Build, then move the network into the garbage collector's permanent generation
    (gc.freeze, undone at the end of `run`): it lives for the whole run, and full collections
    scanning its millions of objects cost more than the lookups' own garbage (issue 11). The
    oracle build runs no other task, so the collector is paused for it and nothing it made is
    scanned at all; a "join" build runs lookups, whose garbage must be collected as usual."""
    if bootstrap != "oracle":
        await scenario.build(bootstrap)
        gc.freeze()
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        await scenario.build(bootstrap)
        gc.freeze()
    finally:
        if was_enabled:
            gc.enable()
