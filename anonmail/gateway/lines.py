"""What the gateway's text protocols (SMTP, POP3) share, without I/O: bounded line splitting,
text safe for a reply line, and SASL PLAIN / base64 responses (RFC 4616, RFC 4954 §4, RFC 5034).

Invariants: a `LineReader` never holds more than `limit` octets of one line plus what was fed
in one call; a line longer than `limit` (LF included) is discarded as it arrives and reported
once, as `TooLong`, when its LF comes. Lines are returned with their line end as received, so
the caller decides what a bare LF or CR means (RFC 5321 §2.3.8, RFC 1939 §3).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TooLong:
    """A line over the limit was discarded; `crlf`: it ended with CRLF (not a bare LF)."""

    crlf: bool


class LineReader:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._skipping = False  # discarding the rest of an over-long line
        self._last_cr = False  # the last discarded octet was CR

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self._buf.clear()
        self._skipping = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_line(self) -> bytes | TooLong | None:
        """The next line, up to and with its LF; `TooLong`; or None: more data is needed."""
        if self._skipping:
            end = self._buf.find(b"\n")
            if end < 0:
                if self._buf:
                    self._last_cr = self._buf[-1:] == b"\r"
                self._buf.clear()
                return None
            crlf = self._buf[end - 1:end] == b"\r" if end else self._last_cr
            del self._buf[:end + 1]
            self._skipping = False
            return TooLong(crlf)
        end = self._buf.find(b"\n", 0, self.limit)
        if end >= 0:
            line = bytes(self._buf[:end + 1])
            del self._buf[:end + 1]
            return line
        if len(self._buf) >= self.limit:
            self._skipping = True
            self._last_cr = False
            return self.next_line()
        return None


def one_line(text: str, limit: int = 400) -> str:
    """`text` made safe for one reply line: printable ASCII, no CR or LF, at most `limit`."""
    stripped = text.strip()
    first = stripped.splitlines()[0] if stripped else "error"
    return "".join(c if " " <= c <= "~" else "?" for c in first)[:limit]


def decode_sasl(text: str) -> str | None:
    """A base64 SASL response ("=" is empty), decoded as UTF-8; None if it is not base64.
    Undecodable UTF-8 becomes U+FFFD: such a password then just fails the check."""
    text = text.strip()
    if text == "=":
        return ""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None


def decode_plain(text: str) -> tuple[str, str] | None:
    """(user, password) of a base64 PLAIN response, `[authzid] NUL authcid NUL passwd`
    (RFC 4616 §2); None if it is malformed. An authzid other than the user is refused as
    malformed: we never act for someone else."""
    decoded = decode_sasl(text)
    parts = decoded.split("\0") if decoded is not None else []
    if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
        return None
    return parts[1], parts[2]
