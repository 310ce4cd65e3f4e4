"""The per-recipient sealed header: what a sender APPENDs to a recipient's inbox (DESIGN.md §5).

A `MailHeader` holds everything a recipient needs before fetching the body, and everything an
e-mail header would show: the sender's AddressCert, this header's recipient, To, Cc, Bcc, Subject,
Date, Message-ID, the body key, the digest and size of the stored body, the fragment layout, and
this recipient's delete secret. The sender signs all of it with its address key under the domain
"mail-header" (non-repudiation, seed 003 §3.3; the lecture: "this message has to be signed").
The signed header is padded to a multiple of `PAD_BLOCK` and sealed to the recipient's X25519
seal key (crypto.seal_to: ephemeral key, so storage nodes cannot tell who sealed it), with the
inbox key as associated data. The inbox entry is the canonical `SealedHeader`.

Invariants:
* storage nodes see ciphertext of a padded size only: subject, addresses, message id, dates and
  keys are inside the seal (seed 003 §6.2: PGP leaves subject and headers in the clear; this
  does not);
* Bcc stays blind: a To/Cc recipient's header has an empty `bcc`; a Bcc recipient's header
  names only itself there (envelope.build_headers); the shared body has no Bcc header;
* the header names its `recipient` and the signature covers it, so a recipient cannot pass a
  header it received off as one the sender wrote to someone else (surreptitious forwarding);
* a header is accepted only if it opens under our key and the inbox key, names us, the sender's
  certificate verifies (trusted CA or self-certifying, valid at the header's date) and the
  signature verifies under the certificate's sign key: `verify_header` raises `ForgedHeader`
  otherwise (threat T-MAIL-FORGE). The signature also covers the body digest, and through the
  body the descriptor and every fragment's content address, so the whole message is signed;
* a signed header is still the sender's word: one naming a body larger than
  `compose.MAX_MESSAGE` is refused at check time, before anything is fetched (a hostile sender
  could otherwise make each retrieve download up to MAX_FRAGMENTS fragments; threat
  T-MAIL-HOSTILE-BODY).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated

from anonmail import crypto, wire
from anonmail.errors import RemoteProtocolError
from anonmail.mail.compose import (
    MAX_MESSAGE,
    MAX_RECIPIENTS,
    MAX_SUBJECT,
    Composed,
    is_message_id,
)
from anonmail.permit.notes import PermitNote
from anonmail.permit.records import HeldToken
from anonmail.records import ids
from anonmail.records.certs import AddressCert
from anonmail.rng import Rng
from anonmail.store.messages import MAX_ENTRY
from anonmail.wire import Range, Size

HEADER_DOMAIN = "mail-header"
PAD_BLOCK = 1024
MAX_FRAGMENTS = 1024  # 1024 fragments of ~960 KiB: ~960 MiB, well above compose.MAX_MESSAGE
_SEAL_AD = b"anonmail/mail-header\x00"

Addr = Annotated[str, Size(3, 254)]
Addrs = Annotated[tuple[Addr, ...], Size(0, MAX_RECIPIENTS)]
Key32 = Annotated[bytes, Size(32)]


class BodyLayout(enum.IntEnum):
    INLINE = 1  # the body ciphertext is the object under H("body", message id)
    FRAGMENTED = 2  # that object is an encrypted descriptor of content-addressed fragments


class ForgedHeader(RemoteProtocolError):
    """A header that opened but does not verify: forged, altered, or not for us."""


@wire.message(tag=102)
@dataclass(frozen=True, slots=True)
class MailHeader:
    sender: AddressCert
    recipient: Addr  # whom this header was sealed for
    to: Addrs
    cc: Addrs
    bcc: Addrs  # () for To/Cc recipients; (recipient,) for a Bcc recipient
    subject: Annotated[str, Size(0, MAX_SUBJECT)]
    date: Annotated[int, wire.U64]
    message_id: Annotated[str, Size(3, 128)]
    body_key: Key32
    body_digest: Key32  # store.messages.blob_digest of the object under H("body", message id)
    body_size: Annotated[int, wire.U64]  # bytes of the RFC 5322 message
    layout: BodyLayout
    fragments: Annotated[int, Range(0, MAX_FRAGMENTS)]
    expires: Annotated[int, wire.U64]  # when the stored body expires (the sender's TTL)
    delete_secret: Key32  # this recipient's right to DELETE the body (and its fragments)
    signature: Annotated[bytes, Size(64)]

    @property
    def body_store_key(self) -> bytes:
        return ids.body_key(self.message_id)

    @property
    def digest(self) -> bytes:
        """A name for this signed header (stable across seals)."""
        return crypto.hash("mail-header-id", wire.encode(self))


MAX_GRANT = 64  # tokens one entry carries


@wire.message(tag=103)
@dataclass(frozen=True, slots=True)
class HeaderPlain:
    """The sealed plaintext of an inbox entry: a signed mail header or a signed permit note
    (exactly one), what rides along for the permit book (permit/book.py), and zero padding to a
    `PAD_BLOCK` multiple.

    `grant`: tokens for the recipient to write back to the sender (a CTS, a refill, a reply's
    permit); each proves itself (the sender's signature, for the sender's inbox: `valid_grant`).
    `supply`: how many of the recipient's tokens the sender still holds (the recipient refills
    when it runs low). `spent`: the id of the recipient's token this entry spends, so the
    recipient knows which of the tokens it issued are used (and `block` revokes only the rest).
    """

    header: MailHeader | None
    note: PermitNote | None
    grant: Annotated[tuple[HeldToken, ...], Size(0, MAX_GRANT)]
    supply: Annotated[int, Range(0, 1 << 16)]
    spent: Annotated[bytes, Size(0, 32)]
    pad: Annotated[bytes, Size(0, PAD_BLOCK + 8)]

    @property
    def sender(self) -> AddressCert:
        if self.header is not None:
            return self.header.sender
        assert self.note is not None
        return self.note.sender


@dataclass(frozen=True, slots=True)
class Extras:
    """What a sender adds beside a header or note (HeaderPlain's fields of the same names)."""

    grant: tuple[HeldToken, ...] = ()
    supply: int = 0
    spent: bytes = b""


@wire.message(tag=101)
@dataclass(frozen=True, slots=True)
class SealedHeader:
    """An inbox entry: `crypto.seal_to(recipient seal key, HeaderPlain, ad=inbox key)`."""

    box: Annotated[bytes, Size(crypto.SEALED_BOX_OVERHEAD + 1, MAX_ENTRY - 64)]


@dataclass(frozen=True, slots=True)
class BodyFacts:
    """What the headers say about the stored body (from fragments.EncryptedBody)."""

    body_key: bytes
    body_digest: bytes
    body_size: int
    layout: BodyLayout
    fragments: int
    expires: int


def sign_header(header: MailHeader, sign: crypto.SigningKey) -> MailHeader:
    return replace(header, signature=sign.sign(HEADER_DOMAIN, wire.signing_bytes(header)))


def build_headers(msg: Composed, sender: AddressCert, sign: crypto.SigningKey, body: BodyFacts,
                  secrets: dict[str, bytes]) -> dict[str, MailHeader]:
    """One signed header per recipient. Bcc recipients see only themselves in `bcc`; everyone
    else sees no Bcc at all (Bcc stays blind)."""
    out = {}
    for rcpt in msg.recipients:
        bcc = (rcpt,) if rcpt in msg.bcc and rcpt not in msg.to and rcpt not in msg.cc else ()
        unsigned = MailHeader(sender, rcpt, msg.to, msg.cc, bcc, msg.subject, msg.date,
                              msg.message_id, body.body_key, body.body_digest, body.body_size,
                              body.layout, body.fragments, body.expires, secrets[rcpt],
                              bytes(64))
        out[rcpt] = sign_header(unsigned, sign)
    return out


def _seal_ad(inbox: bytes) -> bytes:
    return _SEAL_AD + inbox


def _padded(plain: HeaderPlain) -> bytes:
    """Encode HeaderPlain with a pad that brings it to a multiple of PAD_BLOCK bytes."""
    bare = len(wire.encode(plain))
    target = -(-(bare + 3) // PAD_BLOCK) * PAD_BLOCK
    for prefix in (1, 2, 3):  # CBOR byte-string head: 1 byte below 24, 2 below 256, 3 beyond
        n = target - bare - (prefix - 1)
        head = 1 if n < 24 else 2 if n < 256 else 3
        if n >= 0 and head == prefix:
            out = wire.encode(replace(plain, pad=bytes(n)))
            if len(out) == target:
                return out
    return wire.encode(plain)  # unreachable in practice; still correct


def seal_entry(item: MailHeader | PermitNote, seal_key: bytes, inbox: bytes, rng: Rng,
               extras: Extras = Extras()) -> bytes:
    """The inbox entry for a header or a note, sealed to `seal_key` and bound to `inbox`."""
    header = item if isinstance(item, MailHeader) else None
    note = item if isinstance(item, PermitNote) else None
    plain = HeaderPlain(header, note, extras.grant, extras.supply, extras.spent, b"")
    return wire.encode(SealedHeader(crypto.seal_to(seal_key, _padded(plain), rng,
                                                   _seal_ad(inbox))))


def seal_header(header: MailHeader, seal_key: bytes, inbox: bytes, rng: Rng,
                extras: Extras = Extras()) -> bytes:
    return seal_entry(header, seal_key, inbox, rng, extras)


def open_entry(entry: bytes, seal: crypto.KeyPair, inbox: bytes) -> HeaderPlain:
    """Open an inbox entry. Raises RemoteProtocolError (DecryptError) if it is malformed, not
    sealed to us, altered, or moved from another inbox, or holds neither or both of a header
    and a note."""
    sealed = wire.decode(entry, SealedHeader, max_size=MAX_ENTRY)
    plain = crypto.open_sealed_box(seal.secret, sealed.box, _seal_ad(inbox))
    opened = wire.decode(plain, HeaderPlain, max_size=MAX_ENTRY)
    if any(opened.pad):
        raise RemoteProtocolError("header padding is not zero")
    if (opened.header is None) == (opened.note is None):
        raise RemoteProtocolError("an entry holds one header or one note")
    return opened


def valid_grant(plain: HeaderPlain, now: float) -> tuple[HeldToken, ...]:
    """The granted tokens that are really the (verified) sender's, for its own inbox, unexpired:
    a token whose owner signature fails is dropped, not trusted."""
    sender = plain.sender
    inbox = ids.inbox_key(sender.address)
    out = []
    for held in plain.grant:
        try:
            held.token.verify(sender.sign_key)
        except RemoteProtocolError:
            continue
        if (held.token.inbox == inbox and held.token.expires > now
                and crypto.SigningKey(held.seed).public == held.token.key):
            out.append(held)
    return tuple(out)


def verify_header(header: MailHeader, me: str, trusted_cas: frozenset[bytes], now: float,
                  skew: int, max_age: int) -> None:
    """Raise ForgedHeader unless `header` is for `me` and signed by its sender's valid key."""
    if header.recipient != me:
        raise ForgedHeader("header is for another recipient")
    if me not in (*header.to, *header.cc, *header.bcc):
        raise ForgedHeader("header does not list its recipient")
    if header.bcc not in ((), (me,)):
        raise ForgedHeader("header names other Bcc recipients")
    if not is_message_id(header.message_id):
        raise ForgedHeader("header has a malformed message id")
    if (header.layout is BodyLayout.INLINE) != (header.fragments == 0):
        raise ForgedHeader("header body layout is inconsistent")
    if header.body_size > MAX_MESSAGE:
        raise ForgedHeader("header names a body larger than a message may be")
    if header.date > now + skew or header.date < now - max_age - skew:
        raise ForgedHeader("header date is in the future or too old")
    try:
        # Valid when it was signed: mail may wait in the inbox after the sender's cert lapses.
        header.sender.verify(trusted_cas, header.date, skew)
        crypto.verify(header.sender.sign_key, HEADER_DOMAIN, wire.signing_bytes(header),
                      header.signature)
    except RemoteProtocolError as e:
        raise ForgedHeader(f"sender not authentic: {e}") from e


def recipients_of(header: MailHeader) -> Sequence[str]:
    return (*header.to, *header.cc, *header.bcc)
