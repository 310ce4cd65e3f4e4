"""The simulated network (anonmail/sim/network.py): delivery, codecs, latency, loss, partitions,
crashes, policies and the adversarial-handler hook."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from anonmail.dht.messages import FindNode, Nodes, Ping, Pong
from anonmail.errors import BadContact, Refused, RemoteProtocolError, TransportError
from anonmail.net import rpc
from anonmail.net.base import Peer
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.rng import SeededRng
from anonmail.sim.network import SimNetwork, SimWorld
from anonmail.sim.scenario import make_key, sim_params

PARAMS = sim_params()
TIMEOUT = PARAMS.rpc_timeout


def _world(n: int, *, seed: int = 1, **kw: Any) -> tuple[SimWorld, list[SimNetwork]]:
    rng = SeededRng(seed)
    world = SimWorld(PARAMS, rng.fork("world"), **kw)
    nets = []
    for i in range(n):
        key = make_key(rng, PARAMS)
        ep = Endpoint(f"198.18.{i}.{10 + i}", 7000)
        nets.append(world.attach(NodeCert.issue(key, (ep,), 1_800_000_000.0, PARAMS)))
    return world, nets


async def _pong(peer: Peer, msg: Any) -> Any:
    if isinstance(msg, Ping):
        return Pong()
    raise RemoteProtocolError("only pings here")


async def test_request_reply_with_codecs_and_latency(autojump_clock: trio.testing.MockClock
                                                     ) -> None:
    world, (a, b) = _world(2)
    seen: list[Peer] = []

    async def handler(peer: Peer, msg: Any) -> Any:
        seen.append(peer)
        return await _pong(peer, msg)

    b.set_handler(handler)
    t0 = trio.current_time()
    assert isinstance(await a.request(b.local_cert, Ping()), Pong)
    rtt = trio.current_time() - t0
    assert 0.020 <= rtt <= 0.300 + 1e-6  # two one-way delays from 10-150 ms
    assert seen == [Peer(a.local_cert, a.address)]
    assert seen[0].address == a.local_cert.endpoints[0].host
    assert world.stats.requests == world.stats.replies == 1
    assert world.stats.wire_bytes > 0  # encoded both ways
    # The latency of a link is fixed and symmetric.
    assert world.link(a, b)[0] == world.link(b, a)[0]


async def test_handler_error_becomes_refused_and_a_fault(autojump_clock: trio.testing.MockClock
                                                         ) -> None:
    world, (a, b) = _world(2)
    b.set_handler(_pong)
    with pytest.raises(Refused) as e:
        await a.request(b.local_cert, FindNode(bytes(32), 3))
    assert e.value.code == rpc.ErrorCode.REFUSED
    assert world.stats.faults[a.node_id] == 1
    assert isinstance(await a.request(b.local_cert, Ping()), Pong)  # b is still serving


async def test_garbage_reply_is_a_remote_protocol_error(
        autojump_clock: trio.testing.MockClock) -> None:
    _, (a, b) = _world(2)

    async def confused(peer: Peer, msg: Any) -> Any:
        return Ping()  # a request where a response belongs: the caller's decoder refuses it

    b.set_handler(confused)
    with pytest.raises(RemoteProtocolError):
        await a.request(b.local_cert, Ping())


async def test_timeout_when_nobody_serves(autojump_clock: trio.testing.MockClock) -> None:
    world, (a, b) = _world(2)
    t0 = trio.current_time()
    with pytest.raises(TransportError):
        await a.request(b.local_cert, Ping(), timeout=1.5)
    assert trio.current_time() - t0 == pytest.approx(1.5, abs=1e-5)
    assert world.stats.timeouts == 1


async def test_crash_and_restart(autojump_clock: trio.testing.MockClock) -> None:
    world, (a, b) = _world(2)
    b.set_handler(_pong)
    world.crash(b.node_id)
    with pytest.raises(TransportError):
        await a.request(b.local_cert, Ping())
    with pytest.raises(TransportError):  # a crashed node's own requests go nowhere either
        await b.request(a.local_cert, Ping())
    world.restart(b.node_id)
    assert isinstance(await a.request(b.local_cert, Ping()), Pong)


async def test_partition_and_heal(autojump_clock: trio.testing.MockClock) -> None:
    world, nets = _world(4)
    for n in nets:
        n.set_handler(_pong)
    a, b, c, d = nets
    world.partition([a.node_id, b.node_id], [c.node_id])  # d is in the "rest" group
    assert isinstance(await a.request(b.local_cert, Ping()), Pong)
    for src, dst in ((a, c), (c, a), (a, d), (c, d)):
        with pytest.raises(TransportError):
            await src.request(dst.local_cert, Ping())
    world.heal()
    assert isinstance(await a.request(c.local_cert, Ping()), Pong)


async def _loss_outcomes(seed: int) -> list[bool]:
    _, (a, b) = _world(2, seed=seed, loss=0.3)
    b.set_handler(_pong)
    out = []
    for _ in range(60):
        try:
            await a.request(b.local_cert, Ping())
            out.append(True)
        except TransportError:
            out.append(False)
        await trio.sleep(1.0)  # distinct instants, so distinct fates
    return out


def test_loss_is_seeded_and_reproducible() -> None:
    """Each run replays from its seed (fates hash the link, direction and virtual time)."""

    def run(seed: int) -> list[bool]:
        return trio.run(_loss_outcomes, seed, clock=trio.testing.MockClock(autojump_threshold=0))

    first = run(5)
    assert run(5) == first
    assert run(6) != first
    assert 0 < first.count(False) < 60
    assert first.count(False) / 60 == pytest.approx(1 - 0.7 * 0.7, abs=0.2)


async def test_policy_can_drop_messages(autojump_clock: trio.testing.MockClock) -> None:
    world, (a, b, c) = _world(3)
    for n in (b, c):
        n.set_handler(_pong)
    world.add_policy(lambda src, dst, msg: dst is not c)  # a network adversary in front of c
    assert isinstance(await a.request(b.local_cert, Ping()), Pong)
    with pytest.raises(TransportError):
        await a.request(c.local_cert, Ping())


async def test_adversarial_handler_replaces_the_honest_one(
        autojump_clock: trio.testing.MockClock) -> None:
    world, (a, b, c) = _world(3)
    b.set_handler(_pong)

    async def liar(peer: Peer, msg: Any) -> Any:
        return Nodes((c.local_cert,)) if isinstance(msg, FindNode) else Pong()

    world.set_handler(b.node_id, liar)
    reply = await a.request(b.local_cert, FindNode(bytes(32), 5))
    assert reply == Nodes((c.local_cert,))


async def test_endpoint_of_another_key_is_a_bad_contact_not_a_fault(
        autojump_clock: trio.testing.MockClock) -> None:
    """As over TCP: a cert naming someone else's endpoint is a bad contact, blamed on nobody
    (a third party may have named the address)."""
    rng = SeededRng(9)
    w, (a, b) = _world(2)
    b.set_handler(_pong)
    impostor = NodeCert.issue(make_key(rng, PARAMS), b.local_cert.endpoints, 1_800_000_000.0,
                              PARAMS)
    with pytest.raises(BadContact):
        await a.request(impostor, Ping())
    assert not w.stats.faults
    nowhere = NodeCert.issue(make_key(rng, PARAMS), (Endpoint("198.19.200.1", 7000),),
                             1_800_000_000.0, PARAMS)
    with pytest.raises(TransportError):
        await a.request(nowhere, Ping())


async def test_introduce_and_serve(autojump_clock: trio.testing.MockClock) -> None:
    _, (a, b) = _world(2)
    ep = b.local_cert.endpoints[0]
    with pytest.raises(TransportError):  # b is not serving yet
        await a.introduce(ep)
    async with trio.open_nursery() as nursery:
        await nursery.start(b.serve, _pong)
        assert await a.introduce(ep) == b.local_cert
        assert isinstance(await a.request(b.local_cert, Ping()), Pong)
        nursery.cancel_scope.cancel()
    assert b.handler is None  # serving ended with the task
    with pytest.raises(TransportError):
        await a.introduce(Endpoint("198.19.250.250", 7000))


async def test_unencoded_mode_passes_objects(autojump_clock: trio.testing.MockClock) -> None:
    world, (a, b) = _world(2, encode=False)
    got: list[Any] = []

    async def keep(peer: Peer, msg: Any) -> Any:
        got.append(msg)
        return Pong()

    b.set_handler(keep)
    msg = FindNode(bytes(32), 4)
    await a.request(b.local_cert, msg)
    assert got[0] is msg
    assert world.stats.wire_bytes == 0


async def test_a_handler_slower_than_the_timeout_times_out(
        autojump_clock: trio.testing.MockClock) -> None:
    _, (a, b) = _world(2)

    async def slow(peer: Peer, msg: Any) -> Any:
        await trio.sleep(10)
        return Pong()

    b.set_handler(slow)
    with pytest.raises(TransportError):
        await a.request(b.local_cert, Ping(), timeout=1.0)
