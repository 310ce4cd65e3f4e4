"""The messages the reading commands name (commands/read_cmd.py: `inbox`, `read`, `reply`,
`discard`; docs/cli.md): one row per retrieved message and per pending notice, and the stable
ids that name them.

A message is named by a *stable id*: the first 8 hex digits (more when two messages share
them) of its key, which is its Maildir base name (`maildir.message_name` of its Message-ID, the
same before and after retrieval) or, for a file another program put there, a hash of its base
name. Ids never change when other messages arrive, are read or are deleted; commands take an
id, any longer prefix of the key (at least 4 hex digits, unambiguous), or the Message-ID with
or without <>. Bare list positions are not accepted: they changed after every read, and a
number could also be the prefix of an id.

A message still on the network is one row per pending notice, i.e. per (Message-ID, sender):
a co-recipient may sign a notice reusing a Message-ID, and it must neither hide the genuine
row nor be retrieved or discarded in its place. The first notice of a Message-ID has the
message's key; another sender's its own (`notices.notice_key`), also when the Maildir copy of
that Message-ID is another sender's message. A notice is marked *held* (its body found
unreadable: agent/held.py, with the reason) or *expired* (its body left the network:
`notices.expired`).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from anonmail.agent import held as held_mod
from anonmail.errors import UserError
from anonmail.mail import reply as reply_mod
from anonmail.mail.maildir import LocalMail
from anonmail.mail.notices import body_gone_at, expired, notice_key
from anonmail.records.params import MAINNET

SHORT_ID = 8  # hex digits of an id at least
MIN_PREFIX = 4  # hex digits a command accepts at least
SKEW = MAINNET.clock_skew  # tolerated clock disagreement, for a notice's expiry
_HEX = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True)
class Row:
    key: str  # 40 hex digits; the id shown is its shortest unambiguous prefix (>= SHORT_ID)
    message_id: str
    name: str | None  # the Maildir base name; None: still on the network (a pending notice)
    seen: bool
    date: float | None
    sender: str
    subject: str
    notice_sender: str | None = None  # a pending notice's signed sender: retrieve by it
    held: str | None = None  # a notice the agent holds (unreadable): why ("" not known)
    expired: int | None = None  # a notice whose body is gone from the network: since when

    @property
    def state(self) -> str:
        """new, read (the Seen flag), held (unreadable: not fetched by itself) or expired."""
        if self.name is not None:
            return "read" if self.seen else "new"
        return "expired" if self.expired is not None else "held" if self.held is not None \
            else "new"


def _date_of(value: object) -> float | None:
    try:
        dt = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    return dt.timestamp() if dt.tzinfo is not None else None


def _sender_of(msg: EmailMessage) -> tuple[str, str | None]:
    """The From field as "Name <address>" (or the address alone), on one line; and the
    address."""
    try:
        addrs = msg["from"].addresses if msg.get("from") is not None else ()
    except (AttributeError, ValueError, IndexError):
        addrs = ()
    if not addrs:
        return reply_mod.one_line(str(msg.get("from", ""))), None
    a = addrs[0]
    name = reply_mod.one_line(str(a.display_name))
    return (f"{name} <{a.addr_spec}>" if name else str(a.addr_spec)), str(a.addr_spec)


def listing(local: LocalMail, now: float | None = None) -> list[Row]:
    """Every message: retrieved ones (the Maildir) and those still on the network (pending
    notices, one row per notice: two senders' notices of one Message-ID are two rows),
    oldest first. A notice is marked held (agent/held.py) and, given `now`, expired."""
    rows: dict[str, Row] = {}
    senders: dict[str, str | None] = {}  # a Maildir row's From address
    for stored in local.messages():
        head = local.read_head(stored.name)
        if head is None:
            continue  # deleted meanwhile (a mail client)
        msg = BytesHeaderParser(policy=email.policy.default).parsebytes(head)
        assert isinstance(msg, EmailMessage)
        shown, senders[stored.key] = _sender_of(msg)
        rows[stored.key] = Row(stored.key, str(msg.get("message-id", "")).strip(), stored.name,
                               stored.seen, _date_of(msg.get("date")), shown,
                               reply_mod.one_line(str(msg.get("subject", ""))))
    held = held_mod.load(local.root)
    for key, n in local.pending_keyed():
        mid, sender = n.header.message_id, n.sender
        if key in rows:
            if senders.get(key) == sender:
                continue  # retrieved, its notice not yet removed (a crash): shown once
            key = notice_key(mid, sender)  # the Maildir copy of this Message-ID is another's
        gone = now is not None and expired(n, now, SKEW)
        rows[key] = Row(key, mid, None, False, float(n.header.date), sender,
                        reply_mod.one_line(n.header.subject), sender,
                        held.get((mid, sender)),
                        body_gone_at(n, 0) if gone else None)
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
        found = [row for row in rows if row.message_id.strip().strip("<>") == bare]
        if len(found) > 1:  # a Message-ID reused by another sender: one row each
            ids = short_ids([r.key for r in rows])
            raise UserError(f"{text} names {len(found)} messages ("
                            f"{', '.join(ids[r.key] for r in found[:5])}): give the id "
                            "`anonmail inbox` shows")
        if found:
            return found[0]
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
