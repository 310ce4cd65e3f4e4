"""What a user agent calls to use the store: the primitives on the r closest nodes (seed 002 §3).

The agent, not the nodes, replicates (seed 002 §2.2: "the UAs are responsible for replicating
data across the DHT nodes"). Every function looks the key up (`dht.lookup(key, k)`, the one
DHT service the mail layer needs, seed 002 §2.1) and talks to the nodes through the `Network`:

* `store_replicated` / `append_replicated`: the request on the r closest in parallel; every
  receipt is verified against the NodeCert the request went to (signature, node id, op, key,
  digest, and with a clock its time and expiry); nodes that failed are excluded and a fresh,
  wider set is asked for until r receipts are in or the rounds run out (seed 002 §3.1 step 6).
  The `Placement` says, per node, who signed, who refused with which code (an honest refusal:
  `errors.ErrorCode`, never its text) and who failed. Fewer than r receipts back means a partial
  store: the caller decides (retry later, warn, tell the user the inbox is full);
* `fetch_any`: replicas closest first (or from the `start`-th, to spread parallel fetches)
  until one returns content that checks: the blob digest the caller passes (a body's digest
  from its sealed header, seed 002 §3.3), else the content address (fragments); a replica with
  bad content is skipped (threat T-STORE-TAMPER);
* `fetch_cert`: an AddressCert from all replicas, the newest valid one wins, and replicas that
  lack it (or hold an older one) get it stored (seed 002 §2.4 certificate persistence); the
  certificates seen for the address that did not verify come back too, so the caller can say
  why there is no valid one without asking again;
* `delete_all`: DELETE on the r closest, wider when they did not all hold the right.

The owner's READ and ACK, under owner proofs, are in store/owner_client.py.

Nothing here logs or returns contents other than to the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from anonmail import crypto, wire
from anonmail.clock import Clock
from anonmail.dht.lookup import LookupResult
from anonmail.dht.messages import MAX_NODES
from anonmail.errors import ErrorCode, Refused, RemoteProtocolError, TransportError
from anonmail.net.base import Network
from anonmail.net.fanout import Outcome, fan_out
from anonmail.records import ids
from anonmail.records.certs import AddressCert, NodeCert
from anonmail.records.receipts import NO_TERMS, Receipt, StoreOp, receipt_digest, store_terms
from anonmail.store import messages as sm

DEFAULT_ROUNDS = 3
DEFAULT_SKEW = 600


class Lookup(Protocol):
    """What the client needs from the DHT (a `DhtNode`, or a lookup through an anonymizer)."""

    async def lookup(self, key: bytes, k: int | None = ...) -> LookupResult: ...


REQUEST_ERRORS = (TransportError, Refused, RemoteProtocolError)


@runtime_checkable
class Multicast(Protocol):
    """A network that can send one request to many nodes at once (anon/client.py: one copy
    through the anonymizer, which fans it out)."""

    async def request_many(self, targets: Sequence[NodeCert],
                           msg: Any) -> list[Outcome[NodeCert, Any]]: ...


async def request_all(net: Network, targets: Sequence[NodeCert],
                      msg: Any) -> list[Outcome[NodeCert, Any]]:
    """`msg` to every target, each target's answer or caught error, in target order."""
    if isinstance(net, Multicast):
        return await net.request_many(targets, msg)
    return await fan_out(targets, lambda cert: net.request(cert, msg), catch=REQUEST_ERRORS)


async def closest(dht: Lookup, key: bytes, n: int) -> tuple[NodeCert, ...]:
    """The n live nodes closest to `key`, closest first: `lookup(key, n)` (DESIGN.md §3).

    Asking for n = r, not for the routing k = 20, makes each disjoint path converge once the
    r closest live nodes on its shortlist have answered: at 1,000 nodes, 31 FIND_NODE requests
    and 16 KB a lookup instead of 130 and 124 KB, with the same result (issue 11,
    docs/performance.md). A lookup widens its answers by the nodes that failed to answer it
    (dht/lookup.py, "Dead entries"), so crashed nodes among the closest do not shorten the
    result: at 30% of nodes crashed unannounced the r found are still exactly the r closest
    live ones (tests/test_store_closest.py)."""
    found = await dht.lookup(key, min(MAX_NODES, max(1, n)))
    return found.nodes[:n]


def receipt_terms(msg: sm.Store | sm.Append) -> tuple[bytes, int | None]:
    """The terms and TTL a receipt for `msg` must show (check_receipt): a STORE's delete hashes
    (none for a certificate or policy, which nobody may delete) and its TTL; an APPEND binds
    its entry id only (a duplicate keeps the longer expiry it had)."""
    if isinstance(msg, sm.Append):
        return NO_TERMS, None
    return store_terms(() if msg.kind in sm.VERSIONED else msg.delete_hashes), msg.ttl


def check_receipt(receipt: Receipt, cert: NodeCert, op: StoreOp, key: bytes, digest: bytes,
                  now: float | None = None, skew: int = DEFAULT_SKEW, *,
                  terms: bytes = NO_TERMS, ttl: int | None = None) -> None:
    """Raise RemoteProtocolError unless `receipt` is `cert`'s node's signed statement that it
    holds `digest` under `key` for `op` on `terms` (a STORE's: `store_terms` of its delete
    hashes), and, given `now`, was made now and has not expired, nor (given the `ttl` asked
    for) lives longer than asked: a node may merge into a copy held up to `skew` longer, and
    its clock may differ by as much again (store/handlers.py handle_store)."""
    receipt.verify(cert.public_key)  # also: node id = H(key)
    if receipt.op != op or receipt.key != key:
        raise RemoteProtocolError("receipt for something else")
    if receipt.digest != receipt_digest(digest, terms):
        raise RemoteProtocolError("receipt for other data or terms (delete rights) than asked")
    if now is not None:
        if abs(receipt.time - now) > skew:
            raise RemoteProtocolError("receipt time outside the clock skew")
        if receipt.expires <= now:
            raise RemoteProtocolError("receipt already expired")
        if ttl is not None and receipt.expires > now + ttl + 2 * skew:
            raise RemoteProtocolError("receipt for longer than asked")


@dataclass
class Placement:
    """A replicated STORE or APPEND, per node: receipts that verified, typed refusals, and
    failures (unreachable, or an answer that was wrong: a fault of that node)."""

    receipts_by_node: dict[bytes, Receipt] = field(default_factory=dict)
    refusals: dict[bytes, Refused] = field(default_factory=dict)
    failures: dict[bytes, Exception] = field(default_factory=dict)
    tried: dict[bytes, NodeCert] = field(default_factory=dict)  # every node asked, by id

    def refused_with(self, code: ErrorCode) -> list[NodeCert]:
        """The nodes that refused with `code`."""
        return [self.tried[n] for n, e in self.refusals.items() if e.code is code]

    @property
    def receipts(self) -> list[Receipt]:
        return list(self.receipts_by_node.values())


async def _replicated(dht: Lookup, key: bytes, r: int, rounds: int,
                      call_all: Callable[[Sequence[NodeCert]],
                                         Awaitable[list[Outcome[NodeCert, Receipt]]]]
                      ) -> Placement:
    """Seed 002 §3.1 steps 4-6: do `call` on the r closest; on failures ask for a fresh set
    (wider by the failures, which are excluded) and try the newcomers."""
    out = Placement()
    done = out.receipts_by_node
    failed: set[bytes] = set()
    for _ in range(rounds):
        want = r - len(done)
        if want <= 0:
            break
        found = await closest(dht, key, min(MAX_NODES, r + len(failed)))
        targets = [c for c in found
                   if c.node_id not in done and c.node_id not in failed][:want]
        if not targets:
            break
        for o in await call_all(targets):
            nid = o.item.node_id
            out.tried[nid] = o.item
            if o.value is not None:
                done[nid] = o.value
                continue
            failed.add(nid)
            if isinstance(o.error, Refused) and not o.error.code.is_fault:
                out.refusals[nid] = o.error
            elif o.error is not None:
                out.failures[nid] = o.error
        if failed:
            _stale(dht, key)  # the next round asks for a fresh set (store/lookups.py)
    return out


def _stale(dht: Lookup, key: bytes) -> None:
    """Tell a per-operation lookup memo (store/lookups.py) that nodes of `key`'s set failed."""
    stale = getattr(dht, "stale", None)
    if stale is not None:
        stale(key)


async def _receipted(net: Network, dht: Lookup, key: bytes, msg: sm.Store | sm.Append,
                     op: StoreOp, digest: bytes, r: int, clock: Clock | None, skew: int,
                     rounds: int) -> Placement:
    """`msg` on the r closest to `key`; each answer must carry a receipt for (op, key, digest)
    from the node it went to, on the terms asked for (receipt_terms)."""
    answer = sm.Stored if op is StoreOp.STORE else sm.Appended
    terms, ttl = receipt_terms(msg)

    def receipt(cert: NodeCert, reply: Any) -> Receipt:
        if not isinstance(reply, answer):
            raise RemoteProtocolError(f"{op.name} answered with {type(reply).__name__}")
        check_receipt(reply.receipt, cert, op, key, digest,
                      None if clock is None else clock.now(), skew, terms=terms, ttl=ttl)
        return reply.receipt

    async def call_all(targets: Sequence[NodeCert]) -> list[Outcome[NodeCert, Receipt]]:
        out: list[Outcome[NodeCert, Receipt]] = []
        for o in await request_all(net, targets, msg):
            if o.error is not None:
                out.append(Outcome(o.item, None, o.error))
                continue
            try:
                out.append(Outcome(o.item, receipt(o.item, o.value)))
            except RemoteProtocolError as e:
                out.append(Outcome(o.item, None, e))
        return out

    return await _replicated(dht, key, r, rounds, call_all)


async def store_replicated(net: Network, dht: Lookup, key: bytes, kind: sm.ObjectKind, blob: bytes,
                           ttl: int, delete_hashes: Iterable[bytes], r: int, *,
                           clock: Clock | None = None, skew: int = DEFAULT_SKEW,
                           rounds: int = DEFAULT_ROUNDS) -> Placement:
    """STORE on the r closest nodes; the verified receipts (fewer than r: partial)."""
    return await _receipted(net, dht, key, sm.Store(key, kind, blob, ttl, tuple(delete_hashes)),
                            StoreOp.STORE, sm.blob_digest(blob), r, clock, skew, rounds)


async def append_replicated(net: Network, dht: Lookup, inbox: bytes, entry: bytes, ttl: int,
                            proof: sm.AppendProof | None, r: int, *, clock: Clock | None = None,
                            skew: int = DEFAULT_SKEW,
                            rounds: int = DEFAULT_ROUNDS) -> Placement:
    """APPEND to the r inbox replicas; the verified receipts (fewer than r: partial)."""
    return await _receipted(net, dht, inbox, sm.Append(inbox, entry, ttl, proof), StoreOp.APPEND,
                            sm.entry_id(entry), r, clock, skew, rounds)


async def fetch_any(net: Network, dht: Lookup, key: bytes, r: int, *,
                    digest: bytes | None = None, size: int | None = None, start: int = 0,
                    widen: int = 0) -> bytes | None:
    """The blob under `key` from the first replica whose content checks: its `blob_digest`
    must equal `digest` (bodies), or without a digest its content address must equal `key`
    (fragments); with `size`, its length too. Tries the r closest, beginning at the `start`-th
    (so parallel fetches spread over replicas), then, only if none of them had it, `widen`
    farther nodes (a second, wider lookup: one for r + 4 nodes costs 2.4x one for r, issue
    11). None if no replica has good content (seed 002 §3.3)."""
    tried: set[bytes] = set()
    first = list(await closest(dht, key, r))
    if first:
        s = start % len(first)
        first = first[s:] + first[:s]
    blob = await _fetch_first(net, first, key, digest, size, tried)
    if blob is not None or widen <= 0:
        return blob
    wider = await closest(dht, key, min(MAX_NODES, r + widen))
    return await _fetch_first(net, [c for c in wider if c.node_id not in tried], key, digest,
                              size, tried)


async def _fetch_first(net: Network, nodes: Sequence[NodeCert], key: bytes,
                       digest: bytes | None, size: int | None,
                       tried: set[bytes]) -> bytes | None:
    for cert in nodes:
        tried.add(cert.node_id)
        try:
            reply = await net.request(cert, sm.Fetch(key))
        except REQUEST_ERRORS:
            continue
        if not isinstance(reply, sm.Fetched) or (size is not None and len(reply.blob) != size):
            continue
        if digest is not None:
            ok = crypto.constant_time_eq(sm.blob_digest(reply.blob), digest)
        else:
            ok = ids.fragment_key(reply.blob) == key
        if ok:
            return reply.blob
    return None


@dataclass
class CertSearch:
    """What the replicas of an address's certificate held."""

    cert: AddressCert | None = None  # the newest valid one
    rejected: list[AddressCert] = field(default_factory=list)  # for the address, not valid


async def fetch_cert(net: Network, dht: Lookup, address: str, r: int,
                     trusted_cas: frozenset[bytes], clock: Clock, *, skew: int = DEFAULT_SKEW,
                     repair: bool = True, ttl: int = 30 * 86400) -> CertSearch:
    """The newest valid AddressCert for `address` among the r replicas, and those for the
    address that did not verify (expired, untrusted CA, forged). With `repair`, the replicas
    that lacked the valid one or held an older one are given it (seed 002 §2.4)."""
    key = ids.cert_key(address)
    found = await closest(dht, key, r)

    now = clock.now()
    out = CertSearch()
    held: dict[bytes, int] = {}  # node id -> issued of the valid cert it gave
    for o in await fan_out(found, lambda cert: net.request(cert, sm.Fetch(key)),
                           catch=REQUEST_ERRORS):
        if not isinstance(o.value, sm.Fetched):
            continue
        try:
            cert = wire.decode(o.value.blob, AddressCert)
        except RemoteProtocolError:
            continue
        if cert.address != address:
            continue
        try:
            cert.verify(trusted_cas, now, skew)
        except RemoteProtocolError:
            out.rejected.append(cert)
            continue
        held[o.item.node_id] = cert.issued
        if out.cert is None or cert.issued > out.cert.issued:
            out.cert = cert
    best = out.cert
    if best is not None and repair:
        stale = [n for n in found if held.get(n.node_id, -1) < best.issued]
        msg = sm.Store(key, sm.ObjectKind.CERT, wire.encode(best), ttl, ())
        if stale:
            await request_all(net, stale, msg)
    return out


async def delete_all(net: Network, dht: Lookup, key: bytes, secret: bytes, r: int, *,
                     widen: int = 0) -> int:
    """DELETE with `secret` on the r closest nodes and, unless all r held the right and
    dropped it (Deleted), on `widen` more: a NotFound or a silent node among the r suggests the
    set changed since the store, and older nodes may still hold it (seed 002 §2.2 "the UA may
    attempt to reach older nodes by widening its search"). Returns how many nodes no longer
    hold the right (Deleted, or NotFound)."""
    found = await closest(dht, key, r)
    outcomes = await request_all(net, found, sm.Delete(key, secret))
    gone = sum(1 for o in outcomes if isinstance(o.value, sm.Deleted | sm.NotFound))
    if sum(1 for o in outcomes if isinstance(o.value, sm.Deleted)) >= r or widen <= 0:
        return gone
    asked = {c.node_id for c in found}
    wider = [c for c in await closest(dht, key, min(MAX_NODES, r + widen))
             if c.node_id not in asked]
    outcomes = await request_all(net, wider, sm.Delete(key, secret))
    return gone + sum(1 for o in outcomes if isinstance(o.value, sm.Deleted | sm.NotFound))
