"""Who named bad contacts: a decaying score per node, bounded (issue 7).

A bad contact is a certificate whose endpoint another node answers at (net/tcp.py,
`BadContact`). Neither the contact nor the address is blamed: whoever issued or forwarded the
certificate may have aimed it there. The node whose FIND_NODE answer named it is charged one
point instead (dht_node.py `_bad_contact`), and at `params.failure_limit` points it is treated
as faulty. Stale certificates happen to honest nodes too, so a score halves every `half_life`:
an honest node that passed on a few is trusted again later, a liar that keeps naming them stays
over the limit (threat T-FAULT-REFLECT).

Invariants: at most `capacity` nodes are scored; when a new one must be, the node charged least
recently (whose score has decayed the longest) is forgotten first. Reading a score changes
nothing. Pure: time is passed in.
"""

from __future__ import annotations

import math
from collections import OrderedDict

HALF_LIFE = 3600.0  # seconds for a node's score to halve
CAPACITY = 4096  # nodes scored at once


class Misdirection:
    """Decaying counts of the bad contacts each node named (module docstring)."""

    __slots__ = ("_scores", "capacity", "half_life")

    def __init__(self, half_life: float = HALF_LIFE, capacity: int = CAPACITY) -> None:
        self.half_life = half_life
        self.capacity = max(1, capacity)
        # node id -> (score, when it was last charged), least recently charged first; an
        # OrderedDict because popping a plain dict's first key again and again is O(n) (wire.py)
        self._scores: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._scores)

    def score(self, node_id: bytes, now: float) -> float:
        """How many bad contacts `node_id` named, each halved every `half_life` since."""
        held = self._scores.get(node_id)
        if held is None:
            return 0.0  # the usual case, asked on every answer
        score, at = held
        return score * math.exp2(-max(0.0, now - at) / self.half_life)

    def charge(self, node_id: bytes, now: float) -> float:
        """One more bad contact named by `node_id`; its score now."""
        score = self.score(node_id, now) + 1.0
        scores = self._scores
        if node_id in scores:
            scores.move_to_end(node_id)
        elif len(scores) >= self.capacity:
            scores.popitem(last=False)
        scores[node_id] = (score, now)
        return score
