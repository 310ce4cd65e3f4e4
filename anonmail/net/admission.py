"""Who may open a connection to this node: fault scores, temporary bans, handshake rate limits
and connection shares, as pure bookkeeping (no I/O; `now` is passed in: the transport passes
trio's monotonic clock, which a test's MockClock drives).

The transport (net/tcp.py) asks `Admission` three things, in this order, each before the work it
guards: at accept, before reading a byte, whether the *source* may connect at all
(`admit_source`: not banned, under its connection share, a handshake token left in its bucket and
in the global one); after the handshake, whether the authenticated *key* may keep the connection
(`admit_key`: not banned, under its share); and, whenever a peer commits a fault, `record_fault`
against the unit it is judged by.

The unit judged (`unit_of`) is the source (an IPv4 address or IPv6 /64, `source_of`) where one
party controls it; on a *shared* source (loopback, where every process of a machine is
127.0.0.1, and every source on a testnet, where many nodes sit behind one address) it is the
peer's node key once the handshake has proved it. Before that proof there is nothing to judge on
a shared source but the address, which belongs to everyone: faults there are counted, never
turned into a ban; the handshake buckets and the pending-connection share bound what they cost.

Invariants:
* a fault score decays exponentially (`fault_half_life`), so an honest peer's occasional mistake
  (a stale certificate, a crash mid-frame) never adds up to a ban; a score reaching
  `fault_threshold` bans the unit for `ban_base` seconds, doubling with each ban (up to
  `ban_max`); strikes are forgotten after `strike_memory` seconds without a ban;
* a connection refused here costs no public-key operation: the token bucket is checked before
  the handshake's X25519 and signature (~160 µs each, issue 7 item 6);
* no source takes every slot: a source's share (`max_per_source`, or `max_per_shared_source` for
  a shared one) is well below `max_connections`, and one key on a shared source gets
  `max_per_key`;
* memory is bounded: at most `max_tracked` units have a score, a ban or a bucket; when full,
  forgotten first are entries that decayed to nothing, then the oldest that is not banned.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import math
from dataclasses import dataclass

__all__ = ["Admission", "AdmissionLimits", "Verdict", "source_of"]


@functools.lru_cache(maxsize=4096)  # asked on every accept and dial; pure
def source_of(ip: str) -> str:
    """The unit faults and per-source limits count: an IPv4 address or an IPv6 /64."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if addr.is_loopback:  # ::1 alone, not ::/64, which is_loopback would not recognise
            return str(addr)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


@functools.lru_cache(maxsize=4096)
def is_loopback(source: str) -> bool:
    try:
        return ipaddress.ip_network(source, strict=False).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """Who gets in, and how much of the node one party may hold. See docs/transport.md."""

    max_connections: int = 256  # accepted connections, all sources together
    max_per_source: int = 8  # from one source that one party controls
    max_per_shared_source: int = 64  # from one shared source (loopback; any on a testnet)
    max_per_key: int = 4  # authenticated connections of one node key on a shared source
    max_pending_per_source: int = 16  # connections of one source still in their handshake
    handshake_rate: float = 5.0  # handshakes per second one source may start, on average
    handshake_burst: float = 20.0  # ... and at once
    shared_handshake_rate: float = 50.0  # the same for a shared source
    shared_handshake_burst: float = 100.0
    global_handshake_rate: float = 200.0  # all sources together (~3% of a core at 160 µs)
    global_handshake_burst: float = 400.0
    fault_threshold: float = 20.0  # a score this high bans the unit
    fault_half_life: float = 600.0  # seconds for a fault score to halve
    ban_base: float = 60.0  # the first ban, in seconds; each further ban doubles it
    ban_max: float = 86400.0
    strike_memory: float = 86400.0  # bans are forgotten after this long without one
    shared_loopback: bool = True  # judge loopback peers by key (every local process shares it)
    shared_everywhere: bool = False  # judge every peer by key (a testnet: one address, many nodes)
    max_tracked: int = 65536  # units with a score, a ban or a bucket


class Verdict(enum.Enum):
    ADMIT = "admit"
    BANNED = "banned"  # the unit's ban has not run out
    SOURCE_FULL = "source full"  # the source (or key) holds its share of connections
    FULL = "full"  # the node holds max_connections
    RATE_LIMITED = "rate limited"  # no handshake token left for the source, or globally


@dataclass(slots=True)
class _Record:
    """What is known of one unit: its decaying score, its ban, its handshake bucket."""

    score: float = 0.0
    scored_at: float = 0.0
    banned_until: float = 0.0
    strikes: int = 0
    last_ban: float = float("-inf")
    tokens: float = -1.0  # < 0: a full bucket (never drawn from)
    filled_at: float = 0.0
    faults: int = 0  # every fault ever counted here, for reports and tests


class Admission:
    """The admission state of one node. Every method is synchronous and takes `now`."""

    def __init__(self, limits: AdmissionLimits = AdmissionLimits()) -> None:
        self.limits = limits
        self._records: dict[str, _Record] = {}
        self._global = _Record()
        self.refused: dict[Verdict, int] = {v: 0 for v in Verdict if v is not Verdict.ADMIT}

    # -- who is judged ------------------------------------------------------------------------

    def shared(self, source: str) -> bool:
        """Whether many parties may share `source`, so that it is judged per key."""
        lim = self.limits
        return lim.shared_everywhere or (lim.shared_loopback and is_loopback(source))

    def unit_of(self, source: str, node_id: bytes | None) -> str:
        """The unit a peer's faults count against: its source, or on a shared source its key
        (once the handshake has proved one)."""
        if node_id is not None and self.shared(source):
            return "key:" + node_id.hex()
        return source

    @property
    def faults(self) -> dict[str, int]:
        """Faults ever counted, by unit (decay and bans aside): for reports and tests."""
        return {unit: r.faults for unit, r in self._records.items() if r.faults}

    # -- the three questions ------------------------------------------------------------------

    def admit_source(self, source: str, now: float, *, connections: int, from_source: int,
                     pending: int) -> Verdict:
        """May `source` open a connection? `connections`: accepted ones in all; `from_source`:
        those from this source; `pending`: this source's still in their handshake. A verdict
        other than ADMIT is counted in `refused`; an ADMIT takes a handshake token."""
        lim = self.limits
        shared = self.shared(source)
        verdict = Verdict.ADMIT
        if self.banned(source, now):
            verdict = Verdict.BANNED
        elif connections >= lim.max_connections:
            verdict = Verdict.FULL
        elif (from_source >= (lim.max_per_shared_source if shared else lim.max_per_source)
              or pending >= lim.max_pending_per_source):
            verdict = Verdict.SOURCE_FULL
        else:
            rate, burst = ((lim.shared_handshake_rate, lim.shared_handshake_burst) if shared
                           else (lim.handshake_rate, lim.handshake_burst))
            record = self._record(source, now)
            if not (_has_token(record, rate, burst, now) and _has_token(
                    self._global, lim.global_handshake_rate, lim.global_handshake_burst, now)):
                verdict = Verdict.RATE_LIMITED
            else:
                _take_token(record)
                _take_token(self._global)
        if verdict is not Verdict.ADMIT:
            self.refused[verdict] += 1
        return verdict

    def admit_key(self, unit: str, now: float, *, from_key: int) -> Verdict:
        """May the authenticated `unit` (see `unit_of`) keep its new connection? `from_key`:
        the connections it holds already. Only a key unit has a share of its own."""
        verdict = Verdict.ADMIT
        if self.banned(unit, now):
            verdict = Verdict.BANNED
        elif unit.startswith("key:") and from_key >= self.limits.max_per_key:
            verdict = Verdict.SOURCE_FULL
        if verdict is not Verdict.ADMIT:
            self.refused[verdict] += 1
        return verdict

    def record_fault(self, unit: str, now: float) -> bool:
        """Count one fault against `unit`; True when this starts a ban (the caller then cuts the
        unit's connections). A shared source is never banned as a whole (it is everyone's)."""
        lim = self.limits
        record = self._record(unit, now)
        record.faults += 1
        record.score = self._score(record, now) + 1.0
        record.scored_at = now
        # (a hair of slack: faults a few ms apart have decayed by a few millionths)
        if record.score < lim.fault_threshold - 1e-3 or record.banned_until > now:
            return False
        if not unit.startswith("key:") and self.shared(unit):
            return False
        if now - record.last_ban > lim.strike_memory:
            record.strikes = 0
        record.banned_until = now + min(lim.ban_base * math.exp2(record.strikes), lim.ban_max)
        record.strikes += 1
        record.last_ban = now
        record.score = 0.0  # the ban is the penalty; a fresh start after it
        return True

    def banned(self, unit: str, now: float) -> bool:
        record = self._records.get(unit)
        return record is not None and record.banned_until > now

    def score(self, unit: str, now: float) -> float:
        record = self._records.get(unit)
        return 0.0 if record is None else self._score(record, now)

    # -- bookkeeping --------------------------------------------------------------------------

    def _score(self, record: _Record, now: float) -> float:
        elapsed = max(0.0, now - record.scored_at)
        return record.score * math.exp2(-elapsed / self.limits.fault_half_life)

    def _record(self, unit: str, now: float) -> _Record:
        record = self._records.get(unit)
        if record is None:
            if len(self._records) >= self.limits.max_tracked:
                self._forget(now)
            record = self._records[unit] = _Record(scored_at=now, filled_at=now)
        return record

    def _forget(self, now: float) -> None:
        """Make room: drop what carries no information any more (no ban, a score decayed below
        one fault, a full bucket); if nothing qualifies, the oldest unit not banned."""
        idle = [u for u, r in self._records.items()
                if r.banned_until <= now and self._score(r, now) < 1.0
                and (r.tokens < 0 or now - r.filled_at > 60.0)
                and now - r.last_ban > self.limits.strike_memory]
        for unit in idle:
            del self._records[unit]
        if len(self._records) < self.limits.max_tracked:
            return
        oldest = next((u for u, r in self._records.items() if r.banned_until <= now), None)
        del self._records[oldest if oldest is not None else next(iter(self._records))]


def _has_token(record: _Record, rate: float, burst: float, now: float) -> bool:
    """Refill `record`'s bucket to `now` (at `rate` per second, up to `burst`) and say whether
    a whole token is there. A bucket never drawn from is full."""
    if record.tokens < 0:
        record.tokens, record.filled_at = burst, now
    else:
        record.tokens = min(burst, record.tokens + max(0.0, now - record.filled_at) * rate)
        record.filled_at = now
    return record.tokens >= 1.0


def _take_token(record: _Record) -> None:
    record.tokens -= 1.0

