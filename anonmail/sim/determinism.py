"""Seeding trio's scheduler, so that a simulation replays exactly from its seed (DESIGN.md §9).

Trio breaks ties between tasks that become runnable in the same scheduling batch (a nursery's
new tasks, requests started in parallel, tasks woken at the same virtual instant) with its own
module-level `random.Random` (`trio._core._run._r`: each batch runs in order or reversed, at
random). Under `MockClock` many tasks wake together, so that choice decides the order in which
they draw from shared RNG streams, touch routing tables and stores: without a seed, two runs of
the same experiment give different figures. Trio offers no public way to seed it (only its
Hypothesis plugin does, through the same attribute), so this is the one place that reaches into
trio's private state.

What seeding does not cover: trio orders cancel scopes whose deadlines are equal by
`id(scope)`, a memory address. Those are the same from run to run of the same code, so a run
still replays exactly, but a change elsewhere in the code that allocates differently can
reorder such ties and shift the figures slightly (observed when the experiments moved out of
sim/: identical output once ties are broken by creation order instead).

Invariants: `seed_scheduler` either seeds that RNG or raises `LocalError` saying what moved; it
never silently does nothing (a silent no-op would make runs unrepeatable without anyone
noticing). Call it inside `trio.run`, before the tasks whose order matters start; the RNG is
process-wide, so the seed holds for the rest of the run (and for later runs in the process
until seeded again).
"""

from __future__ import annotations

import random

import trio

from anonmail.errors import LocalError

_WHERE = "trio._core._run._r"


def seed_scheduler(seed: int) -> None:
    """Seed trio's scheduler tie-breaking RNG (module docstring). Raises `LocalError` if this
    trio version keeps it elsewhere."""
    core = getattr(getattr(trio, "_core", None), "_run", None)
    r = getattr(core, "_r", None)
    if not isinstance(r, random.Random):
        raise LocalError(
            f"cannot seed trio's scheduler: {_WHERE} is not a random.Random in trio "
            f"{trio.__version__}; find where this version keeps its scheduling RNG and update "
            f"anonmail/sim/determinism.py (simulations would not replay from their seed)")
    r.seed(seed)
