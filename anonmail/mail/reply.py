"""Replies: the message `anonmail reply` sends for a retrieved one (RFC 5322 §3.6.4).

`compose_reply(original, own address, text, ...)` builds an ordinary `Composed` message
(compose.py, so every check of a new message applies) that:

* goes To the original's Reply-To, else its From; with `reply_all`, Cc the original's To and
  Cc recipients too. Our own address is left out (a reply to our own message goes to its
  recipients instead), and nobody is named twice;
* has Subject "Re: <subject>", not doubled when the subject already starts with "Re:";
* carries In-Reply-To (the original's Message-ID) and References (the original's References,
  else its In-Reply-To, then its Message-ID), so mail clients thread it;
* holds the user's text, then "On DATE, SENDER wrote:" and the original's text part quoted
  with "> ", then the attachments.

Invariants: the original is someone else's input: only its addresses, subject, date, sender
and msg-ids (`<...>` without spaces or control characters, at most MAX_REFERENCES) and its
text part, quoted, go into the reply; control characters in what is copied become spaces
(text keeps tabs and line ends). Every header read is inside `compose.reading`: the stdlib
parses a header only when it is read and raises on some hostile values, which must be one
UserError line, not a traceback (threat T-MAIL-HOSTILE-BODY). Nothing here touches the network
or the disk.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Sequence
from email.message import EmailMessage

from anonmail.clock import Clock
from anonmail.errors import UserError
from anonmail.mail.compose import MAX_SUBJECT, Attachment, Composed, compose, reading
from anonmail.records.certs import normalize_address, normalize_address_or_none
from anonmail.rng import Rng

MAX_REFERENCES = 20  # msg-ids kept in References: the first and the latest ones
_MSG_ID = re.compile(r"<[^<>\s\x00-\x1f\x7f]{1,126}>")
_ALREADY_RE = re.compile(r"\s*re\s*(\[\d+\])?\s*:", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # tab and line feed stay
_HINT = "write a new message with `anonmail send` instead"


def parse(data: bytes) -> EmailMessage:
    """A retrieved message, parsed for replying (UserError if it cannot be)."""
    try:
        msg = email.message_from_bytes(data, policy=email.policy.default)
    except Exception as e:  # the parser is lenient; what it raises means a broken message
        raise UserError(f"the original message cannot be parsed ({type(e).__name__})") from None
    assert isinstance(msg, EmailMessage)
    return msg


def one_line(text: str) -> str:
    """`text` for one line: control characters (line breaks, escapes) become spaces."""
    return _CONTROL.sub(" ", text).strip()


def addresses(msg: EmailMessage, field: str) -> list[str]:
    """The valid addresses of a header field, normalized (addresses that are not addr-specs
    skipped). UserError if the field cannot be parsed at all: guessing another recipient for
    a reply would be worse than saying so."""
    out = []
    with reading(f"the {field.title()} header", _HINT):
        for value in msg.get_all(field) or []:
            for addr in getattr(value, "addresses", ()):
                checked = normalize_address_or_none(str(addr.addr_spec))
                if checked is not None:
                    out.append(checked)
    return list(dict.fromkeys(out))


def reply_subject(subject: str) -> str:
    subject = one_line(subject)
    if not _ALREADY_RE.match(subject):
        subject = f"Re: {subject}".rstrip()
    return subject[:MAX_SUBJECT]


def recipients(msg: EmailMessage, own: str, *,
               reply_all: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(To, Cc) of a reply to `msg` from `own`."""
    own = normalize_address(own)
    sender = addresses(msg, "from")
    if sender and sender[0] == own:  # our own message: to the people it went to
        to = addresses(msg, "to")
        cc = addresses(msg, "cc") if reply_all else []
    else:
        to = addresses(msg, "reply-to") or sender
        cc = [*addresses(msg, "to"), *addresses(msg, "cc")] if reply_all else []
    to = [a for a in to if a != own] or ([own] if sender == [own] else [])
    if not to:
        raise UserError("the original names no address to reply to (no valid From or "
                        "Reply-To)")
    cc = [a for a in dict.fromkeys(cc) if a != own and a not in to]
    return tuple(to), tuple(cc)


def thread_ids(msg: EmailMessage) -> tuple[str | None, str | None]:
    """(In-Reply-To, References) of a reply to `msg` (None: the original has no usable
    Message-ID)."""
    with reading("the Message-ID, References or In-Reply-To header", _HINT):
        found = _MSG_ID.findall(str(msg.get("message-id", "")))
        if not found:
            return None, None
        mid = found[0]
        earlier = _MSG_ID.findall(" ".join(str(v) for v in msg.get_all("references") or []))
        if not earlier:
            earlier = _MSG_ID.findall(str(msg.get("in-reply-to", "")))[:1]
    refs = list(dict.fromkeys([*earlier, mid]))
    if len(refs) > MAX_REFERENCES:
        refs = [refs[0], *refs[-(MAX_REFERENCES - 1):]]
    return mid, " ".join(refs)


def text_of(msg: EmailMessage) -> str:
    """The original's text part ("" if it has none)."""
    with reading("the MIME structure", _HINT):
        return _text_of(msg)


def _text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    if part is None:
        return ""
    try:
        text = part.get_content()
    except (LookupError, ValueError, AssertionError):  # an unknown charset, a broken part
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    return _TEXT_CONTROL.sub(" ", str(text).replace("\r\n", "\n"))


def quoted(msg: EmailMessage) -> str:
    """"On DATE, SENDER wrote:" and the original's text, each line quoted with "> "."""
    with reading("the From or Date header", _HINT):
        sender = one_line(str(msg.get("from", ""))) or "the sender"
        date = one_line(str(msg.get("date", "")))
    head = f"On {date}, {sender} wrote:" if date else f"{sender} wrote:"
    lines = text_of(msg).rstrip("\n").split("\n")
    return "\n".join([head, *(f"> {line}".rstrip() for line in lines)]) + "\n"


def compose_reply(original: bytes, own: str, text: str, attachments: Sequence[Attachment], *,
                  reply_all: bool, clock: Clock, rng: Rng) -> Composed:
    """The reply from `own` to the message `original`, with the user's `text` above the
    quoted original."""
    msg = parse(original)
    to, cc = recipients(msg, own, reply_all=reply_all)
    in_reply_to, references = thread_ids(msg)
    headers = [] if in_reply_to is None or references is None else \
        [("In-Reply-To", in_reply_to), ("References", references)]
    text = text.rstrip("\n")
    body = (f"{text}\n\n" if text else "") + quoted(msg)
    with reading("the Subject header", _HINT):
        subject = reply_subject(str(msg.get("subject", "")))
    return compose(own, to, cc, (), subject, body, attachments, clock, rng, headers=headers)
