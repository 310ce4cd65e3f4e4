"""Double spends (docs/permits.md "Spent tokens"): a cheating sender that spends one token on a
different entry at each inbox replica gets one entry per replica, and the owner, who reads all
replicas, sees the token spent twice: the entry read first stands, the others are dropped, and
the double spend is counted against whom the token was issued (`anonmail contacts` says so).
Nothing is blocked by it: only the owner blocks. Also: a permit book written before these
records existed is read, not refused."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from mailsim import TIMEOUT, TRUSTED, Sim, people
from mailsim import sim_fixture as sim_fixture  # the `sim` fixture
from procnet import PASSPHRASE
from trio.testing import MockClock

from anonmail import cli, wire
from anonmail.crypto import SigningKey
from anonmail.mail import send as send_mod
from anonmail.mail.envelope import Extras
from anonmail.mail.maildir import LocalMail
from anonmail.mail.permits import Ticket
from anonmail.net.base import Network
from anonmail.permit.book import BookStateV1, CorrespondentV1, PermitBook, Status
from anonmail.permit.records import HeldToken, PolicyMode
from anonmail.records import ids
from anonmail.records.certs import NodeCert
from anonmail.rng import SeededRng
from anonmail.store.client import Placement, closest, request_all
from anonmail.store.messages import Append, Appended, AppendProof

DROPPED = "spends a permit already spent (dropped)"


class DoubleSpender:
    """A cheating client (send.py's `Tickets`): every entry spends `token`, and goes only to
    `nodes` (so each replica sees the token once)."""

    def __init__(self, net: Network, token: HeldToken, nodes: Sequence[NodeCert]) -> None:
        self.net = net
        self.token = token
        self.nodes = nodes

    def ticket(self, address: str, *, stamp_bits: int | None = None,
               grant: int = 0) -> Ticket:
        return Ticket(ids.inbox_key(address), self.token, 0,
                      Extras((), 15, self.token.token.id))

    async def place(self, address: str, inbox: bytes, entry: bytes, ttl: int,
                    proof: AppendProof, rounds: int = 4, *, dht: object = None) -> Placement:
        out = Placement()
        for o in await request_all(self.net, self.nodes, Append(inbox, entry, ttl, proof)):
            out.tried[o.item.node_id] = o.item
            if isinstance(o.value, Appended):
                out.receipts_by_node[o.item.node_id] = o.value.receipt
        return out


@pytest.mark.threat("T-PERMIT-REPLAY")
async def test_a_token_spent_on_two_entries_is_dropped_and_counted(
        sim: Sim, autojump_clock: MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        alice, bob = await people(sim, "alice", "bob")  # contacts: alice holds bob's tokens
        token = alice.permits.book.take_token(bob.address, sim.s.clock.now())
        assert token is not None
        replicas = await closest(alice.dht, ids.inbox_key(bob.address), sim.s.params.replication)
        half = len(replicas) // 2
        sent = []
        for i, nodes in enumerate((replicas[:half], replicas[half:])):
            msg = alice.compose([bob.address], subject=f"copy {i}", body=f"copy {i}\n")
            report = await send_mod.send(
                alice.net, alice.dht, alice.identity, msg, params=sim.s.params,
                trusted_cas=TRUSTED, clock=sim.s.clock, rng=sim.s.rng, need=1,
                tickets=DoubleSpender(alice.net, token, nodes))
            assert report.delivered == [bob.address]  # each half took its own entry
            sent.append(msg.message_id)

        got = await bob.check()
        assert len(got.new) == 1 and got.new[0].header.message_id in sent
        assert got.rejected == Counter({DROPPED: 1})
        book = bob.permits.book
        assert book.get(alice.address).double_spent == 1
        assert book.status(alice.address) is Status.CONTACT  # said, never acted on
        # Both entries were ACKed: nothing comes back, nothing is counted twice.
        again = await bob.check()
        assert again.new == [] and not again.rejected and book.get(alice.address).double_spent == 1
        # Honest mail from Alice still arrives.
        assert (await alice.send([bob.address], subject="honest", body="hi\n")).delivered
        assert len((await bob.check()).new) == 1
        assert book.get(alice.address).double_spent == 1


def test_the_book_counts_against_whom_the_token_was_issued(tmp_path: Path) -> None:
    rng = SeededRng(b"book")
    sign = SigningKey(b"\x01" * 32)
    now = 1_800_000_000.0
    path = tmp_path / "permits.cbor"
    book = PermitBook.load(path, 8)
    book.set_status("carol@example.org", Status.ALLOWED)
    (given,) = book.issue("carol@example.org", sign, "bob@example.org", 1, now, rng)
    tid = given.token.id
    e1, e2 = b"\x11" * 32, b"\x22" * 32
    # Mallory spends Carol's token (passed on, or stolen): recorded against Carol.
    assert book.note_spent("mallory@example.org", tid, e1, now) is None
    assert book.get("carol@example.org").issued == ()  # spent: not revoked by a block
    assert book.note_spent("mallory@example.org", tid, e1, now) is None  # the same entry again
    assert book.get("carol@example.org").double_spent == 0
    assert book.note_spent("carol@example.org", tid, e2, now) == "carol@example.org"
    assert book.get("carol@example.org").double_spent == 1
    assert book.get("mallory@example.org").double_spent == 0
    assert book.note_spent("carol@example.org", b"\x33" * 32, e2, now) is None  # not ours
    # The record survives a reload (its index is rebuilt) until the token lapses.
    book.save()
    again = PermitBook.load(path, 8)
    assert again.note_spent("carol@example.org", tid, b"\x44" * 32, now) == "carol@example.org"
    # Once the token lapses (no replica takes it) its record goes with the next spend.
    later = given.token.expires + 1
    (fresh,) = again.issue("carol@example.org", sign, "bob@example.org", 1, later, rng)
    assert again.note_spent("carol@example.org", fresh.token.id, e1, later) is None
    assert [x.id for x in again.get("carol@example.org").spent] == [fresh.token.id]
    assert again.note_spent("carol@example.org", tid, b"\x55" * 32, later) is None


def test_a_book_of_the_first_layout_is_read(tmp_path: Path) -> None:
    path = tmp_path / "permits.cbor"
    old = BookStateV1(3, PolicyMode.PERMITS, 8, (), (
        CorrespondentV1("bob@example.org", Status.CONTACT, (), (), 7, None, None),), 3)
    path.write_bytes(wire.encode(old))
    book = PermitBook.load(path, 8)
    bob = book.get("bob@example.org")
    assert (book.version, bob.status, bob.supply, bob.asked, bob.double_spent) == (
        3, Status.CONTACT, 7, 0, 0)
    book.save()
    assert PermitBook.load(path, 8).status("bob@example.org") is Status.CONTACT


def test_contacts_shows_double_spent_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ANONMAIL_PASSPHRASE", PASSPHRASE)
    home = tmp_path / "bob"
    assert cli.main(["init", "--home", str(home), "--name", "bob", "--testnet", "--offline",
                     "--fast-kdf"]) == 0
    LocalMail(home / "mail")
    book = PermitBook.load(home / "mail" / "permits.cbor", 8)
    book.set_status("alice@example.org", Status.ALLOWED)
    book.set_status("carol@example.org", Status.CONTACT)
    book.people["alice@example.org"] = replace(book.get("alice@example.org"), double_spent=2)
    book.save()
    capsys.readouterr()
    assert cli.main(["contacts", "--home", str(home)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "allowed  alice@example.org  (you hold 0 of their permits; they hold about 0 of yours; "
        "double-spent tokens: 2)",
        "contact  carol@example.org  (you hold 0 of their permits; they hold about 0 of yours)"]
