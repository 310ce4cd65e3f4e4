"""TCP transport test peers on 127.0.0.1 (tests/test_tcp*.py).

A server answering FIND_NODE from a fixed population (`KNOWN`) and Ping, a client-only node, and
a hand-driven `RawPeer`: the handshake from the sans-I/O machine (Handshake), then whatever frames
the test writes (FrameEncoder), so a hostile peer can do exactly what the honest implementation
never would. Every node uses the test network's parameters and a fixed clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from anonmail import crypto, wire
from anonmail.clock import FixedClock
from anonmail.dht.messages import FindNode, Nodes, Ping, Pong
from anonmail.errors import TransportError
from anonmail.net import rpc
from anonmail.net.base import Handler, Peer
from anonmail.net.frames import FrameDecoder, FrameEncoder
from anonmail.net.handshake import Established, Handshake, Role
from anonmail.net.tcp import AdmissionLimits, Request, Response, TcpLimits, TcpNetwork
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
                 p: params.NetworkParams = PARAMS, admission: AdmissionLimits | None = None
                 ) -> AsyncIterator[TcpNetwork]:
    net = TcpNetwork(key(n), p, CLOCK, SeededRng(n), limits=limits, admission=admission)
    ep = await net.bind(LOCAL, 0)
    net.cert = issue(net.key, ep, p=p)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve, handler)
        try:
            yield net
        finally:
            await net.aclose()


@asynccontextmanager
async def client(n: int, p: params.NetworkParams = PARAMS,
                 limits: TcpLimits = DEFAULT_LIMITS) -> AsyncIterator[TcpNetwork]:
    net = TcpNetwork(key(n), p, CLOCK, SeededRng(n), limits=limits)
    net.cert = issue(net.key, p=p)  # client only: no endpoints
    try:
        yield net
    finally:
        await net.aclose()


FIND = FindNode(bytes(32), 5)


def fault_total(net: TcpNetwork) -> int:
    """Faults `net` counted, whatever unit each was judged by (a source, or on loopback a key)."""
    return sum(net.faults.values())


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
