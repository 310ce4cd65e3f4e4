"""The storage service a node runs: request dispatch, garbage collection, republish and repair.

`StoreService` is a `Service` (net/services.py): it declares the store's request types and
`handle` runs the synchronous handlers of store/handlers.py; the node's registry turns an
honest refusal into a typed reply and leaves a fault to the transport (store/errors.py).
`serve` runs two loops: garbage collection every `gc_interval` and republish every
`republish_interval`, both jittered by the injected Rng so replicas do not act in lockstep.

Republish (seed 002 §2.3-2.4; DESIGN.md §4: "replicas watch and repair each other"): for every
key it holds, the node looks up the current r = `params.replication` closest nodes and asks
them (`Probe`) what they lack; objects are pushed with a STORE carrying the remaining TTL and
the live delete hashes (its receipt is verified), inbox entries with `Replicate` (with their
original append proofs, re-judged by the receiver). If this node is no longer among the r
closest, it drops its copy once every one of them holds it (held before, or took the push):
handover first, then garbage collection (seed 002 §2.3). Certificates are objects and are
republished the same way (seed 002 §2.4). Like Kademlia (§2.5), an object first placed here
within the last interval is skipped: whoever stored it stored it on the other replicas too. Only
the STORE that placed it counts, not later merges: else anyone holding the blob could suppress
repair by re-storing it every interval.

Budgets (store/budget.py): every request is charged to the party that sent it, its node key
and, off loopback and off testnets, its source address (`party_of`). A republish push is charged
to the pushing replica like any STORE, but only when the target lacks the object (the Probe
comes first, and a STORE of a held object is a merge that charges nothing new), so a replica's
republish passes never add up against its share.

Deviation: seed 002 §2.3 also collects, under storage pressure, objects the node is no longer
responsible for, from inside a STORE. Finding out needs lookups, which a synchronous handler
cannot make; here a full node refuses (quota) and sheds such objects at its next republish.

Threads: by default handlers run inline in trio (what simulations need: a worker thread would
let MockClock's autojump advance virtual time while SQLite works). A real node should pass
`offload=True`: a commit with synchronous=FULL waits for fsync (milliseconds on an SSD, tens on
a slow disk or SD card), which would stall every connection and the DHT if it ran on the event
loop; offloaded, every database use goes through one worker at a time (`CapacityLimiter(1)`),
since the service owns a single connection.

Logs carry counts only: never keys, blobs, entries or addresses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import trio

from anonmail import crypto, wire
from anonmail.clock import Clock
from anonmail.errors import LocalError, Refusal, Refused, RemoteProtocolError, TransportError
from anonmail.net.base import Network, Peer
from anonmail.net.fanout import fan_out
from anonmail.records import ids
from anonmail.records.certs import NodeCert
from anonmail.records.params import NetworkParams
from anonmail.records.receipts import StoreOp, store_terms
from anonmail.rng import Rng
from anonmail.store.budget import party_of
from anonmail.store.client import Lookup, check_receipt, closest
from anonmail.store.db import EntryRow, Expired, StoreDb
from anonmail.store.handlers import (
    AppendPolicy,
    RecordRule,
    StoreContext,
    StoreLimits,
    accept_within_quotas,
    dispatch,
    handle_store,
)
from anonmail.store.messages import (
    MAX_DELETE_HASHES,
    MAX_PROBE_IDS,
    MAX_REPLICATE,
    REQUESTS,
    VERSIONED,
    AppendProof,
    Fetch,
    Fetched,
    ItemKind,
    Needs,
    ObjectKind,
    Probe,
    ProbeItem,
    ReplicaEntry,
    Replicate,
    Replicated,
    Store,
    Stored,
)

log = logging.getLogger("anonmail.store")

T = TypeVar("T")
REPLICATE_BYTES = 512 << 10  # entry bytes per Replicate request (fits a 1 MiB frame)
JITTER = 0.1  # loop intervals vary by +-10 %


@dataclass
class StoreStats:
    handled: int = 0
    refused: int = 0  # refusals answered (faults and not)
    faults: int = 0  # refusals that were the peer's fault
    gc_runs: int = 0
    expired: int = 0  # objects, entries, tombstones and nonces dropped by GC
    republished: int = 0  # keys examined by republish
    skipped: int = 0  # keys skipped as recently stored here
    pushed_objects: int = 0  # STOREs that placed an object on a replica lacking it
    pushed_entries: int = 0  # entries a replica took
    handed_over: int = 0  # keys dropped after handover (no longer among the r closest)
    push_failures: int = 0


class StoreService:
    def __init__(self, net: Network, dht: Lookup, key: crypto.SigningKey, params: NetworkParams,
                 clock: Clock, rng: Rng, db: StoreDb, *,
                 trusted_cas: frozenset[bytes] = frozenset(),
                 limits: StoreLimits | None = None,
                 append_policy: AppendPolicy = accept_within_quotas,
                 record_rules: dict[ObjectKind, RecordRule] | None = None,
                 gc_interval: float = 600.0, republish_interval: float = 3600.0,
                 republish_parallel: int = 8, offload: bool = False,
                 shared_sources: bool | None = None) -> None:
        """`shared_sources`: judge every requester by its key alone, never by its address
        (default: on a testnet, whose nodes share addresses, as net/admission.py does)."""
        self.net = net
        self.dht = dht
        self.params = params
        self.clock = clock
        self.rng = rng
        self.db = db
        self.ctx = StoreContext(db, key, params, trusted_cas,
                                limits if limits is not None else StoreLimits(), append_policy,
                                dict(record_rules or {}))
        self.node_id = ids.node_id(key.public)
        self.gc_interval = gc_interval
        self.republish_interval = republish_interval
        self.republish_parallel = republish_parallel
        if offload and not db.threads:
            raise LocalError("offload=True needs a StoreDb opened with threads=True")
        self.offload = offload
        self.shared_sources = (params.allow_private_endpoints if shared_sources is None
                               else shared_sources)
        self._db_lock = trio.CapacityLimiter(1)
        self.stats = StoreStats()

    # -- serving ---------------------------------------------------------------------------------

    requests: tuple[type, ...] = REQUESTS  # the Service protocol (net/services.py)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a database-touching function inline, or on the worker thread (`offload`)."""
        if not self.offload:
            return fn(*args)
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self._db_lock)

    async def handle(self, peer: Peer, msg: Any) -> Any:
        """Answer a store request. Refusals propagate to the node's registry, which answers an
        honest one (`Denied`) with its code and leaves a fault (`Invalid`) to the transport."""
        now = self.clock.now()
        self.stats.handled += 1
        try:
            party = party_of(self.ctx.party_secret, peer.node_id, peer.address,
                             shared=self.shared_sources)
            return await self._db(dispatch, self.ctx, party, msg, now)
        except Refusal:
            self.stats.refused += 1
            raise
        except RemoteProtocolError:
            self.stats.refused += 1
            self.stats.faults += 1
            raise

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Garbage collection and republish, for ever."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._loop, self.gc_interval, self.collect_garbage)
            nursery.start_soon(self._loop, self.republish_interval, self.republish)
            task_status.started()

    async def _loop(self, interval: float, job: Callable[[], Any]) -> None:
        while True:
            await trio.sleep(interval * (1.0 - JITTER + 2 * JITTER * self.rng.random()))
            await job()

    async def collect_garbage(self) -> Expired:
        """Drop expired objects, tombstones, entries, ACK records and nonces."""
        gone = await self._db(self.db.expire, self.clock.now())
        self.stats.gc_runs += 1
        self.stats.expired += gone.objects + gone.entries + gone.acked + gone.nonces
        if gone.objects or gone.entries:
            log.debug("gc: %d objects, %d entries expired", gone.objects, gone.entries)
        return gone

    # -- republish and repair --------------------------------------------------------------------

    async def republish(self, *, force: bool = False) -> StoreStats:
        """One republish pass over every key held (see the module docstring). `force`: do not
        skip recently stored objects. Returns the cumulative stats."""
        now = self.clock.now()
        objects = await self._db(self.db.object_keys, now)
        inboxes = await self._db(self.db.inbox_keys, now)
        jobs: list[tuple[Callable[[bytes], Awaitable[None]], bytes]] = []
        held_inboxes = set(inboxes)
        for key, _kind, touched in objects:
            if key in held_inboxes:
                continue  # the inbox's policy: pushed by the inbox's job, before its entries
            if not force and now - touched < self.republish_interval:
                self.stats.skipped += 1
                continue
            jobs.append((self._republish_object, key))
        jobs.extend((self._republish_inbox, inbox) for inbox in inboxes)
        await fan_out(jobs, lambda job: job[0](job[1]), limit=self.republish_parallel)
        log.debug("republish: %d objects, %d inboxes", len(objects), len(inboxes))
        return self.stats

    async def _closest(self, key: bytes) -> tuple[list[NodeCert], bool]:
        """(the other nodes among the r closest to `key`, whether we are among them)."""
        found = await closest(self.dht, key, self.params.replication)
        others = [c for c in found if c.node_id != self.node_id]
        return others, len(others) < len(found)

    async def _request(self, to: NodeCert, msg: Any) -> Any:
        try:
            return await self.net.request(to, msg)
        except (TransportError, Refused, RemoteProtocolError):
            self.stats.push_failures += 1
            return None

    async def _republish_object(self, key: bytes) -> None:
        self.stats.republished += 1
        row = await self._db(self.db.get_object, key)
        now = self.clock.now()
        if row is None or row.blob is None or row.expires <= now:
            return
        live, _removed = await self._db(self.db.get_hashes, key)
        targets, responsible = await self._closest(key)
        probe = Probe((ProbeItem(ItemKind.OBJECT, key, (row.digest,)),))
        blob = row.blob
        hashes = sorted(live)

        async def sync(target: NodeCert) -> bool:
            """Does `target` hold the object after this (it had it, or took our push)?"""
            needs = await self._request(target, probe)
            if not isinstance(needs, Needs) or len(needs.items) != 1:
                return False
            if not needs.items[0].ids:
                return True
            ttl = row.expires - int(self.clock.now())
            if ttl <= 0:
                return False
            # One STORE creates it; more merge the rest of the delete hashes (256 a request).
            chunks = [hashes[i:i + MAX_DELETE_HASHES]
                      for i in range(0, len(hashes), MAX_DELETE_HASHES)] or [[]]
            for chunk in chunks:
                reply = await self._request(target, Store(key, ObjectKind(row.kind), blob, ttl,
                                                          tuple(chunk)))
                if not isinstance(reply, Stored):
                    if row.kind in VERSIONED:
                        await self._pull_newer(target, key, ObjectKind(row.kind))
                    return False
                try:
                    check_receipt(reply.receipt, target, StoreOp.STORE, key, row.digest,
                                  terms=store_terms(() if row.kind in VERSIONED else chunk))
                except RemoteProtocolError:
                    self.stats.push_failures += 1
                    return False
            self.stats.pushed_objects += 1
            return True

        held = await fan_out(targets, sync)
        if not responsible and targets and all(o.value for o in held):
            def drop() -> bool:
                with self.db.transaction():
                    return self.db.drop_object(key)

            if await self._db(drop):
                self.stats.handed_over += 1

    async def _pull_newer(self, target: NodeCert, key: bytes, kind: ObjectKind) -> None:
        """`target` refused our certificate (or inbox policy): maybe it holds a newer one. Take
        that (STORE's own checks decide: valid, same owner, later version), so replicas
        converge on the newest certificate (seed 002 §2.4) and the newest policy, with its
        revocations (DESIGN.md §6)."""
        reply = await self._request(target, Fetch(key))
        if not isinstance(reply, Fetched) or reply.kind is not kind:
            return
        now = self.clock.now()
        row = await self._db(self.db.get_object, key)
        if row is None or row.expires <= now:
            return
        store = Store(key, kind, reply.blob, max(1, row.expires - int(now)), ())
        try:
            await self._db(handle_store, self.ctx, store, now)
        except (Refusal, RemoteProtocolError):
            return

    async def _republish_inbox(self, inbox: bytes) -> None:
        row = await self._db(self.db.get_object, inbox)
        if row is not None and row.blob is not None and row.kind in VERSIONED:
            # The owner's policy first: a replica judges every pushed entry by it (DESIGN.md
            # §6), and one without it would refuse them all.
            await self._republish_object(inbox)
        self.stats.republished += 1
        rows: list[EntryRow] = await self._db(self.db.inbox_entries, inbox, self.clock.now())
        if not rows:
            return
        targets, responsible = await self._closest(inbox)
        by_id = {r.entry_id: r for r in rows}
        offered = list(by_id)

        async def sync(target: NodeCert) -> bool:
            wanted: list[bytes] = []
            for i in range(0, len(offered), MAX_PROBE_IDS):
                items = (ProbeItem(ItemKind.INBOX, inbox, tuple(offered[i:i + MAX_PROBE_IDS])),)
                needs = await self._request(target, Probe(items))
                if not isinstance(needs, Needs) or len(needs.items) != 1:
                    return False
                wanted.extend(eid for eid in needs.items[0].ids if eid in by_id)
            ok = True
            for batch in _batches([by_id[eid] for eid in dict.fromkeys(wanted)]):
                now = int(self.clock.now())
                entries = tuple(ReplicaEntry(r.entry, max(1, r.expires - now), _proof(r.proof))
                                for r in batch if r.expires > now)
                if not entries:
                    continue
                reply = await self._request(target, Replicate(inbox, entries))
                if not isinstance(reply, Replicated):
                    return False
                self.stats.pushed_entries += reply.accepted
                ok = ok and reply.accepted == len(entries)
            return ok

        held = await fan_out(targets, sync)
        if not responsible and targets and all(o.value for o in held):
            def drop() -> int:
                with self.db.transaction():
                    return self.db.drop_entries(inbox, offered)

            await self._db(drop)
            self.stats.handed_over += 1


def _proof(encoded: bytes | None) -> AppendProof | None:
    return None if encoded is None else wire.decode(encoded, AppendProof)


def _batches(rows: Sequence[EntryRow]) -> list[list[EntryRow]]:
    """Split entries into Replicate-sized batches (count and bytes)."""
    out: list[list[EntryRow]] = []
    cur: list[EntryRow] = []
    size = 0
    for r in rows:
        if cur and (len(cur) >= MAX_REPLICATE or size + len(r.entry) > REPLICATE_BYTES):
            out.append(cur)
            cur, size = [], 0
        cur.append(r)
        size += len(r.entry)
    if cur:
        out.append(cur)
    return out
