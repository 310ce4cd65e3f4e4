"""The service registry (anonmail/net/services.py): one way in for every request.

Routing is by exact type; an honest refusal becomes a typed reply with its code and is never a
fault; a fault propagates to the transport, which counts it; a request type nobody serves is
UNSUPPORTED; wiring mistakes (two services for a type, an unregistered type) fail at once.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from anonmail.dht.messages import FindNode, Nodes, Ping, Pong
from anonmail.errors import ErrorCode, LocalError, Refusal, Refused, RemoteProtocolError
from anonmail.net.base import Peer
from anonmail.net.rpc import ErrorReply
from anonmail.net.services import ServiceRegistry
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario, make_key, sim_params
from anonmail.store.errors import Denied, Invalid, QuotaExceeded
from anonmail.store.messages import Fetch, NotFound, ObjectKind, Store


class Pinger:
    """A toy service answering PING, or refusing as told."""

    requests: tuple[type, ...] = (Ping,)

    def __init__(self, refuse: Exception | None = None) -> None:
        self.refuse = refuse
        self.seen: list[Any] = []

    async def handle(self, peer: Peer, msg: Any) -> Any:
        self.seen.append(msg)
        if self.refuse is not None:
            raise self.refuse
        return Pong()


class Fetcher:
    requests: tuple[type, ...] = (Fetch,)

    async def handle(self, peer: Peer, msg: Any) -> Any:
        return NotFound()


@pytest.fixture
def peer() -> Peer:
    params = sim_params()
    key = make_key(SeededRng(b"peer"), params)
    return Peer(NodeCert.issue(key, (Endpoint("198.18.0.1", 4000),), 0, params), None)


async def test_routes_by_type_and_observes_every_requester(peer: Peer) -> None:
    seen: list[Peer] = []
    pinger, fetcher = Pinger(), Fetcher()
    registry = ServiceRegistry([pinger, fetcher], observe=seen.append)
    assert isinstance(await registry.handle(peer, Ping()), Pong)
    assert isinstance(await registry.handle(peer, Fetch(b"\x01" * 32)), NotFound)
    assert pinger.seen == [Ping()] and seen == [peer, peer]
    assert registry.routes == {Ping: pinger, Fetch: fetcher}


async def test_unserved_type_is_unsupported_and_not_observed(peer: Peer) -> None:
    seen: list[Peer] = []
    registry = ServiceRegistry([Pinger()], observe=seen.append)
    reply = await registry.handle(peer, FindNode(b"\x00" * 32, 3))
    assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.UNSUPPORTED
    assert seen == []


@pytest.mark.threat("T-BLAME")
@pytest.mark.parametrize(("refusal", "code"), [
    (Denied("delete secret does not match", ErrorCode.WRONG_SECRET), ErrorCode.WRONG_SECRET),
    (QuotaExceeded("quota: inbox full (entries)", ErrorCode.INBOX_FULL), ErrorCode.INBOX_FULL),
    (QuotaExceeded("quota: node storage full"), ErrorCode.QUOTA),
    (Refusal("not now"), ErrorCode.DENIED),
])
async def test_an_honest_refusal_is_a_typed_reply(peer: Peer, refusal: Refusal,
                                                  code: ErrorCode) -> None:
    reply = await ServiceRegistry([Pinger(refusal)]).handle(peer, Ping())
    assert reply == ErrorReply(code, refusal.detail)
    assert not code.is_fault


@pytest.mark.threat("T-BLAME")
async def test_a_fault_propagates_to_the_transport(peer: Peer) -> None:
    registry = ServiceRegistry([Pinger(Invalid("fragment does not match its content address"))])
    with pytest.raises(RemoteProtocolError):
        await registry.handle(peer, Ping())


def test_wiring_mistakes_fail_when_the_registry_is_built() -> None:
    with pytest.raises(LocalError, match="two services"):
        ServiceRegistry([Pinger(), Pinger()])

    class Stray:
        requests: tuple[type, ...] = (Nodes,)  # a response type, not a request

        async def handle(self, peer: Peer, msg: Any) -> Any:
            return None

    with pytest.raises(LocalError, match="not a registered request"):
        ServiceRegistry([Stray()])


async def test_replace_hands_a_type_to_a_stand_in(peer: Peer) -> None:
    honest, stand_in = Pinger(), Pinger(Denied("busy elsewhere"))
    registry = ServiceRegistry([honest])
    registry.add(stand_in, replace=True)
    reply = await registry.handle(peer, Ping())
    assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.DENIED
    assert honest.seen == [] and stand_in.seen == [Ping()]


@pytest.mark.threat("T-BLAME")
async def test_over_the_simulated_network_refusals_cost_no_fault(
        autojump_clock: trio.testing.MockClock) -> None:
    """End to end through a transport: the asker gets `Refused` with the code; only the fault
    is counted against it."""
    s = Scenario(2, seed=2, encode=True)
    await s.build("oracle")
    server, asker = s.nodes
    server.services.add(Pinger(QuotaExceeded("quota: node storage full")), replace=True)

    class Strict:
        requests: tuple[type, ...] = (Store,)

        async def handle(self, peer: Peer, msg: Any) -> Any:
            raise Invalid("certificate refused")

    server.services.add(Strict())
    with trio.fail_after(60):
        with pytest.raises(Refused) as e:
            await asker.net.request(server.cert, Ping())
        assert e.value.code is ErrorCode.QUOTA
        assert s.world.stats.faults[asker.node_id] == 0
        with pytest.raises(Refused) as e:
            await asker.net.request(server.cert, Store(b"\x02" * 32, ObjectKind.BODY, b"x", 60, ()))
        assert e.value.code is ErrorCode.REFUSED and e.value.code.is_fault
        assert s.world.stats.faults[asker.node_id] == 1
