"""One lookup per key per operation: a `Lookup` that remembers its results for one operation.

A send looked its body key up twice (once to size the fragment split, once to STORE), a check
looked its inbox up for the READ and again for the ACK, a retrieval its body key for the FETCH
and again for the DELETE (issue 11: about a third of a delivery's lookups). `OperationLookups`
wraps the node's `Lookup` (a `DhtNode`, or lookups through an anonymizer) for the length of one
user operation: the first lookup of a key is made, later ones reuse its result, and concurrent
lookups of one key wait for the one in flight instead of making their own.

Invariants (the liveness rules that keep a reused result correct):
* a result lives only as long as the operation: the next send, check or retrieval looks up
  afresh, so churn between operations is seen as before;
* a caller that found nodes of a result dead or refusing (`stale(key)`: store/client.py does so
  after every replication round that had failures) gets a fresh lookup next time, which is what
  seed 002 §3.1 step 6 asks: "ask for a fresh set and retry";
* a result for a larger k serves a request for a smaller one (the first n of the k closest are
  the n closest), never the other way round;
* a result serves every key of its `ids.lookup_home` (an address's inbox, request inbox and
  certificate): their closest nodes are the same, in the same order (records/ids.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import trio

from anonmail.clock import Clock
from anonmail.dht.lookup import LookupResult
from anonmail.errors import (
    Refusal,
    Refused,
    RemoteProtocolError,
    TransportError,
    UserError,
)
from anonmail.records import ids
from anonmail.store.client import Lookup

T = TypeVar("T")


class OperationLookups:
    """`Lookup` for one operation (module docstring)."""

    def __init__(self, dht: Lookup) -> None:
        self.dht = dht
        self.made = 0  # lookups actually made
        self.reused = 0  # lookups answered from a result of this operation
        self._results: dict[bytes, dict[int | None, LookupResult]] = {}  # key -> k -> result
        self._pending: dict[tuple[bytes, int | None], trio.Event] = {}

    async def lookup(self, key: bytes, k: int | None = None) -> LookupResult:
        key = ids.lookup_home(key)
        while True:
            held = self._results.get(key, {})
            hit = next((r for made, r in held.items() if _covers(made, k)), None)
            if hit is not None:
                self.reused += 1
                return hit
            waiting = self._pending.get((key, k))
            if waiting is None:
                break
            await waiting.wait()  # someone is looking it up: use theirs (or make our own)
        done = self._pending[(key, k)] = trio.Event()
        try:
            self.made += 1
            result = await self.dht.lookup(key, k)
            self._results.setdefault(key, {})[k] = result
            return result
        finally:
            del self._pending[(key, k)]
            done.set()

    def stale(self, key: bytes) -> None:
        """Nodes of the result for `key` failed: the next lookup of it is made afresh."""
        key = ids.lookup_home(key)
        self._results.pop(key, None)
        below = getattr(self.dht, "stale", None)  # a RecentLookups underneath forgets it too
        if below is not None:
            below(key)


async def looking_ahead(lookups: OperationLookups, keys: Iterable[bytes], k: int,
                        work: Callable[[], Awaitable[T]]) -> T:
    """`work()`, while `lookups` looks the independent `keys` of the operation up at once (a
    send: the recipients' certificates, the body, the inboxes; issue 11). The steps of `work`
    that need a key take its result, or wait for the lookup in flight, instead of looking it
    up one after the other. Lookups still running when `work` ends are abandoned; one that
    fails is simply made again by the step that needs it. `work`'s own exception propagates
    as itself (not in an exception group)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    async def ahead(key: bytes) -> None:
        # A failure here is not reported: the step that needs the key looks it up again.
        with contextlib.suppress(RemoteProtocolError, Refusal, Refused, TransportError,
                                 UserError):
            await lookups.lookup(key, k)

    async with trio.open_nursery() as nursery:
        for key in dict.fromkeys(keys):
            nursery.start_soon(ahead, key)
        try:
            outcome.append(await work())
        except Exception as e:  # re-raised below, outside the nursery
            failure.append(e)
        nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return outcome[0]


def _covers(have: int | None, want: int | None) -> bool:
    """Does a result for k = `have` answer a request for k = `want` (None: the DHT's own k)?"""
    if have == want:
        return True
    if have is None or want is None:
        return False  # the DHT's k is not known here: only the same request is reused
    return have >= want


class RecentLookups:
    """A `Lookup` that keeps, for the keys it is told to keep, a result for `ttl` seconds
    across operations: the agent's own inboxes, which every check looks up again (issue 11).

    Liveness: a result is dropped when any node of it failed (`stale`, as `OperationLookups`),
    and after `ttl`, so a node that joined nearer the key is read from within `ttl` of joining;
    until then an entry appended only to it waits for the next lookup (the other replicas hold
    it too unless r of them changed at once)."""

    def __init__(self, dht: Lookup, clock: Clock, keep: Iterable[bytes], ttl: float) -> None:
        self.dht = dht
        self.clock = clock
        self.keep = frozenset(ids.lookup_home(key) for key in keep)
        self.ttl = ttl
        self._results: dict[tuple[bytes, int | None], tuple[float, LookupResult]] = {}

    async def lookup(self, key: bytes, k: int | None = None) -> LookupResult:
        key = ids.lookup_home(key)
        if key not in self.keep:
            return await self.dht.lookup(key, k)
        now = self.clock.now()
        hit = self._results.get((key, k))
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        result = await self.dht.lookup(key, k)
        self._results[(key, k)] = (now, result)
        return result

    def stale(self, key: bytes) -> None:
        key = ids.lookup_home(key)
        for held in [h for h in self._results if h[0] == key]:
            del self._results[held]
