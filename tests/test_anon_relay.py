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
from storegrid import record_requests, serving_grid
from trio.testing import MockClock

from anonmail import wire
from anonmail.anon import messages as am
from anonmail.anon import onion
from anonmail.anon.circuit import ChannelError, Circuit
from anonmail.anon.options import SIZE_CLASSES
from anonmail.anon.relay import RelayLimits, RelayService
from anonmail.errors import ErrorCode, Refused
from anonmail.net import rpc
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
        circuit = await Circuit.open(a.net, [x.cert, m.cert, z.cert], SeededRng(1),
                                     now=grid.clock.now())
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
        circuit = await Circuit.open(a.net, [x.cert, z.cert], SeededRng(2), now=grid.clock.now())
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
            circuit = await Circuit.open(a.net, [x.cert, z.cert], rng, now=grid.clock.now())
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
        c1 = await Circuit.open(a.net, [x.cert, z.cert], rng, now=grid.clock.now())
        await Circuit.open(a.net, [x.cert, z.cert], rng, now=grid.clock.now())
        with pytest.raises(ChannelError) as ce:  # a third circuit from one peer
            await Circuit.open(a.net, [x.cert, z.cert], rng, now=grid.clock.now())
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


def relays(grid: Scenario, nodes: list[SimNode], limits: RelayLimits) -> dict[bytes, RelayService]:
    """Fresh relay services with `limits` on `nodes`, by node id."""
    out = {}
    for node in nodes:
        out[node.node_id] = RelayService(node.net, node.dht, node.key, grid.params, grid.clock,
                                         SeededRng(11), limits=limits)
        node.services.add(out[node.node_id], replace=True)
    return out


def answering(node: SimNode, kind: type, reply: Any) -> None:
    """`node` answers every request of type `kind` with `reply` (a hostile node)."""
    handler = node.services.handle

    async def h(peer: Peer, msg: Any) -> Any:
        return reply if isinstance(msg, kind) else await handler(peer, msg)

    node.net.set_handler(h)


@pytest.mark.threat("T-ANON-AMPLIFY")
async def test_concurrent_opens_cannot_pass_the_circuit_caps(
        grid: Scenario, autojump_clock: MockClock) -> None:
    """An Open takes its slot before it awaits the next hop: ten Opens racing from one peer
    get at most `circuits_per_peer` circuits, and a reused circuit id is refused."""
    with trio.fail_after(600):
        a, x, z = grid.nodes[0], grid.nodes[1], grid.nodes[2]
        at_x = relays(grid, [x], RelayLimits(circuits_per_peer=2))[x.node_id]
        opened: list[Circuit] = []
        refused: list[ErrorCode | None] = []

        async def one(seed: int) -> None:
            try:
                opened.append(await Circuit.open(a.net, [x.cert, z.cert], SeededRng(seed),
                                                 now=grid.clock.now()))
            except ChannelError as e:
                refused.append(e.code)

        async with trio.open_nursery() as n:
            for seed in range(10):
                n.start_soon(one, seed)
        assert len(opened) == 2 and refused == [ErrorCode.QUOTA] * 8
        assert len(at_x.circuits) == 2
        onion_again = onion.build_onion([x.cert, z.cert], [bytes(32)] * 2, SeededRng(1),
                                        grid.clock.now())
        with pytest.raises(Refused) as e:  # the id of a circuit this peer already has open
            await a.net.request(x.cert, am.Open(opened[0].circuit_id, onion_again))
        assert e.value.code is ErrorCode.CONFLICT


@pytest.mark.threat("T-ANON-AMPLIFY")
async def test_held_cells_are_budgeted_and_a_destroy_cancels_them(
        grid: Scenario, autojump_clock: MockClock) -> None:
    """Cells awaiting a Forward's delay count against the bytes a previous hop may have in
    flight; a Destroy cancels the held Forward (nothing is stored) and frees its bytes, so
    destroying and reopening circuits cannot pile up held requests."""
    with trio.fail_after(600):
        a, x, z, target = grid.nodes[0], grid.nodes[1], grid.nodes[2], grid.nodes[3]
        services = relays(grid, [x, z], RelayLimits(held_bytes_per_peer=200_000))
        at_x = services[x.node_id]
        stores = record_requests(target, sm.Store)
        blob = wire.encode(sm.Store(bytes(32), sm.ObjectKind.BODY, b"x" * 100_000, 60, ()))
        held = am.Forward((target.cert,), blob, 50_000, 0)  # Z holds it 50 s
        rng = SeededRng(5)
        c1 = await Circuit.open(a.net, [x.cert, z.cert], rng, now=grid.clock.now())
        c2 = await Circuit.open(a.net, [x.cert, z.cert], rng, now=grid.clock.now())
        outcome: list[Any] = []

        async def hold() -> None:
            try:
                outcome.append(await c1.call(held))
            except ChannelError as e:
                outcome.append(e.code)

        async with trio.open_nursery() as n:
            n.start_soon(hold)
            await trio.sleep(1)
            assert at_x._held_total == 131_072 + 2 * 16  # one 128 KiB cell, two layers
            with pytest.raises(ChannelError) as ce:  # a second one from the same peer
                await c2.call(held)
            assert ce.value.code is ErrorCode.QUOTA
            await c1.close()
        assert outcome == [ErrorCode.GONE]  # c1's call ended with its circuit
        assert at_x._held_total == 0 and at_x._held == {}
        assert (a.node_id, c1.circuit_id) not in at_x.circuits
        await trio.sleep(120)  # long after the hold would have ended
        assert stores == []  # the destroyed Forward never left Z
        c3 = await Circuit.open(a.net, [x.cert, z.cert], rng, now=grid.clock.now())
        assert isinstance(await c3.call(am.Forward((target.cert,), blob, 0, 0)), am.Forwarded)
        assert len(stores) == 1


@pytest.mark.threat("T-FAULT-REFLECT")
async def test_a_next_hop_answering_too_much_is_unreachable_not_the_relays_fault(
        grid: Scenario, autojump_clock: MockClock) -> None:
    """X adds 16 bytes to what the next hop answers; a hostile next hop answering a full
    Opened or CellReply would make X's answer too long and get X charged. X reports it as
    UNREACHABLE instead, a failure further on that the sender charges to nobody."""
    with trio.fail_after(600):
        a, x, z = grid.nodes[0], grid.nodes[1], grid.nodes[2]
        answering(z, am.Open, am.Opened(bytes(am.MAX_OPENED)))
        with pytest.raises(ChannelError) as ce:
            await Circuit.open(a.net, [x.cert, z.cert], SeededRng(6), now=grid.clock.now())
        assert ce.value.at is None and ce.value.code is ErrorCode.UNREACHABLE
        z.net.set_handler(z.services.handle)
        circuit = await Circuit.open(a.net, [x.cert, z.cert], SeededRng(7), now=grid.clock.now())
        answering(z, am.Cell, am.CellReply(bytes(am.MAX_CELL)))
        with pytest.raises(ChannelError) as ce:
            await circuit.call(am.FindNodes(bytes(32), 4))
        assert ce.value.at is None and ce.value.code is ErrorCode.UNREACHABLE


@pytest.mark.threat("T-FAULT-REFLECT")
async def test_a_target_answering_more_than_a_cell_holds_is_no_answer(
        grid: Scenario, autojump_clock: MockClock) -> None:
    """A Forward's target may answer up to a frame; Z reports an answer too large for the
    largest cell as no answer rather than failing the whole cell (which the sender would
    charge to Z), and the circuit stays usable."""
    with trio.fail_after(600):
        a, x, z, target = grid.nodes[0], grid.nodes[1], grid.nodes[2], grid.nodes[3]
        answering(target, sm.Fetch, am.CellReply(bytes(SIZE_CLASSES[-1] - 1000)))
        circuit = await Circuit.open(a.net, [x.cert, z.cert], SeededRng(8), now=grid.clock.now())
        fetch = wire.encode(sm.Fetch(bytes(32)))
        answer = await circuit.call(am.Forward((target.cert,), fetch, 0, 0))
        assert answer == am.Forwarded((am.TargetReply(target.node_id, b""),))
        assert isinstance(await circuit.call(am.FindNodes(bytes(32), 4)), am.Found)


@pytest.mark.threat("T-ANON-AMPLIFY")
async def test_the_lookup_budget_forgets_peers_idle_for_a_minute(
        grid: Scenario, autojump_clock: MockClock) -> None:
    """The per-peer lookup counts are a table keyed by whoever asked: peers with nothing in the
    last minute are forgotten, so many peers asking once each cannot grow it without bound."""
    with trio.fail_after(600):
        x = grid.nodes[1]
        relay = relays(grid, [x], RelayLimits(lookups=20))[x.node_id]
        for wave in range(5):
            for i in range(20):  # the most lookups a minute allows, each from a new peer
                relay._lookup_budget(bytes([wave, i]) * 16)
            assert len(relay._lookups) <= 2 * 20 + 1  # the total's entry, and two minutes'
            await trio.sleep(61)


@pytest.mark.threat("T-FAULT-REFLECT", "T-REPLAY-OWNER")
async def test_a_senders_bad_request_through_z_is_refused_without_blame_on_z(
        grid: Scenario, autojump_clock: MockClock) -> None:
    """Storage nodes cannot tell a forwarded request's author from the Z that passed it on: a
    fragment that does not match its key, or a forged owner proof, is refused DENIED (not a
    fault), so a sender cannot get an honest anonymizer banned by every node it names."""
    with trio.fail_after(600):
        a, x, z = grid.nodes[0], grid.nodes[1], grid.nodes[2]
        targets = tuple(n.cert for n in grid.nodes[3:11])
        circuit = await Circuit.open(a.net, [x.cert, z.cert], SeededRng(9), now=grid.clock.now())
        bogus = wire.encode(sm.Store(bytes(32), sm.ObjectKind.FRAGMENT, b"junk", 60, ()))
        for _ in range(3):
            answer = await circuit.call(am.Forward(targets, bogus, 0, 0))
            assert isinstance(answer, am.Forwarded) and len(answer.replies) == len(targets)
            for r in answer.replies:
                refusal = wire.decode(r.reply, rpc.ErrorReply)
                assert refusal.code is ErrorCode.DENIED
        assert grid.world.stats.faults[z.node_id] == 0
