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
  node at its endpoint proves it holds that certificate's key (in this handshake, or in the full
  one a resumption descends from: net/resumption.py);
* connections are cheap to redial: each side keeps one-time resumption tickets
  (`dial_tickets` by node id, `accept_tickets` by ticket id; bounded, `TcpLimits.max_tickets`),
  so a connection to a node met within `TcpLimits.ticket_lifetime` costs no signature. A
  resumption takes a handshake token like any other connection: admission is unchanged;
* a peer's fault (failed handshake, bad frame, malformed or refused request) is counted by
  `admission` (net/admission.py) against the unit that committed it: its source (the IPv4
  address, or the IPv6 /64, which one party controls as a whole), or on a shared source
  (loopback; every source on a testnet) its authenticated key. A fault ends at most the
  connection that carried it. Scores decay; a unit whose score reaches the threshold is banned
  for a while (longer each time) and its connections are cut. A valid node that merely is not
  the one a certificate sent us to is no fault: that is a `BadContact`, since a third party may
  have named its address to get it banned;
* limits are checked before any cryptography is spent: bans, connections in total, per source
  and pending per source, and a handshake token bucket per source and in all on accept; the
  handshake within `handshake_timeout`; connections per key once it is known; requests in
  flight per connection (`BUSY` beyond), answers queued per connection and in all (output.py:
  BUSY in an answer's place beyond, and no further request read), a frame not taken within
  `send_timeout` closes its link, idle connections closed, frames no larger than
  `params.max_frame`;
* the log never holds keys, plaintext, or peers' IP addresses (a client-only node's address is a
  mail user's address); peers appear by public node id at most.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
from typing import Any

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
from anonmail.net.admission import Admission, AdmissionLimits, Verdict, source_of
from anonmail.net.base import Handler, Peer
from anonmail.net.dialer import Dialer, transport_error
from anonmail.net.handshake import Handshake, HandshakeError, Role
from anonmail.net.inbound import Inbound
from anonmail.net.links import (
    Link,
    Request,
    Response,
    TcpLimits,
    TcpStats,
    run_handshake,
)
from anonmail.net.output import NodeOutput
from anonmail.net.resumption import Tickets
from anonmail.net.sockio import SocketIO, take_socket
from anonmail.records import ids
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng

__all__ = ["AdmissionLimits", "Request", "Response", "TcpLimits", "TcpNetwork", "TcpStats",
           "source_of"]

logger = logging.getLogger(__name__)

DEFAULT_LIMITS = TcpLimits()
# accept() failures that mean "no room right now", not a broken listener (as trio's
# serve_listeners treats them)
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
REFUSAL_SEND_TIMEOUT = 1.0  # seconds to say which network we are on before closing


class TcpNetwork:
    """A node's TCP transport: implements `anonmail.net.base.Network`.

    Usage: `ep = await net.bind(host, port)`; issue a NodeCert for `ep` and set `net.cert`;
    `await nursery.start(net.serve, handler)`; `await net.request(cert, msg)`; `await net.aclose()`.
    A client-only agent sets a cert with no endpoints and never binds or serves.
    """

    def __init__(self, key: SigningKey, params: NetworkParams, clock: Clock, rng: Rng, *,
                 cert_cache: CertCache | None = None, limits: TcpLimits = DEFAULT_LIMITS,
                 admission: AdmissionLimits | None = None) -> None:
        self.key = key
        self.params = params
        self.clock = clock
        self.rng = rng
        self.cert_cache = cert_cache
        self.limits = limits
        self.admission = Admission(admission or AdmissionLimits())
        self.stats = TcpStats()
        self.output = NodeOutput(limits.max_queued_total)  # answers queued on all inbound links
        self.dial_tickets = Tickets(limits.max_tickets)  # by the responder's node id
        self.accept_tickets = Tickets(limits.max_tickets)  # by ticket id
        self._cert: NodeCert | None = None
        self._listeners: list[trio.SocketListener] = []
        self._serve_scope: trio.CancelScope | None = None
        # Live accepted connections by source, and by judged unit once authenticated (the
        # same source, or a key on a shared source): a ban cuts what its unit holds.
        self._inbound: dict[str, set[trio.CancelScope]] = {}
        self._by_unit: dict[str, set[trio.CancelScope]] = {}
        self._pending: dict[str, int] = {}  # accepted connections still in their handshake
        self.dialer = Dialer(self)  # our outgoing connections (net/dialer.py)

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
    def faults(self) -> dict[str, int]:
        """Faults ever counted, by judged unit (see net/admission.py)."""
        return self.admission.faults

    @property
    def inbound_connections(self) -> int:
        return sum(len(s) for s in self._inbound.values())

    @property
    def outbound_connections(self) -> int:
        return self.dialer.open_connections

    @property
    def other_networks(self) -> dict[str, bytes]:
        """Endpoints we dialled that said they are on another network (str(endpoint) -> its
        network id), so a failed bootstrap can say so instead of "unreachable"."""
        return self.dialer.other_networks

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
                for listener in self._listeners:
                    nursery.start_soon(self._accept_loop, listener, handler, nursery)
                task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener, handler: Handler,
                           nursery: trio.Nursery) -> None:
        """Accept, and refuse right here what admission refuses: no task, no await, no
        handshake, so a connection flood costs the node an accept and a close each."""
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.warning("out of file descriptors or memory: accepting again in 0.1 s")
                await trio.sleep(0.1)
                continue
            try:
                ip = str(stream.socket.getpeername()[0])
            except OSError:
                stream.socket.close()
                continue
            source = source_of(ip)
            verdict = self.admission.admit_source(
                source, trio.current_time(), connections=self.inbound_connections,
                from_source=len(self._inbound.get(source, ())),
                pending=self._pending.get(source, 0))
            if verdict is not Verdict.ADMIT:
                stream.socket.close()
                continue
            scope = trio.CancelScope()
            _add(self._inbound, source, scope)  # counted from now, before its task runs
            nursery.start_soon(self._accept, handler, stream, ip, source, scope)

    async def _accept(self, handler: Handler, stream: trio.SocketStream, ip: str, source: str,
                      scope: trio.CancelScope) -> None:
        io = SocketIO(take_socket(stream), self.limits.send_timeout, self.stats)
        try:
            with scope:
                await self._serve_connection(io, ip, source, handler, scope)
        except RemoteProtocolError as e:
            self.count_fault(source, e)  # before the handshake proved a key: the source's
        except (TransportError, trio.TooSlowError, OSError, trio.BrokenResourceError,
                trio.ClosedResourceError):
            pass  # gone, slow or unreachable: not evidence of hostility
        finally:
            _discard(self._inbound, source, scope)
            io.close()

    async def _serve_connection(self, io: SocketIO, ip: str, source: str, handler: Handler,
                                scope: trio.CancelScope) -> None:
        hs = Handshake(Role.RESPONDER, self.key, self.local_cert, self.params, self.rng,
                       cert_cache=self.cert_cache, tickets=self.accept_tickets,
                       ticket_lifetime=self.limits.ticket_lifetime)
        self._pending[source] = self._pending.get(source, 0) + 1
        try:
            with trio.fail_after(self.limits.handshake_timeout):
                done = await run_handshake(io, hs, self.clock)
        except HandshakeError:
            await self._send_refusal(io, hs)  # which network we are on, if that was it
            raise
        finally:
            self._pending[source] -= 1
            if not self._pending[source]:
                del self._pending[source]
        est = done[0]
        if est.resumed:
            self.stats.accepts_resumed += 1
        else:
            self.stats.accepts_full += 1
        unit = self.admission.unit_of(source, est.peer.node_id)
        verdict = self.admission.admit_key(unit, trio.current_time(),
                                           from_key=len(self._by_unit.get(unit, ())))
        if verdict is not Verdict.ADMIT:
            return  # banned, or the key holds its share: closed, no fault (and no ticket)
        self.accept_tickets.put(est.ticket.tid, est.ticket)
        _add(self._by_unit, unit, scope)
        try:
            link = Link(io, done, self.params.max_frame, unit)
            inbound = Inbound(link, Peer(link.peer, ip), handler, self.limits, self.count_fault,
                              self.output)
            fault = await inbound.run()
            if fault is not None:
                self.count_fault(unit, fault)
        finally:
            _discard(self._by_unit, unit, scope)

    async def _send_refusal(self, io: SocketIO, hs: Handshake) -> None:
        """Send what a failed handshake queued last (handshake.py's OtherNetworkReply), within
        a short time and never raising: the connection closes either way."""
        out = hs.data_to_send()
        if not out:
            return
        with trio.move_on_after(REFUSAL_SEND_TIMEOUT), \
                contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await io.send(out)

    def count_fault(self, unit: str, error: RemoteProtocolError) -> None:
        """Count a peer's fault against its judged unit (a source, or a key on a shared
        source); when that starts a ban, cut every connection the unit holds."""
        logger.debug("peer fault: %s: %s", type(error).__name__, error)
        if self.admission.record_fault(unit, trio.current_time()):
            for scope in [*self._inbound.get(unit, ()), *self._by_unit.get(unit, ())]:
                scope.cancel()

    # -- asking -------------------------------------------------------------------------------

    async def request(self, to: NodeCert, msg: Any, *, timeout: float | None = None) -> Any:
        kind = rpc.REQUEST_TYPES.get(type(msg))
        if kind is None:
            raise LocalProtocolError(f"{type(msg).__name__} is not a registered request")
        body = wire.encode(msg)
        limit = self.params.rpc_timeout if timeout is None else timeout
        # A bare scope with an absolute deadline: `move_on_after` wraps the same scope in a
        # generator context manager, a cost paid on every request.
        with trio.CancelScope(deadline=trio.current_time() + limit):
            try:
                conn = await self.dialer.connection(to)
                answer = await conn.call(kind, body)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                raise transport_error("request", to, e) from e
            try:
                reply = rpc.decode_response(answer, self.params.max_frame)
            except RemoteProtocolError as e:
                self.count_fault(conn.link.source, e)
                raise
            if isinstance(reply, rpc.ErrorReply):
                raise Refused(reply.code, reply.detail)
            return reply
        raise TransportError(f"no answer from {ids.short(to.node_id)} within {limit} s")

    async def introduce(self, endpoint: Endpoint, *, timeout: float | None = None) -> NodeCert:
        limit = self.params.rpc_timeout if timeout is None else timeout
        with trio.move_on_after(limit):
            return await self.dialer.introduce(endpoint)
        raise TransportError("introduction timed out")

    async def aclose(self) -> None:
        """Stop serving, close the listener and every connection."""
        if self._serve_scope is not None:
            self._serve_scope.cancel()
        for listener in self._listeners:
            await listener.aclose()
        for scopes in self._inbound.values():
            for scope in scopes:
                scope.cancel()
        await self.dialer.aclose()


def _add(table: dict[str, set[trio.CancelScope]], key: str, scope: trio.CancelScope) -> None:
    table.setdefault(key, set()).add(scope)


def _discard(table: dict[str, set[trio.CancelScope]], key: str, scope: trio.CancelScope) -> None:
    scopes = table.get(key)
    if scopes is not None:
        scopes.discard(scope)
        if not scopes:
            del table[key]
