"""Hostile go-betweens in simulation (sim/anon_adversary.py on the 300-node mail grid): every
tampered receipt is caught and the mail still arrives; a lying X is caught by Y and charged;
X and Y agreeing on a bogus Z still cannot fake storage; refusing relays are avoided."""

from __future__ import annotations

import pytest
import trio
from anonsim import anon_agent, anonymous_store
from mailsim import TIMEOUT, Sim, anon, people
from mailsim import sim_fixture as sim_fixture  # the `sim` fixture
from trio.testing import MockClock

from anonmail.anon.gobetweens import Guard
from anonmail.mail.permits import introduce
from anonmail.records.receipts import StoreOp
from anonmail.sim.anon_adversary import (
    RECEIPT_DEEDS,
    HostileRelay,
    HostileStats,
    Misdeed,
)
from anonmail.store.client import check_receipt


def make_hostile(sim: Sim, indices: range | list[int], deeds: Misdeed | None = None
                 ) -> HostileStats:
    """Nodes at `indices` become one coalition; each with `deeds`, or one receipt misdeed each
    in turn (with LIE and REFUSE)."""
    stats = HostileStats()
    members = [sim.node(i) for i in indices]

    def coalition() -> list:  # type: ignore[type-arg]
        return [m.cert for m in members]

    for n, x in enumerate(members):
        d = deeds if deeds is not None else (
            Misdeed.LIE | Misdeed.REFUSE | RECEIPT_DEEDS[n % len(RECEIPT_DEEDS)])
        x.services.add(HostileRelay(x.net, x.dht, x.key, sim.s.params, sim.s.clock,
                                    sim.s.rng.fork(f"hostile-{n}"), deeds=d,
                                    coalition=coalition, stats=stats), replace=True)
    return stats


@pytest.mark.threat("T-ANON-RECEIPTS", "T-ANON-REFUSE")
async def test_every_tampered_receipt_is_caught_and_every_message_arrives(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        (bob,) = await people(sim, "bob")
        hostile = make_hostile(sim, range(200, 300))  # a third of the nodes
        alice, store = anon_agent(sim, 5, anon("alice", sim.s.clock.now()), "alice")
        introduce(alice.permits, bob.permits, 48)  # contacts, with a token for every send
        sent: list[str] = []
        i = 0
        # At least 16 sends, and on until both kinds of misdeed were met (which hostile nodes
        # serve as Z is drawn at random; at most 48 sends).
        while i < 16 or (not (hostile.tampered and hostile.withheld) and i < 48):
            i += 1
            await trio.sleep(120)  # past a circuit's reuse window: fresh Z and W each time
            report = await alice.send([bob.address], subject=f"m{i}", body="x" * 2000)
            key_certs = {c.node_id: c for c in (sim.node(j).cert for j in range(300))}
            for rc in report.receipts():  # every accepted receipt is the storing node's own
                op = rc.op
                check_receipt(rc, key_certs[rc.node_id], StoreOp(op), rc.key, rc.digest)
            sent.append(report.message_id)
        assert hostile.tampered > 0 and hostile.withheld > 0
        assert store.stats.bad_receipts == hostile.tampered  # caught, every one
        await bob.check()
        got = {n.header.message_id for n in bob.pending()}
        assert got == set(sent)


@pytest.mark.threat("T-ANON-BOGUS-Z")
async def test_a_lying_x_is_caught_by_y_and_charged(sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        make_hostile(sim, [7, *range(250, 300)], Misdeed.LIE)
        store = anonymous_store(sim, 5, "alice")
        gb = store.gb
        gb.guard = Guard(sim.node(7).cert, sim.s.clock.now())
        circuit = await gb.channel()
        assert gb.stats.disagreements >= 1 and gb.blame.evidence
        x_answer, y_answer = gb.blame.evidence[0]
        assert x_answer.statement.by == sim.node(7).node_id
        assert x_answer.statement.key == y_answer.statement.key  # signed, same question
        assert gb.blame.lies[sim.node(7).node_id] >= 1
        assert circuit.end.node_id not in {sim.node(i).node_id for i in range(250, 300)} or \
            gb.guard is None or gb.guard.cert.node_id != sim.node(7).node_id


@pytest.mark.threat("T-ANON-BOGUS-Z")
async def test_x_and_y_agreeing_on_a_bogus_z_still_cannot_fake_storage(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        (bob,) = await people(sim, "bob")
        # every node but Bob's and Alice's lies about Z and forges receipts: X and Y always
        # agree on a coalition Z, which forges every receipt
        make_hostile(sim, [i for i in range(300) if i not in (0, 5)],
                     Misdeed.LIE | Misdeed.FORGE)
        alice, store = anon_agent(sim, 5, anon("alice", sim.s.clock.now()), "alice",
                                  knows=(bob,))
        with pytest.raises(Exception) as e:
            await alice.send([bob.address], subject="s", body="b")
        assert "kept in your Outbox" in str(e.value) or "try again" in str(e.value)
        assert store.stats.bad_receipts > 0
        assert bob.local.pending() == []


@pytest.mark.threat("T-ANON-REFUSE")
async def test_refusing_relays_are_avoided_and_the_mail_goes_through(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        (bob,) = await people(sim, "bob")
        hostile = make_hostile(sim, range(150, 300), Misdeed.REFUSE)  # half refuse
        alice, store = anon_agent(sim, 5, anon("alice", sim.s.clock.now()), "alice",
                                  knows=(bob,))
        refuser = sim.node(150).cert
        store.gb.guard = Guard(refuser, sim.s.clock.now())  # start with a refusing guard
        for i in range(5):
            await alice.send([bob.address], subject=f"m{i}", body="y")
        assert hostile.refused > 0
        guard = store.gb.guard
        assert guard is not None and guard.cert.node_id != refuser.node_id  # replaced at once
        assert store.gb.blame.failures[refuser.node_id] >= 1
        await bob.check()
        assert len(bob.pending()) == 5
