"""An in-memory `Network` for simulations under `trio.testing.MockClock(autojump_threshold=0)`.

One `SimWorld` holds every simulated node; `world.attach(cert)` gives each its `SimNetwork`.
A request runs the receiver's handler in the caller's task and returns the reply after the
link's round-trip time, so thousands of nodes cost no threads, no sockets and no wall-clock
time. Endpoints are data only: simulations use 198.18.0.0/15 (RFC 2544 benchmarking).

What the world models, all reproducible from its seed:
* latency: a fixed one-way delay per link, drawn uniformly from `latency` (default 10-150 ms)
  by hashing the two node ids, so it does not depend on the order of events;
* loss: each request and each reply is lost with probability `loss` (decided by hashing the
  link, the direction and the virtual time, again order-independent); a loss looks like a
  timeout to the caller;
* partitions: `partition(group, ...)` splits nodes into groups that cannot reach each other
  (nodes in no group form one more group); `heal()` ends it;
* crashes: a crashed node answers nothing (callers time out) and its own requests time out;
  `restart` brings it back with its state;
* policies (network adversaries): callables that may veto delivery of any message;
* handlers: each node answers with whatever handler `serve` (or `set_handler`) gave it, so an
  adversarial node is just another handler.

Fidelity: by default every message is encoded with `wire.encode` and decoded with
`rpc.decode_request` / `decode_response` on the other side (exercising the codecs and counting
bytes). `encode=False` passes the frozen objects through, for large experiments.

Contract (net/base.py): `request` returns the reply, raises `Refused` for an ErrorReply,
`TransportError` on timeout or loss, `RemoteProtocolError` for a garbage reply or when the
endpoint `to` names belongs to a different key. A handler's `RemoteProtocolError` becomes an
ErrorReply and a fault counted against the requester; the receiving node never crashes.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import trio

from anonmail import wire
from anonmail.errors import (
    BadContact,
    LocalError,
    Refused,
    RemoteProtocolError,
    TransportError,
)
from anonmail.net import rpc
from anonmail.net.base import Handler, Peer
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng

_TWO_U64 = struct.Struct(">QQ")


def _abort(_: object) -> trio.lowlevel.Abort:
    """trio.sleep_forever's abort function: a cancelled sleep just ends."""
    return trio.lowlevel.Abort.SUCCEEDED

# A policy sees (sender, receiver, message) and returns False to drop the message.
Policy = Callable[["SimNetwork", "SimNetwork", Any], bool]


@dataclass
class SimStats:
    requests: int = 0  # requests sent
    delivered: int = 0  # requests that reached a handler
    replies: int = 0  # replies that reached the caller
    wire_bytes: int = 0  # encoded request and reply bytes (only with encode=True)
    lost: int = 0  # messages lost to `loss`, partitions, policies, crashed or absent receivers
    timeouts: int = 0
    refused: int = 0  # ErrorReplies
    by_type: Counter[str] = field(default_factory=Counter)
    faults: Counter[bytes] = field(default_factory=Counter)  # by requester node id


class _Delivery(NamedTuple):  # a tuple: cheaper to make than a frozen dataclass, per request
    reply: Any  # the handler's reply object
    body: bytes | None  # its encoding (None with encode=False)


class SimNetwork:
    """One node's view of the simulated network (implements `net.base.Network`)."""

    def __init__(self, world: SimWorld, cert: NodeCert, address: str | None) -> None:
        self.world = world
        self._cert = cert
        self.node_id = cert.node_id
        self.address = address
        self.handler: Handler | None = None
        self.up = True
        self._peer = Peer(cert, address)

    @property
    def local_cert(self) -> NodeCert:
        return self._cert

    @property
    def peer(self) -> Peer:
        """How this node appears to the nodes it sends requests to. Made once, not per
        request: a frozen dataclass costs a microsecond to build (issue 11)."""
        if self._peer.address != self.address:  # `address` is a plain attribute: follow it
            self._peer = Peer(self._cert, self.address)
        return self._peer

    def set_handler(self, handler: Handler | None) -> None:
        """Answer with `handler` from now on (what `serve` does, without a task per node)."""
        self.handler = handler

    async def serve(self, handler: Handler, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.handler = handler
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            if self.handler is handler:
                self.handler = None

    async def request(self, to: NodeCert, msg: Any, *, timeout: float | None = None) -> Any:
        w = self.world
        timeout = w.params.rpc_timeout if timeout is None else timeout
        w.stats.requests += 1
        w.stats.by_type[type(msg).__name__] += 1
        dest = w.route(to)
        latency, jitter = w.link(self, dest)
        # Jitter below a microsecond per link direction keeps events at distinct virtual
        # instants, so trio's tie-breaking (which is random) never steers a simulation.
        give_up = trio.current_time() + timeout + jitter
        # One cancel scope is both the timeout and the round-trip delay: trio's cost per timer
        # dominates large simulations, so a request uses exactly one.
        delivery: _Delivery | None = None  # stays None if a slow handler outlasts the timeout
        with trio.CancelScope(deadline=give_up) as scope:
            delivery = await w.exchange(self, dest, msg)
            if delivery is not None:
                scope.deadline = min(give_up, trio.current_time() + 2 * latency + jitter)
            # trio.sleep_forever() without its frame: a request is woken by a Cancelled
            # thrown through every frame of the awaiting chain.
            await trio.lowlevel.wait_task_rescheduled(_abort)
            raise LocalError("a request's sleep was rescheduled")
        if delivery is None or trio.current_time() >= give_up:
            w.stats.timeouts += 1
            raise TransportError(f"no answer within {timeout:g} s")
        return w.receive(delivery)

    async def introduce(self, endpoint: Endpoint, *, timeout: float | None = None) -> NodeCert:
        w = self.world
        timeout = w.params.rpc_timeout if timeout is None else timeout
        dest = w.at(endpoint)
        with trio.move_on_after(timeout):
            if dest is None or dest.handler is None or not w.carries(self, dest, None, "hello"):
                w.stats.lost += 1
                await trio.sleep_forever()
            else:
                latency, jitter = w.link(self, dest)
                await trio.sleep(2 * latency + jitter)
                return dest.local_cert
        w.stats.timeouts += 1
        raise TransportError(f"nobody answered at {endpoint}")


class SimWorld:
    def __init__(self, params: NetworkParams, rng: Rng, *,
                 latency: tuple[float, float] = (0.010, 0.150), loss: float = 0.0,
                 encode: bool = True) -> None:
        if not 0.0 <= loss < 1.0 or not 0.0 <= latency[0] <= latency[1]:
            raise LocalError("loss in [0, 1) and 0 <= min latency <= max latency")
        self.params = params
        self.latency_range = latency
        self.loss = loss
        self.encode = encode
        self._seed = rng.bytes(32)
        # Keyed BLAKE2b spends one compression on the key: `link` copies this state instead.
        self._link_hash = hashlib.blake2b(digest_size=16, key=self._seed)
        self.stats = SimStats()
        self.policies: list[Policy] = []
        self._by_key: dict[bytes, SimNetwork] = {}
        self._by_id: dict[bytes, SimNetwork] = {}
        self._by_endpoint: dict[Endpoint, SimNetwork] = {}
        self._group: dict[bytes, int] = {}

    # -- membership ----------------------------------------------------------------------------

    def attach(self, cert: NodeCert, *, address: str | None = None) -> SimNetwork:
        """A node joins the world. `address` (what peers observe) defaults to its first
        endpoint's host; a client (no endpoints) has none unless given."""
        if cert.public_key in self._by_key:
            raise LocalError("this key is already attached")
        for ep in cert.endpoints:
            if ep in self._by_endpoint:
                raise LocalError(f"endpoint {ep} is taken")
        if address is None and cert.endpoints:
            address = cert.endpoints[0].host
        net = SimNetwork(self, cert, address)
        self._by_key[cert.public_key] = net
        self._by_id[net.node_id] = net
        for ep in cert.endpoints:
            self._by_endpoint[ep] = net
        return net

    def node(self, node_id: bytes) -> SimNetwork:
        return self._by_id[node_id]

    def nodes(self) -> list[SimNetwork]:
        return list(self._by_id.values())

    def at(self, endpoint: Endpoint) -> SimNetwork | None:
        return self._by_endpoint.get(endpoint)

    def route(self, to: NodeCert) -> SimNetwork | None:
        """Who receives a request sent to `to`: the node at one of its endpoints. As over TCP,
        reaching a node that holds a different key is a `BadContact` (the handshake would show
        another valid identity: nobody's fault that we can tell), and an endpoint where nobody
        listens means no answer."""
        for ep in to.endpoints:
            net = self._by_endpoint.get(ep)
            if net is not None:
                if net.local_cert.public_key != to.public_key:
                    raise BadContact("another node answers at the endpoint dialled")
                return net
        return None

    # -- faults ----------------------------------------------------------------------------------

    def crash(self, node_id: bytes) -> None:
        self._by_id[node_id].up = False

    def restart(self, node_id: bytes) -> None:
        self._by_id[node_id].up = True

    def set_handler(self, node_id: bytes, handler: Handler | None) -> None:
        """Replace a node's handler (adversaries are alternative handlers)."""
        self._by_id[node_id].set_handler(handler)

    def partition(self, *groups: Iterable[bytes]) -> None:
        self._group = {}
        for g, members in enumerate(groups, start=1):
            for nid in members:
                self._group[nid] = g

    def heal(self) -> None:
        self._group = {}

    def add_policy(self, policy: Policy) -> None:
        self.policies.append(policy)

    # -- delivery --------------------------------------------------------------------------------

    def _unit(self, *parts: bytes) -> float:
        h = hashlib.blake2b(digest_size=8, key=self._seed)
        for p in parts:
            h.update(len(p).to_bytes(2, "big") + p)
        return int.from_bytes(h.digest(), "big") / 2.0**64

    def link(self, a: SimNetwork, b: SimNetwork | None) -> tuple[float, float]:
        """(one-way latency, jitter) from a to b, fixed for the world's seed. The latency is
        symmetric and uniform in `latency_range`; the jitter is under a microsecond and differs
        between the two directions (see `SimNetwork.request`)."""
        lo, hi = self.latency_range
        other = b.node_id if b is not None else b""
        x, y = (a.node_id, other) if a.node_id < other else (other, a.node_id)
        hasher = self._link_hash.copy()
        hasher.update(x + y)
        hu, hv = _TWO_U64.unpack(hasher.digest())  # the digest's halves, big-endian
        u = hu / 2.0**64
        v = hv / 2.0**65 + (0.0 if x is a.node_id else 0.5)
        return lo + (hi - lo) * u, 1e-6 * v

    def latency(self, a: SimNetwork, b: SimNetwork) -> float:
        return self.link(a, b)[0]

    def carries(self, src: SimNetwork, dst: SimNetwork, msg: Any, direction: str) -> bool:
        """Does a message from `src` get to `dst` now?"""
        if not (src.up and dst.up):
            return False
        if self._group and self._group.get(src.node_id, 0) != self._group.get(dst.node_id, 0):
            return False
        if self.loss > 0.0:
            now = repr(trio.current_time()).encode()
            if self._unit(b"loss", direction.encode(), src.node_id, dst.node_id,
                          now) < self.loss:
                return False
        for policy in self.policies:  # noqa: SIM110 - no generator per message when empty
            if not policy(src, dst, msg):
                return False
        return True

    async def exchange(self, src: SimNetwork, dst: SimNetwork | None,
                       msg: Any) -> _Delivery | None:
        """Deliver a request and run the receiver's handler; None if the request or its reply
        is lost. The caller then waits a round trip (or its timeout) before `receive`.

        The handler runs when the request is sent and the caller gets the reply one round trip
        later: trio's cost per timer dominates large simulations, and this needs one timer per
        request instead of two. Reachability is judged at sending time."""
        if dst is None or dst.handler is None or not self.carries(src, dst, msg, "request"):
            self.stats.lost += 1
            return None
        body = self._encode(msg)
        self.stats.delivered += 1
        try:
            request = msg if body is None else rpc.decode_request(body, self.params.max_frame)
        except RemoteProtocolError as e:
            reply: Any = rpc.ErrorReply(rpc.ErrorCode.MALFORMED, str(e)[:200])
        else:
            try:
                reply = await dst.handler(src.peer, request)
            except RemoteProtocolError as e:
                self.stats.faults[src.node_id] += 1
                reply = rpc.ErrorReply(rpc.ErrorCode.REFUSED, str(e)[:200])
        reply_body = self._encode(reply)
        if not self.carries(dst, src, reply, "reply"):
            self.stats.lost += 1
            return None
        return _Delivery(reply, reply_body)

    def receive(self, delivery: _Delivery) -> Any:
        """The caller's side of a reply that arrived: decode it, turn ErrorReply into Refused."""
        self.stats.replies += 1
        reply = delivery.reply
        if delivery.body is not None:
            reply = rpc.decode_response(delivery.body, self.params.max_frame)
        if isinstance(reply, rpc.ErrorReply):
            self.stats.refused += 1
            raise Refused(reply.code, reply.detail)
        return reply

    def _encode(self, msg: Any) -> bytes | None:
        if not self.encode:
            return None
        body = wire.encode(msg)
        self.stats.wire_bytes += len(body)
        return body


def sim_address(rng: Rng, taken: set[str]) -> str:
    """A fresh IPv4 address in 198.18.0.0/15 (512 /24s), avoiding .0 and .255."""
    for _ in range(1_000_000):
        n = rng.randbelow(1 << 17)
        if n % 256 in (0, 255):
            continue
        addr = f"198.{18 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"
        if addr not in taken:
            taken.add(addr)
            return addr
    raise LocalError("the simulated address range is full")

