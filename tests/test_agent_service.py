"""The long-running agent's schedule (agent/service.py) on the simulated network, in virtual
time: a submitted message goes out at once and the recipient's agent retrieves it by itself
within its check interval; a message that cannot go out is retried with a growing wait; the
address certificate is republished before nodes drop it; one operation runs at a time."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from mailsim import Sim, people
from mailsim import sim_fixture as sim_fixture
from trio.testing import MockClock

from anonmail.agent.service import (
    REPUBLISH_AFTER,
    AgentService,
    OpenSession,
    published_at,
)
from anonmail.agent.session import AgentConfig
from anonmail.mail.user_agent import MailAgent

INTERVAL = 300.0


def service(sim: Sim, agent: MailAgent, log: list[str] | None = None,
            interval: float = INTERVAL) -> AgentService:
    """An AgentService whose sessions are `agent` itself (a simulated node, direct)."""
    @asynccontextmanager
    async def open_session(anonymous: bool) -> AsyncIterator[MailAgent]:
        if log is not None:
            log.append("open")
        agent.checked = False
        yield agent
        if log is not None:
            log.append("close")

    opener: OpenSession = open_session
    config = AgentConfig(sim.s.params, (), frozenset(), agent.local.root)
    return AgentService(agent.identity, config, sim.s.clock, sim.s.rng.fork("svc"),
                        check_interval=interval, open_session=opener)


def message(frm: str, to: str, subject: str) -> bytes:
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nhello\r\n").encode()


async def test_submitted_mail_goes_out_and_the_recipient_agent_fetches_it(
        sim: Sim, autojump_clock: MockClock, tmp_path: Path) -> None:
    alice, bob = await people(sim, "alice", "bob")
    a, b = service(sim, alice), service(sim, bob)
    with trio.fail_after(2 * 86400):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            t0 = sim.s.clock.now()
            mid = await a.submit(message(alice.address, bob.address, "by itself"))
            assert alice.local.outgoing(mid) is not None  # durable before submit returns
            while not bob.local.has_message(mid) or bob.local.pending():
                await trio.sleep(1)
            took = sim.s.clock.now() - t0
            assert took <= 1.5 * INTERVAL + 60, took  # one jittered interval at most
            assert alice.local.outbox() == [] and len(alice.local.sent_keys()) == 1
            assert b.status.checks >= 1 and b.status.last_check_ok
            nursery.cancel_scope.cancel()


async def test_failed_sends_are_retried_with_growing_waits(
        sim: Sim, autojump_clock: MockClock) -> None:
    (alice,) = await people(sim, "alice")
    a = service(sim, alice)
    nobody = "nobody@" + "a" * 32 + ".anon"  # no certificate anywhere: every try fails
    tries: list[float] = []
    real_retry = alice.retry

    async def counting_retry(mid: str, only: object = None) -> object:
        tries.append(sim.s.clock.now())
        return await real_retry(mid)

    alice.retry = counting_retry  # type: ignore[method-assign,assignment]
    with trio.fail_after(3 * 86400):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            mid = await a.submit(message(alice.address, nobody, "never"))
            await trio.sleep(6 * 3600)
            nursery.cancel_scope.cancel()
    gaps = [t1 - t0 for t0, t1 in itertools.pairwise(tries)]
    assert len(tries) >= 5 and alice.local.outgoing(mid) is not None  # kept, still tried
    assert all(g <= 1.5 * 3600 + 120 for g in gaps), gaps  # capped at an hour (+ jitter)
    assert gaps[-1] > 3 * gaps[0], gaps  # the wait grows
    assert "send" in a.status.last_error


async def test_certificate_republished_before_nodes_drop_it(
        sim: Sim, autojump_clock: MockClock) -> None:
    (alice,) = await people(sim, "alice")
    a = service(sim, alice, interval=12 * 3600)  # (fewer checks: 7 virtual days pass)
    with trio.fail_after(40 * 86400):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await trio.sleep(60)
            first = published_at(alice.local.root)
            assert first is not None  # never published by the service: done at start
            await trio.sleep(REPUBLISH_AFTER + 2 * 12 * 3600)
            second = published_at(alice.local.root)
            assert second is not None and second >= first + REPUBLISH_AFTER
            assert second - first < 30 * 86400  # well before the 30 days nodes keep it
            nursery.cancel_scope.cancel()


async def test_one_operation_at_a_time(sim: Sim, autojump_clock: MockClock) -> None:
    (alice,) = await people(sim, "alice")
    log: list[str] = []
    a = service(sim, alice, log)

    async def job(agent: MailAgent) -> None:
        log.append("job")
        await trio.sleep(5)

    with trio.fail_after(86400):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            for _ in range(3):
                nursery.start_soon(a.run_job, job)
            await trio.sleep(600)
            nursery.cancel_scope.cancel()
    # every session closes before the next opens
    assert "".join("(" if e == "open" else ")" if e == "close" else "" for e in log) \
        == "()" * log.count("open")
    assert log.count("job") == 3


async def test_a_restarted_agent_sends_what_a_crash_left_in_the_outbox_once(
        sim: Sim, autojump_clock: MockClock) -> None:
    # A crash between queueing and sending (or mid-send) leaves the message in the Outbox with
    # nothing recorded: the next agent sends it; the recipient keeps one copy even when a
    # first attempt had reached it already (de-duplicated by Message-ID).
    alice, bob = await people(sim, "alice", "bob")
    first = service(sim, alice)
    lost = await first.submit(message(alice.address, bob.address, "never sent"))
    sent = await first.submit(message(alice.address, bob.address, "sent, not recorded"))
    data = alice.local.outgoing(sent)
    assert data is not None and alice.local.outgoing(lost) is not None
    await alice.retry(sent)  # it went out, and the agent died before its Outbox said so:
    alice.local.queue_outgoing(sent, data)
    a, b = service(sim, alice), service(sim, bob)
    with trio.fail_after(86400):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            while not (bob.local.has_message(lost) and bob.local.has_message(sent)) or \
                    bob.local.pending():
                await trio.sleep(1)
            await trio.sleep(2 * INTERVAL)  # every later check too
            nursery.cancel_scope.cancel()
    assert alice.local.outbox() == []
    assert len(bob.local.message_keys()) == 2  # both, each once
