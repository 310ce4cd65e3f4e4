"""Seeding trio's scheduler (sim/determinism.py): the same seed replays the same interleaving,
and a trio that keeps its scheduling RNG elsewhere is a loud error, not a silent no-op.

Without the seed, `anonmail sim mail --nodes 100 --messages 200 --jobs 1` gave different wire
and repair counts on every run (tasks woken together run in an order trio draws at random);
the mail experiment's own replay test is in test_mail_reliability.py.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from anonmail.errors import LocalError
from anonmail.sim import determinism


def interleaving(seed: int) -> list[int]:
    """The order in which 8 tasks, started together and yielding together, get to run."""
    order: list[int] = []

    async def worker(i: int) -> None:
        for _ in range(3):
            await trio.sleep(1)  # all wake at the same virtual instant: a tie for trio to break
            order.append(i)

    async def main() -> None:
        determinism.seed_scheduler(seed)
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(worker, i)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return order


def test_the_same_seed_gives_the_same_interleaving() -> None:
    assert interleaving(7) == interleaving(7)
    # ... and the seed is what decides it: other seeds break the ties otherwise.
    assert len({tuple(interleaving(seed)) for seed in range(6)}) > 1


def test_a_moved_scheduling_rng_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(trio._core._run, "_r")
    with pytest.raises(LocalError, match="cannot seed trio's scheduler"):
        determinism.seed_scheduler(1)
