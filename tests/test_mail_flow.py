"""The mail user agent end to end in simulation (anonmail/mail/ on sim/network.py + store;
the 300-node `sim` of tests/mailsim.py): one message with an attachment to To, Cc and Bcc
recipients, stored once and readable by each, Bcc blind, no plaintext on any storage node and
nothing left after retrieval; attachments of 5 MB (and, slow, 50 MB) through fragments.
"""

from __future__ import annotations

import time

import pytest
import trio
from mailsim import TIMEOUT, Sim, people
from mailsim import sim_fixture as sim_fixture  # the `sim` fixture
from storegrid import R
from trio.testing import MockClock

from anonmail import wire
from anonmail.mail.compose import Attachment
from anonmail.mail.envelope import MailHeader
from anonmail.mail.send import SendReport
from anonmail.records import ids
from anonmail.rng import SeededRng
from anonmail.store.messages import ObjectKind
from anonmail.store.service import StoreService


def raw_db(svc: StoreService) -> bytes:
    """The raw bytes of a node's SQLite database, with the address certificates and inbox
    policies it stores (public by design: they name their address) cut out."""
    conn = svc.db._conn
    raw = bytes(conn.serialize())
    for (blob,) in conn.execute("SELECT blob FROM objects WHERE kind IN (?, ?) AND blob IS NOT "
                                "NULL", (int(ObjectKind.CERT), int(ObjectKind.POLICY))):
        raw = raw.replace(bytes(blob), b"")
    return raw


def blob_at(sim: Sim, key: bytes) -> bytes:
    """The blob one replica holds under `key`."""
    row = sim.svc[min(sim.holders(key))].db.get_object(key)
    assert row is not None and row.blob is not None
    return row.blob


def scan(sim: Sim, needles: list[bytes]) -> list[tuple[str, bytes]]:
    hits: list[tuple[str, bytes]] = []
    for nid, svc in sim.svc.items():
        raw = raw_db(svc)
        hits.extend((ids.short(nid), n) for n in needles if n in raw)
    return hits


# -- the whole mission ----------------------------------------------------------------------------


@pytest.mark.threat("T-MAIL-HEADERS", "T-MAIL-BCC")
async def test_one_body_three_readers_bcc_blind_and_nothing_left(
    sim: Sim, autojump_clock: MockClock
) -> None:
    rng = SeededRng(b"payload")
    attachment = rng.bytes(1_000_000)
    subject = "Quarterly figures, confidential"
    text = "Bob, Carol: the figures are attached. Please keep them to yourselves.\n"
    with trio.fail_after(TIMEOUT):
        alice, bob, carol, dave = await people(sim, "alice", "bob", "carol", "dave")
        before = sim.objects()
        msg = alice.compose([bob.address], [carol.address], [dave.address], subject, text,
                            [Attachment("figures.bin", attachment)])
        head = msg.data.split(b"\r\n\r\n", 1)[0].lower()
        assert b"\nbcc:" not in head and dave.address.encode() not in msg.data
        report = await alice.send_composed(msg)

        # Stored once: r replicas of the body (a descriptor) and of each fragment, whatever
        # the number of recipients; one delete hash per recipient on each.
        assert report.ok and report.body.need == R
        assert len(report.fragments) == 2  # 1 MB in base64 is ~1.37 MB: two fragments
        key = ids.body_key(msg.message_id)
        frag_keys = [f.key for f in report.fragments]
        for k in (key, *frag_keys):
            assert sim.holders(k) == {x.node_id for x in sim.closest(k)}
            for nid in sim.holders(k):
                live, _ = sim.svc[nid].db.get_hashes(k)
                assert len(live) == 3
        assert sim.objects() - before == R * (1 + len(frag_keys))
        per_replica = sum(len(blob_at(sim, k)) for k in (key, *frag_keys))
        assert per_replica == report.stored_bytes
        assert len(msg.data) <= per_replica <= 1.13 * len(msg.data)
        for a in (bob, carol, dave):
            assert len(report.inboxes[a.address].receipts) == R
            assert sim.entries(a.address) == R

        # No storage node holds plaintext: not the body, the subject, an attachment piece,
        # nor any address (certificates, public by design, aside).
        needles = [subject.encode(), text.strip().encode(), attachment[5000:5064],
                   *(a.address.encode() for a in (alice, bob, carol, dave)),
                   msg.message_id.encode()]
        assert scan(sim, needles) == []

        # Each recipient checks (headers opened and verified) and retrieves the exact bytes.
        headers: dict[str, MailHeader] = {}
        for a in (bob, carol, dave):
            got = await a.check()
            assert len(got.new) == 1 and not got.rejected
            h = got.new[0].header
            headers[a.address] = h
            assert h.sender == alice.identity.cert and h.subject == subject
            assert h.to == (bob.address,) and h.cc == (carol.address,)
        assert headers[dave.address].bcc == (dave.address,)
        for a in (bob, carol):  # Bcc stays blind: Dave is in nobody else's header
            assert headers[a.address].bcc == ()
            assert dave.address.encode() not in wire.encode(headers[a.address])
        for a in (bob, carol, dave):
            out = await a.retrieve(msg.message_id)
            assert out.data == msg.data
            assert a.local.get_message(msg.message_id) == msg.data
            assert a.pending() == []
        assert alice.local.sent_keys() and not alice.local.outbox_keys()

        # Afterwards nothing of it remains: bodies, fragments and inbox entries are gone.
        for k in (key, *frag_keys):
            assert sim.holders(k) == set()
        for a in (bob, carol, dave):
            assert sim.entries(a.address) == 0
        assert sim.objects() == before
        assert scan(sim, needles) == []


async def round_trip(sim: Sim, autojump_clock: MockClock, size: int) -> tuple[SendReport, float,
                                                                                 float]:
    """Alice sends Bob an attachment of `size` bytes; returns (report, virtual s, wall s)."""
    rng = SeededRng(b"big")
    blob = rng.bytes(size)
    alice, bob = await people(sim, "alice", "bob")
    t0, w0 = trio.current_time(), time.perf_counter()
    msg = alice.compose([bob.address], subject="big", body="see attachment",
                        attachments=[Attachment("big.bin", blob)])
    report = await alice.send_composed(msg)
    await bob.check()
    out = await bob.retrieve(msg.message_id)
    virtual, wall = trio.current_time() - t0, time.perf_counter() - w0
    assert out.data == msg.data
    assert report.ok and all(len(f.receipts) == R for f in report.fragments)
    for f in report.fragments:
        assert sim.holders(f.key) == set()
    assert sim.holders(ids.body_key(msg.message_id)) == set()
    print(f"\n{size >> 20} MiB attachment: message {len(msg.data)} B, stored per replica "
          f"{report.stored_bytes} B in {len(report.fragments)} fragments, round trip "
          f"{virtual:.1f} virtual s, {wall:.1f} wall s")
    return report, virtual, wall


async def test_5mb_attachment_round_trips_through_fragments(
    sim: Sim, autojump_clock: MockClock
) -> None:
    with trio.fail_after(TIMEOUT):
        report, _, _ = await round_trip(sim, autojump_clock, 5 << 20)
        assert len(report.fragments) == 8


@pytest.mark.slow
async def test_50mb_attachment_round_trips_through_fragments(
    sim: Sim, autojump_clock: MockClock
) -> None:
    with trio.fail_after(TIMEOUT):
        report, _, _ = await round_trip(sim, autojump_clock, 50 << 20)
        assert len(report.fragments) > 60
