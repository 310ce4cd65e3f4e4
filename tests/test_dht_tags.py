"""FIND_NODE answers that name contacts by tag (anonmail/dht/tags.py).

Unit checks of the `have` list and its resolution, the tag index and the in-flight set, then
DhtNodes on a small simulated network with full encoding: lookups by tags find the same nodes as
lookups that fetch every certificate, for a fraction of the bytes, and fetch each certificate
once; hostile answers (made-up tags, certificates not asked for, certificates withheld) cost
the liar, never the lookup."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st
from test_lookup import NETWORK  # 300 verified synthetic contacts

from anonmail.dht import tags
from anonmail.dht.messages import MAX_NODES, FindNode, FindTags, GetCerts, Nodes, Tags
from anonmail.dht.routing import Contact
from anonmail.errors import RemoteProtocolError
from anonmail.net.base import Peer
from anonmail.records import ids
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario, sim_params


def _distance(key: bytes, c: Contact) -> int:
    return c.int_id ^ int.from_bytes(key, "big")


@given(st.binary(min_size=32, max_size=32), st.lists(st.integers(0, len(NETWORK) - 1),
                                                      max_size=120))
def test_have_lists_the_nearest_known_tags(key: bytes, picks: list[int]) -> None:
    known = tags.Known(key)
    chosen = [NETWORK[i] for i in picks]
    known.add(chosen)
    nearest = sorted({c.node_id: c for c in chosen}.values(), key=lambda c: _distance(key, c))
    expect = [tags.tag_of(c.cert) for c in nearest[:tags.MAX_HAVE]]
    assert tags.split(known.have()) == expect


def test_answer_parts_and_resolve_round_trip() -> None:
    key = bytes(32)
    known = tags.Known(key, NETWORK[:30])
    have = known.have()
    near = NETWORK[20:40]  # ten the asker holds, ten it does not
    certs, packed = tags.answer_parts(near, have)
    assert [c for c in certs] == [c.cert for c in NETWORK[30:40]]
    assert known.resolve(packed, have) == NETWORK[20:30]
    assert tags.answer_parts(near, b"") == (tuple(c.cert for c in near), b"")


def test_resolve_refuses_what_was_not_listed() -> None:
    known = tags.Known(bytes(32), NETWORK[:10])
    listed = tags.split(known.have())
    with pytest.raises(RemoteProtocolError):  # a tag we hold but did not list in this request
        known.resolve(listed[0], b"".join(listed[1:]))
    assert known.resolve(listed[0], known.have())  # listed: resolves
    with pytest.raises(RemoteProtocolError):  # a tag nobody listed
        known.resolve(b"\x00\x00\x00\x00", known.have())
    with pytest.raises(RemoteProtocolError):  # not whole tags
        known.resolve(b"\x00\x00\x00", known.have())


def test_the_index_keeps_the_most_recently_used() -> None:
    index = tags.TagIndex(capacity=3)
    for c in NETWORK[:3]:
        index.add(c)
    index.add(NETWORK[3])  # the young generation was full: it is now the old one
    assert index.get(NETWORK[0].tag) is NETWORK[0]  # used again: young again
    for c in NETWORK[4:6]:
        index.add(c)  # the young generation is full again and ages; 1 and 2 were not used
    assert list(index) == [c.tag for c in (NETWORK[3], NETWORK[0], NETWORK[4], NETWORK[5])]
    assert NETWORK[1].tag not in index and NETWORK[2].tag not in index and len(index) == 4
    index.drop(NETWORK[0].tag)
    assert index.get(NETWORK[0].tag) is None and len(index) == 3


# (operation, contact) steps: 0 add, 1 get, 2 drop, 3 resolve this one and the next two, 4 resolve
# three the index holds (its oldest among them), over 8 contacts so that generations turn often
_INDEX_STEPS = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 7)),
                        min_size=30, max_size=100)


@given(_INDEX_STEPS, st.integers(1, 4))
@example([(0, 0), (0, 1), (0, 2), (0, 3), (3, 0)], 2)  # its uses turn the generations
def test_the_index_keeps_at_least_its_capacity_of_the_most_recent(
        steps: list[tuple[int, int]], capacity: int) -> None:
    """Against a model of every use: what the index holds is always the most recently used of
    what is live, at least `capacity` of them (or all), at most twice that; lookups find what
    is held and only that."""
    index = tags.TagIndex(capacity=capacity)
    recency: list[bytes] = []  # the model: every live tag, least recently used first
    by_tag = {c.tag: c for c in NETWORK[:8]}
    for op, i in steps:
        contacts = [NETWORK[(i + j) % 8] for j in range(1 if op < 3 else 3)]
        if op == 4 and len(index):  # perhaps one twice
            held_now = list(index)
            contacts = [by_tag[held_now[p % len(held_now)]] for p in (i, 0, i // 2)]
        held = all(c.tag in index for c in contacts)
        if op == 0:
            index.add(contacts[0])
        elif op == 1:
            assert (index.get(contacts[0].tag) is contacts[0]) == held
        elif op == 2:
            index.drop(contacts[0].tag)
        else:  # resolve: all or nothing, and nothing changes on nothing
            got = index.resolve([c.tag for c in contacts], contacts[0].cert.issued, 0.0)
            assert got == (contacts if held else None)
        if op == 2 or op == 0 or held:  # the model: what the op touched leaves its place
            for c in contacts:
                if c.tag in recency:
                    recency.remove(c.tag)
                if op != 2:
                    recency.append(c.tag)  # and becomes the newest
        kept = list(index)
        assert len(kept) == len(set(kept)) == len(index) <= 2 * capacity
        assert set(kept) == set(recency[len(recency) - len(kept):])  # the most recent ones
        assert len(kept) >= min(capacity, len(recency))
        recency = [t for t in recency if t in index]  # what was dropped is gone for good


async def test_in_flight_hands_each_tag_to_one_fetcher() -> None:
    fetching = tags.InFlight()
    a, b, c = (x.tag for x in NETWORK[:3])
    mine, others, _ = fetching.claim([a, b])
    assert mine == [a, b] and others == []
    mine2, others2, ticket = fetching.claim([b, c])
    assert mine2 == [c] and len(others2) == 1 and not others2[0].is_set()
    fetching.done([a, b])
    assert others2[0].is_set()
    assert fetching.claim([b])[:2] == ([b], [])  # done without the cert: the next asker fetches
    _, waiting, later = fetching.claim([c])
    assert later > ticket and len(waiting) == 1  # tickets in the order of claims


async def _scenario(n: int = 120, seed: int = 5) -> Scenario:
    sc = Scenario(n, seed=seed, params=sim_params(), encode=True)
    await sc.build("oracle")
    return sc


async def _lookups(sc: Scenario, count: int) -> list[tuple[bytes, ...]]:
    rng = SeededRng(9)
    out = []
    with trio.fail_after(600):
        for _ in range(count):
            node = sc.nodes[rng.randbelow(len(sc.nodes))]
            out.append((await node.dht.lookup(rng.bytes(32))).node_ids)
    return out


async def test_tags_find_the_same_nodes_for_a_fraction_of_the_bytes(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11: the same 30 lookups, on two identical networks, one whose askers hold nothing
    in their index (every contact named is fetched as a certificate)."""
    with_tags = await _scenario()
    found = await _lookups(with_tags, 30)
    tagged = with_tags.world.stats.wire_bytes
    assert with_tags.world.stats.by_type["GetCerts"] < with_tags.world.stats.by_type["FindTags"]

    monkeypatch.setattr(tags.TagIndex, "__contains__", lambda self, tag: False)
    without = await _scenario()
    assert await _lookups(without, 30) == found
    assert without.world.stats.wire_bytes > 2 * tagged


async def test_a_lookup_fetches_each_certificate_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """d paths meet the same neighbourhood at once: each certificate a lookup lacks is asked
    for once, however many answers name it."""
    sc = await _scenario(120, 7)
    fetched: list[bytes] = []
    for node in sc.nodes:
        sc.world.set_handler(node.node_id, _counting(node, fetched))
    asker = sc.nodes[3]
    asker.dht.tags = tags.TagIndex()  # it holds nothing: every contact named must be fetched
    with trio.fail_after(120):
        result = await asker.dht.lookup(bytes(32))
    assert len(result.nodes) == sc.params.k
    assert fetched and len(fetched) == len(set(fetched))


def _counting(node: Any, fetched: list[bytes]) -> Any:
    async def handler(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, GetCerts):
            fetched.extend(tags.split(msg.want))
        return await node.services.handle(peer, msg)
    return handler


def _lying(sc: Scenario, liar: Any, answer: Any, certs: Any = None, stall: float = 0.0) -> None:
    """`liar` answers FindTags with `answer` and GetCerts with `certs` (default: honestly),
    `stall` seconds late."""
    async def handler(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, FindTags):
            return answer
        if isinstance(msg, GetCerts) and certs is not None:
            await trio.sleep(stall)
            return certs
        return await liar.services.handle(peer, msg)

    sc.world.set_handler(liar.node_id, handler)


async def _lied_to(sc: Scenario, liar: Any) -> tuple[Any, Any]:
    initiator = next(node for node in sc.nodes[2:] if liar.node_id in node.dht.table)
    initiator.dht.tags = tags.TagIndex()  # so that it must fetch what the liar names
    with trio.fail_after(120):
        result = await initiator.dht.lookup(liar.node_id, paths=2)
    honest = sorted((n for n in sc.nodes if n is not liar and n is not initiator),
                    key=lambda n: ids.distance(n.node_id, liar.node_id))
    assert honest[0].node_id in result.node_ids
    return initiator, result


@pytest.mark.threat("T-FINDNODE-TAGS")
async def test_a_certificate_not_asked_for_is_a_fault(
        autojump_clock: trio.testing.MockClock) -> None:
    """A liar names tags, then answers GetCerts with a valid certificate whose tag was not
    asked for: the whole answer is discarded, the liar charged and dropped."""
    sc = await _scenario(60, 3)
    liar = sc.nodes[1]
    named = Tags(tags.tag_of(sc.nodes[9].cert))
    _lying(sc, liar, named, Nodes((sc.nodes[10].cert,)))
    initiator, result = await _lied_to(sc, liar)
    assert initiator.dht.stats.fault_by_peer[liar.node_id] >= 1
    assert liar.node_id not in initiator.dht.table
    assert liar.node_id not in result.node_ids


@pytest.mark.threat("T-FINDNODE-TAGS")
async def test_a_malformed_tag_answer_is_a_fault(autojump_clock: trio.testing.MockClock) -> None:
    """Not whole tags, or more tags than asked for: the answerer's fault."""
    for answer in (Tags(b"\x01" * (tags.TAG_BYTES + 3)),
                   Tags(b"".join(c.tag for c in NETWORK[:MAX_NODES]))):
        sc = await _scenario(60, 3)
        liar = sc.nodes[1]
        _lying(sc, liar, answer)
        initiator, _ = await _lied_to(sc, liar)
        assert initiator.dht.stats.fault_by_peer[liar.node_id] >= 1


@pytest.mark.threat("T-FINDNODE-TAGS")
async def test_withheld_certificates_cost_a_round_trip_not_the_contacts(
        autojump_clock: trio.testing.MockClock) -> None:
    """A liar names the tags of the nodes closest to a key first, then stalls and withholds
    their certificates. An honest answer naming the same tags meanwhile waits for the liar's
    fetch, then asks its own answerer: it gets every contact. The liar's answer loses them
    (a round trip lost; no fault, since an honest table may change between the two)."""
    sc = await _scenario(60, 3)
    asker, liar, honest = sc.nodes[0], sc.nodes[1], sc.nodes[2]
    key = honest.node_id
    near = honest.dht.table.closest(key, 6, exclude=(asker.node_id,))
    named = Tags(b"".join(c.tag for c in near))
    _lying(sc, liar, named, Nodes(()), stall=1.0)
    fetching = tags.InFlight()
    got: dict[str, list[bytes]] = {}

    async def resolve(who: str, answerer: Any) -> None:
        contacts = await asker.dht._resolve(asker.dht.contacts_cache.contact(
            answerer.cert, asker.dht.clock.now()), key, 6, named, fetching)
        got[who] = [c.node_id for c in contacts]

    asker.dht.tags = tags.TagIndex()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(resolve, "liar", liar)
            await trio.sleep(0.1)  # the liar's fetch is in flight
            nursery.start_soon(resolve, "honest", honest)
    assert got["honest"] == [c.node_id for c in near]
    assert got["liar"] == []
    assert asker.dht.stats.fault_by_peer[liar.node_id] == 0


async def test_the_node_answers_tags_and_the_certificates_behind_them(
        autojump_clock: trio.testing.MockClock) -> None:
    """The server side (`DhtNode.answer`): FindTags names, by tag and in order, the contacts
    FindNode sends as certificates; GetCerts returns the ones asked for."""
    sc = await _scenario(60, 3)
    asker, server = sc.nodes[0], sc.nodes[1]
    target = bytes(32)
    full = await asker.net.request(server.cert, FindNode(target, 20))
    assert isinstance(full, Nodes) and len(full.certs) == 20 and not full.known
    named = await asker.net.request(server.cert, FindTags(target, 20))
    assert isinstance(named, Tags)
    assert tags.split(named.tags) == [tags.tag_of(c) for c in full.certs]
    want = tags.split(named.tags)[::3]
    got = await asker.net.request(server.cert, GetCerts(target, 20, b"".join(want)))
    assert isinstance(got, Nodes) and [tags.tag_of(c) for c in got.certs] == want


async def test_the_node_answers_with_tags_for_what_was_listed(
        autojump_clock: trio.testing.MockClock) -> None:
    """The `have` form: a certificate for each contact not listed, the tag for each listed
    one, together the same contacts as an answer to a request listing none."""
    sc = await _scenario(60, 3)
    asker, server = sc.nodes[0], sc.nodes[1]
    target = bytes(32)
    full = await asker.net.request(server.cert, FindNode(target, 20))
    assert isinstance(full, Nodes) and len(full.certs) == 20 and not full.known
    listed = [c for c in full.certs[::2]]  # every other one
    have = b"".join(tags.tag_of(c) for c in listed)
    part = await asker.net.request(server.cert, FindNode(target, 20, have))
    assert isinstance(part, Nodes)
    assert set(part.certs) == set(full.certs) - set(listed)
    assert sorted(tags.split(part.known)) == sorted(tags.split(have))
