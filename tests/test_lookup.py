"""Disjoint-path lookups (anonmail/dht/lookup.py) and the DHT node (anonmail/dht/dht_node.py).

The first half drives `DisjointLookup` over a synthetic network (a query function, no sim);
the second runs `DhtNode`s on a small simulated network with full encoding, where one node's
handler is replaced by a hostile one."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from anonmail import crypto
from anonmail.dht.lookup import DisjointLookup, drive
from anonmail.dht.messages import FindNode, FindTags, GetCerts, Nodes, Ping, Pong
from anonmail.dht.routing import AddResult, Contact
from anonmail.dht.tags import answer_naming
from anonmail.errors import RemoteProtocolError
from anonmail.net.base import Peer
from anonmail.records import ids
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.rng import SeededRng
from anonmail.sim.scenario import IdIndex, Scenario, SimNode, make_key, sim_params

NOW = 1_800_000_000.0
PARAMS = sim_params(puzzle_bits=0)


def _contacts(n: int, seed: int) -> list[Contact]:
    rng = SeededRng(seed)
    out = []
    for i in range(n):
        ep = Endpoint(f"198.{18 + (i >> 14) % 2}.{(i >> 6) & 255}.{1 + (i & 63)}", 7000)
        out.append(Contact.of(NodeCert.issue(make_key(rng, PARAMS), (ep,), NOW, PARAMS)))
    return out


NETWORK = _contacts(300, seed=11)
INDEX = IdIndex(NETWORK)


class Synthetic:
    """Every node knows everyone: it answers with the `count` closest to the key (not naming
    the requester). Hostile nodes answer with the hostile nodes closest to the key; dead
    nodes never answer."""

    def __init__(self, me: Contact, hostile: frozenset[bytes] = frozenset(),
                 dead: frozenset[bytes] = frozenset()) -> None:
        self.me = me
        self.hostile = hostile
        self.dead = dead
        self.hostile_index = IdIndex(c for c in NETWORK if c.node_id in hostile)
        self.queried: list[tuple[bytes, int]] = []

    async def query(self, c: Contact, count: int, key: bytes) -> Sequence[Contact] | None:
        self.queried.append((c.node_id, count))
        delay = 0.01 + int.from_bytes(hashlib.blake2b(c.node_id, digest_size=4).digest(),
                                      "big") / 2**32 * 0.2
        if c.node_id in self.dead:
            await trio.sleep(2.0 + delay / 1000)
            return None
        await trio.sleep(delay)
        if c.node_id in self.hostile:
            return self.hostile_index.closest(key, count)
        return [x for x in INDEX.closest(key, count + 1) if x.node_id != self.me.node_id][:count]


async def _run(net: Synthetic, key: bytes, k: int, d: int, alpha: int = 3,
               initial: Sequence[Contact] | None = None) -> DisjointLookup:
    if initial is None:  # a sparse view: every 7th node, the k closest of those
        initial = IdIndex(NETWORK[::7]).closest(key, k)
        initial = [c for c in initial if c.node_id != net.me.node_id]
    lookup = DisjointLookup(key, k, d, alpha, initial, net.me, net.me.node_id)

    async def query(c: Contact, count: int) -> Sequence[Contact] | None:
        return await net.query(c, count, key)

    with trio.fail_after(600):
        await drive(lookup, query)
    return lookup


def test_initial_contacts_are_dealt_round_robin() -> None:
    key = bytes(32)
    initial = INDEX.closest(key, 8)
    me = NETWORK[-1]
    lookup = DisjointLookup(key, 8, 4, 1, initial, None, me.node_id)
    first = lookup.next_queries()
    # alpha = 1: one request per path, to that path's closest initial contact.
    assert [(p, c.node_id) for p, c, _ in first] == [(i, initial[i].node_id) for i in range(4)]
    assert all(count == 8 for _, _, count in first)


@pytest.mark.parametrize("d", [1, 3, 8])
async def test_lookup_finds_the_true_k_closest(autojump_clock: trio.testing.MockClock,
                                               d: int) -> None:
    rng = SeededRng(d)
    for _ in range(10):
        key = rng.bytes(32)
        me = NETWORK[rng.randbelow(len(NETWORK))]
        lookup = await _run(Synthetic(me), key, 10, d)
        assert [c.node_id for c in lookup.result()] == [c.node_id for c in INDEX.closest(key, 10)]
        assert lookup.hops >= 1


async def test_self_is_in_the_result_when_among_the_closest(
        autojump_clock: trio.testing.MockClock) -> None:
    me = NETWORK[5]
    lookup = await _run(Synthetic(me), me.node_id, 6, 2)
    result = lookup.result()
    assert result[0] is me  # distance 0
    assert [c.node_id for c in result] == [c.node_id for c in INDEX.closest(me.node_id, 6)]
    # ... and never queried: a node does not ask itself.


async def test_dead_nodes_are_skipped_and_results_are_the_live_closest(
        autojump_clock: trio.testing.MockClock) -> None:
    rng = SeededRng(21)
    dead = frozenset(c.node_id for c in NETWORK[::4])
    live = IdIndex(c for c in NETWORK if c.node_id not in dead)
    for _ in range(10):
        key = rng.bytes(32)
        me = next(c for c in NETWORK[1::4])
        net = Synthetic(me, dead=dead)
        lookup = await _run(net, key, 10, 4)
        assert [c.node_id for c in lookup.result()] == [c.node_id for c in live.closest(key, 10)]
        # After failures, requests ask for more than k (replies are padded past dead entries).
        counts = [count for _, count in net.queried]
        if any(nid in dead for nid, _ in net.queried):
            assert max(counts) > 10


async def test_closest_crashed_still_yields_k_live_nodes(
        autojump_clock: trio.testing.MockClock) -> None:
    """Regression: with the 3 closest nodes to a key crashed, `lookup(key, 8)` returned only 7
    nodes in 1 of 8 cases: a path that converged before any failure was met never re-asked its
    closest node for the extra contacts that later failures call for."""
    rng = SeededRng(3)
    for seed in (2, 3, 4):
        s = Scenario(300, seed=seed)
        await s.build("oracle")
        for _ in range(25):
            key = rng.bytes(32)
            s.crash_ids(c.node_id for c in s.oracle(key, 8)[:3])
            me = s.random_node(rng)  # a live node
            with trio.fail_after(600):
                result = await me.dht.lookup(key, 8)
            assert result.node_ids == tuple(c.node_id for c in s.oracle(key, 8))
            s.restart_all()


@pytest.mark.threat("T-ECLIPSE")
async def test_paths_are_disjoint_and_survive_hostile_nodes(
        autojump_clock: trio.testing.MockClock) -> None:
    """S/Kademlia §4.4: no node is queried by two paths, so colluders that answer only with
    colluders poison at most the paths they sit on; the closest honest node is still found."""
    rng = SeededRng(31)
    hostile = frozenset(c.node_id for c in NETWORK if rng.random() < 0.3)
    honest = IdIndex(c for c in NETWORK if c.node_id not in hostile)
    found = 0
    for _ in range(20):
        key = rng.bytes(32)
        me = next(c for c in NETWORK if c.node_id not in hostile)
        net = Synthetic(me, hostile=hostile)
        lookup = await _run(net, key, 8, 4)
        asked = [nid for nid, _ in net.queried]
        assert len(asked) == len(set(asked)), "a node was queried twice"
        found += honest.closest(key, 1)[0].node_id in {c.node_id for c in lookup.result()}
    assert found == 20


# ---------------------------------------------------------------------------------------------
# DhtNode on a small simulated network (encode=True: every message crosses the codecs)


async def _scenario(n: int = 60, seed: int = 3, **params: Any) -> Scenario:
    sc = Scenario(n, seed=seed, params=sim_params(**params), encode=True)
    await sc.build("oracle")
    return sc


def _liar(sc: Scenario, reply: Nodes) -> SimNode:
    """Make one node answer every FIND_NODE with `reply` (in the lookup's form: the tags of its
    certificates, then the certificates asked for); return it."""
    liar = sc.nodes[1]

    async def handler(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, FindTags | GetCerts):
            return answer_naming([Contact.of(c) for c in reply.certs], msg)
        return reply if isinstance(msg, FindNode) else await liar.services.handle(peer, msg)

    sc.world.set_handler(liar.node_id, handler)
    return liar


async def _lookup_via(sc: Scenario, liar: SimNode) -> tuple[SimNode, Any]:
    """Look up the liar's own id from a node that knows the liar, so the liar is asked."""
    initiator = next(node for node in sc.nodes[2:] if liar.node_id in node.dht.table)
    with trio.fail_after(120):
        return initiator, await initiator.dht.lookup(liar.node_id, paths=2)


async def test_find_node_handler_and_observe(autojump_clock: trio.testing.MockClock) -> None:
    sc = await _scenario()
    a, b = sc.nodes[0], sc.nodes[1]
    reply = await a.net.request(b.cert, FindNode(a.node_id, 7))
    assert isinstance(reply, Nodes) and len(reply.certs) == 7
    assert a.node_id not in {c.node_id for c in reply.certs}  # never named to itself
    t = int.from_bytes(a.node_id, "big")
    dists = [c.node_id for c in reply.certs]
    assert dists == sorted(dists, key=lambda x: int.from_bytes(x, "big") ^ t)
    assert isinstance(await a.net.request(b.cert, Ping()), Pong)
    assert a.node_id in b.dht.table  # b heard from a server at its advertised address


async def test_unknown_requests_are_refused_not_fatal(
        autojump_clock: trio.testing.MockClock) -> None:
    sc = await _scenario(10)
    a, b = sc.nodes[0], sc.nodes[1]
    with pytest.raises(RemoteProtocolError):
        b.dht.answer(Peer(a.cert, a.net.address), object(), b.dht.clock.now())
    assert isinstance(await a.net.request(b.cert, Ping()), Pong)  # still serving


async def test_observe_refuses_clients_and_wrong_addresses(
        autojump_clock: trio.testing.MockClock) -> None:
    sc = await _scenario(20)
    b = sc.nodes[1]
    rng = SeededRng(4)
    client = NodeCert.issue(make_key(rng, sc.params), (), NOW, sc.params)
    assert b.dht.observe(Peer(client, "198.18.99.1")) is AddResult.REFUSED
    server = NodeCert.issue(make_key(rng, sc.params), (Endpoint("198.18.99.2", 7000),), NOW,
                            sc.params)
    assert b.dht.observe(Peer(server, "198.18.99.3")) is AddResult.REFUSED  # elsewhere
    assert server.node_id not in b.dht.table
    assert b.dht.observe(Peer(server, "198.18.99.2")) is AddResult.ADDED
    with pytest.raises(RemoteProtocolError):  # a forged cert is refused outright
        b.dht.observe(Peer(server.with_signature(bytes(64)), "198.18.99.2"))


@pytest.mark.threat("T-ECLIPSE")
async def test_forged_cert_in_a_reply_is_rejected_and_counted(
        autojump_clock: trio.testing.MockClock) -> None:
    """Signed contacts only: a NODES reply carrying a cert whose signature does not verify is
    a fault of the replier; the whole reply is discarded and the replier leaves our table."""
    sc = await _scenario()
    victim = sc.nodes[7].cert
    forged = NodeCert(victim.public_key, (Endpoint("198.19.66.6", 7000),), victim.issued,
                      victim.expires, victim.seq + 1, victim.signature)  # endpoints redirected
    liar = _liar(sc, Nodes((forged,)))
    initiator, result = await _lookup_via(sc, liar)
    assert result.faults >= 1
    assert initiator.dht.stats.faults >= 1
    assert initiator.dht.stats.fault_by_peer[liar.node_id] >= 1
    assert liar.node_id not in result.node_ids
    assert liar.node_id not in initiator.dht.table
    assert all(c.endpoints != forged.endpoints for c in result.nodes)


@pytest.mark.threat("T-FAULT-REFLECT")
async def test_certificates_aimed_at_a_victim_cost_the_liar_not_the_victim(
        autojump_clock: trio.testing.MockClock) -> None:
    """A liar answers FIND_NODE with valid certificates of its own making whose endpoint is an
    honest node's (issue 7, item 1). The asker dials them, meets the victim instead, drops each
    as a bad contact and charges the liar, which it drops after `failure_limit`; the victim is
    blamed for nothing, stays in the table and is still found."""
    sc = await _scenario()
    victim = sc.nodes[7]
    liar = sc.nodes[1]
    rng = SeededRng(11)
    # Ground to lie closer to the liar's id than any real node, so the lookup dials them.
    keys = sorted((make_key(rng, sc.params) for _ in range(1500)),
                  key=lambda k: ids.distance(ids.node_id(k.public), liar.node_id))
    aimed = tuple(NodeCert.issue(k, victim.cert.endpoints, NOW, sc.params) for k in keys[:8])
    _liar(sc, Nodes(aimed))
    initiator = next(node for node in sc.nodes[2:]
                     if liar.node_id in node.dht.table and victim.node_id in node.dht.table)
    with trio.fail_after(120):
        await initiator.dht.lookup(liar.node_id, paths=2)
        stats = initiator.dht.stats
        assert stats.bad_contacts >= sc.params.failure_limit
        assert stats.misdirected_by[liar.node_id] >= sc.params.failure_limit
        assert liar.node_id not in initiator.dht.table
        assert victim.node_id in initiator.dht.table
        assert stats.fault_by_peer[victim.node_id] == 0 and not sc.world.stats.faults
        assert await initiator.net.request(victim.cert, Ping()) == Pong()
        found = await initiator.dht.lookup(victim.node_id)
        assert victim.node_id in found.node_ids


@pytest.mark.threat("T-SYBIL")
async def test_cert_failing_the_puzzle_in_a_reply_is_rejected(
        autojump_clock: trio.testing.MockClock) -> None:
    """A validly signed NodeCert whose id does not solve the static puzzle (S/Kademlia §4.1)
    is refused when it arrives in a FIND_NODE answer, and counted against the replier."""
    sc = await _scenario(puzzle_bits=2)
    rng = SeededRng(5)
    while True:
        key = crypto.SigningKey.generate(rng)
        if ids.puzzle_bits(ids.node_id(key.public)) < 2:
            break
    sybil = NodeCert.issue(key, (Endpoint("198.19.77.7", 7000),), NOW, sc.params)
    liar = _liar(sc, Nodes((sybil,)))
    initiator, result = await _lookup_via(sc, liar)
    assert result.faults >= 1
    assert initiator.dht.stats.fault_by_peer[liar.node_id] >= 1
    assert sybil.node_id not in result.node_ids
    assert sybil.node_id not in initiator.dht.table


async def test_oversized_and_mistyped_replies_are_faults(
        autojump_clock: trio.testing.MockClock) -> None:
    sc = await _scenario()
    liar = _liar(sc, Nodes(tuple(node.cert for node in sc.nodes[2:40])))  # more than k = 20
    _, result = await _lookup_via(sc, liar)
    assert result.faults >= 1 and liar.node_id not in result.node_ids

    async def pong(peer: Peer, msg: Any) -> Any:
        return Pong()

    liar2 = sc.nodes[9]
    sc.world.set_handler(liar2.node_id, pong)
    other = next(node for node in sc.nodes[10:] if liar2.node_id in node.dht.table)
    with trio.fail_after(120):
        result = await other.dht.lookup(liar2.node_id, paths=2)
    assert result.faults >= 1 and liar2.node_id not in result.node_ids


async def test_timeouts_drop_a_dead_contact_after_the_failure_limit(
        autojump_clock: trio.testing.MockClock) -> None:
    sc = await _scenario()
    dead = sc.nodes[4]
    sc.world.crash(dead.node_id)
    asker = next(node for node in sc.nodes[5:] if dead.node_id in node.dht.table)
    for _ in range(sc.params.failure_limit):
        assert dead.node_id in asker.dht.table
        with trio.fail_after(120):
            result = await asker.dht.lookup(dead.node_id, paths=1)
        assert result.failures >= 1 and dead.node_id not in result.node_ids
    assert dead.node_id not in asker.dht.table


async def test_add_contacts_verifies(autojump_clock: trio.testing.MockClock) -> None:
    sc = await _scenario(20)
    fresh = Scenario(1, seed=99, params=sc.params)
    await fresh.build("oracle")
    node = fresh.nodes[0].dht
    certs = [n.cert for n in sc.nodes]
    forged = certs[0].with_signature(bytes(64))
    assert node.add_contacts([forged]) == 0
    assert node.add_contacts(certs) == len(certs)
    assert {c.node_id for c in node.contacts()} == {n.node_id for n in sc.nodes}


async def test_bootstrap_and_maintenance(autojump_clock: trio.testing.MockClock) -> None:
    sc = Scenario(40, seed=8, params=sim_params(refresh_interval=600))
    with trio.fail_after(3600 * 24):
        await sc.build("join")
    sizes = [len(node.dht.table) for node in sc.nodes]
    assert min(sizes) >= 20  # everyone learned most of a 40-node network
    node = sc.nodes[0].dht
    await trio.sleep(700)
    assert node.table.stale_buckets(node.clock.now(), 600) != []  # no lookups for 700 s
    before = node.stats.lookups
    async with trio.open_nursery() as nursery:
        await nursery.start(node.maintain)
        await trio.sleep(50)  # maintain refreshes what is due at once, then sleeps
        nursery.cancel_scope.cancel()
    assert node.stats.lookups > before
    assert node.table.stale_buckets(node.clock.now(), 600) == []
