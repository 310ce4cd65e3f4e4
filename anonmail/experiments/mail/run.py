"""Running the mail experiment (model.py): one network, or several in parallel processes.

`run_async` builds the scenario (oracle-filled tables), the storage network (sim/storage.py),
the agents and the letters (workload.py), meters the wire (sim/metrics.py) from the first
letter on, runs the workload while churn goes on, and returns a `MailReport` beside the
prediction. `run` does that in its own `trio.run` under `MockClock(autojump_threshold=0)`, with
a bound on virtual time so that a deadlock fails loudly instead of hanging.

Costs and what is left out, to keep 1,000 nodes x 1,000 messages within minutes: messages are
passed as objects (`encode=False`) unless asked, and a `WireMeter` encodes one message in
`sample_every` per (category, type) to estimate bytes ("estimated" in the report; exact with
`encode=True`); the nodes' republish lookups and the joins' bootstrap lookups use one path
(`republish_paths`; droppers route honestly, so disjoint paths buy nothing against them), while
the agents look up over the network's d = 8 as in production; `run_parallel` spreads the
messages and agents over independent networks of N nodes (`shards`), one process each
(`anonmail sim mail --jobs`), and `merge` adds their reports up.

Invariants: a run is reproducible from `config.seed` alone (SeededRng forks, MockClock,
hash-based latency, and trio's scheduler tie-breaking seeded by `sim.determinism`); agents use
the mail layer unchanged; adversaries are handlers.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import trio
import trio.testing

from anonmail.anon.client import AnonStats
from anonmail.errors import UserError
from anonmail.experiments.mail.model import MailConfig, MailReport, prediction_for
from anonmail.experiments.mail.workload import (
    Seat,
    Workload,
    introduce_letters,
    make_seats,
    plan,
    text,
)
from anonmail.sim.anon_adversary import HostileStats
from anonmail.sim.determinism import seed_scheduler
from anonmail.sim.metrics import WireMeter, add_counts
from anonmail.sim.scenario import Scenario, sim_params
from anonmail.sim.storage import HOUR, StorageNetwork
from anonmail.sim.storage_adversary import DropStats
from anonmail.store.service import StoreStats

Progress = Callable[[str], None]
C = TypeVar("C", AnonStats, HostileStats)


async def run_async(config: MailConfig, tmp: Path, progress: Progress | None = None) -> MailReport:
    """The whole experiment (model.py); agents keep their mail under `tmp`."""
    if config.agents < 2 or config.nodes < config.replication + 2 or config.messages < 1:
        raise UserError("need at least 2 agents, r + 2 nodes and 1 message")
    seed_scheduler(config.seed)
    say = progress if progress is not None else (lambda _: None)
    wall0 = time.perf_counter()
    s = Scenario(config.nodes, seed=config.seed, encode=config.encode,
                 params=sim_params(replication=config.replication))
    await s.build("oracle")
    rng = s.rng.fork("mail")
    async with trio.open_nursery() as services:
        net = StorageNetwork(s, config.storage(), services, rng.fork("storage"))
        try:
            net.populate()
            seats = await make_seats(s, net, config, tmp, rng.fork("agents"))
            say(f"built {config.nodes} nodes and {config.agents} agents in "
                f"{time.perf_counter() - wall0:.1f} s")
            wall1 = time.perf_counter()
            meter = WireMeter({st.agent.net.local_cert.node_id for st in seats},
                              config.sample_every)
            s.world.add_policy(meter)
            bytes0, requests0 = s.world.stats.wire_bytes, s.world.stats.requests
            letters = plan(config, rng.fork("letters"))
            # The workload is mail between correspondents (as after RTS/CTS): `anonmail sim
            # spam` and tests/test_permit_flow.py measure the asking.
            introduce_letters(seats, letters)
            text_rng = rng.fork("texts")
            work = Workload(config, seats, letters, [text(text_rng, x.size) for x in letters])
            async with trio.open_nursery() as churn:
                if config.churn > 0:
                    churn.start_soon(net.churn)
                await work.run()
                churn.cancel_scope.cancel()
            report = MailReport(
                config, letters, prediction_for(config, letters), meter, net.store_stats(),
                net.drop_stats(), net.joined, net.left, work.errors, work.now(), wall1 - wall0,
                time.perf_counter() - wall1,
                s.world.stats.wire_bytes - bytes0 if config.encode else None,
                s.world.stats.requests - requests0, work.swept,
                anon=_anon_stats(seats) if config.anonymous else None,
                hostile=net.hostile_stats if config.anonymous else None)
        finally:
            services.cancel_scope.cancel()
    net.close()
    return report


def _anon_stats(seats: Sequence[Seat]) -> AnonStats:
    total = AnonStats()
    for st in seats:
        if st.anon is not None:
            add_counts(total, st.anon.stats)
    return total


def run(config: MailConfig, progress: Progress | None = None,
        tmp: Path | None = None) -> MailReport:
    """`run_async` in its own trio run under MockClock; agents' mail in a temporary directory
    (in memory, /dev/shm, where there is one)."""

    # A bound on virtual time: a deadlock jumps to it (MockClock) and fails loudly.
    bound = (config.send_hours + config.delay_hours[1]) * HOUR * 4 + 86400

    async def main(where: Path) -> MailReport:
        with trio.fail_after(bound):
            return await run_async(config, where, progress)

    clock = trio.testing.MockClock(autojump_threshold=0)
    if tmp is not None:
        return trio.run(main, tmp, clock=clock)
    shm = Path("/dev/shm")  # noqa: S108 -- a private TemporaryDirectory inside it
    base = str(shm) if shm.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="anonmail-sim-", dir=base) as where:
        return trio.run(main, Path(where), clock=clock)


def shards(config: MailConfig, jobs: int) -> list[MailConfig]:
    """Split a run into `jobs` independent networks of `config.nodes` nodes each, sharing out
    the messages and agents; shard j of seed s uses seed 1000 s + j + 1. Messages are lost
    independently of each other, so the delivery rate over the shards' messages estimates the
    same probability as one network carrying them all (each node carries less load)."""
    jobs = min(jobs, config.agents // 2, config.messages)  # each: 2 agents, 1 message
    if jobs <= 1:
        return [config]
    return [replace(config, messages=config.messages // jobs + (j < config.messages % jobs),
                    agents=config.agents // jobs + (j < config.agents % jobs),
                    seed=1000 * config.seed + j + 1) for j in range(jobs)]


def merge(config: MailConfig, parts: Sequence[MailReport]) -> MailReport:
    """One report over the shards' reports."""
    if len(parts) == 1:
        return parts[0]
    meter = WireMeter(set(), config.sample_every)
    store, drops = StoreStats(), DropStats()
    errors: Counter[str] = Counter()
    for p in parts:
        meter.absorb(p.meter)
        add_counts(store, p.store)
        add_counts(drops, p.drops)
        errors.update(p.errors)
    letters = [x for p in parts for x in p.letters]
    exact = [p.exact_bytes for p in parts]
    return MailReport(
        config, letters, prediction_for(config, letters), meter, store, drops,
        sum(p.joined for p in parts), sum(p.left for p in parts), errors,
        max(p.virtual_seconds for p in parts), max(p.wall_build for p in parts),
        max(p.wall_run for p in parts),
        None if None in exact else sum(x or 0 for x in exact),
        sum(p.world_requests for p in parts), sum(p.swept for p in parts), len(parts),
        _sum_counts([p.anon for p in parts], AnonStats()),
        _sum_counts([p.hostile for p in parts], HostileStats()))


def _sum_counts(stats: Sequence[C | None], total: C) -> C | None:
    """The field-by-field sum of the shards' counters (None when no shard had them)."""
    if all(x is None for x in stats):
        return None
    for x in stats:
        if x is not None:
            add_counts(total, x)
    return total


def run_parallel(config: MailConfig, jobs: int, progress: Progress | None = None) -> MailReport:
    """`run` over `shards(config, jobs)`, one process each (CPU-bound: one core per job)."""
    parts = shards(config, jobs)
    if len(parts) == 1:
        return run(config, progress)
    say = progress if progress is not None else (lambda _: None)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(parts), mp_context=ctx) as pool:
        futures = [pool.submit(run, part) for part in parts]
        done = []
        for i, future in enumerate(futures):
            done.append(future.result())
            say(f"shard {i + 1}/{len(parts)}: {done[-1].delivered}/{len(done[-1].letters)} "
                f"delivered")
    return merge(config, done)
