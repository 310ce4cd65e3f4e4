"""Fan-out: one async call per item, run concurrently, with each item's outcome.

Every replicated operation (STORE on the r closest, READ from every replica, republish to each
new replica, fragments in parallel) is the same shape: start a call per item, bound how many
run at once, and learn per item whether it succeeded. `fan_out` is that shape, once.

Semantics (trio's): the calls start in item order, in one nursery; with `limit`, each call
waits for a slot of a `CapacityLimiter` before it runs, otherwise all run at once. An
exception of a `catch` type becomes that item's `Outcome.error` and the others carry on; any
other exception cancels the remaining calls and propagates (a bug must not be swallowed), as
itself when it is the only one (not wrapped in the nursery's exception group).
Cancelling the caller cancels every call. Outcomes come back in item order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T, R]):
    """What one item's call came to: its value, or the caught error."""

    item: T
    value: R | None = None
    error: Exception | None = None


async def fan_out(items: Sequence[T], call: Callable[[T], Awaitable[R]], *,
                  catch: tuple[type[Exception], ...] = (),
                  limit: int | None = None) -> list[Outcome[T, R]]:
    """`call(item)` for every item, concurrently (at most `limit` at once); outcomes in item
    order. See the module docstring for errors and cancellation."""
    out: list[Outcome[T, R]] = [Outcome(item) for item in items]
    limiter = None if limit is None else trio.CapacityLimiter(max(1, limit))

    async def run(i: int, item: T) -> None:
        try:
            value = await call(item)
        except catch as e:
            out[i] = Outcome(item, None, e)
        else:
            out[i] = Outcome(item, value)

    async def limited(i: int, item: T) -> None:
        assert limiter is not None
        async with limiter:
            await run(i, item)

    try:
        async with trio.open_nursery() as nursery:
            for i, item in enumerate(items):
                nursery.start_soon(run if limiter is None else limited, i, item)
    except BaseExceptionGroup as group:
        # One call's error, as itself: a caller (and the user) sees a UserError as a UserError,
        # not wrapped in the nursery's group. Several at once stay a group.
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0],
                                                         BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise
    return out

