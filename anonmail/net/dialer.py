"""Our outgoing connections: at most one per peer node id, dialled once however many requests
wait for it, retired when idle, and the least recently used closed first when the pool is full.

Invariants (see net/tcp.py for the transport's): whom we reached is decided by the handshake
alone (`expect`: the node id the certificate names); a valid node answering at an endpoint in
place of the one named is a `BadContact`, never a fault, and is remembered for
`ENDPOINT_MEMORY` seconds so that more certificates naming another id there fail without a dial
(a liar's FIND_NODE answer can name one victim's endpoint under many ids); an endpoint that
says it is on another network is remembered (bounded) for the bootstrap's message.

A redial of a node we talked to within `TcpLimits.ticket_lifetime` resumes that session
(net/resumption.py: no signatures, the peer's certificate from the ticket) when the node still
holds our ticket, and runs the full handshake, in the same round trip, when it does not. Every
connection we make files the ticket for the next one (`TcpNetwork.dial_tickets`, by node id).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from anonmail.errors import BadContact, OtherNetwork, RemoteProtocolError, TransportError
from anonmail.net.admission import source_of
from anonmail.net.handshake import Handshake, Role, UnexpectedPeer
from anonmail.net.links import Link, Outbound, run_handshake
from anonmail.net.sockio import SocketIO, connect
from anonmail.records import ids
from anonmail.records.certs import Endpoint, NodeCert

if TYPE_CHECKING:
    from anonmail.net.tcp import TcpNetwork

MAX_OTHER_NETWORKS = 64  # endpoints remembered as answering for another network
# Who proved to answer at an endpoint we dialled is remembered this long (and for this many
# endpoints): a certificate naming another node there within it is a BadContact without a dial.
# One lookup through a liar names the victim's endpoint under up to k ids at once; without this
# each would cost the victim a handshake and us a handshake token at the victim (issue 7 item 1).
# Short, so that a node that changed its key at the same endpoint is unreachable only briefly.
ENDPOINT_MEMORY = 60.0
MAX_ENDPOINTS_REMEMBERED = 4096
# Seconds between walks of the pool for closed and idle connections: a twentieth of the idle
# limit (15 s at the default 10 minutes), at most MAX_SWEEP_INTERVAL. A walk visits every pooled
# connection; walking a full pool every second was 1.6% of a node's CPU in `bench lookup`.
MAX_SWEEP_INTERVAL = 15.0
SWEEP_FRACTION = 1 / 20


def transport_error(what: str, peer: NodeCert | None, e: Exception) -> TransportError:
    """Socket trouble is not the peer's fault: report it as TransportError (naming `peer`'s
    short id, formatted only then)."""
    to = f" to {ids.short(peer.node_id)}" if peer is not None else ""
    return TransportError(f"{what}{to}: {type(e).__name__}")


@contextlib.contextmanager
def transport_errors(what: str, peer: NodeCert | None = None) -> Iterator[None]:
    """`transport_error` around a block."""
    try:
        yield
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        raise transport_error(what, peer, e) from e


class Dialer:
    """The outgoing half of a `TcpNetwork` (its identity, limits and fault counter)."""

    def __init__(self, net: TcpNetwork) -> None:
        self.net = net
        self.other_networks: dict[str, bytes] = {}  # str(endpoint) -> the network it is on
        self._outbound: dict[ids.NodeId, Outbound] = {}
        self._dialing: dict[ids.NodeId, trio.Lock] = {}
        self._answered_at: dict[str, tuple[bytes, float]] = {}  # endpoint -> (node id, when)
        self._next_sweep = 0.0

    @property
    def open_connections(self) -> int:
        return sum(not c.closed for c in self._outbound.values())

    async def introduce(self, endpoint: Endpoint) -> NodeCert:
        """Reach whoever listens at `endpoint` (bootstrap) and keep the connection."""
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

    async def connection(self, to: NodeCert) -> Outbound:
        """The live connection to `to`'s node, dialling it if there is none (once, not per
        concurrent caller)."""
        now = trio.current_time()
        if now >= self._next_sweep:  # not per request: a sweep walks the whole pool
            self._next_sweep = now + min(MAX_SWEEP_INTERVAL,
                                         self.net.limits.idle_timeout * SWEEP_FRACTION)
            await self._sweep()
        nid = to.node_id
        conn = self._outbound.get(nid)
        if conn is not None and not conn.closed:
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
            seen = self._answered_at.get(str(ep))
            if (seen is not None and seen[0] != to.node_id
                    and trio.current_time() - seen[1] < ENDPOINT_MEMORY):
                last = BadContact("another node answered at this endpoint a moment ago")
                continue
            try:
                return await self._open(ep, to.node_id)
            except (TransportError, RemoteProtocolError) as e:
                last = e  # try the next endpoint; report the last failure
        assert last is not None
        raise last

    async def _open(self, ep: Endpoint, expect: ids.NodeId | None) -> Outbound:
        net = self.net
        source = source_of(ep.host)
        with transport_errors("connect"):
            io = SocketIO(await connect(ep.host, ep.port), net.limits.send_timeout, net.stats)
        try:
            # Taken is spent, whatever happens next: a ticket is good for one attempt.
            ticket = (None if expect is None else
                      net.dial_tickets.take(expect, net.clock.now(), net.local_cert))
            hs = Handshake(Role.INITIATOR, net.key, net.local_cert, net.params, net.rng,
                           expect=expect, cert_cache=net.cert_cache, resume=ticket,
                           ticket_lifetime=net.limits.ticket_lifetime)
            with transport_errors("handshake"):
                done = await run_handshake(io, hs, net.clock)
        except OtherNetwork as e:
            io.close()
            if len(self.other_networks) >= MAX_OTHER_NETWORKS:
                self.other_networks.pop(next(iter(self.other_networks)))
            self.other_networks[str(ep)] = e.network_id
            raise
        except UnexpectedPeer as e:
            # Whoever answered proved a valid identity; the certificate that sent us here may
            # come from anyone. Charging the address would let a liar get its owner banned.
            io.close()
            self._remember(ep, e.node_id)
            raise BadContact("another node answers at the endpoint dialled") from e
        except RemoteProtocolError as e:
            net.count_fault(source, e)
            io.close()
            raise
        except BaseException:
            io.close()
            raise
        est = done[0]
        self._remember(ep, est.peer.node_id)
        net.dial_tickets.put(est.peer.node_id, est.ticket)
        if est.resumed:
            net.stats.dials_resumed += 1
        else:
            net.stats.dials_full += 1
        unit = net.admission.unit_of(source, est.peer.node_id)
        return Outbound(Link(io, done, net.params.max_frame, unit), net.count_fault)

    def _remember(self, ep: Endpoint, node_id: bytes) -> None:
        key = str(ep)
        self._answered_at.pop(key, None)  # re-inserted last: the oldest entry goes first
        if len(self._answered_at) >= MAX_ENDPOINTS_REMEMBERED:
            self._answered_at.pop(next(iter(self._answered_at)))
        self._answered_at[key] = (node_id, trio.current_time())

    async def _sweep(self) -> None:
        """Forget closed connections and close idle ones. The idle limit here is half the
        acceptor's, so we retire a connection before the peer would close it under us."""
        stale = trio.current_time() - self.net.limits.idle_timeout / 2
        gone = [nid for nid, conn in self._outbound.items()
                if conn.closed or (not conn.busy and conn.last_used < stale)]
        # Detach all before the first await: a concurrent sweep must not see them.
        for conn in [self._outbound.pop(nid) for nid in gone]:
            await conn.close()

    async def _make_room(self) -> None:
        if len(self._outbound) < self.net.limits.max_connections:
            return
        # A connection the peer closed since the last sweep goes first, then the least recently
        # used of those not waiting for an answer.
        idle = [c for c in self._outbound.items() if not c[1].busy]
        if not idle:
            raise TransportError("too many outgoing connections in use")
        nid, conn = min(idle, key=lambda item: (not item[1].closed, item[1].last_used))
        del self._outbound[nid]
        await conn.close()

    async def aclose(self) -> None:
        for conn in list(self._outbound.values()):
            await conn.close()
        self._outbound.clear()
