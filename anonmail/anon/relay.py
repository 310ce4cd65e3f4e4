"""The relay role every node runs: circuits through it, and what it does at a circuit's end
(DESIGN.md §7; seed 002 §4.1 X "asks ... to deliver this to Z", §4.2 Z stores for A).

`RelayService` answers Open, Cell, Destroy and Locate (anon/messages.py):

* Open: opens this hop's onion layer (anon/onion.py) and admits its session key once, within
  the clock skew of the layer's creation time (anon/replay.py: a hop replaying the onion it
  passed on is refused, T-ANON-REPLAY). With a next hop it draws a fresh circuit id for the
  next link, passes the inner onion on and adds its layer to the confirmation; at the end it
  confirms. The circuit is remembered under (previous hop, circuit id);
* Cell: removes this hop's layer; a relay passes the rest to the next hop and adds its layer
  to the answer; the end decodes the op and answers it (anon/anonymizer.py), padding its answer
  as the request was padded;
* Locate: "the node closest to this key", signed (asked of X directly, of Y through X).

Budgets, so a relay cannot be used to amplify load: open circuits per node and per previous
hop, cells and bytes per circuit (a Forward's fan-out counts as its request times its
targets), one cell at a time per circuit, idle and total lifetimes, and lookups (a Locate or
FindNodes costs this node a whole lookup) per minute per previous hop and in all. A circuit's
slot is taken before its Open awaits the next hop (concurrent Opens cannot pass the caps); the
bytes of cells held while a next hop or a Forward's delay is awaited are budgeted per previous
hop and in all; a Destroy cancels what its circuit holds (its slot is not freed while a
minute-long Forward still sits in memory).

Whose fault: a bad Open or Cell *content* (a layer that does not open, an invalid next-hop
certificate) is answered with a typed refusal, never a fault: the hop cannot tell the sender
from a relay that passed it on, and charging the relay would let any sender get honest relays
banned (threat T-FAULT-REFLECT). A schema error in the message itself stays the direct peer's
fault (the transport counts it). A next hop that fails, or answers more than this hop's layer
leaves room for, is `ErrorCode.UNREACHABLE` (passing it on would get this relay charged).

Nothing here logs; `observe` (optional) gets a `Sighting` per event: what this node saw (ids,
sizes, times), for the demo and the tests that check what each role could see.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import trio

from anonmail import crypto, wire
from anonmail.anon import messages as am
from anonmail.anon import onion
from anonmail.anon.anonymizer import Anonymizer, Sighting
from anonmail.anon.replay import OnionReplayGuard
from anonmail.clock import Clock
from anonmail.errors import (
    DecryptError,
    ErrorCode,
    LocalError,
    Refusal,
    Refused,
    RemoteProtocolError,
    TransportError,
)
from anonmail.net.base import Network, Peer
from anonmail.records.certs import CertCache, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.store.client import Lookup

RELAY_TIMEOUT = am.MAX_FORWARD_DELAY_MS / 1000 + 30.0  # a Forward may be held, then fan out
# An Open is answered at once by a live next hop; a dead one is reported UNREACHABLE well before
# the sender gives up on the first hop (circuit.OPEN_TIMEOUT_PER_HOP x hops), so the sender
# never blames a live relay for a dead node further on.
OPEN_RELAY_TIMEOUT = 8.0


@dataclass(frozen=True)
class RelayLimits:
    circuits: int = 1024  # open circuits on this node
    circuits_per_peer: int = 64  # opened by one previous hop
    cells_per_circuit: int = 256
    bytes_per_circuit: int = 128 << 20  # in and out, a Forward's fan-out included
    idle: float = 120.0  # seconds without a cell before a circuit is dropped
    lifetime: float = 1800.0
    # A Locate or FindNodes makes this node run a whole lookup (tens of requests): at most this
    # many a minute for one previous hop, and for all of them together.
    lookups_per_peer: int = 120
    lookups: int = 600
    # Bytes of cells in flight (awaiting the next hop, or held by a Forward's delay of up to a
    # minute): a previous hop may hold 32 largest cells, everyone together 128.
    held_bytes_per_peer: int = 32 << 20
    held_bytes: int = 128 << 20


@dataclass(eq=False)
class _Circuit:
    prev: bytes
    keys: onion.HopKeys
    next: NodeCert | None
    next_id: bytes | None
    created: float
    last: float
    counter: int = 0
    cells: int = 0
    bytes: int = 0
    busy: bool = False
    scope: trio.CancelScope | None = None  # the Open or cell in flight; a Destroy cancels it


class RelayService:
    """The relay and anonymizer roles of one node (module docstring)."""

    requests = (am.Open, am.Cell, am.Destroy, am.Locate)

    def __init__(self, net: Network, dht: Lookup, key: crypto.SigningKey, params: NetworkParams,
                 clock: Clock, rng: Rng, *, limits: RelayLimits = RelayLimits(),
                 observe: Callable[[Sighting], object] | None = None,
                 cert_cache: CertCache | None = None) -> None:
        self.net = net
        self.dht = dht
        self.key = key
        self.params = params
        self.clock = clock
        self.rng = rng
        self.limits = limits
        self.observe = observe
        self.circuits: dict[tuple[bytes, bytes], _Circuit] = {}
        self._lookups: dict[bytes, deque[float]] = {}
        self._held: dict[bytes, int] = {}  # bytes of cells in flight, by previous hop
        self._held_total = 0
        self.cert_cache = cert_cache if cert_cache is not None else CertCache()
        self.replays = OnionReplayGuard(params.clock_skew, started=clock.now())  # T-ANON-REPLAY
        self.end = Anonymizer(net, dht, key, params, clock, self._saw, self.cert_cache)

    def _saw(self, s: Sighting) -> None:
        if self.observe is not None:
            self.observe(s)

    async def handle(self, peer: Peer, msg: Any) -> Any:
        route: dict[type, Callable[[Peer, Any], Awaitable[Any]]] = {
            am.Cell: self._cell, am.Open: self._open, am.Locate: self._locate,
            am.Destroy: self._destroy}  # the types in `requests`
        return await route[type(msg)](peer, msg)

    async def _locate(self, peer: Peer, msg: am.Locate) -> am.Located:
        self._lookup_budget(peer.node_id)
        self._saw(Sighting(self.clock.now(), "end", "Locate", peer.node_id, None,
                           len(wire.encode(msg)), msg.key))
        return await self.end.locate(msg.key)

    def _lookup_budget(self, prev: bytes) -> None:
        """Charge one lookup to `prev` (and to everyone); QUOTA when a minute's budget is spent."""
        now = self.clock.now()
        mine = self._lookups.setdefault(prev, deque())
        everyone = self._lookups.setdefault(b"", deque())
        for q in (mine, everyone):
            while q and now - q[0] > 60.0:
                q.popleft()
        if len(mine) >= self.limits.lookups_per_peer or len(everyone) >= self.limits.lookups:
            raise Refusal("too many lookups asked", ErrorCode.QUOTA)
        mine.append(now)
        everyone.append(now)
        if len(self._lookups) > 2 * self.limits.lookups:
            # Forget peers with nothing in the last minute. At most `lookups` peers have, so
            # this leaves the table that small and runs once per that many new peers.
            for k in [k for k, q in self._lookups.items() if k and now - q[-1] > 60.0]:
                del self._lookups[k]

    # -- circuits ---------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        lim = self.limits
        for k, c in list(self.circuits.items()):
            if not c.busy and (now - c.last > lim.idle or now - c.created > lim.lifetime):
                del self.circuits[k]

    async def _open(self, peer: Peer, msg: am.Open) -> am.Opened:
        now = self.clock.now()
        self._expire(now)
        ident = (peer.node_id, msg.circuit)
        if ident in self.circuits:
            raise Refusal("circuit id in use", ErrorCode.CONFLICT)
        if len(self.circuits) >= self.limits.circuits or sum(
                1 for (p, _) in self.circuits if p == peer.node_id) >= \
                self.limits.circuits_per_peer:
            raise Refusal("too many open circuits", ErrorCode.QUOTA)
        try:
            layer = onion.open_onion(self.key, msg.onion)
            if layer.next is not None:
                self.cert_cache.verify(layer.next, self.params, now)
        except RemoteProtocolError:
            raise Refusal("not an onion for this node", ErrorCode.DENIED) from None
        # Before anything is answered or passed on: an onion seen before, or outside the clock
        # skew, is a hop replaying one it forwarded (anon/replay.py).
        self.replays.admit(layer.key, layer.created, now, peer.node_id)
        if layer.next is not None and layer.next.node_id in (peer.node_id, self.key_id):
            raise Refusal("a circuit may not loop", ErrorCode.DENIED)
        keys = onion.HopKeys.from_session(layer.key)
        self._saw(Sighting(now, "relay" if layer.next else "end", "open", peer.node_id,
                           None if layer.next is None else layer.next.node_id,
                           len(msg.onion)))
        if layer.next is None:
            self.circuits[ident] = _Circuit(peer.node_id, keys, None, None, now, now)
            return am.Opened(onion.seal_layer(keys.backward, onion.OPENED_COUNTER, onion.OPENED))
        # The slot is taken before the await, so Opens racing this one count it against the
        # caps; busy until the next hop confirms (a cell meanwhile is refused).
        c = _Circuit(peer.node_id, keys, layer.next, self.rng.bytes(am.CIRCUIT_ID_SIZE), now,
                     now, busy=True)
        self.circuits[ident] = c
        assert c.next_id is not None
        reply = await self._in_flight(ident, c, self._next(layer.next,
                                                           am.Open(c.next_id, layer.inner)))
        if not isinstance(reply, am.Opened) or \
                len(reply.box) > am.MAX_OPENED - crypto.AEAD_TAG_SIZE:
            self._forget(ident, c)
            raise Refusal("next hop answered wrongly", ErrorCode.UNREACHABLE)
        c.busy = False
        return am.Opened(onion.seal_layer(keys.backward, onion.OPENED_COUNTER, reply.box))

    async def _in_flight(self, ident: tuple[bytes, bytes], c: _Circuit,
                         work: Awaitable[Any]) -> Any:
        """Await `work` for circuit `c`, which a Destroy may cancel; on any failure the
        circuit is forgotten (its hops' counters may be out of step)."""
        with trio.CancelScope() as c.scope:
            try:
                return await work
            except BaseException:
                self._forget(ident, c)
                raise
            finally:
                c.scope = None
        self._forget(ident, c)
        raise Refusal("circuit destroyed", ErrorCode.GONE)

    def _forget(self, ident: tuple[bytes, bytes], c: _Circuit) -> None:
        if self.circuits.get(ident) is c:
            del self.circuits[ident]

    @property
    def key_id(self) -> bytes:
        return self.net.local_cert.node_id

    async def _next(self, to: NodeCert, msg: Any) -> Any:
        timeout = OPEN_RELAY_TIMEOUT if isinstance(msg, am.Open) else RELAY_TIMEOUT
        try:
            return await self.net.request(to, msg, timeout=timeout)
        except (TransportError, RemoteProtocolError, Refused) as e:
            raise Refusal("next hop did not answer", ErrorCode.UNREACHABLE) from e

    async def _cell(self, peer: Peer, msg: am.Cell) -> am.CellReply:
        now = self.clock.now()
        self._expire(now)
        ident = (peer.node_id, msg.circuit)
        c = self.circuits.get(ident)
        if c is None:
            raise Refusal("no such circuit", ErrorCode.GONE)
        if c.busy:
            raise Refusal("one cell at a time", ErrorCode.QUOTA)
        if c.cells >= self.limits.cells_per_circuit or \
                c.bytes + len(msg.box) > self.limits.bytes_per_circuit:
            del self.circuits[ident]
            raise Refusal("circuit budget spent", ErrorCode.QUOTA)
        size = len(msg.box)
        held = self._held.get(peer.node_id, 0)
        if held + size > self.limits.held_bytes_per_peer or \
                self._held_total + size > self.limits.held_bytes:
            raise Refusal("too many bytes in flight", ErrorCode.QUOTA)
        n = c.counter
        try:
            data = onion.open_layer(c.keys.forward, n, msg.box)
        except DecryptError:
            del self.circuits[ident]  # out of step or altered: never used again
            raise Refusal("cell failed authentication", ErrorCode.DENIED) from None
        c.counter, c.cells, c.bytes, c.busy, c.last = n + 1, c.cells + 1, \
            c.bytes + size, True, now
        self._held[peer.node_id] = held + size
        self._held_total += size
        try:
            out = await self._in_flight(ident, c, self._onward(peer, c, data, size, now))
        finally:
            self._held_total -= size
            left = self._held[peer.node_id] - size
            if left:
                self._held[peer.node_id] = left
            else:
                del self._held[peer.node_id]
        c.busy, c.last = False, self.clock.now()
        c.bytes += len(out)
        return am.CellReply(onion.seal_layer(c.keys.backward, n, out))

    async def _onward(self, peer: Peer, c: _Circuit, data: bytes, size: int,
                      now: float) -> bytes:
        """A cell's inner bytes passed to the next hop, or answered here at the end."""
        if c.next is None:
            return await self._at_end(peer, c, data)
        assert c.next_id is not None
        self._saw(Sighting(now, "relay", "cell", peer.node_id, c.next.node_id, size))
        reply = await self._next(c.next, am.Cell(c.next_id, data))
        if not isinstance(reply, am.CellReply) or \
                len(reply.box) > am.MAX_CELL - crypto.AEAD_TAG_SIZE:
            raise Refusal("next hop answered wrongly", ErrorCode.UNREACHABLE)
        return reply.box

    async def _at_end(self, peer: Peer, c: _Circuit, data: bytes) -> bytes:
        try:
            body, padded = onion.unpad(data)
            op = wire.decode_any(body, am.OPS, max_size=am.MAX_CELL)
        except RemoteProtocolError:
            raise Refusal("not an operation", ErrorCode.DENIED) from None
        if isinstance(op, am.Locate | am.FindNodes):
            self._lookup_budget(peer.node_id)
        def spend(n: int) -> bool:
            """Charge `n` bytes of fan-out to the circuit, if its budget has them."""
            if c.bytes + n > self.limits.bytes_per_circuit:
                return False
            c.bytes += n
            return True

        answer = await self.end.answer(peer.node_id, op, len(data), spend, self.rng)
        try:
            return onion.pad(wire.encode(answer), padded)
        except LocalError:  # the anonymizer keeps answers within a cell; this is a backstop
            return onion.pad(wire.encode(am.OpFailed("answer too large")), padded)

    async def _destroy(self, peer: Peer, msg: am.Destroy) -> am.Destroyed:
        c = self.circuits.pop((peer.node_id, msg.circuit), None)
        if c is not None and c.scope is not None:
            c.scope.cancel()  # what it holds goes with its slot
        if c is not None and c.next is not None and c.next_id is not None:
            # best effort: the next hop's idle timer ends it anyway
            with suppress(TransportError, RemoteProtocolError, Refused):
                await self.net.request(c.next, am.Destroy(c.next_id))
        return am.Destroyed()

