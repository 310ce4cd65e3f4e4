"""A running node process: TCP transport + the DHT, storage and relay services behind one
registry.

Invariants: the node's identity is its key file (same key → same node id across restarts); the
routing table is saved to the home directory periodically and on shutdown, and restored (every
certificate re-verified) on start; the node keeps serving whatever a peer sends it — a peer's
error is counted, never fatal. Time and randomness are injected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from anonmail import crypto, wire
from anonmail.anon.relay import RelayService
from anonmail.clock import Clock
from anonmail.dht.dht_node import DhtNode
from anonmail.dht.lookup import LookupResult
from anonmail.dht.messages import ContactList
from anonmail.errors import RemoteProtocolError
from anonmail.fileio import write_private
from anonmail.net.base import Peer
from anonmail.net.tcp import AdmissionLimits, TcpNetwork
from anonmail.permit.gate import gated_store
from anonmail.records import ids
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.store.db import StoreDb

log = logging.getLogger("anonmail.node")

SAVE_CHECK_INTERVAL = 1.0  # how often to look for routing-table changes worth saving
CERT_RENEW_FRACTION = 0.5  # reissue our NodeCert when half its lifetime has passed


def admission_for(params: NetworkParams) -> AdmissionLimits:
    """Who may connect to a node on this network (net/admission.py). A testnet runs many nodes
    behind one address (127.0.0.1 or one host's), so every peer there is judged by its key, and
    one address may hold a larger (but still partial) share of the connections; on a real
    network only loopback peers (the user's own agent) are judged so."""
    if params.allow_private_endpoints:
        return AdmissionLimits(shared_everywhere=True)
    return AdmissionLimits()


class Node:
    """One DHT node. Start with `await nursery.start(node.run)`; cancel the scope to stop."""

    def __init__(self, key: crypto.SigningKey, params: NetworkParams, clock: Clock, rng: Rng, *,
                 listen: Endpoint, advertise: Endpoint | None = None,
                 bootstrap: Sequence[Endpoint] = (), contacts_file: Path | None = None,
                 store_file: Path | None = None,
                 trusted_cas: frozenset[bytes] = frozenset(),
                 admission: AdmissionLimits | None = None) -> None:
        """`store_file`: the SQLite store (None: in memory, for tests and the demo).
        `trusted_cas`: CA keys whose address certificates this node accepts. `admission`:
        who may connect (default: `admission_for(params)`)."""
        self.key = key
        self.params = params
        self.clock = clock
        self.rng = rng
        self.listen = listen
        self.advertise = advertise
        self.bootstrap_endpoints = tuple(bootstrap)
        self.contacts_file = contacts_file
        self.cert_cache = CertCache()
        self.net = TcpNetwork(key, params, clock, rng, cert_cache=self.cert_cache,
                              admission=admission or admission_for(params))
        self.dht = DhtNode(self.net, key, params, clock, rng, self.cert_cache)
        # A real database commit waits for fsync: run the store's handlers off the event loop.
        on_disk = store_file is not None
        self.store_db = StoreDb(":memory:" if store_file is None else store_file,
                                threads=on_disk)
        # The store behind the permit gate (DESIGN.md §6): inboxes take permitted appends only.
        self.store = gated_store(self.net, self.dht, key, params, clock, rng, self.store_db,
                                 trusted_cas=trusted_cas, offload=on_disk)
        # Every node relays and anonymizes for others (DESIGN.md §7): X, Y, Z and W are
        # drawn from all nodes, so every node must be able to play each role.
        self.relay = RelayService(self.net, self.dht, key, params, clock, rng,
                                  cert_cache=self.cert_cache)
        # One way in: the DHT, the store and the relay behind one registry that observes every
        # requester.
        self.services = self.dht.registry(self.store, self.relay)
        # An observer of every answered request (peer, request, reply): the demo's and the
        # tests' view of what this node saw. None in a real node.
        self.on_request: Callable[[Peer, Any, Any], object] | None = None
        self.endpoint: Endpoint | None = None
        self.restored = 0  # contacts restored from the saved table at start
        self._saved = b""

    @property
    def node_id(self) -> bytes:
        return ids.node_id(self.key.public)

    @property
    def cert(self) -> NodeCert:
        return self.net.local_cert

    async def handle(self, peer: Peer, msg: Any) -> Any:
        """Every incoming request, through the node's one registry (net/services.py)."""
        reply = await self.services.handle(peer, msg)
        # Types and public node ids only: never keys, blobs, entries or addresses.
        log.debug("%s from %s -> %s", type(msg).__name__, ids.short(peer.node_id),
                  type(reply).__name__)
        if self.on_request is not None:
            self.on_request(peer, msg, reply)
        return reply

    def _issue_cert(self) -> None:
        assert self.endpoint is not None
        self.net.cert = NodeCert.issue(self.key, (self.advertise or self.endpoint,),
                                       self.clock.now(), self.params)

    async def bind(self) -> Endpoint:
        """Open the listening socket, unless done already (`run` calls this): a caller that
        binds first can tell a busy port (OSError, nothing started) from later failures."""
        if self.endpoint is None:
            self.endpoint = await self.net.bind(self.listen.host, self.listen.port)
        return self.endpoint

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        await self.bind()
        self._issue_cert()
        self.restored = restored = self.restore_contacts()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.net.serve, self.handle)
                await nursery.start(self.dht.maintain)
                await nursery.start(self.store.serve)
                nursery.start_soon(self._housekeeping)
                learned = await self.join()
                self.save_contacts()  # a crash right after joining keeps the table
                log.info("node %s up: %d contacts restored, %d after join",
                         ids.short(self.node_id), restored, learned)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                self.save_contacts()
                await self.net.aclose()
                self.store_db.close()

    async def join(self) -> int:
        """Bootstrap from the configured endpoints (and from restored contacts)."""
        try:
            return await self.dht.bootstrap(self.bootstrap_endpoints)
        except Exception as e:  # an unreachable bootstrap node must not stop ours
            log.warning("bootstrap incomplete: %s", type(e).__name__)
            return len(self.dht.contacts())

    async def lookup(self, key: bytes, k: int | None = None) -> LookupResult:
        return await self.dht.lookup(key, k)

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(SAVE_CHECK_INTERVAL)
            self.save_contacts()
            cert = self.net.local_cert
            if self.clock.now() > cert.issued + (cert.expires - cert.issued) * CERT_RENEW_FRACTION:
                self._issue_cert()

    def save_contacts(self) -> None:
        """Write the routing table if it changed since the last save (so a SIGKILL loses at
        most SAVE_CHECK_INTERVAL seconds of contacts)."""
        if self.contacts_file is None:
            return
        data = wire.encode(ContactList(tuple(self.dht.contacts())))
        if data != self._saved:
            write_private(self.contacts_file, data)
            self._saved = data

    def restore_contacts(self) -> int:
        if self.contacts_file is None or not self.contacts_file.exists():
            return 0
        try:
            saved = wire.decode(self.contacts_file.read_bytes(), ContactList, max_size=8 << 20)
        except RemoteProtocolError:
            log.warning("saved contacts unreadable; starting from bootstrap only")
            return 0
        return self.dht.add_contacts(saved.certs)
