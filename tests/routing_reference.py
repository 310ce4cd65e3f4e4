"""The routing table as it was before issue 11's speed-up (lists scanned for every add), kept
as the executable model the faster `anonmail.dht.routing.RoutingTable` must match operation for
operation (tests/test_routing_equivalence.py). Not used by the package."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

from anonmail.dht.routing import AddResult, Contact
from anonmail.errors import LocalError
from anonmail.records.certs import NodeCert
from anonmail.records.ids import ID_BITS, ID_BYTES
from anonmail.records.params import NetworkParams


class _Bucket:
    __slots__ = ("contacts", "failures", "replacements")

    def __init__(self) -> None:
        self.contacts: list[Contact] = []  # least recently seen first
        self.replacements: list[Contact] = []  # least recently seen first
        self.failures: dict[bytes, int] = {}  # consecutive failures, only for failing contacts


_EMPTY = _Bucket()  # stands in for buckets never used (most of the 256); never mutated


def _find(seq: list[Contact], node_id: bytes) -> int:
    for i, c in enumerate(seq):
        if c.node_id == node_id:
            return i
    return -1


def _over_limit(seq: Iterable[Contact], new: Contact, limit: int) -> bool:
    """Would adding `new` put more than `limit` contacts of one subnet in `seq`?"""
    if not new.subnets:
        return False
    counts = dict.fromkeys(new.subnets, 0)
    for c in seq:
        for s in c.subnets:
            if s in counts:
                counts[s] += 1
                if counts[s] >= limit:
                    return True
    return False


class ReferenceTable:
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
                yield from b.contacts

    def get(self, node_id: bytes) -> Contact | None:
        i = self.bucket_index(node_id)
        if i >= ID_BITS:
            return None
        b = self._at(i)
        j = _find(b.contacts, node_id)
        return b.contacts[j] if j >= 0 else None

    def contacts(self) -> list[NodeCert]:
        """Every stored cert (for saving the table; replacements are not worth saving)."""
        return [c.cert for c in self]

    def bucket(self, index: int) -> tuple[Contact, ...]:
        return tuple(self._at(index).contacts)

    def replacements(self, index: int) -> tuple[Contact, ...]:
        return tuple(self._at(index).replacements)

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
        top = self.deepest()
        near = [j for j in range(top + 1) if (d >> (ID_BITS - 1 - j)) & 1]
        far = [j for j in range(top, -1, -1) if not (d >> (ID_BITS - 1 - j)) & 1]
        for j in near + far:
            b = self._buckets[j]
            if b is None or not b.contacts:
                continue
            band = [c for c in b.contacts if c.node_id not in exclude] if exclude else b.contacts
            out.extend(sorted(band, key=lambda c: c.int_id ^ t)[: n - len(out)])
            if len(out) >= n:
                break
        return out

    # -- updates -------------------------------------------------------------------------------

    def add(self, contact: Contact, now: float) -> AddResult:
        """We heard from `contact` (it answered us, or it asked us something). §2.2 update rule."""
        if contact.node_id == self.own_id or not contact.cert.is_server:
            return AddResult.REFUSED
        b = self._make(self.bucket_index(contact.node_id))
        j = _find(b.contacts, contact.node_id)
        if j >= 0:
            return self._renew(b, j, contact)
        j = _find(b.replacements, contact.node_id)
        if j >= 0:
            old = b.replacements.pop(j)
            if contact.cert.seq < old.cert.seq:
                contact = old  # keep the newest cert we know
            b.replacements.append(contact)
            return AddResult.CACHED
        if _over_limit(b.contacts, contact, self.subnet_limit):
            return AddResult.REFUSED
        if len(b.contacts) < self.k:
            b.contacts.append(contact)
            self._size += 1
            return AddResult.ADDED
        if _over_limit(b.replacements, contact, self.subnet_limit):
            return AddResult.REFUSED  # one subnet must not crowd honest replacements out either
        b.replacements.append(contact)
        if len(b.replacements) > self.replacement_size:
            del b.replacements[0]
        return AddResult.CACHED

    def _renew(self, b: _Bucket, j: int, contact: Contact) -> AddResult:
        old = b.contacts[j]
        if contact.cert.seq < old.cert.seq:
            return AddResult.REFUSED  # a stale copy of a cert we have a newer version of
        del b.contacts[j]
        b.failures.pop(old.node_id, None)
        if contact.cert.seq > old.cert.seq and _over_limit(b.contacts, contact,
                                                          self.subnet_limit):
            # The node moved into a crowded subnet: its old endpoints are superseded, so it
            # leaves the bucket like any contact over the limit.
            self._size -= 1
            self._promote(b)
            return AddResult.REFUSED
        # Equal seq: same cert (or an equivocating re-signature, which we ignore): keep `old`.
        b.contacts.append(contact if contact.cert.seq > old.cert.seq else old)
        return AddResult.UPDATED

    def record_failure(self, node_id: bytes) -> bool:
        """A request to `node_id` went unanswered. True if the contact was dropped."""
        i = self.bucket_index(node_id)
        if i >= ID_BITS:
            return False
        b = self._at(i)
        if _find(b.contacts, node_id) < 0:
            j = _find(b.replacements, node_id)
            if j >= 0:
                del b.replacements[j]  # a replacement that fails is no replacement
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
        j = _find(b.contacts, node_id)
        if j >= 0:
            del b.contacts[j]
            b.failures.pop(node_id, None)
            self._size -= 1
            self._promote(b)
            return True
        j = _find(b.replacements, node_id)
        if j >= 0:
            del b.replacements[j]
            return True
        return False

    def _promote(self, b: _Bucket) -> None:
        # Most recently seen replacement first (§4.1), skipping any the subnet limit forbids.
        for j in range(len(b.replacements) - 1, -1, -1):
            cand = b.replacements[j]
            if not _over_limit(b.contacts, cand, self.subnet_limit):
                del b.replacements[j]
                b.contacts.append(cand)
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
