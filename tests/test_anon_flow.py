"""Anonymous sending end to end in simulation (anon/ on the 300-node mail grid): the storage
and inbox nodes see Z, never the sender's node; receipts are verified; the recipients read."""

from __future__ import annotations

import trio
from anonsim import Watch, anon_agent
from mailsim import TIMEOUT, Sim, anon, people
from mailsim import sim_fixture as sim_fixture  # the `sim` fixture
from trio.testing import MockClock

from anonmail.experiments.demo.model import ROUTING
from anonmail.mail.compose import Attachment

STORAGE_REQUESTS = {"Store", "Append", "Fetch", "Delete", "Read", "Ack"}


async def test_anonymous_send_reaches_both_and_storage_never_sees_the_sender(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        bob, carol = await people(sim, "bob", "carol")
        alice_id = anon("alice", sim.s.clock.now())
        alice, store = anon_agent(sim, 5, alice_id, "alice", knows=(bob, carol))
        watch = Watch()
        watch.install(sim)
        report = await alice.send([bob.address, carol.address], subject="hi", body="anonymous",
                                  attachments=[Attachment("a.bin", b"\x01" * 300_000)])
        assert report.ok and sorted(report.delivered) == sorted([bob.address, carol.address])
        assert len(report.receipts()) >= 3 * sim.s.params.replication
        me = sim.node(5).node_id
        # the sender's node sent nothing any storage or inbox node could attribute to it
        assert me not in watch.who_sent(STORAGE_REQUESTS)
        saw = watch.saw_from(me)
        assert saw and all(kinds <= {*ROUTING, "Locate", "Open", "Cell", "Destroy"}
                           for kinds in saw.values())
        relays = {nid for nid, kinds in saw.items() if kinds & {"Open", "Cell"}}
        assert len(relays) == 1  # one guard X sees A's circuits
        for who in (bob, carol):
            await who.check()
            got = await who.retrieve_all()
            assert len(got) == 1
        assert store.stats.bad_receipts == 0
        # Issue 11: the certificates Zs name (Locate statements, replica sets) go through the
        # sender's CertCache: each verified once, later sights cost a hash
        certs = store.gb.cert_cache
        assert certs.hits > certs.verifications > 0  # deterministic here: 66 and 36
