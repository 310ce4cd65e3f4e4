"""How an accepted connection runs its handlers (anonmail/net/inbound.py), over 127.0.0.1.

A handler that returns without waiting is answered in the task that read its request (no task
per request); one that waits keeps its task and a new one reads on, so it never holds up the
connection's other requests; a waiting handler's failure is still an INTERNAL answer; the idle
timer spares a connection whose handler is still working.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from tcppeers import FIND, TIMEOUT, client, closest, find_node, raw_peer, server

from anonmail.dht.messages import FindNode, Nodes, Ping, Pong
from anonmail.errors import Refused
from anonmail.net import rpc
from anonmail.net.base import Peer
from anonmail.net.tcp import TcpLimits


async def test_a_handler_that_does_not_wait_is_answered_in_the_reading_task() -> None:
    tasks: list[trio.lowlevel.Task] = []

    async def handler(peer: Peer, msg: Any) -> Any:
        tasks.append(trio.lowlevel.current_task())
        return await find_node(peer, msg)

    with trio.fail_after(TIMEOUT):
        async with server(1, handler) as srv, client(2) as c:
            for _ in range(5):
                assert await c.request(srv.local_cert, FIND) == Nodes(closest(FIND.target,
                                                                              FIND.count))
            assert srv.inbound_connections == 1
    assert len(tasks) == 5 and len(set(tasks)) == 1  # one task, the connection's reader


async def test_a_handler_that_waits_keeps_its_task_and_a_new_one_reads_on() -> None:
    tasks: list[trio.lowlevel.Task] = []

    async def handler(peer: Peer, msg: Any) -> Any:
        tasks.append(trio.lowlevel.current_task())
        await trio.sleep(0)  # waits: the task is this handler's from here
        tasks.append(trio.lowlevel.current_task())
        return await find_node(peer, msg)

    with trio.fail_after(TIMEOUT):
        async with server(1, handler) as srv, client(2) as c:
            for _ in range(3):
                assert isinstance(await c.request(srv.local_cert, FIND), Nodes)
    # each handler ends in the task it began in; each request was read by a new task
    assert tasks[0::2] == tasks[1::2]
    assert len(set(tasks)) == 3


async def test_a_waiting_handler_does_not_hold_up_the_connections_other_requests() -> None:
    release, slow_in = trio.Event(), trio.Event()

    async def handler(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, FindNode):
            slow_in.set()
            await release.wait()
        return await find_node(peer, msg)

    with trio.fail_after(TIMEOUT):
        async with server(1, handler) as srv, client(2) as c, trio.open_nursery() as nursery:
            slow: list[Any] = []

            async def ask_slow() -> None:
                slow.append(await c.request(srv.local_cert, FIND))

            nursery.start_soon(ask_slow)
            await slow_in.wait()
            for _ in range(3):  # answered while the FIND_NODE handler waits, on one connection
                assert await c.request(srv.local_cert, Ping()) == Pong()
            assert not slow and c.outbound_connections == 1
            release.set()
        assert slow == [Nodes(closest(FIND.target, FIND.count))]


@pytest.mark.parametrize("wait_first", [False, True], ids=["inline", "after-waiting"])
async def test_a_failing_handler_is_answered_internal_and_the_connection_serves_on(
        wait_first: bool) -> None:
    async def handler(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, Ping):
            if wait_first:
                await trio.sleep(0)
            raise ValueError("our bug")
        return await find_node(peer, msg)

    with trio.fail_after(TIMEOUT):
        async with server(1, handler) as srv, client(2) as c:
            with pytest.raises(Refused) as refused:
                await c.request(srv.local_cert, Ping())
            assert refused.value.code == rpc.ErrorCode.INTERNAL
            assert isinstance(await c.request(srv.local_cert, FIND), Nodes)
            assert srv.faults == {} and srv.inbound_connections == 1


async def test_pipelined_requests_are_all_answered() -> None:
    """Requests that arrive together are each answered (in tasks), whether handlers wait or
    not; every answer carries its own request's id."""
    async def handler(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, FindNode) and msg.count % 2:
            await trio.sleep(0)
        return await find_node(peer, msg)

    with trio.fail_after(TIMEOUT):
        async with server(1, handler) as srv, raw_peer(srv.local_cert) as peer:
            asks = {n: FindNode(bytes(32), n) for n in range(1, 11)}
            await peer.stream.send_all(b"".join(peer.request_frame(n, msg)
                                                for n, msg in asks.items()))
            answers = [await peer.answer() for _ in asks]
    assert sorted(len(a.certs) for a in answers) == sorted(asks)


async def test_idle_timer_spares_a_connection_whose_handler_is_still_working(
        autojump_clock: trio.testing.MockClock) -> None:
    limits = TcpLimits(idle_timeout=10.0)
    release = trio.Event()

    async def handler(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, FindNode):
            await release.wait()
        return await find_node(peer, msg)

    async with server(1, handler, limits) as srv, client(2) as c, trio.open_nursery() as nursery:
        async def ask() -> None:
            await c.request(srv.local_cert, FIND, timeout=1000.0)

        nursery.start_soon(ask)
        await trio.sleep(35.0)  # three idle periods, the handler still working
        assert srv.inbound_connections == 1
        release.set()  # at 35 s; the timer looks again at 40 s
        await trio.sleep(1.0)
        assert srv.inbound_connections == 1
        await trio.sleep(5.0)
        assert srv.inbound_connections == 0  # nothing heard since 0 s and nothing running
