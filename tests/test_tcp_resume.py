"""Session resumption over real 127.0.0.1 sockets: a redial resumes, requests work over it, the
handler sees the right peer, and a forged resumption is charged to whoever sent it."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from tcppeers import (
    CLOCK,
    FIND,
    LOCAL,
    PARAMS,
    TIMEOUT,
    RawPeer,
    assert_closed_by_peer,
    client,
    closest,
    drive,
    find_node,
    issue,
    key,
    server,
)

from anonmail import crypto, wire
from anonmail.dht.messages import Nodes
from anonmail.net.base import Peer
from anonmail.net.handshake import LENGTH_SIZE, Handshake, Role
from anonmail.net.links import TcpLimits
from anonmail.net.resumption import ResumeAuth, ResumeHello, ResumeReply
from anonmail.net.tcp import TcpNetwork
from anonmail.rng import SeededRng

ANSWER = Nodes(closest(FIND.target, FIND.count))


def counts(net: TcpNetwork) -> tuple[int, int, int, int]:
    s = net.stats
    return s.dials_full, s.dials_resumed, s.accepts_full, s.accepts_resumed


async def redial(c: TcpNetwork) -> None:
    """Close every connection `c` dialled, so that the next request dials again."""
    await c.dialer.aclose()
    assert c.outbound_connections == 0


async def test_a_redial_resumes_and_serves_requests_as_the_right_peer() -> None:
    seen: list[Peer] = []

    async def handler(peer: Peer, msg: Any) -> Any:
        seen.append(peer)
        return await find_node(peer, msg)

    with trio.fail_after(TIMEOUT):
        async with server(1, handler) as srv, client(2) as c:
            assert await c.request(srv.local_cert, FIND) == ANSWER
            assert counts(c)[:2] == (1, 0) and counts(srv)[2:] == (1, 0)
            for n in range(1, 4):  # each redial resumes with the ticket the last one left
                await redial(c)
                assert await c.request(srv.local_cert, FIND) == ANSWER
                assert counts(c)[:2] == (1, n) and counts(srv)[2:] == (1, n)
            assert seen == [Peer(c.local_cert, LOCAL)] * 4
            assert len(c.dial_tickets) == 1 and len(srv.accept_tickets) == 1
            assert srv.faults == {} and c.faults == {}


async def test_introduction_leaves_a_ticket_too() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, client(2) as c:
            cert = await c.introduce(srv.local_cert.endpoints[0])
            await redial(c)
            assert await c.request(cert, FIND) == ANSWER
            assert counts(c)[:2] == (1, 1)


async def test_a_server_that_forgot_its_tickets_gets_a_full_handshake() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, client(2) as c:
            await c.request(srv.local_cert, FIND)
            srv.accept_tickets = type(srv.accept_tickets)()  # as after a restart
            await redial(c)
            assert await c.request(srv.local_cert, FIND) == ANSWER
            assert counts(c)[:2] == (2, 0) and counts(srv)[2:] == (2, 0)
            await redial(c)  # ... and the fresh ticket resumes the next one
            assert await c.request(srv.local_cert, FIND) == ANSWER
            assert counts(c)[:2] == (2, 1)


async def test_no_tickets_kept_means_full_handshakes() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1, limits=TcpLimits(max_tickets=0)) as srv, client(2) as c:
            for _ in range(3):
                assert await c.request(srv.local_cert, FIND) == ANSWER
                await redial(c)
            assert counts(c)[:2] == (3, 0) and counts(srv)[2:] == (3, 0)


async def read_message(stream: trio.SocketStream) -> bytes:
    buf = b""
    while len(buf) < LENGTH_SIZE or len(buf) < LENGTH_SIZE + int.from_bytes(buf[:4], "big"):
        data = await stream.receive_some(65536)
        assert data, "closed"
        buf += data
    return buf[LENGTH_SIZE:]


def framed(raw: bytes) -> bytes:
    return len(raw).to_bytes(LENGTH_SIZE, "big") + raw


@pytest.mark.threat("T-RESUME-FORGE")
async def test_forged_resumption_is_charged_to_its_source_not_the_ticket_owner() -> None:
    """Mallory names the client's next ticket id (as an observer who dropped its packet
    could) but cannot confirm: the failure is the connection's source's, never the client
    key's, and the client's next dial still gets through (by a full handshake)."""
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, client(2) as c:
            await c.request(srv.local_cert, FIND)
            await redial(c)
            nid = srv.local_cert.node_id
            ticket = c.dial_tickets.take(nid, CLOCK.now(), c.local_cert)
            assert ticket is not None
            c.dial_tickets.put(nid, ticket)
            ep = srv.local_cert.endpoints[0]
            stream = await trio.open_tcp_stream(ep.host, ep.port)
            async with stream:
                eph = crypto.KeyPair.generate(SeededRng(66))
                await stream.send_all(framed(wire.encode(
                    ResumeHello(PARAMS.network_id, ticket.tid, eph.public, bytes(32)))))
                wire.decode(await read_message(stream), ResumeReply)  # the server knew it
                await stream.send_all(framed(wire.encode(ResumeAuth(bytes(32)))))
                await assert_closed_by_peer(stream)
            assert srv.faults == {LOCAL: 1}  # the shared source: counted, never banned
            assert srv.admission.score("key:" + c.local_cert.node_id.hex(), 0.0) == 0
            assert await c.request(srv.local_cert, FIND) == ANSWER
            assert counts(c)[:2] == (2, 0) and counts(srv)[2:] == (2, 0)


@pytest.mark.threat("T-RESUME-FORGE")
async def test_bad_frame_on_a_resumed_connection_is_charged_to_its_key_as_usual() -> None:
    k = key(500)
    cert = issue(k)
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv:
            ep = srv.local_cert.endpoints[0]
            nid = srv.local_cert.node_id
            async with await trio.open_tcp_stream(ep.host, ep.port) as stream:
                hs = Handshake(Role.INITIATOR, k, cert, PARAMS, SeededRng(7), expect=nid)
                first = await drive(stream, hs)
                peer = RawPeer(stream, hs, first)
                await stream.send_all(peer.request_frame(0))
                assert await peer.answer() == ANSWER
            async with await trio.open_tcp_stream(ep.host, ep.port) as stream:
                hs = Handshake(Role.INITIATOR, k, cert, PARAMS, SeededRng(8), expect=nid,
                               resume=first.ticket)
                est = await drive(stream, hs)
                assert est.resumed and est.peer == srv.local_cert
                frame = bytearray(RawPeer(stream, hs, est).request_frame(0))
                frame[-1] ^= 0x01
                await stream.send_all(bytes(frame))
                await assert_closed_by_peer(stream)
            assert srv.faults == {"key:" + cert.node_id.hex(): 1}
            assert counts(srv)[2:] == (1, 1)
