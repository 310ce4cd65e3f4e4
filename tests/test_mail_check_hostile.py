"""Check against hostile input: a co-recipient reusing another sender's Message-ID, an inbox
replica flooding the reader with junk or inflated expiries, and a replica replaying an entry
after the user deleted its message (mail/check.py, mail/maildir.py, store/owner_client.py).

Every test runs on tests/mailsim.py (300 simulated nodes, MockClock, seeded) with one inbox
replica replaced by an adversary service (net/services.py `add(..., replace=True)`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest
import trio
from mailsim import DAY, TIMEOUT, TRUSTED, Sim, people
from mailsim import sim_fixture as sim_fixture
from storegrid import R
from trio.testing import MockClock

from anonmail.mail import check as check_mod
from anonmail.mail import envelope
from anonmail.mail.maildir import PendingNotice
from anonmail.mail.retrieve import UnreadableMessage
from anonmail.mail.user_agent import MailAgent
from anonmail.records import ids
from anonmail.rng import SeededRng
from anonmail.store import messages as sm
from anonmail.store.client import append_replicated
from anonmail.store.context import StoreLimits

# The inbox quota every honest replica enforces (store/budget.py), and the longest TTL.
INBOX_ENTRIES, INBOX_BYTES = StoreLimits().inbox_entries, StoreLimits().inbox_bytes
MAX_TTL = StoreLimits().max_ttl

# -- A: a Message-ID reused by another sender ------------------------------------------------------


async def _hijack(sim: Sim, mallory: MailAgent, bob: MailAgent, seen: PendingNotice) -> None:
    """Mallory signs, as herself, a header to Bob carrying the Message-ID (and body key and
    digest) of a message she was Cc'd on, ground so that its entry id sorts first."""
    evil = envelope.sign_header(replace(
        seen.header, sender=mallory.identity.cert, recipient=bob.address, bcc=(),
        date=int(sim.s.clock.now()), delete_secret=bytes(32), signature=bytes(64)),
        mallory.identity.sign)
    rng, inbox = SeededRng(b"grind"), ids.inbox_key(bob.address)
    while True:
        entry = envelope.seal_header(evil, bob.identity.seal.public, inbox, rng)
        if sm.entry_id(entry)[0] == 0:
            break
    proof = await mallory.permits.ticket(bob.address).prove(entry, sim.s.clock.now(),
                                                            sim.s.rng)
    got = await append_replicated(mallory.net, mallory.dht, inbox, entry, DAY, proof, R)
    assert len(got.receipts) == R


@pytest.mark.threat("T-MAIL-DEDUP")
async def test_a_reused_message_id_does_not_hide_the_genuine_message(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        alice, bob, mallory = await people(sim, "alice", "bob", "mallory")
        sent = await alice.send([bob.address], cc=[mallory.address], subject="contract",
                                body="sign\n")
        mid = sent.message_id
        (seen_by_m,) = (await mallory.check()).new
        await _hijack(sim, mallory, bob, seen_by_m)

        rep = await bob.check()
        # Both notices are kept, side by side; neither entry is a duplicate of the other.
        assert sorted(n.header.sender.address for n in rep.new) == sorted(
            [alice.address, mallory.address])
        assert rep.duplicates == 0
        assert sim.entries(bob.address) == 0  # both ACKed: both are on Bob's disk
        assert {n.header.sender.address for n in bob.pending()} == {alice.address,
                                                                    mallory.address}
        assert bob.local.get_pending(mid, alice.address) is not None
        assert bob.local.get_pending(mid, mallory.address) is not None

        # Taken in the replicas' order, not the ground entry id: Alice's is the first notice,
        # the one a lookup by Message-ID alone finds, so retrieving by Message-ID gets it.
        got = await bob.retrieve(mid)
        assert got.fetched and bob.local.has_message(mid)
        assert b"From: " + alice.address.encode() in got.data
        # Mallory's notice is left; it names Alice's body, so it can never be retrieved as hers.
        left = bob.pending()
        assert [n.header.sender.address for n in left] == [mallory.address]
        await bob.discard(mid)
        assert bob.pending() == []
        assert bob.local.get_message(mid) == got.data  # Alice's message stays


@pytest.mark.threat("T-MAIL-DEDUP")
async def test_a_notices_are_kept_per_sender_whatever_came_first(
        sim: Sim, autojump_clock: MockClock) -> None:
    """LocalMail directly: Mallory's notice written first takes the Message-ID's first file;
    Alice's goes beside it; each is found, re-added (a crash and re-check) and removed by
    (Message-ID, sender) without touching the other."""
    with trio.fail_after(TIMEOUT):
        alice, bob, mallory = await people(sim, "alice", "bob", "mallory")
        await alice.send([bob.address], cc=[mallory.address], subject="s", body="b\n")
        (genuine,) = (await bob.check()).new
        bob.local.remove_pending(genuine.header.message_id)
        assert bob.pending() == []
        mid = genuine.header.message_id
        forged = replace(genuine, header=replace(genuine.header,
                                                 sender=mallory.identity.cert),
                         entry_id=bytes(32))
        local = bob.local
        assert local.add_pending(forged) and local.add_pending(genuine)
        assert not local.add_pending(genuine) and not local.add_pending(forged)
        assert local.get_pending(mid) == forged  # the first file: written first
        assert local.get_pending(mid, alice.address) == genuine
        assert local.has_pending(mid, mallory.address) and len(local.pending()) == 2
        local.remove_pending(mid, alice.address)
        assert local.pending() == [forged] and not local.has_pending(mid, alice.address)
        assert local.add_pending(genuine)  # the first file is Mallory's: beside it again
        local.remove_pending(mid)  # the first file (Mallory's) ...
        assert local.get_pending(mid) == genuine  # ... and a lookup by id finds the other
        local.remove_pending(mid)
        assert local.pending() == [] and local.get_pending(mid) is None


@pytest.mark.threat("T-MAIL-DEDUP")
async def test_retrieve_and_discard_name_the_notice_by_its_sender(
        sim: Sim, autojump_clock: MockClock) -> None:
    """With Mallory's reused notice in the Message-ID's first file, Alice's is still
    retrieved by naming her, and Mallory's discarded by naming her, each leaving the other."""
    with trio.fail_after(TIMEOUT):
        alice, bob, mallory = await people(sim, "alice", "bob", "mallory")
        sent = await alice.send([bob.address], cc=[mallory.address], subject="s", body="b\n")
        mid = sent.message_id
        (genuine,) = (await bob.check()).new
        bob.local.remove_pending(mid)
        forged = replace(genuine, header=replace(genuine.header, sender=mallory.identity.cert),
                         entry_id=bytes(32))
        assert bob.local.add_pending(forged) and bob.local.add_pending(genuine)
        got = await bob.retrieve(mid, alice.address)
        assert got.fetched and b"From: " + alice.address.encode() in got.data
        assert bob.pending() == [forged]
        await bob.discard(mid, mallory.address)
        assert bob.pending() == [] and bob.local.get_message(mid) == got.data


@pytest.mark.threat("T-MAIL-DEDUP")
async def test_another_senders_maildir_copy_does_not_spend_the_genuine_notice(
        sim: Sim, autojump_clock: MockClock) -> None:
    """The Maildir already holds a message under the Message-ID, but from Mallory (hers,
    reusing it): retrieving Alice's notice must neither take that copy for Alice's message nor
    drop Alice's right to her body, which would then never be saved."""
    with trio.fail_after(TIMEOUT):
        alice, bob, mallory = await people(sim, "alice", "bob", "mallory")
        sent = await alice.send([bob.address], subject="contract", body="sign\n")
        mid = sent.message_id
        (notice,) = (await bob.check()).new
        theirs = mallory.compose([bob.address], subject="contract", body="x\n").data
        theirs = theirs.replace(theirs.split(b"Message-ID: ")[1].split(b"\r\n")[0],
                                mid.encode())
        bob.local.add_message(mid, theirs)
        key = ids.body_key(mid)
        with pytest.raises(UnreadableMessage, match="another message under this Message-ID"):
            await bob.retrieve(mid)  # old code: "retrieved" from the copy, Alice's right dropped
        assert len(sim.holders(key)) == R  # Alice's body and Bob's right to it stand
        assert bob.local.get_pending(mid) == notice and bob.local.get_message(mid) == theirs


# -- B: a replica flooding the reader --------------------------------------------------------------


class Flooder:
    """An inbox replica answering READ of `inbox` with `pages` pages of `per_page` junk
    entries, each of `size` bytes, every one claiming to live for ever; other requests go to
    the honest service. Honest entries, if `honest`, come first."""

    def __init__(self, service: Any, inbox: bytes, tag: bytes, pages: int,
                 per_page: int = sm.MAX_PAGE, size: int = 16, honest: bool = False) -> None:
        self.service, self.inbox, self.tag, self.reads = service, inbox, tag, 0
        self.pages, self.per_page, self.size, self.honest = pages, per_page, size, honest

    @property
    def requests(self) -> Any:
        return self.service.requests

    def _page(self, n: int) -> list[bytes]:
        return [(self.tag + n.to_bytes(4, "big") + i.to_bytes(4, "big")).ljust(self.size, b"j")
                for i in range(self.per_page)]

    async def handle(self, peer: Any, msg: Any) -> Any:
        if not isinstance(msg, sm.Read) or msg.inbox != self.inbox:
            return await self.service.handle(peer, msg)
        self.reads += 1
        page = msg.after
        junk = self._page(page)
        real = await self.service.handle(peer, msg) if self.honest and page == 0 else None
        more = page + 1 < self.pages
        if msg.brief:
            ids_ = tuple(sm.entry_id(e) for e in junk)
            return sm.EntryIds((*real.ids, *ids_) if real else ids_, page + 1, more)
        entries = tuple(sm.InboxEntry(e, 2**64 - 1) for e in junk)
        return sm.Entries((*real.entries, *entries) if real else entries, page + 1, more)


def _seen(agent: MailAgent) -> list[int]:
    root = agent.local.root / "seen"
    return [int((root / f).read_bytes()) for f in os.listdir(root) if not f.endswith(".tmp")]


@pytest.mark.threat("T-INBOX-FLOOD")
async def test_b_a_replica_over_the_inbox_quota_is_failed_and_leaves_nothing(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        alice, bob = await people(sim, "alice", "bob")
        inbox = ids.inbox_key(bob.address)
        evil = sim.closest(inbox)[3]  # one of the r replicas, read briefly
        honest = sim.svc[evil.node_id]
        sent = await alice.send([bob.address], subject="hi", body="x\n")
        for rnd in range(2):
            flood = Flooder(honest, inbox, b"round%d" % rnd, pages=64)  # 65,536 entries
            evil.services.add(flood, replace=True)
            rep = await bob.check()
            assert flood.reads == 1  # the first page is already over the quota: no paging
            assert rep.replicas_failed == 1 and rep.replicas_read == R - 1
            assert sum(rep.rejected.values()) == 0  # nothing of its answer is used
        # Alice's mail got through; the only seen record is hers, bounded.
        assert bob.local.has_pending(sent.message_id)
        (until,) = _seen(bob)
        assert until <= sim.s.clock.now() + check_mod.MAX_AGE + 2 * sim.s.params.clock_skew

        # Large entries from the replica read whole: the byte quota trips (after 8 MiB, 16
        # pages of 512 KiB) before the entry count does, and paging stops there.
        evil.services.add(honest, replace=True)
        whole = sim.closest(inbox)[0]
        size, per_page = sm.MAX_ENTRY, 8  # 512 KiB a page, as an honest node's page
        flood = Flooder(sim.svc[whole.node_id], inbox, b"big", pages=64, per_page=per_page,
                        size=size)
        whole.services.add(flood, replace=True)
        rep = await bob.check()
        assert rep.replicas_failed == 1 and sum(rep.rejected.values()) == 0
        assert flood.reads == INBOX_BYTES // (per_page * size) + 1 < 64
        assert len(_seen(bob)) == 1


@pytest.mark.threat("T-INBOX-FLOOD")
async def test_b_junk_under_the_quota_leaves_no_seen_record_and_expiries_are_capped(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        alice, bob = await people(sim, "alice", "bob")
        inbox = ids.inbox_key(bob.address)
        evil = sim.closest(inbox)[0]
        honest = sim.svc[evil.node_id]
        # A record left by an earlier version that believed a replica's expiry: pruned.
        (bob.local.root / "seen" / (b"\x01" * 32).hex()).write_bytes(b"%d" % (2**64 - 1))
        await alice.send([bob.address], subject="hi", body="x\n")
        flood = Flooder(honest, inbox, b"junk", pages=1, per_page=INBOX_ENTRIES - 10,
                        honest=True)
        evil.services.add(flood, replace=True)
        for rnd in range(2):
            rep = await bob.check()
            assert rep.replicas_failed == 0 and len(rep.new) == 1 - rnd
            assert rep.rejected == {"unreadable (not sealed to us, or damaged)":
                                    INBOX_ENTRIES - 10}
            assert len(rep.to_ack) == INBOX_ENTRIES - 10 + 1 - rnd  # junk ACKed (Alice's once)
        # One seen record: Alice's entry, which the replica claimed lives for ever; the old one
        # with the same claim is gone.
        (until,) = _seen(bob)
        now = sim.s.clock.now()
        assert now + check_mod.MAX_AGE - DAY <= until <= (
            now + max(MAX_TTL, check_mod.MAX_AGE) + 2 * sim.s.params.clock_skew)


# -- C: a replica replaying an entry ---------------------------------------------------------------


class Replayer:
    """An inbox replica that adds `old` entries (kept from earlier) to its first page of
    `inbox`."""

    def __init__(self, service: Any, inbox: bytes, old: list[bytes], now: Any) -> None:
        self.service, self.inbox, self.old, self.now = service, inbox, old, now

    @property
    def requests(self) -> Any:
        return self.service.requests

    async def handle(self, peer: Any, msg: Any) -> Any:
        reply = await self.service.handle(peer, msg)
        if isinstance(msg, sm.Read) and msg.inbox == self.inbox and msg.after == 0:
            if msg.brief and isinstance(reply, sm.EntryIds):
                return sm.EntryIds(reply.ids + tuple(sm.entry_id(e) for e in self.old),
                                   reply.next, reply.more)
            if isinstance(reply, sm.Entries):
                extra = tuple(sm.InboxEntry(e, int(self.now()) + DAY) for e in self.old)
                return sm.Entries(reply.entries + extra, reply.next, reply.more)
        return reply


@pytest.mark.threat("T-MAIL-DEDUP")
async def test_c_a_replayed_entry_does_not_bring_back_a_deleted_message(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT * 4):
        alice, bob = await people(sim, "alice", "bob")
        inbox = ids.inbox_key(bob.address)
        evil = sim.closest(inbox)[2]
        sent = await alice.send([bob.address], subject="once", body="x\n")
        rows, _ = sim.svc[evil.node_id].db.read_entries(inbox, 0, sim.s.clock.now(), 1 << 20,
                                                        100)
        old = [r.entry for r in rows]
        assert old
        (notice,) = (await bob.check()).new
        await bob.retrieve(sent.message_id)
        for sub in ("new", "cur"):  # the user's POP3 client downloads and deletes it
            for f in os.listdir(bob.local.root / "Maildir" / sub):
                os.unlink(bob.local.root / "Maildir" / sub / f)

        # Day 15: past the entry's own expiry (14 days), inside the 30 days a header verifies.
        await trio.sleep(15 * DAY)
        await alice.publish_cert()
        await bob.publish_cert()
        await bob.check()  # an ordinary check, which prunes what expired
        evil.services.add(Replayer(sim.svc[evil.node_id], inbox, old, sim.s.clock.now),
                          replace=True)
        rep = await bob.check()
        assert rep.new == [] and rep.duplicates == len(old)
        assert bob.pending() == []

        # The seen record lasts exactly as long as the header verifies: pruned after `until`,
        # when verify_header refuses the date as too old (so a later replay is rejected).
        (until,) = _seen(bob)
        header, skew = notice.header, sim.s.params.clock_skew
        assert until == header.date + check_mod.MAX_AGE + skew
        envelope.verify_header(header, bob.address, TRUSTED, until, skew, check_mod.MAX_AGE)
        with pytest.raises(envelope.ForgedHeader, match="too old"):
            envelope.verify_header(header, bob.address, TRUSTED, until + 1, skew,
                                   check_mod.MAX_AGE)
        assert bob.local.prune_seen(until) == 0 and bob.local.prune_seen(until + 1) == 1
