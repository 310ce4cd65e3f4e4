"""Permit notes: the RTS and the CTS as signed records sealed into inbox entries (DESIGN.md §6;
seed 003 §7.1, Freemail's RTS/CTS).

A `PermitNote` is signed by its sender's address key and sealed, like a mail header, to the
recipient (mail/envelope.py seals it: storage nodes see an opaque, padded entry):

* `REQUEST` (the RTS): "I, `sender`, would like to write to you" with a short `note` the owner
  reviews (`anonmail requests`). It goes to the owner's request inbox with a proof-of-work stamp;
  the entry carries a few of the sender's own tokens, so the owner can answer;
* `GRANT` (the CTS, and every later refill): the entry carries a batch of the owner's tokens
  for the recipient. A grant is only ever made by the owner's explicit action or by a policy
  the owner set (contacts, allowed correspondents): never because of what a message says (seed
  003 §8.1: a hijacked client must not grant permission); mail/permits.py is the only maker.

The tokens themselves travel beside the note or a mail header in the sealed entry (envelope.py
`HeaderPlain.grant`): a token proves itself (the owner's signature, for the owner's inbox), so a
grant needs no further signature, and a reply carries its grant without a separate note.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Annotated

from anonmail import crypto, wire
from anonmail.errors import RemoteProtocolError
from anonmail.records.certs import AddressCert
from anonmail.wire import Size

NOTE_DOMAIN = "permit-note"
MAX_NOTE = 1000  # characters of the RTS text shown to the owner


class NoteKind(enum.IntEnum):
    REQUEST = 1  # RTS
    GRANT = 2  # CTS / refill


class ForgedNote(RemoteProtocolError):
    """A note that opened but does not verify: forged, altered, or not for us."""


@wire.message(tag=65)
@dataclass(frozen=True, slots=True)
class PermitNote:
    sender: AddressCert
    recipient: Annotated[str, Size(3, 254)]
    kind: NoteKind
    note: Annotated[str, Size(0, MAX_NOTE)]
    date: Annotated[int, wire.U64]
    signature: Annotated[bytes, Size(64)]


def make_note(sender: AddressCert, sign: crypto.SigningKey, recipient: str, kind: NoteKind,
              note: str, now: float) -> PermitNote:
    unsigned = PermitNote(sender, recipient, kind, note[:MAX_NOTE], int(now), bytes(64))
    return replace(unsigned, signature=sign.sign(NOTE_DOMAIN, wire.signing_bytes(unsigned)))


def verify_note(note: PermitNote, me: str, trusted_cas: frozenset[bytes], now: float,
                skew: int, max_age: int) -> None:
    """Raise ForgedNote unless `note` is for `me`, recent, and signed by its sender."""
    if note.recipient != me:
        raise ForgedNote("note is for another recipient")
    if note.date > now + skew or note.date < now - max_age - skew:
        raise ForgedNote("note date is in the future or too old")
    try:
        note.sender.verify(trusted_cas, note.date, skew)
        crypto.verify(note.sender.sign_key, NOTE_DOMAIN, wire.signing_bytes(note),
                      note.signature)
    except RemoteProtocolError as e:
        raise ForgedNote(f"sender not authentic: {e}") from e
