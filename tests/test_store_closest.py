"""`store.client.closest(dht, key, r)`: the mail layer's lookups ask for r nodes, not the routing
k (issue 11), and still find exactly the r closest live nodes when many nodes have crashed
without a word (dht/lookup.py "Dead entries": answers widen by the failures met). Fetching and
deleting look farther than the r closest only when the r did not serve (a lookup for r + 4
costs 2.4x one for r at 1,000 nodes)."""

from __future__ import annotations

from typing import Any, cast

import trio
from storegrid import R as GRID_R
from storesim import DAY, TIMEOUT, Sim
from storesim import sim_fixture as sim_fixture  # the `sim` fixture
from trio.testing import MockClock

from anonmail.dht.lookup import LookupResult
from anonmail.net.base import Peer
from anonmail.records import ids
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario, sim_params
from anonmail.store.client import closest, delete_all, fetch_any, store_replicated
from anonmail.store.messages import Delete, Fetch, NotFound, ObjectKind, blob_digest, delete_hash

R = 8
assert GRID_R == R


async def test_r_closest_are_exact_with_a_third_crashed_and_cheaper_than_k(
        autojump_clock: MockClock) -> None:
    scenario = Scenario(300, seed=3, params=sim_params(k=20))
    with trio.fail_after(3600):
        await scenario.build("oracle")
        scenario.crash(0.3)
        rng = SeededRng(4)
        asked_r = asked_k = 0
        for _ in range(25):
            node, key = scenario.random_node(rng), scenario.random_key(rng)
            before = node.dht.stats.requests
            found = await closest(node.dht, key, R)
            asked_r += node.dht.stats.requests - before
            truth = [c.node_id for c in scenario.oracle(key, R)]
            assert [c.node_id for c in found] == truth
            before = node.dht.stats.requests
            await node.dht.lookup(key)  # the routing k = 20, as before issue 11
            asked_k += node.dht.stats.requests - before
    assert asked_r * 2 < asked_k  # r = 8 converges with well under half the requests


# -- widening only on need (fetch_any, delete_all) -------------------------------------------------


class CountingLookup:
    """The node's DHT, recording the k of every lookup made through it."""

    def __init__(self, dht: Any) -> None:
        self.dht = dht
        self.ks: list[int | None] = []

    async def lookup(self, key: bytes, k: int | None = None) -> LookupResult:
        self.ks.append(k)
        return cast(LookupResult, await self.dht.lookup(key, k))


def _serve_nothing(node: Any) -> None:
    honest = node.services.handle

    async def forgetful(peer: Peer, msg: Any, honest: Any = honest) -> Any:
        if isinstance(msg, Fetch | Delete):
            return NotFound()
        return await honest(peer, msg)

    node.net.set_handler(forgetful)


async def test_fetch_widens_only_when_no_replica_has_it(sim: Sim,
                                                        autojump_clock: MockClock) -> None:
    key = ids.body_key("<widen@anonmail>")
    with trio.fail_after(TIMEOUT):
        writer = sim.node(20)
        await store_replicated(writer.net, writer.dht, key, ObjectKind.BODY, b"body", DAY, [],
                               R + 2)  # two older nodes beyond the r closest hold it too
        reader = sim.node(21)
        dht = CountingLookup(reader.dht)
        digest = blob_digest(b"body")
        assert await fetch_any(reader.net, dht, key, R, digest=digest, widen=4) == b"body"
        assert dht.ks == [R]  # found among the r closest: no wider lookup
        for holder in sim.closest(key)[:R]:
            _serve_nothing(holder)
        dht.ks.clear()
        assert await fetch_any(reader.net, dht, key, R, digest=digest, widen=0) is None
        assert await fetch_any(reader.net, dht, key, R, digest=digest, widen=4) == b"body"
        assert dht.ks == [R, R, R + 4]


async def test_delete_widens_unless_all_r_dropped_the_right(sim: Sim,
                                                            autojump_clock: MockClock) -> None:
    secret = b"s" * 32
    with trio.fail_after(TIMEOUT):
        writer = sim.node(20)
        plain, moved = ids.body_key("<plain@anonmail>"), ids.body_key("<moved@anonmail>")
        for key in (plain, moved):
            await store_replicated(writer.net, writer.dht, key, ObjectKind.BODY, b"body", DAY,
                                   [delete_hash(secret)], R + 2)
        dht = CountingLookup(sim.node(21).dht)
        assert await delete_all(sim.node(21).net, dht, plain, secret, R, widen=4) == R
        assert dht.ks == [R]
        _serve_nothing(sim.closest(moved)[0])  # one of the r never got it (the set changed)
        dht.ks.clear()
        assert await delete_all(sim.node(21).net, dht, moved, secret, R, widen=4) == R + 4
        assert dht.ks == [R, R + 4]
        assert not (sim.holders(moved) - {sim.closest(moved)[0].node_id})
