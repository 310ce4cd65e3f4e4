"""Admission bookkeeping (net/admission.py), pure: decaying fault scores, temporary bans that
grow, judging by key on shared sources, handshake token buckets, connection shares, bounded
memory. Time is a number passed in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonmail.net.admission import Admission, AdmissionLimits, Verdict, is_loopback, source_of

SRC = "192.0.2.7"
OTHER = "192.0.2.8"
LIMITS = AdmissionLimits()


def admit(a: Admission, source: str, now: float, *, connections: int = 0, from_source: int = 0,
          pending: int = 0) -> Verdict:
    return a.admit_source(source, now, connections=connections, from_source=from_source,
                          pending=pending)


def faults(a: Admission, unit: str, n: int, now: float) -> list[bool]:
    return [a.record_fault(unit, now) for _ in range(n)]


@pytest.mark.threat("T-BAN-PERMANENT")
def test_scores_decay_so_occasional_faults_never_ban() -> None:
    a = Admission()
    # One fault a minute for a day: the score settles near 1 / (1 - 2^(-60/600)) ~ 15 < 20.
    started = [a.record_fault(SRC, minute * 60.0) for minute in range(24 * 60)]
    assert not any(started) and not a.banned(SRC, 24 * 3600.0)
    assert 14 < a.score(SRC, 24 * 3600.0 - 60) < 16
    # Two a minute is hostile enough: banned within the hour.
    b = Admission()
    assert any(b.record_fault(SRC, t * 30.0) for t in range(120))


@pytest.mark.threat("T-BAN-PERMANENT")
def test_bans_are_temporary_and_grow_and_are_forgotten() -> None:
    a = Admission()
    now = 1000.0
    durations = []
    for _ in range(14):
        assert faults(a, SRC, 20, now)[-1]  # the 20th fault starts a ban
        assert a.banned(SRC, now)
        assert admit(a, SRC, now) is Verdict.BANNED
        until = next(t for t in range(int(now), int(now) + 200_000) if not a.banned(SRC, t))
        durations.append(until - now)
        now = until + 1.0
        assert admit(a, SRC, now) is Verdict.ADMIT  # the ban ran out
    assert durations[:4] == [60, 120, 240, 480]  # doubling from ban_base ...
    assert max(durations) == LIMITS.ban_max  # ... up to ban_max
    # A day without a ban: the next ban is short again.
    now += LIMITS.strike_memory + 1
    faults(a, SRC, 20, now)
    assert a.banned(SRC, now + 59) and not a.banned(SRC, now + 61)


@pytest.mark.threat("T-BAN-PERMANENT")
def test_shared_source_is_judged_by_key_and_never_banned_whole() -> None:
    a = Admission()
    assert a.shared("127.0.0.1") and a.shared("::1/128") and not a.shared(SRC)
    assert a.unit_of("127.0.0.1", b"\x01" * 32) == "key:" + "01" * 32
    assert a.unit_of("127.0.0.1", None) == "127.0.0.1"  # before the handshake: the address
    assert a.unit_of(SRC, b"\x01" * 32) == SRC  # one party's own address: judged as such
    # 25 garbage connections from loopback (item 5 of issue 7): counted, no ban.
    assert not any(faults(a, "127.0.0.1", 25, 0.0))
    assert admit(a, "127.0.0.1", 0.0) is Verdict.ADMIT
    # The key that misbehaves is banned; another key on the same address is not.
    bad, good = "key:" + "aa" * 32, "key:" + "bb" * 32
    assert faults(a, bad, 20, 0.0)[-1]
    assert a.admit_key(bad, 1.0, from_key=0) is Verdict.BANNED
    assert a.admit_key(good, 1.0, from_key=0) is Verdict.ADMIT
    # On a testnet every source is shared.
    t = Admission(AdmissionLimits(shared_everywhere=True))
    assert t.unit_of(SRC, b"\x02" * 32) == "key:" + "02" * 32


def test_loopback_recognised() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1") and is_loopback("::1/128")
    assert not is_loopback("10.0.0.1") and not is_loopback("not an address")
    # IPv6 sources are /64s, but ::1 stays itself so that it is recognised as loopback
    assert source_of("::1") == "::1" and is_loopback(source_of("::1"))
    assert source_of("2001:db8::5") == "2001:db8::/64" and not is_loopback("2001:db8::/64")


@pytest.mark.threat("T-HANDSHAKE-FLOOD")
def test_handshake_bucket_per_source_and_global() -> None:
    a = Admission()
    admitted = [admit(a, SRC, 0.0) for _ in range(30)]
    assert admitted.count(Verdict.ADMIT) == LIMITS.handshake_burst
    assert admitted[-1] is Verdict.RATE_LIMITED
    assert admit(a, OTHER, 0.0) is Verdict.ADMIT  # another source has its own bucket
    assert admit(a, SRC, 1.0 / LIMITS.handshake_rate) is Verdict.ADMIT  # refilled one token
    assert admit(a, SRC, 1.0 / LIMITS.handshake_rate) is Verdict.RATE_LIMITED
    # The global bucket: many sources together get at most its burst at once.
    g = Admission(AdmissionLimits(global_handshake_burst=50))
    verdicts = [admit(g, f"198.51.100.{i}", 0.0) for i in range(100)]
    assert verdicts.count(Verdict.ADMIT) == 50
    assert g.refused[Verdict.RATE_LIMITED] == 50


@pytest.mark.threat("T-EXHAUST")
def test_no_source_takes_every_slot() -> None:
    a = Admission()
    assert LIMITS.max_per_source < LIMITS.max_per_shared_source < LIMITS.max_connections
    assert admit(a, SRC, 0.0, from_source=LIMITS.max_per_source) is Verdict.SOURCE_FULL
    assert admit(a, "127.0.0.1", 0.0, from_source=LIMITS.max_per_source) is Verdict.ADMIT
    assert admit(a, "127.0.0.1", 0.0,
                 from_source=LIMITS.max_per_shared_source) is Verdict.SOURCE_FULL
    assert admit(a, OTHER, 0.0, pending=LIMITS.max_pending_per_source) is Verdict.SOURCE_FULL
    assert admit(a, OTHER, 0.0, connections=LIMITS.max_connections) is Verdict.FULL
    key = "key:" + "cc" * 32
    assert a.admit_key(key, 0.0, from_key=LIMITS.max_per_key) is Verdict.SOURCE_FULL
    assert a.admit_key(SRC, 0.0, from_key=100) is Verdict.ADMIT  # a source's share is at accept


def test_memory_is_bounded_and_bans_are_kept() -> None:
    a = Admission(AdmissionLimits(max_tracked=100))
    faults(a, SRC, 20, 0.0)
    for i in range(1000):
        a.record_fault(f"10.0.{i // 250}.{i % 250}", float(i))
        assert len(a._records) <= 100
    assert a.banned(SRC, 30.0)  # the flood of new sources did not wash the ban out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fault", "wait", "admit"]),
                          st.floats(min_value=0, max_value=5000)), max_size=200))
def test_any_history_keeps_bans_within_bounds(events: list[tuple[str, float]]) -> None:
    a = Admission()
    now = 0.0
    for what, amount in events:
        if what == "wait":
            now += amount
        elif what == "fault":
            if a.record_fault(SRC, now):
                record = a._records[SRC]
                assert LIMITS.ban_base <= record.banned_until - now <= LIMITS.ban_max
        else:
            verdict = admit(a, SRC, now)
            assert (verdict is Verdict.BANNED) == a.banned(SRC, now)
        assert 0 <= a.score(SRC, now) < LIMITS.fault_threshold
