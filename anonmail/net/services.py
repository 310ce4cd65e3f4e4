"""One way in for every request: a node is a set of services behind one registry.

A `Service` declares the request types it answers (`requests`) and answers them (`handle`).
A `ServiceRegistry` is built from a node's services and is the node's one `Handler`: it routes
each request by its exact type through a dict (no `isinstance` chains) and maps what the
service raised by whose fault it is:

* a `Refusal` (quota, denied, wrong secret, ...; errors.py) is an honest peer's lot: answered
  as `ErrorReply(code, detail)` with its code, never counted as a fault;
* a `RemoteProtocolError` is the asker's fault: it propagates to the transport, which answers
  REFUSED (or MALFORMED) and counts the fault against the connection's source (net/tcp.py,
  sim/network.py);
* anything else is our bug: it propagates (the TCP transport logs it and answers INTERNAL).

`observe` (optional) sees every routed request's peer first: the DHT's liveness rule, any
request from a server is evidence that it is alive (Kademlia §2.2). It may raise
`RemoteProtocolError` (a peer presenting an invalid certificate), which is that peer's fault.

Adding a request type touches its service (the type in `requests`, its handler) and nothing
else; two services claiming one type, or a type not registered as a request (net/rpc.py), is
our bug and fails when the registry is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from anonmail.errors import ErrorCode, LocalError, Refusal
from anonmail.net import rpc
from anonmail.net.base import Peer


class Service(Protocol):
    """A part of a node that answers some request types."""

    @property
    def requests(self) -> tuple[type, ...]:
        """The request types this service answers (each `@rpc.request`-registered)."""
        ...

    async def handle(self, peer: Peer, msg: Any) -> Any:
        """Answer `msg` from `peer`: a response message, or raise (see the module docstring)."""
        ...


Observer = Callable[[Peer], object]


class ServiceRegistry:
    """Routes requests to the services that declared their types (the module docstring)."""

    def __init__(self, services: Iterable[Service], *, observe: Observer | None = None) -> None:
        self.routes: dict[type, Service] = {}
        self.observe = observe
        for service in services:
            self.add(service)

    def add(self, service: Service, *, replace: bool = False) -> None:
        """Route `service`'s request types to it. `replace`: take them over from whichever
        service answered them (an adversary standing in for an honest service in simulation,
        a service restarted with fresh state)."""
        for kind in service.requests:
            if kind not in rpc.REQUEST_TYPES:
                raise LocalError(f"{kind.__name__} is not a registered request type")
            if kind in self.routes and not replace:
                raise LocalError(f"{kind.__name__} is answered by two services")
        for kind in service.requests:
            self.routes[kind] = service

    async def handle(self, peer: Peer, msg: Any) -> Any:
        """The node's `Handler`."""
        service = self.routes.get(type(msg))
        if service is None:
            return rpc.ErrorReply(ErrorCode.UNSUPPORTED, f"{type(msg).__name__} not served here")
        if self.observe is not None:
            self.observe(peer)
        try:
            return await service.handle(peer, msg)
        except Refusal as e:
            return rpc.ErrorReply(e.code, e.detail[:200])
