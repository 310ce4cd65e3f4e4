"""The relay's replay guard for Opens, free of I/O (threat T-ANON-REPLAY; DESIGN.md §7).

The threat: a hop sees the onion it passes on to the next hop, and the cells it carries. Cell
nonces are counters from 0, so a hostile hop that re-sends a recorded inner onion to the next
hop under a fresh circuit id, then replays the recorded cells, has the end repeat the sender's
operations (a STORE and APPEND to an inbox) at a time of its choosing: a timing mark that links
the sender it knows to the recipient the inbox replicas see. A replay cache must never forget
an entry that can still be replayed (Mixmaster 2.0 expired entries, so the adversary waited
for that: Danezis, Dingledine, Mathewson, Mixminion, 2003, "replay prevention and key
rotation"). Mixminion keeps its cache for a key's lifetime and rotates keys; a node's key is
its identity here, so the onion carries a creation time instead, and the cache forgets exactly
what that time refuses.

Each onion layer carries `created`, the sender's clock when it built the onion (anon/onion.py).
`OnionReplayGuard.admit(key, created, now)` accepts a layer's session key at most once:

* a layer whose `created` is more than `window` (params.clock_skew) from `now` is refused
  (CLOCK_SKEW): it is stale (a replay kept past its window) or from the future;
* a session key already admitted is refused (DENIED): a replay. The guard keeps a 16-byte hash
  of each admitted key, never the key, so a relay's memory does not hold the keys of circuits
  it has closed;
* an entry is forgotten once its layer would be refused as stale anyway (`created + window` has
  passed), so what is live is what an attacker could still replay;
* at most `capacity` entries are live, and at most `per_peer` admitted from one previous hop;
  beyond that a fresh Open is refused (QUOTA). A flood of fresh Opens can therefore only make
  this relay refuse Opens for a while (an honest, typed refusal; the sender takes another
  relay), never make it forget an entry early and admit a replay; and one flooding peer
  fills only its own share, so the others' Opens are still admitted;
* a layer created before the guard was (`started`, the relay's start) is refused (CLOCK_SKEW):
  the guard lives in memory, and an onion a hop recorded before this relay restarted must not
  be admitted again after it. An honest sender's layer is built just before it is sent, so
  only a sender whose clock lags this relay's is refused, and only for that lag after a start.

Invariant: a key is admitted at most once, whatever the clock does. Staleness is judged against
the latest `now` the guard has seen, not the current one, so a relay clock that steps back
cannot bring a forgotten entry back inside the window (a clock that jumped forward and came back
refuses Opens until it catches up: fail closed).

All three refusals are honest ones (errors.Refusal, never a fault): the relay cannot tell the
sender from a hop that passed the onion on (threat T-FAULT-REFLECT).
"""

from __future__ import annotations

import heapq
import math

from anonmail import crypto
from anonmail.errors import ErrorCode, LocalError, Refusal

DIGEST_SIZE = 16  # 128 bits: a collision among 2^17 live keys has probability ~2^-95
# Live entries at most. An entry lives at most 2 x window (1,200 s by default: a layer created up
# to `window` in the future stays replayable until `window` after that). 2^17 entries is a full
# circuit table (RelayLimits.circuits, 1,024) turning over every 9 s for that whole time, orders
# of magnitude above an honest relay's Opens. Measured on CPython 3.11, an entry costs ~190 bytes
# (the heap's tuple, the digest, the set slot): ~24 MiB when full, which only a flood reaches.
CAPACITY = 1 << 17
# One previous hop's share: 8,192 Opens a window (~7 a second for 20 minutes) is far above what
# one honest relay passes to one node, and 16 flooding peers are needed to fill the guard.
PER_PEER = CAPACITY // 16
_TAG = "onion-replay"


class OnionReplayGuard:
    """Admits each onion layer's session key at most once (module docstring)."""

    def __init__(self, window: int, capacity: int = CAPACITY, *, per_peer: int = PER_PEER,
                 started: float = float("-inf")) -> None:
        if window < 0 or capacity < 1 or per_peer < 1:
            raise LocalError("a replay guard needs window >= 0 and capacities >= 1")
        self.window = window
        self.capacity = capacity
        self.per_peer = per_peer
        # Whole seconds, as `created` is: a layer made in the second the relay started is
        # admitted (a replay would need its original to have come within that same second).
        self.started = math.floor(started) if math.isfinite(started) else started
        self._seen: set[bytes] = set()
        self._by_peer: dict[bytes, int] = {}  # live entries by the peer they came from
        # (expiry, digest, peer), soonest expiry first: forgetting is exact and costs O(log n)
        # per entry, once. Expiries are not in admission order (`created` is the sender's), so
        # a FIFO would keep a far-future entry's successors alive behind it.
        self._expiry: list[tuple[int, bytes, bytes]] = []
        self._latest = float("-inf")  # the latest `now` seen

    def __len__(self) -> int:
        """Live entries (never more than `capacity`)."""
        return len(self._seen)

    def admit(self, key: bytes, created: int, now: float, peer: bytes = b"") -> None:
        """Record `key` (a layer's session key, made at `created`, passed on by `peer`) as
        used; Refusal unless it is fresh and new (module docstring)."""
        self._latest = max(self._latest, now)
        self._forget()
        if created < self._latest - self.window or created > now + self.window:
            raise Refusal("onion outside the clock skew", ErrorCode.CLOCK_SKEW)
        if created < self.started:
            raise Refusal("onion older than this relay's start", ErrorCode.CLOCK_SKEW)
        digest = crypto.hash(_TAG, key)[:DIGEST_SIZE]
        if digest in self._seen:
            raise Refusal("onion replayed", ErrorCode.DENIED)
        mine = self._by_peer.get(peer, 0)
        if len(self._seen) >= self.capacity or mine >= self.per_peer:
            raise Refusal("too many fresh onions", ErrorCode.QUOTA)
        self._seen.add(digest)
        self._by_peer[peer] = mine + 1
        heapq.heappush(self._expiry, (created + self.window, digest, peer))

    def _forget(self) -> None:
        """Drop the entries whose layers are now stale: `created + window < latest`, so
        `admit` refuses them by their time alone."""
        while self._expiry and self._expiry[0][0] < self._latest:
            _, digest, peer = heapq.heappop(self._expiry)
            self._seen.discard(digest)
            left = self._by_peer[peer] - 1
            if left:
                self._by_peer[peer] = left
            else:
                del self._by_peer[peer]
