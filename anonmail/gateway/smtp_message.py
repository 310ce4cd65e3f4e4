"""The message of an SMTP transaction, without I/O: reading the DATA lines (RFC 5321 §4.1.1.4,
§4.5.2) and making the message go to exactly its envelope recipients.

Invariants:
* end of data is CRLF "." CRLF only, the CRLF that ended the DATA command counting as the
  first. A bare CR or LF anywhere in the data (LF.LF, CR.CR, LF.CRLF, CRLF.LF, ...) refuses the
  whole message once that real end arrives: nothing is accepted that another reading of the same
  bytes could end elsewhere (SMTP smuggling: CVE-2023-51764, CVE-2024-27305; RFC 5321 §2.3.8
  allows no other line end);
* at most `max_size` octets of unstuffed data are kept; beyond that they are only counted;
* `envelope_message` returns a message whose To, Cc and Bcc name exactly the envelope
  recipients, or refuses it: the agent sends to the headers (mail/compose.py `prepare`).
"""

from __future__ import annotations

from collections.abc import Sequence

from anonmail.errors import UserError
from anonmail.gateway.lines import TooLong
from anonmail.mail import compose

MAX_DATA_LINE = 1000  # octets with CRLF (RFC 5321 §4.5.3.1.6)


class DataReader:
    """The lines of one DATA phase, fed in order by the session (from a `LineReader` with
    limit MAX_DATA_LINE). `line` returns True at the end of data; then `refusal` is the reply
    that refuses the message, or None and `data` is the message (CRLF line ends, unstuffed)."""

    def __init__(self, max_size: int, *, after_crlf: bool) -> None:
        self.max_size = max_size
        self.size = 0  # octets of unstuffed data, kept or not (RFC 1870 §3 counts these)
        self._data = bytearray()
        self._prev_crlf = after_crlf  # the previous line ended with CRLF: "." CRLF ends data
        self.bare_newline = False
        self.too_long = False

    def line(self, line: bytes | TooLong) -> bool:
        if isinstance(line, TooLong):
            self.too_long = True
            self._prev_crlf = line.crlf
            self._data.clear()
            return False
        crlf = line.endswith(b"\r\n")
        text = line[:-2] if crlf else line[:-1]
        if crlf and self._prev_crlf and text == b".":
            return True
        if not crlf or b"\r" in text:
            self.bare_newline = True
        self._prev_crlf = crlf
        if text.startswith(b"."):  # RFC 5321 §4.5.2: the sender doubled a leading dot
            text = text[1:]
        self.size += len(text) + 2
        if self.size <= self.max_size and not (self.bare_newline or self.too_long):
            self._data += text + b"\r\n"
        else:
            self._data.clear()  # refused anyway: keep nothing
        return False

    @property
    def refusal(self) -> tuple[int, str] | None:
        if self.bare_newline:
            return 554, "5.6.0 Message refused: bare CR or LF in the data (every line must end " \
                        "with CRLF)"
        if self.too_long:
            return 500, f"5.5.2 Message refused: a line is longer than {MAX_DATA_LINE} octets"
        if self.size > self.max_size:
            return 552, "5.3.4 Message size exceeds the fixed maximum message size"
        return None

    @property
    def data(self) -> bytes:
        return bytes(self._data)


class EnvelopeError(Exception):
    """The message's headers and its envelope disagree in a way that cannot be fixed."""


def envelope_message(data: bytes, recipients: Sequence[str]) -> bytes:
    """The message to submit so that it goes to exactly `recipients` (normalized addresses).

    The agent sends to the To, Cc and Bcc headers and takes Bcc out (compose.prepare). So a
    To/Cc address that is not an envelope recipient refuses the message (it cannot be dropped
    from the headers everyone sees), and every Bcc header is replaced by one naming the
    envelope recipients that To and Cc do not name (RFC 5321 §3.3: the envelope decides whom a
    message goes to). A message whose headers already match is returned unchanged."""
    try:
        parsed = compose.parse(data)  # the agent's own reading of the headers
    except UserError as e:
        raise EnvelopeError(str(e)) from None
    named = set(parsed.to) | set(parsed.cc)
    if not named <= set(recipients):
        raise EnvelopeError("the To/Cc headers name an address that is not an RCPT TO "
                            "recipient: give every To and Cc address in RCPT TO")
    bcc = [r for r in recipients if r not in named]
    head_end = data.find(b"\r\n\r\n") + 2  # parse() found the empty line; no bare LF here
    if head_end < 2:
        raise EnvelopeError("malformed message: no empty line after the header")
    fields: list[bytes] = []
    for line in data[:head_end].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line  # a folded continuation (RFC 5322 §2.2.3)
        else:
            fields.append(line)
    kept = [f for f in fields if f.split(b":", 1)[0].strip().lower() != b"bcc"]
    if not bcc and len(kept) == len(fields):
        return data
    if bcc:
        kept.append(b"Bcc: " + ",\r\n ".join(bcc).encode("ascii") + b"\r\n")
    return b"".join(kept) + data[head_end:]
