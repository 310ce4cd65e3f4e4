"""Writing to someone grants them permission to write back (DESIGN.md §6: "replying grants
one"): the user's own send makes each recipient ALLOWED and the mail carries tokens for them,
whether the sender holds the recipient's tokens (here: Dave allowed Alice before she asked) or
asks first with an RTS; directly or anonymously. Nothing Alice *receives* changes whom she
allows (T-PERMIT-HIJACK)."""

from __future__ import annotations

import pytest
import trio
from anonsim import anon_agent
from mailsim import TIMEOUT, Sim, anon, people
from mailsim import sim_fixture as sim_fixture  # the `sim` fixture
from trio.testing import MockClock

from anonmail.mail.user_agent import MailAgent
from anonmail.permit.book import GRANT_BATCH, Status
from anonmail.records import ids


def requests_held(sim: Sim, address: str) -> int:
    key = ids.requests_key(address)
    now = sim.s.clock.now()
    return sum(svc.db.inbox_usage(key, now)[0] for svc in sim.svc.values())


@pytest.mark.threat("T-PERMIT-HIJACK")
@pytest.mark.parametrize("anonymous", [False, True], ids=["direct", "anonymous"])
async def test_dave_allows_alice_first_and_answers_her_as_mail(
        sim: Sim, autojump_clock: MockClock, anonymous: bool) -> None:
    with trio.fail_after(TIMEOUT):
        (dave,) = await people(sim, "dave")
        alice: MailAgent
        if anonymous:
            alice, _ = anon_agent(sim, 5, anon("alice", sim.s.clock.now()), "alice")
        else:
            alice = sim.agent(5, anon("alice", sim.s.clock.now()), "alice")
        await alice.publish_cert()

        # Dave allows Alice before she ever asks: she holds his tokens, and that alone (an
        # entry she received) does not make her allow him.
        assert await dave.permits.allow(alice.address)
        await alice.check()
        now = sim.s.clock.now()
        assert alice.permits.book.held_count(dave.address, now) == GRANT_BATCH
        assert alice.permits.book.status(dave.address) is Status.NONE

        # Alice writes to Dave: delivered with his token, and her own send allows him back.
        report = await alice.send([dave.address], subject="Hello Dave", body="Hi, Alice.\n")
        assert report.delivered == [dave.address] and report.waiting == {}
        assert alice.permits.book.status(dave.address) is Status.ALLOWED
        got = await dave.check()
        assert [n.header.message_id for n in got.new] == [report.message_id]
        assert dave.permits.book.held_count(alice.address, sim.s.clock.now()) == GRANT_BATCH

        # Dave's reply goes out as mail, not as a request to write.
        back = await dave.send([alice.address], subject="Re: Hello Dave", body="Hi Alice.\n")
        assert back.delivered == [alice.address] and back.waiting == {}
        assert requests_held(sim, alice.address) == 0
        assert [n.header.message_id for n in (await alice.check()).new] == [back.message_id]
        assert alice.permits.book.requests() == []


@pytest.mark.threat("T-PERMIT-HIJACK")
async def test_asking_to_write_lets_them_answer_and_a_block_stays(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        (bob,) = await people(sim, "bob")
        alice = sim.agent(5, anon("alice", sim.s.clock.now()), "alice")
        mallory = sim.agent(6, anon("mallory", sim.s.clock.now()), "mallory")
        for x in (alice, mallory):
            await x.publish_cert()
        # Alice's RTS to Bob is her own send too: Bob may write back (the RTS carries tokens).
        first = await alice.send([bob.address], subject="hi", body="hi\n")
        assert first.waiting
        assert alice.permits.book.status(bob.address) is Status.ALLOWED
        # Bob, instead of `allow`, writes to her: that answers her request (his mail carries
        # permits, and her message goes out by itself).
        assert (await bob.check()).requests_pending == 1
        assert (await bob.send([alice.address], subject="hello", body="hi\n")).delivered
        assert bob.permits.book.requests() == []
        assert bob.permits.book.status(alice.address) is Status.ALLOWED
        seen = await alice.check()
        assert len(seen.new) == 1
        assert [s.message_id for s in seen.flushed if s.delivered] == [first.message_id]
        # Writing to an address Alice blocked does not lift the block (only `allow` does).
        await alice.permits.block(mallory.address)
        await alice.send([mallory.address], subject="stop", body="stop writing\n")
        assert alice.permits.book.status(mallory.address) is Status.BLOCKED
