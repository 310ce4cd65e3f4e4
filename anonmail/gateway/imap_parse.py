"""Sans-I/O reader of IMAP4rev1 client commands (RFC 3501 §2.2, §4, §9; LITERAL+ RFC 7888).

`CommandReader.feed(bytes)` buffers what the socket gave; `next()` returns the next complete
`Command`, a `Continue` (the driver must send "+ Ready": a synchronizing literal is expected), a
`Bad` (the command is refused; `fatal` means the connection must be closed), or None (more input
needed). `take_line()` returns one raw line (AUTHENTICATE responses, IDLE's DONE).

Invariants:
* nothing is buffered beyond the caps: a line longer than `max_line` is fatal; a literal larger
  than its cap (`max_append` for APPEND once `authenticated` is set, else `max_line`) is refused
  from its `{n}` header alone, before any of it is read (a synchronizing
  one gets a tagged NO and no continuation, so the client never sends it; a non-synchronizing
  one is fatal, RFC 7888 §4, because its octets are already on the way);
* work is linear in the input: lines are found by scanning each byte once, the token tree is
  built with an explicit stack, list nesting is capped at MAX_DEPTH;
* the commands produced do not depend on how the input was split into `feed` calls.

Values: an atom is a `str`, a quoted string or literal is `bytes`, a parenthesized list is a
`list`. An atom may contain a bracketed part with spaces, as in `BODY[HEADER.FIELDS (A B)]<0.9>`.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from dataclasses import dataclass
from typing import TypeAlias

Value: TypeAlias = "str | bytes | list[Value]"

MAX_LINE = 64 << 10  # octets in one command line (literals excluded)
MAX_DEPTH = 32  # nested parenthesized lists
_LITERAL = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n\Z")
_TAG = re.compile(r"[\x21-\x7e]{1,64}")  # then checked against tag specials below
_TAG_SPECIALS = set('(){%*"\\+')


@dataclass(frozen=True)
class Command:
    tag: str
    name: str  # upper case; "UID FETCH" etc. for UID commands
    args: list[Value]


@dataclass(frozen=True)
class Continue:
    """A synchronizing literal was announced: send a continuation request (RFC 3501 §7.5)."""


@dataclass(frozen=True)
class Bad:
    tag: str  # "*" when the tag itself is unreadable
    text: str
    fatal: bool = False
    code: str = ""  # response code, e.g. "TOOBIG"


Event: TypeAlias = Command | Continue | Bad


class CommandReader:
    def __init__(self, *, max_line: int = MAX_LINE, max_append: int = 50 << 20) -> None:
        self.max_line = max_line
        self.max_append = max_append
        self.authenticated = False  # APPEND literals above max_line only after login
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no LF
        self._parts: list[bytes] = []  # alternately line text and literal octets
        self._need = -1  # octets of literal still expected (-1: reading a line)
        self._size = 0  # octets of the command so far

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _line(self) -> bytes | None:
        idx = self._buf.find(b"\n", self._scanned)
        if idx < 0:
            self._scanned = len(self._buf)
            return None
        line = bytes(self._buf[: idx + 1])
        del self._buf[: idx + 1]
        self._scanned = 0
        return line

    def _too_long(self) -> bool:  # called when _buf holds no LF
        return len(self._buf) > self.max_line

    def take_line(self) -> bytes | None:
        """One raw line without its CRLF (None: not complete yet). Raises ValueError when the
        line is longer than max_line."""
        line = self._line()
        if line is None:
            if self._too_long():
                raise ValueError("line too long")
            return None
        return line.rstrip(b"\r\n")

    def next(self) -> Event | None:
        while True:
            if self._need >= 0:  # reading literal octets
                if len(self._buf) < self._need:
                    return None
                self._parts.append(bytes(self._buf[: self._need]))
                del self._buf[: self._need]
                self._need = -1
            line = self._line()
            if line is None:
                if self._too_long():
                    return self._fail("command line too long", fatal=True)
                return None
            if len(line) > self.max_line:
                return self._fail("command line too long", fatal=True)
            self._size += len(line)
            m = _LITERAL.search(line)
            if m is None:
                self._parts.append(line.rstrip(b"\r\n"))
                parts, self._parts, self._size = self._parts, [], 0
                return parse_command(parts)
            n, plus = int(m.group(1)), bool(m.group(2))
            self._parts.append(line[: m.start()])
            append = self.authenticated and _command_name(self._parts[0]) == "APPEND"
            cap = self.max_append if append else self.max_line
            total = self.max_append + self.max_line if append else 4 * self.max_line
            if n > cap or self._size + n > total:
                # RFC 7888 §4, RFC 3501 §7.1: refuse on the size alone, never read the octets
                return self._fail("literal too big", fatal=plus, code="TOOBIG")
            self._size += n
            self._need = n
            if not plus:
                return Continue()

    def _fail(self, text: str, *, fatal: bool, code: str = "") -> Bad:
        tag = _tag_of(self._parts[0]) if self._parts else _tag_of(bytes(self._buf[:80]))
        self._parts, self._size, self._need = [], 0, -1
        if fatal:
            self._buf.clear()
        return Bad(tag, text, fatal=fatal, code=code)


def _tag_of(first: bytes) -> str:
    word = first.split(b" ", 1)[0].decode("ascii", "replace")
    ok = _TAG.fullmatch(word) and not (_TAG_SPECIALS & set(word))
    return word if ok else "*"


def _command_name(first: bytes) -> str:
    words = first.split(b" ", 2)
    return words[1].decode("ascii", "replace").upper() if len(words) > 1 else ""


def _tokens(text: bytes, out: list[object]) -> str | None:
    """Append the tokens of one line segment to `out`: "(" and ")" as such, atoms as str,
    quoted strings as bytes. Returns an error text or None."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == 0x20:
            i += 1
        elif c in b"()":
            out.append(chr(c))
            i += 1
        elif c == 0x22:  # quoted string, RFC 3501 §4.3: only \\ and \" are escapes
            val = bytearray()
            i += 1
            while i < n and text[i] != 0x22:
                if text[i] == 0x5C:
                    i += 1
                    if i >= n or text[i] not in b'\\"':
                        return "bad escape in quoted string"
                val.append(text[i])
                i += 1
            if i >= n:
                return "unterminated quoted string"
            out.append(bytes(val))
            i += 1
        elif c < 0x20 or c == 0x7F:
            return "control character in command"
        else:  # atom, possibly with one bracketed section that may hold spaces and parens
            start, depth = i, 0
            while i < n:
                c = text[i]
                if c == 0x5B:
                    depth += 1
                elif c == 0x5D and depth:
                    depth -= 1
                elif depth == 0 and (c in b' ()"' or c < 0x20 or c == 0x7F):
                    break
                i += 1
            if depth:
                return "unbalanced brackets"
            out.append(PlainAtom(text[start:i].decode("utf-8", "replace")))
    return None


class PlainAtom(str):
    """An atom token (so that the list builder can tell "(" the paren from an atom)."""


def parse_command(parts: list[bytes]) -> Event:
    """Parse one complete command: `parts` alternates line segments and literal octets."""
    flat: list[object] = []
    for k, part in enumerate(parts):
        if k % 2:
            flat.append(Literal(part))
        else:
            err = _tokens(part, flat)
            if err is not None:
                return Bad(_tag_of(parts[0]), err)
    tag = _tag_of(parts[0])
    root: list[Value] = []
    stack: list[list[Value]] = [root]
    for tok in flat:
        if isinstance(tok, Literal):
            stack[-1].append(tok.data)
        elif isinstance(tok, PlainAtom):
            stack[-1].append(str(tok))
        elif tok == "(":
            if len(stack) > MAX_DEPTH:
                return Bad(tag, "lists nested too deeply")
            new: list[Value] = []
            stack[-1].append(new)
            stack.append(new)
        elif tok == ")":
            if len(stack) == 1:
                return Bad(tag, "unbalanced parentheses")
            stack.pop()
        else:
            assert isinstance(tok, bytes)
            stack[-1].append(tok)
    if len(stack) != 1:
        return Bad(tag, "unbalanced parentheses")
    if tag == "*" or len(root) < 2 or not isinstance(root[0], str) or not isinstance(root[1], str):
        return Bad(tag, "expected: tag command arguments")
    name, args = root[1].upper(), root[2:]
    if name == "UID":
        if not args or not isinstance(args[0], str):
            return Bad(tag, "UID needs a command")
        name, args = "UID " + args[0].upper(), args[1:]
    return Command(tag, name, args)


@dataclass(frozen=True)
class Literal:
    data: bytes


# -- argument helpers ---------------------------------------------------------------------------


def astring(v: Value) -> str | None:
    """An atom or string as text (UTF-8, undecodable octets replaced); None for a list."""
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return None


class SeqSet:
    """A sequence set (RFC 3501 §9 sequence-set), normalized to sorted disjoint ranges, so
    membership costs O(log ranges) whatever numbers the client wrote."""

    def __init__(self, text: str, largest: int) -> None:
        ranges: list[tuple[int, int]] = []
        for item in text.split(","):
            ends = item.split(":")
            if len(ends) > 2 or not all(ends):
                raise ValueError("bad sequence set")
            nums = [largest if e == "*" else _number(e) for e in ends]
            lo, hi = min(nums), max(nums)
            ranges.append((lo, hi))
        ranges.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        self.ranges = merged
        self._starts = [lo for lo, _ in merged]

    def __contains__(self, n: int) -> bool:
        i = bisect.bisect_right(self._starts, n) - 1
        return i >= 0 and n <= self.ranges[i][1]


def _number(text: str) -> int:
    if not text.isdigit() or len(text) > 10 or int(text) == 0 or int(text) > 0xFFFFFFFF:
        raise ValueError("bad number")
    return int(text)


def format_uid_set(uids: list[int]) -> str:
    """Compact "1:3,7" form of sorted UIDs (for UIDPLUS response codes, RFC 4315)."""
    ranges: list[list[int]] = []
    for u in uids:
        if ranges and u == ranges[-1][1] + 1:
            ranges[-1][1] = u
        else:
            ranges.append([u, u])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def parse_date(text: str) -> dt.date:
    """RFC 3501 §9 date: d-Mon-yyyy (the quotes, if any, already removed)."""
    parts = text.split("-")
    if len(parts) != 3 or parts[1].title() not in _MONTHS or not parts[0].isdigit():
        raise ValueError("bad date")
    if not parts[2].isdigit() or len(parts[0]) > 2 or len(parts[2]) != 4:
        raise ValueError("bad date")
    return dt.date(int(parts[2]), _MONTHS.index(parts[1].title()) + 1, int(parts[0]))


def parse_date_time(text: str) -> float:
    """RFC 3501 §9 date-time "dd-Mon-yyyy hh:mm:ss +zzzz" as a UNIX time."""
    m = re.fullmatch(r" ?(\d{1,2}-[A-Za-z]{3}-\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", text)
    if m is None:
        raise ValueError("bad date-time")
    day = parse_date(m.group(1))
    sign = 1 if m.group(5) == "+" else -1
    zone = dt.timezone(sign * dt.timedelta(hours=int(m.group(6)), minutes=int(m.group(7))))
    when = dt.datetime(day.year, day.month, day.day, int(m.group(2)), int(m.group(3)),
                       int(m.group(4)), tzinfo=zone)
    return when.timestamp()


def format_date_time(t: float) -> str:
    """INTERNALDATE in UTC, independent of the locale (RFC 3501 §9 date-time)."""
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    return f"{d.day:02d}-{_MONTHS[d.month - 1]}-{d.year:04d} {d:%H:%M:%S} +0000"
