"""The TCP transport's resource limits over real 127.0.0.1 sockets (tests/tcppeers.py).

Requests in flight per connection, connections in all, per source and pending per source, the
handshake deadline, the idle timeout, and the fault threshold that cuts a source off (judged by
address here: loopback's judging by key is in test_tcp_admission.py); sources group IPv6 by /64.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from tcppeers import (
    LOCAL,
    TIMEOUT,
    assert_closed_by_peer,
    client,
    honest_round_trip,
    raw_peer,
    server,
)

from anonmail.dht.messages import Nodes, Ping, Pong
from anonmail.errors import Refused, TransportError
from anonmail.net import rpc
from anonmail.net.base import Peer
from anonmail.net.tcp import AdmissionLimits, TcpLimits, TcpNetwork, source_of


@pytest.mark.threat("T-EXHAUST")
async def test_in_flight_limit_answers_busy() -> None:
    release, both_in = trio.Event(), trio.Event()
    entered = 0

    async def slow(peer: Peer, msg: Any) -> Any:
        nonlocal entered
        entered += 1
        if entered == 2:
            both_in.set()
        await release.wait()
        return Pong()

    outcomes: list[Any] = []

    async def ask(c: TcpNetwork, srv: TcpNetwork) -> None:
        outcomes.append(await c.request(srv.local_cert, Ping()))

    with trio.fail_after(TIMEOUT):
        async with server(1, slow, TcpLimits(max_in_flight=2)) as srv, client(2) as c:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, c, srv)
                nursery.start_soon(ask, c, srv)
                await both_in.wait()
                with pytest.raises(Refused) as refused:
                    await c.request(srv.local_cert, Ping())
                assert refused.value.code == rpc.ErrorCode.BUSY
                release.set()
            assert outcomes == [Pong(), Pong()]
            assert await c.request(srv.local_cert, Ping()) == Pong()  # room again
    assert entered == 3 and srv.faults == {}


@pytest.mark.threat("T-EXHAUST")
@pytest.mark.parametrize("limits", [
    AdmissionLimits(max_connections=2),
    AdmissionLimits(max_per_shared_source=2),  # loopback is a shared source
    AdmissionLimits(max_pending_per_source=2),  # the held streams never start a handshake
    AdmissionLimits(shared_loopback=False, max_per_source=2),
], ids=["total", "shared-source", "pending", "source"])
async def test_connection_limit_enforced(limits: AdmissionLimits) -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1, admission=limits) as srv:
            ep = srv.local_cert.endpoints[0]
            held = [await trio.open_tcp_stream(ep.host, ep.port) for _ in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            assert srv.inbound_connections == 2
            async with await trio.open_tcp_stream(ep.host, ep.port) as third:
                await assert_closed_by_peer(third)  # closed before any handshake work
            async with client(2) as c:
                with pytest.raises(TransportError):
                    await c.request(srv.local_cert, Ping())
            for stream in held:
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            await honest_round_trip(srv)


@pytest.mark.threat("T-EXHAUST")
async def test_silent_connection_dropped_after_handshake_timeout() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1, limits=TcpLimits(handshake_timeout=0.1)) as srv:
            ep = srv.local_cert.endpoints[0]
            async with await trio.open_tcp_stream(ep.host, ep.port) as idle:
                await assert_closed_by_peer(idle)  # slowloris gets nowhere
            assert srv.faults == {}  # slow is not hostile


@pytest.mark.threat("T-EXHAUST")
async def test_idle_connection_closed() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1, limits=TcpLimits(idle_timeout=0.1)) as srv:
            async with raw_peer(srv.local_cert) as peer:
                await peer.stream.send_all(peer.request_frame(0))
                assert isinstance(await peer.answer(), Nodes)
                await assert_closed_by_peer(peer.stream)
            assert srv.inbound_connections == 0


@pytest.mark.threat("T-EXHAUST")
async def test_source_over_fault_threshold_is_cut_off() -> None:
    with trio.fail_after(TIMEOUT):
        async with server(1, admission=AdmissionLimits(shared_loopback=False, fault_threshold=2)
                          ) as srv, client(2) as c:
            await c.request(srv.local_cert, Ping())  # an open connection from the same source
            for _ in range(2):
                async with raw_peer(srv.local_cert) as peer:
                    await peer.stream.send_all(b"\x00\x00\x00\x10" + bytes(16))
                    await assert_closed_by_peer(peer.stream)
            assert srv.faults == {LOCAL: 2}
            await trio.testing.wait_all_tasks_blocked()
            assert srv.inbound_connections == 0  # the open connection was cut too
            with pytest.raises(TransportError):
                await c.request(srv.local_cert, Ping())


def test_sources_group_ipv6_by_64() -> None:
    assert source_of("2001:db8:1:2:3:4:5:6") == source_of("2001:db8:1:2:ffff::1")
    assert source_of("2001:db8:1:2::1") != source_of("2001:db8:1:3::1")
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("192.0.2.7") != source_of("192.0.2.8")
