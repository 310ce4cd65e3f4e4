"""One IMAP4rev1 session as a state machine (RFC 3501 §3, §6): commands in, response octets out.
No I/O here except the Maildir; imap.py drives it over a socket (and runs the two commands
that need more client input, AUTHENTICATE without an initial response and IDLE).

Invariants:
* states are RFC 3501 §3: NOT_AUTH -> AUTH (LOGIN / AUTHENTICATE through ctx.logins) ->
  SELECTED <-> AUTH -> LOGOUT; a command outside its states is refused with BAD;
* a selected session owns its view: the list of UIDs whose positions are the sequence numbers.
  It changes only in `sync`, which reports new messages (EXISTS, RECENT), flag changes made by
  others (FETCH) and, only where allowed (not during FETCH, STORE, SEARCH: RFC 3501 §7.4.1),
  removed ones (EXPUNGE, highest first); a message removed meanwhile is skipped by FETCH;
* large FETCH answers are yielded one message at a time, so memory stays about one message.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
from collections.abc import Iterator

from anonmail.gateway.auth import Login
from anonmail.gateway.context import GatewayContext
from anonmail.gateway.imap_fetch import (
    Item,
    Part,
    bodystructure,
    crlf,
    envelope,
    parse_items,
    section,
)
from anonmail.gateway.imap_fetch import parse as parse_mime
from anonmail.gateway.imap_folders import FolderCommands, reply
from anonmail.gateway.imap_mailbox import (
    LETTERS,
    Folder,
    MailStore,
    flag_names,
    letters_of,
)
from anonmail.gateway.imap_parse import (
    Command,
    SeqSet,
    Value,
    astring,
    format_date_time,
    format_uid_set,
)
from anonmail.gateway.imap_search import Candidate, compile_search

FLAGS = b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft)"


class State(enum.Enum):
    NOT_AUTH = 1
    AUTH = 2
    SELECTED = 3
    LOGOUT = 4


def capabilities(ctx: GatewayContext) -> str:
    return ("IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN IDLE NAMESPACE UIDPLUS UNSELECT MOVE CHILDREN "
            f"APPENDLIMIT={ctx.max_size}")


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


class Session(FolderCommands):
    def __init__(self, ctx: GatewayContext, store: MailStore) -> None:
        self.ctx, self.store = ctx, store
        self.state = State.NOT_AUTH
        self.failed_logins = 0
        self.folder: Folder | None = None
        self.read_only = False
        self.view: list[int] = []
        self.known: dict[int, str] = {}  # uid -> flag letters last reported
        self.recent: set[int] = set()
        self._cache: tuple[Folder, int, bytes, Part] | None = None

    def greeting(self) -> bytes:
        return reply(f"* OK [CAPABILITY {capabilities(self.ctx)}] anonmail IMAP ready")

    # -- login ----------------------------------------------------------------------------------

    def login(self, tag: str, user: str, password: str) -> bytes:
        result = self.ctx.logins.check(user, password)
        if result is Login.OK:
            self.state = State.AUTH
            return reply(f"{tag} OK [CAPABILITY {capabilities(self.ctx)}] logged in")
        self.failed_logins += 1
        if result is Login.LOCKED:
            return reply(f"{tag} NO [UNAVAILABLE] too many failed logins, try again later")
        return reply(f"{tag} NO [AUTHENTICATIONFAILED] authentication failed")

    def authenticate_plain(self, tag: str, response: bytes) -> bytes:
        """RFC 4616 PLAIN: base64 of authzid NUL authcid NUL password."""
        try:
            raw = b"" if response == b"=" else base64.b64decode(response, validate=True)
            authz, user, password = raw.decode("utf-8").split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return reply(f"{tag} BAD malformed PLAIN response")
        if authz and authz != user:
            return reply(f"{tag} NO [AUTHORIZATIONFAILED] cannot act for another user")
        return self.login(tag, user, password)

    # -- dispatch -------------------------------------------------------------------------------

    def handle(self, cmd: Command) -> Iterator[bytes]:
        tag, name, args = cmd.tag, cmd.name, cmd.args
        if name == "CAPABILITY":
            yield reply(f"* CAPABILITY {capabilities(self.ctx)}")
        elif name == "LOGOUT":
            self.state = State.LOGOUT
            yield reply("* BYE logging out")
        elif name == "NOOP":
            pass
        elif self.state is State.NOT_AUTH:
            yield self._not_auth(tag, name, args)
            return
        elif name in _AUTH_COMMANDS or (self.state is State.SELECTED
                                        and name in _SELECTED_COMMANDS):
            try:
                if name in ("SELECT", "EXAMINE"):
                    yield self._select(tag, name, args)
                else:
                    yield from getattr(self, "_" + name.lower().replace(" ", "_"))(tag, args)
            except OSError:  # the Maildir failed us (disk full, permissions): say so, go on
                yield reply(f"{tag} NO [SERVERBUG] the mailbox could not be read or written")
            finally:
                self._cache = None  # keep at most the message being fetched
            return
        else:
            yield reply(f"{tag} BAD unknown command or not valid in this state")
            return
        yield self.sync(expunge=True)
        yield reply(f"{tag} OK {name} completed")

    def _not_auth(self, tag: str, name: str, args: list[Value]) -> bytes:
        if name == "LOGIN" and len(args) == 2:
            user, password = astring(args[0]), astring(args[1])
            if user is not None and password is not None:
                return self.login(tag, user, password)
        if name == "AUTHENTICATE" and len(args) == 2 and isinstance(args[0], str):
            if args[0].upper() != "PLAIN":
                return reply(f"{tag} NO unsupported authentication mechanism")
            ir = args[1]
            return self.authenticate_plain(tag, ir.encode() if isinstance(ir, str) else b"")
        return reply(f"{tag} BAD expected LOGIN or AUTHENTICATE PLAIN")

    # -- mailboxes (authenticated state, RFC 3501 §6.3) ----------------------------------------

    def _select(self, tag: str, name: str, args: list[Value]) -> bytes:
        self.state, self.folder, self._cache = State.AUTH, None, None
        box = astring(args[0]) if len(args) == 1 else None
        f = self.store.folder(box) if box is not None else None
        if f is None:
            return reply(f"{tag} NO [NONEXISTENT] no such mailbox")
        self.folder, self.state = f, State.SELECTED
        self.read_only = name == "EXAMINE" or f.read_only
        self.recent = set(f.rescan(claim=not self.read_only))
        self.view = list(f.messages)
        self.known = {u: f.messages[u].letters for u in self.view}
        unseen = next((i for i, u in enumerate(self.view, 1) if "S" not in self.known[u]), None)
        out = [f"* FLAGS {FLAGS.decode()}",
               f"* OK [PERMANENTFLAGS {'()' if self.read_only else FLAGS.decode()}] flags",
               f"* {len(self.view)} EXISTS", f"* {len(self.recent)} RECENT",
               f"* OK [UIDVALIDITY {f.uidvalidity}] UIDs valid",
               f"* OK [UIDNEXT {f.uidnext}] predicted next UID"]
        if unseen is not None:
            out.append(f"* OK [UNSEEN {unseen}] first unseen")
        mode = "READ-ONLY" if self.read_only else "READ-WRITE"
        out.append(f"{tag} OK [{mode}] {name} completed")
        return b"".join(reply(x) for x in out)

    # -- the selected mailbox (RFC 3501 §6.4) ---------------------------------------------------

    def sync(self, *, expunge: bool) -> bytes:
        """Untagged updates for the selected mailbox since the last sync."""
        f = self.folder
        if self.state is not State.SELECTED or f is None:
            return b""
        try:
            self.recent |= set(f.rescan(claim=not self.read_only))
        except OSError:
            return b""  # the uid file could not be written: report nothing new yet
        out: list[str] = []
        if expunge:
            for i in range(len(self.view) - 1, -1, -1):
                uid = self.view[i]
                if uid not in f.messages:
                    out.append(f"* {i + 1} EXPUNGE")
                    del self.view[i]
                    self.known.pop(uid, None)
                    self.recent.discard(uid)
        last = self.view[-1] if self.view else 0
        added = {u for u in f.messages if u > last}
        if added:
            self.view += sorted(added)
            out += [f"* {len(self.view)} EXISTS", f"* {len(self.recent)} RECENT"]
        for seq, uid in enumerate(self.view, 1):
            m = f.messages.get(uid)
            if m is not None and self.known.get(uid) != m.letters:
                self.known[uid] = m.letters
                if uid not in added:
                    out.append(f"* {seq} FETCH (UID {uid} FLAGS ({self._flags(uid)}))")
        return b"".join(reply(x) for x in out)

    def _flags(self, uid: int) -> str:
        assert self.folder is not None
        m = self.folder.messages.get(uid)
        names = flag_names(m.letters if m else "") + (["\\Recent"] if uid in self.recent else [])
        return " ".join(names)

    def _selected(self, text: str, by_uid: bool) -> list[tuple[int, int]]:
        """(seq, uid) of the view's messages in a sequence set (ValueError if malformed)."""
        largest = (self.view[-1] if by_uid else len(self.view)) if self.view else 0
        wanted = SeqSet(text, largest)
        return [(s, u) for s, u in enumerate(self.view, 1) if (u if by_uid else s) in wanted]

    def _check(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        yield self.sync(expunge=True)
        yield reply(f"{tag} OK CHECK completed")

    def _close(self, tag: str, args: list[Value], expunge: bool = True) -> Iterator[bytes]:
        if expunge and self.folder is not None and not self.read_only:
            self.folder.expunge([u for u, m in self.folder.messages.items() if "T" in m.letters])
        self.state, self.folder, self.view, self._cache = State.AUTH, None, [], None
        yield reply(f"{tag} OK closed")

    def _unselect(self, tag: str, args: list[Value]) -> Iterator[bytes]:  # RFC 3691
        return self._close(tag, args, expunge=False)

    def _expunge(self, tag: str, args: list[Value], uids: str | None = None) -> Iterator[bytes]:
        f = self.folder
        assert f is not None
        if self.read_only:
            yield reply(f"{tag} NO [READ-ONLY] mailbox is read-only")
            return
        try:
            chosen = {u for _, u in self._selected(uids, True)} if uids else None
        except ValueError:
            yield reply(f"{tag} BAD bad UID set")
            return
        f.expunge([u for u, m in f.messages.items()
                   if "T" in m.letters and (chosen is None or u in chosen)])
        yield self.sync(expunge=True)
        yield reply(f"{tag} OK EXPUNGE completed")

    def _uid_expunge(self, tag: str, args: list[Value]) -> Iterator[bytes]:  # RFC 4315 §2.1
        if len(args) != 1 or not isinstance(args[0], str):
            return iter([reply(f"{tag} BAD expected a UID set")])
        return self._expunge(tag, args, args[0])

    def _search(self, tag: str, args: list[Value], by_uid: bool = False) -> Iterator[bytes]:
        f = self.folder
        assert f is not None
        try:
            pred = compile_search(args, len(self.view), self.view[-1] if self.view else 0)
        except LookupError:
            yield reply(f"{tag} NO [BADCHARSET (UTF-8 US-ASCII)] unsupported charset")
            return
        except ValueError:
            yield reply(f"{tag} BAD bad search query")
            return
        hits = []
        for seq, uid in enumerate(self.view, 1):
            m = f.messages.get(uid)
            if m is not None and pred(Candidate(seq, uid, m.letters, uid in self.recent, m.mtime,
                                                functools.partial(f.read, uid))):
                hits.append(str(uid if by_uid else seq))
        yield reply(" ".join(["* SEARCH", *hits]))
        yield self.sync(expunge=by_uid)
        yield reply(f"{tag} OK SEARCH completed")

    def _uid_search(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        return self._search(tag, args, True)

    def _fetch(self, tag: str, args: list[Value], by_uid: bool = False) -> Iterator[bytes]:
        try:
            if len(args) != 2 or not isinstance(args[0], str):
                raise ValueError("arguments")
            items = parse_items(args[1])
            chosen = self._selected(args[0], by_uid)
        except ValueError:
            yield reply(f"{tag} BAD expected a sequence set and fetch attributes")
            return
        if by_uid and not any(i.name == "UID" for i in items):
            items.insert(0, Item("UID"))
        for seq, uid in chosen:
            yield self._fetch_one(seq, uid, items)
        yield self.sync(expunge=by_uid)
        yield reply(f"{tag} OK FETCH completed")

    def _uid_fetch(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        return self._fetch(tag, args, True)

    def _fetch_one(self, seq: int, uid: int, items: list[Item]) -> bytes:
        f = self.folder
        assert f is not None
        m = f.messages.get(uid)
        if m is None:
            return b""
        if self._cache and self._cache[:2] == (f, uid):
            data, root = self._cache[2:]
        elif any(i.name not in ("UID", "FLAGS", "INTERNALDATE") for i in items):
            raw = f.read(uid)
            if raw is None:
                return b""
            data = crlf(raw)
            root = parse_mime(data)
            self._cache = (f, uid, data, root)
        else:
            data, root = b"", Part(b"", b"", [])
        names = [i.name for i in items]
        seen = any(i.sets_seen for i in items) and not self.read_only and "S" not in m.letters
        if seen and f.set_letters(uid, m.letters + "S"):
            self.known[uid] = m.letters
            if "FLAGS" not in names:
                items = [*items, Item("FLAGS")]
        out: list[bytes] = []
        for i in items:
            if i.name == "UID":
                out.append(b"UID %d" % uid)
            elif i.name == "FLAGS":
                out.append(f"FLAGS ({self._flags(uid)})".encode())
            elif i.name == "INTERNALDATE":
                out.append(f'INTERNALDATE "{format_date_time(m.mtime)}"'.encode())
            elif i.name == "RFC822.SIZE":
                out.append(b"RFC822.SIZE %d" % len(data))
            elif i.name == "ENVELOPE":
                out.append(b"ENVELOPE " + envelope(root))
            elif i.name in ("BODY", "BODYSTRUCTURE"):
                out.append(i.name.encode() + b" " + bodystructure(root, ext=i.name != "BODY"))
            elif i.name.startswith("RFC822"):
                part = {"RFC822": data, "RFC822.HEADER": root.header, "RFC822.TEXT": root.body}
                out.append(i.name.encode() + b" " + _literal(part[i.name]))
            else:
                content = section(data, root, i)
                label = i.label + (f"<{i.origin}>" if i.origin is not None else "")
                value = b"NIL" if content is None else _literal(content)
                out.append(label.encode() + b" " + value)
        return b"* %d FETCH (" % seq + b" ".join(out) + b")\r\n"

    def _store(self, tag: str, args: list[Value], by_uid: bool = False) -> Iterator[bytes]:
        f = self.folder
        assert f is not None
        what = str(args[1]).upper() if len(args) >= 3 and isinstance(args[1], str) else ""
        flags = args[2] if len(args) == 3 and isinstance(args[2], list) else args[2:]
        letters = letters_of([str(x) for x in flags])
        try:
            chosen = self._selected(str(args[0]), by_uid) if args else []
        except ValueError:
            chosen, letters = [], None
        if what.removesuffix(".SILENT") not in ("FLAGS", "+FLAGS", "-FLAGS") or letters is None:
            yield reply(f"{tag} BAD expected: sequence set, [+-]FLAGS[.SILENT], flag list")
            return
        if self.read_only:
            yield reply(f"{tag} NO [READ-ONLY] mailbox is read-only")
            return
        for seq, uid in chosen:
            m = f.messages.get(uid)
            if m is None:
                continue
            have = {c for c in m.letters if c in LETTERS}
            new = (set(letters) if what.startswith("FLAGS") else
                   have | set(letters) if what.startswith("+") else have - set(letters))
            if f.set_letters(uid, "".join(sorted(new))):
                self.known[uid] = m.letters
            if not what.endswith(".SILENT"):
                uid_item = f"UID {uid} " if by_uid else ""
                yield reply(f"* {seq} FETCH ({uid_item}FLAGS ({self._flags(uid)}))")
        yield self.sync(expunge=by_uid)
        yield reply(f"{tag} OK STORE completed")

    def _uid_store(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        return self._store(tag, args, True)

    def _copy(self, tag: str, args: list[Value], by_uid: bool = False,
              move: bool = False) -> Iterator[bytes]:
        f = self.folder
        assert f is not None
        box = astring(args[1]) if len(args) == 2 and isinstance(args[0], str) else None
        try:
            chosen = self._selected(str(args[0]), by_uid) if box is not None else None
        except ValueError:
            chosen = None
        if box is None or chosen is None:
            yield reply(f"{tag} BAD expected a sequence set and a mailbox")
            return
        dest = self.store.folder(box)
        if dest is None or dest.read_only or (move and self.read_only):
            code = "TRYCREATE" if dest is None else "CANNOT"
            yield reply(f"{tag} NO [{code}] cannot {'move' if move else 'copy'} there")
            return
        pairs = []
        for _, uid in chosen:
            m, data = f.messages.get(uid), f.read(uid)
            if m is not None and data is not None:
                pairs.append((uid, dest.append(data, m.letters, m.mtime)))
        code = ""
        if pairs:
            src, dst = format_uid_set([a for a, _ in pairs]), format_uid_set([b for _, b in pairs])
            code = f"[COPYUID {dest.uidvalidity} {src} {dst}] "
        if move:  # RFC 6851 §3.3: COPYUID untagged, then the expunges
            f.expunge([a for a, _ in pairs])
            yield reply(f"* OK {code}moved")
            code = ""
        yield self.sync(expunge=True)
        yield reply(f"{tag} OK {code}{'MOVE' if move else 'COPY'} completed")

    def _uid_copy(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        return self._copy(tag, args, True)

    def _move(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        return self._copy(tag, args, False, True)

    def _uid_move(self, tag: str, args: list[Value]) -> Iterator[bytes]:
        return self._copy(tag, args, True, True)


_AUTH_COMMANDS = {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
                  "LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE"}
_SELECTED_COMMANDS = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY",
                      "MOVE", "UID EXPUNGE", "UID SEARCH", "UID FETCH", "UID STORE", "UID COPY",
                      "UID MOVE"}
