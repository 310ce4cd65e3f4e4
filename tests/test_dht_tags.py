"""FIND_NODE answers that name what the asker already holds by tag (anonmail/dht/tags.py).

Unit checks of the tag list and its resolution, then DhtNodes on a small simulated network
with full encoding: the same lookups find the same nodes with and without tags, for a fraction
of the bytes, and an answer naming a tag the asker did not list is the answerer's fault."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from test_lookup import NETWORK  # 300 verified synthetic contacts

from anonmail.dht import tags
from anonmail.dht.messages import FindNode, Nodes
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
    """Issue 11: the same 30 lookups, on two identical networks, one whose askers list nothing
    (every contact sent as a certificate, as before tags)."""
    with_tags = await _scenario()
    found = await _lookups(with_tags, 30)
    tagged_bytes = with_tags.world.stats.wire_bytes

    monkeypatch.setattr(tags.Known, "have", lambda self: b"")
    without = await _scenario()
    assert await _lookups(without, 30) == found
    assert without.world.stats.wire_bytes > 2 * tagged_bytes


@pytest.mark.threat("T-FINDNODE-TAGS")
async def test_an_answer_naming_an_unlisted_tag_is_a_fault(
        autojump_clock: trio.testing.MockClock) -> None:
    """A liar answers with tags the asker never listed (made up, or of certificates it holds
    but did not list): the whole answer is discarded, the liar charged and dropped, and the
    lookup still finds the closest honest nodes."""
    sc = await _scenario(60, 3)
    liar = sc.nodes[1]
    made_up = Nodes((), b"\x01\x02\x03\x04" + tags.tag_of(sc.nodes[9].cert))

    async def handler(peer: Peer, msg: Any) -> Any:
        return made_up if isinstance(msg, FindNode) else await liar.services.handle(peer, msg)

    sc.world.set_handler(liar.node_id, handler)
    initiator = next(node for node in sc.nodes[2:] if liar.node_id in node.dht.table)
    with trio.fail_after(120):
        result = await initiator.dht.lookup(liar.node_id, paths=2)
    assert initiator.dht.stats.fault_by_peer[liar.node_id] >= 1
    assert liar.node_id not in initiator.dht.table
    assert liar.node_id not in result.node_ids
    honest = sorted((n for n in sc.nodes if n is not liar and n is not initiator),
                    key=lambda n: ids.distance(n.node_id, liar.node_id))
    assert honest[0].node_id in result.node_ids


async def test_the_node_answers_with_tags_for_what_was_listed(
        autojump_clock: trio.testing.MockClock) -> None:
    """The server side (`DhtNode.answer`): a certificate for each contact not listed, the tag
    for each listed one, together the same contacts as an answer to a request listing none."""
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
