"""The TCP transport over real 127.0.0.1 sockets: honest use, hostile peers, resource limits.

Hostile peers are built from the sans-I/O pieces (Handshake, FrameEncoder) over raw trio streams,
so they can do exactly what the honest implementation never would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from anonmail import crypto, wire
from anonmail.clock import FixedClock
from anonmail.dht.messages import FindNode, Nodes, Ping, Pong
from anonmail.errors import (
    BadSignature,
    Refused,
    RemoteProtocolError,
    TransportError,
)
from anonmail.net import rpc
from anonmail.net.base import Handler, Peer
from anonmail.net.frames import TAG_SIZE, FrameDecoder, FrameEncoder
from anonmail.net.handshake import Established, Handshake, HandshakeError, Role
from anonmail.net.tcp import Request, Response, TcpLimits, TcpNetwork, source_of
from anonmail.records import ids, params
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.rng import SeededRng

PARAMS = params.testnet(puzzle_bits=0)
CLOCK = FixedClock()
LOCAL = "127.0.0.1"
DEFAULT_LIMITS = TcpLimits()
TIMEOUT = 5  # no test here should come near this; it only stops a hang


def key(n: int) -> crypto.SigningKey:
    return crypto.SigningKey.generate(SeededRng(n))


def issue(k: crypto.SigningKey, *endpoints: Endpoint,
          p: params.NetworkParams = PARAMS) -> NodeCert:
    return NodeCert.issue(k, endpoints, CLOCK.now(), p)


# A small population the FIND_NODE handler answers from.
KNOWN = tuple(issue(key(1000 + n), Endpoint("10.0.0.1", 7000 + n)) for n in range(30))


async def find_node(peer: Peer, msg: Any) -> Any:
    if isinstance(msg, FindNode):
        ranked = sorted(KNOWN, key=lambda c: ids.distance(c.node_id, msg.target))
        return Nodes(tuple(ranked[:msg.count]))
    if isinstance(msg, Ping):
        return Pong()
    raise NotImplementedError


@asynccontextmanager
async def server(n: int, handler: Handler = find_node, limits: TcpLimits = DEFAULT_LIMITS,
                 p: params.NetworkParams = PARAMS) -> AsyncIterator[TcpNetwork]:
    net = TcpNetwork(key(n), p, CLOCK, SeededRng(n), limits=limits)
    ep = await net.bind(LOCAL, 0)
    net.cert = issue(net.key, ep, p=p)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve, handler)
        try:
            yield net
        finally:
            await net.aclose()


@asynccontextmanager
async def client(n: int, p: params.NetworkParams = PARAMS) -> AsyncIterator[TcpNetwork]:
    net = TcpNetwork(key(n), p, CLOCK, SeededRng(n))
    net.cert = issue(net.key, p=p)  # client only: no endpoints
    try:
        yield net
    finally:
        await net.aclose()


FIND = FindNode(bytes(32), 5)


def closest(target: bytes, count: int) -> tuple[NodeCert, ...]:
    return tuple(sorted(KNOWN, key=lambda c: ids.distance(c.node_id, target))[:count])


class RawPeer:
    """A hand-driven connection: handshake from the sans-I/O machine, then arbitrary frames."""

    def __init__(self, stream: trio.SocketStream, hs: Handshake, est: Established) -> None:
        self.stream = stream
        self.enc = FrameEncoder(est.keys.send, PARAMS.max_frame)
        self.dec = FrameDecoder(est.keys.recv, PARAMS.max_frame)
        self.dec.receive_data(hs.trailing_data)

    def request_frame(self, req_id: int, msg: Any = FIND, kind: int | None = None) -> bytes:
        kind = rpc.REQUEST_TYPES[type(msg)] if kind is None else kind
        return self.enc.encode(wire.encode(Request(req_id, kind, wire.encode(msg))))

    async def answer(self) -> Any:
        while (plain := self.dec.next_frame()) is None:
            data = await self.stream.receive_some(65536)
            assert data, "connection closed"
            self.dec.receive_data(data)
        return rpc.decode_response(wire.decode(plain, Response).body, PARAMS.max_frame)


async def drive(stream: trio.SocketStream, hs: Handshake) -> Established:
    while True:
        event = hs.next_event(CLOCK.now())
        if out := hs.data_to_send():
            await stream.send_all(out)
        if isinstance(event, Established):
            return event
        data = await stream.receive_some(65536)
        if not data:
            raise TransportError("closed during handshake")
        hs.receive_data(data)


@asynccontextmanager
async def raw_peer(to: NodeCert, k: Any = None, cert: NodeCert | None = None,
                   p: params.NetworkParams = PARAMS) -> AsyncIterator[RawPeer]:
    k = k or key(500)
    cert = cert or issue(key(500), p=p)
    ep = to.endpoints[0]
    stream = await trio.open_tcp_stream(ep.host, ep.port)
    async with stream:
        hs = Handshake(Role.INITIATOR, k, cert, p, SeededRng(7), expect=to.node_id)
        yield RawPeer(stream, hs, await drive(stream, hs))


async def assert_closed_by_peer(stream: trio.SocketStream) -> None:
    """The other side has closed: EOF, or a reset if it had unread data."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass


async def honest_round_trip(srv: TcpNetwork, n: int = 900) -> None:
    async with client(n) as c:
        reply = await c.request(srv.local_cert, FIND)
        assert reply == Nodes(closest(FIND.target, FIND.count))


class StolenIdentity:
    """Presents a victim's public key (and certificate) but can only sign with its own key."""

    def __init__(self, victim: bytes, own: crypto.SigningKey) -> None:
        self.public = victim
        self._own = own

    def sign(self, domain: str, message: bytes) -> bytes:
        return self._own.sign(domain, message)


# -- honest use --------------------------------------------------------------------------------


async def test_find_node_round_trip_and_connection_reuse() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, client(2) as c:
            target = crypto.hash("t", b"x")
            reply = await c.request(srv.local_cert, FindNode(target, 20))
            assert reply == Nodes(closest(target, 20))
            assert await c.request(srv.local_cert, Ping()) == Pong()
            assert c.outbound_connections == 1 and srv.inbound_connections == 1
            assert srv.faults == {}


async def test_peer_sees_authenticated_cert_and_address() -> None:
    seen: list[Peer] = []

    async def handler(peer: Peer, msg: Any) -> Any:
        seen.append(peer)
        return Pong()

    with trio.fail_after(TIMEOUT):
        async with server(1, handler) as srv, client(2) as c:
            await c.request(srv.local_cert, Ping())
            assert seen == [Peer(c.local_cert, LOCAL)]


async def test_concurrent_requests_share_one_connection_answered_out_of_order() -> None:
    n = 8
    gates = {count: trio.Event() for count in range(1, n + 1)}
    answered = {count: trio.Event() for count in range(1, n + 1)}
    all_in = trio.Event()
    entered = 0

    async def handler(peer: Peer, msg: Any) -> Any:
        nonlocal entered
        entered += 1
        if entered == n:
            all_in.set()
        await gates[msg.count].wait()
        return Nodes(KNOWN[:msg.count])

    results: dict[int, Any] = {}

    async def ask(c: TcpNetwork, srv: TcpNetwork, count: int) -> None:
        results[count] = await c.request(srv.local_cert, FindNode(bytes(32), count))
        answered[count].set()

    with trio.fail_after(TIMEOUT):
        async with server(1, handler) as srv, client(2) as c, trio.open_nursery() as nursery:
            for count in range(1, n + 1):
                nursery.start_soon(ask, c, srv, count)
            await all_in.wait()  # all eight are in flight at once, on one connection
            assert c.outbound_connections == 1 and srv.inbound_connections == 1
            for count in reversed(range(1, n + 1)):  # answer the last request first
                gates[count].set()
                await answered[count].wait()
                assert len(results) == n + 1 - count
    assert results == {count: Nodes(KNOWN[:count]) for count in range(1, n + 1)}


async def test_introduce_returns_authenticated_cert() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, client(2) as c:
            cert = await c.introduce(srv.local_cert.endpoints[0])
            assert cert == srv.local_cert
            assert await c.request(cert, Ping()) == Pong()
            assert c.outbound_connections == 1  # the introduction's connection was reused


async def test_handler_errors_become_typed_replies_and_node_survives() -> None:
    async def handler(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, Ping):
            raise RemoteProtocolError("not allowed")
        if msg.count == 1:
            raise ValueError("a bug in the handler")
        if msg.count == 2:
            return Ping()  # a request type is not an answer: also our bug
        raise NotImplementedError

    with trio.fail_after(TIMEOUT):
        async with server(1, handler) as srv, client(2) as c:
            with pytest.raises(Refused) as refused:
                await c.request(srv.local_cert, Ping())
            assert refused.value.code == rpc.ErrorCode.REFUSED
            assert srv.faults == {LOCAL: 1}
            for count, code in ((1, rpc.ErrorCode.INTERNAL), (2, rpc.ErrorCode.INTERNAL),
                                (3, rpc.ErrorCode.UNSUPPORTED)):
                with pytest.raises(Refused) as refused:
                    await c.request(srv.local_cert, FindNode(bytes(32), count))
                assert refused.value.code == code
            assert srv.faults == {LOCAL: 1}  # our bugs are not the peer's faults
            assert c.outbound_connections == 1


async def test_unknown_request_type_is_unsupported_not_a_fault() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, raw_peer(srv.local_cert) as peer:
            await peer.stream.send_all(peer.request_frame(0, kind=9999))
            reply = await peer.answer()
            assert reply.code == rpc.ErrorCode.UNSUPPORTED
            # A known kind whose body is something else is malformed, and counted.
            await peer.stream.send_all(peer.request_frame(1, kind=rpc.REQUEST_TYPES[Ping]))
            assert (await peer.answer()).code == rpc.ErrorCode.MALFORMED
            assert srv.faults == {LOCAL: 1}


async def test_unreachable_and_silent_peers_are_transport_errors() -> None:
    async def never(peer: Peer, msg: Any) -> Any:
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with server(1, never) as srv, client(2) as c:
            with pytest.raises(TransportError, match="no answer"):
                await c.request(srv.local_cert, Ping(), timeout=0.2)
            # The timed-out request did not spoil the connection for others.
            srv_cert = srv.local_cert
        dead = srv_cert  # its listener is closed now
        async with client(3) as c:
            with pytest.raises(TransportError):
                await c.request(dead, Ping())
            with pytest.raises(TransportError, match="accepts no connections"):
                await c.request(c.local_cert, Ping())


# -- man in the middle, impostors ----------------------------------------------------------------


@pytest.mark.threat("T-MITM")
async def test_initiator_with_stolen_certificate_refused() -> None:
    victim = key(2)
    victim_cert = issue(victim)
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv:
            ep = srv.local_cert.endpoints[0]
            stream = await trio.open_tcp_stream(ep.host, ep.port)
            async with stream:
                hs = Handshake(Role.INITIATOR, StolenIdentity(victim.public, key(3)), victim_cert,
                               PARAMS, SeededRng(1), expect=srv.local_cert.node_id)
                await drive(stream, hs)  # our side thinks it is done; the server is not
                await assert_closed_by_peer(stream)
            assert srv.faults == {LOCAL: 1}
            await honest_round_trip(srv)


@pytest.mark.threat("T-MITM")
async def test_responder_with_stolen_certificate_refused() -> None:
    victim = key(1)
    mallory = key(3)

    async def impostor(stream: trio.SocketStream) -> None:
        async with stream:
            hs = Handshake(Role.RESPONDER, StolenIdentity(victim.public, mallory), victim_cert,
                           PARAMS, SeededRng(4))
            with pytest.raises(TransportError):  # the client hangs up on us
                await drive(stream, hs)

    with trio.fail_after(TIMEOUT):
        listeners = await trio.open_tcp_listeners(0, host=LOCAL)
        port = listeners[0].socket.getsockname()[1]
        victim_cert = issue(victim, Endpoint(LOCAL, port))
        async with trio.open_nursery() as nursery, client(2) as c:
            await nursery.start(trio.serve_listeners, impostor, listeners)
            with pytest.raises(BadSignature):
                await c.request(victim_cert, Ping())
            assert c.faults == {LOCAL: 1}
            assert c.outbound_connections == 0
            nursery.cancel_scope.cancel()


@pytest.mark.threat("T-MITM")
async def test_responder_with_other_node_id_refused() -> None:
    # Bob's certificate names an endpoint where Carol listens (a stale entry or a redirection).
    with trio.fail_after(TIMEOUT):
        async with server(1) as carol, client(2) as alice:
            bob_cert = issue(key(5), carol.local_cert.endpoints[0])
            with pytest.raises(HandshakeError, match="not the node we dialled"):
                await alice.request(bob_cert, Ping())
            # Alice hung up before sending her certificate (see test_handshake.py); Carol saw
            # an honest caller leave, which is no fault.
            assert carol.faults == {} and alice.outbound_connections == 0


@pytest.mark.threat("T-MITM")
async def test_wrong_network_refused() -> None:
    other = PARAMS.replace(network_id=b"another-network!")
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, client(2, other) as c:
            with pytest.raises(TransportError, match="handshake"):
                await c.request(srv.local_cert, Ping())
            assert srv.faults == {LOCAL: 1}
            await honest_round_trip(srv)


# -- bad frames --------------------------------------------------------------------------------


@pytest.mark.threat("T-MALFORMED")
@pytest.mark.parametrize("attack", ["tampered", "replayed", "reordered", "oversized", "garbage"])
async def test_bad_frame_closes_only_that_connection(attack: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, client(2) as bystander:
            # An honest connection that is open while the attack happens.
            await bystander.request(srv.local_cert, Ping())
            async with raw_peer(srv.local_cert) as peer:
                if attack == "tampered":
                    tampered = bytearray(peer.request_frame(0))
                    tampered[10] ^= 1
                    await peer.stream.send_all(bytes(tampered))
                elif attack == "replayed":
                    frame = peer.request_frame(0)
                    await peer.stream.send_all(frame)
                    assert isinstance(await peer.answer(), Nodes)
                    await peer.stream.send_all(frame)
                elif attack == "reordered":
                    first, second = peer.request_frame(0), peer.request_frame(1)
                    await peer.stream.send_all(second + first)
                elif attack == "oversized":
                    # Only the header: the server must not wait for a body it would refuse.
                    n = PARAMS.max_frame + TAG_SIZE + 1
                    await peer.stream.send_all(n.to_bytes(4, "big"))
                else:  # a valid frame holding something that is not a Request
                    await peer.stream.send_all(peer.enc.encode(b"\x82\x01\x02"))
                await assert_closed_by_peer(peer.stream)
            assert srv.faults == {LOCAL: 1}
            assert await bystander.request(srv.local_cert, Ping()) == Pong()
            await honest_round_trip(srv)


@pytest.mark.threat("T-MALFORMED")
async def test_malformed_request_body_answered_and_counted() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, raw_peer(srv.local_cert) as peer:
            frame = peer.enc.encode(wire.encode(Request(0, rpc.REQUEST_TYPES[FindNode], b"\x00")))
            await peer.stream.send_all(frame)
            assert (await peer.answer()).code == rpc.ErrorCode.MALFORMED
            assert srv.faults == {LOCAL: 1}
            await peer.stream.send_all(peer.request_frame(1))  # the connection still works
            assert isinstance(await peer.answer(), Nodes)


# -- resource limits ---------------------------------------------------------------------------


@pytest.mark.threat("T-EXHAUST")
async def test_in_flight_limit_answers_busy() -> None:
    release, both_in = trio.Event(), trio.Event()
    entered = 0

    async def slow(peer: Peer, msg: Any) -> Any:
        nonlocal entered
        entered += 1
        if entered == 2:
            both_in.set()
        await release.wait()
        return Pong()

    outcomes: list[Any] = []

    async def ask(c: TcpNetwork, srv: TcpNetwork) -> None:
        outcomes.append(await c.request(srv.local_cert, Ping()))

    with trio.fail_after(TIMEOUT):
        async with server(1, slow, TcpLimits(max_in_flight=2)) as srv, client(2) as c:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, c, srv)
                nursery.start_soon(ask, c, srv)
                await both_in.wait()
                with pytest.raises(Refused) as refused:
                    await c.request(srv.local_cert, Ping())
                assert refused.value.code == rpc.ErrorCode.BUSY
                release.set()
            assert outcomes == [Pong(), Pong()]
            assert await c.request(srv.local_cert, Ping()) == Pong()  # room again
    assert entered == 3 and srv.faults == {}


@pytest.mark.threat("T-EXHAUST")
@pytest.mark.parametrize("limits", [TcpLimits(max_connections=2),
                                    TcpLimits(max_connections_per_source=2)])
async def test_connection_limit_enforced(limits: TcpLimits) -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1, limits=limits) as srv:
            ep = srv.local_cert.endpoints[0]
            held = [await trio.open_tcp_stream(ep.host, ep.port) for _ in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            assert srv.inbound_connections == 2
            async with await trio.open_tcp_stream(ep.host, ep.port) as third:
                await assert_closed_by_peer(third)  # closed before any handshake work
            async with client(2) as c:
                with pytest.raises(TransportError):
                    await c.request(srv.local_cert, Ping())
            for stream in held:
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            await honest_round_trip(srv)


@pytest.mark.threat("T-EXHAUST")
async def test_silent_connection_dropped_after_handshake_timeout() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1, limits=TcpLimits(handshake_timeout=0.1)) as srv:
            ep = srv.local_cert.endpoints[0]
            async with await trio.open_tcp_stream(ep.host, ep.port) as idle:
                await assert_closed_by_peer(idle)  # slowloris gets nowhere
            assert srv.faults == {}  # slow is not hostile


@pytest.mark.threat("T-EXHAUST")
async def test_idle_connection_closed() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1, limits=TcpLimits(idle_timeout=0.1)) as srv:
            async with raw_peer(srv.local_cert) as peer:
                await peer.stream.send_all(peer.request_frame(0))
                assert isinstance(await peer.answer(), Nodes)
                await assert_closed_by_peer(peer.stream)
            assert srv.inbound_connections == 0


@pytest.mark.threat("T-EXHAUST")
async def test_source_over_fault_threshold_is_cut_off() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1, limits=TcpLimits(fault_threshold=2)) as srv, client(2) as c:
            await c.request(srv.local_cert, Ping())  # an open connection from the same source
            for _ in range(2):
                async with raw_peer(srv.local_cert) as peer:
                    await peer.stream.send_all(b"\x00\x00\x00\x10" + bytes(16))
                    await assert_closed_by_peer(peer.stream)
            assert srv.faults == {LOCAL: 2}
            await trio.testing.wait_all_tasks_blocked()
            assert srv.inbound_connections == 0  # the open connection was cut too
            with pytest.raises(TransportError):
                await c.request(srv.local_cert, Ping())


def test_sources_group_ipv6_by_64() -> None:
    assert source_of("2001:db8:1:2:3:4:5:6") == source_of("2001:db8:1:2:ffff::1")
    assert source_of("2001:db8:1:2::1") != source_of("2001:db8:1:3::1")
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("192.0.2.7") != source_of("192.0.2.8")
