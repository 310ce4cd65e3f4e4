"""Inbox policies where they live (DESIGN.md §6): the owner publishes its signed InboxPolicy on
its inbox and request inbox replicas; a sender fetches a recipient's, and an APPEND that a new
replica refuses NO_POLICY carries the owner's policy there and is made again (`place`).

`Policies` is the base of mail/permits.py's `Permits`: the permit flows decide *what* is sent
and granted, this module *where* it goes. Kept apart so neither module grows past a screenful.
"""

from __future__ import annotations

from collections.abc import Sequence

from anonmail import wire
from anonmail.clock import Clock
from anonmail.errors import ErrorCode, RemoteProtocolError
from anonmail.mail.identity import AddressIdentity
from anonmail.net.base import Network
from anonmail.permit.book import PermitBook
from anonmail.permit.records import MAX_POLICY, InboxPolicy
from anonmail.records import ids
from anonmail.records.certs import NodeCert
from anonmail.records.params import NetworkParams
from anonmail.store.client import (
    REQUEST_ERRORS,
    Lookup,
    Placement,
    append_replicated,
    closest,
    request_all,
    store_replicated,
)
from anonmail.store.messages import AppendProof, Fetch, Fetched, ObjectKind, Store, Stored

POLICY_TTL = 30 * 86400  # nodes keep a policy at most this long: republish with the cert
PUSHES = 4  # rounds of "push the policy to the replicas that lack it, append again"


class Policies:
    def __init__(self, net: Network, dht: Lookup, identity: AddressIdentity, book: PermitBook,
                 params: NetworkParams, clock: Clock, trusted_cas: frozenset[bytes]) -> None:
        self.net = net
        self.dht = dht
        self.identity = identity
        self.book = book
        self.params = params
        self.clock = clock
        self.trusted_cas = trusted_cas

    @property
    def me(self) -> str:
        return self.identity.address

    # -- the owner's policy ----------------------------------------------------------------------

    def policy(self) -> InboxPolicy:
        return self.book.policy(self.identity.sign, self.identity.cert, self.clock.now())

    async def publish_policy(self) -> int:
        """STORE the current policy under our inbox and request inbox keys; how many inbox
        replicas took it. A block is only as good as the replicas that hold it."""
        policy = self.policy()
        blob = wire.encode(policy)
        ttl = max(1, min(POLICY_TTL, self.identity.cert.expires - int(self.clock.now())))
        took = 0
        for key in (ids.inbox_key(self.me), ids.requests_key(self.me)):
            placed = await store_replicated(self.net, self.dht, key, ObjectKind.POLICY, blob,
                                            ttl, (), self.params.replication, clock=self.clock,
                                            skew=self.params.clock_skew)
            if key == ids.inbox_key(self.me):
                took = len(placed.receipts)
        self.book.published = self.book.version
        self.book.save()
        return took

    # -- a recipient's policy --------------------------------------------------------------------

    async def fetch_policy(self, address: str, key: bytes | None = None, *,
                           newest: bool = False) -> InboxPolicy | None:
        """A valid policy from the replicas of `address`'s inbox (or `key`): the first found
        (enough to learn the rules), or with `newest` the newest any replica holds (what a
        push must carry: never an older revocation list). One replica at a time (an
        anonymizer fetches from one target per request)."""
        key = ids.inbox_key(address) if key is None else key
        best: InboxPolicy | None = None
        now = self.clock.now()
        for node in await closest(self.dht, key, self.params.replication):
            try:
                reply = await self.net.request(node, Fetch(key))
            except REQUEST_ERRORS:
                continue
            if not isinstance(reply, Fetched) or reply.kind is not ObjectKind.POLICY:
                continue
            try:
                policy = wire.decode(reply.blob, InboxPolicy, max_size=MAX_POLICY)
                policy.cert.verify(self.trusted_cas, now, self.params.clock_skew)
                policy.verify()
            except RemoteProtocolError:
                continue
            if policy.cert.address == address and policy.covers(key) and (
                    best is None or policy.version > best.version):
                best = policy
                if not newest:
                    break
        return best

    async def push_policy(self, key: bytes, nodes: Sequence[NodeCert],
                          policy: InboxPolicy) -> set[bytes]:
        """Give `nodes` the owner's signed policy; the ids of those that took it."""
        store = Store(key, ObjectKind.POLICY, wire.encode(policy), POLICY_TTL, ())
        return {o.item.node_id for o in await request_all(self.net, nodes, store)
                if isinstance(o.value, Stored)}

    # -- appending -------------------------------------------------------------------------------

    async def place(self, address: str, inbox: bytes, entry: bytes, ttl: int,
                    proof: AppendProof, rounds: int = 4, *,
                    dht: Lookup | None = None) -> Placement:
        """APPEND on the inbox's r replicas. One round first: a full inbox refuses on every
        replica, and trying farther nodes would park the entry where its owner never reads.
        Replicas that answer NO_POLICY (new among the closest) are given the owner's policy
        and asked again; the set widens (up to `rounds`) only past nodes that failed, or that
        still lack the policy after taking it (a node that drops what it stores). `dht`: the
        send's own lookups (store/lookups.py), else ours."""
        r, skew = self.params.replication, self.params.clock_skew
        dht = self.dht if dht is None else dht
        placed = await append_replicated(self.net, dht, inbox, entry, ttl, proof, r,
                                         clock=self.clock, skew=skew, rounds=1)
        pushed: set[bytes] = set()
        dead: set[bytes] = set()  # took the policy and still lack it: no replica at all
        policy: InboxPolicy | None = None
        for _ in range(PUSHES):
            lacking = placed.refused_with(ErrorCode.NO_POLICY)
            if len(placed.receipts) >= r or not (lacking or placed.failures):
                break  # done, or refused for what a policy cannot mend (full, revoked)
            dead.update(n.node_id for n in lacking if n.node_id in pushed)
            widen = len(placed.failures) + len(dead)
            if lacking or dead:
                # The replicas: the r closest, widened past the dead ones (seed 002 §3.1 step
                # 6), never farther: an entry placed farther is one its owner never reads.
                if policy is None:
                    policy = await self.fetch_policy(address, inbox, newest=True)
                    if policy is None:
                        break
                want = [c for c in await closest(dht, inbox, r + widen)
                        if c.node_id not in placed.receipts_by_node and c.node_id not in dead
                        and c.node_id not in pushed]
                pushed |= await self.push_policy(inbox, want, policy)
            again = await append_replicated(self.net, dht, inbox, entry, ttl, proof, r,
                                            clock=self.clock, skew=skew,
                                            rounds=min(rounds, 2) if widen else 1)
            placed.receipts_by_node.update(again.receipts_by_node)
            placed.refusals = again.refusals
            placed.failures.update(again.failures)
            placed.tried.update(again.tried)
        self._learn_block(address, placed)
        return placed

    def _learn_block(self, address: str, placed: Placement) -> None:
        """Learn from refusals: revoked tokens mean we were blocked (drop what we hold)."""
        if any(e.code is ErrorCode.PERMIT_REVOKED for e in placed.refusals.values()) \
                and not placed.receipts:
            self.book.drop_held(address)
            self.book.save()
