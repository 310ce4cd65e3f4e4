"""The one interface between protocol code and transports.

Protocol code (DHT, storage, mail) talks only to a `Network`: it sends a request message to a
contact and awaits the response message, and it serves incoming requests through a `Handler`.
`tcp.TcpNetwork` implements it over authenticated, encrypted TCP; `sim.SimNetwork` in memory under
trio's MockClock. The same node code runs on both.

Contract for implementations:
* `request` returns the peer's response message, raises `Refused` for an `ErrorReply`,
  `TransportError` when the peer cannot be reached or does not answer within `timeout`, and
  `RemoteProtocolError` when the peer answers with garbage or is not who `to` says;
* the handler receives a `Peer` whose `cert` the transport has authenticated (the peer proved it
  holds the key), and whose `address` is the observed network address (None if unknown);
* a handler raising `RemoteProtocolError` makes the transport answer `ErrorReply(MALFORMED or
  REFUSED)` and count a fault against the peer; the node never crashes on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from anonmail.records.certs import Endpoint, NodeCert


@dataclass(frozen=True, slots=True)
class Peer:
    """The authenticated sender of an incoming request."""

    cert: NodeCert
    address: str | None  # observed IP (TCP) or simulated address; None if unknown

    @property
    def node_id(self) -> bytes:
        return self.cert.node_id


Handler = Callable[[Peer, Any], Awaitable[Any]]


class Network(Protocol):
    """What protocol code needs from a transport."""

    @property
    def local_cert(self) -> NodeCert: ...

    async def request(self, to: NodeCert, msg: Any, *, timeout: float | None = None) -> Any:
        """Send `msg` to the node `to` and return its response message."""
        ...

    async def introduce(self, endpoint: Endpoint, *, timeout: float | None = None) -> NodeCert:
        """Reach whoever listens at `endpoint` and return its authenticated certificate
        (bootstrap: we know where, not who)."""
        ...

    async def serve(self, handler: Handler, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept requests and answer them with `handler` until cancelled."""
        ...
