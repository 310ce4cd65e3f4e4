"""Iterative FIND_NODE over disjoint paths (S/Kademlia, Baumgart & Mies 2007, §4.4).

`DisjointLookup` is the sans-I/O state of one lookup; `drive` runs it over an async query
function. The algorithm:

1. the k contacts closest to the key in our routing table are dealt round-robin into d paths,
   each path owning its initial contacts;
2. each path is a Kademlia iterative lookup (Maymounkov & Mazières 2002, §2.3) with its own
   shortlist: it keeps up to alpha = `params.alpha` requests in flight, always to the closest
   not-yet-queried node among the k closest live nodes on its shortlist, and adds the nodes a
   reply names to its own shortlist only. A node that fails to answer is dropped from
   consideration (§2.3);
3. disjointness: a node is queried by at most one path. A path claims a node when it queries it;
   a node another path has claimed is taken off every other path's shortlist, so one hostile
   node can poison at most one path;
4. a path converges when the k closest live nodes on its shortlist (failed nodes and other
   paths' nodes excluded) have all answered; the lookup ends when every path has converged, and
   any still-outstanding request is abandoned;
5. the result is the k closest nodes that answered on any path (plus ourselves, see below),
   closest first. A single honest path reaching the key's neighbourhood is enough for the true
   closest honest node to be in the result.

Dead entries (an addition to §2.3): replies name each node's k closest *known* nodes, and after
unannounced crashes some of those are dead, which can push live nodes just past the k-th place
out of every reply, so a lookup would end with fewer than k live nodes, or with farther ones.
So the lookup asks each node for k + f contacts, f being the number of nodes that have failed
to answer it so far on any path (all paths converge on the same neighbourhood; capped at
`MAX_NODES`), and before a path converges it re-asks its closest answered node, the one whose
view of the key's neighbourhood is the most complete, if that node was asked for fewer. With no
failures this costs nothing.

Self-inclusion: the node running the lookup never queries itself, but when it is a server it is
put in the result if it is among the k closest, because the result answers "which live nodes
are responsible for this key" and we are one (DESIGN.md §3: `lookup(key, k)` returns the k live
nodes closest to the key).

`hops` is the lookup's depth in rounds: a node taken from our table is at hop 1, a node first
named by a reply from a node at hop h is at hop h+1; `hops` is the largest hop of any node that
answered (0 if none did).

Cost (issue 11): a path's picks come from one pass over its shortlist, and claimed nodes leave
other shortlists at once instead of being skipped on every later pass.
tests/test_lookup_equivalence.py checks that the requests, their order and the results are
exactly those of the straightforward version (tests/lookup_reference.py).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from anonmail.dht.messages import MAX_NODES
from anonmail.dht.routing import Contact
from anonmail.errors import LocalError
from anonmail.records.certs import NodeCert

# A node's lookup state is one int: (owning path << 2) | status. Absent: nobody has claimed or
# queried it yet. One dict probe per shortlist entry keeps the inner loop cheap.
_OWNED, _PENDING, _ANSWERED, _FAILED = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class LookupResult:
    key: bytes
    nodes: tuple[NodeCert, ...]  # k closest that answered (and we, if a server), closest first
    hops: int  # depth in rounds (see the module docstring)
    queried: int  # FIND_NODE requests sent
    failures: int  # requests that timed out or could not be delivered (liveness failures)
    faults: int  # replies that broke the protocol (invalid certs, too many certs, wrong type)
    refused: int  # typed error replies
    paths: int  # disjoint paths used

    @property
    def node_ids(self) -> tuple[bytes, ...]:
        return tuple(c.node_id for c in self.nodes)


class _Path:
    __slots__ = ("dirty", "finished", "inflight", "members", "shortlist")

    def __init__(self) -> None:
        self.shortlist: list[tuple[int, Contact]] = []  # sorted by distance to the key
        self.members: set[bytes] = set()
        self.inflight = 0
        self.finished = False  # as of the last `next_queries`
        self.dirty = True  # something changed since this path was last scanned


class DisjointLookup:
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
        self._done = False  # every path finished (kept by next_queries and on_failure)
        self._finished = 0  # paths with `finished` set
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
        # Distances are distinct (ids are, and XOR with the key is a bijection), so tuples
        # compare on the distance alone and never reach the Contact.
        insort(path.shortlist, (c.int_id ^ self._t, c))

    def _unlist(self, path: _Path, c: Contact) -> None:
        """Take `c` off `path`'s shortlist (another path claimed it), if it is there."""
        sl = path.shortlist
        d = c.int_id ^ self._t
        i = bisect_left(sl, (d,))  # (d,) sorts just before (d, contact)
        if i < len(sl) and sl[i][0] == d:
            del sl[i]

    def _want(self) -> int:
        # All paths converge on the same neighbourhood, so every dead node met counts.
        return min(MAX_NODES, self.k + self._failures)

    def _scan(self, p: int, room: int) -> tuple[list[Contact], bool]:
        """(the nodes path p should ask next, at most `room` of them, closest first; whether
        path p has converged).

        One pass serves all of a path's picks: claiming a node turns it from owned to pending
        on this path and changes nothing else about this path's k closest live nodes, so the
        pass that found the first pick would find the next ones in the same order."""
        path = self._paths[p]
        get = self._state.get
        k = self.k
        live = 0
        converged = True
        picks: list[Contact] = []
        closest_answered: Contact | None = None
        for _, c in path.shortlist:
            v = get(c.node_id)
            if v is None:
                status = _OWNED
            else:
                # Another path's node never stays on this shortlist (`next_queries` takes
                # it off when that path claims it), so v >> 2 == p here.
                status = v & 3
                if status == _FAILED:
                    continue
            live += 1
            if status == _ANSWERED:
                if closest_answered is None:
                    closest_answered = c
            else:
                converged = False
                if status == _OWNED and len(picks) < room:
                    picks.append(c)
                if len(picks) >= room:
                    break  # nothing further can change the answer
            if live >= k:
                break
        if (converged and closest_answered is not None
                and self._asked[closest_answered.node_id] < self._want()):
            # Re-ask it for more (module docstring); once asked, it is pending, and the
            # others in the window have all answered: this is the path's only request.
            return ([closest_answered] if room > 0 else []), False
        return picks, converged

    def next_queries(self) -> list[tuple[int, Contact, int]]:
        """Claim and return the (path, node, count) requests to send now; updates `done`."""
        out: list[tuple[int, Contact, int]] = []
        state = self._state
        for p, path in enumerate(self._paths):
            if path.finished or not path.dirty:
                continue  # converged paths stay so; unchanged ones have nothing new to send
            path.dirty = False
            picks, converged = self._scan(p, self.alpha - path.inflight)
            if converged or (not picks and path.inflight == 0):
                path.finished = True
                self._finished += 1
                continue
            for pick in picks:
                nid = pick.node_id
                if nid not in state:  # claim it: no other path may query it now
                    for q, other in enumerate(self._paths):
                        if q != p and nid in other.members:
                            self._unlist(other, pick)
                            other.dirty = True  # it just lost a candidate to us
                state[nid] = p << 2 | _PENDING
                self._asked[nid] = count = self._want()
                path.inflight += 1
                out.append((p, pick, count))
        self._done = self._finished == len(self._paths)
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
        own_id, members, get, hops = self._own_id, path.members, self._state.get, self._hop
        shortlist, t = path.shortlist, self._t
        for c in learned:
            cid = c.node_id
            if cid == own_id or cid in members:
                continue
            v = get(cid)
            if v is not None and v >> 2 != p:
                continue  # another path's node (queried by or dealt to it)
            hops.setdefault(cid, hop)
            members.add(cid)  # `_insert`, inlined
            insort(shortlist, (c.int_id ^ t, c))

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
        self._done = False
        self._finished = 0
        for other in self._paths:
            other.finished = False
            other.dirty = True

    @property
    def done(self) -> bool:
        """Every path has converged (as of the last `next_queries`)."""
        return self._done

    def result(self) -> list[Contact]:
        cands = list(self._answered)
        if self._own is not None:
            cands.append(self._own)
        cands.sort(key=lambda c: c.int_id ^ self._t)
        return cands[: self.k]

    @property
    def hops(self) -> int:
        return max((self._hop.get(c.node_id, 1) for c in self._answered), default=0)


Query = Callable[[Contact, int], Awaitable[Sequence[Contact] | None]]


async def drive(lookup: DisjointLookup, query: Query) -> None:
    """Run `lookup` to completion. `query(contact, count)` asks `contact` for `count` contacts
    and returns the ones it named, or None when the request failed (timeout, typed error, or a
    faulty reply).

    Each request runs in a worker task that applies its own outcome and carries on with the
    next request the lookup wants, so a request costs the scheduler no extra wake-ups. Outcomes
    are applied in the order they arrive; on the simulated network no two arrive at the same
    virtual instant, so a run replays exactly from its seed.
    """
    async with trio.open_nursery() as nursery:

        async def worker(p: int, c: Contact, count: int) -> None:
            while True:
                learned = await query(c, count)
                if learned is None:
                    lookup.on_failure(p, c)
                else:
                    lookup.on_reply(p, c, learned)
                todo = lookup.next_queries()
                if lookup.done:
                    nursery.cancel_scope.cancel()  # abandon requests no path still needs
                    return
                if not todo:
                    return
                (p, c, count), rest = todo[0], todo[1:]
                for q in rest:
                    nursery.start_soon(worker, *q)

        for q in lookup.next_queries():
            nursery.start_soon(worker, *q)
