"""Metrics of a simulated network (DESIGN.md §9): what went over the wire, and totals of
per-node counters.

`WireMeter` is a `SimWorld` policy that lets every message through and counts it per (category,
type): category "mail" for messages sent while a workload operation runs (`OPERATION` set: the
simulated network runs a request's handler in its caller's task, so what a go-between or a
storage node sends on the agent's behalf counts too) or, outside one, to or from one of the
`agents`; "upkeep" for everything else (nodes republishing, repairing, joining). It encodes
one message in `sample_every` of each (category, type) with `wire.encode` and estimates bytes as
count x mean sampled size, so a run with `encode=False` still reports bytes on the wire.

`add_counts(total, part)` adds a counter dataclass (`StoreStats`, `DropStats`, ...) field by
field into another of the same type.

Invariants: the meter never vetoes a message and never changes one; with `sample_every = 1`
its byte figures are exact; counts are independent of `sample_every`.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from anonmail import wire
from anonmail.sim.network import SimNetwork

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Category = tuple[str, str]  # (category, message type name)
# The category of what the current task sends: set by a workload around its operations.
OPERATION: contextvars.ContextVar[str | None] = contextvars.ContextVar("sim_operation",
                                                                       default=None)
_Counts = TypeVar("_Counts", bound="DataclassInstance")


def add_counts(total: _Counts, part: _Counts) -> _Counts:
    """Add every field of the counter dataclass `part` into `total`; returns `total`."""
    for f in fields(part):
        setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
    return total


class WireMeter:
    """A world policy that lets everything through and counts it (module docstring)."""

    def __init__(self, agents: set[bytes], sample_every: int = 8) -> None:
        self.agents = agents
        self.sample_every = max(1, sample_every)
        self.counts: Counter[Category] = Counter()
        self.sampled: Counter[Category] = Counter()
        self.sampled_bytes: Counter[Category] = Counter()

    def __call__(self, src: SimNetwork, dst: SimNetwork, msg: Any) -> bool:
        cat = OPERATION.get()
        if cat is None:
            cat = "mail" if src.node_id in self.agents or dst.node_id in self.agents else "upkeep"
        kind = (cat, type(msg).__name__)
        n = self.counts[kind]
        self.counts[kind] = n + 1
        if msg is not None and n % self.sample_every == 0:
            self.sampled[kind] += 1
            self.sampled_bytes[kind] += len(wire.encode(msg))
        return True

    def absorb(self, other: WireMeter) -> None:
        """Add another meter's counts and samples (meters of independent networks)."""
        self.counts.update(other.counts)
        self.sampled.update(other.sampled)
        self.sampled_bytes.update(other.sampled_bytes)

    def messages(self, cat: str) -> int:
        return sum(n for (c, _), n in self.counts.items() if c == cat)

    def bytes(self, cat: str | None = None) -> float:
        """Estimated bytes of a category (all: None): per (category, type), count x mean
        sampled size."""
        return sum(self.bytes_by_type(cat).values())

    def bytes_by_type(self, cat: str | None = None) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, n in self.counts.items():
            if (cat is None or k[0] == cat) and self.sampled[k]:
                out[k[1]] = out.get(k[1], 0.0) + n * self.sampled_bytes[k] / self.sampled[k]
        return out
