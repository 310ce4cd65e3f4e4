"""A cheap walk over CBOR heads that bounds what decoding may cost, before anything is decoded.

Job: `scan(data, max_units, max_depth)` reads the head of every data item (RFC 8949 §3: the
initial byte, major type in the top 3 bits, additional information in the low 5, then 0, 1, 2,
4 or 8 argument bytes) without building any object, skipping string payloads, and refuses
with `RemoteProtocolError` (never anything else) everything no wire schema can hold:

- maps (major type 5) and tags (major type 6, RFC 8949 §3.4: bignums included, since no
  schema's int Range reaches 2^64);
- floats and simple values (major type 7) other than false, true and null (§3.3);
- indefinite lengths and break codes (additional information 31, §3.2) and the reserved
  values 28-30 (§3);
- heads that are not the shortest form of their argument (§4.2.1, preferred serialization);
- string lengths and array counts that the remaining bytes cannot hold, truncation, bytes
  after the one top-level item;
- arrays nested deeper than `max_depth` (counted as cbor2 counts: a non-empty array opened);
- more than `max_units` units of work: each item is 1 unit, each array `ARRAY_UNITS` (an
  array costs the decoder about ten times a scalar: a container object, a garbage-collector
  entry, a list on re-encoding).

Invariants: the walk is linear in the number of items it reads and never reads more than
`max_units` items, so its own cost is bounded by its budget, not by the input; a payload is
skipped by arithmetic, never copied; it accepts every canonical encoding of a value made of
unsigned and negative ints below 2^64, byte and text strings, arrays, false, true and null
whose units fit the budget. Text is not checked for UTF-8 here (cbor2 does, in C).
`head` is the inverse for one head: the canonical head of a major type and argument, which the
benchmark and tests use to build hostile input by hand (cbor2 is imported by anonmail.wire
only).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from anonmail.errors import RemoteProtocolError

ARRAY_UNITS = 4  # the budget cost of one array; any other item costs 1 (measured below)

# What an initial byte starts (RFC 8949 §3, Table 7 of Appendix B).
_SCALAR, _STRING, _ARRAY, _REFUSED = 0, 1, 2, 3
_WIDTHS = {24: 1, 25: 2, 26: 4, 27: 8}  # additional information → argument bytes (§3)
_SHORTEST = {1: 24, 2: 1 << 8, 4: 1 << 16, 8: 1 << 32}  # smallest argument of each width
_SIMPLE_OK = (20, 21, 22)  # false, true, null (§3.3)


def _initial_table() -> tuple[tuple[int, int, int, str], ...]:
    """For each initial byte: (kind, argument bytes, inline argument, why refused)."""
    table = []
    for ib in range(256):
        major, ai = ib >> 5, ib & 31
        width = _WIDTHS.get(ai, 0)
        why = ""
        if major == 5:
            why = "a map (no schema has one)"
        elif major == 6:
            why = "a semantic tag (no schema has one)"
        elif major == 7:
            why = "" if ai in _SIMPLE_OK else "a float or simple value other than " \
                                                "false/true/null"
        elif ai == 31:
            why = "an indefinite length"
        elif ai > 27:
            why = f"reserved additional information {ai}"
        kind = _REFUSED if why else (_SCALAR if major in (0, 1, 7) else
                                     _STRING if major in (2, 3) else _ARRAY)
        table.append((kind, width, ai if width == 0 else 0, why))
    return tuple(table)


_INITIAL = _initial_table()


def _fail(why: str) -> typing.NoReturn:
    raise RemoteProtocolError(f"wire: {why}")


def head_len(n: int) -> int:
    """Bytes of the canonical head of argument `n` (RFC 8949 §4.2.1)."""
    return 1 if n < 24 else 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5 if n < 1 << 32 else 9


def head(major: int, n: int) -> bytes:
    """The canonical head of major type `major` with argument `n` (RFC 8949 §3, §4.2.1)."""
    if not (0 <= major <= 7 and 0 <= n < 1 << 64):
        raise ValueError(f"no CBOR head for major {major}, argument {n}")
    size = head_len(n)
    if size == 1:
        return bytes([major << 5 | n])
    ai = {2: 24, 3: 25, 5: 26, 9: 27}[size]
    return bytes([major << 5 | ai]) + n.to_bytes(size - 1, "big")


def int_len(lo: int, hi: int) -> int:
    """Bytes of the shortest int in [lo, hi] (major type 0 carries v, major type 1 carries
    -1 - v, RFC 8949 §3.1)."""
    args = ([max(lo, 0)] if hi >= 0 else []) + ([-1 - min(hi, -1)] if lo < 0 else [])
    return head_len(min(args))


DENSITIES = (4, 8, 16, 32, 64, 128)  # bytes per unit at which each type's slack is kept


@dataclass(frozen=True, slots=True)
class Budget:
    """What the encodings of one type can cost, in units. For every encoding, with u units in
    b bytes: u <= `units`, and d*u - b <= `slack[i]` for each d = DENSITIES[i]. So an encoding
    of `size` bytes has at most `limit(size)` units: each density gives a line bounding units
    by size, and the lowest line is taken. Built bottom-up from a schema (wire_schema._type_budget),
    every bound exact or an over-estimate, never an under-estimate."""

    units: int
    slack: tuple[int, ...]

    def limit(self, size: int) -> int:
        return min(self.units, *((size + s) // d for d, s in zip(DENSITIES, self.slack,
                                                                   strict=True)))

    @staticmethod
    def scalar(min_bytes: int) -> Budget:
        """One int, string, false, true or null of at least `min_bytes` bytes."""
        return Budget(1, tuple(d - min_bytes for d in DENSITIES))

    def either(self, other: Budget) -> Budget:
        """One item that is encoded as this or as `other` (Optional)."""
        return Budget(max(self.units, other.units), tuple(map(max, self.slack, other.slack)))

    @staticmethod
    def array(parts: list[Budget]) -> Budget:
        """An array of one item of each budget in `parts` (a struct's fields)."""
        n = len(parts)
        return Budget(ARRAY_UNITS + sum(p.units for p in parts),
                      tuple(d * ARRAY_UNITS - head_len(n) + sum(p.slack[i] for p in parts)
                            for i, d in enumerate(DENSITIES)))

    def repeated(self, lo: int, hi: int) -> Budget:
        """An array of `lo` to `hi` items of this budget (tuple[X, ...]). d*units - bytes is
        linear in the count except where the array head grows, so its maximum is at an end of
        the range or either side of such a step."""
        steps = [e for e in (23, 255, 65535, (1 << 32) - 1) if lo <= e < hi]
        counts = {lo, hi, *steps, *(e + 1 for e in steps)}
        return Budget(ARRAY_UNITS + hi * self.units,
                      tuple(max(d * ARRAY_UNITS - head_len(n) + n * s for n in counts)
                            for d, s in zip(DENSITIES, self.slack, strict=True)))


def _read_head(data: bytes, pos: int) -> tuple[int, int, int]:
    """(kind, argument, position after the head) of the item at `pos`; refuses what scan
    refuses about a head alone."""
    if pos >= len(data):
        _fail("truncated CBOR")
    kind, width, n, why = _INITIAL[data[pos]]
    pos += 1
    if kind == _REFUSED:
        _fail(why)
    if width:
        if pos + width > len(data):
            _fail("truncated CBOR")
        n = int.from_bytes(data[pos:pos + width], "big")
        if n < _SHORTEST[width]:
            _fail("a non-minimal head")
        pos += width
    return kind, n, pos


def peek_tag(data: bytes) -> int | None:
    """The type tag of a message `[tag, version, ...]` (an array whose first item is an
    unsigned int), read from the first two heads; None if `data` does not start like one."""
    try:
        kind, n, pos = _read_head(data, 0)
        if kind != _ARRAY or n < 2 or data[pos] >> 5 != 0:
            return None
        return _read_head(data, pos)[1]
    except (RemoteProtocolError, IndexError):
        return None


def scan(data: bytes, max_units: int, max_depth: int) -> int:
    """Walk `data` as exactly one CBOR item; return the units it costs. Refuses (see the module
    docstring) as soon as anything is wrong, after at most `max_units` items read."""
    end = len(data)
    table, shortest = _INITIAL, _SHORTEST
    pos = units = 0
    stack: list[int] = []  # items still to come in each enclosing array
    remaining = 1  # items still to come at this level: one at the top (no trailing bytes)
    while True:
        remaining -= 1
        if pos >= end:
            _fail("truncated CBOR")
        kind, width, n, why = table[data[pos]]
        pos += 1
        if width:
            if pos + width > end:
                _fail("truncated CBOR")
            n = data[pos] if width == 1 else int.from_bytes(data[pos:pos + width], "big")
            if n < shortest[width]:
                _fail("a non-minimal head")
            pos += width
        if kind == _SCALAR:
            units += 1
        elif kind == _STRING:
            if n > end - pos:
                _fail("a string longer than the data")
            pos += n
            units += 1
        elif kind == _ARRAY:
            units += ARRAY_UNITS
            if n:
                if n > end - pos:  # every item takes at least one byte
                    _fail("an array longer than the data")
                if len(stack) >= max_depth:
                    _fail("nesting too deep")
                stack.append(remaining)
                remaining = n
        else:
            _fail(why)
        if units > max_units:
            _fail(f"more than {max_units} units of CBOR items for its size and type")
        while not remaining:
            if not stack:
                if pos != end:
                    _fail("trailing bytes after the message")
                return units
            remaining = stack.pop()
