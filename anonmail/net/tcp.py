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
  source at `fault_threshold` is disconnected and refused from then on (until restart). A valid
  node that merely is not the one a certificate sent us to is no fault: that is a `BadContact`,
  since a third party may have named its address to get it banned;
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
from functools import partial
from typing import Any

import trio

from anonmail import wire
from anonmail.clock import Clock
from anonmail.crypto import SigningKey
from anonmail.errors import (
    BadContact,
    LocalProtocolError,
    OtherNetwork,
    Refused,
    RemoteProtocolError,
    TransportError,
)
from anonmail.net import rpc
from anonmail.net.base import Handler, Peer
from anonmail.net.handshake import Handshake, HandshakeError, Role, UnexpectedPeer
from anonmail.net.links import (
    Inbound,
    Link,
    Outbound,
    Request,
    Response,
    TcpLimits,
    TcpStats,
    run_handshake,
)
from anonmail.records import ids
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng

__all__ = ["Request", "Response", "TcpLimits", "TcpNetwork", "TcpStats", "source_of"]

logger = logging.getLogger(__name__)

DEFAULT_LIMITS = TcpLimits()
MAX_TRACKED_SOURCES = 65536  # bound on the fault table's memory
MAX_OTHER_NETWORKS = 64  # endpoints remembered as answering for another network
REFUSAL_SEND_TIMEOUT = 1.0  # seconds to say which network we are on before closing


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


class TcpNetwork:
    """A node's TCP transport: implements `anonmail.net.base.Network`.

    Usage: `ep = await net.bind(host, port)`; issue a NodeCert for `ep` and set `net.cert`;
    `await nursery.start(net.serve, handler)`; `await net.request(cert, msg)`; `await net.aclose()`.
    A client-only agent sets a cert with no endpoints and never binds or serves.
    """

    def __init__(self, key: SigningKey, params: NetworkParams, clock: Clock, rng: Rng, *,
                 cert_cache: CertCache | None = None, limits: TcpLimits = DEFAULT_LIMITS) -> None:
        self.key = key
        self.params = params
        self.clock = clock
        self.rng = rng
        self.cert_cache = cert_cache
        self.limits = limits
        self.faults: dict[str, int] = {}  # by source (see `source_of`)
        # Endpoints we dialled that said they are on another network (str(endpoint) -> its
        # network id), so a failed bootstrap can say so instead of "unreachable".
        self.other_networks: dict[str, bytes] = {}
        self.stats = TcpStats()
        self._cert: NodeCert | None = None
        self._listeners: list[trio.SocketListener] = []
        self._serve_scope: trio.CancelScope | None = None
        self._inbound: dict[str, set[trio.CancelScope]] = {}  # live accepted connections
        self._outbound: dict[ids.NodeId, Outbound] = {}
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
        try:
            with trio.fail_after(self.limits.handshake_timeout):
                done = await run_handshake(stream, hs, self.clock, self.stats)
        except HandshakeError:
            await self._send_refusal(stream, hs)  # which network we are on, if that was it
            raise
        link = Link(stream, done, self.params.max_frame, source, self.stats)
        inbound = Inbound(link, Peer(link.peer, ip), handler, self.limits, self.count_fault)
        fault = await inbound.run()
        if fault is not None:
            raise fault

    async def _send_refusal(self, stream: trio.SocketStream, hs: Handshake) -> None:
        """Send what a failed handshake queued last (handshake.py's OtherNetworkReply), within
        a short time and never raising: the connection closes either way."""
        out = hs.data_to_send()
        if not out:
            return
        with trio.move_on_after(REFUSAL_SEND_TIMEOUT), \
                contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(out)
            self.stats.sent += len(out)

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

    async def _connection(self, to: NodeCert) -> Outbound:
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

    async def _dial(self, to: NodeCert) -> Outbound:
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

    async def _open(self, ep: Endpoint, expect: ids.NodeId | None) -> Outbound:
        source = source_of(ep.host)
        with _transport_errors("connect"):
            stream = await trio.open_tcp_stream(ep.host, ep.port)
        try:
            hs = Handshake(Role.INITIATOR, self.key, self.local_cert, self.params, self.rng,
                           expect=expect, cert_cache=self.cert_cache)
            with _transport_errors("handshake"):
                done = await run_handshake(stream, hs, self.clock, self.stats)
        except OtherNetwork as e:
            await trio.aclose_forcefully(stream)
            if len(self.other_networks) >= MAX_OTHER_NETWORKS:
                self.other_networks.pop(next(iter(self.other_networks)))
            self.other_networks[str(ep)] = e.network_id
            raise
        except UnexpectedPeer as e:
            # Whoever answered proved a valid identity; the certificate that sent us here may
            # come from anyone. Charging the address would let a liar get its owner banned.
            await trio.aclose_forcefully(stream)
            raise BadContact("another node answers at the endpoint dialled") from e
        except RemoteProtocolError as e:
            self.count_fault(source, e)
            await trio.aclose_forcefully(stream)
            raise
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        link = Link(stream, done, self.params.max_frame, source, self.stats)
        return Outbound(link, self.count_fault)

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
