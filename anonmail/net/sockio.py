"""Non-blocking socket I/O for an established connection, without a trio stream in between.

trio's `SocketStream` pays, on every `send_all` and `receive_some`, a trip through the run loop
even when the kernel takes or has the bytes at once, a failed `recv` before every wait, and the
caller adds a cancel scope per frame for its send timeout. An RPC over loopback spent more time
there than in its protocol work (docs/performance.md "The RPC path"). Here, on the socket of a
connection whose handshake is done (`take_socket`):

* `send` hands a frame to the kernel with one `send` call; when the kernel takes it whole (the
  common case) that is all: no checkpoint, no cancel scope. A frame the kernel does not take at
  once is queued whole behind any frame queued before it and written by one flusher at a time,
  which waits for writability under the send timeout; `send` returns when its frame is out;
* `receive` waits for readability first (an answer is never there the moment its request left),
  then reads once; every wait is a checkpoint, so a reader fed without pause still yields.

Invariants: frames reach the kernel whole and in the order `send` was called (a frame is written
directly only when nothing is queued, otherwise only from the queue's head), so the counter
nonces of frames.py stay in step; a connection whose peer takes no complete frame within
`send_timeout` (measured from the previous frame written, as when each frame had its own
timeout) is closed, as is one whose flusher is interrupted (cancelled) with a frame part-written;
after `close` nothing more is written and every waiter wakes: readers and writers waiting on the
socket with `trio.ClosedResourceError` (trio.lowlevel.notify_closing), senders waiting for the
flusher with `trio.BrokenResourceError`. Socket errors (reset, broken pipe) surface as
`trio.BrokenResourceError`, as from a trio stream.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from itertools import islice
from typing import Protocol

import trio

MAX_BUFFERS = 64  # frames handed to one sendmsg by the flusher


def take_socket(stream: trio.SocketStream) -> socket.socket:
    """The stdlib socket under `stream` (an accepted connection), detached: the caller owns it
    (and must close it); the stream is left closed, so closing it too is harmless."""
    s = stream.socket
    sock = socket.socket(s.family, s.type, s.proto, fileno=s.detach())
    sock.setblocking(False)
    return sock


async def connect(host: str, port: int) -> socket.socket:
    """A TCP connection to `host`, an IP literal (no name lookup, no happy-eyeballs tasks:
    certificates name IP literals only), non-blocking, with Nagle off as trio's streams have
    it. Raises OSError if it cannot be made; cancellable while it waits."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((host, port))
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock


class Counts(Protocol):
    """Where bytes moved are counted (links.TcpStats)."""

    sent: int
    received: int


class SocketIO:
    """One connection's socket: whole frames out in order, bytes in (the module docstring)."""

    def __init__(self, sock: socket.socket, send_timeout: float, counts: Counts) -> None:
        self.sock = sock
        self.send_timeout = send_timeout
        self.counts = counts
        self.closed = False
        self._queue: deque[memoryview] = deque()  # frames (the first maybe part-written)
        self._queued = 0  # frames ever queued
        self._done = 0  # ... of which written whole
        self._flushing = False
        self._progress = trio.Event()  # set (and replaced) when frames leave the queue or on close

    async def send(self, frame: bytes) -> None:
        """Write `frame` whole after every frame sent before it; return once the kernel has it.
        Raises trio.BrokenResourceError if the connection is closed or closes first."""
        if self.closed:
            raise trio.BrokenResourceError("connection closed")
        if not self._queue:
            try:
                n = self.sock.send(frame)
            except BlockingIOError:
                n = 0
            except OSError as e:
                self.close()
                raise trio.BrokenResourceError(f"send: {type(e).__name__}") from e
            self.counts.sent += n
            if n == len(frame):
                return
            self._queue.append(memoryview(frame)[n:])
        else:
            self._queue.append(memoryview(frame))
        self._queued += 1
        await self._wait_written(self._queued)

    async def _wait_written(self, seq: int) -> None:
        while self._done < seq:
            if self.closed:
                raise trio.BrokenResourceError("connection closed")
            if self._flushing:
                await self._progress.wait()  # a flusher that gives up closes, waking us
            else:
                await self._flush()

    async def _flush(self) -> None:
        """Write the queue out, one frame within `send_timeout` of the previous one."""
        self._flushing = True
        queue = self._queue
        try:
            deadline = trio.current_time() + self.send_timeout
            while queue:
                with trio.CancelScope(deadline=deadline) as waiting:
                    await trio.lowlevel.wait_writable(self.sock)
                if waiting.cancelled_caught:
                    raise trio.BrokenResourceError("the peer does not take what we send")
                try:
                    n = self.sock.sendmsg(list(islice(queue, MAX_BUFFERS)))
                except BlockingIOError:
                    continue
                except OSError as e:
                    raise trio.BrokenResourceError(f"send: {type(e).__name__}") from e
                self.counts.sent += n
                written = 0
                while queue and n >= len(queue[0]):
                    n -= len(queue.popleft())
                    written += 1
                if n:
                    queue[0] = queue[0][n:]
                if written:
                    self._done += written
                    deadline = trio.current_time() + self.send_timeout
                    self._wake()
        except BaseException:
            # Timed out, failed or interrupted (cancelled), maybe mid-frame: the stream is
            # unusable from here.
            self.close()
            raise
        finally:
            self._flushing = False
            self._wake()  # a waiter takes over if this flusher was cancelled between frames

    async def receive(self, max_bytes: int) -> bytes:
        """Wait until the socket is readable and read once: b"" when the peer has closed."""
        while True:
            if self.closed:
                raise trio.ClosedResourceError("connection closed")
            await trio.lowlevel.wait_readable(self.sock)
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                continue
            except OSError as e:
                raise trio.BrokenResourceError(f"receive: {type(e).__name__}") from e
            self.counts.received += len(data)
            return data

    def _wake(self) -> None:
        progress, self._progress = self._progress, trio.Event()
        progress.set()

    def close(self) -> None:
        """Close now (no checkpoint): waiters wake, queued frames are dropped."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
        self._wake()
