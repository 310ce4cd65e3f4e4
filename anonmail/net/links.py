"""One authenticated TCP connection: its envelopes, the handshake driver, and our dialling end.

`tcp.TcpNetwork` (see its module docstring for the transport's invariants) dials and accepts;
what happens on one connection lives here and in inbound.py: `run_handshake` drives the sans-I/O
handshake (handshake.py) over the stream, a `Link` takes the socket of an established connection
(sockio.py: frames written with one `send` when the kernel takes them, no trio stream) and holds
the frame codecs (frames.py), `Outbound` is our side of a connection we dialled (requests out,
answers matched by `req_id`, no task of its own) and `inbound.Inbound` our side of one we
accepted.

Invariants: a frame is written whole or the link is closed (a half-written frame would desync
the counter nonces), and frames are written in counter order: a frame is encoded and handed to
the socket with no checkpoint between (sockio.py queues it whole if the kernel does not take it
at once); a peer's fault on a connection is reported through `count_fault` against that
connection's source and ends the connection, never another; an answer to a request never sent is
a fault, a late answer to one abandoned (timeout) is not; a connection whose peer takes no frame
within `send_timeout` is closed (a peer that does not read cannot hold us); memory held for a
connection is bounded by its output share plus one frame queued, one frame being decoded and one
receive buffer (docs/transport.md "Memory per connection").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from anonmail.clock import Clock
from anonmail.errors import RemoteProtocolError, TransportError
from anonmail.net import envelope
from anonmail.net.envelope import Request, Response
from anonmail.net.frames import FrameDecoder, FrameEncoder
from anonmail.net.handshake import Established, Handshake
from anonmail.net.resumption import MAX_TICKETS, TICKET_LIFETIME
from anonmail.net.sockio import SocketIO

__all__ = ["FaultCounter", "Link", "Outbound", "Request", "Response", "TcpLimits", "TcpStats",
           "run_handshake"]

FaultCounter = Callable[[str, RemoteProtocolError], None]  # (source, the fault)

RECEIVE_SIZE = 65536


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


async def run_handshake(io: SocketIO, hs: Handshake, clock: Clock) -> tuple[Established, bytes]:
    """Drive `hs` to completion; returns the result and the bytes that came after it (the
    initiator sends its first request right behind its last handshake message)."""
    while True:
        event = hs.next_event(clock.now())
        out = hs.data_to_send()
        if out:
            await io.send(out)
        if isinstance(event, Established):
            return event, hs.trailing_data
        data = await io.receive(RECEIVE_SIZE)
        if not data:
            raise TransportError("connection closed during the handshake")
        hs.receive_data(data)


class Link:
    """An established connection: its socket (sockio.py, taken over from the handshake), who
    is on the other end, and the frame codecs. Whoever made the socket closes it."""

    def __init__(self, io: SocketIO, handshake: tuple[Established, bytes], max_frame: int,
                 source: str) -> None:
        est, trailing = handshake
        self.io = io
        self.peer = est.peer
        self.source = source
        self.max_frame = max_frame
        self._encoder = FrameEncoder(est.keys.send, max_frame)
        self.decoder = FrameDecoder(est.keys.recv, max_frame)
        self.decoder.receive_data(trailing)

    @property
    def closed(self) -> bool:
        return self.io.closed

    def frame(self, plaintext: bytes) -> bytes:
        """The next frame (an encoded envelope, envelope.py), for `io.send` right away: no
        checkpoint between the two, so frames go out in counter order with no lock. Raises
        LocalProtocolError (stream intact) if it does not fit a frame."""
        return self._encoder.encode(plaintext)

    async def send(self, plaintext: bytes) -> None:
        """`frame` and `io.send`: raises LocalProtocolError (stream intact) if `plaintext`
        does not fit a frame, and trio.BrokenResourceError (link closed) if the peer does not
        take it within `send_timeout`."""
        await self.io.send(self._encoder.encode(plaintext))

    async def receive(self) -> bytes:
        return await self.io.receive(RECEIVE_SIZE)

    async def close(self) -> None:
        self.io.close()


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
        answers = self._answers
        try:
            await self.link.send(envelope.encode_request(rid, kind, body))
            while rid not in answers:
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
                    progress, self._progress = self._progress, trio.Event()
                    progress.set()
            return answers.pop(rid)
        finally:
            self._waiting.discard(rid)
            answers.pop(rid, None)
            self.last_used = trio.current_time()

    async def _read(self) -> None:
        if self.closed:
            raise TransportError("connection closed")
        data = await self.link.receive()
        if not data:
            await self.close()
            raise TransportError("connection closed by the peer")
        link = self.link
        link.decoder.receive_data(data)
        try:
            while (plain := link.decoder.next_frame()) is not None:
                answer = envelope.decode_response(plain, link.max_frame)
                if answer.req_id in self._waiting:
                    self._answers[answer.req_id] = answer.body
                elif answer.req_id >= self._next_id:
                    raise RemoteProtocolError("answer to a request never sent")
                # else: its asker gave up (timeout); a late answer is no fault
        except RemoteProtocolError as e:
            self._count_fault(link.source, e)
            await self.close()
            raise

    async def close(self) -> None:
        await self.link.close()
