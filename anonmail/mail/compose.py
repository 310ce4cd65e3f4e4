"""RFC 5322 messages with the stdlib `email` package: build one, prepare a submitted one, parse.

The bytes a `Composed` holds are exactly what every recipient retrieves (one stored body serves
all, DESIGN.md §5), so:

* they carry no Bcc header: Bcc recipients are named only in their own sealed header
  (envelope.py), and Bcc stays blind;
* the Message-ID is always ours and random, with no host name: `<base32@anonmail>` (DESIGN.md
  §2: the body key is H("body", message id), so it must be unguessable and must not say where it
  was written); a submitted message's own Message-ID is replaced;
* the Date comes from the injected Clock, in UTC (a local offset would tell the time zone);
  MIME boundaries come from the injected Rng (the stdlib would use `random`), so a message is
  reproducible from a seed;
* no header names the software, the host or the sender's IP address.

Input is checked before anything leaves the machine (seed 003 §3.4 "stability": reject what
breaks the standard): addresses are RFC 5322 dot-atom addr-specs (certs.normalize_address),
header values carry no CR/LF or other control characters, header bytes are ASCII, the header
block ends with an empty line, and the whole message stays under `MAX_MESSAGE`. Anything wrong
is one `UserError` line saying what to fix.

Reading a received message is reading a hostile sender's bytes: the stdlib parses a header only
when it is read (`msg.get`, `get_all`), and on some inputs raises IndexError, AttributeError,
TypeError and the like (threat T-MAIL-HOSTILE-BODY). Every read of header values goes through
`reading()`, which turns whatever the email package raises into one `UserError` line, so a
malformed message is an error the caller expects, never a traceback or a dead agent.
"""

from __future__ import annotations

import base64
import datetime as _dt
import email.policy
import email.utils
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser

from anonmail.clock import Clock
from anonmail.errors import AnonmailError, UserError
from anonmail.records.certs import normalize_address
from anonmail.rng import Rng

MAX_MESSAGE = 100 << 20  # bytes of RFC 5322 message (a 50 MB attachment is ~68 MB in base64)
MAX_RECIPIENTS = 100  # To + Cc + Bcc (each gets a delete hash: MAX_DELETE_HASHES is 256)
MAX_SUBJECT = 900  # characters (RFC 5322 §2.1.1: lines of at most 998)
MAX_LINE = 998
MESSAGE_ID_DOMAIN = "anonmail"
_MESSAGE_ID = re.compile(r"<[a-z2-7]{32}@anonmail>")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is allowed in header values
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Composed:
    """A message ready to send: its exact bytes and the envelope facts taken from it."""

    data: bytes  # RFC 5322, CRLF line ends, no Bcc header: what every recipient retrieves
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str
    date: int
    message_id: str

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every distinct recipient, To then Cc then Bcc."""
        return tuple(dict.fromkeys((*self.to, *self.cc, *self.bcc)))


@dataclass(frozen=True, slots=True)
class Parsed:
    """What a reader needs from a retrieved message's headers."""

    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    message_id: str


def new_message_id(rng: Rng) -> str:
    """`<32 base32 characters@anonmail>`: 160 random bits, no host name (DESIGN.md §2)."""
    return f"<{base64.b32encode(rng.bytes(20)).decode().lower()}@{MESSAGE_ID_DOMAIN}>"


def is_message_id(text: str) -> bool:
    return _MESSAGE_ID.fullmatch(text) is not None


def format_date(now: float) -> str:
    return email.utils.format_datetime(_dt.datetime.fromtimestamp(int(now), tz=_dt.UTC))


def _addresses(field: str, values: Iterable[str]) -> tuple[str, ...]:
    out = []
    for v in values:
        if _CONTROL.search(v):
            raise UserError(f"bad {field} address {v!r}: control characters are not allowed")
        out.append(normalize_address(v))
    return tuple(dict.fromkeys(out))


def _check_recipients(to: Sequence[str], cc: Sequence[str], bcc: Sequence[str]) -> None:
    every = (*to, *cc, *bcc)
    if not every:
        raise UserError("no recipients: give at least one To, Cc or Bcc address")
    if len(set(every)) > MAX_RECIPIENTS:
        raise UserError(f"too many recipients ({len(set(every))}); at most {MAX_RECIPIENTS}")


def _check_subject(subject: str) -> None:
    if _CONTROL.search(subject):
        raise UserError("bad subject: line breaks and control characters are not allowed")
    if len(subject) > MAX_SUBJECT:
        raise UserError(f"subject too long ({len(subject)} characters; at most {MAX_SUBJECT})")


def _check_size(n: int) -> None:
    if n > MAX_MESSAGE:
        raise UserError(f"message too large ({n >> 20} MiB; at most {MAX_MESSAGE >> 20} MiB)")


def compose(sender: str, to: Sequence[str], cc: Sequence[str], bcc: Sequence[str],
            subject: str, body: str, attachments: Sequence[Attachment], clock: Clock,
            rng: Rng, *, headers: Sequence[tuple[str, str]] = ()) -> Composed:
    """Build a message from parts (text/plain body, attachments as base64 parts). `headers`:
    more fields, e.g. a reply's In-Reply-To and References (reply.py), each checked like the
    subject; never one that compose sets itself."""
    sender = normalize_address(sender)
    to_, cc_, bcc_ = _addresses("To", to), _addresses("Cc", cc), _addresses("Bcc", bcc)
    _check_recipients(to_, cc_, bcc_)
    _check_subject(subject)
    total = len(body.encode("utf-8", "surrogatepass")) + sum(len(a.data) for a in attachments)
    _check_size(total)
    now = int(clock.now())
    mid = new_message_id(rng)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    if to_:
        msg["To"] = ", ".join(to_)
    if cc_:
        msg["Cc"] = ", ".join(cc_)
    msg["Subject"] = subject
    msg["Date"] = format_date(now)
    msg["Message-ID"] = mid
    for name, value in headers:
        if not name.isascii() or not _FIELD_NAME.fullmatch(name.encode()) or name.lower() in \
                ("from", "to", "cc", "bcc", "subject", "date", "message-id") or \
                _CONTROL.search(value) or len(value) > 4 * MAX_LINE:
            raise UserError(f"bad header field {name!r}")
        msg[name] = value
    try:
        msg.set_content(body)
    except UnicodeError:
        raise UserError("the body is not valid text (unpaired surrogates)") from None
    for a in attachments:
        msg.add_attachment(a.data, *_content_type(a.content_type), filename=_filename(a.filename))
    if attachments:
        # The stdlib would draw the boundary from `random`; ours comes from the injected Rng.
        msg.set_boundary("=_" + rng.bytes(16).hex())
    data = msg.as_bytes()
    _check_size(len(data))
    return Composed(data, sender, to_, cc_, bcc_, subject, now, mid)


def _content_type(text: str) -> tuple[str, str]:
    m = re.fullmatch(r"([a-z0-9][a-z0-9.+-]*)/([a-z0-9][a-z0-9.+-]*)", text.strip().lower())
    if not m or m.group(1) in ("multipart", "message"):
        raise UserError(f"bad attachment content type {text!r}: write it as type/subtype")
    return m.group(1), m.group(2)


def _filename(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if not base or base in (".", "..") or _CONTROL.search(base) or len(base) > 255:
        raise UserError(f"bad attachment file name {name!r}")
    return base


# -- submitted messages ---------------------------------------------------------------------------


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded continuation lines) and the body, unchanged."""
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    if not ends:
        raise UserError("malformed message: no empty line between the header and the body")
    cut = min(ends)
    sep = b"\r\n\r\n" if data.startswith(b"\r\n\r\n", cut) else b"\n\n"
    head, body = data[:cut + len(sep) // 2], data[cut + len(sep):]
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, body


def _field_name(field: bytes) -> str:
    name, colon, _ = field.partition(b":")
    if not colon or not _FIELD_NAME.fullmatch(name):
        raise UserError("malformed message: a header line is not 'Name: value'")
    return name.decode("ascii").lower()


def prepare(data: bytes, sender: str, clock: Clock, rng: Rng, *,
            keep_id: bool = False) -> Composed:
    """Check a submitted RFC 5322 message and make it sendable: its From must be `sender`;
    Bcc lines are taken out (their addresses become Bcc recipients); the Message-ID is replaced
    with a fresh random one (`keep_id`: kept, for a message of our own Outbox that goes out
    later); a Date is added if missing. Other bytes are kept as they are."""
    sender = normalize_address(sender)
    _check_size(len(data))
    fields, body = _split(data)
    if not all(_is_ascii(f) for f in fields):
        raise UserError("malformed message: header lines must be ASCII (use RFC 2047 words)")
    if any(len(line) > MAX_LINE + 2 for f in fields for line in f.splitlines(keepends=True)):
        raise UserError(f"malformed message: a header line is longer than {MAX_LINE}")
    names = [_field_name(f) for f in fields]
    for once in ("from", "to", "cc", "bcc", "subject", "date", "message-id"):
        if names.count(once) > 1:
            raise UserError(f"malformed message: more than one {once.title()} header")
    bcc_fields = [f for f, n in zip(fields, names, strict=True) if n == "bcc"]
    kept = [f for f, n in zip(fields, names, strict=True) if n not in ("bcc", "message-id")]
    eol = b"\r\n" if b"\r\n" in (fields[0] if fields else b"\r\n") else b"\n"
    mid = new_message_id(rng)
    if keep_id:
        own = [f for f, n in zip(fields, names, strict=True) if n == "message-id"]
        old = own[0].split(b":", 1)[1].strip().decode("ascii") if own else ""
        if is_message_id(old):
            mid = old
    extra = [b"Message-ID: " + mid.encode() + eol]
    if "date" not in names:
        extra.append(b"Date: " + format_date(clock.now()).encode() + eol)
    prepared = b"".join(kept + extra) + eol + body
    _check_size(len(prepared))

    msg = _parse_message(prepared)
    parsed = _facts(msg)
    if parsed.sender != sender:
        raise UserError(f"the From address must be your own ({sender})")
    bcc = _addresses("Bcc", _header_addresses(_parse_message(b"".join(bcc_fields) + eol),
                                              "bcc")) if bcc_fields else ()
    _check_recipients(parsed.to, parsed.cc, bcc)
    when = int(clock.now())
    with reading("the Date header"):
        date = msg.get("date")
        if date is not None:
            try:
                dt = email.utils.parsedate_to_datetime(str(date))
            except (TypeError, ValueError):
                raise UserError("malformed message: the Date header is not an RFC 5322 "
                                "date") from None
            if dt.tzinfo is not None:
                when = int(dt.timestamp())
    return Composed(prepared, sender, parsed.to, parsed.cc, bcc, parsed.subject, when, mid)


def _is_ascii(b: bytes) -> bool:
    try:
        b.decode("ascii")
    except UnicodeDecodeError:
        return False
    return True


# -- parsing --------------------------------------------------------------------------------------


@contextmanager
def reading(what: str, hint: str = "", *, message: str | None = None) -> Iterator[None]:
    """Read header values of a message someone else wrote: anything the email package raises
    in the block (its parsers fail on some hostile inputs with IndexError, AttributeError,
    TypeError, ...) becomes one UserError line naming `what` (and what to do: `hint`), or
    `message` when given. Our own typed errors pass as they are; so does MemoryError, which is
    no fault of the message."""
    try:
        yield
    except (AnonmailError, MemoryError):
        raise
    except Exception as e:
        raise UserError(message or f"malformed message: {what} cannot be read "
                        f"({type(e).__name__})" + (f"; {hint}" if hint else "")) from None


def _parse_message(data: bytes) -> EmailMessage:
    try:
        # Headers only: the facts we need are there, and a 68 MB body need not be parsed.
        msg = BytesParser(policy=email.policy.default).parsebytes(data, headersonly=True)
    except Exception as e:  # the parser is lenient; anything it raises is a malformed message
        raise UserError(f"malformed message ({type(e).__name__})") from None
    if not isinstance(msg, EmailMessage):
        raise UserError("malformed message")
    return msg


def _header_addresses(msg: EmailMessage, name: str) -> list[str]:
    bad = f"malformed message: the {name.title()} header is not a list of addresses"
    with reading(f"the {name.title()} header", message=bad):
        # get_all parses the field now (lazily, on this call): it may raise too.
        values = msg.get_all(name) or []
        out = [str(a.addr_spec) for v in values for a in v.addresses]
    if any(getattr(v, "defects", ()) for v in values):
        raise UserError(bad)
    return out


def _facts(msg: EmailMessage) -> Parsed:
    senders = _header_addresses(msg, "from")
    if len(senders) != 1:
        raise UserError("malformed message: it needs exactly one From address")
    with reading("the Subject header"):
        subject = str(msg.get("subject", ""))
    _check_subject(subject)
    to = _addresses("To", _header_addresses(msg, "to"))
    cc = _addresses("Cc", _header_addresses(msg, "cc"))
    with reading("the Message-ID header"):
        mid = str(msg.get("message-id", "")).strip()
    return Parsed(normalize_address(senders[0]), to, cc, subject, mid)


def parse(data: bytes) -> Parsed:
    """The sender, recipients, subject and Message-ID of a message: UserError if malformed,
    and nothing else whatever the bytes (tests/test_mail_hostile_parse.py)."""
    _check_size(len(data))
    _split(data)  # a header block must end with an empty line
    return _facts(_parse_message(data))
