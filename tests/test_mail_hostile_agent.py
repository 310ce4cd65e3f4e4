"""The running agent (agent/service.py) against a sender who may write to us and sends a body
that cannot be read (threat T-MAIL-HOSTILE-BODY): the agent keeps running and keeps
retrieving the other mail; the unreadable message is held -- its notice kept, fetched once,
not again, not even after a restart -- until the user discards it; a message that keeps
failing for another reason is tried with a growing wait, not at every check, and not at all
once its body has expired; the log names error classes only. Holds are per (Message-ID,
sender): a co-recipient's notice reusing a Message-ID, held as unreadable, does not hold the
genuine one (T-MAIL-DEDUP)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from mailsim import Sim, people
from mailsim import sim_fixture as sim_fixture
from trio.testing import MockClock

from anonmail.agent import held as held_mod
from anonmail.agent.service import AgentService, OpenSession
from anonmail.agent.session import AgentConfig
from anonmail.clock import Clock
from anonmail.errors import UserError
from anonmail.mail.compose import Composed
from anonmail.mail.maildir import PendingNotice
from anonmail.mail.notices import body_gone_at
from anonmail.mail.retrieve import RetrieveReport
from anonmail.mail.user_agent import MailAgent
from anonmail.net.base import Handler, Network
from anonmail.records import ids
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.store import messages as sm

pytestmark = pytest.mark.threat("T-MAIL-HOSTILE-BODY")

INTERVAL = 300.0


def held_ids(mail_dir: Path) -> set[str]:
    """Message ids of the notices the agent holds (held.py keys them by sender too)."""
    return {mid for mid, _ in held_mod.load(mail_dir)}


def service(sim: Sim, agent: MailAgent, interval: float = INTERVAL) -> AgentService:
    """An AgentService whose sessions are `agent` itself (a simulated node, direct)."""
    @asynccontextmanager
    async def open_session(anonymous: bool) -> AsyncIterator[MailAgent]:
        agent.checked = False
        yield agent

    opener: OpenSession = open_session
    config = AgentConfig(sim.s.params, (), frozenset(), agent.local.root)
    return AgentService(agent.identity, config, sim.s.clock, sim.s.rng.fork("svc"),
                        check_interval=interval, open_session=opener)


class CountingFetches:
    """`inner`, counting the FETCHes of each key it sends and the bytes they bring; a FETCH
    of a key in `missing` is answered NotFound (a body on no reachable node), its time kept."""

    def __init__(self, inner: Network, clock: Clock | None = None,
                 missing: frozenset[bytes] = frozenset()) -> None:
        self.inner = inner
        self.fetches: dict[bytes, int] = {}
        self.fetched_bytes = 0
        self.clock, self.missing = clock, missing
        self.missed: list[float] = []

    @property
    def local_cert(self) -> NodeCert:
        return self.inner.local_cert

    async def request(self, to: NodeCert, msg: Any, *, timeout: float | None = None) -> Any:
        if isinstance(msg, sm.Fetch) and msg.key in self.missing:
            assert self.clock is not None
            self.missed.append(self.clock.now())
            return sm.NotFound()
        reply = await self.inner.request(to, msg, timeout=timeout)
        if isinstance(msg, sm.Fetch):
            self.fetches[msg.key] = self.fetches.get(msg.key, 0) + 1
            if isinstance(reply, sm.Fetched):
                self.fetched_bytes += len(reply.blob)
        return reply

    async def introduce(self, endpoint: Endpoint, *, timeout: float | None = None) -> NodeCert:
        return await self.inner.introduce(endpoint, timeout=timeout)

    async def serve(self, handler: Handler, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.inner.serve(handler, task_status=task_status)


async def run_for(svc: AgentService, seconds: float) -> None:
    with trio.fail_after(seconds + 86400):
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()


async def test_a_hostile_body_is_held_and_the_agent_keeps_retrieving_mail(
        sim: Sim, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anonmail")
    alice, bob, mallory = await people(sim, "alice", "bob", "mallory")
    # A valid, signed message whose From the stdlib parser cannot read (it raised IndexError
    # outside any handler: the agent, and with it `anonmail run`, died at every start).
    real = mallory.compose([bob.address], subject="hi", body="x\n")
    evil = real.data.replace(b"From: " + mallory.address.encode(), b"From: <")
    assert evil != real.data
    await mallory.send_composed(Composed(evil, real.sender, real.to, real.cc, real.bcc,
                                         real.subject, real.date, real.message_id))
    bad = real.message_id
    good = (await alice.send([bob.address], subject="legit", body="hello\n")).message_id
    counting = CountingFetches(bob.net)
    bob.net = counting
    b = service(sim, bob)

    await run_for(b, 4 * 3600)
    assert b.status.checks >= 20 and b.status.last_check_ok  # it ran all along
    assert bob.local.has_message(good) and not bob.local.has_message(bad)
    assert bob.local.has_pending(bad)  # nothing stored is lost: the user decides
    assert held_ids(bob.local.root) == {bad} and b.describe()["held"] == 1
    assert "not a well-formed message" in b.status.last_error  # the owner's status says why
    fetched = counting.fetches.get(ids.body_key(bad), 0)
    assert 1 <= fetched <= 2, fetched  # one retrieve attempt, not one per check

    again = service(sim, bob)  # a restart does not fetch it again either
    await run_for(again, 3600)
    assert counting.fetches.get(ids.body_key(bad), 0) == fetched
    assert again.describe()["held"] == 1

    await bob.discard(bad)  # the user gives it up: it is no longer held
    await run_for(service(sim, bob), 600)
    assert held_ids(bob.local.root) == set() and not bob.local.has_pending(bad)

    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "UnreadableMessage" in logged
    for secret in (bob.address, mallory.address, alice.address, bad, good, "hi", "legit"):
        assert secret not in logged


async def test_a_message_that_keeps_failing_neither_stops_the_others_nor_runs_every_check(
        sim: Sim, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="anonmail")
    alice, bob = await people(sim, "alice", "bob")
    first = (await alice.send([bob.address], subject="one", body="1\n")).message_id
    second = (await alice.send([bob.address], subject="two", body="2\n")).message_id
    assert sorted(n.header.message_id for n in (await bob.check()).new) == sorted(
        [first, second])
    tries: list[float] = []
    real_retrieve = bob.retrieve

    async def retrieve(mid: str, sender: str | None = None) -> RetrieveReport:
        if mid == first:  # a bug, or hostile input nobody foresaw, every time
            tries.append(sim.s.clock.now())
            raise RuntimeError(f"secret {bob.address}")
        return await real_retrieve(mid, sender)

    monkeypatch.setattr(bob, "retrieve", retrieve)
    b = service(sim, bob, interval=1800)
    await run_for(b, 2 * 86400)
    assert b.status.checks >= 60  # ~96: the agent kept running
    assert bob.local.has_message(second) and bob.local.has_pending(first)
    assert 3 <= len(tries) <= 12, len(tries)  # a growing wait, not 96 tries
    assert tries[-1] - tries[-2] > 4 * (tries[1] - tries[0])
    assert b.status.last_error == "retrieve: unexpected RuntimeError"
    assert held_ids(bob.local.root) == set()  # not known to be unreadable: tried again later
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "RuntimeError" in logged and bob.address not in logged and "secret" not in logged


async def _genuine_and_forged(sim: Sim, alice: MailAgent, bob: MailAgent,
                              mallory: MailAgent) -> tuple[str, PendingNotice, PendingNotice]:
    """Alice's message to Bob, and beside its notice one signed as Mallory's reusing its
    Message-ID, body key and digest (as a co-recipient can), written first: it has the
    Message-ID's first notice file, the one a lookup by Message-ID alone finds."""
    mid = (await alice.send([bob.address], subject="contract", body="sign\n")).message_id
    (genuine,) = (await bob.check()).new
    bob.local.remove_pending(mid)
    forged = replace(genuine, header=replace(genuine.header, sender=mallory.identity.cert),
                     entry_id=bytes(32))
    assert bob.local.add_pending(forged) and bob.local.add_pending(genuine)
    assert bob.local.get_pending(mid) == forged
    return mid, genuine, forged


@pytest.mark.threat("T-MAIL-DEDUP")
async def test_a_held_notice_reusing_a_message_id_does_not_hold_the_genuine_one(
        sim: Sim, autojump_clock: MockClock) -> None:
    alice, bob, mallory = await people(sim, "alice", "bob", "mallory")
    mid, _, _ = await _genuine_and_forged(sim, alice, bob, mallory)
    b = service(sim, bob)
    await run_for(b, 3600)
    # Mallory's notice names Alice's body, whose From is Alice: unreadable as hers, held.
    # Old code held by Message-ID: Alice's notice was held with it and never retrieved.
    got = bob.local.get_message(mid)
    assert got is not None and b"From: " + alice.address.encode() in got
    assert [n.header.sender.address for n in bob.pending()] == [mallory.address]
    held = held_mod.load(bob.local.root)
    assert list(held) == [(mid, mallory.address)]
    assert "names another sender" in held[(mid, mallory.address)]  # the reason is kept
    assert b.describe()["held"] == 1
    await bob.discard(mid, mallory.address)
    assert bob.pending() == [] and bob.local.get_message(mid) == got


async def test_a_notice_whose_body_expired_is_no_longer_fetched_but_kept(
        sim: Sim, autojump_clock: MockClock) -> None:
    alice, bob = await people(sim, "alice", "bob")
    alice.ttl = 2 * 86400
    mid = (await alice.send([bob.address], subject="soon gone", body="x\n")).message_id
    (notice,) = (await bob.check()).new
    gone_at = body_gone_at(notice, sim.s.params.clock_skew)
    assert gone_at <= sim.s.clock.now() + 2 * 86400 + sim.s.params.clock_skew
    # No replica serves the body: every try fails as "unavailable" (worth a later try) ...
    counting = CountingFetches(bob.net, sim.s.clock, frozenset({ids.body_key(mid)}))
    bob.net = counting
    b = service(sim, bob, interval=1800)
    await run_for(b, 8 * 86400)
    assert counting.missed and min(counting.missed) < gone_at
    # ... until the body's expiry; after it, not once (old code: about daily, for ever).
    assert max(counting.missed) <= gone_at, [t - gone_at for t in counting.missed]
    assert bob.local.has_pending(mid) and b.describe()["expired"] == 1  # kept for the user
    assert (mid, alice.address) not in b.status.retrieve_waits
    with pytest.raises(UserError, match=r"expired on .*discard it"):
        await bob.retrieve(mid)
    assert await bob.discard(mid) == 0 and not bob.local.has_pending(mid)  # no network
    assert max(counting.missed) <= gone_at
