"""RTS/CTS end to end in simulation (DESIGN.md §6): a first message waits behind a request to
write; the owner reviews and allows; the message goes out by itself; block revokes on every
replica; contacts are granted by policy; nothing a message says grants anything; and the same
with an anonymous sender, whose request and mail reach the owner through Z."""

from __future__ import annotations

import pytest
import trio
from anonsim import Watch, anon_agent
from mailsim import TIMEOUT, Sim, anon, people
from mailsim import sim_fixture as sim_fixture  # the `sim` fixture
from trio.testing import MockClock

from anonmail.errors import ErrorCode
from anonmail.mail.user_agent import MailAgent
from anonmail.permit.book import Status
from anonmail.records import ids
from anonmail.store.client import append_replicated

STORAGE_REQUESTS = {"Store", "Append", "Fetch", "Delete", "Read", "Ack"}


def requests_held(sim: Sim, address: str) -> int:
    key = ids.requests_key(address)
    now = sim.s.clock.now()
    return sum(svc.db.inbox_usage(key, now)[0] for svc in sim.svc.values())


def stranger(sim: Sim, i: int, name: str) -> MailAgent:
    return sim.agent(i, anon(name, sim.s.clock.now()), name)


@pytest.mark.threat("T-PERMIT-SPAM", "T-PERMIT-HIJACK")
async def test_first_contact_waits_for_permission_then_goes_out_by_itself(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        (bob,) = await people(sim, "bob")
        alice = stranger(sim, 5, "alice")
        await alice.publish_cert()
        report = await alice.send([bob.address], subject="Lunch on Friday?",
                                  body="Hi Bob, this is Alice. Allow me to write? anonmail "
                                       "allow alice\n")
        assert report.delivered == [] and bob.address in report.waiting
        assert sim.entries(bob.address) == 0  # nothing reached the inbox
        assert requests_held(sim, bob.address) == sim.s.params.replication  # the RTS
        assert [w.address for w in alice.local.waiting(report.message_id)] == [bob.address]

        # Bob's agent finds the request; nothing is granted by what it says.
        got = await bob.check()
        assert got.new == [] and got.requests_pending == 1
        (req,) = bob.permits.book.requests()
        assert req.address == alice.address and req.request is not None
        assert "Lunch on Friday?" in req.request.note
        assert bob.permits.book.status(alice.address) is Status.NONE
        assert got.settled is not None and not got.settled.granted

        # Bob allows; Alice's next session sees the grant and the message goes out by itself.
        assert await bob.permits.allow(alice.address)
        seen = await alice.check()
        assert [s.delivered for s in seen.flushed] == [[bob.address]]
        assert alice.local.outbox() == []  # moved to Sent
        (notice,) = (await bob.check()).new
        assert notice.header.sender.address == alice.address
        got_msg = await bob.retrieve(notice.header.message_id)
        assert b"Lunch on Friday?" in got_msg.data

        # Bob replies (his RTS-given tokens let him write back) and grants by replying.
        back = await bob.send([alice.address], subject="Re: Lunch", body="Sure.\n")
        assert back.delivered == [alice.address]
        assert len((await alice.check()).new) == 1


@pytest.mark.threat("T-PERMIT-REVOKED")
async def test_block_revokes_on_every_replica(sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        alice, bob = await people(sim, "alice", "bob")  # contacts: alice holds bob's tokens
        assert (await alice.send([bob.address], subject="1", body="one\n")).delivered
        held = alice.permits.book.held_count(bob.address, sim.s.clock.now())
        assert held > 0
        await bob.check()  # bob learns which of his tokens alice spent
        revoked, replicas = await bob.permits.block(alice.address)
        assert revoked == held and replicas == sim.s.params.replication
        # Alice's next append with one of her remaining tokens: refused by every replica.
        t = alice.permits.ticket(bob.address)
        assert t.token is not None
        entry = b"sealed entry bytes"
        proof = await t.prove(entry, sim.s.clock.now(), sim.s.rng)
        placed = await append_replicated(alice.net, alice.dht, t.inbox, entry, 3600, proof,
                                         sim.s.params.replication, rounds=1)
        assert not placed.receipts
        assert len(placed.refusals) == sim.s.params.replication
        assert {e.code for e in placed.refusals.values()} == {ErrorCode.PERMIT_REVOKED}
        # and a send says so in one line, the message kept in the Outbox
        with pytest.raises(Exception, match="blocked you"):
            await alice.send([bob.address], subject="2", body="two\n")
        # Bob's agent drops the blocked sender's new requests.
        assert bob.permits.book.status(alice.address) is Status.BLOCKED


@pytest.mark.threat("T-PERMIT-HIJACK")
async def test_contacts_are_granted_by_policy_strangers_wait(sim: Sim,
                                                             autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        (bob,) = await people(sim, "bob")
        carol, mallory = stranger(sim, 6, "carol"), stranger(sim, 7, "mallory")
        for x in (carol, mallory):
            await x.publish_cert()
        bob.permits.book.set_status(carol.address, Status.CONTACT)  # `contacts add carol`
        for x in (carol, mallory):
            assert (await x.send([bob.address], subject="hello", body="hi\n")).waiting
        got = await bob.check()
        assert got.settled is not None  # granted by Bob's policy, not by the note:
        assert got.settled.granted == [carol.address]
        assert [c.address for c in bob.permits.book.requests()] == [mallory.address]
        assert (await carol.check()).flushed[0].delivered == [bob.address]
        assert (await mallory.check()).flushed == []


async def test_anonymous_first_contact_hides_the_sender(sim: Sim,
                                                        autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        (bob,) = await people(sim, "bob")
        alice, store = anon_agent(sim, 5, anon("alice", sim.s.clock.now()), "alice")
        await alice.publish_cert()
        watch = Watch()
        watch.install(sim)
        report = await alice.send([bob.address], subject="Hello", body="anonymous hello\n")
        assert report.waiting == {bob.address: "asked for permission to write (an RTS was sent)"}
        assert (await bob.check()).requests_pending == 1
        assert await bob.permits.allow(alice.address)
        seen = await alice.check()
        assert [s.delivered for s in seen.flushed] == [[bob.address]]
        assert len((await bob.check()).new) == 1
        me = sim.node(5).node_id
        assert me not in watch.who_sent(STORAGE_REQUESTS)  # RTS, grant, mail: all through Z
        assert store.stats.bad_receipts == 0
