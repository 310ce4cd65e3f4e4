"""The mail user agent when things go wrong, in simulation (tests/mailsim.py): an agent dying
between READ and ACK, ACKs lost on the way, a crash between saving a message and deleting it on
the network; bad input (unknown recipients, untrusted CAs, expired certificates, malformed
messages, a full inbox), each one line of error that loses nothing; replicas crashing before and
during a send and before retrieval (retries with a fresh node set); a network smaller than r.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from mailsim import DAY, TIMEOUT, TRUSTED, Sim, one_line, people, people_in
from mailsim import sim_fixture as sim_fixture  # the `sim` fixture
from storegrid import R
from trio.testing import MockClock

from anonmail import crypto, wire
from anonmail.errors import UserError
from anonmail.mail.check import collect
from anonmail.mail.compose import Attachment
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.retrieve import fetch_message
from anonmail.mail.send import SendFailed
from anonmail.permit.gate import gated_store
from anonmail.records import ids
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario
from anonmail.store.db import ObjectRow, StoreDb
from anonmail.store.handlers import StoreLimits
from anonmail.store.messages import Ack, Append, ObjectKind, Store

# -- crash safety of check ------------------------------------------------------------------------


@pytest.mark.threat("T-CHECK-CRASH")
async def test_an_agent_dying_between_read_and_ack_loses_nothing(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    with trio.fail_after(TIMEOUT):
        alice, bob = await people(sim, "alice", "bob")
        sent = [(await alice.send([bob.address], subject=f"no. {i}", body=f"{i}\n")).message_id
                for i in range(2)]
        # Bob's agent READs and saves, then dies before it ACKs: nothing was ACKed.
        first, _ = await collect(bob.net, bob.dht, bob.identity, bob.local, params=s.params,
                                 trusted_cas=TRUSTED, clock=s.clock, rng=SeededRng(5))
        assert sorted(n.header.message_id for n in first.new) == sorted(sent)
        assert sim.entries(bob.address) == 2 * R
        # It restarts (a new agent on the same directory): the entries are read again,
        # recognised, not shown twice, and ACKed now.
        bob = sim.agent(1, bob.identity, "bob")
        again = await bob.check()
        assert again.new == [] and again.duplicates == 2 and again.acked_nodes >= R
        assert sim.entries(bob.address) == 0
        assert sorted(n.header.message_id for n in bob.pending()) == sorted(sent)

        # The ACKs are lost on the way (a network failure): the next check makes up for it.
        def drop_acks(src: Any, dst: Any, msg: Any) -> bool:
            return not isinstance(msg, Ack)

        third = (await alice.send([bob.address], subject="no. 3", body="3\n")).message_id
        s.world.add_policy(drop_acks)
        lost = await bob.check()
        assert [n.header.message_id for n in lost.new] == [third] and lost.acked_nodes == 0
        s.world.policies.remove(drop_acks)
        assert sim.entries(bob.address) == R
        healed = await bob.check()
        assert healed.new == [] and healed.duplicates == 1 and sim.entries(bob.address) == 0

        for m in (*sent, third):
            assert (await bob.retrieve(m)).fetched
        assert len(bob.local.message_keys()) == 3 and bob.pending() == []
        with pytest.raises(UserError, match="already retrieved"):
            await bob.retrieve(sent[0])


async def test_retrieve_after_a_crash_before_delete_deletes_without_refetching(
    sim: Sim, autojump_clock: MockClock
) -> None:
    with trio.fail_after(TIMEOUT):
        alice, bob = await people(sim, "alice", "bob")
        mid = (await alice.send([bob.address], subject="s", body="b\n")).message_id
        await bob.check()
        notice = bob.local.get_pending(mid)
        assert notice is not None
        # What a crash between "saved to the Maildir" and "deleted on the network" leaves.
        data = await fetch_message(bob.net, bob.dht, notice.header, R, 4)
        bob.local.add_message(mid, data)
        key = ids.body_key(mid)
        assert len(sim.holders(key)) == R
        out = await bob.retrieve(mid)
        assert not out.fetched and out.data == data and bob.pending() == []
        assert out.body_deleted_on >= R and sim.holders(key) == set()
        assert bob.local.message_keys() == [out.maildir_key]


# -- bad input ------------------------------------------------------------------------------------


async def test_bad_input_gives_one_line_errors_and_loses_nothing(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    with trio.fail_after(TIMEOUT):
        alice, bob = await people(sim, "alice", "bob")
        before = sim.objects()

        # Unknown recipient: refused before anything is stored; kept in the Outbox.
        with pytest.raises(SendFailed) as e:
            await alice.send([bob.address, "nobody@example.org"], subject="s", body="b")
        line = one_line(e.value)
        assert "no certificate found for nobody@example.org" in line and "Outbox" in line
        assert sim.objects() == before and sim.entries(bob.address) == 0
        assert len(alice.local.outbox_keys()) == 1

        # Untrusted CA: an agent that does not trust Bob's CA will not send to him.
        sceptic = sim.agent(0, alice.identity, "alice-sceptic", trusted=frozenset())
        with pytest.raises(SendFailed, match="from a CA you do not trust") as e:
            await sceptic.send([bob.address], subject="s", body="b")
        one_line(e.value)

        # Expired: a stale replica set still serves Carol's certificate after it lapsed.
        now = s.clock.now()
        carol_id = AddressIdentity.create_anon("carol", SeededRng(b"c"), now - 7200, 3600)
        cert_blob = wire.encode(carol_id.cert)
        for x in sim.closest(carol_id.cert.key):
            db = sim.svc[x.node_id].db
            with db.transaction():
                db.put_object(ObjectRow(carol_id.cert.key, int(ObjectKind.CERT), cert_blob,
                                        crypto.hash("blob", cert_blob), int(now) + DAY,
                                        carol_id.cert.issued, False, now), (), ())
        with pytest.raises(SendFailed, match=r"certificate of .* expired on") as e:
            await alice.send([carol_id.address], subject="s", body="b")
        one_line(e.value)
        before = sim.objects()

        # Malformed input, each one line.
        bad: list[Callable[[], Awaitable[Any]]] = [
            lambda: alice.send_message(b"no header separator at all"),
            lambda: alice.send_message(b"From: " + alice.address.encode() + b"\r\nTo: x\r\n\r\n"),
            lambda: alice.send_message(b"From: someone@example.org\r\nTo: " +
                                       bob.address.encode() + b"\r\n\r\nhi\r\n"),
            lambda: alice.send([bob.address], subject="a\r\nBcc: eve@example.org", body="b"),
            lambda: alice.send(["bob@@example.org"], subject="s", body="b"),
            lambda: alice.send([], subject="s", body="b"),
        ]
        for attempt in bad:
            with pytest.raises(UserError) as bad_input:
                await attempt()
            one_line(bad_input.value)
        assert sim.objects() == before

        # A full inbox (quota): delivery to Bob fails with one line; the message stays in the
        # Outbox; its body is not left behind for Bob; once Bob reads, a retry gets through.
        for x in sim.closest(ids.inbox_key(bob.address), 2 * R):
            sim.svc[x.node_id].ctx.limits = StoreLimits(inbox_entries=1)
        await alice.send([bob.address], subject="first", body="1\n")
        with pytest.raises(SendFailed, match="inbox is full") as e:
            await alice.send([bob.address], subject="second", body="2\n")
        one_line(e.value)
        report = e.value.report
        assert report is not None and bob.address in report.failed
        assert sim.holders(ids.body_key(report.message_id)) == set()
        queued = alice.local.outgoing(report.message_id)
        assert queued is not None
        assert len((await bob.check()).new) == 1
        retry = await alice.send_message(queued)
        assert retry.ok and retry.message_id != report.message_id
        assert len((await bob.check()).new) == 1


# -- failures: retries with a fresh node set ------------------------------------------------------


async def test_send_and_retrieve_survive_crashed_replicas(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    with trio.fail_after(TIMEOUT):
        alice, bob, carol = await people(sim, "alice", "bob", "carol")
        payload = SeededRng(b"crash").bytes(1_500_000)
        msg = alice.compose([bob.address, carol.address], subject="s", body="b\n",
                            attachments=[Attachment("a.bin", payload)])
        key = ids.body_key(msg.message_id)
        inbox = ids.inbox_key(bob.address)
        # Replicas of the body and of Bob's inbox crash before the send (lookups notice),
        # and two more of each die mid-send: they still answer lookups, but their STORE and
        # APPEND go unanswered, so the first round fails there and a fresh set is asked for.
        for x in (*sim.closest(key)[:2], *sim.closest(inbox)[:2]):
            s.world.crash(x.node_id)
        dying = {x.node_id for x in (*sim.closest(key)[:2], *sim.closest(inbox)[:2])}

        def dies_mid_send(src: Any, dst: Any, m: Any) -> bool:
            return not (isinstance(m, Store | Append) and dst.node_id in dying)

        s.world.add_policy(dies_mid_send)
        timeouts = s.world.stats.timeouts
        report = await alice.send_composed(msg)
        s.world.policies.remove(dies_mid_send)
        for nid in dying:
            s.world.crash(nid)
        assert report.ok and s.world.stats.timeouts >= timeouts + 4
        assert {r.node_id for r in report.body.receipts} == {x.node_id for x in sim.closest(key)}
        assert {r.node_id for r in report.inboxes[bob.address].receipts} == {
            x.node_id for x in sim.closest(inbox)}
        assert not dying & {r.node_id for r in report.receipts()}
        # More crash before the recipients read: three replicas of every fragment and of the
        # body. Retrieval falls through to the live ones.
        for k in (key, *(f.key for f in report.fragments)):
            for x in sim.closest(k)[:3]:
                s.world.crash(x.node_id)
        for a in (bob, carol):
            (n,) = (await a.check()).new
            assert (await a.retrieve(n.header.message_id)).data == msg.data
        for k in (key, *(f.key for f in report.fragments)):
            assert sim.holders(k) & {x.node_id for x in s.live()} == set()


async def test_a_network_smaller_than_r_still_delivers(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    """Five nodes cannot give r = 8 receipts: a send asks for as many as there are."""
    s = Scenario(5, seed=3, encode=True)
    await s.build("oracle")
    svc = {}
    for i, x in enumerate(s.nodes):
        svc[x.node_id] = gated_store(x.net, x.dht, x.key, s.params, s.clock,
                                     s.rng.fork(f"store-{i}"), StoreDb(":memory:"),
                                     trusted_cas=TRUSTED)
        x.services.add(svc[x.node_id])
    small = Sim(s, svc, tmp_path)
    try:
        with trio.fail_after(TIMEOUT):
            alice, bob = await people_in(small, 5, "alice", "bob")
            report = await alice.send([bob.address], subject="s", body="b\n",
                                      attachments=[Attachment("a", b"x" * 1_200_000)])
            assert report.ok and report.body.need == 5 and len(report.body.receipts) == 5
            (n,) = (await bob.check()).new
            assert (await bob.retrieve(n.header.message_id)).data.endswith(b"--\r\n")
            # two certificates and their owners' policies (inbox and request inbox), nothing else
            assert small.objects() == 3 * 2 * 5
    finally:
        for service in svc.values():
            service.db.close()
