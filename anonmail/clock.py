"""Injected wall-clock time.

Certificates, receipts and owner proofs carry UNIX times; code below the edges reads them from a
`Clock`, never from `time.time()`. In a simulation the wall clock is the virtual trio clock plus a
fixed epoch, so validity windows behave as they would for real.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the UNIX epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class TrioClock:
    """Wall time = `epoch` + trio's current (possibly virtual) time. Call only inside trio.run."""

    def __init__(self, epoch: float = 1_800_000_000.0) -> None:
        self.epoch = epoch

    def now(self) -> float:
        return self.epoch + trio.current_time()


class FixedClock:
    """A clock that says what it is told (sans-I/O tests)."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t
