"""`anonmail bench decode`: what decoding a request costs per byte, hostile against honest.

A node decodes every frame it receives twice: the envelope (`links.Request`) and the request
body (`rpc.decode_request`). Both go through `wire.decode`, whose cost pre-scan
(`wire_scan.scan`) refuses maps, tags, floats, indefinite lengths and more CBOR items than the
densest honest encoding of the named type has at that size, before anything is built
(docs/protocol.md "Decode cost"). This benchmark checks the claim from the outside: for each
size it times

* honest requests: a STORE of one blob (the common large request, nearly all payload) and a
  PROBE packed with entry ids (the densest honest request: the most items per byte any schema
  allows, so the most decoding work per byte an honest peer can ask for);
* hostile requests of the same size, each built by hand from CBOR heads (`wire_scan.head`):
  empty maps, nested maps, floats, indefinite arrays, a flat array of one-byte ints, an array
  of empty arrays, arrays nested as deep as allowed, a long string, and the densest structure
  the PROBE schema's budget lets through (one-byte ids where 32 bytes are due), each behind
  every plausible tag;

and prints CPU microseconds per KiB, the worst hostile figure over the best and the worst
honest one, and PASS when the worst hostile request costs at most `LIMIT` (10) times the
densest honest request of its size (issue 7's must-show). CPU time is `time.process_time`
over enough repetitions to pass `MIN_SECONDS`; the run is deterministic but for timing.

Invariants: every hostile input is refused with `RemoteProtocolError` (else `LocalError`: the
benchmark would be measuring a hole, not a cost) and every honest one decodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from anonmail import wire
from anonmail.errors import LocalError, RemoteProtocolError
from anonmail.net import rpc
from anonmail.net.links import Request
from anonmail.store import messages as sm
from anonmail.wire_scan import head

LIMIT = 10.0  # hostile CPU per byte over the densest honest request's, at most
MIN_SECONDS = 0.05  # CPU per timing
SCREEN_SECONDS = 0.005  # CPU per timing when looking for the worst tag
SIZES = (4 << 10, 64 << 10, 960 << 10)  # up to a STORE at the blob cap (MAX_BLOB)
MAX_FRAME = 1 << 20  # NetworkParams.max_frame: the largest frame a peer may send
_UINT, _BYTES, _ARRAY, _MAP, _SIMPLE = 0, 2, 4, 5, 7


@dataclass(frozen=True, slots=True)
class Row:
    size: int  # the size asked for
    frame_bytes: int  # the frame built for it
    name: str
    honest: bool
    us_per_kib: float


def _envelope(kind: int, body: bytes) -> bytes:
    return wire.encode(Request(1, kind, body))


def _decode(frame: bytes) -> object:
    """The inbound path of net/links.py: the envelope, then the body."""
    req = wire.decode(frame, Request, max_size=MAX_FRAME)
    return rpc.decode_request(req.body, MAX_FRAME)


def _cpu_per_call(fn: Callable[[], object], seconds: float = MIN_SECONDS) -> float:
    n, spent = 1, 0.0
    while True:
        start = time.process_time()
        for _ in range(n):
            fn()
        spent = time.process_time() - start
        if spent >= seconds:
            return spent / n
        n *= 2 if spent <= 0 else max(2, int(seconds / spent * 1.2) + 1)


# -- honest requests -------------------------------------------------------------------------


def honest_store(size: int) -> bytes:
    blob = bytes(size - 64)
    msg = sm.Store(kind=sm.ObjectKind.BODY, key=bytes(32), blob=blob, ttl=3600,
                   delete_hashes=(bytes(32),))
    return _envelope(rpc.REQUEST_TYPES[sm.Store], wire.encode(msg))


def honest_probe(size: int) -> bytes:
    """As many entry ids as fit `size`: 32-byte ids in items of up to MAX_PROBE_IDS."""
    ids_left = max(1, (size - 64) // 35)
    items: list[sm.ProbeItem] = []
    i = 0
    while ids_left > 0 and len(items) < sm.MAX_PROBE_ITEMS:
        n = min(ids_left, sm.MAX_PROBE_IDS)
        items.append(sm.ProbeItem(sm.ItemKind.INBOX, bytes(32),
                                  tuple(i.to_bytes(32, "big") for i in range(i, i + n))))
        i += n
        ids_left -= n
    return _envelope(rpc.REQUEST_TYPES[sm.Probe], wire.encode(sm.Probe(tuple(items))))


HONEST: dict[str, Callable[[int], bytes]] = {"STORE one blob": honest_store,
                                             "PROBE packed with ids": honest_probe}


# -- hostile requests ------------------------------------------------------------------------


def _message(tag: int, fill: bytes, count: int) -> bytes:
    """[tag, 1, <count items of fill>] as a body: the shape every schema starts with."""
    return head(_ARRAY, 3) + head(_UINT, tag) + head(_UINT, 1) + head(_ARRAY, count) + fill


def _repeat(unit: bytes, size: int) -> tuple[bytes, int]:
    n = max(1, (size - 32) // len(unit))
    return unit * n, n


def _flat(unit: bytes) -> Callable[[int, int], bytes]:
    def build(tag: int, size: int) -> bytes:
        fill, n = _repeat(unit, size)
        return _message(tag, fill, n)
    return build


def _nested(tag: int, size: int) -> bytes:
    depth = wire.MAX_DEPTH - 3  # as deep as the cap lets through, then a flat tail
    fill, n = _repeat(head(_UINT, 0), size - depth)
    return _message(tag, head(_ARRAY, 1) * (depth - 1) + head(_ARRAY, n) + fill, 1)


def _long_string(tag: int, size: int) -> bytes:
    return _message(tag, head(_BYTES, size - 48) + bytes(size - 48), 1)


def _indefinite(tag: int, size: int) -> bytes:
    fill, _ = _repeat(head(_UINT, 0), size)
    return _message(tag, bytes([0x9F]) + fill + bytes([0xFF]), 1)


def _short_ids(tag: int, size: int) -> bytes:
    """PROBE items whose ids are one-byte strings: the PROBE shape with the most items per byte
    (the schema refuses them, but only after the parse: this is what the budget is for)."""
    _, n = _repeat(head(_BYTES, 0), size - 64)
    per = min(n, sm.MAX_PROBE_IDS)
    item = head(_ARRAY, 3) + head(_UINT, 1) + head(_BYTES, 32) + bytes(32) + head(_ARRAY, per) \
        + head(_BYTES, 0) * per
    items, count = _repeat(item, size - 32)
    return _message(tag, items, min(count, sm.MAX_PROBE_ITEMS))


HOSTILE: dict[str, Callable[[int, int], bytes]] = {
    "empty maps": _flat(head(_MAP, 0)),
    "nested maps": _flat(head(_MAP, 1) + head(_MAP, 0) + head(_MAP, 0)),
    "floats": _flat(bytes([0xFB]) + bytes(8)),
    "indefinite array": _indefinite,
    "one-byte ints": _flat(head(_UINT, 0)),
    "empty arrays": _flat(head(_ARRAY, 0)),
    "deep nesting": _nested,
    "long string": _long_string,
    "PROBE with 0-byte ids": _short_ids,
}


def _refused(frame: bytes) -> None:
    try:
        _decode(frame)
    except RemoteProtocolError:
        return
    raise LocalError("a hostile request decoded: the benchmark found a hole")


def measure(sizes: tuple[int, ...] | None = None) -> list[Row]:
    rows = []
    tags = sorted(set(rpc.REQUEST_TYPES.values()))
    for size in SIZES if sizes is None else sizes:
        for name, build in HONEST.items():
            frame = build(size)
            _decode(frame)  # must decode
            rows.append(Row(size, len(frame), name, True, _per_kib(_decode, frame)))
        for name, hostile in HOSTILE.items():
            frames = [_envelope(tag, hostile(tag, size)) for tag in tags]
            for frame in frames:
                _refused(frame)
            # screen every tag briefly, then time the worst one properly
            worst = max(frames, key=lambda f: _per_kib(_refused, f, SCREEN_SECONDS))
            rows.append(Row(size, len(worst), name, False, _per_kib(_refused, worst)))
    return rows


def _per_kib(fn: Callable[[bytes], object], frame: bytes,
             seconds: float = MIN_SECONDS) -> float:
    return _cpu_per_call(lambda: fn(frame), seconds) * 1e6 / (len(frame) / 1024)


def report(rows: list[Row]) -> tuple[str, bool]:
    out = ["decode cost per request (envelope + body), CPU µs per KiB; hostile: the worst tag",
           f"{'bytes':>9}  {'request':<26} {'kind':<8} {'µs/KiB':>10}"]
    ok = True
    for size in sorted({r.size for r in rows}):
        honest = [r for r in rows if r.size == size and r.honest]
        hostile = [r for r in rows if r.size == size and not r.honest]
        for r in honest + hostile:
            out.append(f"{r.frame_bytes:>9}  {r.name:<26} "
                       f"{'honest' if r.honest else 'hostile':<8} {r.us_per_kib:>10.2f}")
        worst = max(r.us_per_kib for r in hostile)
        dense = max(r.us_per_kib for r in honest)
        light = min(r.us_per_kib for r in honest)
        verdict = worst <= LIMIT * dense
        ok &= verdict
        out.append(f"{'':>9}  worst hostile / densest honest = {worst / dense:.2f}x, "
                   f"/ lightest honest = {worst / light:.2f}x  "
                   f"{'PASS' if verdict else 'FAIL'} (limit {LIMIT:g}x the densest)")
    return "\n".join(out), ok
