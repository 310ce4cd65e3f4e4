"""One lookup per key per operation (anonmail/store/lookups.py), and what it saves a delivery."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import assume, given
from hypothesis import strategies as st

from anonmail.dht.lookup import LookupResult
from anonmail.errors import TransportError, UserError
from anonmail.records import ids
from anonmail.store.lookups import OperationLookups, RecentLookups, looking_ahead


def _home(c: bytes) -> bytes:
    """A key of 32 bytes `c` that is its own `ids.lookup_home` (the wrappers look those up)."""
    return ids.lookup_home(c * 32)


class Counting:
    """A `Lookup` that takes one virtual second and counts what it is asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, int | None]] = []

    async def lookup(self, key: bytes, k: int | None = None) -> LookupResult:
        self.asked.append((key, k))
        await trio.sleep(1)
        return LookupResult(key, (), len(self.asked), 0, 0, 0, 0, 1)


async def test_a_key_is_looked_up_once_per_operation(
        autojump_clock: trio.testing.MockClock) -> None:
    dht = Counting()
    op = OperationLookups(dht)
    first = await op.lookup(_home(b"a"))
    assert await op.lookup(_home(b"a")) is first
    await op.lookup(_home(b"b"))
    assert dht.asked == [(_home(b"a"), None), (_home(b"b"), None)]
    assert (op.made, op.reused) == (2, 1)
    assert (await OperationLookups(dht).lookup(_home(b"a"))) is not first  # the next operation


async def test_concurrent_lookups_of_a_key_share_one(
        autojump_clock: trio.testing.MockClock) -> None:
    dht = Counting()
    op = OperationLookups(dht)
    got: list[LookupResult] = []

    async def one() -> None:
        got.append(await op.lookup(_home(b"k")))

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(one)
    assert len(dht.asked) == 1 and all(r is got[0] for r in got)


async def test_stale_results_are_looked_up_afresh_and_k_is_respected(
        autojump_clock: trio.testing.MockClock) -> None:
    dht = Counting()
    op = OperationLookups(dht)
    key = _home(b"s")
    await op.lookup(key)
    op.stale(key)  # a replica of that set failed: seed 002 §3.1 step 6 wants a fresh set
    await op.lookup(key)
    await op.lookup(key, 30)  # the DHT's own k is unknown here: a wider set is a new lookup
    await op.lookup(key, 25)  # ... and a narrower one than made is served from it
    assert dht.asked == [(key, None), (key, None), (key, 30)]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


async def test_recent_lookups_keep_only_the_own_inboxes_for_a_while(
        autojump_clock: trio.testing.MockClock) -> None:
    dht, clock = Counting(), Clock()
    own, other = _home(b"i"), _home(b"o")
    recent = RecentLookups(dht, clock, [own], ttl=600)
    first = await recent.lookup(own)
    clock.t += 599
    assert await OperationLookups(recent).lookup(own) is first  # the next check, within ttl
    await recent.lookup(other)
    await recent.lookup(other)  # not an own inbox: looked up every time
    clock.t += 2
    assert await recent.lookup(own) is not first  # ttl over
    op = OperationLookups(recent)
    await op.lookup(own)
    op.stale(own)  # a replica failed in that check: the next check looks up afresh
    await OperationLookups(recent).lookup(own)
    assert [k for k, _ in dht.asked] == [own, other, other, own, own]


# -- a send's independent keys at once (looking_ahead) ---------------------------------------------


class Failing(Counting):
    """Fails the lookup of one key (an unreachable network, say)."""

    def __init__(self, bad: bytes) -> None:
        super().__init__()
        self.bad = bad

    async def lookup(self, key: bytes, k: int | None = None) -> LookupResult:
        if key == self.bad:
            await trio.sleep(0.5)
            raise TransportError("nobody answered")
        return await super().lookup(key, k)


async def test_looking_ahead_runs_the_keys_at_once_and_the_steps_reuse_them(
        autojump_clock: trio.testing.MockClock) -> None:
    dht = Counting()
    op = OperationLookups(dht)
    keys = [bytes([i]) * 31 + bytes([i * 4]) for i in range(3)]  # home keys (records/ids.py)

    async def steps() -> float:
        for key in keys:  # one after the other, as a send's steps are
            await op.lookup(key, 8)
        return trio.current_time()

    with trio.fail_after(10):
        start = trio.current_time()
        ended = await looking_ahead(op, keys, 8, steps)
    assert ended - start == 1  # three one-second lookups side by side, not 3 s
    assert sorted(dht.asked) == [(key, 8) for key in keys] and op.made == 3


async def test_looking_ahead_keeps_the_steps_error_and_ignores_a_failed_prefetch(
        autojump_clock: trio.testing.MockClock) -> None:
    bad = _home(b"x")
    op = OperationLookups(Failing(bad))

    async def fails() -> None:
        await trio.sleep(2)  # the prefetch of `bad` has failed by now: the step is unaffected
        raise UserError("no certificate found")

    with trio.fail_after(10), pytest.raises(UserError):  # itself, not an exception group
        await looking_ahead(op, [bad, _home(b"y")], 8, fails)

    async def needs_bad() -> LookupResult:
        return await op.lookup(bad, 8)  # made again by the step, which sees the error

    with trio.fail_after(10), pytest.raises(TransportError):
        await looking_ahead(op, [bad], 8, needs_bad)


# -- an address's siblings (records/ids.py) --------------------------------------------------------


async def test_an_address_has_one_lookup_for_its_inbox_requests_and_certificate(
        autojump_clock: trio.testing.MockClock) -> None:
    """Issue 11: a send (certificate, then inbox) and a check (inbox and request inbox) make one
    lookup, not two; a body key is its own."""
    address = "bob@example.org"
    keys = [ids.inbox_key(address), ids.requests_key(address), ids.cert_key(address)]
    assert len(set(keys)) == 3 and len({ids.lookup_home(k) for k in keys}) == 1
    dht = Counting()
    op = OperationLookups(dht)
    with trio.fail_after(10):
        results = [await op.lookup(k) for k in keys]
        await op.lookup(ids.body_key("<m1@anon>"))
    assert len(dht.asked) == 2 and all(r is results[0] for r in results)


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=8, max_size=60, unique=True),
       st.text(min_size=1, max_size=20))
def test_siblings_have_the_same_closest_nodes_in_the_same_order(
        nodes: list[bytes], name: str) -> None:
    """Keys that differ only in their two lowest bits order every set of node ids alike unless
    two ids differ only there (records/ids.py)."""
    address = f"x{abs(hash(name))}@example.org"
    assume(len({n[:-1] + bytes([n[-1] & 0xFC]) for n in nodes}) == len(nodes))
    orders = [sorted(nodes, key=lambda n: ids.distance(n, k)) for k in (
        ids.inbox_key(address), ids.requests_key(address), ids.cert_key(address),
        ids.lookup_home(ids.inbox_key(address)))]
    assert all(o == orders[0] for o in orders)
