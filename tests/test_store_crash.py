"""Crash safety of a storage node process: a receipt is a promise that survives SIGKILL.

The node signs a receipt only after the SQLite commit (WAL, synchronous=FULL) returned; so a
node killed the instant it answered still holds what it signed for when it comes back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from procnet import LocalNet, status

from anonmail import crypto, wire
from anonmail.clock import SystemClock
from anonmail.mail.identity import AddressIdentity
from anonmail.net.tcp import TcpNetwork
from anonmail.paths import Home
from anonmail.permit.records import PolicyMode, issue_tokens, make_policy, spend
from anonmail.records import ids, params
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.receipts import StoreOp
from anonmail.rng import SeededRng, SystemRng
from anonmail.store.messages import (
    Append,
    Appended,
    AppendProof,
    AppendProofKind,
    ObjectKind,
    Store,
    Stored,
    entry_id,
)


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[LocalNet]:
    t = LocalNet(tmp_path, 1)
    try:
        t.start(0)
        yield t
    finally:
        t.close()


def client() -> TcpNetwork:
    """A client on the test network (what a user agent is)."""
    p, clock, rng = params.testnet(puzzle_bits=4), SystemClock(), SystemRng()
    key = ids.grind_node_key(p.puzzle_bits, rng)
    net = TcpNetwork(key, p, clock, rng, cert_cache=CertCache())
    net.cert = NodeCert.issue(key, (), clock.now(), p)
    return net


BOB = AddressIdentity.create_anon("bob", SeededRng(b"bob"), SystemClock().now())
BOB_INBOX = ids.inbox_key(BOB.address)


async def store_and_append(cert: NodeCert, blob: bytes, entry: bytes) -> tuple[Stored, Appended]:
    """A fragment, then (behind the permit gate every node runs) Bob's policy and an entry
    with one of his permits."""
    net = client()
    now = SystemClock().now()
    policy = make_policy(BOB.sign, BOB.cert, 1, PolicyMode.PERMITS, 8, ())
    (token,) = issue_tokens(BOB.sign, BOB_INBOX, 1, now, SeededRng(b"token"))
    proof = AppendProof(AppendProofKind.PERMIT, wire.encode(spend(token, BOB_INBOX,
                                                                  entry_id(entry))))
    try:
        with trio.fail_after(30):
            stored = await net.request(cert, Store(ids.fragment_key(blob), ObjectKind.FRAGMENT,
                                                   blob, 3600, (crypto.hash("delete", b"s"),)))
            assert isinstance(await net.request(cert, Store(BOB_INBOX, ObjectKind.POLICY,
                                                            wire.encode(policy), 3600, ())),
                              Stored)
            appended = await net.request(cert, Append(BOB_INBOX, entry, 3600, proof))
    finally:
        await net.aclose()
    assert isinstance(stored, Stored) and isinstance(appended, Appended)
    return stored, appended


@pytest.mark.threat("T-RECEIPT-DROP")
def test_receipted_data_survives_sigkill(one_node: LocalNet) -> None:
    home = one_node.homes[0]
    cert = _node_cert(home)
    rng = SeededRng(11)
    blob, entry = rng.bytes(200_000), rng.bytes(900)
    stored, appended = trio.run(store_and_append, cert, blob, entry)
    one_node.kill(0)  # at once: no clean shutdown, no chance to flush anything later

    stored.receipt.verify(cert.public_key)
    appended.receipt.verify(cert.public_key)
    assert appended.receipt.op is StoreOp.APPEND
    assert appended.receipt.digest == entry_id(entry)
    one_node.start(0)
    assert bytes.fromhex(status(home)["node_id"]) == cert.node_id
    with sqlite3.connect(f"file:{Home(home).store}?mode=ro", uri=True) as db:
        (got,) = db.execute("SELECT blob FROM objects WHERE key = ?",
                            (ids.fragment_key(blob),)).fetchone()
        (got_entry,) = db.execute("SELECT entry FROM entries WHERE entry_id = ?",
                                  (entry_id(entry),)).fetchone()
    assert bytes(got) == blob
    assert bytes(got_entry) == entry


def _node_cert(home: Path) -> NodeCert:
    """The running node's certificate, learned the way any peer learns it (the handshake)."""
    endpoint = Endpoint.parse(status(home)["endpoint"])

    async def introduce() -> NodeCert:
        net = client()
        try:
            with trio.fail_after(30):
                return await net.introduce(endpoint)
        finally:
            await net.aclose()

    return trio.run(introduce)
