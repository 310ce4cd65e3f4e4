"""Replayed Opens (threat T-ANON-REPLAY; anon/replay.py, anon/relay.py): a hop that re-sends the
onion it passed on, to replay the cells it carried and have the end repeat the sender's
operation at a time of its choosing, is refused with a typed refusal (never a fault), within
the clock-skew window by the guard's memory and after it by the onion's creation time.

The guard is checked against a model (every key admitted at most once, memory bounded and
forgotten exactly when the time alone refuses), the relay on a small simulated grid."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from storegrid import record_requests, serving_grid
from trio.testing import MockClock

from anonmail import wire
from anonmail.anon import messages as am
from anonmail.anon import onion
from anonmail.anon.circuit import Circuit
from anonmail.anon.replay import DIGEST_SIZE, OnionReplayGuard
from anonmail.errors import ErrorCode, LocalError, Refusal, Refused
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario
from anonmail.store import messages as sm

N = 30
T0 = 1_800_000_000

# -- the guard, alone ---------------------------------------------------------------------------


def outcome(guard: OnionReplayGuard, key: bytes, created: int, now: float,
            peer: bytes = b"") -> ErrorCode | None:
    try:
        guard.admit(key, created, now, peer)
    except Refusal as e:
        assert not e.code.is_fault
        return e.code
    return None


@given(window=st.integers(0, 60), capacity=st.integers(1, 6),
       created=st.lists(st.integers(-120, 400), min_size=1, max_size=10),
       steps=st.lists(st.tuples(st.integers(0, 9), st.integers(-30, 60), st.sampled_from(
           [0.0, 0.25, 0.999])), max_size=60))
@pytest.mark.threat("T-ANON-REPLAY")
def test_the_guard_admits_each_key_once_within_its_window_in_bounded_memory(
        window: int, capacity: int, created: list[int],
        steps: list[tuple[int, int, float]]) -> None:
    """Against a model: a layer (key, created: fixed together, as the sealed layer binds them)
    is admitted once at most, whatever the clock does (it may step back); stale or future
    layers are CLOCK_SKEW, repeats DENIED, a full guard QUOTA; live entries never exceed
    `capacity` and are exactly the admitted layers the time alone would not refuse."""
    guard = OnionReplayGuard(window, capacity)
    keys = [bytes([i]) * 32 for i in range(len(created))]
    admitted: dict[bytes, int] = {}  # key -> created
    latest = float("-inf")
    now = float(T0)
    for i, step, frac in steps:
        i %= len(keys)
        now = float(int(now) + step) + frac
        latest = max(latest, now)
        c = T0 + created[i]
        live = sum(1 for a in admitted.values() if a + window >= latest)
        if c < latest - window or c > now + window:
            expected: ErrorCode | None = ErrorCode.CLOCK_SKEW
        elif keys[i] in admitted:
            expected = ErrorCode.DENIED
        elif live >= capacity:
            expected = ErrorCode.QUOTA
        else:
            expected = None
            admitted[keys[i]] = c
        assert outcome(guard, keys[i], c, now) == expected
        assert len(guard) == sum(1 for a in admitted.values() if a + window >= latest)
        assert len(guard) <= capacity


@pytest.mark.threat("T-ANON-REPLAY")
def test_a_flood_fills_the_guard_but_never_lets_a_replay_in() -> None:
    """A flood of fresh layers is refused (QUOTA) once the guard is full; a replay of an
    admitted one is still DENIED; once the window has passed, the guard has forgotten the
    flood, refuses the replay by its time, and admits fresh layers again."""
    guard = OnionReplayGuard(600, 4)
    now = float(T0)
    flood = [bytes([i]) * 32 for i in range(4)]
    for k in flood:
        guard.admit(k, T0, now)
    assert outcome(guard, bytes([9]) * 32, T0, now) is ErrorCode.QUOTA
    assert outcome(guard, flood[0], T0, now) is ErrorCode.DENIED
    now += 600
    assert outcome(guard, flood[0], T0, now) is ErrorCode.DENIED  # still inside the window
    now += 1
    assert outcome(guard, flood[0], T0, now) is ErrorCode.CLOCK_SKEW
    assert outcome(guard, bytes([9]) * 32, int(now), now) is None
    assert len(guard) == 1  # the flood is forgotten


@pytest.mark.threat("T-ANON-REPLAY")
def test_one_flooding_peer_fills_only_its_own_share() -> None:
    """Every budget is per peer as well as global: a previous hop flooding fresh Opens is
    refused once its share is live, while another peer's Opens are still admitted; its share
    comes back as its entries expire."""
    guard = OnionReplayGuard(600, 8, per_peer=3)
    now = float(T0)
    for i in range(3):
        guard.admit(bytes([i]) * 32, T0, now, b"flood")
    assert outcome(guard, bytes([7]) * 32, T0, now, b"flood") is ErrorCode.QUOTA
    for i in range(3):
        guard.admit(bytes([10 + i]) * 32, T0, now, b"honest")
    assert len(guard) == 6
    now += 601
    guard.admit(bytes([7]) * 32, int(now), now, b"flood")  # its first three have expired
    assert guard._by_peer == {b"flood": 1}


@pytest.mark.threat("T-ANON-REPLAY")
def test_a_restarted_relay_refuses_onions_made_before_it_started() -> None:
    """The guard is in memory: after a restart, an onion recorded before it (still inside the
    clock skew) is refused by its time; one made since is admitted."""
    started = T0 + 100.5
    guard = OnionReplayGuard(600, started=started)
    assert outcome(guard, b"k" * 32, T0 + 99, started) is ErrorCode.CLOCK_SKEW
    assert outcome(guard, b"k" * 32, T0 + 100, started + 0.2) is None  # within its second
    assert outcome(guard, b"j" * 32, T0 + 130, T0 + 131) is None


def test_the_guard_keeps_short_hashes_not_session_keys() -> None:
    """A relay's memory must not hold the keys of circuits it has closed."""
    guard = OnionReplayGuard(600)
    key = bytes(range(32))
    guard.admit(key, T0, T0)
    assert all(len(d) == DIGEST_SIZE and d not in key for d in guard._seen)
    with pytest.raises(LocalError):
        OnionReplayGuard(600, 0)


@pytest.mark.threat("T-ANON-REPLAY")
def test_a_clock_stepping_back_does_not_revive_a_forgotten_layer() -> None:
    guard = OnionReplayGuard(600)
    guard.admit(b"k" * 32, T0, T0)
    guard.admit(b"j" * 32, T0 + 700, T0 + 700)  # forgets the first: its time refuses it
    assert len(guard) == 1
    # the clock steps back 200 s: by the current time alone, the first would be fresh again
    assert outcome(guard, b"k" * 32, T0, T0 + 500) is ErrorCode.CLOCK_SKEW


# -- on a simulated grid ------------------------------------------------------------------------


@pytest.fixture
async def grid() -> AsyncIterator[Scenario]:
    async with serving_grid(N, 5, frozenset()) as (s, _):
        yield s


@pytest.mark.parametrize("middle", [False, True])
@pytest.mark.threat("T-ANON-REPLAY", "T-FAULT-REFLECT")
async def test_a_hop_replaying_the_onion_it_forwarded_is_refused_and_nothing_repeats(
        grid: Scenario, autojump_clock: MockClock, middle: bool) -> None:
    """The sender stores through a circuit; the hop before the end (X, or the middle relay M)
    re-sends the Open it passed on under a fresh circuit id, then the cell it carried. The end
    refuses the Open (DENIED) and knows no such circuit (GONE), so the target is asked once;
    after the window the onion is refused by its time (CLOCK_SKEW). No fault is charged."""
    with trio.fail_after(1800):  # virtual time: the test waits out the 600 s window
        a, x, m, z, target = (grid.nodes[i] for i in range(5))
        hops = [x, m, z] if middle else [x, z]
        replayer = hops[-2]
        seen = record_requests(z, am.Open, am.Cell)
        stores = record_requests(target, sm.Store)
        built = grid.clock.now()
        circuit = await Circuit.open(a.net, [h.cert for h in hops], SeededRng(1), now=built)
        blob = wire.encode(sm.Store(bytes(32), sm.ObjectKind.BODY, b"x", 60, ()))
        assert isinstance(await circuit.call(am.Forward((target.cert,), blob, 0, 0)),
                          am.Forwarded)
        assert len(stores) == 1
        opened = next(s for s in seen if isinstance(s, am.Open))
        cell = next(s for s in seen if isinstance(s, am.Cell))
        assert onion.open_onion(z.key, opened.onion).created == int(built)

        fresh = SeededRng(99).bytes(am.CIRCUIT_ID_SIZE)
        await trio.sleep(30)  # "at a time of its choosing"
        with pytest.raises(Refused) as e:
            await replayer.net.request(z.cert, am.Open(fresh, opened.onion))
        assert e.value.code is ErrorCode.DENIED
        with pytest.raises(Refused) as e:
            await replayer.net.request(z.cert, am.Cell(fresh, cell.box))
        assert e.value.code is ErrorCode.GONE
        await trio.sleep(grid.params.clock_skew)
        with pytest.raises(Refused) as e:  # the guard has forgotten it: its time refuses it
            await replayer.net.request(z.cert, am.Open(fresh, opened.onion))
        assert e.value.code is ErrorCode.CLOCK_SKEW
        assert len(stores) == 1  # the sender's STORE happened once
        assert grid.world.stats.faults[replayer.node_id] == 0  # refusals, not faults
