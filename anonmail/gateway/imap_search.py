"""SEARCH for the IMAP gateway (RFC 3501 §6.4.4): search keys compiled to a predicate.

Invariants: compiling is linear in the number of keys and refuses nesting deeper than MAX_DEPTH
(NOT/OR chains included), so a hostile query cannot exhaust the stack; evaluating a key costs at
most one read and one linear scan of the message. Text keys match case-insensitively as
substrings of the raw (undecoded) header or text, which is what RFC 3501 requires at least.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from anonmail.gateway.imap_fetch import Part, crlf, parse
from anonmail.gateway.imap_parse import SeqSet, Value, astring, parse_date

MAX_DEPTH = 64


@dataclass
class Candidate:
    """One message as SEARCH sees it; `load` reads and parses it only when a key needs it."""

    seq: int
    uid: int
    letters: str  # Maildir flag letters
    recent: bool
    mtime: float
    load: Callable[[], bytes | None]
    _data: bytes | None = None
    _part: Part | None = None

    def data(self) -> bytes:
        if self._data is None:
            self._data = crlf(self.load() or b"")
        return self._data

    def part(self) -> Part:
        if self._part is None:
            self._part = parse(self.data())
        return self._part


Pred = Callable[[Candidate], bool]
_FLAG_KEYS = {"ANSWERED": "R", "DELETED": "T", "DRAFT": "D", "FLAGGED": "F", "SEEN": "S"}


def compile_search(args: list[Value], largest_seq: int, largest_uid: int) -> Pred:
    """A predicate for the search keys (all must match); ValueError for a bad query."""
    if len(args) >= 2 and isinstance(args[0], str) and args[0].upper() == "CHARSET":
        charset = astring(args[1]) or ""
        if charset.upper() not in ("UTF-8", "US-ASCII"):
            raise LookupError(charset)
        args = args[2:]
    keys = _Keys(args, largest_seq, largest_uid)
    preds = [keys.one(0) for _ in iter(lambda: keys.more, False)]
    if not preds:
        raise ValueError("no search keys")
    return lambda c: all(p(c) for p in preds)


class _Keys:
    def __init__(self, args: list[Value], largest_seq: int, largest_uid: int) -> None:
        self.args, self.pos = args, 0
        self.largest_seq, self.largest_uid = largest_seq, largest_uid

    @property
    def more(self) -> bool:
        return self.pos < len(self.args)

    def take(self) -> Value:
        if not self.more:
            raise ValueError("search key needs an argument")
        self.pos += 1
        return self.args[self.pos - 1]

    def text(self) -> str:
        v = astring(self.take())
        if v is None:
            raise ValueError("string expected")
        return v

    def one(self, depth: int) -> Pred:
        if depth > MAX_DEPTH:
            raise ValueError("search nested too deeply")
        v = self.take()
        if isinstance(v, list):
            sub = _Keys(v, self.largest_seq, self.largest_uid)
            preds = [sub.one(depth + 1) for _ in iter(lambda: sub.more, False)]
            return lambda c: all(p(c) for p in preds)
        if isinstance(v, bytes):
            raise ValueError("search key expected")
        key = v.upper()
        if key == "ALL":
            return lambda c: True
        if key in _FLAG_KEYS:
            letter = _FLAG_KEYS[key]
            return lambda c: letter in c.letters
        if key.startswith("UN") and key[2:] in _FLAG_KEYS:
            unset = _FLAG_KEYS[key[2:]]
            return lambda c: unset not in c.letters
        if key == "NEW":
            return lambda c: c.recent and "S" not in c.letters
        if key == "OLD":
            return lambda c: not c.recent
        if key == "RECENT":
            return lambda c: c.recent
        if key in ("KEYWORD", "UNKEYWORD"):
            self.text()  # keywords are not kept: no message has one
            return lambda c: key == "UNKEYWORD"
        if key == "NOT":
            p = self.one(depth + 1)
            return lambda c: not p(c)
        if key == "OR":
            a, b = self.one(depth + 1), self.one(depth + 1)
            return lambda c: a(c) or b(c)
        if key == "UID":
            uids = SeqSet(self.text(), self.largest_uid)
            return lambda c: c.uid in uids
        if key in ("LARGER", "SMALLER"):
            n = self.text()
            if not n.isdigit() or len(n) > 12:
                raise ValueError("number expected")
            size = int(n)
            if key == "LARGER":
                return lambda c: len(c.data()) > size
            return lambda c: len(c.data()) < size
        if key in ("BEFORE", "ON", "SINCE"):
            day = parse_date(self.text())
            return lambda c: _cmp(key, _internal_day(c.mtime), day)
        if key in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            day = parse_date(self.text())
            return lambda c: (d := _sent_day(c)) is not None and _cmp(key[4:], d, day)
        if key in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            needle = self.text().lower()
            return lambda c: needle in (c.part().get(key) or "").lower()
        if key == "HEADER":
            name, needle = self.text(), self.text().lower()
            return lambda c: any(k.lower() == name.lower() and needle in val.lower()
                                 for k, val in c.part().fields)
        if key in ("BODY", "TEXT"):
            raw = self.text().lower().encode("utf-8")
            if key == "BODY":
                return lambda c: raw in c.part().body.lower()
            return lambda c: raw in c.data().lower()
        try:  # a sequence set
            seqs = SeqSet(v, self.largest_seq)
        except ValueError:
            raise ValueError("unknown search key") from None
        return lambda c: c.seq in seqs


def _cmp(kind: str, have: dt.date, want: dt.date) -> bool:
    return have < want if kind == "BEFORE" else have == want if kind == "ON" else have >= want


def _internal_day(t: float) -> dt.date:
    return dt.datetime.fromtimestamp(t, dt.UTC).date()


def _sent_day(c: Candidate) -> dt.date | None:
    value = c.part().get("Date")
    if value is None:
        return None
    try:
        return parsedate_to_datetime(value).date()
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
