"""The sender's end of one circuit: open it through its hops, call ops at its end, close it
(DESIGN.md §7; seed 002 §4.1 "A encrypts the session key with Z's public key, and asks the
go-between node X to deliver this to Z").

`Circuit.open(net, hops, rng, now=...)` sends one Open to the first hop; the onion
(anon/onion.py) carries every hop's session key, sealed to that hop alone, and the time it was
built (`now`, the sender's wall clock: hops refuse a stale or replayed onion); the answer is
the end's confirmation under every hop's backward key, so an Open that did not reach the end,
or reached someone else, is detected before anything is sent through it. `call(op)` sends one
cell and returns the end's decoded answer; cells are sequential (a lock), since each layer's
nonce is the cell counter. Any failure leaves the circuit `broken`: it is never used again (the
hops' counters may be out of step), and the caller builds a fresh one.

Errors: `ChannelError` (a TransportError) says the circuit failed and which hop is suspected
when that is known (`at`: the first hop, when it did not answer or refused for itself; None
when a hop further on failed or the answer did not decrypt, since any hop could be at fault).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import trio

from anonmail import wire
from anonmail.anon import messages as am
from anonmail.anon import onion
from anonmail.errors import ErrorCode, Refused, RemoteProtocolError, TransportError
from anonmail.net.base import Network
from anonmail.records.certs import NodeCert
from anonmail.rng import Rng

OPEN_TIMEOUT_PER_HOP = 10.0
# A circuit is reused only well inside the relays' limits (RelayLimits: idle 120 s, lifetime
# 1800 s, 256 cells), so a hop never drops it between two of our cells.
IDLE_REUSE = 60.0
LIFETIME_REUSE = 900.0
CELLS_REUSE = 128
CELL_TIMEOUT = am.MAX_FORWARD_DELAY_MS / 1000 + 60.0


class ChannelError(TransportError):
    """An anonymous channel failed (a hop did not answer, refused, or answered wrongly)."""

    def __init__(self, detail: str, at: bytes | None = None,
                 code: ErrorCode | None = None) -> None:
        super().__init__(detail)
        self.at = at
        self.code = code  # the refusal's code, when a hop refused


class CircuitClosed(ChannelError):
    """The circuit was already failed or retired before this call (nobody's fault now)."""


class Circuit:
    """One open circuit; `end` is the node at its end (Z, Y or W)."""

    def __init__(self, net: Network, hops: Sequence[NodeCert], circuit_id: bytes,
                 layers: onion.SenderLayers, padded: bool) -> None:
        self.net = net
        self.hops = tuple(hops)
        self.circuit_id = circuit_id
        self.layers = layers
        self.padded = padded
        self.broken = False  # failed or retired: never used again
        self.busy = False  # a call is in flight
        self.cells = 0
        self.opened = self.last_used = trio.current_time()
        self._lock = trio.Lock()

    def fresh(self, idle: float = IDLE_REUSE, lifetime: float = LIFETIME_REUSE) -> bool:
        """Usable without risking the hops' idle and lifetime limits (anon/relay.py)."""
        now = trio.current_time()
        if self.busy:
            return not self.broken
        return not self.broken and now - self.last_used < idle and \
            now - self.opened < lifetime and self.cells < CELLS_REUSE

    @property
    def end(self) -> NodeCert:
        return self.hops[-1]

    @property
    def first(self) -> NodeCert:
        return self.hops[0]

    @classmethod
    async def open(cls, net: Network, hops: Sequence[NodeCert], rng: Rng, *, now: float,
                   padded: bool = True) -> Circuit:
        """Open a circuit through `hops` (the last is its end); `now` is the sender's wall
        clock (clock.Clock), which the onion carries so hops can refuse a replay of it."""
        keys = [rng.bytes(32) for _ in hops]
        layers = onion.SenderLayers(keys)
        cid = rng.bytes(am.CIRCUIT_ID_SIZE)
        msg = am.Open(cid, onion.build_onion(hops, keys, rng, now))
        reply = await _ask(net, hops[0], msg, OPEN_TIMEOUT_PER_HOP * len(hops))
        if not isinstance(reply, am.Opened):
            raise ChannelError("a hop answered an Open wrongly", hops[0].node_id)
        try:
            layers.check_opened(reply.box)
        except RemoteProtocolError:
            raise ChannelError("the circuit's confirmation did not check") from None
        return cls(net, hops, cid, layers, padded)

    async def call(self, op: Any) -> Any:
        """`op` (anon/messages.py OPS) at the end; its answer (ANSWERS)."""
        async with self._lock:
            if self.broken:
                raise CircuitClosed("circuit no longer in use")
            self.busy = True
            box = self.layers.wrap(wire.encode(op), self.padded)
            try:
                reply = await _ask(self.net, self.first, am.Cell(self.circuit_id, box),
                                   CELL_TIMEOUT)
                if not isinstance(reply, am.CellReply):
                    raise ChannelError("the first hop answered a cell wrongly", self.first.node_id)
                return wire.decode_any(self.layers.unwrap(reply.box), am.ANSWERS,
                                       max_size=am.MAX_CELL)
            except RemoteProtocolError:
                self.broken = True
                raise ChannelError("the answer did not check") from None
            except BaseException:
                self.broken = True  # the hops' counters may be out of step: never again
                raise
            finally:
                self.busy = False
                self.cells += 1
                self.last_used = trio.current_time()

    async def close(self) -> None:
        """Best effort: the hops also drop an idle circuit on their own."""
        self.broken = True
        with trio.move_on_after(OPEN_TIMEOUT_PER_HOP):
            with suppress(TransportError, Refused, RemoteProtocolError):
                await self.net.request(self.first, am.Destroy(self.circuit_id))


async def _ask(net: Network, to: NodeCert, msg: Any, timeout: float) -> Any:
    try:
        return await net.request(to, msg, timeout=timeout)
    except Refused as e:
        # UNREACHABLE: a hop further on failed; GONE: the circuit expired at a hop (idle):
        # neither is the first hop's doing.
        at = None if e.code in (ErrorCode.UNREACHABLE, ErrorCode.GONE) else to.node_id
        raise ChannelError(f"a hop refused ({e.code.name})", at, e.code) from e
    except RemoteProtocolError as e:
        raise ChannelError("the first hop broke the protocol", to.node_id) from e
    except ChannelError:
        raise
    except TransportError as e:
        raise ChannelError("the first hop did not answer", to.node_id) from e
