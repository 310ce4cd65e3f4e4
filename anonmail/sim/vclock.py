"""A virtual clock for large simulations: `trio.testing.MockClock(autojump_threshold=0)`,
cheaper per jump.

Under MockClock with autojump, virtual time stands still while any task can run and jumps to the
next deadline when every task is blocked. Trio implements the jump with an extra pass of its run
loop (an empty pass that notices the idleness, then the pass that wakes the sleeper) and a
statistics snapshot per jump, and reads MockClock's time through `time.perf_counter` and
arithmetic; a simulated request costs one jump (issue 11: ~60,000 jumps per lookup cell). This
clock jumps inside `deadline_to_sleep_time`, which trio calls exactly when no task is runnable,
so the sleeper wakes in the same pass, and its time is a plain float.

Invariants: time only moves forward, only to the earliest pending deadline and only when no task
is runnable, by the same float arithmetic as MockClock's jump (`now += deadline - now`), so a
run sees the same instants as under MockClock. Differences: no real-time rate, and no
`trio.testing.wait_all_tasks_blocked` (trio would jump before waking such waiters); trio's
scheduler RNG is drawn once per pass, so a run under this clock draws it in another rhythm
than under MockClock (simulations must not depend on it: distinct instants, see
sim/network.py). A deadlock (no deadline left) waits for ever, as under MockClock.
"""

from __future__ import annotations

import math

import trio

_FOREVER = 86400.0  # trio's own cap on a wait


class VirtualClock(trio.abc.Clock):
    def __init__(self) -> None:
        self._now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        # Trio asks only when every task is blocked: the next thing that can happen is this
        # deadline, so that is where time goes.
        if math.isinf(deadline):
            return _FOREVER
        if deadline > self._now:
            self._now += deadline - self._now
        return 0.0
