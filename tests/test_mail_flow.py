"""The mail user agent end to end in simulation (anonmail/mail/ on sim/network.py + store).

300 nodes (sim/scenario.py, oracle-filled tables, every message encoded and decoded), each with
a StoreService on an in-memory SQLite database, under trio's MockClock with autojump. Agents
run on simulated nodes with their local Maildir in tmp_path. Each test takes `autojump_clock`
itself (pytest-trio picks the clock from the test's own arguments only).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio
from storegrid import R, StoreGrid
from trio.testing import MockClock

from anonmail import crypto, wire
from anonmail.errors import UserError
from anonmail.mail import envelope
from anonmail.mail.check import collect
from anonmail.mail.compose import Attachment, Composed
from anonmail.mail.envelope import MailHeader
from anonmail.mail.identity import AddressIdentity, new_keys
from anonmail.mail.retrieve import fetch_message
from anonmail.mail.send import SendFailed, SendReport
from anonmail.mail.user_agent import MailAgent
from anonmail.records import ids
from anonmail.records.certs import CertificateAuthority
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario
from anonmail.store.client import append_replicated
from anonmail.store.db import ObjectRow, StoreDb
from anonmail.store.handlers import StoreLimits
from anonmail.store.messages import Ack, Append, ObjectKind, Store
from anonmail.store.service import StoreService

N = 300
DAY = 86400
CA = CertificateAuthority(crypto.SigningKey(b"\x5c" * 32))
TRUSTED = frozenset({CA.public})
TIMEOUT = 5 * DAY  # virtual seconds: a deadlock jumps here and fails


@dataclass
class Sim(StoreGrid):
    tmp: Path

    def entries(self, address: str) -> int:
        inbox = ids.inbox_key(address)
        now = self.s.clock.now()
        return sum(svc.db.inbox_usage(inbox, now)[0] for svc in self.svc.values())

    def objects(self) -> int:
        return sum(svc.db.count_objects() for svc in self.svc.values())

    def agent(self, i: int, identity: AddressIdentity, name: str,
              trusted: frozenset[bytes] = TRUSTED) -> MailAgent:
        x = self.node(i)
        return MailAgent(identity, x.net, x.dht, self.tmp / name, self.s.params, self.s.clock,
                         self.s.rng.fork(f"agent-{name}"), trusted_cas=trusted)



@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    s = Scenario(N, seed=11, encode=True)
    await s.build("oracle")
    svc = {}
    for i, x in enumerate(s.nodes):
        svc[x.node_id] = StoreService(x.net, x.dht, x.key, s.params, s.clock,
                                      s.rng.fork(f"store-{i}"), StoreDb(":memory:"),
                                      trusted_cas=TRUSTED)
        x.services.add(svc[x.node_id])
    try:
        yield Sim(s, svc, tmp_path)
    finally:
        for service in svc.values():
            service.db.close()


def anon(name: str, now: float) -> AddressIdentity:
    return AddressIdentity.create_anon(name, SeededRng(b"id-" + name.encode()), now)


def ca_issued(name: str, now: float) -> AddressIdentity:
    sign, seal = new_keys(SeededRng(b"id-" + name.encode()))
    return AddressIdentity.from_ca(sign, seal, CA.issue(f"{name}@example.org", sign.public,
                                                        seal.public, now))


async def people(sim: Sim, *names: str) -> list[MailAgent]:
    """Agents on nodes 0, 1, 2, ...; `alice`-like names are .anon, `bob` is CA-issued. Each
    publishes its certificate."""
    return await people_in(sim, R, *names)


async def people_in(sim: Sim, replicas: int, *names: str) -> list[MailAgent]:
    now = sim.s.clock.now()
    out = []
    for i, name in enumerate(names):
        ident = ca_issued(name, now) if name == "bob" else anon(name, now)
        agent = sim.agent(i, ident, name)
        assert len(await agent.publish_cert()) == replicas
        out.append(agent)
    return out


def raw_db(svc: StoreService) -> bytes:
    """The raw bytes of a node's SQLite database, with the address certificates it stores
    (public by design: they name their address) cut out."""
    conn = svc.db._conn
    raw = bytes(conn.serialize())
    for (blob,) in conn.execute("SELECT blob FROM objects WHERE kind=? AND blob IS NOT NULL",
                                (int(ObjectKind.CERT),)):
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


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text
    return text


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


# -- crash safety of check ------------------------------------------------------------------------


@pytest.mark.threat("T-CHECK-CRASH")
async def test_an_agent_dying_between_read_and_ack_loses_nothing(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    with trio.fail_after(TIMEOUT):
        alice, bob = await people(sim, "alice", "bob")
        sent = [(await alice.send([bob.address], subject=f"no. {i}", body=f"{i}\n")).message_id
                for i in range(2)]
        # Bob's agent READs and saves, then dies before it ACKs: nothing was ACKed.
        first, _ = await collect(bob.net, bob.dht, bob.identity, bob.local, params=s.params,
                                 trusted_cas=TRUSTED, clock=s.clock, rng=SeededRng(5))
        assert sorted(n.header.message_id for n in first.new) == sorted(sent)
        assert sim.entries(bob.address) == 2 * R
        # It restarts (a new agent on the same directory): the entries are read again,
        # recognised, not shown twice, and ACKed now.
        bob = sim.agent(1, bob.identity, "bob")
        again = await bob.check()
        assert again.new == [] and again.duplicates == 2 and again.acked_nodes >= R
        assert sim.entries(bob.address) == 0
        assert sorted(n.header.message_id for n in bob.pending()) == sorted(sent)

        # The ACKs are lost on the way (a network failure): the next check makes up for it.
        def drop_acks(src: Any, dst: Any, msg: Any) -> bool:
            return not isinstance(msg, Ack)

        third = (await alice.send([bob.address], subject="no. 3", body="3\n")).message_id
        s.world.add_policy(drop_acks)
        lost = await bob.check()
        assert [n.header.message_id for n in lost.new] == [third] and lost.acked_nodes == 0
        s.world.policies.remove(drop_acks)
        assert sim.entries(bob.address) == R
        healed = await bob.check()
        assert healed.new == [] and healed.duplicates == 1 and sim.entries(bob.address) == 0

        for m in (*sent, third):
            assert (await bob.retrieve(m)).fetched
        assert len(bob.local.message_keys()) == 3 and bob.pending() == []
        with pytest.raises(UserError, match="already retrieved"):
            await bob.retrieve(sent[0])


async def test_retrieve_after_a_crash_before_delete_deletes_without_refetching(
    sim: Sim, autojump_clock: MockClock
) -> None:
    with trio.fail_after(TIMEOUT):
        alice, bob = await people(sim, "alice", "bob")
        mid = (await alice.send([bob.address], subject="s", body="b\n")).message_id
        await bob.check()
        notice = bob.local.get_pending(mid)
        assert notice is not None
        # What a crash between "saved to the Maildir" and "deleted on the network" leaves.
        data = await fetch_message(bob.net, bob.dht, notice.header, R, 4)
        bob.local.add_message(mid, data)
        key = ids.body_key(mid)
        assert len(sim.holders(key)) == R
        out = await bob.retrieve(mid)
        assert not out.fetched and out.data == data and bob.pending() == []
        assert out.body_deleted_on >= R and sim.holders(key) == set()
        assert bob.local.message_keys() == [out.maildir_key]


# -- forgery ------------------------------------------------------------------------------------


async def append(sim: Sim, by: MailAgent, to: MailAgent, entry: bytes) -> None:
    got = await append_replicated(by.net, by.dht, ids.inbox_key(to.address), entry, DAY, None, R)
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


# -- bad input ------------------------------------------------------------------------------------


async def test_bad_input_gives_one_line_errors_and_loses_nothing(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    with trio.fail_after(TIMEOUT):
        alice, bob = await people(sim, "alice", "bob")
        before = sim.objects()

        # Unknown recipient: refused before anything is stored; kept in the Outbox.
        with pytest.raises(SendFailed) as e:
            await alice.send([bob.address, "nobody@example.org"], subject="s", body="b")
        line = one_line(e.value)
        assert "no certificate found for nobody@example.org" in line and "Outbox" in line
        assert sim.objects() == before and sim.entries(bob.address) == 0
        assert len(alice.local.outbox_keys()) == 1

        # Untrusted CA: an agent that does not trust Bob's CA will not send to him.
        sceptic = sim.agent(0, alice.identity, "alice-sceptic", trusted=frozenset())
        with pytest.raises(SendFailed, match="from a CA you do not trust") as e:
            await sceptic.send([bob.address], subject="s", body="b")
        one_line(e.value)

        # Expired: a stale replica set still serves Carol's certificate after it lapsed.
        now = s.clock.now()
        carol_id = AddressIdentity.create_anon("carol", SeededRng(b"c"), now - 7200, 3600)
        cert_blob = wire.encode(carol_id.cert)
        for x in sim.closest(carol_id.cert.key):
            db = sim.svc[x.node_id].db
            with db.transaction():
                db.put_object(ObjectRow(carol_id.cert.key, int(ObjectKind.CERT), cert_blob,
                                        crypto.hash("blob", cert_blob), int(now) + DAY,
                                        carol_id.cert.issued, False, now), (), ())
        with pytest.raises(SendFailed, match=r"certificate of .* expired on") as e:
            await alice.send([carol_id.address], subject="s", body="b")
        one_line(e.value)
        before = sim.objects()

        # Malformed input, each one line.
        bad: list[Callable[[], Awaitable[Any]]] = [
            lambda: alice.send_message(b"no header separator at all"),
            lambda: alice.send_message(b"From: " + alice.address.encode() + b"\r\nTo: x\r\n\r\n"),
            lambda: alice.send_message(b"From: someone@example.org\r\nTo: " +
                                       bob.address.encode() + b"\r\n\r\nhi\r\n"),
            lambda: alice.send([bob.address], subject="a\r\nBcc: eve@example.org", body="b"),
            lambda: alice.send(["bob@@example.org"], subject="s", body="b"),
            lambda: alice.send([], subject="s", body="b"),
        ]
        for attempt in bad:
            with pytest.raises(UserError) as bad_input:
                await attempt()
            one_line(bad_input.value)
        assert sim.objects() == before

        # A full inbox (quota): delivery to Bob fails with one line; the message stays in the
        # Outbox; its body is not left behind for Bob; once Bob reads, a retry gets through.
        for x in sim.closest(ids.inbox_key(bob.address), 2 * R):
            sim.svc[x.node_id].ctx.limits = StoreLimits(inbox_entries=1)
        await alice.send([bob.address], subject="first", body="1\n")
        with pytest.raises(SendFailed, match="inbox is full") as e:
            await alice.send([bob.address], subject="second", body="2\n")
        one_line(e.value)
        report = e.value.report
        assert report is not None and bob.address in report.failed
        assert sim.holders(ids.body_key(report.message_id)) == set()
        queued = alice.local.outgoing(report.message_id)
        assert queued is not None
        assert len((await bob.check()).new) == 1
        retry = await alice.send_message(queued)
        assert retry.ok and retry.message_id != report.message_id
        assert len((await bob.check()).new) == 1


# -- failures: retries with a fresh node set ------------------------------------------------------


async def test_send_and_retrieve_survive_crashed_replicas(
    sim: Sim, autojump_clock: MockClock
) -> None:
    s = sim.s
    with trio.fail_after(TIMEOUT):
        alice, bob, carol = await people(sim, "alice", "bob", "carol")
        payload = SeededRng(b"crash").bytes(1_500_000)
        msg = alice.compose([bob.address, carol.address], subject="s", body="b\n",
                            attachments=[Attachment("a.bin", payload)])
        key = ids.body_key(msg.message_id)
        inbox = ids.inbox_key(bob.address)
        # Replicas of the body and of Bob's inbox crash before the send (lookups notice),
        # and two more of each die mid-send: they still answer lookups, but their STORE and
        # APPEND go unanswered, so the first round fails there and a fresh set is asked for.
        for x in (*sim.closest(key)[:2], *sim.closest(inbox)[:2]):
            s.world.crash(x.node_id)
        dying = {x.node_id for x in (*sim.closest(key)[:2], *sim.closest(inbox)[:2])}

        def dies_mid_send(src: Any, dst: Any, m: Any) -> bool:
            return not (isinstance(m, Store | Append) and dst.node_id in dying)

        s.world.add_policy(dies_mid_send)
        timeouts = s.world.stats.timeouts
        report = await alice.send_composed(msg)
        s.world.policies.remove(dies_mid_send)
        for nid in dying:
            s.world.crash(nid)
        assert report.ok and s.world.stats.timeouts >= timeouts + 4
        assert {r.node_id for r in report.body.receipts} == {x.node_id for x in sim.closest(key)}
        assert {r.node_id for r in report.inboxes[bob.address].receipts} == {
            x.node_id for x in sim.closest(inbox)}
        assert not dying & {r.node_id for r in report.receipts()}
        # More crash before the recipients read: three replicas of every fragment and of the
        # body. Retrieval falls through to the live ones.
        for k in (key, *(f.key for f in report.fragments)):
            for x in sim.closest(k)[:3]:
                s.world.crash(x.node_id)
        for a in (bob, carol):
            (n,) = (await a.check()).new
            assert (await a.retrieve(n.header.message_id)).data == msg.data
        for k in (key, *(f.key for f in report.fragments)):
            assert sim.holders(k) & {x.node_id for x in s.live()} == set()


async def test_a_network_smaller_than_r_still_delivers(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    """Five nodes cannot give r = 8 receipts: a send asks for as many as there are."""
    s = Scenario(5, seed=3, encode=True)
    await s.build("oracle")
    svc = {}
    for i, x in enumerate(s.nodes):
        svc[x.node_id] = StoreService(x.net, x.dht, x.key, s.params, s.clock,
                                      s.rng.fork(f"store-{i}"), StoreDb(":memory:"),
                                      trusted_cas=TRUSTED)
        x.services.add(svc[x.node_id])
    small = Sim(s, svc, tmp_path)
    try:
        with trio.fail_after(TIMEOUT):
            alice, bob = await people_in(small, 5, "alice", "bob")
            report = await alice.send([bob.address], subject="s", body="b\n",
                                      attachments=[Attachment("a", b"x" * 1_200_000)])
            assert report.ok and report.body.need == 5 and len(report.body.receipts) == 5
            (n,) = (await bob.check()).new
            assert (await bob.retrieve(n.header.message_id)).data.endswith(b"--\r\n")
            assert small.objects() == 2 * 5  # two certificates, nothing else
    finally:
        for service in svc.values():
            service.db.close()
