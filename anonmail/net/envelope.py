"""The envelopes every frame of a connection holds, and a fast codec for exactly their bytes.

`Request{req_id, kind, body}` goes from the side that dialled, `Response{req_id, body}` back
(net/tcp.py). They are wire messages like any other (tags 13 and 14): `wire.encode` and
`wire.decode` define them. Every RPC encodes and decodes two, and the generic path (schema,
pre-scan, cbor2) cost as much as a tenth of an RPC over loopback; their shape is fixed, so this
module writes and reads that shape directly:

    Request:  0x85 0x0d 0x01 uint(req_id) uint(kind) bytes(body)
    Response: 0x84 0x0e 0x01 uint(req_id) bytes(body)

(the CBOR array `[tag, version, fields...]` with every head in its shortest form, as wire's
canonical encoding has it).

Invariants, held as properties against wire (tests/test_net_envelope.py): `encode_request` and
`encode_response` give exactly `wire.encode`'s bytes; `decode_request` and `decode_response`
return exactly what `wire.decode` returns, and raise `RemoteProtocolError` exactly when it does:
the fast path accepts only the canonical form with every field in its range, and hands
anything else to `wire.decode` for the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from anonmail import wire
from anonmail.wire import Range, Size
from anonmail.wire_flat import SHORTEST, WIDTHS
from anonmail.wire_flat import head as _head

MAX_BODY = 16 << 20  # the largest max_frame NetworkParams allows
_REQUEST_HEAD = b"\x85\x0d\x01"
_RESPONSE_HEAD = b"\x84\x0e\x01"
_MAX_KIND = 65535


@wire.message(tag=13)
@dataclass(frozen=True, slots=True)
class Request:
    req_id: Annotated[int, wire.U64]
    kind: Annotated[int, Range(0, _MAX_KIND)]  # the wire tag of `body`
    body: Annotated[bytes, Size(0, MAX_BODY)]


@wire.message(tag=14)
@dataclass(frozen=True, slots=True)
class Response:
    req_id: Annotated[int, wire.U64]
    body: Annotated[bytes, Size(0, MAX_BODY)]


_UINT, _BYTES = 0x00, 0x40


def encode_request(req_id: int, kind: int, body: bytes) -> bytes:
    """`wire.encode(Request(req_id, kind, body))`; the caller keeps the fields in range."""
    return b"".join((_REQUEST_HEAD, _head(_UINT, req_id), _head(_UINT, kind),
                     _head(_BYTES, len(body)), body))


def encode_response(req_id: int, body: bytes) -> bytes:
    """`wire.encode(Response(req_id, body))`; the caller keeps the fields in range."""
    return b"".join((_RESPONSE_HEAD, _head(_UINT, req_id), _head(_BYTES, len(body)), body))


class _Slow(Exception):
    """Not the canonical form with every field in range: wire.decode gives the verdict."""




def _read(data: bytes, pos: int, major: int) -> tuple[int, int]:
    """(argument, position after) of a shortest-form head of type `major` at `pos`."""
    if pos >= len(data):
        raise _Slow
    first = data[pos]
    if first & 0xE0 != major:
        raise _Slow
    n = first & 0x1F
    if n < 24:
        return n, pos + 1
    width = WIDTHS.get(n)
    if width is None or pos + 1 + width > len(data):
        raise _Slow
    n = int.from_bytes(data[pos + 1:pos + 1 + width], "big")
    if n < SHORTEST[width]:
        raise _Slow
    return n, pos + 1 + width


def _body(data: bytes, pos: int) -> bytes:
    """The byte string at `pos`, which must end `data` exactly."""
    n, pos = _read(data, pos, _BYTES)
    if n > MAX_BODY or pos + n != len(data):
        raise _Slow
    return data[pos:]


def decode_request(data: bytes | bytearray, max_size: int) -> Request:
    """`wire.decode(data, Request, max_size=max_size)`, faster on the canonical form."""
    if type(data) is bytes and len(data) <= max_size and data[:3] == _REQUEST_HEAD:
        try:
            req_id, pos = _read(data, 3, _UINT)
            kind, pos = _read(data, pos, _UINT)
            if kind <= _MAX_KIND:
                return Request(req_id, kind, _body(data, pos))
        except _Slow:
            pass
    return wire.decode(bytes(data), Request, max_size=max_size)


def decode_response(data: bytes | bytearray, max_size: int) -> Response:
    """`wire.decode(data, Response, max_size=max_size)`, faster on the canonical form."""
    if type(data) is bytes and len(data) <= max_size and data[:3] == _RESPONSE_HEAD:
        try:
            req_id, pos = _read(data, 3, _UINT)
            return Response(req_id, _body(data, pos))
        except _Slow:
            pass
    return wire.decode(bytes(data), Response, max_size=max_size)
