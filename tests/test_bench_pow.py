"""`anonmail bench pow` (anonmail/experiments/bench/pow.py) at tiny difficulty and counts: the
stamps it times verify, the hashes it counts are the search's, the permit path it times is
admitted, and the verdict and percentiles are what the report says."""

from __future__ import annotations

import math
import re

import pytest

from anonmail.cli import main
from anonmail.experiments.bench import pow as bench_pow
from anonmail.records import params
from anonmail.rng import SeededRng

NOW = 1_800_000_000.0


def test_stamps_are_timed_and_their_hashes_counted() -> None:
    free = bench_pow.measure_stamps(4, 0, SeededRng(1), NOW)
    assert free.tries == (1, 1, 1, 1)  # 0 bits: the first nonce tried (the search's start)
    r = bench_pow.measure_stamps(6, 6, SeededRng(2), NOW)
    assert len(r.seconds) == len(r.tries) == 6 and r.bits == 6
    assert all(s >= 0 for s in r.seconds) and all(t >= 1 for t in r.tries)
    assert sum(r.tries) > 6  # some stamp needed more than one try at 6 bits
    assert bench_pow.measure_stamps(6, 6, SeededRng(2), NOW).tries == r.tries  # seeded


def test_percentiles_and_the_budget_verdict() -> None:
    fast = bench_pow.StampResult(19, tuple([0.1] * 19 + [3.0]), tuple([1] * 20))
    assert fast.median == 0.1 and fast.p95 == 0.1 and fast.max == 3.0 and fast.within_budget
    slow = bench_pow.StampResult(19, tuple([0.1] * 18 + [1.0, 3.0]), tuple([1] * 20))
    assert slow.p95 == 1.0 and not slow.within_budget  # the budget is strict: p95 < 1 s
    assert bench_pow.percentile([5.0], 0.95) == 5.0
    assert bench_pow.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert fast.hash_rate == pytest.approx(20 / sum(fast.seconds))
    # 2**20 tries per CPU second: a 19-bit p95 is ln(20)/2 s, 18 bits is the last within 1 s.
    rate = bench_pow.StampResult(19, (1.0,), (1 << 20,))
    assert rate.model_p95 == pytest.approx(math.log(20) / 2)
    assert rate.budget_bits == 18
    assert bench_pow.StampResult(19, (1.0,), (1,)).budget_bits == 0


def test_the_permit_path_is_admitted_and_cheap_beside_a_stamp() -> None:
    p = bench_pow.measure_permit(SeededRng(3), NOW, rounds=5)
    assert p.spend > 0 and p.admit > 0 and p.stamp_check >= 0
    assert p.per_append == p.spend + p.admit
    assert p.per_append < 0.05  # signatures: well under a millisecond each, whatever the CPU


def test_report_states_figures_verdict_and_ratio() -> None:
    stamps = bench_pow.StampResult(params.MAINNET.stamp_bits, (0.2, 0.3, 0.5), (10, 20, 30))
    permit = bench_pow.PermitResult(0.0001, 0.0002, 0.000002)
    out = bench_pow.report(stamps, permit, 7)
    bits = params.MAINNET.stamp_bits
    assert f"3 stamps at {bits} bits (the main network's minimum)" in out and "seed 7" in out
    assert re.search(r"median +0\.300\n", out) and re.search(r"p95 +0\.500\n", out)
    assert re.search(r"budget: p95 < 1 s of one core +PASS", out)
    assert re.search(r"median stamp / permit append +1,000x", out)
    late = bench_pow.StampResult(19, (0.2, 1.5), (10, 20))
    assert re.search(r"budget: p95 < 1 s of one core +FAIL", bench_pow.report(late, permit, None))


def test_bench_pow_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "pow", "--count", "3", "--bits", "4", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("anonmail bench pow: 3 stamps at 4 bits, one core")
    for label in ("median", "p95", "max", "hashes / second", "budget: p95 < 1 s", "predicts",
                  "gate admit", "median stamp / permit append"):
        assert label in out
    for bad, what in ((["--count", "0"], "--count"), (["--bits", "31"], "--bits"),
                      (["--bits", "-1"], "--bits")):
        assert main(["bench", "pow", *bad]) == 2  # one UserError line, nothing run
        assert capsys.readouterr().err.startswith(f"anonmail: {what} must be")
