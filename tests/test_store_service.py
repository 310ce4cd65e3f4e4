"""The storage service in simulation (anonmail/store/service.py + client.py on sim/network.py,
with the `sim` of tests/storesim.py).

Replicated STORE/APPEND with receipts, republish after crashes, handover by nodes no longer among
the r closest, certificates republished and repaired by readers, READ/ACK across replicas and
crashes, the GC loop, and handlers offloaded to one worker thread. Hostile replicas and the
client's retry are in test_store_client.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from storegrid import R
from storesim import CA, DAY, TIMEOUT, Sim
from storesim import sim_fixture as sim_fixture  # the `sim` fixture
from trio.testing import MockClock

from anonmail import crypto, wire
from anonmail.errors import LocalError
from anonmail.net.base import Handler, Network, Peer
from anonmail.net.fanout import Outcome, fan_out
from anonmail.net.rpc import ErrorCode, ErrorReply
from anonmail.net.services import ServiceRegistry
from anonmail.records import ids
from anonmail.records.certs import AddressCert, Endpoint, NodeCert
from anonmail.records.receipts import StoreOp, store_terms
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario
from anonmail.store.client import (
    REQUEST_ERRORS,
    append_replicated,
    check_receipt,
    delete_all,
    fetch_any,
    fetch_cert,
    store_replicated,
)
from anonmail.store.db import StoreDb
from anonmail.store.messages import (
    Append,
    Appended,
    ObjectKind,
    Store,
    blob_digest,
    delete_hash,
)
from anonmail.store.owner_client import ack_all, read_all
from anonmail.store.service import StoreService


def rts_owner(name: str) -> tuple[crypto.SigningKey, AddressCert]:
    key = crypto.SigningKey(crypto.hash("test-owner", name.encode()))
    return key, CA.issue(f"{name}@example.org", key.public, b"\x55" * 32, 1_800_000_000.0)


# -- objects --------------------------------------------------------------------------------------


async def test_store_on_r_closest_survives_crashes_and_handover(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    agent = sim.node(0)
    key = ids.body_key("<crash-test@anonmail>")
    blob = b"body ciphertext" * 50
    secrets = [b"s" * 32, b"t" * 32]
    with trio.fail_after(TIMEOUT):
        receipts = (await store_replicated(agent.net, agent.dht, key, ObjectKind.BODY, blob,
                                           2 * DAY, [delete_hash(x) for x in secrets], R,
                                          clock=s.clock)).receipts
        first = sim.closest(key)
        assert {r.node_id for r in receipts} == {x.node_id for x in first}
        assert sim.holders(key) == {x.node_id for x in first}

        crashed = first[:3]
        for x in crashed:
            s.world.crash(x.node_id)
        await trio.sleep(3700)  # past the republish interval
        await sim.republish_all()
        after = sim.closest(key)
        assert {x.node_id for x in after} <= sim.holders(key)
        reader = sim.node(1)
        assert await fetch_any(reader.net, reader.dht, key, R, digest=blob_digest(blob)) == blob

        # The crashed replicas come back (and say so by looking themselves up); the nodes
        # that stood in for them are no longer among the r closest: they hand over and drop.
        for x in crashed:
            s.world.restart(x.node_id)
            await x.dht.lookup(x.node_id)
        await trio.sleep(3700)
        await sim.republish_all()
        assert sim.holders(key) == {x.node_id for x in first}
        assert sum(sim.svc[x.node_id].stats.handed_over for x in after) == 3

        # The delete hashes travelled with the pushes: both secrets remove it everywhere.
        for secret in secrets:
            assert await delete_all(reader.net, reader.dht, key, secret, R) == R
        assert sim.holders(key) == set()


async def test_a_node_far_from_the_key_hands_over_and_drops(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    key = ids.body_key("<far@anonmail>")
    inbox = ids.inbox_key("far@example.org")
    far = sim.far_node(key)
    far_svc = sim.svc[far.node_id]
    agent = sim.node(5)
    with trio.fail_after(TIMEOUT):
        # Someone (a stale agent) stored straight onto a node that is not responsible.
        reply = await agent.net.request(far.cert, Store(key, ObjectKind.BODY, b"blob", DAY,
                                                        (delete_hash(b"x" * 32),)))
        check_receipt(reply.receipt, far.cert, StoreOp.STORE, key, blob_digest(b"blob"),
                      terms=store_terms((delete_hash(b"x" * 32),)))
        sent = []
        for i in range(5):
            entry = b"entry %d" % i
            sent.append(entry)
            await agent.net.request(far.cert, Append(inbox, entry, DAY, None))
        await far_svc.republish(force=True)
        assert far.node_id not in sim.holders(key)
        assert sim.holders(key) == {x.node_id for x in sim.closest(key)}
        now = s.clock.now()
        assert sim.inbox_holders(inbox, now) == {x.node_id: 5 for x in sim.closest(inbox)}
        assert far_svc.stats.handed_over == 2
        assert far_svc.db.used_bytes() == far_svc.db.recount()


async def test_certificates_are_republished_and_repaired_by_readers(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    sign = crypto.SigningKey(b"\x44" * 32)
    now = s.clock.now()
    old, new, newest = (CA.issue("dora@example.org", sign.public, bytes([i]) * 32, now - 100 + i)
                        for i in range(3))
    key = old.key
    agent = sim.node(3)

    def held() -> set[bytes]:
        out = set()
        for x in closest:
            row = sim.svc[x.node_id].db.get_object(key)
            out.add(b"" if row is None or row.blob is None else row.blob)
        return out

    with trio.fail_after(TIMEOUT):
        closest = sim.closest(key)
        for x in closest[:2]:  # only two replicas got it
            await agent.net.request(x.cert, Store(key, ObjectKind.CERT, wire.encode(old),
                                                  30 * DAY, ()))
        await trio.sleep(3700)
        await sim.republish_all()
        assert held() == {wire.encode(old)}
        # The owner renews; one replica hears of it. Republish converges on the newest even
        # if that replica never republishes: the others' pushes of the older one are refused,
        # and they pull the newer one from it.
        await agent.net.request(closest[5].cert, Store(key, ObjectKind.CERT, wire.encode(new),
                                                       30 * DAY, ()))
        await sim.republish_all(force=True, skip=frozenset({closest[5].node_id}))
        assert held() == {wire.encode(new)}
        # A reader finds the newest among the replicas and repairs the rest (seed 002 §2.4).
        await agent.net.request(closest[7].cert, Store(key, ObjectKind.CERT,
                                                       wire.encode(newest), 30 * DAY, ()))
        got = await fetch_cert(agent.net, agent.dht, "dora@example.org", R,
                               frozenset({CA.public}), s.clock)
        assert got.cert == newest and not got.rejected
        assert held() == {wire.encode(newest)}


# -- inboxes --------------------------------------------------------------------------------------


async def test_inbox_append_read_ack_across_replicas_and_crashes(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    bob_key, bob_cert = rts_owner("bob")
    inbox = ids.inbox_key(bob_cert.address)
    sender, bob = sim.node(10), sim.node(11)
    rng = SeededRng(b"bob-agent")
    entries = [b"sealed header %d" % i for i in range(3)]
    with trio.fail_after(TIMEOUT):
        for e in entries:
            placed = await append_replicated(sender.net, sender.dht, inbox, e, DAY, None, R,
                                             clock=s.clock)
            assert len(placed.receipts) == R and not placed.refusals
        first = sim.closest(inbox)
        for x in first[:2]:
            s.world.crash(x.node_id)
        await trio.sleep(3700)
        await sim.republish_all()
        now = s.clock.now()
        assert set(sim.inbox_holders(inbox, now)) >= {x.node_id for x in sim.closest(inbox)}

        got = await read_all(bob.net, bob.dht, inbox, bob_key, bob_cert, R, s.clock, rng)
        assert sorted(e.entry for e in got.entries.values()) == entries
        assert len(got.nodes) == R and not got.failed
        acked = await ack_all(bob.net, bob.dht, inbox, list(got.entries), bob_key, bob_cert,
                              R, s.clock, rng, nodes=got.nodes)
        assert acked == R
        # The crashed replicas come back holding the entries; republish must not bring the
        # ACKed entries back to the others, and the returning replicas' copies are no
        # longer needed... but they still hold them until Bob ACKs there too.
        for x in first[:2]:
            s.world.restart(x.node_id)
            await x.dht.lookup(x.node_id)
        await trio.sleep(3700)
        await sim.republish_all()
        again = await read_all(bob.net, bob.dht, inbox, bob_key, bob_cert, R, s.clock, rng)
        stale = {e.entry for e in again.entries.values()}
        assert stale <= set(entries)
        for x in sim.closest(inbox):
            if x not in first[:2]:
                assert sim.svc[x.node_id].db.inbox_usage(inbox, s.clock.now())[0] == 0
        await ack_all(bob.net, bob.dht, inbox, list(again.entries), bob_key, bob_cert, R,
                      s.clock, rng)
        final = await read_all(bob.net, bob.dht, inbox, bob_key, bob_cert, R, s.clock, rng)
        assert final.entries == {}


async def test_a_check_reads_one_replica_whole_and_the_rest_briefly(
    sim: Sim, autojump_clock: MockClock
) -> None:
    """Issue 11: every entry sits on r replicas, so read_all reads the closest whole and the
    others by id only; a replica naming an entry the whole read lacked is then read whole, so
    the union is what reading all r whole gives."""
    s = sim.s
    bob_key, bob_cert = rts_owner("bob")
    inbox = ids.inbox_key(bob_cert.address)
    sender, bob = sim.node(10), sim.node(11)
    rng = SeededRng(b"bob-agent")
    with trio.fail_after(TIMEOUT):
        placed = await append_replicated(sender.net, sender.dht, inbox, b"everywhere", DAY,
                                         None, R, clock=s.clock)
        assert len(placed.receipts) == R
        replicas = sim.closest(inbox)
        assert {rc.node_id for rc in placed.receipts} == {x.node_id for x in replicas}
        # One entry reached only the fourth closest replica (say the others were down).
        lone = await sender.net.request(replicas[3].cert, Append(inbox, b"only here", DAY, None))
        assert isinstance(lone, Appended)
        before = Counter(s.world.stats.by_type)
        got = await read_all(bob.net, bob.dht, inbox, bob_key, bob_cert, R, s.clock, rng)
        sent = Counter(s.world.stats.by_type) - before
    assert sorted(e.entry for e in got.entries.values()) == [b"everywhere", b"only here"]
    assert len(got.nodes) == R and not got.failed
    assert sent["Read"] == R + 1  # r reads, and the fourth replica's again, whole


class Fanning:
    """A `Multicast` network over another, as an anonymizer is: `request_many` sends one copy
    of the request to each target and returns their answers; it counts what it was asked."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.multicasts: list[tuple[str, int]] = []

    @property
    def local_cert(self) -> NodeCert:
        return self.net.local_cert

    async def request(self, to: NodeCert, msg: Any, *, timeout: float | None = None) -> Any:
        return await self.net.request(to, msg)

    async def introduce(self, endpoint: Endpoint, *, timeout: float | None = None) -> NodeCert:
        return await self.net.introduce(endpoint, timeout=timeout)

    async def serve(self, handler: Handler, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise LocalError("a client only")

    async def request_many(self, targets: Sequence[NodeCert],
                           msg: Any) -> list[Outcome[NodeCert, Any]]:
        self.multicasts.append((type(msg).__name__, len(targets)))
        return await fan_out(list(targets), lambda c: self.net.request(c, msg),
                             catch=REQUEST_ERRORS)


async def test_through_an_anonymizer_a_check_sends_one_brief_read_and_one_ack(
    sim: Sim, autojump_clock: MockClock
) -> None:
    """Issue 11: through an anonymizer every request is a padded cell, so the brief READ of
    the r - 1 farther replicas and the ACK of all r go as one request each, under an owner
    proof naming those replicas; the union and the ACKs are what per-replica requests give."""
    s = sim.s
    bob_key, bob_cert = rts_owner("bob")
    inbox = ids.inbox_key(bob_cert.address)
    sender, bob = sim.node(10), sim.node(11)
    rng = SeededRng(b"bob-agent")
    net = Fanning(bob.net)
    with trio.fail_after(TIMEOUT):
        placed = await append_replicated(sender.net, sender.dht, inbox, b"everywhere", DAY,
                                         None, R, clock=s.clock)
        assert len(placed.receipts) == R
        replicas = sim.closest(inbox)
        lone = await sender.net.request(replicas[3].cert, Append(inbox, b"only here", DAY, None))
        assert isinstance(lone, Appended)
        before = Counter(s.world.stats.by_type)
        got = await read_all(net, bob.dht, inbox, bob_key, bob_cert, R, s.clock, rng)
        sent = Counter(s.world.stats.by_type) - before
        assert sorted(e.entry for e in got.entries.values()) == [b"everywhere", b"only here"]
        assert len(got.nodes) == R and not got.failed
        assert sent["Read"] == R + 1  # the same READs reach the replicas...
        assert net.multicasts == [("Read", R - 1)]  # ...but r - 1 of them as one request
        acked = await ack_all(net, bob.dht, inbox, list(got.entries), bob_key, bob_cert, R,
                              s.clock, rng, nodes=got.nodes)
        assert acked == R and net.multicasts[1:] == [("Ack", R)]
        final = await read_all(bob.net, bob.dht, inbox, bob_key, bob_cert, R, s.clock, rng)
    assert final.entries == {}


# -- the service's loops and worker thread --------------------------------------------------------


async def test_serve_runs_garbage_collection(
    sim: Sim, autojump_clock: MockClock
) -> None:
    x = sim.node(50)
    svc = StoreService(x.net, x.dht, x.key, sim.s.params, sim.s.clock, SeededRng(1),
                       StoreDb(":memory:"), gc_interval=60.0, republish_interval=600.0)
    try:
        agent = sim.node(51)
        x.services.add(svc, replace=True)
        with trio.fail_after(TIMEOUT):
            await agent.net.request(x.cert, Store(b"\x07" * 32, ObjectKind.BODY, b"b", 100, ()))
            await agent.net.request(x.cert, Store(b"\x08" * 32, ObjectKind.BODY, b"b", DAY, ()))
            assert svc.db.count_objects() == 2
            async with trio.open_nursery() as nursery:
                await nursery.start(svc.serve)
                await trio.sleep(1300)
                nursery.cancel_scope.cancel()
            assert svc.db.get_object(b"\x07" * 32) is None and svc.stats.gc_runs >= 10
            assert svc.stats.republished >= 1
    finally:
        svc.db.close()


async def test_offloaded_handlers_run_on_one_worker_thread(tmp_path: Path) -> None:
    """A real node runs handlers off the event loop (fsync must not stall trio); real clock."""
    s = Scenario(2, seed=3)
    await s.build("oracle")
    x, other = s.nodes
    with pytest.raises(LocalError, match="threads=True"):
        StoreService(x.net, x.dht, x.key, s.params, s.clock, SeededRng(1),
                     StoreDb(":memory:"), offload=True)
    db = StoreDb(tmp_path / "store.sqlite", threads=True)
    svc = StoreService(x.net, x.dht, x.key, s.params, s.clock, SeededRng(1), db, offload=True)
    try:
        peer = Peer(other.cert, None)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    msg = Store(bytes([i]) * 32, ObjectKind.BODY, b"b%d" % i, DAY, ())
                    nursery.start_soon(svc.handle, peer, msg)
            assert db.count_objects() == 20
            # Through a registry, as a node serves it: an honest refusal becomes a typed reply.
            reply = await ServiceRegistry([svc]).handle(
                peer, Store(b"\x00" * 32, ObjectKind.BODY, b"x", DAY, ()))
            assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.CONFLICT
            assert db.used_bytes() == db.recount()
    finally:
        db.close()
