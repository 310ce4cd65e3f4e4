"""Mail end to end over real TCP: node processes on 127.0.0.1, the `anonmail` command line as a
user runs it. Alice sends one message with a 1 MB attachment to Bob and Carol; both read it
byte-identical to what was sent; the body is stored once per replica, not once per recipient;
after both have read it, nothing of it remains on any node.
"""

from __future__ import annotations

import email
import email.policy
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from procnet import PUZZLE_BITS, LocalNet, anonmail, local_net

from anonmail.agent.session import AgentConfig, session
from anonmail.clock import SystemClock
from anonmail.mail.identity import AddressIdentity
from anonmail.node.process import Node
from anonmail.paths import Home
from anonmail.records import ids
from anonmail.records import params as netparams
from anonmail.records.certs import Endpoint
from anonmail.rng import SeededRng, SystemRng
from anonmail.store.messages import ObjectKind

N_NODES = 5
ATTACHMENT = 1_000_000


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNet]:
    with local_net(tmp_path, N_NODES) as t:
        yield t


def body_bytes(home: Path) -> int:
    """Ciphertext bytes of message bodies and fragments in a node's store database."""
    with sqlite3.connect(f"file:{Home(home).store}?mode=ro", uri=True) as db:
        (size,) = db.execute("SELECT COALESCE(SUM(LENGTH(blob)), 0) FROM objects "
                             "WHERE kind IN (?, ?)",
                             (int(ObjectKind.BODY), int(ObjectKind.FRAGMENT))).fetchone()
        return int(size)


def inbox_entries(home: Path) -> int:
    with sqlite3.connect(f"file:{Home(home).store}?mode=ro", uri=True) as db:
        (n,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
        return int(n)


def database_bytes(home: Path) -> bytes:
    """The raw database files (main and write-ahead log), for a plaintext scan."""
    store = Home(home).store
    return b"".join(p.read_bytes() for p in (store, store.with_name(store.name + "-wal"))
                    if p.exists())


def user(t: LocalNet, root: Path, name: str) -> tuple[Path, str]:
    home = root / name
    r = anonmail("init", "--home", str(home), "--name", name, "--testnet", "--puzzle-bits",
                 PUZZLE_BITS, "--bootstrap", t.bootstrap, "--fast-kdf")
    assert r.returncode == 0, r.stderr
    assert "published your address certificate" in r.stdout
    address = anonmail("address", "--home", str(home)).stdout.splitlines()[0]
    assert address.startswith(f"{name}@") and address.endswith(".anon")
    return home, address


def message_id_shown(listing: str, subject: str) -> str:
    """The stable id `anonmail inbox` shows for the message with `subject`."""
    (line,) = [line for line in listing.splitlines() if line.endswith(subject)]
    return line.split()[0]


def test_alice_mails_bob_and_carol_a_megabyte(net: LocalNet, tmp_path: Path) -> None:
    alice, alice_addr = user(net, tmp_path, "alice")
    bob, bob_addr = user(net, tmp_path, "bob")
    carol, carol_addr = user(net, tmp_path, "carol")
    # Alice checks Bob's key before she writes: the fingerprint he would read to her
    r = anonmail("address", "--verify", bob_addr, "--home", str(alice), timeout=120)
    assert r.returncode == 0, r.stderr
    bob_fingerprint = anonmail("address", "--home", str(bob)).stdout.splitlines()[1]
    assert r.stdout.splitlines()[:2] == [bob_addr, bob_fingerprint], r.stdout

    attachment = SeededRng(5).bytes(ATTACHMENT)
    (tmp_path / "report.bin").write_bytes(attachment)
    (tmp_path / "body.txt").write_text("Figures attached.\n")
    r = anonmail("send", "--home", str(alice), "--to", bob_addr, "--cc", carol_addr,
                 "--subject", "Quarterly figures", "--attach", str(tmp_path / "report.bin"),
                 str(tmp_path / "body.txt"), timeout=120)
    assert r.returncode == 0, r.stderr
    # A first message: Bob and Carol have not allowed Alice yet. She asks them (an RTS each);
    # the message waits in her Outbox.
    assert r.stdout.count("asked for permission to write") == 2, r.stdout
    # two RTS, in their request inboxes; nothing in their inboxes
    assert sum(inbox_entries(h) for h in net.homes) == 2 * N_NODES
    r = anonmail("outbox", "--home", str(alice))
    assert r.returncode == 0 and f"{bob_addr}: asked for permission" in r.stdout, r.stdout
    for home in (bob, carol):  # each reviews the request and allows Alice
        r = anonmail("requests", "--home", str(home), timeout=120)
        assert r.returncode == 0, r.stderr
        assert alice_addr in r.stdout and "Quarterly figures" in r.stdout, r.stdout
        r = anonmail("allow", alice_addr, "--home", str(home), timeout=120)
        assert r.returncode == 0, r.stderr
        assert "may now write to you" in r.stdout
    # Alice runs any command that checks: the grants are seen, the message goes out by itself.
    r = anonmail("inbox", "--home", str(alice), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "from your Outbox" in r.stderr and bob_addr in r.stderr and carol_addr in r.stderr
    assert "empty" in anonmail("outbox", "--home", str(alice)).stdout

    sent = (alice / "mail" / "Maildir" / ".Sent" / "new")
    (sent_file,) = sent.iterdir()
    sent_bytes = sent_file.read_bytes()
    # One body for two recipients: with r = 8 > 5 nodes every node is a replica, and each holds
    # the ciphertext once (Padme padding adds under 5%), not once per recipient.
    per_node = [body_bytes(h) for h in net.homes]
    assert all(len(sent_bytes) <= b <= 1.05 * len(sent_bytes) for b in per_node), per_node
    assert sum(inbox_entries(h) for h in net.homes) == 2 * N_NODES  # a header per recipient

    for home in (bob, carol):
        r = anonmail("inbox", "--home", str(home), timeout=120)
        assert r.returncode == 0, r.stderr
        assert "Quarterly figures" in r.stdout
        ident = message_id_shown(r.stdout, "Quarterly figures")
        r = anonmail("read", ident, "--raw", "--home", str(home), timeout=120)
        assert r.returncode == 0, r.stderr
        got = (home / "mail" / "Maildir" / "cur")  # read: in cur/, with the Seen flag
        (got_file,) = got.iterdir()
        assert got_file.name.endswith(":2,S") and got_file.read_bytes() == sent_bytes
        msg = email.message_from_bytes(got_file.read_bytes(), policy=email.policy.default)
        (part,) = list(msg.iter_attachments())
        assert part.get_payload(decode=True) == attachment

    # Both have read it: no body, fragment or inbox entry is left on any node.
    assert [body_bytes(h) for h in net.homes] == [0] * N_NODES
    assert [inbox_entries(h) for h in net.homes] == [0] * N_NODES

    # No node's database or debug log holds the subject, the text, a piece of the attachment
    # or any address (address certificates, public by design, aside: they are stored as CERTs).
    needles = [b"Quarterly figures", b"Figures attached", attachment[4000:4064],
               bob_addr.encode(), carol_addr.encode(), alice_addr.encode()]
    net.close()
    for i, home in enumerate(net.homes):
        log = net.output(i).read_bytes()
        assert log.count(b"\n") > 0, "the nodes logged nothing: the scan would prove nothing"
        assert [n for n in needles if n in log] == []
        assert [n for n in needles[:3] if n in database_bytes(home)] == []


@pytest.mark.slow
def test_fifty_megabytes_round_trip_through_fragments(net: LocalNet, tmp_path: Path) -> None:
    alice, _ = user(net, tmp_path, "alice")
    bob, bob_addr = user(net, tmp_path, "bob")
    attachment = SeededRng(50).bytes(50_000_000)
    (tmp_path / "big.bin").write_bytes(attachment)
    (tmp_path / "body.txt").write_text("The archive.\n")
    r = anonmail("send", "--home", str(alice), "--to", bob_addr, "--subject", "archive",
                 "--attach", str(tmp_path / "big.bin"), str(tmp_path / "body.txt"), timeout=600)
    assert r.returncode == 0, r.stderr
    r = anonmail("inbox", "--home", str(bob), timeout=600)
    assert r.returncode == 0, r.stderr
    r = anonmail("read", message_id_shown(r.stdout, "archive"), "--home", str(bob), timeout=600)
    assert r.returncode == 0, r.stderr
    (got_file,) = (bob / "mail" / "Maildir" / "cur").iterdir()
    (sent_file,) = (alice / "mail" / "Maildir" / ".Sent" / "new").iterdir()
    assert got_file.read_bytes() == sent_file.read_bytes()
    msg = email.message_from_bytes(got_file.read_bytes(), policy=email.policy.default)
    (part,) = list(msg.iter_attachments())
    assert part.get_payload(decode=True) == attachment
    assert [body_bytes(h) for h in net.homes] == [0] * N_NODES


async def test_agent_sessions_use_fresh_transport_keys(tmp_path: Path) -> None:
    params = netparams.testnet(puzzle_bits=4)
    clock, rng = SystemClock(), SystemRng()
    identity = AddressIdentity.create_anon("dora", rng, clock.now())
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node = Node(ids.grind_node_key(params.puzzle_bits, rng), params, clock, rng,
                        listen=Endpoint("127.0.0.1", 0))
            await nursery.start(node.run)
            assert node.endpoint is not None
            config = AgentConfig(params, (node.endpoint,), frozenset(), tmp_path / "mail")
            seen = []
            for _ in range(2):
                # direct: one node cannot be X and Z (the anonymous path is
                # tests/test_anon_tcp.py)
                async with session(identity, config, clock, rng, anonymous=False) as agent:
                    await agent.publish_cert()
                    seen.append(agent.net.local_cert)
            assert seen[0].node_id != seen[1].node_id
            assert all(not cert.endpoints for cert in seen)  # clients: never in a routing table
            assert {c.node_id for c in node.dht.contacts()}.isdisjoint(
                c.node_id for c in seen)
            nursery.cancel_scope.cancel()
