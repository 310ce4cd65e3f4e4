"""What a user agent calls to use the store: the primitives on the r closest nodes (seed 002 §3).

The agent, not the nodes, replicates (seed 002 §2.2: "the UAs are responsible for replicating
data across the DHT nodes"). Every function looks the key up (`dht.lookup(key, k)`, the one
DHT service the mail layer needs, seed 002 §2.1) and talks to the nodes through the `Network`:

* `store_replicated` / `append_replicated`: the request on the r closest in parallel; every
  receipt is verified against the NodeCert the request went to (signature, node id, op, key,
  digest, and with a clock its time and expiry); nodes that failed are excluded and a fresh,
  wider set is asked for until r receipts are in or the rounds run out (seed 002 §3.1 step 6).
  Fewer than r receipts back means a partial store: the caller decides (retry later, warn);
* `fetch_any`: replicas closest first until one returns content that checks: the blob digest
  the caller passes (a body's digest from its sealed header, seed 002 §3.3), else the content
  address (fragments); a replica with bad content is skipped (threat T-STORE-TAMPER);
* `fetch_cert`: an AddressCert from all replicas, the newest valid one wins, and replicas that
  lack it (or hold an older one) get it stored (seed 002 §2.4 certificate persistence);
* `read_all`: READ on all r replicas, paging, union de-duplicated by entry id (seed 002 §3.2);
* `ack_all`, `delete_all`: ACK / DELETE on the r closest (and any extra nodes named).

Nothing here logs or returns contents other than to the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from anonmail import crypto, ids, wire
from anonmail.certs import AddressCert, NodeCert
from anonmail.clock import Clock
from anonmail.dht.lookup import LookupResult
from anonmail.dht.messages import MAX_NODES
from anonmail.errors import LocalError, Refused, RemoteProtocolError, TransportError
from anonmail.net.base import Network
from anonmail.receipts import Receipt, StoreOp
from anonmail.rng import Rng
from anonmail.store.messages import (
    MAX_ACK,
    Ack,
    Acked,
    Append,
    Appended,
    AppendProof,
    Delete,
    Deleted,
    Entries,
    Fetch,
    Fetched,
    InboxEntry,
    NotFound,
    ObjectKind,
    OwnerOp,
    Read,
    Store,
    Stored,
    args_digest_ack,
    args_digest_read,
    blob_digest,
    entry_id,
)
from anonmail.store.proofs import make_owner_proof

T = TypeVar("T")
DEFAULT_ROUNDS = 3
MAX_PAGES = 64  # READ pages per node per call (a full inbox is ~16)
DEFAULT_SKEW = 600


class Lookup(Protocol):
    """What the client needs from the DHT (a `DhtNode`, or a lookup through an anonymizer)."""

    async def lookup(self, key: bytes, k: int | None = ...) -> LookupResult: ...


_RequestErrors = (TransportError, Refused, RemoteProtocolError)


async def closest(dht: Lookup, key: bytes, n: int) -> tuple[NodeCert, ...]:
    """The n live nodes closest to `key`, closest first.

    Looks up with the DHT's own k (`params.k`, 20) and keeps the first n, as Kademlia does:
    a lookup asked for only r = 8 converges on fewer candidates per disjoint path and was seen
    to return fewer than r nodes when some of the closest had crashed, though r live ones
    existed. Asks for n explicitly only when the DHT's k is smaller."""
    found = await dht.lookup(key, None)
    if len(found.nodes) < n:
        found = await dht.lookup(key, min(MAX_NODES, n))
    return found.nodes[:n]


def check_receipt(receipt: Receipt, cert: NodeCert, op: StoreOp, key: bytes, digest: bytes,
                  now: float | None = None, skew: int = DEFAULT_SKEW) -> None:
    """Raise RemoteProtocolError unless `receipt` is `cert`'s node's signed statement that it
    holds `digest` under `key` for `op` (and, given `now`, was made now and has not expired)."""
    receipt.verify(cert.public_key)  # also: node id = H(key)
    if receipt.op != op or receipt.key != key or receipt.digest != digest:
        raise RemoteProtocolError("receipt for something else")
    if now is not None:
        if abs(receipt.time - now) > skew:
            raise RemoteProtocolError("receipt time outside the clock skew")
        if receipt.expires <= now:
            raise RemoteProtocolError("receipt already expired")


async def _gather(items: Sequence[NodeCert],
                  call: Callable[[NodeCert], Awaitable[T]]) -> list[T | BaseException]:
    """Run `call` on every node in parallel; each result or its request error, in order."""
    out: list[T | BaseException] = [LocalError("not run")] * len(items)

    async def one(i: int, cert: NodeCert) -> None:
        try:
            out[i] = await call(cert)
        except _RequestErrors as e:
            out[i] = e

    async with trio.open_nursery() as nursery:
        for i, cert in enumerate(items):
            nursery.start_soon(one, i, cert)
    return out


async def _replicated(net: Network, dht: Lookup, key: bytes, r: int, rounds: int,
                      call: Callable[[NodeCert], Awaitable[Receipt]]) -> list[Receipt]:
    """Seed 002 §3.1 steps 4-6: do `call` on the r closest; on failures ask for a fresh set
    (wider by the failures, which are excluded) and try the newcomers."""
    done: dict[bytes, Receipt] = {}
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
        for cert, outcome in zip(targets, await _gather(targets, call), strict=True):
            if isinstance(outcome, Receipt):
                done[cert.node_id] = outcome
            else:
                failed.add(cert.node_id)
    return list(done.values())


async def store_replicated(net: Network, dht: Lookup, key: bytes, kind: ObjectKind, blob: bytes,
                           ttl: int, delete_hashes: Iterable[bytes], r: int, *,
                           clock: Clock | None = None, skew: int = DEFAULT_SKEW,
                           rounds: int = DEFAULT_ROUNDS) -> list[Receipt]:
    """STORE on the r closest nodes; the verified receipts (fewer than r: partial)."""
    msg = Store(key, kind, blob, ttl, tuple(delete_hashes))
    digest = blob_digest(blob)

    async def call(cert: NodeCert) -> Receipt:
        reply = await net.request(cert, msg)
        if not isinstance(reply, Stored):
            raise RemoteProtocolError(f"STORE answered with {type(reply).__name__}")
        check_receipt(reply.receipt, cert, StoreOp.STORE, key, digest,
                      None if clock is None else clock.now(), skew)
        return reply.receipt

    return await _replicated(net, dht, key, r, rounds, call)


async def append_replicated(net: Network, dht: Lookup, inbox: bytes, entry: bytes, ttl: int,
                            proof: AppendProof | None, r: int, *, clock: Clock | None = None,
                            skew: int = DEFAULT_SKEW,
                            rounds: int = DEFAULT_ROUNDS) -> list[Receipt]:
    """APPEND to the r inbox replicas; the verified receipts (fewer than r: partial)."""
    msg = Append(inbox, entry, ttl, proof)
    digest = entry_id(entry)

    async def call(cert: NodeCert) -> Receipt:
        reply = await net.request(cert, msg)
        if not isinstance(reply, Appended):
            raise RemoteProtocolError(f"APPEND answered with {type(reply).__name__}")
        check_receipt(reply.receipt, cert, StoreOp.APPEND, inbox, digest,
                      None if clock is None else clock.now(), skew)
        return reply.receipt

    return await _replicated(net, dht, inbox, r, rounds, call)


async def fetch_any(net: Network, dht: Lookup, key: bytes, r: int, *,
                    digest: bytes | None = None) -> bytes | None:
    """The blob under `key` from the first replica whose content checks, closest first: its
    `blob_digest` must equal `digest` (bodies), or without a digest its content address must
    equal `key` (fragments). None if no replica has good content (seed 002 §3.3)."""
    for cert in await closest(dht, key, r):
        try:
            reply = await net.request(cert, Fetch(key))
        except _RequestErrors:
            continue
        if not isinstance(reply, Fetched):
            continue
        if digest is not None:
            ok = crypto.constant_time_eq(blob_digest(reply.blob), digest)
        else:
            ok = ids.fragment_key(reply.blob) == key
        if ok:
            return reply.blob
    return None


async def fetch_cert(net: Network, dht: Lookup, address: str, r: int,
                     trusted_cas: frozenset[bytes], clock: Clock, *, skew: int = DEFAULT_SKEW,
                     repair: bool = True, ttl: int = 30 * 86400) -> AddressCert | None:
    """The newest valid AddressCert for `address` among the r replicas. With `repair`, the
    replicas that lacked it or held an older one are given it (seed 002 §2.4)."""
    key = ids.cert_key(address)
    found = await closest(dht, key, r)

    async def call(cert: NodeCert) -> Any:
        return await net.request(cert, Fetch(key))

    now = clock.now()
    best: AddressCert | None = None
    held: dict[bytes, int] = {}  # node id -> issued of the valid cert it gave
    for node, reply in zip(found, await _gather(found, call), strict=True):
        if not isinstance(reply, Fetched):
            continue
        try:
            cert = wire.decode(reply.blob, AddressCert)
            if cert.address != address:
                raise RemoteProtocolError("certificate for another address")
            cert.verify(trusted_cas, now, skew)
        except RemoteProtocolError:
            continue
        held[node.node_id] = cert.issued
        if best is None or cert.issued > best.issued:
            best = cert
    if best is not None and repair:
        stale = [n for n in found if held.get(n.node_id, -1) < best.issued]
        msg = Store(key, ObjectKind.CERT, wire.encode(best), ttl, ())
        await _gather(stale, lambda node: net.request(node, msg))
    return best


@dataclass
class ReadResult:
    entries: dict[bytes, InboxEntry] = field(default_factory=dict)  # by entry id
    nodes: list[NodeCert] = field(default_factory=list)  # replicas that answered every page
    failed: list[NodeCert] = field(default_factory=list)


async def read_all(net: Network, dht: Lookup, inbox: bytes, sign_key: crypto.SigningKey,
                   cert: AddressCert, r: int, clock: Clock, rng: Rng) -> ReadResult:
    """READ every page from all r replicas; the union, de-duplicated by entry id (seed 002
    §3.2: the replicas are not consistent, so take the superset)."""
    found = await closest(dht, inbox, r)

    async def call(node: NodeCert) -> list[InboxEntry]:
        got: list[InboxEntry] = []
        after = 0
        for _ in range(MAX_PAGES):
            proof = make_owner_proof(sign_key, cert, OwnerOp.READ, inbox, node.node_id,
                                     args_digest_read(after), clock.now(), rng)
            reply = await net.request(node, Read(inbox, after, proof))
            if not isinstance(reply, Entries):
                raise RemoteProtocolError(f"READ answered with {type(reply).__name__}")
            got.extend(reply.entries)
            if not reply.more or reply.next <= after:
                break
            after = reply.next
        return got

    result = ReadResult()
    for node, outcome in zip(found, await _gather(found, call), strict=True):
        if isinstance(outcome, BaseException):
            result.failed.append(node)
            continue
        result.nodes.append(node)
        for e in outcome:
            eid = entry_id(e.entry)
            old = result.entries.get(eid)
            if old is None or e.expires > old.expires:
                result.entries[eid] = e
    return result


async def ack_all(net: Network, dht: Lookup, inbox: bytes, entry_ids: Sequence[bytes],
                  sign_key: crypto.SigningKey, cert: AddressCert, r: int, clock: Clock, rng: Rng,
                  *, nodes: Iterable[NodeCert] = ()) -> int:
    """ACK `entry_ids` on the r closest replicas and on `nodes` (e.g. those a READ reached);
    returns on how many nodes every id was ACKed."""
    found = await closest(dht, inbox, r)
    targets = {c.node_id: c for c in (*found, *nodes)}
    ids_ = tuple(dict.fromkeys(entry_ids))
    if not ids_:
        return 0

    async def call(node: NodeCert) -> bool:
        for i in range(0, len(ids_), MAX_ACK):
            chunk = ids_[i:i + MAX_ACK]
            proof = make_owner_proof(sign_key, cert, OwnerOp.ACK, inbox, node.node_id,
                                     args_digest_ack(chunk), clock.now(), rng)
            reply = await net.request(node, Ack(inbox, chunk, proof))
            if not isinstance(reply, Acked):
                raise RemoteProtocolError(f"ACK answered with {type(reply).__name__}")
        return True

    outcomes = await _gather(list(targets.values()), call)
    return sum(1 for o in outcomes if o is True)


async def delete_all(net: Network, dht: Lookup, key: bytes, secret: bytes, r: int, *,
                     widen: int = 0) -> int:
    """DELETE with `secret` on the r closest nodes (plus `widen` more: seed 002 §2.2 "the UA
    may attempt to reach older nodes by widening its search"); returns how many nodes no
    longer hold the right (Deleted, or NotFound)."""
    found = await closest(dht, key, min(MAX_NODES, r + widen))

    async def call(node: NodeCert) -> bool:
        reply = await net.request(node, Delete(key, secret))
        return isinstance(reply, Deleted | NotFound)

    outcomes = await _gather(found, call)
    return sum(1 for o in outcomes if o is True)
