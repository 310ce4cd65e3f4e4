"""The sender-linkage model (anonmail/experiments/anonymity/): id-space shares, the seed's rule
against its formula, the extremes (no adversary, everyone hostile), the defences' ordering,
the guard's replacement, determinism and the command. Sizes are kept small: the whole file runs
in a few seconds."""

from __future__ import annotations

import dataclasses
import math

import pytest

from anonmail.anon.options import DEFAULT, AnonOptions
from anonmail.cli import main
from anonmail.errors import UserError
from anonmail.experiments.anonymity.command import parse_options
from anonmail.experiments.anonymity.model import (
    AnonConfig,
    Density,
    TickModel,
    entropy_degree,
    majority,
    predicted_a,
    variants,
)
from anonmail.experiments.anonymity.network import Network, xor_shares
from anonmail.experiments.anonymity.protocol import Protocol, Sender
from anonmail.experiments.anonymity.report import format_report
from anonmail.experiments.anonymity.run import run, run_row
from anonmail.rng import SeededRng

SMALL = AnonConfig(nodes=200, senders=40, messages=600, history=30, history_senders=20,
                   calibration=300, fractions=(0.1,))


def row_index(config: AnonConfig, label: str) -> int:
    return next(i for i, v in enumerate(variants(config)) if v.label == label)


def test_xor_shares_are_exact_cell_sizes() -> None:
    """A node's share = the fraction of keys whose XOR-closest node it is (8-bit ids, all keys)."""
    rng = SeededRng(3)
    ids = sorted({rng.randbelow(256) for _ in range(40)})
    shares = xor_shares(ids, bits=8)
    counts = [0] * len(ids)
    for key in range(256):
        counts[min(range(len(ids)), key=lambda i: ids[i] ^ key)] += 1
    assert [c / 256 for c in counts] == shares
    assert math.isclose(sum(shares), 1.0)
    assert len(set(shares)) > 1  # not uniform: the bias the model keeps


def test_formulas() -> None:
    assert math.isclose(majority(0.1), 3 * 0.01 - 2 * 0.001)
    seed = AnonOptions.seed_only()
    assert math.isclose(predicted_a(0.1, seed, "greedy", False) or 0, 0.01 / (1 - 0.09))
    assert math.isclose(predicted_a(0.1, seed, "patient", False) or 0, 2 * 0.01 - 0.001)
    assert predicted_a(0.1, seed.replace(cross_check=False), "greedy", False) == 0.1
    assert predicted_a(0.1, DEFAULT.replace(guard=True), "greedy", False) is None
    # no evidence: the uniform posterior, d = 1; all on one sender: d = 0
    assert entropy_degree([], 1.0, 500) == 1.0
    assert entropy_degree([1.0], 0.0, 500) == 0.0


def test_learnt_timing_models_are_distributions() -> None:
    rng = SeededRng(5)
    xs = [rng.random() * 2 for _ in range(4000)]
    d = Density(xs)
    steps = 2000
    area = sum(d(d.lo + (i + 0.5) * (d.hi - d.lo) / steps) for i in range(steps))
    assert area * (d.hi - d.lo) / steps == pytest.approx(1.0, abs=0.01)
    assert d(-1.0) == 0.0 and d(3.0) == 0.0
    pairs = [(t, t + 0.3 + rng.random() * 7) for t in (rng.random() * 100 for _ in range(3000))]
    tick = TickModel(pairs, 5.0)
    for table in tick.table:
        assert sum(table.values()) == pytest.approx(1.0)


def test_no_adversary_links_nothing() -> None:
    config = dataclasses.replace(SMALL, fractions=(0.0,))
    for label in ("seed-only", "- cross-check", "defaults"):
        row = run_row(config, 0.0, row_index(config, label))
        assert (row.linked_a, row.linked_b, row.misattributed, row.observed) == (0, 0, 0, 0)
        assert row.degree == 1.0 and row.history_b == 0


def test_everyone_hostile_links_everything() -> None:
    """Every node but the one sender is hostile: every X, Y, Z and replica is the coalition's."""
    config = AnonConfig(nodes=60, senders=1, messages=200, history=10, history_senders=1,
                        calibration=200, fractions=(59 / 60,))
    for strategy in ("greedy", "patient"):
        cfg = dataclasses.replace(config, strategy=strategy)
        for label in ("seed-only", "+ 2 hops", "defaults"):
            row = run_row(cfg, 59 / 60, row_index(cfg, label))
            assert row.linked_a == row.linked_b == row.messages, (strategy, label)
            assert row.degree == 0.0 and row.history_a == row.histories == 1


def test_rule_a_matches_its_formula() -> None:
    """Seed-only with a greedy X: (a) = h^2 / (1 - h(1-h)) ~ f^2 (1 + f), h = the coalition's
    id-space share; without the cross-check, (a) = h."""
    config = AnonConfig(nodes=1000, senders=300, messages=3000, history_senders=0,
                        calibration=300, fractions=(0.2,))
    seed = run_row(config, 0.2, row_index(config, "seed-only"))
    assert seed.predicted is not None
    sigma = math.sqrt(seed.predicted / seed.messages)
    assert abs(seed.rate_a - seed.predicted) < 4 * sigma
    assert 0.8 * 0.04 < seed.rate_a < 1.5 * 0.04
    bare = run_row(config, 0.2, row_index(config, "- cross-check"))
    assert bare.predicted is not None
    assert abs(bare.rate_a - bare.predicted) < 4 * math.sqrt(bare.predicted / bare.messages)
    assert bare.rate_a > 3 * seed.rate_a
    assert seed.rate_b >= seed.rate_a


def test_defaults_do_not_link_more_than_the_seed() -> None:
    config = dataclasses.replace(SMALL, nodes=400, senders=100, messages=1500, fractions=(0.2,),
                                 lookup_leak=False)
    for strategy in ("greedy", "patient"):
        cfg = dataclasses.replace(config, strategy=strategy)
        seed = run_row(cfg, 0.2, row_index(cfg, "seed-only"))
        best = run_row(cfg, 0.2, row_index(cfg, "defaults"))
        assert best.rate_b <= seed.rate_b, strategy
        assert best.p_history_b < seed.p_history_b, strategy
        assert best.degree >= seed.degree, strategy
        assert best.latency > seed.latency  # the delay at Z costs time
    # a stricter threshold names fewer senders, never fewer than the certain links
    strict = run_row(dataclasses.replace(config, threshold=1.0), 0.2, 0)
    loose = run_row(config, 0.2, 0)
    assert loose.linked_a <= strict.linked_b <= loose.linked_b


def test_the_lookup_leak_defeats_the_guard() -> None:
    """When A finds Y (and M) by its own lookup, a fresh hostile Y per message learns A: the
    guard no longer keeps most senders' histories unlinked."""
    config = dataclasses.replace(SMALL, nodes=400, senders=100, messages=1500, fractions=(0.2,),
                                 history_senders=40, strategy="patient")
    i = row_index(config, "defaults")
    leaky = run_row(dataclasses.replace(config, lookup_leak=True), 0.2, i)
    fixed = run_row(config, 0.2, i)  # the code: Y and M from a pool found long before
    assert abs(leaky.rate_a - fixed.rate_a) < 0.3 * fixed.rate_a  # the seed's rule misses it
    assert leaky.rate_b > 1.5 * fixed.rate_b
    assert leaky.p_history_b > 0.9 > 0.5 > fixed.p_history_b


def test_greedy_guard_is_replaced_and_patient_guard_is_not() -> None:
    net = Network(200, 0.5, 20, 3, 8, (0.01, 0.15), SeededRng(9))
    config = AnonConfig()
    options = AnonOptions.seed_only().replace(guard=True, guard_disagreements=2)
    hostile = next(i for i in range(200) if net.hostile[i])
    cases = (("greedy", False, True), ("patient", False, False),
             ("patient", True, False))  # hostile Ys that contradict honest X are charged
    for strategy, disrupt, replaced in cases:
        proto = Protocol(net, options, dataclasses.replace(config, strategy=strategy,
                                                           disrupt=disrupt),
                         SeededRng(strategy.encode()))
        s = Sender(net.senders[0], net.contacts[net.senders[0]], guard=hostile,
                   guard_until=1e9, guards_used=1)
        for _ in range(30):
            proto.channel(s, 0.0)
        assert (s.guard != hostile) == replaced, strategy
    honest = next(i for i in range(200) if not net.hostile[i] and i != net.senders[0])
    proto = Protocol(net, options, dataclasses.replace(config, disrupt=True), SeededRng(1))
    s = Sender(net.senders[0], net.contacts[net.senders[0]], guard=honest, guard_until=1e9)
    for _ in range(30):
        proto.channel(s, 0.0)
    assert s.guard == honest  # hostile Ys' disagreements are theirs, not the guard's


def test_same_seed_same_table_and_the_command_prints_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    config = dataclasses.replace(SMALL, messages=300, history_senders=10, calibration=200)
    first = format_report(run(config))
    assert first == format_report(run(config))
    assert first != format_report(run(dataclasses.replace(config, seed=2)))
    args = ["sim", "anonymity", "--quick", "--nodes", "150", "--senders", "30", "--messages",
            "300", "--history-senders", "5", "--calibration", "200", "--fractions", "0.1",
            "--jobs", "1", "--also", "two:hops=2,delay_mean=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "f = 0.1 (greedy)" in out and "f = 0.1 (patient)" in out
    for label in ("seed-only", "- cross-check", "+ guard X", "+ padding", "defaults", "two"):
        assert f"\n{label} " in out
    assert "wall clock" in out
    assert main([*args, "--senders", "149"]) == 2  # more senders than honest nodes
    assert "anonmail: --senders" in capsys.readouterr().err


def test_also_parses_option_changes() -> None:
    label, options = parse_options("x:hops=2,padding=off,delay_mean=0.5")
    assert label == "x" and options == DEFAULT.replace(hops=2, padding=False, delay_mean=0.5)
    with pytest.raises(UserError):
        parse_options("hops=two")
    with pytest.raises(UserError):
        parse_options("colour=blue")
