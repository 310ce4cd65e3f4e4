"""A DHT node: answers PING / FIND_NODE, keeps its routing table, runs lookups and maintenance.

Request handling (`answer`, `observe`) is synchronous and pure given `now`; `handle` is its
async wrapper (the `Service` protocol of net/services.py: a node serves the DHT through a
`ServiceRegistry` that observes every requester, `registry()`). Lookups, bootstrap and
maintenance are trio code that talks only to the `Network` interface (DESIGN.md §1), so the
same node runs over TCP and over the simulator's network (sim/network.py).

Invariants:
* a contact enters the routing table only as a verified NodeCert (S/Kademlia §4.1) of a server
  we heard from directly: a node that answered our request, or a requester whose cert lists the
  address we observed it at. Nodes merely named in a FIND_NODE reply are lookup candidates only,
  so a liar cannot fill our table with nodes it made up (Kademlia §2.2 updates a bucket on
  messages *received from* a node);
* a lookup's FIND_NODE is `FindTags`, then `GetCerts` for the tags we hold no verified
  certificate for (dht/tags.py); every cert is verified before use; a reply with an invalid
  cert, a cert not asked for, more contacts than asked for, or of the wrong type is a fault of
  the replier (RemoteProtocolError semantics): the whole reply is discarded, the replier leaves
  our table and its fault is counted. Nothing a peer sends can crash the node;
* timeouts are liveness failures (`params.failure_limit` in a row drop a contact, Kademlia
  §4.1); typed error replies are neither faults nor liveness failures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from anonmail import crypto
from anonmail.clock import Clock
from anonmail.dht.lookup import DisjointLookup, LookupResult, drive
from anonmail.dht.messages import FindNode, FindTags, GetCerts, Nodes, Ping, Pong, Tags
from anonmail.dht.misdirection import Misdirection
from anonmail.dht.routing import AddResult, Contact, ContactCache, RoutingTable
from anonmail.dht.tags import InFlight, TagIndex, answer_parts, split
from anonmail.errors import BadContact, LocalError, Refused, RemoteProtocolError, TransportError
from anonmail.net.base import Network, Peer
from anonmail.net.services import Service, ServiceRegistry
from anonmail.records import ids
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.ids import ID_BYTES
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng


@dataclass
class DhtStats:
    handled: int = 0  # requests answered
    requests: int = 0  # FIND_NODE requests sent
    timeouts: int = 0
    refused: int = 0
    faults: int = 0  # hostile or broken replies and requests
    bad_contacts: int = 0  # certificates whose endpoint another node answers at (dropped)
    misdirected_by: Counter[bytes] = field(default_factory=Counter)  # who named bad contacts
    lookups: int = 0
    fault_by_peer: Counter[bytes] = field(default_factory=Counter)


@dataclass
class _Tally:
    queried: int = 0
    failures: int = 0
    faults: int = 0
    refused: int = 0


class DhtNode:
    def __init__(self, net: Network, key: crypto.SigningKey, params: NetworkParams, clock: Clock,
                 rng: Rng, cert_cache: CertCache | ContactCache) -> None:
        """`cert_cache`: a `ContactCache` (shareable between the nodes of one simulation) or a
        plain `CertCache` to build a private one on."""
        self.net = net
        self.key = key
        self.params = params
        self.clock = clock
        self.rng = rng
        if isinstance(cert_cache, ContactCache):
            if cert_cache.params != params:
                raise LocalError("the contact cache belongs to another network")
            self.contacts_cache = cert_cache
        else:
            self.contacts_cache = ContactCache(params, cert_cache)
        # The id comes from the key, not from net.local_cert: a TCP node binds (and so learns
        # the port its certificate will name) only after it is constructed.
        self.node_id = ids.node_id(key.public)
        self.table = RoutingTable(self.node_id, params, clock.now())
        self.tags = TagIndex()  # verified contacts met, by tag (dht/tags.py)
        self.stats = DhtStats()
        self.misdirected = Misdirection()  # who named bad contacts (dht/misdirection.py)

    @property
    def cert(self) -> NodeCert:
        return self.net.local_cert

    # -- serving (sans-I/O) --------------------------------------------------------------------

    # The Service protocol (net/services.py).
    requests: tuple[type, ...] = (FindTags, GetCerts, FindNode, Ping)

    async def handle(self, peer: Peer, msg: Any) -> Any:
        """Answer a DHT request (the Service protocol). The node's registry has already
        observed the peer (`observe`, its `ServiceRegistry(observe=...)`)."""
        return self.answer(peer, msg, self.clock.now())

    def answer(self, peer: Peer, msg: Any, now: float) -> Any:
        self.stats.handled += 1
        kind = type(msg)
        if kind is FindTags:
            # Never name the requester to itself: it knows where it is.
            near = self.table.closest(msg.target, msg.count, exclude=(peer.node_id,))
            return Tags(b"".join([c.tag for c in near]))
        if kind is GetCerts:
            # The same contacts the FindTags named (unless the table changed since): the
            # certificates of those whose tags are wanted.
            want = frozenset(split(msg.want))
            near = self.table.closest(msg.target, msg.count, exclude=(peer.node_id,))
            return Nodes(tuple(c.cert for c in near if c.tag in want))
        if kind is FindNode:
            near = self.table.closest(msg.target, msg.count, exclude=(peer.node_id,))
            return Nodes(*answer_parts(near, msg.have))
        if kind is Ping:
            return Pong()
        raise RemoteProtocolError(f"not a DHT request: {type(msg).__name__}")

    def registry(self, *services: Service) -> ServiceRegistry:
        """A registry serving this DHT node and `services`, observing every requester."""
        return ServiceRegistry((self, *services), observe=self.observe)

    def observe(self, peer: Peer, now: float | None = None) -> AddResult:
        """A request came from `peer`: add it if it is a server reachable where we saw it.

        The address check stops a node from planting a cert whose endpoints point elsewhere
        (another host, or a victim to flood) by merely sending us requests."""
        now = self.clock.now() if now is None else now
        if not peer.cert.is_server:
            return AddResult.REFUSED
        if peer.address is not None and all(ep.host != peer.address
                                            for ep in peer.cert.endpoints):
            return AddResult.REFUSED
        try:
            contact = self.contacts_cache.contact(peer.cert, now)
        except RemoteProtocolError:
            self._fault(peer.node_id)
            raise
        self.tags.add(contact)
        return self.table.add(contact, now)

    # -- contacts ------------------------------------------------------------------------------

    def add_contacts(self, certs: Iterable[NodeCert]) -> int:
        """Restore saved contacts (each verified); returns how many entered the table."""
        now = self.clock.now()
        added = 0
        for cert in certs:
            try:
                contact = self.contacts_cache.contact(cert, now)
            except RemoteProtocolError:
                continue  # expired or damaged: a saved file is not a peer to blame
            self.tags.add(contact)
            if self.table.add(contact, now) is AddResult.ADDED:
                added += 1
        return added

    def contacts(self) -> list[NodeCert]:
        return self.table.contacts()

    def _bad_contact(self, node_id: bytes, named_by: bytes | None = None) -> None:
        """Another node answers where `node_id`'s certificate points: drop the contact at once
        (it cannot be reached there) and blame neither it nor the address (net/tcp.py,
        BadContact). The node whose answer named it is charged instead: a stale certificate
        can happen to an honest node, so it is dropped as a fault only after
        `params.failure_limit` such misdirections, as liveness tolerates that many timeouts."""
        self.stats.bad_contacts += 1
        self.table.remove(node_id)
        if named_by is None:
            return
        self.stats.misdirected_by[named_by] += 1
        if self.misdirected.charge(named_by, self.clock.now()) >= self.params.failure_limit - 1e-3:
            self._fault(named_by)

    def _fault(self, node_id: bytes) -> None:
        self.stats.faults += 1
        self.stats.fault_by_peer[node_id] += 1
        self.table.remove(node_id)

    # -- lookups -------------------------------------------------------------------------------

    async def lookup(self, key: bytes, k: int | None = None, *,
                     paths: int | None = None) -> LookupResult:
        """The `k` live nodes closest to `key` (module docstring of `dht.lookup`)."""
        if len(key) != ID_BYTES:
            raise LocalError("lookup keys are 32 bytes")
        k = self.params.k if k is None else k
        d = self.params.disjoint_paths if paths is None else paths
        now = self.clock.now()
        self.table.touch(key, now)
        self.stats.lookups += 1
        own: Contact | None = None
        if self.cert.is_server:
            try:
                own = self.contacts_cache.contact(self.cert, now)
            except RemoteProtocolError:
                own = None  # our cert lapsed: others will not accept us as a contact either
        initial = self.table.closest(key, k)
        state = DisjointLookup(key, k, d, self.params.alpha, initial, own, self.node_id)
        tally = _Tally()
        named_by: dict[bytes, bytes] = {}  # contact -> the node whose answer first named it
        fetching = InFlight()  # certificates this lookup is fetching (dht/tags.py)

        async def query(c: Contact, count: int) -> Sequence[Contact] | None:
            return await self._find_node(c, key, count, tally, named_by, fetching)

        await drive(state, query)
        return LookupResult(key, tuple(c.cert for c in state.result()), state.hops,
                            tally.queried, tally.failures, tally.faults, tally.refused, d)

    async def _find_node(self, c: Contact, key: bytes, count: int, tally: _Tally,
                         named_by: dict[bytes, bytes], fetching: InFlight
                         ) -> Sequence[Contact] | None:
        tally.queried += 1
        self.stats.requests += 1
        try:
            reply = await self.net.request(c.cert, FindTags(key, count),
                                           timeout=self.params.rpc_timeout)
            learned = await self._resolve(c, key, count, reply, fetching)
            now = self.clock.now()
        except BadContact:
            tally.failures += 1
            self._bad_contact(c.node_id, named_by.get(c.node_id))
            return None
        except TransportError:
            tally.failures += 1
            self.stats.timeouts += 1
            self.table.record_failure(c.node_id)
            return None
        except Refused:
            tally.refused += 1
            self.stats.refused += 1
            return None
        except RemoteProtocolError:
            tally.faults += 1
            self._fault(c.node_id)
            return None
        if self.misdirected.score(c.node_id, now) >= self.params.failure_limit - 1e-3:
            # It named too many bad contacts (`_bad_contact`): its answers are not used, and
            # answering does not bring it back into the table.
            tally.faults += 1
            self._fault(c.node_id)
            return None
        self.table.add(c, now)  # it answered: alive, and reachable at its cert
        self.tags.add(c)
        for x in learned:
            named_by.setdefault(x.node_id, c.node_id)
        return learned

    async def _resolve(self, c: Contact, key: bytes, count: int, reply: Any,
                       fetching: InFlight) -> list[Contact]:
        """The contacts a `Tags` answer names: from our index, else fetched from `c` (once per
        lookup, dht/tags.py). RemoteProtocolError for a malformed answer or fetch."""
        if not isinstance(reply, Tags):
            raise RemoteProtocolError(f"FIND_NODE answered with {type(reply).__name__}")
        named = split(reply.tags)
        if len(named) > count:
            raise RemoteProtocolError(f"{len(named)} contacts for a request of {count}")
        index = self.tags
        # The usual case once warm: every tag known and valid, resolved in one pass with the
        # same result and index order as the general path below.
        hits = index.resolve(named, self.clock.now(), self.params.clock_skew)
        if hits is not None:
            return [x for x in hits if x.cert.endpoints]
        missing = [t for t in dict.fromkeys(named) if t not in index]
        if missing:
            mine, others, ticket = fetching.claim(missing)
            if mine:
                try:
                    await self._get_certs(c, key, count, mine)
                finally:
                    fetching.done(mine)
            if others:
                await fetching.wait(others, ticket)
                # Fetched elsewhere, or else asked of this answerer too: a liar that names a
                # tag first and then withholds it cannot keep it from an honest answer.
                again = [t for t in missing if t not in index]
                if again:
                    await self._get_certs(c, key, count, again)
        now = self.clock.now()
        contacts = []
        for tag in named:
            hit = index.get(tag)
            if hit is None:
                continue  # named but not sent when asked: dropped (dht/tags.py)
            try:
                contacts.append(self.contacts_cache.contact(hit.cert, now))  # still valid?
            except RemoteProtocolError:
                index.drop(tag)  # expired since we met it: no contact
        # Clients are useless as contacts but not hostile; duplicates the lookup ignores.
        return [x for x in contacts if x.cert.endpoints]

    async def _get_certs(self, c: Contact, key: bytes, count: int, want: list[bytes]) -> None:
        """Fetch from `c` the certificates behind `want` into our index."""
        reply = await self.net.request(c.cert, GetCerts(key, count, b"".join(want)),
                                       timeout=self.params.rpc_timeout)
        if not isinstance(reply, Nodes) or reply.known:
            raise RemoteProtocolError("GetCerts answered wrongly")
        if len(reply.certs) > len(want):
            raise RemoteProtocolError(f"{len(reply.certs)} certificates for {len(want)} tags")
        asked = frozenset(want)
        now = self.clock.now()
        verify = self.contacts_cache.contact
        for cert in reply.certs:
            contact = verify(cert, now)  # raises on any invalid cert
            if contact.tag not in asked:
                raise RemoteProtocolError("a certificate that was not asked for")
            self.tags.add(contact)

    async def ping(self, cert: NodeCert) -> bool:
        """Is `cert`'s node alive? Updates liveness like any request."""
        try:
            contact = self.contacts_cache.contact(cert, self.clock.now())
            reply = await self.net.request(cert, Ping(), timeout=self.params.rpc_timeout)
        except BadContact:
            self._bad_contact(cert.node_id)
            return False
        except TransportError:
            self.stats.timeouts += 1
            self.table.record_failure(cert.node_id)
            return False
        except Refused:
            return False
        except RemoteProtocolError:
            self._fault(cert.node_id)
            return False
        if not isinstance(reply, Pong):
            self._fault(cert.node_id)
            return False
        self.table.add(contact, self.clock.now())
        self.tags.add(contact)
        return True

    # -- joining and maintenance (Kademlia §2.3) -----------------------------------------------

    async def bootstrap(self, endpoints: Iterable[Endpoint], *, paths: int | None = None) -> int:
        """Join through known endpoints; returns the routing table size afterwards.

        Kademlia §2.3: insert the introducer, look up our own id (which also makes our
        neighbours learn about us), then refresh every bucket farther than our closest
        neighbour. `paths` overrides d for these lookups."""
        now = self.clock.now()
        for ep in endpoints:
            try:
                cert = await self.net.introduce(ep, timeout=self.params.rpc_timeout)
                contact = self.contacts_cache.contact(cert, now)
            except TransportError:
                continue
            except RemoteProtocolError:
                self.stats.faults += 1
                continue
            self.table.add(contact, now)
            self.tags.add(contact)
        if not len(self.table):
            return 0
        await self.lookup(self.node_id, paths=paths)
        await self.refresh(below=self.table.deepest(), paths=paths)
        return len(self.table)

    async def refresh(self, *, below: int | None = None, stale_after: float | None = None,
                      paths: int | None = None) -> int:
        """Look up a random id in buckets: those with index < `below`, or else those not
        looked into for `stale_after` seconds. Returns how many lookups were made."""
        if below is not None:
            due = list(range(below))
        else:
            interval = self.params.refresh_interval if stale_after is None else stale_after
            due = self.table.stale_buckets(self.clock.now(), interval)
        for i in due:
            await self.lookup(self.table.random_id_in_bucket(i, self.rng.bytes(ID_BYTES)),
                              paths=paths)
        return len(due)

    async def maintain(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                       ) -> None:
        """Refresh buckets not looked into for `params.refresh_interval` (Kademlia §2.3), for
        ever. Liveness needs no separate probing: every request's outcome is counted."""
        interval = float(self.params.refresh_interval)
        task_status.started()
        while True:
            await self.refresh(stale_after=interval)
            due = self.table.next_refresh(interval)
            now = self.clock.now()
            await trio.sleep(interval if due is None else max(1.0, due - now))
