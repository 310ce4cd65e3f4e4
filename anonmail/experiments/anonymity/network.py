"""The network of the linkage model: node ids, who is hostile, who sends, where inboxes live,
and per-link latency. No protocol here (protocol.py) and no adversary logic (adversary.py).

"The node closest to a random key" (seed 002 §4.1) is picked with probability equal to its
share of the id space under the XOR metric, not uniformly: `xor_shares` computes each node's
share exactly (a node's XOR cell halves at every level of the id trie where its subtree
branches, and a key falling in an empty half goes to the other half's nodes in their own
proportions), and `Network.pick` draws from those shares by bisection -- the same distribution
as drawing a random key and taking the XOR-closest node, at a fraction of the cost. Replica
sets of an inbox are the true r XOR-closest nodes of its key.

Invariants: ids are distinct 64-bit ints; shares sum to 1; latency is fixed per unordered pair
(a hash of the pair and the seed, like sim/network.py), uniform in the configured range;
everything is a function of the seed.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Sequence

from anonmail.rng import SeededRng

MASK = (1 << 64) - 1


def xor_shares(ids: Sequence[int], bits: int = 64) -> list[float]:
    """Each node's share of the `bits`-bit id space: the fraction of keys whose XOR-closest
    node it is. `ids` must be distinct."""
    n = len(ids)
    order = sorted(range(n), key=ids.__getitem__)
    vals = [ids[i] for i in order]
    shares = [0.0] * n
    stack = [(0, n, bits - 1, 1.0)]
    while stack:
        lo, hi, bit, weight = stack.pop()
        if hi - lo == 1:
            shares[order[lo]] = weight
            continue
        if bit < 0:
            raise ValueError("ids must be distinct")
        split = ((vals[lo] >> (bit + 1)) << (bit + 1)) | (1 << bit)
        mid = bisect.bisect_left(vals, split, lo, hi)
        if mid in (lo, hi):  # one half empty: its keys go to the other half, in proportion
            stack.append((lo, hi, bit - 1, weight))
        else:
            stack.append((lo, mid, bit - 1, weight / 2))
            stack.append((mid, hi, bit - 1, weight / 2))
    return shares


def xor_closest(ids: Sequence[int], key: int, count: int) -> list[int]:
    """Indices of the `count` nodes closest to `key` by XOR, closest first."""
    return heapq.nsmallest(count, range(len(ids)), key=lambda i: ids[i] ^ key)


class Picker:
    """Draw node indices with probability proportional to their weights."""

    def __init__(self, members: Sequence[int], weights: Sequence[float]) -> None:
        self.members = list(members)
        self.cum = list(itertools.accumulate(weights))
        self.total = self.cum[-1] if self.cum else 0.0

    def pick(self, rng: SeededRng) -> int:
        i = bisect.bisect_right(self.cum, rng.random() * self.total)
        return self.members[min(i, len(self.members) - 1)]

    def pick_not(self, rng: SeededRng, avoid: Sequence[int]) -> int:
        """A pick that is none of `avoid` (A redraws its random key); -1 if nothing else."""
        members, cum, total = self.members, self.cum, self.total
        last = len(members) - 1
        if last < len(avoid) and all(m in avoid for m in members):
            return -1
        while True:
            i = members[min(bisect.bisect_right(cum, rng.random() * total), last)]
            if i not in avoid:
                return i


class Network:
    """N nodes with random ids, a coalition of round(f N), honest senders with contacts."""

    def __init__(self, nodes: int, f: float, senders: int, contacts: int, replication: int,
                 latency: tuple[float, float], rng: SeededRng) -> None:
        ids_rng = rng.fork("ids")  # the same ids for every f of a seed
        seen: set[int] = set()
        self.ids: list[int] = []
        while len(self.ids) < nodes:
            x = int.from_bytes(ids_rng.bytes(8), "big")
            if x not in seen:
                seen.add(x)
                self.ids.append(x)
        self.share = xor_shares(self.ids)
        self.all = Picker(range(nodes), self.share)
        pick = rng.fork(f"coalition:{f!r}")
        order = list(range(nodes))
        for i in range(nodes - 1, 0, -1):  # Fisher-Yates
            j = pick.randbelow(i + 1)
            order[i], order[j] = order[j], order[i]
        self.hostile_count = round(f * nodes)
        self.hostile = bytearray(nodes)
        for i in order[:self.hostile_count]:
            self.hostile[i] = 1
        coalition = sorted(order[:self.hostile_count])
        self.coalition = Picker(coalition, [self.share[i] for i in coalition])
        self.coalition_share = sum(self.share[i] for i in coalition)
        # senders: honest nodes; each is also a recipient with an inbox on the r closest nodes
        self.senders = sorted(order[self.hostile_count:self.hostile_count + senders])
        self.inbox: dict[int, list[int]] = {}
        self.inbox_hostile: dict[int, list[int]] = {}
        for s in self.senders:
            key = int.from_bytes(pick.bytes(8), "big")
            replicas = xor_closest(self.ids, key, replication)
            self.inbox[s] = replicas
            self.inbox_hostile[s] = [x for x in replicas if self.hostile[x]]
        self.contacts: dict[int, list[int]] = {}
        for s in self.senders:
            others = [x for x in self.senders if x != s]
            chosen: list[int] = []
            while others and len(chosen) < min(contacts, len(others)):
                chosen.append(others.pop(pick.randbelow(len(others))))
            self.contacts[s] = chosen or [s]
        self.lat_lo, self.lat_span = latency[0], latency[1] - latency[0]
        self.salt = int.from_bytes(rng.fork("latency").bytes(8), "big")

    def lat(self, a: int, b: int) -> float:
        """One-way latency of the link a-b, fixed for the seed (a splitmix64 hash of the pair)."""
        if a > b:
            a, b = b, a
        h = (a * 0x9E3779B97F4A7C15 + b * 0xBF58476D1CE4E5B9 + self.salt) & MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK
        h ^= h >> 31
        return self.lat_lo + self.lat_span * (h >> 11) / 9007199254740992.0
