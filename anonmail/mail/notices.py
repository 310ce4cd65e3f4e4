"""The user agent's records of inbox entries (split from maildir.py, whose `LocalMail` they
are part of): pending notices, one verified header per (Message-ID, sender) waiting for its
body, and seen records, one per verified inbox entry (DESIGN.md §5 Check; docs/mail.md).

| path | concept | one file per |
|---|---|---|
| `pending/<hex>[-<hex>]` | a verified header waiting for its body | message, sender |
| `seen/<hex>` | a verified inbox entry, until it can neither be served nor verify | entry id |

Invariants:
* every write is durable before the call returns (fileio.write_private), so when `check` ACKs
  an entry its notice is on disk (threat T-CHECK-CRASH);
* names are hashes of message ids, senders and entry ids, never an address or a subject;
* a Message-ID is no secret (every recipient reads it, and may sign a header reusing it), so
  notices are kept per (Message-ID, sender): the first for a Message-ID is
  pending/<message_name>, another sender's pending/<message_name>-<notice_key>
  (threat T-MAIL-DEDUP). A notice holds a body key and a delete secret: it never leaves this
  directory and goes once the message is retrieved and deleted, or discarded;
* a notice's body can exist on the network only until `body_gone_at` (its sender's stated
  expiry, and at most the longest TTL any honest node grants after we received it): past
  that, nothing can retrieve it and nobody should try (`expired`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from anonmail import crypto, wire
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.fileio import fsync_dir, write_private
from anonmail.mail.envelope import MailHeader
from anonmail.store.context import StoreLimits

PENDING = "pending"
SEEN = "seen"
MAX_TTL = StoreLimits().max_ttl  # the longest any honest node keeps a body


@wire.message(tag=105)
@dataclass(frozen=True, slots=True)
class PendingNotice:
    """A verified header waiting for its body to be retrieved."""

    entry_id: Annotated[bytes, wire.Size(32)]
    header: MailHeader
    received: Annotated[int, wire.U64]
    entry_expires: Annotated[int, wire.U64]

    @property
    def sender(self) -> str:
        return self.header.sender.address


def message_name(message_id: str) -> str:
    """The file name of a message, in the Maildir and pending/: a hash of its id (no host
    name, no time)."""
    return crypto.hash("maildir-name", message_id.encode()).hex()[:40]


def notice_key(message_id: str, sender: str) -> str:
    """40 hex digits naming the notice of (message id, sender) for the user when it is not
    the first notice of its Message-ID (which is named like the message: `message_name`)."""
    return crypto.hash("notice-key", f"{message_id}\n{sender}".encode()).hex()[:40]


def body_gone_at(notice: PendingNotice, skew: int) -> int:
    """When the body of a notice is gone from every honest node: the expiry its sender signed
    into the header, and at the latest MAX_TTL after we received the header (nodes clamp every
    TTL to it, and the body was stored before its header reached us), plus the clock skew."""
    return min(notice.header.expires, notice.received + MAX_TTL) + skew


def expired(notice: PendingNotice, now: float, skew: int) -> bool:
    """Whether the body can no longer be on the network (so retrieving it is pointless)."""
    return now > body_gone_at(notice, skew)


class NoticeStore:
    """The pending/ and seen/ directories under `root` (LocalMail creates them)."""

    root: Path

    # -- pending notifications -------------------------------------------------------------------

    def _pending_path(self, message_id: str, sender: str | None = None) -> Path:
        """One notice per (message id, sender): a Message-ID is no secret (a co-recipient reads
        it), and only the body shows whose it is. The first notice of a Message-ID is
        pending/<message_name> (the only name before senders were told apart); another
        sender's, pending/<message_name>-<notice_key>."""
        name = message_name(message_id)
        if sender is not None:
            name = f"{name}-{notice_key(message_id, sender)}"
        return self.root / PENDING / name

    def _pending_file(self, message_id: str, sender: str | None) -> Path | None:
        """The notice file of (message id, sender); sender None: the first notice, else the
        lowest-named other one (every lookup and remove_pending pick the same)."""
        first = self._pending_path(message_id)
        if sender is None:
            if first.exists():
                return first
            others = sorted(p for p in first.parent.glob(first.name + "-*")
                            if not p.name.endswith(".tmp"))
            return others[0] if others else None
        if (other := self._pending_path(message_id, sender)).exists():
            return other
        try:
            held = wire.decode(first.read_bytes(), PendingNotice)
        except (FileNotFoundError, RemoteProtocolError):
            return None  # a damaged first file is left for the user, never overwritten
        return first if held.sender == sender else None

    def add_pending(self, notice: PendingNotice) -> bool:
        """Record a notification; False if one for this message from this sender is here."""
        mid, sender = notice.header.message_id, notice.sender
        if self._pending_file(mid, sender) is not None:
            return False
        path = self._pending_path(mid)
        write_private(self._pending_path(mid, sender) if path.exists() else path,
                      wire.encode(notice))
        return True

    def has_pending(self, message_id: str, sender: str | None = None) -> bool:
        return self._pending_file(message_id, sender) is not None

    def get_pending(self, message_id: str, sender: str | None = None) -> PendingNotice | None:
        path = self._pending_file(message_id, sender)
        try:
            return None if path is None else wire.decode(path.read_bytes(), PendingNotice)
        except FileNotFoundError:
            return None
        except RemoteProtocolError:
            raise UserError(f"the pending notification file {path} is damaged") from None

    def pending_keyed(self) -> list[tuple[str, PendingNotice]]:
        """Every pending notification with the key naming it for the user (the first notice
        of a Message-ID: `message_name`, as its retrieved message will be; another sender's:
        `notice_key`), oldest first."""
        found = []
        for p in sorted((self.root / PENDING).iterdir()):
            if p.name.endswith(".tmp"):
                continue
            try:
                notice = wire.decode(p.read_bytes(), PendingNotice)
            except (FileNotFoundError, RemoteProtocolError):
                continue  # gone meanwhile, or damaged: left on disk for the user, skipped here
            mid = notice.header.message_id
            key = p.name.rpartition("-")[2]  # the notice_key, or the first's message_name
            found.append((notice.received, notice.header.date, mid, p.name, key, notice))
        return [(key, notice) for *_, key, notice in sorted(found, key=lambda f: f[:4])]

    def pending(self) -> list[PendingNotice]:
        """Every pending notification, oldest first."""
        return [n for _, n in self.pending_keyed()]

    def remove_pending(self, message_id: str, sender: str | None = None) -> None:
        path = self._pending_file(message_id, sender)
        if path is not None:
            path.unlink()
            fsync_dir(path.parent)

    # -- entries already handled -----------------------------------------------------------------

    def _seen_path(self, entry_id: bytes) -> Path:
        return self.root / SEEN / entry_id.hex()

    def seen(self, entry_id: bytes) -> bool:
        return self._seen_path(entry_id).exists()

    def mark_seen(self, entry_id: bytes, expires: int) -> None:
        """Remember a verified entry until `expires` (check.seen_until)."""
        write_private(self._seen_path(entry_id), str(int(expires)).encode())

    def prune_seen(self, now: float, horizon: float | None = None) -> int:
        """Forget entries past their time, and those kept beyond now + `horizon`, which no honest
        entry needs (left by versions that believed a replica's stated expiry)."""
        gone = 0
        for p in (self.root / SEEN).iterdir():
            try:
                expires = int(p.read_bytes())
            except ValueError:
                expires = 0
            if expires < now or (horizon is not None and expires > now + horizon):
                p.unlink()
                gone += 1
        return gone
