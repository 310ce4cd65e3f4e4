"""The real transport: authenticated, encrypted request/response over TCP (trio).

A connection is: the mutual-authentication handshake (`handshake.py`), then encrypted frames
(`frames.py`), each holding one envelope: `Request{req_id, kind, body}` from the side that dialled,
`Response{req_id, body}` back. `body` is the canonical encoding of an `rpc` request or response
message; `kind` repeats the request's wire tag so that a type this node does not know (a newer
peer) is answered `UNSUPPORTED` rather than treated as garbage.

Invariants:
* requests flow one way on a connection: the dialler asks, the acceptor answers. A node that wants
  to ask back dials its own connection (a client-only agent never accepts any);
* at most one outgoing connection per peer node id, shared by concurrent requests and multiplexed
  by `req_id`. There is no background task per outgoing connection: one of the requests waiting
  on it reads and files every answer it sees, the others wait for that progress and look for
  theirs, so `request` works without `serve` and the network needs no nursery of its own;
* whom we reached is decided by the handshake alone: a request to a NodeCert succeeds only if the
  node at its endpoint proves it holds that certificate's key;
* a peer's fault (failed handshake, bad frame, malformed or refused request) is counted in
  `faults` under its source (the IPv4 address, or the IPv6 /64, which one party controls as a
  whole), ends at most the connection that carried it, and never reaches another connection. A
  source at `fault_threshold` is disconnected and refused from then on (until restart);
* limits are checked before any cryptography is spent: connections in total and per source on
  accept, the handshake within `handshake_timeout`, requests in flight per connection (`BUSY`
  beyond), idle connections closed, frames no larger than `params.max_frame`;
* the log never holds keys, plaintext, or peers' IP addresses (a client-only node's address is a
  mail user's address); peers appear by public node id at most.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import trio

from anonmail import wire
from anonmail.clock import Clock
from anonmail.crypto import SigningKey
from anonmail.errors import (
    LocalProtocolError,
    Refused,
    RemoteProtocolError,
    TransportError,
)
from anonmail.net import rpc
from anonmail.net.base import Handler, Peer
from anonmail.net.frames import FrameDecoder, FrameEncoder
from anonmail.net.handshake import Established, Handshake, Role
from anonmail.records import ids
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.wire import Range, Size

logger = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
MAX_BODY = 16 << 20  # the largest max_frame NetworkParams allows
MAX_TRACKED_SOURCES = 65536  # bound on the fault table's memory


@wire.message(tag=13)
@dataclass(frozen=True, slots=True)
class Request:
    req_id: Annotated[int, wire.U64]
    kind: Annotated[int, Range(0, 65535)]  # the wire tag of `body`
    body: Annotated[bytes, Size(0, MAX_BODY)]


@wire.message(tag=14)
@dataclass(frozen=True, slots=True)
class Response:
    req_id: Annotated[int, wire.U64]
    body: Annotated[bytes, Size(0, MAX_BODY)]


@dataclass(frozen=True, slots=True)
class TcpLimits:
    """Resource limits of one node. The frame size limit is `NetworkParams.max_frame`."""

    max_connections: int = 256  # accepted connections in total; also the outgoing pool size
    max_connections_per_source: int = 8  # accepted connections from one IPv4 address / IPv6 /64
    max_in_flight: int = 32  # requests being handled per connection; more are answered BUSY
    handshake_timeout: float = 5.0
    idle_timeout: float = 120.0  # close a connection with nothing in flight for this long
    fault_threshold: int = 20  # faults after which a source is disconnected and refused


def source_of(ip: str) -> str:
    """The unit faults and per-source limits count: an IPv4 address or an IPv6 /64."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


@contextlib.contextmanager
def _transport_errors(what: str) -> Iterator[None]:
    """Socket trouble is not the peer's fault: report it as TransportError."""
    try:
        yield
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        raise TransportError(f"{what}: {type(e).__name__}") from e


@dataclass
class TcpStats:
    """Bytes this node put on and took off the wire (handshakes and frames, both directions)."""

    sent: int = 0
    received: int = 0


async def _run_handshake(stream: trio.SocketStream, hs: Handshake, clock: Clock,
                         stats: TcpStats) -> tuple[Established, bytes]:
    """Drive `hs` to completion; returns the result and the bytes that came after it (the
    initiator sends its first request right behind its last handshake message)."""
    while True:
        event = hs.next_event(clock.now())
        out = hs.data_to_send()
        if out:
            await stream.send_all(out)
            stats.sent += len(out)
        if isinstance(event, Established):
            return event, hs.trailing_data
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise TransportError("connection closed during the handshake")
        stats.received += len(data)
        hs.receive_data(data)


class _Link:
    """An established connection: the stream, who is on the other end, and the frame codecs."""

    def __init__(self, stream: trio.SocketStream, handshake: tuple[Established, bytes],
                 max_frame: int, source: str, stats: TcpStats) -> None:
        est, trailing = handshake
        self.stream = stream
        self.stats = stats
        self.peer = est.peer
        self.source = source
        self.max_frame = max_frame
        self._encoder = FrameEncoder(est.keys.send, max_frame)
        self.decoder = FrameDecoder(est.keys.recv, max_frame)
        self.decoder.receive_data(trailing)
        self._send_lock = trio.Lock()  # one writer at a time, frames in counter order
        self.closed = False

    async def send(self, envelope: Request | Response) -> None:
        """Raises LocalProtocolError (stream intact) if the envelope does not fit a frame."""
        async with self._send_lock:
            frame = self._encoder.encode(wire.encode(envelope))
            try:
                await self.stream.send_all(frame)
                self.stats.sent += len(frame)
            except BaseException:
                # Interrupted mid-frame (cancelled, reset): the stream is unusable from here.
                await self.close()
                raise

    async def receive(self) -> bytes:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        self.stats.received += len(data)
        return data

    async def close(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)


class _Outbound:
    """Our side of a connection we dialled: send requests, collect answers by req_id."""

    def __init__(self, link: _Link, net: TcpNetwork) -> None:
        self.link = link
        self._net = net
        self._next_id = 0
        self._waiting: set[int] = set()
        self._answers: dict[int, bytes] = {}
        self._reading = False  # one waiter reads at a time
        self._progress = trio.Event()  # set (and replaced) after every read
        self.last_used = trio.current_time()

    @property
    def closed(self) -> bool:
        return self.link.closed

    @property
    def busy(self) -> bool:
        return bool(self._waiting)

    async def call(self, kind: int, body: bytes) -> bytes:
        if self.closed:
            raise TransportError("connection closed")
        rid = self._next_id
        self._next_id += 1
        self._waiting.add(rid)
        try:
            await self.link.send(Request(rid, kind, body))
            while rid not in self._answers:
                if self._reading:
                    await self._progress.wait()
                    continue
                # Nobody is reading: we do, for everyone, until our own answer is in. A reader
                # that gives up (timeout) wakes the others, and one of them takes over.
                self._reading = True
                try:
                    await self._read()
                finally:
                    self._reading = False
                    self._progress.set()
                    self._progress = trio.Event()
            return self._answers.pop(rid)
        finally:
            self._waiting.discard(rid)
            self._answers.pop(rid, None)
            self.last_used = trio.current_time()

    async def _read(self) -> None:
        if self.closed:
            raise TransportError("connection closed")
        data = await self.link.receive()
        if not data:
            await self.close()
            raise TransportError("connection closed by the peer")
        self.link.decoder.receive_data(data)
        try:
            while (plain := self.link.decoder.next_frame()) is not None:
                answer = wire.decode(plain, Response, max_size=self.link.max_frame)
                if answer.req_id in self._waiting:
                    self._answers[answer.req_id] = answer.body
                elif answer.req_id >= self._next_id:
                    raise RemoteProtocolError("answer to a request never sent")
                # else: its asker gave up (timeout); a late answer is no fault
        except RemoteProtocolError as e:
            self._net.count_fault(self.link.source, e)
            await self.close()
            raise

    async def close(self) -> None:
        await self.link.close()


class _Inbound:
    """Our side of a connection we accepted: read requests, answer each in its own task."""

    def __init__(self, link: _Link, peer: Peer, handler: Handler, net: TcpNetwork) -> None:
        self.link = link
        self.peer = peer
        self.handler = handler
        self.net = net
        self.in_flight = 0

    async def run(self) -> RemoteProtocolError | None:
        """Serve until the peer leaves, idles out or misbehaves (returns the fault)."""
        fault = None
        async with trio.open_nursery() as nursery:
            try:
                await self._read_requests(nursery)
            except RemoteProtocolError as e:
                fault = e
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()  # nobody is left to answer
        return fault

    async def _read_requests(self, nursery: trio.Nursery) -> None:
        limits = self.net.limits
        while True:
            # Frames first: the first request may have arrived with the last handshake message.
            while (plain := self.link.decoder.next_frame()) is not None:
                req = wire.decode(plain, Request, max_size=self.link.max_frame)
                if self.in_flight >= limits.max_in_flight:
                    busy = rpc.ErrorReply(rpc.ErrorCode.BUSY, "too many requests in flight")
                    await self.link.send(Response(req.req_id, wire.encode(busy)))
                    continue
                self.in_flight += 1
                nursery.start_soon(self._answer, req)
            with trio.move_on_after(limits.idle_timeout) as idle:
                data = await self.link.receive()
            if idle.cancelled_caught:
                if self.in_flight:
                    continue
                return
            if not data:
                return
            self.link.decoder.receive_data(data)

    async def _answer(self, req: Request) -> None:
        try:
            reply = await self._dispatch(req)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                try:
                    await self.link.send(Response(req.req_id, wire.encode(reply)))
                except LocalProtocolError:
                    logger.error("answer to %s does not fit in a frame", _kind_name(req.kind))
                    too_big = rpc.ErrorReply(rpc.ErrorCode.INTERNAL, "answer too large")
                    await self.link.send(Response(req.req_id, wire.encode(too_big)))
        finally:
            self.in_flight -= 1

    async def _dispatch(self, req: Request) -> Any:
        error = rpc.ErrorCode
        if req.kind not in rpc.REQUEST_TYPES.values():
            return rpc.ErrorReply(error.UNSUPPORTED, f"unknown request type {req.kind}")
        try:
            msg = rpc.decode_request(req.body, self.link.max_frame)
            if rpc.REQUEST_TYPES[type(msg)] != req.kind:
                raise RemoteProtocolError("request kind does not match its body")
        except RemoteProtocolError as e:
            self.net.count_fault(self.link.source, e)
            return rpc.ErrorReply(error.MALFORMED, _detail(e))
        try:
            reply = await self.handler(self.peer, msg)
        except RemoteProtocolError as e:
            self.net.count_fault(self.link.source, e)
            return rpc.ErrorReply(error.REFUSED, _detail(e))
        except NotImplementedError:
            return rpc.ErrorReply(error.UNSUPPORTED, f"{type(msg).__name__} not served here")
        except Exception:
            # Our bug, not the peer's: log it (no message contents), answer, keep serving.
            logger.exception("handler failed on %s", type(msg).__name__)
            return rpc.ErrorReply(error.INTERNAL, "internal error")
        if type(reply) not in rpc.RESPONSE_TYPES:
            logger.error("handler answered %s with non-response %s", type(msg).__name__,
                         type(reply).__name__)
            return rpc.ErrorReply(error.INTERNAL, "internal error")
        return reply


def _detail(e: Exception) -> str:
    return str(e)[:200]


def _kind_name(kind: int) -> str:
    return next((t.__name__ for t, k in rpc.REQUEST_TYPES.items() if k == kind), str(kind))


class TcpNetwork:
    """A node's TCP transport: implements `anonmail.net.base.Network`.

    Usage: `ep = await net.bind(host, port)`; issue a NodeCert for `ep` and set `net.cert`;
    `await nursery.start(net.serve, handler)`; `await net.request(cert, msg)`; `await net.aclose()`.
    A client-only agent sets a cert with no endpoints and never binds or serves.
    """

    def __init__(self, key: SigningKey, params: NetworkParams, clock: Clock, rng: Rng, *,
                 cert_cache: CertCache | None = None, limits: TcpLimits = TcpLimits()) -> None:
        self.key = key
        self.params = params
        self.clock = clock
        self.rng = rng
        self.cert_cache = cert_cache
        self.limits = limits
        self.faults: dict[str, int] = {}  # by source (see `source_of`)
        self.stats = TcpStats()
        self._cert: NodeCert | None = None
        self._listeners: list[trio.SocketListener] = []
        self._serve_scope: trio.CancelScope | None = None
        self._inbound: dict[str, set[trio.CancelScope]] = {}  # live accepted connections
        self._outbound: dict[ids.NodeId, _Outbound] = {}
        self._dialing: dict[ids.NodeId, trio.Lock] = {}

    # -- identity -----------------------------------------------------------------------------

    @property
    def cert(self) -> NodeCert | None:
        return self._cert

    @cert.setter
    def cert(self, cert: NodeCert) -> None:
        if cert.public_key != self.key.public:
            raise LocalProtocolError("certificate is not for this node's key")
        self._cert = cert

    @property
    def local_cert(self) -> NodeCert:
        if self._cert is None:
            raise LocalProtocolError("set net.cert before using the network")
        return self._cert

    @property
    def inbound_connections(self) -> int:
        return sum(len(s) for s in self._inbound.values())

    @property
    def outbound_connections(self) -> int:
        return sum(not c.closed for c in self._outbound.values())

    # -- serving ------------------------------------------------------------------------------

    async def bind(self, host: str, port: int) -> Endpoint:
        """Open the listening socket (port 0: any free port) and return where it listens."""
        if self._listeners:
            raise LocalProtocolError("already bound")
        self._listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = self._listeners[0].socket.getsockname()
        return Endpoint(str(ipaddress.ip_address(sockname[0])), int(sockname[1]))

    async def serve(self, handler: Handler, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self._listeners:
            raise LocalProtocolError("bind() before serve()")
        if self._cert is None:
            raise LocalProtocolError("set net.cert before serve()")
        self._serve_scope = trio.CancelScope()
        with self._serve_scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, partial(self._accept, handler),
                                    self._listeners)
                task_status.started()

    async def _accept(self, handler: Handler, stream: trio.SocketStream) -> None:
        try:
            ip = str(stream.socket.getpeername()[0])
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        source = source_of(ip)
        if not self._admit(source):
            await trio.aclose_forcefully(stream)
            return
        scope = trio.CancelScope()
        self._inbound.setdefault(source, set()).add(scope)
        try:
            with scope:
                await self._serve_connection(stream, ip, source, handler)
        except RemoteProtocolError as e:
            self.count_fault(source, e)
        except (TransportError, trio.TooSlowError, OSError, trio.BrokenResourceError,
                trio.ClosedResourceError):
            pass  # gone, slow or unreachable: not evidence of hostility
        finally:
            scopes = self._inbound[source]
            scopes.discard(scope)
            if not scopes:
                del self._inbound[source]
            await trio.aclose_forcefully(stream)

    def _admit(self, source: str) -> bool:
        limits = self.limits
        return (self.faults.get(source, 0) < limits.fault_threshold
                and self.inbound_connections < limits.max_connections
                and len(self._inbound.get(source, ())) < limits.max_connections_per_source)

    async def _serve_connection(self, stream: trio.SocketStream, ip: str, source: str,
                                handler: Handler) -> None:
        hs = Handshake(Role.RESPONDER, self.key, self.local_cert, self.params, self.rng,
                       cert_cache=self.cert_cache)
        with trio.fail_after(self.limits.handshake_timeout):
            done = await _run_handshake(stream, hs, self.clock, self.stats)
        link = _Link(stream, done, self.params.max_frame, source, self.stats)
        fault = await _Inbound(link, Peer(link.peer, ip), handler, self).run()
        if fault is not None:
            raise fault

    def count_fault(self, source: str, error: RemoteProtocolError) -> None:
        """Count a peer's fault; at the threshold, cut every connection from its source."""
        if source not in self.faults and len(self.faults) >= MAX_TRACKED_SOURCES:
            self.faults.pop(next(iter(self.faults)))  # forget the oldest entry
        self.faults[source] = self.faults.get(source, 0) + 1
        logger.debug("peer fault: %s: %s", type(error).__name__, error)
        if self.faults[source] >= self.limits.fault_threshold:
            for scope in self._inbound.get(source, ()):
                scope.cancel()

    # -- asking -------------------------------------------------------------------------------

    async def request(self, to: NodeCert, msg: Any, *, timeout: float | None = None) -> Any:
        kind = rpc.REQUEST_TYPES.get(type(msg))
        if kind is None:
            raise LocalProtocolError(f"{type(msg).__name__} is not a registered request")
        body = wire.encode(msg)
        who = ids.short(to.node_id)
        limit = self.params.rpc_timeout if timeout is None else timeout
        with trio.move_on_after(limit):
            with _transport_errors(f"request to {who}"):
                conn = await self._connection(to)
                answer = await conn.call(kind, body)
            try:
                reply = rpc.decode_response(answer, self.params.max_frame)
            except RemoteProtocolError as e:
                self.count_fault(conn.link.source, e)
                raise
            if isinstance(reply, rpc.ErrorReply):
                raise Refused(reply.code, reply.detail)
            return reply
        raise TransportError(f"no answer from {who} within {limit} s")

    async def introduce(self, endpoint: Endpoint, *, timeout: float | None = None) -> NodeCert:
        limit = self.params.rpc_timeout if timeout is None else timeout
        with trio.move_on_after(limit):
            await self._sweep()
            await self._make_room()
            conn = await self._open(endpoint, None)
            nid = conn.link.peer.node_id
            old = self._outbound.get(nid)
            if old is None or old.closed:
                self._outbound[nid] = conn
            else:
                await conn.close()  # we already talk to this node; keep that connection
            return conn.link.peer
        raise TransportError("introduction timed out")

    async def _connection(self, to: NodeCert) -> _Outbound:
        """The live connection to `to`'s node, dialling it if there is none (once, not per
        concurrent caller)."""
        await self._sweep()
        nid = to.node_id
        conn = self._outbound.get(nid)
        if conn is not None:
            return conn
        lock = self._dialing.setdefault(nid, trio.Lock())
        try:
            async with lock:
                conn = self._outbound.get(nid)
                if conn is None or conn.closed:
                    await self._make_room()
                    conn = await self._dial(to)
                    self._outbound[nid] = conn
                return conn
        finally:
            if not lock.locked() and self._dialing.get(nid) is lock:
                del self._dialing[nid]

    async def _dial(self, to: NodeCert) -> _Outbound:
        if not to.endpoints:
            raise TransportError(f"{ids.short(to.node_id)} accepts no connections")
        last: Exception | None = None
        for ep in to.endpoints:
            try:
                return await self._open(ep, to.node_id)
            except (TransportError, RemoteProtocolError) as e:
                last = e  # try the next endpoint; report the last failure
        assert last is not None
        raise last

    async def _open(self, ep: Endpoint, expect: ids.NodeId | None) -> _Outbound:
        source = source_of(ep.host)
        with _transport_errors("connect"):
            stream = await trio.open_tcp_stream(ep.host, ep.port)
        try:
            hs = Handshake(Role.INITIATOR, self.key, self.local_cert, self.params, self.rng,
                           expect=expect, cert_cache=self.cert_cache)
            with _transport_errors("handshake"):
                done = await _run_handshake(stream, hs, self.clock, self.stats)
        except RemoteProtocolError as e:
            self.count_fault(source, e)
            await trio.aclose_forcefully(stream)
            raise
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return _Outbound(_Link(stream, done, self.params.max_frame, source, self.stats), self)

    async def _sweep(self) -> None:
        """Forget closed connections and close idle ones. The idle limit here is half the
        acceptor's, so we retire a connection before the peer would close it under us."""
        stale = trio.current_time() - self.limits.idle_timeout / 2
        gone = [nid for nid, conn in self._outbound.items()
                if conn.closed or (not conn.busy and conn.last_used < stale)]
        # Detach all before the first await: a concurrent sweep must not see them.
        for conn in [self._outbound.pop(nid) for nid in gone]:
            await conn.close()

    async def _make_room(self) -> None:
        if len(self._outbound) < self.limits.max_connections:
            return
        idle = [c for c in self._outbound.items() if not c[1].busy]
        if not idle:
            raise TransportError("too many outgoing connections in use")
        nid, conn = min(idle, key=lambda item: item[1].last_used)
        del self._outbound[nid]
        await conn.close()

    async def aclose(self) -> None:
        """Stop serving, close the listener and every connection."""
        if self._serve_scope is not None:
            self._serve_scope.cancel()
        for listener in self._listeners:
            await listener.aclose()
        for scopes in self._inbound.values():
            for scope in scopes:
                scope.cancel()
        for conn in list(self._outbound.values()):
            await conn.close()
        self._outbound.clear()
