"""Anonymous mail over real TCP (issue 8, must-show 1): 7 `anonmail node` processes on
127.0.0.1 and the command line as a user runs it. Alice sends Bob an anonymous message; Bob
reads it. Then every node's request log (`--verbose`: request type and requesting node id) of
the send and every node's database are scanned:

* the identity Alice's session sends through (its circuits) appears in one node's log only,
  her guard X's, and only with the channel requests (Locate, Open, Cell, Destroy);
* no storage or inbox request (STORE, APPEND, FETCH, ...) came from any client identity: every
  one came from a node acting as Z;
* the session's lookup identity (its DHT queries of random keys) never sent anything else;
* no database holds either session identity, Alice's address or her keys (her own published
  address certificate aside, which is public by design), and X's log names no recipient,
  subject or key;
* Bob's `inbox` and `read` likewise: every READ, ACK, FETCH and DELETE came from a Z, and each
  of his sessions' circuit identities reached one node only (T-AGENT-LINK).
"""

from __future__ import annotations

import email
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from procnet import LocalNet, anonmail, local_net, status, user

from anonmail.experiments.demo.model import ROUTING
from anonmail.paths import Home
from anonmail.records import ids
from anonmail.store.messages import ObjectKind

N_NODES = 7
CHANNEL = {"Locate", "Open", "Cell", "Destroy"}
STORAGE = {"Store", "Append", "Fetch", "Delete", "Read", "Ack"}
LINE = re.compile(r"anonmail\.node DEBUG (\w+) from ([0-9a-f]{10}) -> (\w+)")

pytestmark = pytest.mark.threat("T-ANON-STORAGE-SEES-Z")


def requests(t: LocalNet, since: list[int]) -> dict[int, list[tuple[str, str]]]:
    """Per node: (request type, requesting node id, short) logged after `since`."""
    out: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for i in range(N_NODES):
        text = t.output(i).read_bytes()[since[i]:].decode(errors="replace")
        out[i] = [(m.group(1), m.group(2)) for m in LINE.finditer(text)]
    return out


def database(home: Path) -> bytes:
    """A node's store, with the address certificates (public: they name their address) cut."""
    store = Home(home).store
    raw = b"".join(p.read_bytes() for p in (store, store.with_name(store.name + "-wal"))
                   if p.exists())
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        for (blob,) in db.execute("SELECT blob FROM objects WHERE kind IN (?, ?) AND blob IS "
                                  "NOT NULL", (int(ObjectKind.CERT), int(ObjectKind.POLICY))):
            raw = raw.replace(bytes(blob), b"")
    return raw


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNet]:
    with local_net(tmp_path, N_NODES) as t:
        yield t


def test_storage_inbox_and_z_never_see_the_sender(net: LocalNet, tmp_path: Path) -> None:
    alice, alice_addr = user(net, tmp_path, "alice")
    bob, bob_addr = user(net, tmp_path, "bob")
    nodes = {status(h)["node_id"][:10] for h in net.homes}
    assert len(nodes) == N_NODES

    (tmp_path / "body.txt").write_text("Meet at the usual place.\n")
    r = anonmail("send", "--home", str(alice), "--to", bob_addr, "--subject", "Sealed plans",
                 str(tmp_path / "body.txt"), timeout=180)
    assert r.returncode == 0, r.stderr
    # first contact: an RTS (itself sent anonymously), the message waits for Bob's permission
    assert f"{bob_addr}: asked for permission" in r.stdout, r.stdout
    r = anonmail("requests", "--home", str(bob), timeout=180)
    assert r.returncode == 0 and alice_addr in r.stdout, r.stderr
    assert anonmail("allow", alice_addr, "--home", str(bob), timeout=180).returncode == 0

    since = [net.output(i).stat().st_size for i in range(N_NODES)]
    r = anonmail("inbox", "--home", str(alice), timeout=180)  # sees the grant: sends by itself
    assert r.returncode == 0, r.stderr
    assert f"delivered to {bob_addr}" in r.stderr, r.stderr
    seen = requests(net, since)

    clients = {who for log in seen.values() for _, who in log if who not in nodes}
    senders = {who for log in seen.values() for kind, who in log
               if who in clients and kind in CHANNEL}
    assert len(senders) == 1, senders  # the session's one circuit identity
    (sender,) = senders
    where = {i for i, log in seen.items() if any(who == sender for _, who in log)}
    assert len(where) == 1, where  # only the guard X saw it
    (x,) = where
    assert {kind for kind, who in seen[x] if who == sender} <= CHANNEL
    # every storage and inbox request of the send came from a node (a Z), none from a client
    storage = [(i, kind, who) for i, log in seen.items() for kind, who in log if kind in STORAGE]
    assert storage and all(who in nodes for _, _, who in storage), storage
    assert {kind for _, kind, _ in storage} >= {"Store", "Append"}
    # the lookup identity only looked things up
    lookups = clients - senders
    assert all(kind in ROUTING for log in seen.values() for kind, who in log
               if who in lookups)
    # X's log: types and ids, never a recipient, the subject or a key; what it got from the
    # sender are channel requests only (checked above: no operation shows)
    x_log = net.output(x).read_bytes()[since[x]:]
    (sent,) = (alice / "mail" / "Maildir" / ".Sent" / "new").iterdir()
    mid = email.message_from_bytes(sent.read_bytes())["Message-ID"].strip()
    for needle in (bob_addr.encode(), b"Sealed plans", ids.inbox_key(bob_addr).hex()[:10].encode(),
                   ids.body_key(mid).hex()[:10].encode()):
        assert needle not in x_log

    # no database holds the session's identities, Alice's address or her keys
    for home in net.homes:
        raw = database(home)
        assert alice_addr.encode() not in raw
        assert bytes.fromhex(sender) not in raw and sender.encode() not in raw

    since = [net.output(i).stat().st_size for i in range(N_NODES)]
    r = anonmail("inbox", "--home", str(bob), timeout=180)
    assert r.returncode == 0, r.stderr
    assert "Sealed plans" in r.stdout
    (line,) = [line for line in r.stdout.splitlines() if line.endswith("Sealed plans")]
    r = anonmail("read", line.split()[0], "--home", str(bob), timeout=180)  # its stable id
    assert r.returncode == 0, r.stderr
    assert "Meet at the usual place." in r.stdout and alice_addr in r.stdout

    # Bob's reading, likewise (T-AGENT-LINK): his inbox and body replicas were asked by Zs only;
    # each of his two sessions' circuit identities reached one node, his guard, and only with
    # channel requests.
    seen = requests(net, since)
    reads = [(kind, who) for log in seen.values() for kind, who in log if kind in STORAGE]
    assert {kind for kind, _ in reads} >= {"Read", "Ack", "Fetch", "Delete"}, reads
    assert all(who in nodes for _, who in reads), reads
    readers = {who for log in seen.values() for kind, who in log
               if who not in nodes and kind in CHANNEL}
    assert 1 <= len(readers) <= 2, readers  # `inbox`'s session and `read`'s, if it went out
    for reader in readers:
        where = {i for i, log in seen.items() if any(who == reader for _, who in log)}
        assert len(where) == 1, where
        assert {kind for i in where for kind, who in seen[i] if who == reader} <= CHANNEL
