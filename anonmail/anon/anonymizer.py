"""What a node does at the end of a circuit: the anonymizer Z (and Y, W) of seed 002 §4.

The sender, through the circuit, asks (anon/messages.py):

* `Locate(key)`: the node closest to `key`, signed by this node (seed 002 §4.1: X and Y are
  asked where Z is, and their answers must agree);
* `FindNodes(key, n)`: this node's lookup of the n closest to `key` (seed 002 §4.2: "asks Z to
  fetch the certificates of the k nodes closest", cross-checked with W);
* `Forward(targets, request)`: one storage request (STORE, APPEND, FETCH, DELETE, READ, ACK;
  nothing else) sent by this node to each target, each target's answer returned as the bytes
  it sent, so the sender checks every receipt against the certificate it cross-checked. The
  storage nodes see this node, never the sender. The sender may ask for a delay before the
  fan-out (an exponential draw it made) and for the fan-out to start at a multiple of
  `align_ms` (batching: every Forward in a window leaves together).

Limits: a Forward reaches at most MAX_TARGETS nodes, a FETCH or READ exactly one (their
answers are large); the request times its targets is charged to the circuit's byte budget
before anything is sent (`spend`), so one cell cannot buy more fan-out than its circuit may.
A bad op is answered `OpFailed`, never a fault (the relay that passed it cannot be blamed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from anonmail import crypto, wire
from anonmail.anon import messages as am
from anonmail.anon.options import SIZE_CLASSES
from anonmail.clock import Clock
from anonmail.errors import ErrorCode, Refusal, Refused, RemoteProtocolError, TransportError
from anonmail.net import rpc
from anonmail.net.base import Network
from anonmail.net.fanout import fan_out
from anonmail.records.certs import CertCache, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.store import messages as sm
from anonmail.store.client import Lookup, closest

FORWARDABLE = sm.FORWARDABLE
FORWARD_ERRORS = (TransportError, RemoteProtocolError, Refused)
# What the targets' answers may take of a Forwarded: it must fit the largest padded cell, less
# room for each TargetReply's node id and framing (~40 bytes, 16 targets at most). A target
# answering more (an honest one never does; a FETCH reply fits the cell its STORE came in) is
# reported as no answer: were the whole answer refused, the sender would blame this node.
FORWARDED_ROOM = SIZE_CLASSES[-1] - 2048


def single_target(request: Any) -> bool:
    """FETCH and whole READ answers are too large to fan in; a brief READ's (entry ids) and
    an ACK's are small, so one of each may go to all of an inbox's replicas (issue 11)."""
    return isinstance(request, sm.Fetch) or (isinstance(request, sm.Read) and not request.brief)


@dataclass(frozen=True, slots=True)
class Sighting:
    """One thing a node saw as relay or end: no content, only ids, sizes and times."""

    time: float
    role: str  # "relay" or "end"
    event: str  # "open", "cell", or the op at the end ("Locate", "FindNodes", "Store", ...)
    prev: bytes  # the node id that sent it to us
    next: bytes | None  # where a relay passed it; None at the end
    size: int  # bytes received
    key: bytes | None = None  # at the end: the key the op is about
    targets: int = 0  # at the end: nodes a Forward went to


def request_key(msg: Any) -> bytes:
    """The storage key a forwardable request is about."""
    return bytes(msg.inbox if isinstance(msg, sm.Append | sm.Read | sm.Ack) else msg.key)


class Anonymizer:
    def __init__(self, net: Network, dht: Lookup, key: crypto.SigningKey,
                 params: NetworkParams, clock: Clock,
                 observe: Callable[[Sighting], None], cert_cache: CertCache | None = None
                 ) -> None:
        self.net = net
        # Verified NodeCerts, by their bytes (issue 11): a Z forwarding to the same replicas
        # again, or a node's other services having verified them, costs a hash, not r Ed25519
        # checks. The node's own cache when given (node/process.py), else a private one.
        self.cert_cache = cert_cache if cert_cache is not None else CertCache()
        self.dht = dht
        self.key = key
        self.params = params
        self.clock = clock
        self.observe = observe

    async def locate(self, key: bytes) -> am.Located:
        nodes = await closest(self.dht, key, 1)
        if not nodes:
            raise Refusal("no node found", ErrorCode.UNREACHABLE)
        statement = am.LocateStatement(key, nodes[0], self.net.local_cert.node_id,
                                       int(self.clock.now()))
        return am.sign_located(self.key, statement)

    async def answer(self, prev: bytes, op: Any, size: int, spend: Callable[[int], bool],
                     rng: Rng) -> Any:
        now = self.clock.now()
        if isinstance(op, am.Locate):
            self.observe(Sighting(now, "end", "Locate", prev, None, size, op.key))
            try:
                return await self.locate(op.key)
            except Refusal as e:
                return am.OpFailed(e.detail)
        if isinstance(op, am.FindNodes):
            self.observe(Sighting(now, "end", "FindNodes", prev, None, size, op.key))
            return am.Found(await closest(self.dht, op.key, op.count))
        assert isinstance(op, am.Forward)
        return await self._forward(prev, op, size, spend, now)

    async def _forward(self, prev: bytes, op: am.Forward, size: int,
                       spend: Callable[[int], bool], now: float) -> Any:
        try:
            request = wire.decode_any(op.request, FORWARDABLE, max_size=am.MAX_FORWARD_REQUEST)
            for cert in op.targets:
                self.cert_cache.verify(cert, self.params, now)
        except RemoteProtocolError:
            return am.OpFailed("not a storage request to valid nodes")
        targets = list({c.node_id: c for c in op.targets}.values())
        if single_target(request) and len(targets) != 1:
            return am.OpFailed("FETCH and whole READs go to one node at a time")
        if not spend(len(op.request) * len(targets)):
            return am.OpFailed("circuit budget spent")
        self.observe(Sighting(now, "end", type(request).__name__, prev, None, size,
                              request_key(request), len(targets)))
        if op.delay_ms:
            await trio.sleep(op.delay_ms / 1000)
        if op.align_ms:
            step = op.align_ms / 1000
            t = trio.current_time()
            await trio.sleep_until(math.ceil(t / step) * step)

        async def one(cert: NodeCert) -> Any:
            return await self.net.request(cert, request)

        replies = []
        for o in await fan_out(targets, one, catch=FORWARD_ERRORS):
            if o.value is not None:
                body = wire.encode(o.value)
            elif isinstance(o.error, Refused):
                body = wire.encode(rpc.ErrorReply(o.error.code, o.error.detail[:200]))
            else:
                body = b""
            if len(body) > FORWARDED_ROOM // len(targets):
                body = b""  # cannot fit the cell: reported as no answer
            replies.append(am.TargetReply(o.item.node_id, body))
        return am.Forwarded(tuple(replies))
