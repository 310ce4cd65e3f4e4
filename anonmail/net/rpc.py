"""Request/response message registry and the typed error reply every transport uses.

A layer above declares its request and response types with `@request(tag)` / `@response(tag)`;
transports decode incoming bodies against exactly these sets (anything else is a
RemoteProtocolError). Tag ranges: 1-9 records, 10-19 net, 20-29 dht, 30-59 store, 60-79 permit,
80-99 anon, 100+ mail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from anonmail import wire, wire_scan
from anonmail.errors import ErrorCode

__all__ = ["ErrorCode", "ErrorReply", "request", "response"]
from anonmail.wire import Size

T = TypeVar("T")

REQUEST_TYPES: dict[type, int] = {}
RESPONSE_TYPES: dict[type, int] = {}
REQUEST_BY_TAG: dict[int, type] = {}  # the same tables the other way round
RESPONSE_BY_TAG: dict[int, type] = {}


def _register(table: dict[type, int], by_tag: dict[int, type],
              tag: int) -> Callable[[type[T]], type[T]]:
    def deco(cls: type[T]) -> type[T]:
        wire.message(tag)(cls)
        table[cls] = tag
        by_tag[tag] = cls
        return cls

    return deco


def request(tag: int) -> Callable[[type[T]], type[T]]:
    """`@request(tag)`: a request type with its wire tag."""
    return _register(REQUEST_TYPES, REQUEST_BY_TAG, tag)


def response(tag: int) -> Callable[[type[T]], type[T]]:
    """`@response(tag)`: a response type with its wire tag."""
    return _register(RESPONSE_TYPES, RESPONSE_BY_TAG, tag)


@response(tag=19)
@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A typed error instead of a result: `code` says whose fault it is (errors.ErrorCode)."""

    code: ErrorCode
    detail: Annotated[str, Size(0, 200)]


def request_types() -> tuple[type, ...]:
    return tuple(REQUEST_TYPES)


def response_types() -> tuple[type, ...]:
    return tuple(RESPONSE_TYPES)


def decode_request(body: bytes, max_size: int) -> Any:
    return wire.decode_any(body, request_types(), max_size=max_size)


def decode_request_of(kind: int, body: bytes, max_size: int) -> Any:
    """A request whose envelope said it is of type `kind` (a registered request tag): a body
    of any other type is refused as `decode_request` refuses a type not in its set."""
    return wire.decode(body, REQUEST_BY_TAG[kind], max_size=max_size)


def decode_response(body: bytes, max_size: int) -> Any:
    """`wire.decode_any` over the response types, with the type picked by its tag first."""
    tag = wire_scan.peek_tag(body)
    cls = None if tag is None else RESPONSE_BY_TAG.get(tag)
    if cls is None:
        return wire.decode_any(body, response_types(), max_size=max_size)  # for its verdict
    return wire.decode(body, cls, max_size=max_size)
