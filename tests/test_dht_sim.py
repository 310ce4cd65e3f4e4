"""Whole-network DHT simulations: lookups on tables built by real joins, with and without
unannounced crashes, and the S/Kademlia disjoint-path experiment at small scale.

Run with `-s` to see the hop histograms. The 1,000-node network is built once per module (in
its own trio run under a MockClock; it holds no trio objects) and shared by the tests below.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing

from anonmail.experiments.lookup import run as lookup_run
from anonmail.experiments.lookup.model import ExperimentConfig
from anonmail.experiments.lookup.report import format_report
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario, sim_params

JOINED_NODES = 1000
K = 20


def _run(async_fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(async_fn, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture(scope="module")
def joined() -> Iterator[Scenario]:
    """1,000 nodes, each joined through a real bootstrap (introduce, own-id lookup, refresh of
    the buckets farther than its closest neighbour, Kademlia §2.3) via a random earlier node."""
    sc = Scenario(JOINED_NODES, seed=2024, params=sim_params(k=K))

    async def build() -> None:
        with trio.fail_after(7 * 86400):  # virtual seconds
            await sc.build("join")

    _run(build)
    yield sc
    sc.restart_all()


def _histogram(title: str, hops: Counter[int]) -> None:
    total = sum(hops.values())
    print(f"\n{title}")
    for h in sorted(hops):
        print(f"  {h:2d} hops: {hops[h]:5d}  {'#' * round(60 * hops[h] / total)}")


async def _exact_rate(sc: Scenario, lookups: int, seed: int, title: str) -> float:
    with trio.fail_after(30 * 86400):
        runs = await sc.run_lookups(lookups, SeededRng(seed), k=K)
    rate = sum(run.exact for run in runs) / lookups
    hops = Counter(run.result.hops for run in runs)
    _histogram(f"{title}: exact {100 * rate:.1f}% of {lookups} lookups (d=8, k={K})", hops)
    return rate


async def test_joined_network_lookups_are_exact(joined: Scenario,
                                                autojump_clock: trio.testing.MockClock) -> None:
    assert await _exact_rate(joined, 200, 1, "1,000 joined nodes") >= 0.99


@pytest.mark.slow
async def test_joined_network_lookups_are_exact_1000_keys(
        joined: Scenario, autojump_clock: trio.testing.MockClock) -> None:
    assert await _exact_rate(joined, 1000, 2, "1,000 joined nodes") >= 0.99


async def test_lookups_find_the_live_closest_after_crashes(
        joined: Scenario, autojump_clock: trio.testing.MockClock) -> None:
    """20% of the nodes crash without a word; nobody's table knows. Lookups must still return
    exactly the k closest *live* nodes (dead ones time out and are skipped)."""
    joined.crash(0.2)
    try:
        assert len(joined.live()) == JOINED_NODES - JOINED_NODES // 5
        assert await _exact_rate(joined, 200, 3, "1,000 joined nodes, 20% crashed") >= 0.99
    finally:
        joined.restart_all()


@pytest.mark.threat("T-ECLIPSE")
def test_skademlia_disjoint_paths_beat_colluders() -> None:
    """S/Kademlia §5 at small scale: 1,500 nodes, k = 16, colluders answering FIND_NODE only
    with colluders. With d = 8 disjoint paths nearly every lookup still finds the closest honest
    node at m = 0.2 and m = 0.3, and d = 8 beats plain Kademlia (d = 1) at m = 0.3. alpha = 1 per
    path, as in the paper's simulator, where one lying answer can steer a path."""
    config = ExperimentConfig(nodes=1500, lookups=150, k=16, alpha=1, hostile=(0.2, 0.3),
                              paths=(1, 8), seed=5)
    report = lookup_run.run(config)
    print("\n" + format_report(report))
    assert report.cell(0.2, 8).success_rate >= 0.99
    assert report.cell(0.3, 8).success_rate >= 0.97
    assert report.cell(0.3, 8).success_rate > report.cell(0.3, 1).success_rate + 0.05


def test_plain_experiment_and_reproducibility() -> None:
    """Plain mode matches the oracle, and a run replays exactly from its seed."""
    config = ExperimentConfig(nodes=400, lookups=40, k=8, paths=(1, 4), seed=9)
    first = lookup_run.run(config, plain=True)
    again = lookup_run.run(config, plain=True)
    print("\n" + format_report(first))
    assert [(c.exact, c.hops, c.requests) for c in first.cells] == [
        (c.exact, c.hops, c.requests) for c in again.cells]
    assert all(c.exact_rate >= 0.95 for c in first.cells)
