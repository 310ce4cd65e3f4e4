"""Messages still on the network as the commands show them (commands/read_cmd.py, docs/cli.md):
one row per pending notice, so two senders' notices of one Message-ID are two rows, each
retrieved or discarded by its own sender; held (unreadable) and expired notices marked in
`anonmail inbox` with the reason; `anonmail discard ID` gives one up; `anonmail status` counts
them. Over the CLI entry point, with the network jobs captured (commands/jobs.py `run_job`
replaced), and the two jobs themselves on the simulated mail network (tests/mailsim.py)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from clihome import captured as captured  # fixture
from clihome import home as home  # fixture
from clihome import one_line_error, run
from mailsim import anon, people
from mailsim import sim_fixture as sim_fixture
from storegrid import R
from trio.testing import MockClock

from anonmail.agent import held as held_mod
from anonmail.commands import jobs, node_cmd
from anonmail.errors import UserError
from anonmail.mail.envelope import BodyLayout, MailHeader
from anonmail.mail.maildir import LocalMail, PendingNotice, message_name
from anonmail.mail.notices import notice_key
from anonmail.records import ids

DAY = 86400
MID = "<abcdefghijklmnopqrstuvwxyz234567@anonmail>"
OTHER = "<bcdefghijklmnopqrstuvwxyz2345672@anonmail>"


def notice(sender: str, mid: str, subject: str, *, age: float = 3600,
           expires_in: float = 10 * DAY) -> PendingNotice:
    """A pending notice as check writes it (not verified again when listed)."""
    now = time.time()
    cert = anon(sender, now - age - DAY).cert
    header = MailHeader(cert, "bob@example.org", ("bob@example.org",), (), (), subject,
                        int(now - age), mid, bytes(32), bytes(32), 100, BodyLayout.INLINE, 0,
                        int(now + expires_in), bytes(32), bytes(64))
    return PendingNotice(bytes(32), header, int(now - age), int(now + expires_in))


def listed(capsys: pytest.CaptureFixture[str], home: Path) -> tuple[dict[str, list[str]], str]:
    """`inbox --offline`: each row's words (id, state, date, time, sender, subject...) by
    subject (its last word), and what went to standard error."""
    code, out, err = run(capsys, "inbox", "--offline", "--home", str(home))
    assert code == 0
    return {line.split()[-1]: line.split() for line in out.splitlines()}, err


def test_two_senders_notices_of_one_message_id_are_two_rows_each_read_by_its_sender(
        home: Path, captured: list[tuple[str, dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    local = LocalMail(home / "mail")
    genuine, reused = notice("alice", MID, "contract"), notice("mallory", MID, "hijack")
    assert local.add_pending(genuine) and local.add_pending(reused)
    rows, _ = listed(capsys, home)
    # Old code: one row per Message-ID, the second sender's notice not shown at all.
    assert set(rows) == {"contract", "hijack"}
    assert rows["contract"][0] == message_name(MID)[:8]  # as the retrieved message will be
    assert rows["hijack"][0] == notice_key(MID, reused.header.sender.address)[:8]
    assert rows["hijack"][4] == reused.header.sender.address and rows["hijack"][1] == "new"
    err = one_line_error(run(capsys, "read", rows["hijack"][0], "--home", str(home)))
    assert "could not be retrieved" in err  # the captured job fetched nothing
    assert captured == [("retrieve", {"message_id": MID, "sender": reused.header.sender.address,
                                     "identity given": False})]
    # The Message-ID now names two messages: refused, naming both ids.
    err = one_line_error(run(capsys, "read", MID, "--home", str(home)))
    assert "names 2 messages" in err and rows["hijack"][0] in err
    assert len(captured) == 1


def test_inbox_marks_held_and_expired_and_discard_gives_them_up(
        home: Path, captured: list[tuple[str, dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    local = LocalMail(home / "mail")
    genuine, reused = notice("alice", MID, "contract"), notice("mallory", MID, "hijack")
    old = notice("carol", OTHER, "stale", age=20 * DAY, expires_in=-6 * DAY)
    for n in (genuine, reused, old):
        assert local.add_pending(n)
    reason = f"{MID} names another sender or message id than its signed header"
    held_mod.hold(local.root, MID, reused.header.sender.address, reason)
    rows, err = listed(capsys, home)
    assert [rows[s][1] for s in ("contract", "hijack", "stale")] == ["new", "held", "expired"]
    hijack, stale = rows["hijack"][0], rows["stale"][0]
    assert f"{hijack}: held, not retrieved by itself: {reason}" in err  # the reason kept
    assert f"{stale}: expired: its body left the network on" in err
    assert "`anonmail discard ID`" in err
    # Reading an expired message needs no network to say it cannot be done.
    err = one_line_error(run(capsys, "read", stale, "--home", str(home)))
    assert "expired" in err and "anonmail discard" in err and captured == []

    mallory = reused.header.sender.address
    code, out, _ = run(capsys, "discard", hijack, "--home", str(home))
    assert code == 0 and out.startswith(f"discarded {hijack} (held): {mallory}")
    assert captured == [("discard", {"message_id": MID, "sender": mallory,
                                     "identity given": False})]
    code, out, _ = run(capsys, "discard", stale, "--home", str(home))  # locally: body gone
    assert code == 0 and f"discarded {stale} (expired)" in out and len(captured) == 1
    assert not local.has_pending(OTHER) and local.has_pending(MID, genuine.header.sender.address)
    rows, _ = listed(capsys, home)
    assert "stale" not in rows and "contract" in rows


def test_discard_refuses_what_it_cannot_discard_in_one_line(
        home: Path, captured: list[tuple[str, dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    local = LocalMail(home / "mail")
    local.add_message(OTHER, f"From: alice@x.org\r\nMessage-ID: {OTHER}\r\n"
                             "Subject: here\r\n\r\nbody\r\n".encode())
    assert local.add_pending(notice("alice", MID, "waiting"))
    here = message_name(OTHER)[:8]
    for ident, says in (("1", "not a message id"), ("zzzz", "not a message id"),
                        ("deadbeef", "no message deadbeef"),
                        (here, "is in your Maildir, not waiting on the network")):
        err = one_line_error(run(capsys, "discard", ident, "--home", str(home)))
        assert says in err, err
    assert captured == [] and local.has_pending(MID) and local.has_message(OTHER)


def test_status_counts_held_and_expired_messages(
        home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    agent = {"address": "bob@x.anon", "last_check": None, "last_check_ok": None,
             "next_check": 0.0, "checks": 0, "outbox": 0, "sent": 0, "cert_published": None,
             "cert_republish": None, "last_error": "", "held": 2, "expired": 1}
    reply = {"node_id": "00" * 32, "endpoint": "127.0.0.1:1", "network": "anonmail-test-v1",
             "contacts": 3, "agent": agent, "gateway": {}}
    monkeypatch.setattr(node_cmd, "_ask", lambda home, request: reply)
    code, out, _ = run(capsys, "status", "--home", str(home))
    assert code == 0
    assert "held      2 unreadable, 1 expired message(s): `anonmail inbox` marks them" in out
    agent.update(held=0, expired=0)
    code, out, _ = run(capsys, "status", "--home", str(home))
    assert "held      0 unreadable, 0 expired message(s)\n" in out


async def test_the_jobs_hold_an_unreadable_notice_and_discard_one_notice(
        sim: Any, autojump_clock: MockClock) -> None:
    """`retrieve` holds what it finds unreadable (as the running agent does); `discard` drops
    one sender's notice and our right to the body, releases its hold and checks nothing."""
    alice, bob, mallory = await people(sim, "alice", "bob", "mallory")
    mid = (await alice.send([bob.address], subject="s", body="b\n")).message_id
    (genuine,) = (await bob.check()).new
    reused = replace(genuine, entry_id=bytes(32), header=replace(  # Bob's secret unknown
        genuine.header, sender=mallory.identity.cert, delete_secret=bytes(32)))
    assert bob.local.add_pending(reused)
    params = {"message_id": mid, "sender": mallory.address, "anonymous": False}
    with pytest.raises(UserError, match="names another sender"):
        await jobs.execute(bob, "retrieve", params)
    assert list(held_mod.load(bob.local.root)) == [(mid, mallory.address)]
    assert len(sim.holders(ids.body_key(mid))) == R

    checks = 0
    real_check = bob.check

    async def counting_check(*, flush: bool = True) -> Any:
        nonlocal checks
        checks += 1
        return await real_check(flush=flush)

    bob.check = counting_check  # type: ignore[method-assign]
    out = await jobs.execute(bob, "discard", params)
    assert len(out.err) == 1 and out.err[0].startswith("your right to its body was dropped")
    assert held_mod.load(bob.local.root) == {} and checks == 0
    assert bob.pending() == [genuine]  # Alice's notice stays, and so does her body
    assert len(sim.holders(ids.body_key(mid))) == R
    got = await jobs.execute(bob, "retrieve", {"message_id": mid, "sender": alice.address})
    assert bob.local.has_message(mid) and bob.pending() == []
    # A job's usual after-work (the certificate was never published from this mail
    # directory, so it is due) is what discard alone skips.
    assert got.err == ["republished your address certificate"]
