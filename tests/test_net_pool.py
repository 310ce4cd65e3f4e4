"""The outgoing connection pool over real 127.0.0.1 sockets (net/dialer.py): it never holds
more than `TcpLimits.max_connections`, a full pool closes its least recently used connection,
and a connection the peer has closed goes before any live one."""

from __future__ import annotations

import contextlib

import pytest
import trio
from tcppeers import FIND, TIMEOUT, client, server

from anonmail.errors import TransportError
from anonmail.net.links import TcpLimits
from anonmail.net.tcp import TcpNetwork

POOL = TcpLimits(max_connections=2)


def dials(net: TcpNetwork) -> int:
    return net.stats.dials_full + net.stats.dials_resumed


async def test_a_full_pool_closes_its_least_recently_used_connection() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1) as a, server(2) as b, server(3) as c, \
                client(9, limits=POOL) as me:
            for srv in (a, b, a):  # a used last: b is now the least recently used
                await me.request(srv.local_cert, FIND)
            assert dials(me) == 2 and me.outbound_connections == 2
            await me.request(c.local_cert, FIND)  # the pool is full: b's connection goes
            assert dials(me) == 3 and me.outbound_connections == 2
            await me.request(a.local_cert, FIND)  # still pooled: no dial
            assert dials(me) == 3
            await me.request(b.local_cert, FIND)  # closed for c: dialled again (resumed)
            assert dials(me) == 4 and me.stats.dials_resumed == 1
            assert me.outbound_connections == 2


async def test_a_connection_the_peer_closed_goes_first() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1) as a, server(3) as c, client(9, limits=POOL) as me:
            async with contextlib.AsyncExitStack() as stack:
                b = await stack.enter_async_context(server(2))
                await me.request(a.local_cert, FIND)
                await me.request(b.local_cert, FIND)  # a is the least recently used
            # b has shut down: the next request to it finds its connection closed
            with pytest.raises(TransportError):
                await me.request(b.local_cert, FIND)
            assert dials(me) == 2
            await me.request(c.local_cert, FIND)  # room is made by dropping b's, not a's
            await me.request(a.local_cert, FIND)
            assert dials(me) == 3 and me.outbound_connections == 2
