"""Admission over real 127.0.0.1 sockets (net/admission.py through net/tcp.py): loopback peers
are judged by key, so one local process's garbage never cuts the others off; a key that keeps
misbehaving is banned while another key on the same address is served; handshakes beyond the
source's token bucket are refused before any public-key work; one key holds a bounded share."""

from __future__ import annotations

import pytest
import trio
from tcppeers import (
    TIMEOUT,
    assert_closed_by_peer,
    client,
    honest_round_trip,
    issue,
    key,
    raw_peer,
    server,
)

from anonmail.dht.messages import Ping, Pong
from anonmail.net.admission import Verdict
from anonmail.net.handshake import Handshake, Role
from anonmail.net.tcp import AdmissionLimits
from anonmail.records import ids
from anonmail.rng import SeededRng

GARBAGE_FRAME = b"\x00\x00\x00\x10" + bytes(16)  # a frame that fails to decrypt: a fault


@pytest.mark.threat("T-BAN-PERMANENT")
async def test_garbage_from_loopback_does_not_cut_off_other_local_nodes() -> None:
    """Issue 7 item 5: 25 garbage connections used to ban 127.0.0.1, and with it a testnet."""
    with trio.fail_after(TIMEOUT):
        async with server(1) as srv, client(2) as honest:
            ep = srv.local_cert.endpoints[0]
            for _ in range(25):
                async with await trio.open_tcp_stream(ep.host, ep.port) as s:
                    await s.send_all(b"\x00\x00\x00\x05hello")  # not a Hello at all
                    await assert_closed_by_peer(s)
            assert srv.faults == {"127.0.0.1": 25}  # counted against the address ...
            assert not srv.admission.banned("127.0.0.1", trio.current_time())  # ... not banned
            assert await honest.request(srv.local_cert, Ping()) == Pong()


@pytest.mark.threat("T-BAN-PERMANENT")
async def test_a_misbehaving_key_is_banned_and_another_key_is_served() -> None:
    limits = AdmissionLimits(fault_threshold=3)
    with trio.fail_after(TIMEOUT):
        async with server(1, admission=limits) as srv, client(2) as honest:
            assert await honest.request(srv.local_cert, Ping()) == Pong()
            bad = key(500)  # raw_peer's default key
            for _ in range(3):
                async with raw_peer(srv.local_cert) as peer:
                    await peer.stream.send_all(GARBAGE_FRAME)
                    await assert_closed_by_peer(peer.stream)
            unit = srv.admission.unit_of("127.0.0.1", ids.node_id(bad.public))
            assert srv.faults == {unit: 3}
            assert srv.admission.banned(unit, trio.current_time())
            # The banned key is let through the handshake (its address is everyone's) and then
            # closed before its first request is read.
            async with raw_peer(srv.local_cert) as peer:
                await peer.stream.send_all(peer.request_frame(0))
                await assert_closed_by_peer(peer.stream)
            assert srv.admission.refused[Verdict.BANNED] >= 1
            # The honest key's open connection was never touched, and new ones are welcome.
            assert await honest.request(srv.local_cert, Ping()) == Pong()
            async with client(3) as other:
                assert await other.request(srv.local_cert, Ping()) == Pong()


@pytest.mark.threat("T-HANDSHAKE-FLOOD")
async def test_hellos_beyond_the_bucket_are_refused_before_any_crypto() -> None:
    limits = AdmissionLimits(shared_handshake_burst=10, shared_handshake_rate=0.01)
    with trio.fail_after(TIMEOUT):
        async with server(1, admission=limits) as srv, client(2) as honest:
            assert await honest.request(srv.local_cert, Ping()) == Pong()  # 1 token
            ep = srv.local_cert.endpoints[0]
            answered = refused = 0
            for n in range(30):
                k = key(600 + n)
                hs = Handshake(Role.INITIATOR, k, issue(k), srv.params, SeededRng(n))
                hs.next_event(0.0)
                async with await trio.open_tcp_stream(ep.host, ep.port) as s:
                    await s.send_all(hs.data_to_send())
                    reply = await _receive_or_eof(s)
                    answered += bool(reply)
                    refused += not reply
            # 9 tokens were left: 9 Hellos got a HelloReply (an X25519 and a signature each);
            # the other 21 were closed unanswered, costing the node no public-key operation.
            assert (answered, refused) == (9, 21)
            assert srv.admission.refused[Verdict.RATE_LIMITED] == 21
            assert srv.faults == {}  # a flood is refused, not judged
            assert await honest.request(srv.local_cert, Ping()) == Pong()  # open: unaffected


@pytest.mark.threat("T-EXHAUST")
async def test_one_key_holds_a_bounded_share_of_connections() -> None:
    limits = AdmissionLimits(max_per_key=2)
    with trio.fail_after(TIMEOUT):
        async with server(1, admission=limits) as srv:
            held = [raw_peer(srv.local_cert) for _ in range(2)]
            peers = [await h.__aenter__() for h in held]
            await trio.testing.wait_all_tasks_blocked()
            async with raw_peer(srv.local_cert) as third:  # the same key again
                await third.stream.send_all(third.request_frame(0))
                await assert_closed_by_peer(third.stream)
            assert srv.admission.refused[Verdict.SOURCE_FULL] == 1
            await honest_round_trip(srv)  # other keys are still served
            for h in held:
                await h.__aexit__(None, None, None)
            del peers


async def _receive_or_eof(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:
        return b""
