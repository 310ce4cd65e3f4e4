"""Tests of judging a run against the register (threat-model/threat_judge.py), case by case over
plain data: missing, failing, skipped, unrun, marked and slow checks; unknown and malformed marks;
the full, local and off scopes; which collected node ids a listed check covers; the outcome of a
test's phases; collect-only runs and the summary line.
"""

from __future__ import annotations

import pytest
from threat_judge import (
    RunFacts,
    Scope,
    ThreatMark,
    decide_scope,
    evaluate,
    matches,
    merge_outcome,
    phase_outcome,
)
from threat_register import parse_register
from threatcases import judge, register, threat


def test_everything_fine() -> None:
    reg = register(threat(checks=["tests/a.py::test_a"]))
    assert judge(reg, ["tests/a.py::test_a"]) == []


def test_mitigated_without_check() -> None:
    reg = register(threat())
    problems = judge(reg, ["tests/a.py::test_a"])
    assert len(problems) == 1 and "T-X: status is mitigated but it has no check" in problems[0]


@pytest.mark.parametrize("status", ["partial", "accepted"])
def test_partial_and_accepted_need_no_check(status: str) -> None:
    reg = register(threat(status=status, residual="much"))
    assert judge(reg, []) == []


def test_partial_checks_must_still_pass() -> None:
    reg = register(threat(status="partial", residual="x", checks=["t.py::a"]))
    assert judge(reg, ["t.py::a"], outcomes={"t.py::a": "failed"}) == ["T-X: check t.py::a failed"]


def test_marked_test_counts_as_check() -> None:
    reg = register(threat())
    assert judge(reg, ["t.py::a", "t.py::b"], marks={"t.py::a": ["T-X"]}) == []


def test_listed_check_missing() -> None:
    reg = register(threat(checks=["tests/a.py::test_gone"]))
    problems = judge(reg, ["tests/a.py::test_a"])
    assert problems == ["T-X: check tests/a.py::test_gone was not collected "
                        "(renamed, moved or deleted?)"]


@pytest.mark.parametrize("outcome", ["failed", "error", "skipped", "xfailed", "xpassed"])
def test_check_not_passing(outcome: str) -> None:
    reg = register(threat(checks=["t.py::a"]))
    assert judge(reg, ["t.py::a"], outcomes={"t.py::a": outcome}) == [f"T-X: check t.py::a "
                                                                      f"{outcome}"]


def test_check_that_did_not_run() -> None:
    reg = register(threat(checks=["t.py::a"]))
    assert judge(reg, ["t.py::a"], outcomes={}) == ["T-X: check t.py::a did not run"]


def test_marked_check_failing() -> None:
    reg = register(threat())
    problems = judge(reg, ["t.py::a"], marks={"t.py::a": ["T-X"]},
                     outcomes={"t.py::a": "failed"})
    assert problems == ["T-X: check t.py::a failed"]


def test_unknown_and_malformed_marks() -> None:
    reg = register(threat(checks=["t.py::ok"]))
    facts = RunFacts(
        collected=["t.py::ok", "t.py::a", "t.py::b", "t.py::c", "t.py::d"],
        marks={"t.py::a": [ThreatMark(("T-NOPE",))], "t.py::b": [ThreatMark(())],
               "t.py::c": [ThreatMark((7,))], "t.py::d": [ThreatMark(("T-X",), ("id",))]},
        outcomes={},
    )
    scopes: tuple[Scope, ...] = ("full", "local")
    for scope in scopes:
        problems = evaluate(reg, facts, scope).problems
        assert any("t.py::a: marks unknown threat 'T-NOPE'" in p for p in problems)
        assert any(p.startswith("t.py::b: write the mark as") for p in problems)
        assert any("t.py::c: threat ids are strings" in p for p in problems)
        assert any(p.startswith("t.py::d: write the mark as") for p in problems)


def test_parametrized_instances_report_a_bad_mark_once() -> None:
    reg = register(threat(checks=["t.py::ok"]))
    collected = ["t.py::ok", "t.py::p[1]", "t.py::p[2]", "t.py::p[3]"]
    facts = RunFacts(collected=collected,
                     marks={n: [ThreatMark(("T-NOPE",))] for n in collected[1:]},
                     outcomes={n: "passed" for n in collected})
    assert evaluate(reg, facts, "full").problems == (
        "t.py::p[...]: marks unknown threat 'T-NOPE' (add it to threat-model/threats.toml)",)


def test_local_scope_judges_only_register_and_marks() -> None:
    reg = register(threat(checks=["t.py::gone"]), threat(id="T-Y"))
    assert judge(reg, ["t.py::a"], outcomes={"t.py::a": "failed"}, scope="local") == []
    broken = parse_register({"threat": [threat(status="nope")]})
    assert judge(broken, [], scope="local") != []


def test_off_scope_judges_nothing() -> None:
    broken = parse_register({"threat": [threat(status="nope")]})
    assert judge(broken, [], scope="off") == []


def test_register_problems_are_reported_with_run_problems() -> None:
    reg = parse_register({"threat": [threat(status="nope"), threat(id="T-Y")]})
    problems = judge(reg, [])
    assert any("unknown status" in p for p in problems)
    assert any(p.startswith("T-Y: status is mitigated but it has no check") for p in problems)


def test_parametrized_and_class_checks_match() -> None:
    reg = register(threat(checks=["t.py::test_p", "t.py::TestC", "u.py"]))
    collected = ["t.py::test_p[1]", "t.py::test_p[2]", "t.py::TestC::test_m", "u.py::test_u",
                 "t.py::test_px"]
    facts = RunFacts(collected=collected, outcomes={n: "passed" for n in collected})
    report = evaluate(reg, facts, "full")
    assert report.ok and report.checks == 4 and report.passed == 4


def test_matches() -> None:
    assert matches("t.py::a", "t.py::a")
    assert matches("t.py::a", "t.py::a[x-1]")
    assert matches("t.py::C", "t.py::C::a")
    assert matches("dir\\t.py::a", "dir/t.py::a")
    assert not matches("t.py::a", "t.py::ab")
    assert not matches("t.py::a", "tt.py::a")


def test_slow_checks() -> None:
    """A slow test never makes a mitigated threat count as checked; it is judged only with
    --runslow; an ordinary check alongside it is enough."""
    reg = register(threat(checks=["t.py::slow"]))
    skipped = {"t.py::slow": "skipped"}
    only_slow = judge(reg, ["t.py::slow"], slow={"t.py::slow"}, outcomes=skipped)
    assert len(only_slow) == 1 and "only slow tests" in only_slow[0]
    only_slow_run = judge(reg, ["t.py::slow"], slow={"t.py::slow"}, runslow=True)
    assert len(only_slow_run) == 1 and "only slow tests" in only_slow_run[0]

    reg = register(threat(checks=["t.py::slow", "t.py::fast"]))
    both = ["t.py::slow", "t.py::fast"]
    assert judge(reg, both, slow={"t.py::slow"},
                 outcomes={"t.py::slow": "skipped", "t.py::fast": "passed"}) == []
    assert judge(reg, both, slow={"t.py::slow"}, runslow=True,
                 outcomes={"t.py::slow": "failed", "t.py::fast": "passed"}) == [
        "T-X: check t.py::slow failed"]


def test_collect_only_judges_structure_not_outcomes() -> None:
    reg = register(threat(checks=["t.py::a"]), threat(id="T-Y"))
    facts = RunFacts(collected=["t.py::a"], outcomes=None)
    report = evaluate(reg, facts, "full")
    assert not report.ran and report.checks == 1
    assert [p.split(":")[0] for p in report.problems] == ["T-Y"]
    assert "collected (none ran)" in report.summary()


def test_summary_lines() -> None:
    reg = register(threat(checks=["t.py::a"]), threat(id="T-Y", checks=["t.py::a", "t.py::b"]))
    ok = evaluate(reg, RunFacts(["t.py::a", "t.py::b"],
                                outcomes={"t.py::a": "passed", "t.py::b": "passed"}), "full")
    assert ok.summary() == "threat model: 2 threats, 2 checks passed"
    bad = evaluate(reg, RunFacts(["t.py::a", "t.py::b"],
                                 outcomes={"t.py::a": "passed", "t.py::b": "failed"}), "full")
    assert bad.summary() == "threat model: FAILED, 1 problem; 2 threats, 1/2 checks passed"


@pytest.mark.parametrize(
    ("mode", "reasons", "scope"),
    [("auto", [], "full"), ("auto", ["-k"], "local"), ("enforce", ["-k"], "full"),
     ("enforce", [], "full"), ("off", [], "off"), ("off", ["-k"], "off")],
)
def test_decide_scope(mode: str, reasons: list[str], scope: str) -> None:
    assert decide_scope(mode, reasons) == scope


def test_decide_scope_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="enforce, off or auto"):
        decide_scope("strict", [])


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        ([("setup", "passed", False), ("call", "passed", False), ("teardown", "passed", False)],
         "passed"),
        ([("setup", "skipped", False), ("teardown", "passed", False)], "skipped"),
        ([("setup", "failed", False), ("teardown", "passed", False)], "error"),
        ([("setup", "passed", False), ("call", "failed", False)], "failed"),
        ([("call", "passed", False), ("teardown", "failed", False)], "error"),
        ([("call", "skipped", True)], "xfailed"),
        ([("call", "passed", True)], "xpassed"),
        ([("setup", "passed", False), ("call", "skipped", False)], "skipped"),
    ],
)
def test_outcome_of_phases(phases: list[tuple[str, str, bool]], expected: str) -> None:
    outcome: str | None = None
    for when, result, xfail in phases:
        outcome = merge_outcome(outcome, phase_outcome(when, result, xfail))
    assert outcome == expected
