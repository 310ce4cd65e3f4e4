"""The relay role and its budgets (anon/relay.py, anon/onion.py, anon/anonymizer.py) on a small
simulated grid: a relay cannot read, alter or size-distinguish what it carries; every budget
holds; bad content is a typed refusal, never a fault charged to the relay that passed it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from storegrid import serving_grid
from trio.testing import MockClock

from anonmail import wire
from anonmail.anon import messages as am
from anonmail.anon import onion
from anonmail.anon.circuit import ChannelError, Circuit
from anonmail.anon.options import SIZE_CLASSES
from anonmail.anon.relay import RelayLimits, RelayService
from anonmail.errors import ErrorCode, Refused
from anonmail.net.base import Peer
from anonmail.records.certs import CertCache
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario, SimNode
from anonmail.store import messages as sm

N = 30


@pytest.fixture
async def grid() -> AsyncIterator[Scenario]:
    async with serving_grid(N, 3, frozenset()) as (s, _):
        yield s


def record_cells(nodes: list[SimNode]) -> dict[bytes, list[bytes]]:
    """Every Cell box each of `nodes` receives."""
    seen: dict[bytes, list[bytes]] = {x.node_id: [] for x in nodes}
    for x in nodes:
        handler = x.services.handle

        async def h(peer: Peer, msg: Any, handler: Any = handler, nid: bytes = x.node_id) -> Any:
            if isinstance(msg, am.Cell):
                seen[nid].append(msg.box)
            return await handler(peer, msg)

        x.net.set_handler(h)
    return seen


@given(st.binary(max_size=40_000), st.booleans())
def test_pad_round_trips_and_hides_the_size_within_a_class(body: bytes, padded: bool) -> None:
    data = onion.pad(body, padded)
    assert onion.unpad(data) == (body, padded)
    if padded:
        assert len(data) in SIZE_CLASSES


@pytest.mark.threat("T-ANON-RELAY-READ")
async def test_hops_see_different_bytes_of_one_size_class_and_no_content(
        grid: Scenario, autojump_clock: MockClock) -> None:
    with trio.fail_after(600):
        a, x, m, z = grid.nodes[0], grid.nodes[1], grid.nodes[2], grid.nodes[3]
        seen = record_cells([x, m, z])
        circuit = await Circuit.open(a.net, [x.cert, m.cert, z.cert], SeededRng(1))
        secret = b"the plaintext nobody on the path may see" * 10
        key = bytes(32)
        for size in (10, 3000):
            answer = await circuit.call(am.Forward(
                (grid.nodes[4].cert,), wire.encode(sm.Store(key, sm.ObjectKind.BODY,
                                                             secret[:size] or b"x", 60, ())),
                0, 0))
            assert isinstance(answer, am.Forwarded)
        boxes = [seen[n.node_id] for n in (x, m, z)]
        for i in range(2):
            at_x, at_m, at_z = (b[i] for b in boxes)
            # one layer per hop: sizes differ by the tag only, and say only the class
            assert len(at_x) - len(at_m) == len(at_m) - len(at_z) == 16
            assert len(at_z) - 16 in SIZE_CLASSES
            assert at_x[:64] not in at_m and at_m[:64] not in at_z
            assert secret[:40] not in at_x + at_m + at_z
        assert len(boxes[0][0]) == len(boxes[0][1])  # a 10-byte and a 3 KB request look alike


@pytest.mark.threat("T-ANON-RELAY-READ", "T-FAULT-REFLECT")
async def test_an_altered_cell_is_refused_not_charged_and_the_circuit_dies(
        grid: Scenario, autojump_clock: MockClock) -> None:
    with trio.fail_after(600):
        a, x, z = grid.nodes[0], grid.nodes[1], grid.nodes[2]
        circuit = await Circuit.open(a.net, [x.cert, z.cert], SeededRng(2))
        box = circuit.layers.wrap(wire.encode(am.FindNodes(bytes(32), 4)), True)
        bad = bytes([box[0] ^ 1]) + box[1:]
        with pytest.raises(Refused) as e:
            await a.net.request(x.cert, am.Cell(circuit.circuit_id, bad))
        assert e.value.code is ErrorCode.DENIED and not e.value.code.is_fault
        with pytest.raises(Refused) as e:  # the circuit is gone at X
            await a.net.request(x.cert, am.Cell(circuit.circuit_id, box))
        assert e.value.code is ErrorCode.GONE
        assert grid.world.stats.faults[a.node_id] == 0  # a refusal, not a fault


async def test_a_relay_verifies_each_certificate_once(
        grid: Scenario, autojump_clock: MockClock) -> None:
    """Issue 11: the next hop's certificate (at X) and a Forward's targets (at Z) go through the
    relay's CertCache, so circuits and forwards naming the same nodes again cost no Ed25519."""
    with trio.fail_after(600):
        a, x, z = grid.nodes[0], grid.nodes[1], grid.nodes[2]
        caches = {n.node_id: CertCache() for n in (x, z)}
        for node in (x, z):
            node.services.add(RelayService(node.net, node.dht, node.key, grid.params,
                                           grid.clock, SeededRng(8),
                                           cert_cache=caches[node.node_id]), replace=True)
        targets = tuple(n.cert for n in grid.nodes[3:7])
        store = wire.encode(sm.Store(bytes(32), sm.ObjectKind.BODY, b"x", 60, ()))
        rng = SeededRng(4)
        for _ in range(2):
            circuit = await Circuit.open(a.net, [x.cert, z.cert], rng)
            for _ in range(2):
                assert isinstance(await circuit.call(am.Forward(targets, store, 0, 0)),
                                  am.Forwarded)
        assert caches[x.node_id].verifications == 1  # Z's certificate, for two circuits
        assert caches[z.node_id].verifications == len(targets)  # for four forwards


@pytest.mark.threat("T-ANON-AMPLIFY")
async def test_relay_budgets_hold(grid: Scenario, autojump_clock: MockClock) -> None:
    with trio.fail_after(600):
        a, x, z = grid.nodes[0], grid.nodes[1], grid.nodes[2]
        tight = RelayLimits(circuits_per_peer=2, cells_per_circuit=3, bytes_per_circuit=200_000)
        for node in (x, z):
            node.services.add(RelayService(node.net, node.dht, node.key, grid.params,
                                           grid.clock, SeededRng(9), limits=tight),
                              replace=True)
        rng = SeededRng(3)
        c1 = await Circuit.open(a.net, [x.cert, z.cert], rng)
        await Circuit.open(a.net, [x.cert, z.cert], rng)
        with pytest.raises(ChannelError) as ce:  # a third circuit from one peer
            await Circuit.open(a.net, [x.cert, z.cert], rng)
        assert ce.value.code is ErrorCode.QUOTA
        targets = tuple(n.cert for n in grid.nodes[3:11])
        big = wire.encode(sm.Store(bytes(32), sm.ObjectKind.BODY, b"x" * 30_000, 60, ()))
        answer = await c1.call(am.Forward(targets, big, 0, 0))  # 8 x 30 KB > the byte budget
        assert isinstance(answer, am.OpFailed) and "budget" in answer.reason
        fetch = wire.encode(sm.Fetch(bytes(32)))
        answer = await c1.call(am.Forward(targets[:2], fetch, 0, 0))
        assert isinstance(answer, am.OpFailed)  # FETCH goes to one node at a time
        assert isinstance(await c1.call(am.FindNodes(bytes(32), 4)), am.Found)  # the third
        with pytest.raises(ChannelError) as ce:  # the fourth cell on a 3-cell circuit
            await c1.call(am.FindNodes(bytes(32), 4))
        assert ce.value.code is ErrorCode.QUOTA
        too_many = tuple(n.cert for n in grid.nodes[3:20])  # 17 targets: the schema refuses
        with pytest.raises(Exception):  # noqa: B017 -- encode or decode refuses; which is ours
            wire.decode(wire.encode(am.Forward(too_many, fetch, 0, 0)), am.Forward)
