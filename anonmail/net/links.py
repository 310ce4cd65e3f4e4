"""One authenticated TCP connection: its envelopes, the handshake driver, and both ends.

`tcp.TcpNetwork` (see its module docstring for the transport's invariants) dials and accepts;
what happens on one connection lives here: `run_handshake` drives the sans-I/O handshake
(handshake.py) over the stream, a `Link` holds the stream and the frame codecs (frames.py) of an
established connection, `Outbound` is our side of a connection we dialled (requests out, answers
matched by `req_id`, no task of its own) and `Inbound` our side of one we accepted (each request
answered in its own task, at most `TcpLimits.max_in_flight` handlers running at once, `BUSY`
beyond; answers waiting to be written are charged to the connection's and the node's output
budgets, output.py).

Invariants: a frame is written whole or the link is closed (a half-written frame would desync
the counter nonces); a peer's fault on a connection is reported through `count_fault` against
that connection's source and ends the connection, never another; an answer to a request never
sent is a fault, a late answer to one abandoned (timeout) is not; a frame not written within
`send_timeout` closes the link (a peer that does not read cannot hold us); memory held for a
connection is bounded by its output share plus one frame queued, one frame being decoded and one
receive buffer (docs/transport.md "Memory per connection").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import trio

from anonmail import wire
from anonmail.clock import Clock
from anonmail.errors import LocalProtocolError, RemoteProtocolError, TransportError
from anonmail.net import rpc
from anonmail.net.base import Handler, Peer
from anonmail.net.frames import FrameDecoder, FrameEncoder
from anonmail.net.handshake import Established, Handshake
from anonmail.net.output import ConnectionOutput, NodeOutput
from anonmail.net.resumption import MAX_TICKETS, TICKET_LIFETIME
from anonmail.wire import Range, Size

logger = logging.getLogger("anonmail.net.tcp")

FaultCounter = Callable[[str, RemoteProtocolError], None]  # (source, the fault)

RECEIVE_SIZE = 65536
MAX_BODY = 16 << 20  # the largest max_frame NetworkParams allows
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

    max_connections: int = 256  # the outgoing pool size (inbound: admission.AdmissionLimits)
    max_tickets: int = MAX_TICKETS  # resumption tickets kept, per side (0: never resume)
    ticket_lifetime: float = TICKET_LIFETIME  # seconds a full handshake may be resumed for
    max_in_flight: int = 32  # requests being handled per connection; more are answered BUSY
    handshake_timeout: float = 5.0
    # Close a connection with no request and no handler running after this long (the dialler
    # after half of it). Long enough that a node's pool holds the peers it asks again within
    # minutes (bench lookup, 200 nodes: at 120 s, 14 of a lookup's 20 requests opened a new
    # connection); the pool and the accept cap bound how many stay open.
    idle_timeout: float = 600.0
    send_timeout: float = 30.0  # close a connection whose peer takes longer to take one frame
    max_queued_bytes: int = 4 << 20  # answers waiting to be written, per connection (output.py)
    max_queued_total: int = 128 << 20  # ... and on all inbound connections together


@dataclass
class TcpStats:
    """Bytes this node put on and took off the wire (handshakes and frames, both directions)."""

    sent: int = 0
    received: int = 0
    dials_full: int = 0  # connections we dialled that ran the full handshake
    dials_resumed: int = 0  # ... that resumed an earlier session instead
    accepts_full: int = 0  # connections we accepted that ran the full handshake
    accepts_resumed: int = 0  # ... that resumed an earlier session instead


async def run_handshake(stream: trio.SocketStream, hs: Handshake, clock: Clock,
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


class Link:
    """An established connection: the stream, who is on the other end, and the frame codecs."""

    def __init__(self, stream: trio.SocketStream, handshake: tuple[Established, bytes],
                 max_frame: int, source: str, stats: TcpStats, send_timeout: float) -> None:
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
        self.send_timeout = send_timeout
        self.closed = False

    async def send(self, envelope: Request | Response) -> None:
        """Raises LocalProtocolError (stream intact) if the envelope does not fit a frame, and
        trio.BrokenResourceError (link closed) if the peer does not take it within
        `send_timeout`."""
        async with self._send_lock:
            frame = self._encoder.encode(wire.encode(envelope))
            try:
                with trio.move_on_after(self.send_timeout) as writing:
                    await self.stream.send_all(frame)
                if writing.cancelled_caught:
                    raise trio.BrokenResourceError("the peer does not take what we send")
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


class Outbound:
    """Our side of a connection we dialled: send requests, collect answers by req_id."""

    def __init__(self, link: Link, count_fault: FaultCounter) -> None:
        self.link = link
        self._count_fault = count_fault
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
            self._count_fault(self.link.source, e)
            await self.close()
            raise

    async def close(self) -> None:
        await self.link.close()


class Inbound:
    """Our side of a connection we accepted: read requests, answer each in its own task."""

    def __init__(self, link: Link, peer: Peer, handler: Handler, limits: TcpLimits,
                 count_fault: FaultCounter, output: NodeOutput) -> None:
        self.link = link
        self.peer = peer
        self.handler = handler
        self.limits = limits
        self._count_fault = count_fault
        self.in_flight = 0  # handlers running (an answer waiting to be written is not one)
        self.output = ConnectionOutput(output, limits.max_queued_bytes)

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
        limits = self.limits
        while True:
            # Frames first: the first request may have arrived with the last handshake message.
            while (plain := self.link.decoder.next_frame()) is not None:
                req = wire.decode(plain, Request, max_size=self.link.max_frame)
                if self.output.full:
                    # The peer is not reading its answers: read nothing more until it does,
                    # rather than do work whose answers would be dropped (output.py).
                    with trio.move_on_after(limits.send_timeout):
                        await self.output.wait_room()
                    if self.output.full:
                        return
                if self.in_flight >= limits.max_in_flight:
                    # written here, not in a task: a peer flooding requests meets back-pressure
                    await self._send(req.req_id, wire.encode(_busy("too many requests in flight")))
                    continue
                self.in_flight += 1
                nursery.start_soon(self._answer, req)
            with trio.move_on_after(limits.idle_timeout) as idle:
                data = await self.link.receive()
            if idle.cancelled_caught:
                if self.in_flight:
                    continue  # a handler still working; answers merely unsent do not count
                return
            if not data:
                return
            self.link.decoder.receive_data(data)

    async def _answer(self, req: Request) -> None:
        try:
            reply = await self._dispatch(req)
        finally:
            # The handler is done: from here the answer counts against the output budget, not
            # the in-flight limit (counting it until written made a reading peer meet BUSY).
            self.in_flight -= 1
        await self._send(req.req_id, wire.encode(reply), kind=req.kind)

    async def _send(self, req_id: int, body: bytes, kind: int | None = None) -> None:
        """Write one answer within the output budgets; BUSY in its place if it does not fit."""
        if not self.output.reserve(len(body)):
            body = wire.encode(_busy("answers not read: output budget full"))
            self.output.force(len(body))
        size = len(body)
        try:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                try:
                    await self.link.send(Response(req_id, body))
                except LocalProtocolError:
                    logger.error("answer to %s does not fit in a frame", _kind_name(kind))
                    too_big = rpc.ErrorReply(rpc.ErrorCode.INTERNAL, "answer too large")
                    await self.link.send(Response(req_id, wire.encode(too_big)))
        finally:
            self.output.release(size)

    async def _dispatch(self, req: Request) -> Any:
        error = rpc.ErrorCode
        if req.kind not in rpc.REQUEST_TYPES.values():
            return rpc.ErrorReply(error.UNSUPPORTED, f"unknown request type {req.kind}")
        try:
            msg = rpc.decode_request(req.body, self.link.max_frame)
            if rpc.REQUEST_TYPES[type(msg)] != req.kind:
                raise RemoteProtocolError("request kind does not match its body")
        except RemoteProtocolError as e:
            self._count_fault(self.link.source, e)
            return rpc.ErrorReply(error.MALFORMED, _detail(e))
        try:
            reply = await self.handler(self.peer, msg)
        except RemoteProtocolError as e:
            self._count_fault(self.link.source, e)
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


def _busy(why: str) -> rpc.ErrorReply:
    return rpc.ErrorReply(rpc.ErrorCode.BUSY, why)


def _detail(e: Exception) -> str:
    return str(e)[:200]


def _kind_name(kind: int | None) -> str:
    return next((t.__name__ for t, k in rpc.REQUEST_TYPES.items() if k == kind), str(kind))
