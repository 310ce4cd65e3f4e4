"""Reading commands: `anonmail inbox`, `read`, `reply`, `discard` (docs/cli.md).

Messages are listed and named as commands/listing.py says: one row per retrieved message and
per pending notice (per Message-ID and sender), each with a stable id; `inbox` marks a notice
held or expired and says why, `discard` gives one up.

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
from pathlib import Path

from anonmail.agent import held as held_mod
from anonmail.clock import SystemClock
from anonmail.commands import common, jobs
from anonmail.commands.listing import Row, listing, resolve, short_ids
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
from anonmail.mail.check import retrieved
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import REPLIED_FLAG, SEEN_FLAG, LocalMail, message_name
from anonmail.rng import SystemRng

SUBJECT_WIDTH = 60
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

DISCARD_HELP = """\
Give up a message that is still on the network: one `anonmail inbox` marks held (its body is
unreadable, so it is not retrieved by itself) or expired (its body has left the network), or
any other you do not want. Its notice is removed and your right to its body dropped on the
network (not needed for an expired one); nothing else is fetched or acknowledged. ID is the
id `anonmail inbox` shows; a retrieved message is deleted with your mail client instead."""
DISCARD_EX = """\
examples:
  anonmail discard 3f2a9c1e
  anonmail inbox --offline      # held and expired messages are marked, with the reason"""


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

    d = sub.add_parser("discard", help="give up a message still on the network (held, "
                                       "expired, unwanted)",
                       **parser_kwargs(DISCARD_HELP, DISCARD_EX))
    shared(d)
    d.add_argument("id", help="the id `anonmail inbox` shows")
    _direct_option(d, "drop your right to the body")
    d.set_defaults(func=cmd_discard)


def cmd_inbox(args: argparse.Namespace) -> int:
    home = common.home_of(args)
    if not args.offline:
        jobs.run_job(args, "check", {}).show()
    rows = listing(LocalMail(home.root / MAIL_DIR), time.time())
    if not rows:
        print("your inbox is empty")
        return 0
    ids = short_ids([r.key for r in rows])
    width = max(len(r.sender) for r in rows)
    state_width = max(4, *(len(r.state) for r in rows))  # wider only for held, expired
    for r in rows:
        when = _local(r.date) if r.date else "?"
        subject = r.subject if len(r.subject) <= SUBJECT_WIDTH else \
            r.subject[:SUBJECT_WIDTH - 1] + "…"
        line = f"{ids[r.key]}  {r.state:{state_width}}  {when:16}  " \
               f"{r.sender:{width}}  {subject}"
        print(line.rstrip())
    notes = [_note(ids[r.key], r) for r in rows if r.state in ("held", "expired")]
    for note in notes:
        print(note, file=sys.stderr)
    if notes:
        print("`anonmail read ID` tries a held message once more; `anonmail discard ID` gives "
              "a held or expired one up", file=sys.stderr)
    return 0


def _local(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _note(shown: str, row: Row) -> str:
    """One line on why a listed notice is not retrieved by itself."""
    if row.expired is not None:
        return f"{shown}: expired: its body left the network on {_local(row.expired)}; it " \
               "can no longer be retrieved"
    return f"{shown}: held, not retrieved by itself: {row.held or 'its body is unreadable'}"


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
    if row.expired is not None:
        raise UserError(f"{row.message_id} expired: its body left the network on "
                        f"{_local(row.expired)}; `anonmail discard` gives it up")
    sender = row.notice_sender

    def here() -> bool:  # this sender's message, not another's reusing the Message-ID
        return local.has_message(row.message_id) if sender is None else \
            retrieved(local, row.message_id, sender)

    if not here():  # `anonmail run` may have fetched it meanwhile
        try:
            jobs.run_job(args, "retrieve", {"message_id": row.message_id, "sender": sender},
                         identity=identity).show()
        except UserError:
            if not here():  # not "already retrieved" meanwhile
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
    name, data = fetch(args, local, resolve(listing(local, time.time()), args.id))
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
    row = resolve(listing(local, time.time()), args.id)
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


def cmd_discard(args: argparse.Namespace) -> int:
    """Give up a message still on the network (a pending notice: held, expired, or one you do
    not want): the notice goes, and with it (unless the body expired) your right to the body
    on the network. Nothing else is done: no check, so nothing new is ACKed."""
    home = common.home_of(args)
    local = LocalMail(home.root / MAIL_DIR)
    rows = listing(local, time.time())
    row = resolve(rows, args.id)
    shown = short_ids([r.key for r in rows])[row.key]
    if row.notice_sender is None:
        raise UserError(f"{shown} is in your Maildir, not waiting on the network: delete it "
                        "with your mail client")
    if row.expired is not None:  # the body is gone: no right to drop, no network needed
        local.remove_pending(row.message_id, row.notice_sender)
        held_mod.release(local.root, row.message_id, row.notice_sender)
    else:
        jobs.run_job(args, "discard", {"message_id": row.message_id,
                                       "sender": row.notice_sender}).show()
    print(f"discarded {shown} ({row.state}): {row.sender}  {row.subject}".rstrip())
    return 0
