"""Misdirection scores (anonmail/dht/misdirection.py): decaying, bounded, least recently
charged forgotten first. The DHT's use of them is checked in tests/test_lookup.py (a liar naming
bad contacts is dropped) and threat T-FAULT-REFLECT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonmail.dht.misdirection import Misdirection

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def test_a_score_counts_charges_and_halves_every_half_life() -> None:
    scores = Misdirection(half_life=100.0)
    assert scores.score(A, 0.0) == 0.0
    assert scores.charge(A, 0.0) == 1.0
    assert scores.charge(A, 0.0) == 2.0
    assert scores.score(A, 100.0) == pytest.approx(1.0)
    assert scores.score(A, 300.0) == pytest.approx(0.25)
    assert scores.charge(A, 100.0) == pytest.approx(2.0)  # decayed to 1, then one more
    assert scores.score(A, 50.0) == pytest.approx(2.0)  # a clock that went back: no growth
    assert scores.score(B, 100.0) == 0.0 and len(scores) == 1  # reading adds nothing


def test_when_full_the_least_recently_charged_is_forgotten() -> None:
    scores = Misdirection(capacity=2)
    scores.charge(A, 0.0)
    scores.charge(B, 1.0)
    scores.charge(A, 2.0)  # A charged again: now B is the least recent
    scores.charge(C, 3.0)
    assert scores.score(B, 3.0) == 0.0 and len(scores) == 2
    assert scores.score(A, 3.0) > 1.9 and scores.score(C, 3.0) > 0.9


@given(st.lists(st.tuples(st.integers(0, 9), st.floats(0, 10_000)), max_size=60),
       st.integers(1, 6))
def test_scores_are_bounded_and_match_a_model(charges: list[tuple[int, float]],
                                              capacity: int) -> None:
    scores = Misdirection(half_life=500.0, capacity=capacity)
    model: dict[bytes, tuple[float, float]] = {}  # node -> (score, when), in charge order
    now = 0.0
    for who, dt in charges:
        now += dt
        node = bytes([who]) * 32
        before = model.pop(node, None)
        if before is None and len(model) >= capacity:
            model.pop(next(iter(model)))
        decayed = 0.0 if before is None else before[0] * 2 ** (-(now - before[1]) / 500.0)
        model[node] = (decayed + 1.0, now)
        assert scores.charge(node, now) == pytest.approx(decayed + 1.0)
        assert len(scores) == len(model) <= capacity
        for other in range(10):
            n = bytes([other]) * 32
            held = model.get(n)
            expect = 0.0 if held is None else held[0] * 2 ** (-(now - held[1]) / 500.0)
            assert scores.score(n, now) == pytest.approx(expect)
