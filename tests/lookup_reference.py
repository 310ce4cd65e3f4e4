"""The disjoint-path lookup state as it was before issue 11's speed-up (a rescan per pick,
lazy pruning of claimed nodes), kept as the executable model the faster
`anonmail.dht.lookup.DisjointLookup` must match step for step
(tests/test_lookup_equivalence.py). Not used by the package."""

from __future__ import annotations

from collections.abc import Sequence

from anonmail.dht.messages import MAX_NODES
from anonmail.dht.routing import Contact
from anonmail.errors import LocalError

# A node's lookup state is one int: (owning path << 2) | status. Absent: nobody has claimed or
# queried it yet. One dict probe per shortlist entry keeps the inner loop cheap.
_OWNED, _PENDING, _ANSWERED, _FAILED = 0, 1, 2, 3


class _Path:
    __slots__ = ("dirty", "finished", "inflight", "members", "shortlist")

    def __init__(self) -> None:
        self.shortlist: list[tuple[int, Contact]] = []  # sorted by distance to the key
        self.members: set[bytes] = set()
        self.inflight = 0
        self.finished = False  # as of the last `next_queries`
        self.dirty = True  # something changed since this path was last scanned


class ReferenceLookup:
    """State of one disjoint-path lookup. Ask `next_queries`; feed `on_reply` / `on_failure`."""

    def __init__(self, key: bytes, k: int, paths: int, alpha: int, initial: Sequence[Contact],
                 own: Contact | None, own_id: bytes) -> None:
        if not (1 <= k <= MAX_NODES and paths >= 1 and alpha >= 1):
            raise LocalError("lookup needs 1 <= k <= MAX_NODES, paths and alpha >= 1")
        self.key = key
        self.k = k
        self.alpha = alpha
        self._t = int.from_bytes(key, "big")
        self._own = own
        self._own_id = own_id
        self._paths = [_Path() for _ in range(paths)]
        self._state: dict[bytes, int] = {}  # see _OWNED..._FAILED
        self._hop: dict[bytes, int] = {}
        self._asked: dict[bytes, int] = {}  # how many contacts we last asked a node for
        self._answered: list[Contact] = []
        self._replied: set[bytes] = set()
        self._failures = 0
        for i, c in enumerate(initial):
            if c.node_id == own_id or c.node_id in self._state:
                continue
            p = i % paths  # S/Kademlia: the initial contacts are dealt round-robin
            self._state[c.node_id] = p << 2 | _OWNED
            self._hop[c.node_id] = 1
            self._insert(self._paths[p], c)

    @property
    def paths(self) -> int:
        return len(self._paths)

    def _insert(self, path: _Path, c: Contact) -> None:
        path.members.add(c.node_id)
        entry = (c.int_id ^ self._t, c)
        sl = path.shortlist
        lo, hi = 0, len(sl)
        while lo < hi:  # bisect on distance (ids are distinct, so distances are too)
            mid = (lo + hi) // 2
            if sl[mid][0] < entry[0]:
                lo = mid + 1
            else:
                hi = mid
        sl.insert(lo, entry)

    def _want(self) -> int:
        # All paths converge on the same neighbourhood, so every dead node met counts.
        return min(MAX_NODES, self.k + self._failures)

    def _scan(self, p: int) -> tuple[Contact | None, bool]:
        """(the node path p should ask next, whether path p has converged). Drops nodes another
        path has claimed from p's shortlist."""
        path = self._paths[p]
        state = self._state
        live = 0
        converged = True
        pick: Contact | None = None
        closest_answered: Contact | None = None
        stolen = False
        for _, c in path.shortlist:
            v = state.get(c.node_id)
            if v is None:
                status = _OWNED
            elif v >> 2 != p:
                stolen = True
                continue
            else:
                status = v & 3
                if status == _FAILED:
                    continue
            live += 1
            if status == _ANSWERED:
                if closest_answered is None:
                    closest_answered = c
            else:
                converged = False
                if status == _OWNED and pick is None:
                    pick = c
            if live >= self.k:
                break
        if stolen:
            path.shortlist = [e for e in path.shortlist
                              if state.get(e[1].node_id, p << 2) >> 2 == p]
        if (converged and closest_answered is not None
                and self._asked[closest_answered.node_id] < self._want()):
            return closest_answered, False  # re-ask it for more (module docstring)
        return pick, converged

    def next_queries(self) -> list[tuple[int, Contact, int]]:
        """Claim and return the (path, node, count) requests to send now; updates `done`."""
        out: list[tuple[int, Contact, int]] = []
        for p, path in enumerate(self._paths):
            if path.finished or not path.dirty:
                continue  # converged paths stay so; unchanged ones have nothing new to send
            path.dirty = False
            while True:
                pick, converged = self._scan(p)
                if converged or (pick is None and path.inflight == 0):
                    path.finished = True
                    break
                if pick is None or path.inflight >= self.alpha:
                    break
                nid = pick.node_id
                if nid not in self._state:  # claim it: no other path may query it now
                    for q, other in enumerate(self._paths):
                        if q != p and nid in other.members:
                            other.dirty = True  # it just lost a candidate to us
                self._state[nid] = p << 2 | _PENDING
                self._asked[nid] = count = self._want()
                path.inflight += 1
                out.append((p, pick, count))
        return out

    def on_reply(self, p: int, contact: Contact, learned: Sequence[Contact]) -> None:
        path = self._paths[p]
        path.inflight -= 1
        path.dirty = True
        nid = contact.node_id
        self._state[nid] = p << 2 | _ANSWERED
        if nid not in self._replied:
            self._replied.add(nid)
            self._answered.append(contact)
        hop = self._hop.get(nid, 1) + 1
        for c in learned:
            cid = c.node_id
            if cid == self._own_id or cid in path.members:
                continue
            v = self._state.get(cid)
            if v is not None and v >> 2 != p:
                continue  # another path's node (queried by or dealt to it)
            self._hop.setdefault(cid, hop)
            self._insert(path, c)

    def on_failure(self, p: int, contact: Contact) -> None:
        path = self._paths[p]
        path.inflight -= 1
        path.dirty = True
        nid = contact.node_id
        if nid in self._replied:
            # A re-ask went unanswered: keep what it told us before, and do not ask again.
            self._state[nid] = p << 2 | _ANSWERED
            self._asked[nid] = MAX_NODES
            return
        self._state[nid] = p << 2 | _FAILED
        self._failures += 1
        # `_want` just grew: a path that converged earlier may now have to re-ask its closest
        # node for more contacts (the dead one may have pushed a live node out of that node's
        # answer), so every path looks again.
        for other in self._paths:
            other.finished = False
            other.dirty = True

    @property
    def done(self) -> bool:
        """Every path has converged (as of the last `next_queries`)."""
        return all(path.finished for path in self._paths)

    def result(self) -> list[Contact]:
        cands = list(self._answered)
        if self._own is not None:
            cands.append(self._own)
        cands.sort(key=lambda c: c.int_id ^ self._t)
        return cands[: self.k]

    @property
    def hops(self) -> int:
        return max((self._hop.get(c.node_id, 1) for c in self._answered), default=0)
