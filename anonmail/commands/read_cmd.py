"""Reading commands: `anonmail inbox`, `read`, `reply` (docs/cli.md).

A message is named by a *stable id*: the first 8 hex digits (more when two messages share
them) of its key, which is its Maildir base name (`maildir.message_name` of its Message-ID, the
same before and after retrieval) or, for a file another program put there, a hash of its base
name. Ids never change when other messages arrive, are read or are deleted; `read` and `reply`
take an id, any longer prefix of the key (at least 4 hex digits, unambiguous), or the
Message-ID with or without <>. Bare list positions are not accepted: they changed after every
read, and a number could also be the prefix of an id.

Reading a message marks it seen: Maildir's S flag, renaming the file into cur/ (maildir.py
`set_flags`), so every Maildir reader and the IMAP gateway agree; `inbox` shows new/read from
that flag. A reply marks the original replied (R) as well.

Invariants: what a sender wrote is shown with control characters replaced (no terminal escape
reaches the terminal; --raw gives the exact bytes); `--save` never writes outside DIR and never
replaces a file (`save_all`).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import email.utils
import mimetypes
import os
import re
import sys
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

from anonmail.clock import SystemClock
from anonmail.commands import common, jobs
from anonmail.commands.mail_cmd import (
    MAIL_DIR,
    _direct_option,
    parser_kwargs,
    read_attachments,
    read_input,
    read_text,
)
from anonmail.errors import UserError
from anonmail.mail import reply as reply_mod
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import REPLIED_FLAG, SEEN_FLAG, LocalMail, message_name
from anonmail.rng import SystemRng

SHORT_ID = 8  # hex digits of an id at least
MIN_PREFIX = 4  # hex digits `read` accepts at least
SUBJECT_WIDTH = 60
_HEX = re.compile(r"[0-9a-fA-F]+")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

INBOX_HELP = """\
Check the network for new mail (unless --offline), then list every message: its id, new or
read, the date (local time), the sender and the subject. The id stays the same for good: give
it to `anonmail read` or `anonmail reply`."""
INBOX_EX = """\
examples:
  anonmail inbox
  anonmail inbox --offline"""
READ_HELP = """\
Print a message (retrieving it from the network first if it is not here yet) and mark it read.
ID is the id `anonmail inbox` shows (or a longer prefix of the message's key), or its
Message-ID; list positions (1, 2, ...) are not ids. --save DIR writes the attachments into DIR
(created if missing) under their own names, made safe; an existing file is never replaced."""
READ_EX = """\
examples:
  anonmail read 3f2a9c1e
  anonmail read "<abcdefghijklmnopqrstuvwxyz234567@anonmail>"
  anonmail read 3f2a9c1e --save ~/Downloads
  anonmail read 3f2a9c1e --raw > message.eml"""
REPLY_HELP = """\
Reply to a message: To its sender (or its Reply-To), with --all also Cc everyone else it
went to (not you). Your text comes from FILE or standard input and goes above the quoted
original ("On DATE, SENDER wrote:", "> " lines); the subject gets "Re: " (once); In-Reply-To and
References thread it. It is sent exactly as `anonmail send` sends a message."""
REPLY_EX = """\
examples:
  echo "Thanks, see you then." | anonmail reply 3f2a9c1e
  anonmail reply 3f2a9c1e answer.txt --all --attach notes.pdf"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def shared(p: argparse.ArgumentParser) -> None:
        common.add_home_option(p)
        common.add_passphrase_option(p)

    i = sub.add_parser("inbox", help="collect new mail and list it",
                       **parser_kwargs(INBOX_HELP, INBOX_EX))
    shared(i)
    i.add_argument("--offline", action="store_true", help="list what is here; do not check")
    _direct_option(i, "check")
    i.set_defaults(func=cmd_inbox)

    r = sub.add_parser("read", help="print a message (retrieving it first if needed)",
                       **parser_kwargs(READ_HELP, READ_EX))
    shared(r)
    r.add_argument("id", help="the id `anonmail inbox` shows, or the Message-ID")
    r.add_argument("--raw", action="store_true", help="print the exact RFC 5322 bytes")
    r.add_argument("--save", type=Path, metavar="DIR", help="save the attachments into DIR")
    _direct_option(r, "retrieve")
    r.set_defaults(func=cmd_read)

    y = sub.add_parser("reply", help="reply to a message (text from FILE or standard input)",
                       **parser_kwargs(REPLY_HELP, REPLY_EX))
    shared(y)
    y.add_argument("id", help="the id `anonmail inbox` shows, or the Message-ID")
    y.add_argument("file", nargs="?", type=Path, help="your text (default: standard input)")
    y.add_argument("--all", action="store_true", help="reply to all: Cc the other recipients")
    y.add_argument("--attach", action="append", default=[], type=Path, metavar="FILE",
                   help="attach FILE (repeatable)")
    _direct_option(y, "send")
    y.set_defaults(func=cmd_reply)


# -- the listing ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    key: str  # 40 hex digits; the id shown is its shortest unambiguous prefix (>= SHORT_ID)
    message_id: str
    name: str | None  # the Maildir base name; None: still on the network (a pending notice)
    seen: bool
    date: float | None
    sender: str
    subject: str


def _date_of(value: object) -> float | None:
    try:
        dt = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    return dt.timestamp() if dt.tzinfo is not None else None


def _sender_of(msg: EmailMessage) -> str:
    """The From field as "Name <address>" (or the address alone), on one line."""
    try:
        addrs = msg["from"].addresses if msg.get("from") is not None else ()
    except (AttributeError, ValueError, IndexError):
        addrs = ()
    if not addrs:
        return reply_mod.one_line(str(msg.get("from", "")))
    a = addrs[0]
    name = reply_mod.one_line(str(a.display_name))
    return f"{name} <{a.addr_spec}>" if name else str(a.addr_spec)


def listing(local: LocalMail) -> list[Row]:
    """Every message: retrieved ones (the Maildir) and those still on the network (pending
    notices), oldest first."""
    rows: dict[str, Row] = {}
    for stored in local.messages():
        head = local.read_head(stored.name)
        if head is None:
            continue  # deleted meanwhile (a mail client)
        msg = BytesHeaderParser(policy=email.policy.default).parsebytes(head)
        assert isinstance(msg, EmailMessage)
        rows[stored.key] = Row(stored.key, str(msg.get("message-id", "")).strip(), stored.name,
                               stored.seen, _date_of(msg.get("date")), _sender_of(msg),
                               reply_mod.one_line(str(msg.get("subject", ""))))
    for n in local.pending():
        key = message_name(n.header.message_id)
        rows.setdefault(key, Row(key, n.header.message_id, None, False, float(n.header.date),
                                 n.header.sender.address, reply_mod.one_line(n.header.subject)))
    return sorted(rows.values(), key=lambda r: (r.date or 0.0, r.key))


def short_ids(keys: list[str]) -> dict[str, str]:
    """Each key's shortest prefix of at least SHORT_ID digits that no other key shares."""
    ordered = sorted(set(keys))
    out = {}
    for i, key in enumerate(ordered):
        shared = 0
        for other in ordered[max(0, i - 1):i] + ordered[i + 1:i + 2]:
            n = 0
            while n < len(key) and n < len(other) and key[n] == other[n]:
                n += 1
            shared = max(shared, n)
        out[key] = key[:max(SHORT_ID, shared + 1)]
    return out


def resolve(rows: list[Row], ident: str) -> Row:
    """The message `ident` names: a Message-ID (with or without <>), or a key prefix."""
    text = ident.strip()
    bare = text.strip("<>")
    if "@" in bare:
        for row in rows:
            if row.message_id.strip().strip("<>") == bare:
                return row
        raise UserError(f"no message {text}: run `anonmail inbox` to list them")
    if len(text) < MIN_PREFIX or not _HEX.fullmatch(text):
        raise UserError(f"{text!r} is not a message id: give the id `anonmail inbox` shows "
                        "(e.g. 3f2a9c1e) or the Message-ID")
    found = [row for row in rows if row.key.startswith(text.lower())]
    if not found:
        raise UserError(f"no message {text}: run `anonmail inbox` to list them")
    if len(found) > 1:
        ids = short_ids([r.key for r in rows])
        raise UserError(f"{text} names {len(found)} messages ("
                        f"{', '.join(ids[r.key] for r in found[:5])}): give more digits")
    return found[0]


def cmd_inbox(args: argparse.Namespace) -> int:
    home = common.home_of(args)
    if not args.offline:
        jobs.run_job(args, "check", {}).show()
    rows = listing(LocalMail(home.root / MAIL_DIR))
    if not rows:
        print("your inbox is empty")
        return 0
    ids = short_ids([r.key for r in rows])
    width = max(len(r.sender) for r in rows)
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.date)) if r.date else "?"
        subject = r.subject if len(r.subject) <= SUBJECT_WIDTH else \
            r.subject[:SUBJECT_WIDTH - 1] + "…"
        line = f"{ids[r.key]}  {'read' if r.seen else 'new':4}  {when:16}  " \
               f"{r.sender:{width}}  {subject}"
        print(line.rstrip())
    return 0


# -- one message ----------------------------------------------------------------------------------

def fetch(args: argparse.Namespace, local: LocalMail, row: Row,
          identity: AddressIdentity | None = None) -> tuple[str, bytes]:
    """(Maildir base name, bytes) of a listed message, retrieving it first if it is still on
    the network (the "retrieve" job)."""
    if row.name is not None:
        data = local.read_stored(row.name)
        if data is None:
            raise UserError(f"{row.message_id or row.key} is gone: a mail client deleted it "
                            "meanwhile")
        return row.name, data
    if not local.has_message(row.message_id):  # `anonmail run` may have fetched it meanwhile
        try:
            jobs.run_job(args, "retrieve", {"message_id": row.message_id},
                         identity=identity).show()
        except UserError:
            if not local.has_message(row.message_id):  # not "already retrieved" meanwhile
                raise
    data = local.get_message(row.message_id)
    if data is None:
        raise UserError(f"{row.message_id} could not be retrieved: try again later")
    return message_name(row.message_id), data


def _text(value: str) -> str:
    return _TEXT_CONTROL.sub(" ", value.replace("\r\n", "\n"))


def show(msg: EmailMessage) -> None:
    """Headers, the text (or HTML) part, and a line per attachment."""
    for h in ("From", "To", "Cc", "Date", "Subject", "Message-ID"):
        if msg.get(h):
            print(f"{h}: {reply_mod.one_line(str(msg[h]))}")
    print()
    body = msg.get_body(preferencelist=("plain", "html"))
    if body is not None:
        try:
            print(_text(str(body.get_content())))
        except (LookupError, ValueError, AssertionError):  # unknown charset, broken part
            print("(the text part cannot be decoded: --raw prints the whole message)")


@dataclass(frozen=True)
class Part:
    filename: str  # as the sender named it (may be anything: see `safe_filename`)
    content_type: str
    data: bytes


def attachments(msg: EmailMessage) -> list[Part]:
    """Every attachment: each leaf part marked as one or carrying a file name, except the
    text shown as the body."""
    body = msg.get_body(preferencelist=("plain", "html"))
    out = []
    for part in msg.walk():
        if part.is_multipart() or part is body:
            continue
        if part.get_content_disposition() != "attachment" and not part.get_filename():
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):  # a message/rfc822 part: the message itself
            inner = part.get_payload()
            first = inner[0] if isinstance(inner, list) and inner else None
            data = first.as_bytes() if isinstance(first, email.message.Message) else b""
        out.append(Part(str(part.get_filename() or ""), part.get_content_type(), data))
    return out


def safe_filename(name: str, content_type: str) -> str:
    """A file name for saving `name`: its last path component, without control characters or
    leading dots (no hidden files, no "..") and at most 200 bytes, keeping the extension;
    "attachment" (with the content type's extension) if nothing is left."""
    base = _TEXT_CONTROL.sub("", name.replace("\t", " ")).replace("\\", "/").rsplit("/", 1)[-1]
    base = base.strip().lstrip(".").strip()
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = base, ""
    while stem and len(f"{stem}.{ext}".encode()) > 200:
        stem = stem[:-1]
    if not stem:
        return "attachment" + (mimetypes.guess_extension(content_type) or "")
    return f"{stem}.{ext}" if ext else stem


def save_all(parts: list[Part], directory: Path) -> list[tuple[Path, int]]:
    """Write each part into `directory` (created if missing) under its safe name; a name
    taken already gets "-1", "-2", ... before its extension. Files are created exclusively
    (O_EXCL, no symbolic link followed), mode 0600: nothing is ever overwritten."""
    if not parts:
        raise UserError("the message has no attachments")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {directory}: {e.strerror}") from None
    saved = []
    for part in parts:
        name = safe_filename(part.filename, part.content_type)
        stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
        for n in range(1000):
            path = directory / (name if n == 0 else f"{stem}-{n}{dot}{ext}")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue
            except OSError as e:
                raise UserError(f"cannot write {path}: {e.strerror}") from None
            with os.fdopen(fd, "wb") as f:
                f.write(part.data)
            saved.append((path, len(part.data)))
            break
        else:
            raise UserError(f"{directory} holds {name} and 999 numbered copies: choose another "
                            "DIR")
    return saved


def cmd_read(args: argparse.Namespace) -> int:
    if args.raw and args.save is not None:
        raise UserError("--raw and --save are two commands: run one, then the other")
    home = common.home_of(args)
    local = LocalMail(home.root / MAIL_DIR)
    name, data = fetch(args, local, resolve(listing(local), args.id))
    if args.raw:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        msg = reply_mod.parse(data)
        show(msg)
        parts = attachments(msg)
        if args.save is not None:
            for path, size in save_all(parts, args.save):
                print(f"saved {path} ({size:,} bytes)")
        else:
            for part in parts:
                print(f"[attachment: {reply_mod.one_line(part.filename)} ({len(part.data):,} "
                      "bytes); --save DIR writes it to DIR]")
    local.set_flags(name, SEEN_FLAG)
    return 0


def cmd_reply(args: argparse.Namespace) -> int:
    home = common.home_of(args)
    local = LocalMail(home.root / MAIL_DIR)
    row = resolve(listing(local), args.id)
    text = read_text(read_input(args.file))
    attachments = read_attachments(args.attach)
    own, identity = jobs.own_address(args, home)  # the passphrase, if asked, is asked once
    name, data = fetch(args, local, row, identity)
    composed = reply_mod.compose_reply(data, own, text, attachments, reply_all=args.all,
                                       clock=SystemClock(), rng=SystemRng())
    params = jobs.send_params([], [], [], "", None, [], composed.data)
    jobs.run_job(args, "send", params, identity=identity).show()
    local.set_flags(name, SEEN_FLAG + REPLIED_FLAG)
    return 0
