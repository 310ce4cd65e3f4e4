"""The TCP transport over real 127.0.0.1 sockets: honest use, impostors, bad frames.

Hostile peers are built from the sans-I/O pieces (Handshake, FrameEncoder) over raw trio streams
(tests/tcppeers.py), so they can do exactly what the honest implementation never would. The
resource limits are in test_tcp_limits.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from tcppeers import (
    FIND,
    KNOWN,
    LOCAL,
    PARAMS,
    TIMEOUT,
    assert_closed_by_peer,
    client,
    closest,
    drive,
    fault_total,
    honest_round_trip,
    issue,
    key,
    raw_peer,
    server,
)

from anonmail import crypto, wire
from anonmail.dht.messages import FindNode, Nodes, Ping, Pong
from anonmail.errors import (
    BadContact,
    BadSignature,
    Refused,
    RemoteProtocolError,
    TransportError,
)
from anonmail.net import rpc
from anonmail.net.base import Peer
from anonmail.net.frames import TAG_SIZE
from anonmail.net.handshake import Handshake, Role
from anonmail.net.tcp import Request, TcpNetwork
from anonmail.records.certs import Endpoint
from anonmail.rng import SeededRng


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
            assert fault_total(srv) == 1
            for count, code in ((1, rpc.ErrorCode.INTERNAL), (2, rpc.ErrorCode.INTERNAL),
                                (3, rpc.ErrorCode.UNSUPPORTED)):
                with pytest.raises(Refused) as refused:
                    await c.request(srv.local_cert, FindNode(bytes(32), count))
                assert refused.value.code == code
            assert fault_total(srv) == 1  # our bugs are not the peer's faults
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
            assert fault_total(srv) == 1


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
            assert fault_total(srv) == 1
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
            assert fault_total(c) == 1
            assert c.outbound_connections == 0
            nursery.cancel_scope.cancel()


@pytest.mark.threat("T-MITM")
async def test_responder_with_other_node_id_refused() -> None:
    # Bob's certificate names an endpoint where Carol listens (a stale entry or a redirection).
    with trio.fail_after(TIMEOUT):
        async with server(1) as carol, client(2) as alice:
            bob_cert = issue(key(5), carol.local_cert.endpoints[0])
            with pytest.raises(BadContact):
                await alice.request(bob_cert, Ping())
            # Alice hung up before sending her certificate (see test_handshake.py); Carol saw
            # an honest caller leave, which is no fault; and Alice blames nobody: whoever
            # issued Bob's certificate may have named Carol's address on purpose.
            assert carol.faults == {} and alice.faults == {}
            assert alice.outbound_connections == 0


@pytest.mark.threat("T-FAULT-REFLECT")
async def test_certificates_aimed_at_an_honest_node_do_not_get_it_banned() -> None:
    """A liar hands out 100 valid certificates of its own making whose endpoint is Carol's
    (issue 7: FIND_NODE answers full of them made peers count faults against the victim and
    refuse her past 20). Alice dials every one: each is a bad contact, none is a fault, and
    Carol, on the same address as everyone here, still gets through to Alice afterwards."""
    with trio.fail_after(TIMEOUT):
        async with server(1) as carol, server(2) as alice:
            aimed = [issue(key(500 + i), carol.local_cert.endpoints[0]) for i in range(100)]
            for cert in aimed:
                with pytest.raises(BadContact):
                    await alice.request(cert, Ping(), timeout=TIMEOUT)
            assert alice.faults == {} and carol.faults == {}
            assert await carol.request(alice.local_cert, FIND) == Nodes(closest(FIND.target, 5))
            assert await alice.request(carol.local_cert, Ping()) == Pong()


@pytest.mark.threat("T-MITM")
async def test_wrong_network_refused() -> None:
    other = PARAMS.replace(network_id=b"another-network!")
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, client(2, other) as c:
            with pytest.raises(TransportError, match="handshake"):
                await c.request(srv.local_cert, Ping())
            assert fault_total(srv) == 1
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
            assert fault_total(srv) == 1
            assert await bystander.request(srv.local_cert, Ping()) == Pong()
            await honest_round_trip(srv)


@pytest.mark.threat("T-MALFORMED")
async def test_malformed_request_body_answered_and_counted() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, raw_peer(srv.local_cert) as peer:
            frame = peer.enc.encode(wire.encode(Request(0, rpc.REQUEST_TYPES[FindNode], b"\x00")))
            await peer.stream.send_all(frame)
            assert (await peer.answer()).code == rpc.ErrorCode.MALFORMED
            assert fault_total(srv) == 1
            await peer.stream.send_all(peer.request_frame(1))  # the connection still works
            assert isinstance(await peer.answer(), Nodes)
