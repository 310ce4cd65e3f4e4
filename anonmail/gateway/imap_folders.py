"""The authenticated-state mailbox commands of an IMAP session (RFC 3501 §6.3): CREATE,
DELETE, RENAME (refused), SUBSCRIBE/UNSUBSCRIBE (every folder is subscribed), LIST/LSUB,
STATUS, APPEND, and NAMESPACE (RFC 2342). A mixin of imap_session.Session.

Invariants: folder names are checked by imap_mailbox.MailStore.path_of before any path is
built; LIST patterns are matched without regular expressions (no backtracking) and capped in
length; APPEND never writes into Outbox (the agent's queue) and answers APPENDUID (RFC 4315).
"""

from __future__ import annotations

from collections.abc import Iterator

from anonmail.gateway.context import GatewayContext
from anonmail.gateway.imap_fetch import nstring
from anonmail.gateway.imap_mailbox import DELIMITER, Folder, MailStore, letters_of
from anonmail.gateway.imap_parse import Value, astring, parse_date_time


def reply(text: str | bytes) -> bytes:
    return (text.encode() if isinstance(text, str) else text) + b"\r\n"


def list_match(pattern: str, name: str) -> bool:
    """LIST wildcards (RFC 3501 §6.3.8): * matches anything, % anything but the delimiter.
    Dynamic programming, O(len(pattern) * len(name)): no regex backtracking."""
    row = [True] + [False] * len(name)
    for p in pattern:
        if p in "*%":
            new = [row[0]] + [False] * len(name)
            for j, c in enumerate(name, 1):
                new[j] = row[j] or (new[j - 1] and (p == "*" or c != DELIMITER))
        else:
            new = [False] + [row[j - 1] and c == p for j, c in enumerate(name, 1)]
        row = new
    return row[-1]


class FolderCommands:
    ctx: GatewayContext
    store: MailStore
    folder: Folder | None

    def sync(self, *, expunge: bool) -> bytes:
        raise NotImplementedError

    def _mailbox_arg(self, tag: str, args: list[Value], n: int) -> str | None:
        return astring(args[0]) if len(args) == n else None

    def _create(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        box = self._mailbox_arg(tag, args, 1)
        err = "bad arguments" if box is None else self.store.create(box.rstrip(DELIMITER))
        yield reply(f"{tag} NO {err}" if err else f"{tag} OK CREATE completed")

    def _delete(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        box = self._mailbox_arg(tag, args, 1)
        if self.folder is not None and box is not None and (
                self.folder.name == self.store.canonical(box)):
            yield reply(f"{tag} NO cannot delete the selected mailbox")
            return
        err = "bad arguments" if box is None else self.store.delete(box)
        yield reply(f"{tag} NO {err}" if err else f"{tag} OK DELETE completed")

    def _rename(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        yield reply(f"{tag} NO [CANNOT] renaming mailboxes is not supported")

    def _subscribe(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        yield reply(f"{tag} OK every mailbox is subscribed")

    _unsubscribe = _subscribe

    def _namespace(self, tag: str, args: list[Value]) -> Iterator[bytes]:  # RFC 2342
        yield reply(f'* NAMESPACE (("" "{DELIMITER}")) NIL NIL')
        yield reply(f"{tag} OK NAMESPACE completed")

    def _list(self, tag: str, args: list[Value], verb: str = "LIST") -> Iterator[bytes]:
        ref, pattern = (astring(a) for a in args) if len(args) == 2 else (None, None)
        if ref is None or pattern is None or len(ref) + len(pattern) > 256:
            yield reply(f"{tag} BAD expected reference and mailbox pattern")
            return
        if pattern == "":
            yield reply(f'* {verb} (\\Noselect) "{DELIMITER}" ""')
        else:
            names = self.store.names()
            for name in names:
                pat = (ref + pattern).upper() if name == "INBOX" else ref + pattern
                if list_match(pat, name):
                    kids = any(n.startswith(name + DELIMITER) for n in names)
                    attr = "\\HasChildren" if kids else "\\HasNoChildren"
                    yield reply(f'* {verb} ({attr}) "{DELIMITER}" '.encode() + nstring(name))
        yield reply(f"{tag} OK {verb} completed")

    def _lsub(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        return self._list(tag, args, "LSUB")

    def _status(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        box = astring(args[0]) if len(args) == 2 and isinstance(args[1], list) else None
        f = self.store.folder(box) if box is not None else None
        if f is None or box is None:
            yield reply(f"{tag} NO [NONEXISTENT] no such mailbox")
            return
        f.rescan(claim=False)
        values = {"MESSAGES": len(f.messages), "UIDNEXT": f.uidnext,
                  "UIDVALIDITY": f.uidvalidity,
                  "RECENT": sum(m.sub == "new" for m in f.messages.values()),
                  "UNSEEN": sum("S" not in m.letters for m in f.messages.values())}
        items = [str(a).upper() for a in args[1]]
        if any(i not in values for i in items):
            yield reply(f"{tag} BAD unknown status item")
            return
        body = " ".join(f"{i} {values[i]}" for i in items)
        yield reply(b"* STATUS " + nstring(self.store.canonical(box)) + f" ({body})".encode())
        yield reply(f"{tag} OK STATUS completed")

    def _append(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        if len(args) < 2:
            yield reply(f"{tag} BAD expected mailbox, flags, date and a message literal")
            return
        box, data, flags, when = astring(args[0]), args[-1], [], None
        try:
            for extra in args[1:-1]:
                if isinstance(extra, list):
                    flags = [str(x) for x in extra]
                elif isinstance(extra, bytes):
                    when = parse_date_time(extra.decode("ascii"))
                else:
                    raise ValueError(extra)
        except (ValueError, UnicodeDecodeError, OverflowError):
            yield reply(f"{tag} BAD bad APPEND arguments")
            return
        letters = letters_of(flags)
        if box is None or not isinstance(data, bytes) or not data or letters is None:
            yield reply(f"{tag} BAD expected mailbox, flags, date and a message literal")
            return
        f = self.store.folder(box)
        if f is None:
            yield reply(f"{tag} NO [TRYCREATE] no such mailbox")
        elif f.read_only:
            yield reply(f"{tag} NO [CANNOT] {f.name} is written by anonmail only")
        elif len(data) > self.ctx.max_size:
            yield reply(f"{tag} NO [TOOBIG] message too big")
        else:
            uid = f.append(data, letters, when)
            yield self.sync(expunge=True)
            yield reply(f"{tag} OK [APPENDUID {f.uidvalidity} {uid}] APPEND completed")
