"""Body encryption and the fragments of large bodies (DESIGN.md §5; the lecture's attachments as
encrypted, content-addressed fragments with a descriptor and a TTL).

A message is encrypted once, with a random 32-byte body key, whoever its recipients are (seed
002 §3.1 step 2; one stored body serves them all). The plaintext is first padded with zeros to
its Padmé length (Nikitin et al., PETS 2019: at most ~12 % overhead, and stored sizes leak only
O(log log n) bits of the real size), at least `MIN_PADDED`. Then:

* if the padded body fits one object (`store.messages.MAX_BLOB`) it is one AEAD ciphertext,
  stored under H("body", message id) (`BodyLayout.INLINE`);
* otherwise it is cut into chunks of `FRAGMENT_PLAIN` bytes, each its own AEAD ciphertext (nonce =
  its index, associated data = index and count, so fragments cannot be reordered, dropped or
  spliced from another message) and stored content-addressed under H("fragment", ciphertext);
  what is stored under H("body", message id) is the encrypted `Descriptor`: the fragments' keys
  and sizes, the padded size, and a digest of the whole plaintext (`BodyLayout.FRAGMENTED`).

Every use of the body key is through a subkey (inline body, descriptor, fragments), and every
subkey encrypts one sequence of distinct nonces, so no nonce repeats under a key.

Deletion: each fragment is stored with one delete hash per recipient, derived from that
recipient's delete secret and the fragment's index (`fragment_secret`): the hashes differ from
fragment to fragment and from the body's, so storage nodes cannot link a message's fragments by
their delete hashes. Fetching is parallel with a bound (`concurrency`) and starts each fragment
at a different replica (rotated by index), falling through to the others and to a slightly wider
set (seed 002 §2.2: "widening its search") when a replica lacks it or serves bad bytes (the
content address is checked: threat T-STORE-TAMPER).

The descriptor is the sender's, so hostile (threat T-MAIL-HOSTILE-BODY): it is accepted only if
it names exactly the fragments `encrypt_body` makes for the signed size (at most
`compose.MAX_MESSAGE`): the count, each ciphertext's size, and distinct keys. A reader fetches
them in index order, `concurrency` at a time, decrypts each as it arrives into the one padded
plaintext (memory: about one body, not body plus every ciphertext), and stops everything at the
first fragment no replica has or that does not decrypt. So one retrieve costs at most about one
body of downloads, however the descriptor was made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import trio

from anonmail import crypto, wire
from anonmail.clock import Clock
from anonmail.errors import RemoteProtocolError
from anonmail.mail.compose import MAX_MESSAGE
from anonmail.mail.envelope import MAX_FRAGMENTS, BodyLayout
from anonmail.net.base import Network
from anonmail.net.fanout import fan_out
from anonmail.records import ids
from anonmail.records.receipts import Receipt
from anonmail.store.client import Lookup, delete_all, fetch_any, store_replicated
from anonmail.store.messages import (
    MAX_BLOB,
    ObjectKind,
    blob_digest,
    delete_hash,
)
from anonmail.wire import Range, Size

FRAGMENT_PLAIN = MAX_BLOB - crypto.AEAD_TAG_SIZE  # plaintext bytes per fragment
INLINE_MAX = MAX_BLOB - crypto.AEAD_TAG_SIZE  # padded plaintext that still fits one object
MIN_PADDED = 2048
DEFAULT_CONCURRENCY = 4  # fragments in flight at once (each goes to r replicas in parallel)
WIDEN = 4  # extra nodes tried beyond the r closest when no replica has good content


class BodyUnavailable(RemoteProtocolError):
    """No replica served a body or fragment whose content checks."""


@wire.struct
@dataclass(frozen=True, slots=True)
class FragmentRef:
    key: Annotated[bytes, Size(32)]  # H("fragment", ciphertext)
    size: Annotated[int, Range(crypto.AEAD_TAG_SIZE + 1, MAX_BLOB)]  # ciphertext bytes


@wire.message(tag=104)
@dataclass(frozen=True, slots=True)
class Descriptor:
    fragments: Annotated[tuple[FragmentRef, ...], Size(2, MAX_FRAGMENTS)]
    padded_size: Annotated[int, wire.U64]
    plain_digest: Annotated[bytes, Size(32)]  # H("mail-plain", the RFC 5322 bytes)


@dataclass(frozen=True)
class EncryptedBody:
    blob: bytes  # what is stored under H("body", message id)
    layout: BodyLayout
    fragments: tuple[tuple[bytes, bytes], ...] = ()  # (key, ciphertext), in order
    padded_size: int = 0

    @property
    def digest(self) -> bytes:
        return blob_digest(self.blob)

    @property
    def stored_bytes(self) -> int:
        """Ciphertext bytes one replica set holds for this body (blob + fragments)."""
        return len(self.blob) + sum(len(ct) for _, ct in self.fragments)


def padme(n: int) -> int:
    """The Padmé padded length of n (>= n; rounds away the low bits beyond the top few)."""
    if n < 2:
        return n
    e = n.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (n + mask) & ~mask


def padded_size(n: int) -> int:
    """What a body of n bytes is padded to: its Padmé size, at least MIN_PADDED, and a body
    that fits one object is never padded past it (one object, not two fragments)."""
    p = max(MIN_PADDED, padme(n))
    return min(p, INLINE_MAX) if n <= INLINE_MAX else p


def _subkey(body_key: bytes, use: str) -> bytes:
    return crypto.kdf(body_key, use)


def _fragment_ad(index: int, count: int) -> bytes:
    return b"anonmail/fragment\x00" + index.to_bytes(4, "big") + count.to_bytes(4, "big")


def plain_digest(plaintext: bytes) -> bytes:
    return crypto.hash("mail-plain", plaintext)


def encrypt_body(plaintext: bytes, body_key: bytes) -> EncryptedBody:
    """Pad and encrypt a message; inline if it fits one object, else fragments + descriptor."""
    size = padded_size(len(plaintext))
    padded = plaintext + bytes(size - len(plaintext))
    if size <= INLINE_MAX:
        blob = crypto.aead_encrypt(_subkey(body_key, "mail-body-inline"), crypto.counter_nonce(0),
                                   padded, b"anonmail/inline")
        return EncryptedBody(blob, BodyLayout.INLINE, (), size)
    count = -(-size // FRAGMENT_PLAIN)
    if count > MAX_FRAGMENTS:
        raise ValueError("body too large for one descriptor")  # compose.MAX_MESSAGE prevents it
    fkey = _subkey(body_key, "mail-fragment")
    frags = []
    for i in range(count):
        chunk = padded[i * FRAGMENT_PLAIN:(i + 1) * FRAGMENT_PLAIN]
        ct = crypto.aead_encrypt(fkey, crypto.counter_nonce(i), chunk, _fragment_ad(i, count))
        frags.append((ids.fragment_key(ct), ct))
    desc = Descriptor(tuple(FragmentRef(k, len(ct)) for k, ct in frags), size,
                      plain_digest(plaintext))
    blob = crypto.aead_encrypt(_subkey(body_key, "mail-descriptor"), crypto.counter_nonce(0),
                               wire.encode(desc), b"anonmail/descriptor")
    return EncryptedBody(blob, BodyLayout.FRAGMENTED, tuple(frags), size)


def _unpad(padded: bytes, size: int) -> bytes:
    if size > len(padded) or len(padded) != padded_size(size) or any(padded[size:]):
        raise RemoteProtocolError("body padding does not match the header's size")
    return padded[:size]


def decrypt_inline(blob: bytes, body_key: bytes, size: int) -> bytes:
    padded = crypto.aead_decrypt(_subkey(body_key, "mail-body-inline"), crypto.counter_nonce(0),
                                 blob, b"anonmail/inline")
    return _unpad(padded, size)


def fragment_sizes(padded: int) -> list[int]:
    """The ciphertext size of each fragment `encrypt_body` makes of a padded body."""
    count = -(-padded // FRAGMENT_PLAIN)
    last = padded - (count - 1) * FRAGMENT_PLAIN
    return [FRAGMENT_PLAIN + crypto.AEAD_TAG_SIZE] * (count - 1) + [last + crypto.AEAD_TAG_SIZE]


def open_descriptor(blob: bytes, body_key: bytes, count: int, size: int) -> Descriptor:
    """The descriptor of a body of `size` bytes in `count` fragments (the signed header's),
    if it names exactly what the sender's chunking makes (module docstring); else
    RemoteProtocolError, before a single fragment is fetched."""
    if size > MAX_MESSAGE:
        raise RemoteProtocolError("body larger than a message may be")
    plain = crypto.aead_decrypt(_subkey(body_key, "mail-descriptor"), crypto.counter_nonce(0),
                                blob, b"anonmail/descriptor")
    desc = wire.decode(plain, Descriptor, max_size=MAX_BLOB)
    if len(desc.fragments) != count or desc.padded_size != padded_size(size):
        raise RemoteProtocolError("descriptor does not match the header")
    if -(-desc.padded_size // FRAGMENT_PLAIN) != count:
        raise RemoteProtocolError("descriptor fragment count does not match its size")
    if [ref.size for ref in desc.fragments] != fragment_sizes(desc.padded_size):
        raise RemoteProtocolError("descriptor fragment sizes do not match its size")
    # Honest fragments differ (distinct nonces): a repeated key could only make us fetch one
    # stored fragment many times.
    if len({ref.key for ref in desc.fragments}) != count:
        raise RemoteProtocolError("descriptor names a fragment twice")
    return desc


class _Assembly:
    """The padded plaintext of a fragmented body, filled in fragment by fragment."""

    def __init__(self, desc: Descriptor, body_key: bytes) -> None:
        self.desc = desc
        self.key = _subkey(body_key, "mail-fragment")
        self.padded = bytearray(desc.padded_size)
        self.done = [False] * len(desc.fragments)

    def add(self, index: int, ct: bytes) -> None:
        count = len(self.desc.fragments)
        chunk = crypto.aead_decrypt(self.key, crypto.counter_nonce(index), ct,
                                    _fragment_ad(index, count))
        at = index * FRAGMENT_PLAIN
        if len(chunk) != min(FRAGMENT_PLAIN, len(self.padded) - at):
            raise RemoteProtocolError("fragment size does not match the descriptor")
        self.padded[at:at + len(chunk)] = chunk
        self.done[index] = True

    def plaintext(self, size: int) -> bytes:
        if not all(self.done):
            raise RemoteProtocolError("a fragment is missing")
        n = len(self.padded)
        if size > n or n != padded_size(size) or self.padded.count(0, size) != n - size:
            raise RemoteProtocolError("body padding does not match the header's size")
        del self.padded[size:]  # in place: no second copy of the padded body
        plaintext = bytes(self.padded)
        self.padded = bytearray()
        if not crypto.constant_time_eq(plain_digest(plaintext), self.desc.plain_digest):
            raise RemoteProtocolError("reassembled body does not match its digest")
        return plaintext


def decrypt_fragments(desc: Descriptor, cts: Sequence[bytes], body_key: bytes,
                      size: int) -> bytes:
    """The message from all of its fragments' ciphertexts, in order."""
    if len(cts) != len(desc.fragments):
        raise RemoteProtocolError("the number of fragments does not match the descriptor")
    whole = _Assembly(desc, body_key)
    for i, ct in enumerate(cts):
        whole.add(i, ct)
    return whole.plaintext(size)


def fragment_secret(secret: bytes, index: int) -> bytes:
    """The delete secret of fragment `index` for the recipient holding `secret`."""
    return crypto.kdf(secret, "mail-fragment-delete", index.to_bytes(4, "big"))


# -- network --------------------------------------------------------------------------------------


@dataclass
class FragmentStoreResult:
    receipts: list[list[Receipt]] = field(default_factory=list)  # per fragment, in order

    def short(self, r: int) -> list[int]:
        """Indexes of fragments with fewer than r receipts."""
        return [i for i, got in enumerate(self.receipts) if len(got) < r]


async def store_fragments(net: Network, dht: Lookup, body: EncryptedBody,
                          secrets: Sequence[bytes], ttl: int, r: int, clock: Clock, *,
                          concurrency: int = DEFAULT_CONCURRENCY,
                          rounds: int = 3) -> FragmentStoreResult:
    """STORE every fragment on its r closest (receipts verified, fresh sets on failure), at
    most `concurrency` fragments at once."""

    async def one(item: tuple[int, tuple[bytes, bytes]]) -> list[Receipt]:
        i, (key, ct) = item
        hashes = [delete_hash(fragment_secret(s, i)) for s in secrets]
        placed = await store_replicated(net, dht, key, ObjectKind.FRAGMENT, ct, ttl, hashes, r,
                                        clock=clock, rounds=rounds)
        return placed.receipts

    outcomes = await fan_out(list(enumerate(body.fragments)), one, limit=concurrency)
    return FragmentStoreResult([o.value or [] for o in outcomes])


async def fetch_fragment(net: Network, dht: Lookup, ref: FragmentRef, r: int,
                         start: int) -> bytes:
    """The fragment from the first replica (beginning at the `start`-th closest) whose content
    hashes to its key; then from up to WIDEN more nodes. BodyUnavailable if none has it."""
    blob = await fetch_any(net, dht, ref.key, r, size=ref.size, start=start, widen=WIDEN)
    if blob is None:
        raise BodyUnavailable("no replica has a fragment of this message")
    return blob


async def fetch_body(net: Network, dht: Lookup, desc: Descriptor, body_key: bytes, size: int,
                     r: int, *, concurrency: int = DEFAULT_CONCURRENCY) -> bytes:
    """The message a fragmented body holds: every fragment fetched (in index order, at most
    `concurrency` at once, each from its own replica) and decrypted as it arrives. The first
    fragment that no replica has (BodyUnavailable) or that does not decrypt
    (RemoteProtocolError) cancels the rest and is raised, as itself."""
    whole = _Assembly(desc, body_key)
    todo = iter(range(len(desc.fragments)))  # shared by the workers: each index taken once
    failed: list[RemoteProtocolError] = []

    async def worker(cancel: trio.CancelScope) -> None:
        for i in todo:
            try:
                whole.add(i, await fetch_fragment(net, dht, desc.fragments[i], r, i))
            except RemoteProtocolError as e:
                # The first failure decides: nothing after it is worth fetching.
                failed.append(e)
                cancel.cancel()
                return

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, concurrency)):
            nursery.start_soon(worker, nursery.cancel_scope)
    if failed:
        raise failed[0]
    return whole.plaintext(size)


async def delete_fragments(net: Network, dht: Lookup, desc: Descriptor, secret: bytes, r: int,
                           *, concurrency: int = DEFAULT_CONCURRENCY, widen: int = 0) -> int:
    """DELETE our right to every fragment on its replicas; returns how many fragments were
    deleted on at least r nodes."""

    async def one(item: tuple[int, FragmentRef]) -> int:
        i, ref = item
        return await delete_all(net, dht, ref.key, fragment_secret(secret, i), r, widen=widen)

    outcomes = await fan_out(list(enumerate(desc.fragments)), one, limit=concurrency)
    done = sum(1 for o in outcomes if (o.value or 0) >= r)
    return done
