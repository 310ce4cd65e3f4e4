"""Whole pytest runs of tiny fake suites under the threat checker plugin (loaded with
`-p anonmail_threats`, threat-model/anonmail_threats.py), through pytester: passing, failing,
unchecked, skipped, slow, renamed and unknown checks, subset runs, `--threats=enforce|off`, a
malformed register, and `--collect-only`.
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

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
