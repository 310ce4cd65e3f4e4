"""The storage client against hostile and refusing replicas in simulation (anonmail/store/client.py
on sim/network.py, with the `sim` of tests/storesim.py).

A reader skips replicas serving tampered content; replicas that sign receipts and then drop the
data are caught by their own evidence and outlived by republish; the client retries on a fresh
node set, and a refusal reaches it typed, counted as the requester's fault only when it is one.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from storegrid import R
from storesim import DAY, TIMEOUT, Sim
from storesim import sim_fixture as sim_fixture  # the `sim` fixture
from trio.testing import MockClock

from anonmail.errors import Refused
from anonmail.net.base import Peer
from anonmail.net.rpc import ErrorCode
from anonmail.records import ids
from anonmail.records.receipts import StoreOp
from anonmail.store.client import check_receipt, fetch_any, store_replicated
from anonmail.store.handlers import StoreLimits
from anonmail.store.messages import Fetched, ObjectKind, Store, blob_digest
from anonmail.store.service import StoreService

# -- hostile replicas -----------------------------------------------------------------------------


@pytest.mark.threat("T-STORE-TAMPER")
async def test_reader_skips_replicas_serving_tampered_content(
    sim: Sim, autojump_clock: MockClock
) -> None:
    agent = sim.node(20)
    body_key = ids.body_key("<tamper@anonmail>")
    frag = b"fragment ciphertext"
    frag_key = ids.fragment_key(frag)
    with trio.fail_after(TIMEOUT):
        await store_replicated(agent.net, agent.dht, body_key, ObjectKind.BODY, b"body", DAY,
                               [], R)
        await store_replicated(agent.net, agent.dht, frag_key, ObjectKind.FRAGMENT, frag, DAY,
                               [], R)
        for key in (body_key, frag_key):
            for liar in sim.closest(key)[:3]:  # the three closest serve altered bytes
                honest = liar.services.handle

                async def lie(peer: Peer, msg: Any, honest: Any = honest) -> Any:
                    reply = await honest(peer, msg)
                    if isinstance(reply, Fetched):
                        return Fetched(reply.kind, reply.blob + b"!", reply.expires)
                    return reply

                liar.net.set_handler(lie)
        reader = sim.node(21)
        assert await fetch_any(reader.net, reader.dht, body_key, R,
                               digest=blob_digest(b"body")) == b"body"
        assert await fetch_any(reader.net, reader.dht, frag_key, R) == frag
        assert await fetch_any(reader.net, reader.dht, body_key, R,
                               digest=blob_digest(b"other")) is None


@pytest.mark.threat("T-RECEIPT-DROP")
async def test_replicas_that_sign_then_drop_are_caught_and_outlived(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    key = ids.body_key("<dropper@anonmail>")
    droppers = sim.closest(key)[:2]
    for d in droppers:
        svc = sim.svc[d.node_id]
        honest = d.services.handle

        async def sign_then_drop(peer: Peer, msg: Any, svc: StoreService = svc,
                                 honest: Any = honest) -> Any:
            reply = await honest(peer, msg)
            if isinstance(msg, Store):
                with svc.db.transaction():
                    svc.db.drop_object(msg.key)
            return reply

        d.net.set_handler(sign_then_drop)
    agent = sim.node(30)
    with trio.fail_after(TIMEOUT):
        receipts = (await store_replicated(agent.net, agent.dht, key, ObjectKind.BODY, b"mail",
                                           DAY, [], R, clock=s.clock)).receipts
        assert len(receipts) == R
        # The droppers' receipts are valid signed evidence that they took the data.
        by_node = {r.node_id: r for r in receipts}
        for d in droppers:
            check_receipt(by_node[d.node_id], d.cert, StoreOp.STORE, key, blob_digest(b"mail"),
                          s.clock.now())
            assert d.node_id not in sim.holders(key)
        for _ in range(3):
            await trio.sleep(3700)
            await sim.republish_all()
            honest_closest = {x.node_id for x in sim.closest(key)} - {d.node_id for d in droppers}
            assert honest_closest <= sim.holders(key)
        reader = sim.node(31)
        assert await fetch_any(reader.net, reader.dht, key, R,
                               digest=blob_digest(b"mail")) == b"mail"


# -- the client's retry and refusals --------------------------------------------------------------


async def test_client_retries_on_a_fresh_set_and_refusals_are_typed(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    key = ids.body_key("<retry@anonmail>")
    closest = sim.closest(key, R + 1)
    full = closest[1]
    sim.svc[full.node_id].ctx.limits = StoreLimits(node_bytes=10)  # refuses: quota
    agent = sim.node(40)
    with trio.fail_after(TIMEOUT):
        placed = await store_replicated(agent.net, agent.dht, key, ObjectKind.BODY, b"b" * 100,
                                        DAY, [], R, clock=s.clock)
        got = {r.node_id for r in placed.receipts}
        # The full node's refusal reaches the caller typed, and is not counted as a failure.
        assert placed.refusals[full.node_id].code is ErrorCode.QUOTA
        assert full.node_id not in placed.failures
        assert got == {x.node_id for x in closest} - {full.node_id}
        # Over quota: REFUSED, and not counted as the requester's fault ...
        faults = s.world.stats.faults[agent.node_id]
        with pytest.raises(Refused) as e:
            await agent.net.request(full.cert, Store(key, ObjectKind.BODY, b"b", DAY, ()))
        assert e.value.code == ErrorCode.QUOTA
        assert s.world.stats.faults[agent.node_id] == faults
        # ... nor is a fragment that does not match its address: the node cannot tell its
        # author from an anonymizer that forwarded it (T-FAULT-REFLECT), so it is DENIED.
        with pytest.raises(Refused) as e:
            await agent.net.request(closest[0].cert,
                                    Store(key, ObjectKind.FRAGMENT, b"not it", DAY, ()))
        assert e.value.code == ErrorCode.DENIED
        assert s.world.stats.faults[agent.node_id] == faults
