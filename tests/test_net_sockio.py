"""Socket I/O of an established connection (anonmail/net/sockio.py), over a socket pair.

Frames go out whole and in the order `send` was called, also when the kernel does not take
them at once and several tasks wait; a peer that takes nothing closes the socket after the send
timeout (virtual time: MockClock); a cancelled flusher closes it; `close` wakes every waiter.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from anonmail.net.sockio import SocketIO, connect

BIG = 4 << 20  # more than a socket pair's buffers hold


class Counts:
    sent = 0
    received = 0


def pair(send_timeout: float = 30.0) -> tuple[SocketIO, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return SocketIO(a, send_timeout, Counts()), b


async def read_all(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        await trio.lowlevel.wait_readable(sock)
        out += sock.recv(min(1 << 20, n - len(out)))
    return bytes(out)


async def test_frames_go_out_whole_and_in_call_order_when_the_kernel_is_full() -> None:
    io, peer = pair()
    frames = [bytes([i]) * (BIG if i % 3 == 0 else 1000 + i) for i in range(9)]
    sent: list[int] = []

    async def send(i: int) -> None:
        await io.send(frames[i])
        sent.append(i)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(len(frames)):
                nursery.start_soon(send, i)
                await trio.testing.wait_all_tasks_blocked()  # each queued behind the last
            got = await read_all(peer, sum(map(len, frames)))
    assert got == b"".join(frames)
    assert sorted(sent) == list(range(len(frames)))
    assert io.counts.sent == len(got)
    io.close()
    peer.close()


async def test_a_frame_the_kernel_takes_returns_without_a_checkpoint() -> None:
    io, peer = pair()
    with trio.testing.assert_no_checkpoints():
        await io.send(b"x" * 100)
    assert peer.recv(1000) == b"x" * 100
    io.close()
    peer.close()


async def test_a_peer_that_takes_nothing_is_closed_after_the_send_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    io, peer = pair(send_timeout=5.0)
    start = trio.current_time()
    with pytest.raises(trio.BrokenResourceError):
        await io.send(bytes(BIG))
    assert trio.current_time() - start == pytest.approx(5.0)
    assert io.closed
    peer.close()


async def test_a_peer_taking_frame_by_frame_slowly_is_not_timed_out(
        autojump_clock: trio.testing.MockClock) -> None:
    """The timeout runs per frame (from the previous frame out), not over the whole queue."""
    io, peer = pair(send_timeout=5.0)
    order: list[bytes] = []  # frames in the order send was called (tasks start in any order)

    async def send(frame: bytes) -> None:
        order.append(frame)
        await io.send(frame)

    async def reader() -> None:
        while len(order) < 3:
            await trio.sleep(0)
        for frame in order:
            await trio.sleep(4.0)  # each frame taken within 4 s of the last
            assert await read_all(peer, len(frame)) == frame

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for i in range(3):
            nursery.start_soon(send, bytes([i]) * BIG)
    assert not io.closed and trio.current_time() >= 12.0
    io.close()
    peer.close()


async def test_a_cancelled_flusher_closes_and_close_wakes_every_waiter() -> None:
    io, peer = pair()
    errors: list[type[BaseException]] = []

    async def send_and_note(data: bytes) -> None:
        try:
            await io.send(data)
        except trio.BrokenResourceError as e:
            errors.append(type(e))

    async def receive_and_note() -> None:
        try:
            await io.receive(100)
        except trio.ClosedResourceError as e:
            errors.append(type(e))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            flusher = trio.CancelScope()

            async def flush() -> None:
                with flusher:
                    await io.send(bytes(BIG))  # part-written, then it waits

            nursery.start_soon(flush)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send_and_note, b"queued behind")
            nursery.start_soon(receive_and_note)
            await trio.testing.wait_all_tasks_blocked()
            flusher.cancel()
    assert io.closed
    assert sorted(e.__name__ for e in errors) == ["BrokenResourceError", "ClosedResourceError"]
    with pytest.raises(trio.BrokenResourceError):
        await io.send(b"after")
    peer.close()


async def test_receive_returns_what_came_and_eof() -> None:
    io, peer = pair()
    peer.send(b"hello")
    assert await io.receive(100) == b"hello"
    peer.close()
    assert await io.receive(100) == b""
    io.close()


async def test_connect_reaches_a_listener_and_reports_refusal() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with trio.fail_after(10):
        sock = await connect("127.0.0.1", port)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        sock.close()
        listener.close()
        with pytest.raises(OSError):
            await connect("127.0.0.1", port)
