"""Our side of a connection we accepted: read requests, answer each, within the connection's limits.

A request is answered in the task that read it, for as long as its handler does not wait: the
answer is computed, encoded and handed to the kernel (sockio.py) before the next frame is looked
at, with no task spawned and no cancel scope entered (a DHT FIND_NODE handler, or any handler
that returns without awaiting anything that blocks). A handler that does wait (storage I/O, a
relay's own requests, a lock) keeps the task it started in, and a new task takes over reading
(`_read`), so a slow handler never holds up the connection's other requests. No handler declares
anything: whether it waited is seen when it first yields to trio (`_Resume` drives it on from
there, in the same task, exactly as `await` would have). At most `TcpLimits.max_in_flight`
handlers run at once per connection, `BUSY` beyond; answers waiting to be written are charged to
the connection's and the node's output budgets (output.py). One timer task per connection closes
it after `idle_timeout` with no request received and no handler running.

Invariants: a peer's fault on the connection ends the connection and is returned by `run` (the
caller counts it against the connection's judged unit), never another connection; an answer that
does not fit the budgets is replaced by BUSY, one that does not fit a frame by INTERNAL; our own
bug in a handler is logged and answered INTERNAL, never a crash; while the connection's output
queue is full its reader reads no further request, for at most `send_timeout` (then the
connection is closed).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Coroutine, Generator
from typing import Any

import trio

from anonmail import wire
from anonmail.errors import LocalProtocolError, RemoteProtocolError
from anonmail.net import envelope, rpc
from anonmail.net.base import Handler, Peer
from anonmail.net.envelope import Request
from anonmail.net.links import FaultCounter, Link, TcpLimits
from anonmail.net.output import ConnectionOutput, NodeOutput

logger = logging.getLogger("anonmail.net.tcp")

Answering = Coroutine[Any, Any, None]


class Inbound:
    """Our side of a connection we accepted (the module docstring)."""

    def __init__(self, link: Link, peer: Peer, handler: Handler, limits: TcpLimits,
                 count_fault: FaultCounter, output: NodeOutput) -> None:
        self.link = link
        self.peer = peer
        self.handler = handler
        self.limits = limits
        self._count_fault = count_fault
        self.in_flight = 0  # handlers running (an answer waiting to be written is not one)
        self.output = ConnectionOutput(output, limits.max_queued_bytes)
        self.last_heard = trio.current_time()  # when the last bytes came in
        self._fault: RemoteProtocolError | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self) -> RemoteProtocolError | None:
        """Serve until the peer leaves, idles out or misbehaves (returns the fault)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._idle_timer)
            await self._read()
        return self._fault

    async def _read(self) -> None:
        """Read and answer requests until the connection ends (then end it all), or until a
        handler waits: then this task is that handler's, and a new task reads on."""
        assert self._nursery is not None
        try:
            waiting = await self._read_requests()
        except RemoteProtocolError as e:
            self._fault = e
            waiting = None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            waiting = None
        if waiting is None:
            self._nursery.cancel_scope.cancel()  # nobody is left to answer
            return
        self._nursery.start_soon(self._read)
        await _Resume(*waiting)

    async def _read_requests(self) -> tuple[Answering, Any] | None:
        """Answer what comes in; return a handler that waited (its coroutine and what it
        yielded to trio), or None when the connection is over."""
        link, limits, output, nursery = self.link, self.limits, self.output, self._nursery
        decoder = link.decoder
        assert nursery is not None
        while True:
            # Frames first: the first request may have arrived with the last handshake message,
            # and a new reader finds what its predecessor had read but not answered.
            while (plain := decoder.next_frame()) is not None:
                req = envelope.decode_request(plain, link.max_frame)
                if output.full:
                    # The peer is not reading its answers: read nothing more until it does,
                    # rather than do work whose answers would be dropped (output.py).
                    with trio.move_on_after(limits.send_timeout):
                        await output.wait_room()
                    if output.full:
                        return None
                if self.in_flight >= limits.max_in_flight:
                    # written here, not handed off: a peer flooding requests meets back-pressure
                    await self._send(req.req_id, wire.encode(_busy("too many requests in flight")))
                    continue
                self.in_flight += 1
                if decoder.ready():
                    # More requests were read with this one (pipelined): each is answered in
                    # its own task, so a burst beyond max_in_flight meets BUSY, as it would if
                    # every handler waited.
                    nursery.start_soon(self._answer, req)
                    continue
                answering = self._answer(req)
                try:
                    trap = answering.send(None)
                except StopIteration:
                    continue  # answered (or queued for writing) without waiting
                return answering, trap
            data = await link.receive()
            if not data:
                return None
            self.last_heard = trio.current_time()
            decoder.receive_data(data)

    async def _idle_timer(self) -> None:
        """End the connection once nothing was received for `idle_timeout` and no handler is
        running (answers merely unsent do not count: the send timeout covers them)."""
        idle = self.limits.idle_timeout
        deadline = self.last_heard + idle
        while True:
            await trio.sleep_until(deadline)
            now = trio.current_time()
            if self.last_heard + idle > now:
                deadline = self.last_heard + idle  # heard from since
            elif self.in_flight:
                deadline = now + idle  # a handler still working
            else:
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()
                return

    async def _answer(self, req: Request) -> None:
        try:
            reply = await self._dispatch(req)
        finally:
            # The handler is done: from here the answer counts against the output budget, not
            # the in-flight limit (counting it until written made a reading peer meet BUSY).
            self.in_flight -= 1
        frame, size = self._frame(req.req_id, wire.encode(reply), req.kind)
        del reply  # while it waits to be written, an answer is held once: as its frame
        await self._write(frame, size)

    async def _send(self, req_id: int, body: bytes) -> None:
        """Write one answer within the output budgets (`_frame`, `_write`)."""
        await self._write(*self._frame(req_id, body))

    def _frame(self, req_id: int, body: bytes, kind: int | None = None) -> tuple[bytes, int]:
        """Charge an answer to the output budgets and frame it: BUSY in its place if it does
        not fit them, INTERNAL if it does not fit a frame. Returns the frame and the charge
        for `_write` to release."""
        if not self.output.reserve(len(body)):
            body = wire.encode(_busy("answers not read: output budget full"))
            self.output.force(len(body))
        size = len(body)
        try:
            return self.link.frame(envelope.encode_response(req_id, body)), size
        except LocalProtocolError:
            logger.error("answer to %s does not fit in a frame", _kind_name(kind))
            too_big = rpc.ErrorReply(rpc.ErrorCode.INTERNAL, "answer too large")
            return self.link.frame(envelope.encode_response(req_id, wire.encode(too_big))), size
        except BaseException:
            self.output.release(size)
            raise

    async def _write(self, frame: bytes, size: int) -> None:
        """Hand a frame from `_frame` to the socket right away (frames go out in counter
        order) and release its charge once written, or once the connection is gone."""
        try:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.link.io.send(frame)
        finally:
            self.output.release(size)

    async def _dispatch(self, req: Request) -> Any:
        error = rpc.ErrorCode
        if req.kind not in rpc.REQUEST_BY_TAG:
            return rpc.ErrorReply(error.UNSUPPORTED, f"unknown request type {req.kind}")
        try:
            # a body of another type than `kind` says is refused here (the peer's fault)
            msg = rpc.decode_request_of(req.kind, req.body, self.link.max_frame)
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


class _Resume:
    """Await the rest of a coroutine stepped by hand until it first yielded `trap` to trio:
    what `await coro` would have done from there on, in the task that stepped it (trio's
    traps belong to the task that yielded them)."""

    def __init__(self, coro: Answering, trap: Any) -> None:
        self._coro = coro
        self._trap = trap

    def __await__(self) -> Generator[Any, Any, None]:
        coro, trap = self._coro, self._trap
        while True:
            try:
                sent = yield trap
            except BaseException as e:  # thrown into this task: on into the coroutine
                try:
                    trap = coro.throw(e)
                except StopIteration:
                    return
            else:
                try:
                    trap = coro.send(sent)
                except StopIteration:
                    return


def _busy(why: str) -> rpc.ErrorReply:
    return rpc.ErrorReply(rpc.ErrorCode.BUSY, why)


def _detail(e: Exception) -> str:
    return str(e)[:200]


def _kind_name(kind: int | None) -> str:
    return next((t.__name__ for t, k in rpc.REQUEST_TYPES.items() if k == kind), str(kind))
