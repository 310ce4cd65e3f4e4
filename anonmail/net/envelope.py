"""The envelopes every frame of a connection holds, and a fast encoder for exactly their bytes.

`Request{req_id, kind, body}` goes from the side that dialled, `Response{req_id, body}` back
(net/tcp.py). They are wire messages like any other (tags 13 and 14): `wire.encode` and
`wire.decode` define them. Every RPC encodes and decodes two, so both ends skip the generic
path: they are flat messages, which wire reads directly (wire_flat.py), and this module writes
their fixed shape without building the message object first:

    Request:  0x85 0x0d 0x01 uint(req_id) uint(kind) bytes(body)
    Response: 0x84 0x0e 0x01 uint(req_id) bytes(body)

(the CBOR array `[tag, version, fields...]` with every head in its shortest form, as wire's
canonical encoding has it).

Invariants, held as properties against wire (tests/test_net_envelope.py): `encode_request` and
`encode_response` give exactly `wire.encode`'s bytes; `decode_request` and `decode_response`
are `wire.decode` (of a bytearray too), returning and refusing exactly what it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from anonmail import wire
from anonmail.wire import Range, Size
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


def _bytes(data: bytes | bytearray) -> bytes:
    return data if type(data) is bytes else bytes(data)  # wire reads flat messages from bytes


def decode_request(data: bytes | bytearray, max_size: int) -> Request:
    """`wire.decode(data, Request, max_size=max_size)`."""
    return wire.decode(_bytes(data), Request, max_size=max_size)


def decode_response(data: bytes | bytearray, max_size: int) -> Response:
    """`wire.decode(data, Response, max_size=max_size)`."""
    return wire.decode(_bytes(data), Response, max_size=max_size)
