"""Tests of the threat-model checker (threat-model/anonmail_threats.py): the pure decision
functions case by case, the real register, and whole pytest runs of tiny fake suites."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from anonmail_threats import (
    Register,
    RunFacts,
    Scope,
    ThreatMark,
    decide_scope,
    evaluate,
    load_register,
    matches,
    merge_outcome,
    parse_register,
    parse_threat,
    phase_outcome,
)

pytest_plugins = ["pytester"]

REGISTER = Path(__file__).resolve().parents[1] / "threats.toml"


def threat(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "T-X",
        "title": "a threat",
        "component": "somewhere",
        "adversary": "someone",
        "stride": ["T"],
        "status": "mitigated",
        "mitigation": "we do something",
        "checks": [],
        "references": ["RFC 1"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def register(*entries: dict[str, Any]) -> Register:
    reg = parse_register({"threat": list(entries)})
    assert not reg.problems, reg.problems
    return reg


def judge(reg: Register, collected: list[str], *, marks: dict[str, list[str]] | None = None,
          outcomes: dict[str, str] | None = None, slow: set[str] | None = None,
          runslow: bool = False, scope: Scope = "full") -> list[str]:
    facts = RunFacts(
        collected=collected,
        marks={n: [ThreatMark(tuple(ids))] for n, ids in (marks or {}).items()},
        slow=frozenset(slow or ()),
        outcomes={n: "passed" for n in collected} if outcomes is None else outcomes,
        runslow=runslow,
    )
    return list(evaluate(reg, facts, scope).problems)


# ---------------------------------------------------------------------------------------------
# The register format


def test_valid_threat_parses() -> None:
    t, problems = parse_threat(threat(linddun=["Linking"], page="", checks=["tests/a.py::b"]),
                               "#1")
    assert problems == [] and t is not None
    assert t.id == "T-X" and t.checks == ("tests/a.py::b",) and t.linddun == ("Linking",)


@pytest.mark.parametrize("field", ["id", "title", "component", "adversary", "status",
                                   "mitigation", "checks", "references"])
def test_missing_required_field(field: str) -> None:
    t, problems = parse_threat(threat(**{field: None}), "#1")
    assert t is None
    assert any(f"missing required field {field!r}" in p for p in problems), problems


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"status": "fixed"}, "unknown status 'fixed'"),
        ({"status": "partial"}, "'residual'"),
        ({"status": "accepted", "residual": "  "}, "'residual'"),
        ({"id": "mitm"}, "ids look like"),
        ({"id": "T-mitm"}, "ids look like"),
        ({"title": ""}, "'title' must be a non-empty string"),
        ({"title": 3}, "'title' must be a non-empty string"),
        ({"checks": "tests/a.py::b"}, "'checks' must be a list"),
        ({"checks": [1]}, "'checks' must be a list"),
        ({"checks": ["test_b"]}, "not a pytest node id"),
        ({"references": [""]}, "'references' must be a list"),
        ({"stride": []}, "at least one STRIDE or LINDDUN"),
        ({"stride": None}, "at least one STRIDE or LINDDUN"),
        ({"stride": ["X"]}, "not a STRIDE category"),
        ({"linddun": ["Leaking"]}, "not a LINDDUN category"),
        ({"check": ["tests/a.py::b"]}, "unknown field 'check'"),
        ({"residual": 5}, "'residual' must be a string"),
        ({"page": "nope.md"}, "page 'nope.md' does not exist"),
    ],
)
def test_invalid_threats(overrides: dict[str, Any], needle: str, tmp_path: Path) -> None:
    t, problems = parse_threat(threat(**overrides), "#1", tmp_path)
    assert t is None
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("cat", ["S", "t", "Spoofing", "denial of service",
                                 "Elevation of Privilege"])
def test_stride_accepts_letters_and_names(cat: str) -> None:
    assert parse_threat(threat(stride=[cat]), "#1")[1] == []


def test_linddun_alone_is_enough() -> None:
    assert parse_threat(threat(stride=None, linddun=["Identifying", "data disclosure"]),
                        "#1")[1] == []


def test_page_must_exist(tmp_path: Path) -> None:
    (tmp_path / "mitm.md").write_text("# MITM\n")
    assert parse_threat(threat(page="mitm.md"), "#1", tmp_path)[1] == []


def test_register_level_problems() -> None:
    reg = parse_register({"threat": [threat(), threat()]})
    assert any("duplicate threat id" in p for p in reg.problems)
    assert set(reg.threats) == {"T-X"}
    reg = parse_register({"threats": [threat()]})
    assert any("unknown top-level key 'threats'" in p for p in reg.problems)
    reg = parse_register({"threat": {"id": "T-X"}})
    assert any("array of tables" in p for p in reg.problems)
    reg = parse_register({"threat": ["T-X"]})
    assert any("must be a table" in p for p in reg.problems)


def test_invalid_threat_id_is_still_known() -> None:
    """A test marking a threat whose entry is broken gets the entry's problem, not a second
    'unknown threat' one."""
    reg = parse_register({"threat": [threat(status="fixed")]})
    assert "T-X" in reg.known_ids and "T-X" not in reg.threats
    problems = judge(reg, ["t.py::a"], marks={"t.py::a": ["T-X"]})
    assert not any("unknown threat" in p for p in problems)


def test_load_register_failures(tmp_path: Path) -> None:
    missing = load_register(tmp_path / "nope.toml")
    assert missing.problems and "not found" in missing.problems[0]
    bad = tmp_path / "bad.toml"
    bad.write_text("[[threat]\nid = 'T-X'\n")
    assert "not valid TOML" in load_register(bad).problems[0]
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    assert "unreadable" in load_register(binary).problems[0]


def test_the_real_register_is_valid() -> None:
    reg = load_register(REGISTER)
    assert reg.problems == ()
    assert {"T-SYBIL", "T-ECLIPSE", "T-MITM", "T-MALFORMED", "T-EXHAUST", "T-KEYFILE",
            "T-ENDPOINT", "T-FORGE"} <= set(reg.threats)
    assert reg.threats["T-KEYFILE"].status == "partial"


# ---------------------------------------------------------------------------------------------
# Judging a run


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


# ---------------------------------------------------------------------------------------------
# Whole runs of a fake suite

FAKE_REGISTER = """
[[threat]]
id = "T-A"
title = "a"
component = "c"
adversary = "x"
stride = ["T"]
status = "mitigated"
mitigation = "m"
checks = ["tests/test_a.py::test_a_check"]
references = []

[[threat]]
id = "T-B"
title = "b"
component = "c"
adversary = "x"
stride = ["D"]
status = "mitigated"
mitigation = "m"
checks = []
references = []
"""

UNCHECKED_THREAT = """
[[threat]]
id = "T-C"
title = "c"
component = "c"
adversary = "x"
stride = ["E"]
status = "mitigated"
mitigation = "m"
checks = []
references = []
"""

FAKE_TESTS = """
import pytest

def test_a_check():
    assert {a_ok}

@pytest.mark.threat("T-B")
def test_b_check():
    assert True

def test_unrelated():
    assert True
"""


def make_suite(pytester: pytest.Pytester, *, a_ok: bool = True, register: str = FAKE_REGISTER,
               extra: str = "") -> None:
    pytester.makefile(".toml", **{"threat-model/threats": register})
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    tests = pytester.path / "tests"
    tests.mkdir(exist_ok=True)
    (tests / "test_a.py").write_text(FAKE_TESTS.format(a_ok=a_ok) + textwrap.dedent(extra))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "anonmail_threats", *args)


def test_run_passes_when_every_check_passes(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    result = run(pytester)
    result.assert_outcomes(passed=3)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["threat model: 2 threats, 2 checks passed"])


def test_run_fails_when_a_mitigated_threats_check_fails(pytester: pytest.Pytester) -> None:
    make_suite(pytester, a_ok=False)
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*threat model*",
        "  - T-A: check tests/test_a.py::test_a_check failed",
        "threat model: FAILED, 1 problem; 2 threats, 1/2 checks passed",
    ])


def test_run_fails_when_all_tests_pass_but_a_threat_is_unchecked(
        pytester: pytest.Pytester) -> None:
    make_suite(pytester, register=FAKE_REGISTER + UNCHECKED_THREAT)
    result = run(pytester)
    result.assert_outcomes(passed=3)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*T-C: status is mitigated but it has no check*"])


def test_run_fails_on_unknown_mark_even_in_a_subset(pytester: pytest.Pytester) -> None:
    make_suite(pytester, extra="""
        @pytest.mark.threat("T-NOPE")
        def test_bad_mark():
            assert True
    """)
    for args in ((), ("-k", "bad_mark")):
        result = run(pytester, *args)
        assert result.ret == 1, args
        result.stdout.fnmatch_lines(["*test_bad_mark: marks unknown threat 'T-NOPE'*"])


def test_subset_runs_do_not_judge_coverage(pytester: pytest.Pytester) -> None:
    make_suite(pytester, a_ok=False)
    for args in (("-k", "unrelated"), ("tests/test_a.py::test_unrelated",), ("-m", "threat")):
        result = run(pytester, *args)
        assert result.ret == 0, (args, result.stdout.str())


def test_enforce_judges_a_subset_and_off_judges_nothing(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    enforced = run(pytester, "--threats=enforce", "-k", "unrelated")
    assert enforced.ret == 1
    enforced.stdout.fnmatch_lines(["*T-A: check tests/test_a.py::test_a_check did not run*"])
    make_suite(pytester, a_ok=True, register="not toml [")
    assert run(pytester).ret == 1
    off = run(pytester, "--threats=off")
    assert off.ret == 0
    assert "threat model" not in off.stdout.str()


def test_malformed_register_fails_the_run(pytester: pytest.Pytester) -> None:
    make_suite(pytester, register=FAKE_REGISTER.replace('status = "mitigated"',
                                                        'status = "done"', 1))
    result = run(pytester)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*T-A: unknown status 'done'*"])


def test_skipped_and_slow_checks(pytester: pytest.Pytester) -> None:
    make_suite(pytester, extra="""
        @pytest.mark.slow
        @pytest.mark.threat("T-A")
        def test_slow_a():
            assert False
    """)
    # without --runslow the slow check is skipped and not judged; T-A has its ordinary check
    assert run(pytester).ret == 0
    # with --runslow it runs, fails, and fails the run as a test and as a check
    result = run(pytester, "--runslow")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*T-A: check tests/test_a.py::test_slow_a failed*"])


def test_a_skipped_check_fails_the_run(pytester: pytest.Pytester) -> None:
    make_suite(pytester, extra="""
        @pytest.mark.threat("T-B")
        @pytest.mark.skip(reason="later")
        def test_b_later():
            pass
    """)
    result = run(pytester)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*T-B: check tests/test_a.py::test_b_later skipped*"])


def test_a_renamed_check_is_missing(pytester: pytest.Pytester) -> None:
    make_suite(pytester, register=FAKE_REGISTER.replace("test_a_check", "test_a_renamed"))
    result = run(pytester)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*T-A: check tests/test_a.py::test_a_renamed was not collected*"])


def test_collect_only_reports_structure(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    result = run(pytester, "--collect-only")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["threat model: 2 threats, 2 checks collected (none ran)"])
