"""Fragment amplification by a sender who may write to us (threat T-MAIL-HOSTILE-BODY): the
sender stores little and signs a header and descriptor that would make each retrieve fetch far
more -- one fragment named a thousand times, a body size far past compose.MAX_MESSAGE, or
fragments that exist nowhere. The reader refuses the header or descriptor before fetching
fragments, and stops at the first missing fragment; an honest body costs about its size."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from mailsim import DAY, Sim, people
from mailsim import sim_fixture as sim_fixture
from storegrid import R
from test_mail_hostile_agent import CountingFetches
from trio.testing import MockClock

from anonmail import crypto, wire
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.mail import envelope
from anonmail.mail import fragments as fr
from anonmail.mail.compose import MAX_MESSAGE, Attachment, new_message_id
from anonmail.mail.user_agent import MailAgent
from anonmail.records import ids
from anonmail.rng import SeededRng
from anonmail.store import messages as sm
from anonmail.store.client import append_replicated, store_replicated

pytestmark = pytest.mark.threat("T-MAIL-HOSTILE-BODY")

KEY = b"\x07" * 32


def sizes(padded: int) -> list[int]:
    """The ciphertext sizes encrypt_body makes (written out: the old code had no helper)."""
    count = -(-padded // fr.FRAGMENT_PLAIN)
    tag = crypto.AEAD_TAG_SIZE
    return [fr.FRAGMENT_PLAIN + tag] * (count - 1) + [padded - (count - 1) * fr.FRAGMENT_PLAIN
                                                      + tag]


def seal_descriptor(desc: fr.Descriptor, body_key: bytes) -> bytes:
    return crypto.aead_encrypt(crypto.kdf(body_key, "mail-descriptor"), crypto.counter_nonce(0),
                               wire.encode(desc), b"anonmail/descriptor")


async def hostile(sim: Sim, mallory: MailAgent, bob: MailAgent, size: int,
                  refs: Sequence[fr.FragmentRef], stored: Sequence[bytes]) -> tuple[str, int]:
    """Mallory stores the fragments `stored` and a descriptor naming `refs` for a body of
    `size` bytes, and appends a valid signed header to bob's inbox. (message id, bytes
    stored per replica)."""
    rng = SeededRng(b"mallory")
    now = int(sim.s.clock.now())
    body_key, secret = rng.bytes(32), rng.bytes(32)
    hashes = [sm.delete_hash(secret)]
    for ct in stored:
        placed = await store_replicated(mallory.net, mallory.dht, ids.fragment_key(ct),
                                        sm.ObjectKind.FRAGMENT, ct, DAY, hashes, R)
        assert len(placed.receipts) == R
    blob = seal_descriptor(fr.Descriptor(tuple(refs), fr.padded_size(size), bytes(32)), body_key)
    mid = new_message_id(rng)
    placed = await store_replicated(mallory.net, mallory.dht, ids.body_key(mid),
                                    sm.ObjectKind.BODY, blob, DAY, hashes, R)
    assert len(placed.receipts) == R
    header = envelope.sign_header(envelope.MailHeader(
        mallory.identity.cert, bob.address, (bob.address,), (), (), "hi", now, mid, body_key,
        sm.blob_digest(blob), size, envelope.BodyLayout.FRAGMENTED, len(refs), now + DAY,
        secret, bytes(64)), mallory.identity.sign)
    inbox = ids.inbox_key(bob.address)
    entry = envelope.seal_header(header, bob.identity.seal.public, inbox, rng)
    proof = await mallory.permits.ticket(bob.address).prove(entry, now, sim.s.rng)
    placed = await append_replicated(mallory.net, mallory.dht, inbox, entry, DAY, proof, R)
    assert len(placed.receipts) == R
    return mid, len(blob) + sum(len(ct) for ct in stored)


def fragment(index: int, count: int, body_key: bytes = KEY) -> bytes:
    return crypto.aead_encrypt(crypto.kdf(body_key, "mail-fragment"), crypto.counter_nonce(index),
                               bytes(fr.FRAGMENT_PLAIN), b"anonmail/fragment\x00"
                               + index.to_bytes(4, "big") + count.to_bytes(4, "big"))


async def test_a_header_naming_a_body_past_the_message_limit_is_refused_at_check(
        sim: Sim, autojump_clock: MockClock) -> None:
    # The audit's case: one ~960 KiB fragment named 1,007 times, a signed size of ~944 MiB.
    # Each retrieve fetched all 1,007 copies (944 MiB) and kept them in memory.
    bob, mallory = await people(sim, "bob", "mallory")
    size = 1006 * fr.FRAGMENT_PLAIN + 1
    count = -(-fr.padded_size(size) // fr.FRAGMENT_PLAIN)
    assert size > MAX_MESSAGE and count <= envelope.MAX_FRAGMENTS
    ct = fragment(0, count)
    await hostile(sim, mallory, bob, size, [fr.FragmentRef(ids.fragment_key(ct), len(ct))] * count,
                  [ct])
    report = await bob.check()
    assert report.new == [] and report.rejected["forged or altered"] == 1
    assert bob.pending() == []


async def test_a_descriptor_naming_one_fragment_many_times_costs_one_descriptor_fetch(
        sim: Sim, autojump_clock: MockClock) -> None:
    bob, mallory = await people(sim, "bob", "mallory")
    size = 90 * fr.FRAGMENT_PLAIN + 1  # within MAX_MESSAGE: the header alone is fine
    count = -(-fr.padded_size(size) // fr.FRAGMENT_PLAIN)
    ct = fragment(0, count)
    refs = [fr.FragmentRef(ids.fragment_key(ct), n) for n in sizes(fr.padded_size(size))]
    mid, stored = await hostile(sim, mallory, bob, size, refs, [ct])
    (_notice,) = (await bob.check()).new
    counting = CountingFetches(bob.net)
    bob.net = counting
    with pytest.raises(UserError) as refused:
        await bob.retrieve(mid)
    # Old code: 90 FETCHes of the same fragment, 84 MiB, all held in memory at once.
    assert sum(counting.fetches.values()) <= 2, counting.fetches
    assert counting.fetched_bytes <= 1.15 * stored
    assert "damaged" in str(refused.value)  # the sender's doing: the agent holds it
    assert bob.local.has_pending(mid)  # kept for the user to discard


async def test_a_descriptor_naming_missing_fragments_stops_at_the_first(
        sim: Sim, autojump_clock: MockClock) -> None:
    bob, mallory = await people(sim, "bob", "mallory")
    size = 90 * fr.FRAGMENT_PLAIN + 1
    refs = [fr.FragmentRef(crypto.hash("nowhere", i.to_bytes(4, "big")), n)
            for i, n in enumerate(sizes(fr.padded_size(size)))]
    mid, _ = await hostile(sim, mallory, bob, size, refs, [])
    (_notice,) = (await bob.check()).new
    counting = CountingFetches(bob.net)
    bob.net = counting
    with pytest.raises(UserError, match="try again later"):
        await bob.retrieve(mid)
    # Old code: every one of the 91 fragments asked of r + WIDEN nodes (1,092 FETCHes).
    budget = fr.DEFAULT_CONCURRENCY * (R + fr.WIDEN) + 2
    assert sum(counting.fetches.values()) <= budget, sum(counting.fetches.values())
    assert bob.local.has_pending(mid)


async def test_an_honest_fragmented_body_costs_about_its_size(
        sim: Sim, autojump_clock: MockClock) -> None:
    alice, bob = await people(sim, "alice", "bob")
    data = SeededRng(3).bytes(2 * fr.FRAGMENT_PLAIN)
    sent = await alice.send([bob.address], subject="big", body="see attached\n",
                            attachments=[Attachment("a.bin", data)])
    (notice,) = (await bob.check()).new
    assert notice.header.fragments >= 2
    counting = CountingFetches(bob.net)
    bob.net = counting
    got = await bob.retrieve(sent.message_id)
    assert got.fragments == notice.header.fragments
    assert counting.fetched_bytes <= 1.15 * len(got.data)


def test_a_descriptor_is_refused_unless_it_is_what_the_sender_chunking_makes() -> None:
    n = 2 * fr.FRAGMENT_PLAIN + 12345
    body = fr.encrypt_body(SeededRng(5).bytes(n), KEY)
    desc = fr.open_descriptor(body.blob, KEY, 3, n)  # the honest one opens
    a, b, c = desc.fragments

    def sealed(*refs: fr.FragmentRef) -> bytes:
        return seal_descriptor(fr.Descriptor(refs, desc.padded_size, desc.plain_digest), KEY)

    with pytest.raises(RemoteProtocolError, match="twice"):
        fr.open_descriptor(sealed(a, a, c), KEY, 3, n)
    with pytest.raises(RemoteProtocolError, match="sizes"):
        fr.open_descriptor(sealed(a, b, fr.FragmentRef(c.key, c.size + 1)), KEY, 3, n)
    with pytest.raises(RemoteProtocolError, match="sizes"):
        fr.open_descriptor(sealed(fr.FragmentRef(a.key, a.size - 1), b, c), KEY, 3, n)
    with pytest.raises(RemoteProtocolError, match="larger"):
        fr.open_descriptor(body.blob, KEY, 3, MAX_MESSAGE + 1)
