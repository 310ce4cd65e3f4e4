"""The Kademlia routing table: pure data, no I/O, time passed in as `now`.

Layout (Kademlia, Maymounkov & Mazières 2002, §2.2): one k-bucket per common-prefix length with
our own id, 0..255. Bucket i holds contacts whose id shares exactly i leading bits with ours, so it
covers the half-open XOR-distance band [2^(255-i), 2^(256-i)). This is the "fixed buckets"
representation; it equals the paper's bucket tree without the relaxed splitting of §4.2.

Invariants (checked by property tests in tests/test_routing.py):
* no bucket holds more than k = `params.k` contacts; no id appears twice; our own id never appears;
* only servers (certs with endpoints) are stored, and only as `Contact`s made from NodeCerts the
  caller has verified (S/Kademlia, Baumgart & Mies 2007, §4.1: no contact from a bare id/address
  pair). For one id the cert with the highest `seq` wins; an older one is ignored;
* within a bucket at most `params.subnet_limit` contacts share a /24 (IPv4) or /48 (IPv6). This
  makes an attacker who controls one subnet pay for many subnets before it can fill a bucket
  (the S/Kademlia eclipse defence adapted to addresses). Loopback endpoints are exempt: a
  one-machine testnet puts every node on 127.0.0.1, and a real network never accepts loopback
  endpoints (`NodeCert.verify` rejects non-global addresses unless `allow_private_endpoints`);
* buckets keep least-recently-seen order (head = oldest). A contact we hear from moves to the
  tail (§2.2). A full bucket sends newcomers to a bounded replacement cache (§4.1) rather than
  evicting a long-lived contact: old nodes are the likeliest to stay (§2.2, Figure 3);
* a contact is dropped only after `params.failure_limit` consecutive failed requests (§4.1: a
  single lost packet must not evict a good contact), and its place goes to the most recently
  seen replacement that fits the subnet limit. Deviation: §4.1 keeps stale contacts when the
  replacement cache is empty; we drop them, so lookups stop waiting on dead nodes, and rely on
  bucket refresh to refill.

Representation (issue 11: a simulated node updates its table on every request and reply): a
bucket is an insertion-ordered dict by node id, so `add` for a known contact costs a few dict
probes; `closest` sorts only the buckets it needs, nearest band first; `fill` offers a bucket
many candidates at once. tests/test_routing_equivalence.py checks, operation by operation, that
this behaves exactly as the plain list-based table it replaced (tests/routing_reference.py).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Iterator

from anonmail.dht.contacts import Contact, ContactCache
from anonmail.errors import LocalError
from anonmail.records.certs import NodeCert
from anonmail.records.ids import ID_BITS, ID_BYTES
from anonmail.records.params import NetworkParams

__all__ = ["AddResult", "Contact", "ContactCache", "RoutingTable"]  # Contact*: re-exported


class AddResult(enum.Enum):
    ADDED = "added"  # new contact in its bucket
    UPDATED = "updated"  # already known: moved to the tail (and its cert renewed if newer)
    CACHED = "cached"  # bucket full: kept in the replacement cache
    REFUSED = "refused"  # own id, not a server, stale cert, or over the subnet limit


class _Bucket:
    """One k-bucket. Contacts and replacements are dicts by node id in least-recently-seen
    order (head = oldest; a dict keeps insertion order), so membership is one probe instead
    of a scan: the table answers `add` for every request a node receives and every reply it
    gets (issue 11). (Per-subnet counts per bucket would spare `_over_limit`'s scan for a
    newcomer too, but cost 60 MB at 10,000 nodes for ~1% of a lookup's time.)"""

    __slots__ = ("contacts", "failures", "replacements")

    def __init__(self) -> None:
        self.contacts: dict[bytes, Contact] = {}  # least recently seen first
        self.replacements: dict[bytes, Contact] = {}  # least recently seen first
        self.failures: dict[bytes, int] = {}  # consecutive failures, only for failing contacts


def _over_limit(seq: Iterable[Contact], new: Contact, limit: int) -> bool:
    """Would adding `new` put more than `limit` contacts of one subnet in `seq`?"""
    if not new.subnets:
        return False
    if len(new.subnets) == 1:  # the usual case, 2.5x faster without the table of counts
        (s,) = new.subnets
        n = 0
        for c in seq:
            if s in c.subnets:
                n += 1
                if n >= limit:
                    return True
        return False
    counts = dict.fromkeys(new.subnets, 0)
    for c in seq:
        for s in c.subnets:
            if s in counts:
                counts[s] += 1
                if counts[s] >= limit:
                    return True
    return False


def _subnet_counts(seq: Iterable[Contact]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in seq:
        for s in c.subnets:
            counts[s] = counts.get(s, 0) + 1
    return counts


_EMPTY = _Bucket()  # stands in for buckets never used (most of the 256); never mutated


def _take(b: _Bucket, t: int, n: int, exclude: Collection[bytes], out: list[Contact]) -> bool:
    """Append bucket b's contacts (less `exclude`) closest to key t to `out`, until `out`
    holds n; True if it does."""
    band: Iterable[Contact] = b.contacts.values()
    # A FIND_NODE answer excludes one id (the asker's): probing the bucket for it (in C)
    # beats filtering every contact against it.
    if exclude and not b.contacts.keys().isdisjoint(exclude):
        band = [c for c in band if c.node_id not in exclude]
    out.extend(sorted(band, key=lambda c: c.int_id ^ t)[: n - len(out)])
    return len(out) >= n


class RoutingTable:
    def __init__(self, own_id: bytes, params: NetworkParams, now: float) -> None:
        if len(own_id) != ID_BYTES:
            raise LocalError("node ids are 32 bytes")
        self.own_id = own_id
        self._own = int.from_bytes(own_id, "big")
        self.k = params.k
        self.replacement_size = params.k
        self.subnet_limit = params.subnet_limit
        self.failure_limit = params.failure_limit
        # Buckets are made on first use: a table of N nodes fills about log2(N) of them.
        self._buckets: list[_Bucket | None] = [None] * ID_BITS
        self._touched = [now] * ID_BITS  # last lookup into each bucket's range (§2.3 refresh)
        self._size = 0
        self._made_top = -1  # the deepest bucket ever made

    def _at(self, i: int) -> _Bucket:
        return self._buckets[i] or _EMPTY

    def _make(self, i: int) -> _Bucket:
        b = self._buckets[i]
        if b is None:
            b = self._buckets[i] = _Bucket()
            self._made_top = max(self._made_top, i)
        return b

    # -- queries -------------------------------------------------------------------------------

    def bucket_index(self, key: bytes) -> int:
        """Common prefix length of `key` with our id (256 for our own id)."""
        return ID_BITS - (self._own ^ int.from_bytes(key, "big")).bit_length()

    def __len__(self) -> int:
        return self._size

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, bytes) and self.get(node_id) is not None

    def __iter__(self) -> Iterator[Contact]:
        for b in self._buckets:
            if b is not None:
                yield from b.contacts.values()

    def get(self, node_id: bytes) -> Contact | None:
        i = self.bucket_index(node_id)
        if i >= ID_BITS:
            return None
        return self._at(i).contacts.get(node_id)

    def contacts(self) -> list[NodeCert]:
        """Every stored cert (for saving the table; replacements are not worth saving)."""
        return [c.cert for c in self]

    def bucket(self, index: int) -> tuple[Contact, ...]:
        return tuple(self._at(index).contacts.values())

    def replacements(self, index: int) -> tuple[Contact, ...]:
        return tuple(self._at(index).replacements.values())

    def failures(self, node_id: bytes) -> int:
        i = self.bucket_index(node_id)
        return self._at(i).failures.get(node_id, 0) if i < ID_BITS else 0

    def closest(self, key: bytes, n: int, exclude: Collection[bytes] = ()) -> list[Contact]:
        """The `n` stored contacts closest to `key` by XOR, closest first.

        Visits whole buckets in distance order instead of sorting the table. Let D = our id XOR
        the key. A contact c in bucket j has distance (c XOR us) XOR D, and c XOR us has its top
        bit at j; so for buckets j1 < j2 the distances agree above bit j1 and differ at j1,
        where bucket j1's are 0 exactly when bit j1 of D is 1. Hence the order: buckets whose
        bit of D is 1, shallow to deep, then buckets whose bit of D is 0, deep to shallow.
        """
        t = int.from_bytes(key, "big")
        d = self._own ^ t
        out: list[Contact] = []
        if n <= 0:
            return out
        top = self.deepest()
        buckets = self._buckets
        # Buckets are taken whole until n contacts are out: a full bucket near the key often
        # answers alone, so most FIND_NODE answers sort one or two buckets (issue 11). The
        # first bucket whose bit of D is 1 is the key's own, at D's highest set bit.
        for j in range(ID_BITS - d.bit_length(), top + 1):
            if (d >> (ID_BITS - 1 - j)) & 1:
                b = buckets[j]
                if b is not None and b.contacts and _take(b, t, n, exclude, out):
                    return out
        for j in range(top, -1, -1):
            if not (d >> (ID_BITS - 1 - j)) & 1:
                b = buckets[j]
                if b is not None and b.contacts and _take(b, t, n, exclude, out):
                    return out
        return out

    # -- updates -------------------------------------------------------------------------------

    def add(self, contact: Contact, now: float) -> AddResult:
        """We heard from `contact` (it answered us, or it asked us something). §2.2 update rule."""
        nid = contact.node_id
        i = ID_BITS - (self._own ^ contact.int_id).bit_length()
        if i >= ID_BITS or not contact.cert.is_server:
            return AddResult.REFUSED  # our own id, or a client
        b = self._buckets[i] or self._make(i)
        old = b.contacts.get(nid)
        if old is not None:
            if old is contact:  # the common case, and `_renew`'s equal-seq case
                if b.failures:
                    b.failures.pop(nid, None)
                del b.contacts[nid]
                b.contacts[nid] = old
                return AddResult.UPDATED
            return self._renew(b, old, contact)
        old = b.replacements.pop(nid, None)
        if old is not None:  # to the tail, keeping the newest cert we know
            b.replacements[nid] = old if contact.cert.seq < old.cert.seq else contact
            return AddResult.CACHED
        if _over_limit(b.contacts.values(), contact, self.subnet_limit):
            return AddResult.REFUSED
        if len(b.contacts) < self.k:
            b.contacts[nid] = contact
            self._size += 1
            return AddResult.ADDED
        if _over_limit(b.replacements.values(), contact, self.subnet_limit):
            return AddResult.REFUSED  # one subnet must not crowd honest replacements out either
        b.replacements[nid] = contact
        if len(b.replacements) > self.replacement_size:
            del b.replacements[next(iter(b.replacements))]
        return AddResult.CACHED

    def _renew(self, b: _Bucket, old: Contact, contact: Contact) -> AddResult:
        nid = old.node_id
        if contact.cert.seq < old.cert.seq:
            return AddResult.REFUSED  # a stale copy of a cert we have a newer version of
        b.failures.pop(nid, None)
        if contact.cert.seq == old.cert.seq:
            # Same cert (or an equivocating re-signature, which we ignore): keep `old`, move it
            # to the tail.
            del b.contacts[nid]
            b.contacts[nid] = old
            return AddResult.UPDATED
        del b.contacts[nid]
        if _over_limit(b.contacts.values(), contact, self.subnet_limit):
            # The node moved into a crowded subnet: its old endpoints are superseded, so it
            # leaves the bucket like any contact over the limit.
            self._size -= 1
            self._promote(b)
            return AddResult.REFUSED
        b.contacts[nid] = contact
        return AddResult.UPDATED

    def fill(self, index: int, candidates: Iterable[Contact], now: float) -> int:
        """Offer `candidates` one after another, as `add` would, until bucket `index` holds k
        contacts; returns how many entered the table. The check comes after taking each
        candidate, as in `for c in candidates: if full: break`, so a lazy iterator is advanced
        exactly as such a loop would advance it.

        For filling a table in bulk (sim/scenario.py, 10,000 tables of ~200 contacts): a
        candidate that is new and belongs in bucket `index` costs a subnet check and an append;
        anything else (a known id, another bucket, a client) goes through `add` itself."""
        if not 0 <= index < ID_BITS:
            raise LocalError("bucket index 0..255")
        b = self._make(index)
        k, limit = self.k, self.subnet_limit
        shift = ID_BITS - 1 - index  # bucket `index`: our first `index` bits, then not ours
        lo = ((self._own >> shift) ^ 1) << shift
        hi = lo + (1 << shift)
        contacts, replacements = b.contacts, b.replacements
        # Contacts per subnet in this bucket, kept up to date here instead of `_over_limit`'s
        # scan per candidate: this loop runs ~2 million times for 10,000 nodes.
        subnets = _subnet_counts(contacts.values())
        added = 0
        for c in candidates:
            if len(contacts) >= k:
                break
            nid = c.node_id
            if (not lo <= c.int_id < hi or not c.cert.is_server
                    or nid in contacts or nid in replacements):
                added += self.add(c, now) is AddResult.ADDED
                subnets = _subnet_counts(contacts.values())  # whatever `add` did
                continue
            for s in c.subnets:
                if subnets.get(s, 0) >= limit:
                    break
            else:
                contacts[nid] = c
                for s in c.subnets:
                    subnets[s] = subnets.get(s, 0) + 1
                self._size += 1
                added += 1
        return added

    def record_failure(self, node_id: bytes) -> bool:
        """A request to `node_id` went unanswered. True if the contact was dropped."""
        i = self.bucket_index(node_id)
        if i >= ID_BITS:
            return False
        b = self._at(i)
        if node_id not in b.contacts:
            if node_id in b.replacements:
                del b.replacements[node_id]  # a replacement that fails is no replacement
                return True
            return False
        n = b.failures.get(node_id, 0) + 1
        if n < self.failure_limit:
            b.failures[node_id] = n
            return False
        self.remove(node_id)
        return True

    def remove(self, node_id: bytes) -> bool:
        """Forget `node_id` (dead, or caught misbehaving) and promote a replacement."""
        i = self.bucket_index(node_id)
        if i >= ID_BITS:
            return False
        b = self._at(i)
        if node_id in b.contacts:
            del b.contacts[node_id]
            b.failures.pop(node_id, None)
            self._size -= 1
            self._promote(b)
            return True
        if node_id in b.replacements:
            del b.replacements[node_id]
            return True
        return False

    def _promote(self, b: _Bucket) -> None:
        # Most recently seen replacement first (§4.1), skipping any the subnet limit forbids.
        for nid in reversed(b.replacements):
            cand = b.replacements[nid]
            if not _over_limit(b.contacts.values(), cand, self.subnet_limit):
                del b.replacements[nid]
                b.contacts[nid] = cand
                self._size += 1
                return

    # -- refresh (§2.3) ------------------------------------------------------------------------

    def touch(self, key: bytes, now: float) -> None:
        """A lookup for `key` was made: its bucket counts as refreshed."""
        i = self.bucket_index(key)
        if i < ID_BITS:
            self._touched[i] = now

    def deepest(self) -> int:
        """Index of the highest non-empty bucket (the one holding our closest neighbour), or -1."""
        for i in range(self._made_top, -1, -1):
            if self._at(i).contacts:
                return i
        return -1

    def stale_buckets(self, now: float, interval: float) -> list[int]:
        """Buckets up to our closest neighbour's with no lookup in the last `interval` seconds.

        Buckets deeper than the closest neighbour are empty; the lookup of the deepest bucket's
        range reaches them anyway (§2.3)."""
        return [i for i in range(self.deepest() + 1) if now - self._touched[i] >= interval]

    def next_refresh(self, interval: float) -> float | None:
        """When the next of those buckets falls due (None if the table is empty)."""
        top = self.deepest()
        if top < 0:
            return None
        return min(self._touched[: top + 1]) + interval

    def random_id_in_bucket(self, index: int, random: bytes) -> bytes:
        """An id sharing exactly `index` leading bits with ours; the low bits from `random`."""
        if not 0 <= index < ID_BITS or len(random) != ID_BYTES:
            raise LocalError("bucket index 0..255 and 32 random bytes")
        shift = ID_BITS - 1 - index
        high = (self._own >> (shift + 1)) << (shift + 1)
        flip = ((self._own >> shift) & 1) ^ 1
        low = int.from_bytes(random, "big") & ((1 << shift) - 1)
        return (high | (flip << shift) | low).to_bytes(ID_BYTES, "big")
