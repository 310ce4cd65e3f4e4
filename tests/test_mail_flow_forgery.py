"""The mail user agent against forgery, in simulation (tests/mailsim.py): a header signed by
someone other than its sender, altered after signing, passed on to another recipient, or moved
into another inbox by a storage node is rejected; a body whose From names someone other than the
signer of its header is refused at retrieval and not saved.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
from mailsim import DAY, TIMEOUT, Sim, one_line, people
from mailsim import sim_fixture as sim_fixture  # the `sim` fixture
from storegrid import R
from trio.testing import MockClock

from anonmail.errors import UserError
from anonmail.mail import envelope
from anonmail.mail.compose import Composed
from anonmail.mail.user_agent import MailAgent
from anonmail.records import ids
from anonmail.rng import SeededRng
from anonmail.store.client import append_replicated


async def append(sim: Sim, by: MailAgent, to: MailAgent, entry: bytes) -> None:
    """Mallory is a contact (tests/mailsim.py `people`): she spends one of her permits on
    whatever she appends, so the recipient's own checks are what is tested here."""
    t = by.permits.ticket(to.address)
    assert t.token is not None
    proof = await t.prove(entry, sim.s.clock.now(), sim.s.rng)
    got = await append_replicated(by.net, by.dht, ids.inbox_key(to.address), entry, DAY, proof,
                                  R)
    assert len(got.receipts) == R


@pytest.mark.threat("T-MAIL-FORGE")
async def test_forged_altered_and_redirected_headers_are_rejected(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    rng = SeededRng(b"mallory")
    with trio.fail_after(TIMEOUT):
        alice, bob, carol, mallory = await people(sim, "alice", "bob", "carol", "mallory")
        genuine = await alice.send([bob.address], subject="pay 10 to carol", body="ok\n")
        got = await bob.check()
        (notice,) = got.new
        h = notice.header
        bob_inbox, carol_inbox = (ids.inbox_key(a.address) for a in (bob, carol))

        # Mallory claims to be Alice: Alice's certificate, Mallory's signature.
        forged = envelope.sign_header(replace(h, signature=bytes(64),
                                              message_id="<" + "a" * 32 + "@anonmail>"),
                                      mallory.identity.sign)
        # Someone who saw the header (Bob) alters the subject and re-seals it to Bob.
        altered = replace(h, subject="pay 1000 to mallory")
        # Bob passes Alice's header on to Carol as if Alice had written to her.
        for entry, inbox_of in ((envelope.seal_header(forged, bob.identity.seal.public,
                                                      bob_inbox, rng), bob),
                                (envelope.seal_header(altered, bob.identity.seal.public,
                                                      bob_inbox, rng), bob),
                                (envelope.seal_header(h, carol.identity.seal.public,
                                                      carol_inbox, rng), carol),
                                (b"junk", bob)):
            await append(sim, mallory, inbox_of, entry)
        # An entry sealed for Bob, moved into Carol's inbox by a storage node.
        moved = envelope.seal_header(h, bob.identity.seal.public, bob_inbox, rng)
        await append(sim, mallory, carol, moved)

        at_bob, at_carol = await bob.check(), await carol.check()
        assert at_bob.new == [] and at_bob.rejected["forged or altered"] == 2
        assert at_bob.rejected["unreadable (not sealed to us, or damaged)"] == 1
        assert at_carol.new == [] and at_carol.rejected["forged or altered"] == 1
        assert at_carol.rejected["unreadable (not sealed to us, or damaged)"] == 1
        assert sim.entries(bob.address) == sim.entries(carol.address) == 0  # junk ACKed too
        assert [n.header.message_id for n in bob.pending()] == [genuine.message_id]

        # A sender signs only as itself: a body whose From names Alice, under Mallory's
        # signed header, is refused at retrieval and not saved.
        real = mallory.compose([bob.address], subject="from alice, honest", body="x\n")
        fake = Composed(real.data.replace(mallory.address.encode(), alice.address.encode()),
                        real.sender, real.to, real.cc, real.bcc, real.subject, real.date,
                        real.message_id)
        await mallory.send_composed(fake)
        (n,) = (await bob.check()).new
        assert n.header.sender.address == mallory.address
        with pytest.raises(UserError, match="another sender") as e:
            await bob.retrieve(fake.message_id)
        one_line(e.value)
        assert not bob.local.has_message(fake.message_id)
        await bob.discard(fake.message_id)
        assert [n.header.message_id for n in bob.pending()] == [genuine.message_id]
        assert (await bob.retrieve(genuine.message_id)).data.startswith(b"From: " +
                                                                       alice.address.encode())
        assert s.clock.now() > 0
