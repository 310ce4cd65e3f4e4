"""One outstanding request to write per recipient (DESIGN.md §6, docs/permits.md "The flows"):
a second send or a retry while Alice's RTS to Bob is unanswered waits for his answer instead
of appending another RTS (another stamp, another slot of his request-inbox quota); once the
request lapses (RTS_LAPSE, the request inbox's TTL) the next send or retry asks again. Both
messages go out by themselves when Bob allows Alice. `anonmail outbox --retry` is run as a
command: argument parsing and output in a worker thread, the job on the simulated network."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pytest
import trio
from mailsim import TIMEOUT, TRUSTED, Sim, anon, people
from mailsim import sim_fixture as sim_fixture  # the `sim` fixture
from trio.testing import MockClock

from anonmail import cli
from anonmail.commands import jobs
from anonmail.commands.jobs import Output
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.permits import RTS_LAPSE
from anonmail.mail.user_agent import MailAgent
from anonmail.records import ids

WAITS = "waiting for the answer"


def requests_held(sim: Sim, address: str) -> int:
    key = ids.requests_key(address)
    now = sim.s.clock.now()
    return sum(svc.db.inbox_usage(key, now)[0] for svc in sim.svc.values())


@pytest.mark.threat("T-RTS-FLOOD")
async def test_a_second_send_or_a_retry_waits_for_the_outstanding_request(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        (bob,) = await people(sim, "bob")
        alice = sim.agent(5, anon("alice", sim.s.clock.now()), "alice")
        await alice.publish_cert()
        r = sim.s.params.replication
        first = await alice.send([bob.address], subject="one", body="first\n")
        assert first.waiting == {bob.address: "asked for permission to write (an RTS was sent)"}
        assert requests_held(sim, bob.address) == r  # one RTS, on every replica

        again = await alice.retry(first.message_id)  # what `anonmail outbox --retry` runs
        second = await alice.send([bob.address], subject="two", body="second\n")
        for report in (again, second):
            assert report.delivered == [] and WAITS in report.waiting[bob.address]
        assert requests_held(sim, bob.address) == r  # still the one RTS
        waiting = {s.message_id: s.waiting for s in alice.local.outbox()}
        assert set(waiting) == {first.message_id, second.message_id}
        assert all(w.permit for ws in waiting.values() for w in ws)

        # Bob sees one request; allowing it sends both messages out by themselves.
        assert (await bob.check()).requests_pending == 1
        assert await bob.permits.allow(alice.address)
        seen = await alice.check()
        assert sorted(s.message_id for s in seen.flushed if s.delivered) == sorted(
            [first.message_id, second.message_id])
        assert alice.local.outbox() == [] and alice.permits.book.asked_at(bob.address) == 0
        assert len((await bob.check()).new) == 2


@pytest.mark.threat("T-RTS-FLOOD")
async def test_an_unanswered_request_is_made_again_once_it_lapses(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(RTS_LAPSE + TIMEOUT):
        (bob,) = await people(sim, "bob")
        alice = sim.agent(5, anon("alice", sim.s.clock.now()), "alice")
        await alice.publish_cert()
        r = sim.s.params.replication
        first = await alice.send([bob.address], subject="one", body="first\n")
        asked = alice.permits.book.asked_at(bob.address)
        assert 0 < asked <= sim.s.clock.now()
        await trio.sleep(RTS_LAPSE - 3600)  # unanswered, not yet lapsed: still waits
        assert WAITS in (await alice.retry(first.message_id)).waiting[bob.address]
        assert requests_held(sim, bob.address) == r
        await trio.sleep(3600 + 60)  # lapsed: the request inbox dropped it, ask again
        assert requests_held(sim, bob.address) == 0
        report = await alice.retry(first.message_id)
        assert report.waiting == {bob.address: "asked for permission to write (an RTS was "
                                                "sent)"}
        assert requests_held(sim, bob.address) == r
        assert alice.permits.book.asked_at(bob.address) > asked


# -- `anonmail outbox --retry` as a command -------------------------------------------------------

async def command(clock: MockClock, agent: MailAgent, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `anonmail ARGV` as the user would, its job in `agent`'s session. Virtual time
    stands still while the command's own code runs in its thread (autojump would leap)."""

    def run_job(args: argparse.Namespace, name: str, params: dict[str, Any], *,
                identity: AddressIdentity | None = None) -> Output:
        async def job() -> Output:
            clock.autojump_threshold = 0
            try:
                return await jobs.execute(agent, name, params)
            finally:
                clock.autojump_threshold = math.inf
        return trio.from_thread.run(job)

    monkeypatch.setattr(jobs, "run_job", run_job)
    clock.autojump_threshold = math.inf
    try:
        code = await trio.to_thread.run_sync(cli.main, list(argv))
    finally:
        clock.autojump_threshold = 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.threat("T-RTS-FLOOD")
async def test_outbox_retry_command_waits_for_the_request_then_sends(
        sim: Sim, autojump_clock: MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(TIMEOUT):
        (bob,) = await people(sim, "bob")
        home = tmp_path / "alice-home"
        x = sim.node(5)
        alice = MailAgent(anon("alice", sim.s.clock.now()), x.net, x.dht, home / "mail",
                          sim.s.params, sim.s.clock, sim.s.rng.fork("agent-alice"),
                          trusted_cas=TRUSTED)
        await alice.publish_cert()
        mid = (await alice.send([bob.address], subject="Lunch", body="Friday?\n")).message_id
        r = sim.s.params.replication
        assert requests_held(sim, bob.address) == r

        code, out, err = await command(autojump_clock, alice, monkeypatch, capsys,
                                       "outbox", "--retry", mid, "--home", str(home))
        assert code == 0, err
        assert out.startswith(f"delivered to nobody new; still waiting: {bob.address}: asked "
                              "for permission to write on ")
        assert WAITS in out and out.count("\n") == 1
        assert requests_held(sim, bob.address) == r  # no second RTS
        code, out, _ = await command(autojump_clock, alice, monkeypatch, capsys,
                                     "outbox", "--home", str(home))
        assert code == 0 and mid in out and f"{bob.address}: asked for permission" in out

        # Bob allows Alice; the next retry delivers (the grant is read first).
        await bob.check()
        assert await bob.permits.allow(alice.address)
        await alice.check(flush=False)
        code, out, err = await command(autojump_clock, alice, monkeypatch, capsys,
                                       "outbox", "--retry", mid, "--home", str(home))
        assert code == 0, err
        assert out == f"delivered to {bob.address}\n"
        code, out, _ = await command(autojump_clock, alice, monkeypatch, capsys,
                                     "outbox", "--home", str(home))
        assert out == "your Outbox is empty\n"
        code, _, err = await command(autojump_clock, alice, monkeypatch, capsys,
                                     "outbox", "--retry", mid, "--home", str(home))
        assert code == 2 and err == f"anonmail: no message {mid} in your Outbox\n"
