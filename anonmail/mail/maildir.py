"""The user agent's local store: what it has taken from the network, on disk before it tells the
network to forget it (DESIGN.md §4: READ then ACK; §5 Check).

Layout under one root directory (created 0700; every file 0600):

| path | concept | one file per |
|---|---|---|
| `Maildir/` | retrieved messages, the exact RFC 5322 bytes (`mailbox.Maildir`) | message |
| `Maildir/.Outbox/` | composed messages not yet fully sent (kept when a send fails) | message |
| `Maildir/.Sent/` | messages sent | message |
| `pending/<hex>[-<hex>]` | a verified header waiting for its body (notices.py) | notice |
| `seen/<hex>` | a verified inbox entry, until it can no longer verify (notices.py) | entry id |
| `waiting/<hex>` | an Outbox message's recipients not yet delivered, and why | message id |
| `permits.cbor` | the permit book (permit/book.py): who may write to whom | - |

Invariants:
* every write is durable before the call returns: written to a temporary file, fsynced, renamed
  into place, the directory fsynced (fileio.write_private; Maildir's own tmp -> new protocol).
  So when `check` ACKs an entry, its notification is on disk (threat T-CHECK-CRASH);
* names are derived from hashes of message ids and entry ids, never from addresses, subjects or
  the host name; writing the same message twice leaves one file (idempotent after a crash);
* pending notifications hold body keys and delete secrets: they never leave this directory and
  are removed once the message is retrieved and deleted from the network;
* a Maildir message is one regular file in new/ or cur/; its *base name* (before the first
  ":") identifies it, whatever its info suffix (":2,FLAGS", Maildir flags: S seen, R replied,
  ...). Retrieval delivers into new/; reading (`set_flags`) renames it into cur/ with the
  flags, the directories fsynced. Other programs (the IMAP/POP3 gateway, a mail client) may
  rename or delete files at any time: every lookup finds a message by base name in new/ or
  cur/, and a file that vanishes between listing and reading is looked up again, then
  reported as gone (None), never as an error.
"""

from __future__ import annotations

import mailbox
import os
import re
import stat
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Annotated

from anonmail import wire
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.fileio import fsync_dir, write_private
from anonmail.mail.notices import PENDING, SEEN, NoticeStore
from anonmail.mail.notices import PendingNotice as PendingNotice  # re-exported
from anonmail.mail.notices import message_name as message_name  # re-exported

WAITING = "waiting"
OUTBOX = "Outbox"
SENT = "Sent"
INFO = ":2,"  # Maildir info: flags follow, in ASCII order
SEEN_FLAG = "S"
REPLIED_FLAG = "R"
HEAD_LIMIT = 256 << 10  # bytes read for a listing's header fields
_HEX_NAME = re.compile(r"[0-9a-f]{40}")
_RETRIES = 3  # lookups of a file renamed under us before it counts as gone


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message file of a Maildir folder, as listed."""

    name: str  # base name: stable across new/ -> cur/ and flag changes
    path: Path  # where it was when listed
    flags: str  # the letters after ":2," ("" in new/ or without info)

    @property
    def seen(self) -> bool:
        return SEEN_FLAG in self.flags

    @property
    def key(self) -> str:
        """40 hex digits naming the message for the user (the first 8 are its short id):
        the base name itself for the names anonmail and the gateway write (`message_name`),
        a hash of it for any other."""
        return self.name if _HEX_NAME.fullmatch(self.name) else message_name("file:" + self.name)


def _split_name(file_name: str) -> tuple[str, str]:
    """(base name, flags) of a Maildir file name."""
    base, colon, info = file_name.partition(":")
    return base, info[2:] if colon and info.startswith("2,") else ""


@wire.struct
@dataclass(frozen=True, slots=True)
class Waiting:
    """One recipient an Outbox message has not reached yet."""

    address: Annotated[str, wire.Size(3, 254)]
    reason: Annotated[str, wire.Size(0, 300)]  # one line for `anonmail outbox`
    permit: bool  # waiting for the recipient's permission (goes out when it comes)
    since: Annotated[int, wire.U64]


@wire.message(tag=106)
@dataclass(frozen=True, slots=True)
class OutboxState:
    message_id: Annotated[str, wire.Size(3, 128)]
    waiting: Annotated[tuple[Waiting, ...], wire.Size(0, 1000)]


def _message_id_of(data: bytes) -> str | None:
    value = BytesHeaderParser().parsebytes(data).get("Message-ID")
    return None if value is None else str(value).strip()


def _read_file(path: Path, limit: int | None) -> bytes | None:
    """A file's bytes (at most `limit`); None if it is gone or a symbolic link took its
    place."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read() if limit is None else f.read(limit)


class LocalMail(NoticeStore):
    """The mail directory: the Maildir with its Outbox and Sent folders, what each Outbox
    message still waits for, and (NoticeStore, notices.py) pending notices and seen records."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for sub in (PENDING, SEEN, WAITING):
                (root / sub).mkdir(mode=0o700, exist_ok=True)
            self.maildir = mailbox.Maildir(str(root / "Maildir"), factory=None, create=True)
            for folder in (OUTBOX, SENT):
                if folder not in self.maildir.list_folders():
                    self.maildir.add_folder(folder)
        except OSError as e:
            raise UserError(f"cannot use the mail directory {root}: {e.strerror}") from None

    # -- Maildir ---------------------------------------------------------------------------------

    def _folder_path(self, folder: str | None) -> Path:
        base = self.root / "Maildir"
        return base if folder is None else base / f".{folder}"

    def _put(self, folder: str | None, name: str, data: bytes) -> None:
        """Maildir delivery, durably: tmp/<name> (fsynced) -> new/<name>, directory fsynced."""
        base = self._folder_path(folder)
        tmp = base / "tmp" / name
        write_private(tmp, data)
        os.replace(tmp, base / "new" / name)
        fsync_dir(base / "new")

    def _files(self, folder: str | None) -> dict[str, StoredMessage]:
        """Every message file of a folder by base name (new/ first; symbolic links and other
        non-regular files ignored, never followed)."""
        found: dict[str, StoredMessage] = {}
        for sub in ("new", "cur"):
            try:
                entries = list(os.scandir(self._folder_path(folder) / sub))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    regular = stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode)
                except FileNotFoundError:
                    continue  # removed meanwhile
                base, flags = _split_name(entry.name)
                if regular and base:
                    found.setdefault(base, StoredMessage(base, Path(entry.path), flags))
        return found

    def _find(self, folder: str | None, name: str) -> StoredMessage | None:
        """The file of base name `name` in new/ or cur/, whatever its flags."""
        base = self._folder_path(folder)
        for p in (base / "new" / name, base / "cur" / name):  # the common case: no scan
            if p.is_file() and not p.is_symlink():
                return StoredMessage(name, p, "")
        return self._files(folder).get(name)

    def _get(self, folder: str | None, name: str, limit: int | None = None) -> bytes | None:
        for _ in range(_RETRIES):
            found = self._find(folder, name)
            if found is None:
                return None
            data = _read_file(found.path, limit)
            if data is not None:
                return data
        return None  # renamed again and again, or deleted: gone for us

    def has_message(self, message_id: str) -> bool:
        return self._find(None, message_name(message_id)) is not None

    def add_message(self, message_id: str, data: bytes) -> str:
        """Keep a retrieved message (idempotent: also when it was read and flagged meanwhile).
        Returns its Maildir key."""
        name = message_name(message_id)
        if self._find(None, name) is None:
            self._put(None, name, data)
        return name

    def get_message(self, message_id: str) -> bytes | None:
        return self._get(None, message_name(message_id))

    def message_keys(self) -> list[str]:
        """The base names of every retrieved message."""
        return sorted(self._files(None))

    def messages(self) -> list[StoredMessage]:
        """Every retrieved message (the INBOX folder), by base name."""
        return [m for _, m in sorted(self._files(None).items())]

    def read_stored(self, name: str) -> bytes | None:
        """The bytes of the message of base name `name`; None if it is gone."""
        return self._get(None, name)

    def read_head(self, name: str) -> bytes | None:
        """The first HEAD_LIMIT bytes of a message (its header fields, for a listing)."""
        return self._get(None, name, HEAD_LIMIT)

    def set_flags(self, name: str, add: str) -> bool:
        """Add Maildir flags (e.g. "S": seen) to a message: a rename into cur/ as
        `name:2,FLAGS`, both directories fsynced. Flags already there (ours or another
        program's) are kept. False if the message is gone."""
        cur = self._folder_path(None) / "cur"
        for _ in range(_RETRIES):
            found = self._find(None, name)
            if found is None:
                return False
            flags = "".join(sorted(set(found.flags) | set(add)))
            target = cur / f"{name}{INFO}{flags}"
            if found.path == target:
                return True
            try:
                os.rename(found.path, target)
            except FileNotFoundError:
                continue  # renamed or deleted by another program meanwhile: look again
            fsync_dir(cur)
            if found.path.parent != cur:
                fsync_dir(found.path.parent)
            return True
        return False

    # -- outgoing --------------------------------------------------------------------------------

    def queue_outgoing(self, message_id: str, data: bytes) -> str:
        """Keep a composed message in the Outbox before the network sees any of it."""
        name = message_name(message_id)
        self._put(OUTBOX, name, data)
        return name

    def outgoing(self, message_id: str) -> bytes | None:
        return self._get(OUTBOX, message_name(message_id))

    def outbox_keys(self) -> list[str]:
        return sorted(self.maildir.get_folder(OUTBOX).keys())

    def mark_sent(self, message_id: str) -> None:
        """Outbox -> Sent (both directories fsynced)."""
        name = message_name(message_id)
        src = self._folder_path(OUTBOX) / "new" / name
        dst = self._folder_path(SENT) / "new" / name
        if not src.exists():
            return
        os.replace(src, dst)
        fsync_dir(dst.parent)
        fsync_dir(src.parent)
        self.set_waiting(message_id, ())

    def drop_outgoing(self, message_id: str) -> bool:
        """Remove a message from the Outbox (the user's `outbox --drop`)."""
        name = message_name(message_id)
        gone = False
        for sub in ("new", "cur"):
            p = self._folder_path(OUTBOX) / sub / name
            if p.exists():
                p.unlink()
                fsync_dir(p.parent)
                gone = True
        self.set_waiting(message_id, ())
        return gone

    def set_waiting(self, message_id: str, waiting: tuple[Waiting, ...]) -> None:
        """Record whom an Outbox message still has to reach (empty: nobody; forget it)."""
        path = self.root / WAITING / message_name(message_id)
        if waiting:
            write_private(path, wire.encode(OutboxState(message_id, waiting)))
        elif path.exists():
            path.unlink()

    def waiting(self, message_id: str) -> tuple[Waiting, ...]:
        path = self.root / WAITING / message_name(message_id)
        try:
            return wire.decode(path.read_bytes(), OutboxState, max_size=1 << 20).waiting
        except (OSError, RemoteProtocolError):
            return ()

    def outbox(self) -> list[OutboxState]:
        """Every Outbox message with its recipients still to reach (none recorded: a send that
        failed before it could say whom it missed, or one interrupted)."""
        out = []
        for key in self.outbox_keys():
            data = self.maildir.get_folder(OUTBOX).get_bytes(key)
            mid = _message_id_of(data)
            if mid is not None:
                out.append(OutboxState(mid, self.waiting(mid)))
        return out

    def sent_keys(self) -> list[str]:
        return sorted(self.maildir.get_folder(SENT).keys())
