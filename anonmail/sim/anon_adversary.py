"""Hostile go-betweens for simulations (DESIGN.md §7, §9; issue 8 item 6): a coalition's
nodes as relays (X, a middle relay) and as anonymizers (Y, Z, W).

`HostileRelay` is a node's relay service with a `HostileAnonymizer` at circuit ends (an
alternative handler, never a monkey-patch). Its misdeeds (`Misdeed`, any combination):

* LIE: asked where the node closest to a key is (Locate), it names a coalition member; asked
  for the closest nodes (FindNodes), it returns the coalition members closest to the key;
* FORGE: asked to forward a STORE or APPEND, it stores nothing and returns receipts it signed
  itself under each target's name;
* ALTER: it forwards, then changes a byte of each receipt's digest;
* WITHHOLD: it forwards (the data is stored) and returns no answers;
* SUBSTITUTE: it sends the request to coalition members instead of the targets and returns
  their receipts as the targets' (storing on its friends);
* REFUSE: it refuses to relay to a next hop outside the coalition (selective denial, to push
  senders toward hostile go-betweens).

`HostileStats` counts what it did, so a run can check that senders caught every tampered
receipt (`AnonStats.bad_receipts`) and still delivered.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from anonmail import crypto, wire
from anonmail.anon import messages as am
from anonmail.anon import onion
from anonmail.anon.anonymizer import FORWARDABLE, Anonymizer, Sighting
from anonmail.anon.relay import RelayService
from anonmail.clock import Clock
from anonmail.errors import ErrorCode, Refusal, Refused, RemoteProtocolError, TransportError
from anonmail.net.base import Network, Peer
from anonmail.records import ids
from anonmail.records.certs import CertCache, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.records.receipts import NO_TERMS, Receipt, StoreOp, store_terms
from anonmail.rng import Rng
from anonmail.store import messages as sm
from anonmail.store.client import Lookup

Coalition = Callable[[], Sequence[NodeCert]]


class Misdeed(enum.Flag):
    NONE = 0
    LIE = enum.auto()
    FORGE = enum.auto()
    ALTER = enum.auto()
    WITHHOLD = enum.auto()
    SUBSTITUTE = enum.auto()
    REFUSE = enum.auto()


RECEIPT_DEEDS = (Misdeed.FORGE, Misdeed.ALTER, Misdeed.WITHHOLD, Misdeed.SUBSTITUTE)


@dataclass
class HostileStats:
    lied: int = 0
    forged: int = 0  # receipts made up
    altered: int = 0  # receipts changed
    withheld: int = 0  # answers not returned
    substituted: int = 0  # receipts from friends in the targets' names
    refused: int = 0  # circuits not extended

    @property
    def tampered(self) -> int:
        """Receipts handed to senders that are not the target's genuine receipt."""
        return self.forged + self.altered + self.substituted


def _closest(certs: Sequence[NodeCert], key: bytes, n: int) -> tuple[NodeCert, ...]:
    return tuple(sorted(certs, key=lambda c: ids.distance(c.node_id, key))[:n])


class HostileAnonymizer(Anonymizer):
    def __init__(self, net: Network, dht: Lookup, key: crypto.SigningKey, params: NetworkParams,
                 clock: Clock, observe: Callable[[Sighting], None], deeds: Misdeed,
                 coalition: Coalition, stats: HostileStats,
                 cert_cache: CertCache | None = None) -> None:
        super().__init__(net, dht, key, params, clock, observe, cert_cache)
        self.deeds = deeds
        self.coalition = coalition
        self.hstats = stats

    def _friends(self, key: bytes, n: int) -> tuple[NodeCert, ...]:
        me = self.net.local_cert.node_id
        return _closest([c for c in self.coalition() if c.node_id != me], key, n)

    async def locate(self, key: bytes) -> am.Located:
        friends = self._friends(key, 1)
        if Misdeed.LIE not in self.deeds or not friends:
            return await super().locate(key)
        self.hstats.lied += 1
        return am.sign_located(self.key, am.LocateStatement(
            key, friends[0], self.net.local_cert.node_id, int(self.clock.now())))

    async def answer(self, prev: bytes, op: Any, size: int, spend: Callable[[int], bool],
                     rng: Rng) -> Any:
        if isinstance(op, am.FindNodes) and Misdeed.LIE in self.deeds:
            friends = self._friends(op.key, op.count)
            if friends:
                self.hstats.lied += 1
                return am.Found(friends)
        if isinstance(op, am.Forward) and self.deeds & (Misdeed.FORGE | Misdeed.SUBSTITUTE):
            try:
                request = wire.decode_any(op.request, FORWARDABLE, max_size=am.MAX_CELL)
            except RemoteProtocolError:
                return am.OpFailed("not a storage request")
            if isinstance(request, sm.Store | sm.Append):
                if Misdeed.FORGE in self.deeds:
                    return self._forged(op, request)
                return await self._substituted(op, request)
        answer = await super().answer(prev, op, size, spend, rng)
        if isinstance(answer, am.Forwarded):
            if Misdeed.WITHHOLD in self.deeds:
                self.hstats.withheld += len(answer.replies)
                return am.Forwarded(tuple(am.TargetReply(r.node_id, b"")
                                          for r in answer.replies))
            if Misdeed.ALTER in self.deeds:
                return am.Forwarded(tuple(self._altered(r) for r in answer.replies))
        return answer

    def _forged(self, op: am.Forward, request: sm.Store | sm.Append) -> am.Forwarded:
        now = self.clock.now()
        store = isinstance(request, sm.Store)
        if isinstance(request, sm.Store):
            what, key, digest = StoreOp.STORE, request.key, sm.blob_digest(request.blob)
            terms = store_terms(() if request.kind in sm.VERSIONED else request.delete_hashes)
        else:
            what, key, digest = StoreOp.APPEND, request.inbox, sm.entry_id(request.entry)
            terms = NO_TERMS
        replies = []
        for t in op.targets:
            receipt = Receipt.issue(self.key, what, key, digest, int(now) + request.ttl, now,
                                    terms)
            receipt = dataclasses.replace(receipt, node_id=t.node_id)  # in the target's name
            reply = sm.Stored(receipt) if store else sm.Appended(receipt)
            replies.append(am.TargetReply(t.node_id, wire.encode(reply)))
            if t.node_id != self.net.local_cert.node_id:
                # (Z among the targets: a receipt in its own name is its own, true, statement,
                # like a storage node's that signs and then drops; not a forgery)
                self.hstats.forged += 1
        return am.Forwarded(tuple(replies))

    async def _substituted(self, op: am.Forward, request: sm.Store | sm.Append) -> am.Forwarded:
        key = request.key if isinstance(request, sm.Store) else request.inbox
        friends = self._friends(key, len(op.targets))
        replies = []
        for t, friend in zip(op.targets, friends, strict=False):
            try:
                reply = await self.net.request(friend, request)
            except (TransportError, RemoteProtocolError, Refused):
                continue  # an adversary shrugs
            replies.append(am.TargetReply(t.node_id, wire.encode(reply)))
            if friend.node_id != t.node_id:  # a friend that is the target gives a true receipt
                self.hstats.substituted += 1
        return am.Forwarded(tuple(replies))

    def _altered(self, r: am.TargetReply) -> am.TargetReply:
        try:
            reply = wire.decode_any(r.reply, (sm.Stored, sm.Appended), max_size=am.MAX_CELL)
        except RemoteProtocolError:
            return r
        rc = reply.receipt
        digest = bytes([rc.digest[0] ^ 1]) + rc.digest[1:]
        bad = dataclasses.replace(rc, digest=digest)
        self.hstats.altered += 1
        return am.TargetReply(r.node_id, wire.encode(type(reply)(bad)))


class HostileRelay(RelayService):
    """A relay service whose circuit ends are a `HostileAnonymizer` (module docstring)."""

    def __init__(self, net: Network, dht: Lookup, key: crypto.SigningKey, params: NetworkParams,
                 clock: Clock, rng: Rng, *, deeds: Misdeed, coalition: Coalition,
                 stats: HostileStats | None = None, cert_cache: CertCache | None = None
                 ) -> None:
        super().__init__(net, dht, key, params, clock, rng, cert_cache=cert_cache)
        self.deeds = deeds
        self.coalition = coalition
        self.hstats = stats or HostileStats()
        self.end = HostileAnonymizer(net, dht, key, params, clock, self._saw, deeds, coalition,
                                     self.hstats, self.cert_cache)

    async def handle(self, peer: Peer, msg: Any) -> Any:
        if isinstance(msg, am.Open) and Misdeed.REFUSE in self.deeds:
            self._refuse_outside_coalition(msg)
        return await super().handle(peer, msg)

    def _refuse_outside_coalition(self, msg: am.Open) -> None:
        try:
            layer = onion.open_onion(self.key, msg.onion)
        except RemoteProtocolError:
            return
        friends = {c.node_id for c in self.coalition()}
        if layer.next is not None and layer.next.node_id not in friends:
            self.hstats.refused += 1
            raise Refusal("not relaying", ErrorCode.DENIED)
