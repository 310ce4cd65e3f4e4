"""The threat-model checker: a pytest plugin over `threat-model/threats.toml` (DESIGN.md §10).

A threat's checks are the pytest node ids in its `checks` list together with every test carrying
`@pytest.mark.threat("ID")`. After a full run the run fails, listing every problem, when

* the register is malformed (bad TOML, a missing or mistyped field, an unknown status, a
  duplicate id, an unknown STRIDE / LINDDUN category);
* a test marks a threat id the register does not have;
* a `mitigated` threat has no check that runs by default (tests marked `slow` do not count);
* a listed check node id matches no collected test;
* a check was skipped, failed, errored, xfailed / xpassed, or did not run.

A *full run* is `pytest` with no explicit paths, node ids, `-k`, `-m`, `--lf`, `--sw`,
`--ignore` or deselection. A subset run only checks what is local to it (the register itself and
the marks on the tests it collected): running one file must not fail for unrelated threats.
`--threats=enforce|off|auto` (default auto) overrides the choice.

`--runslow` runs tests marked `@pytest.mark.slow`; without it they are skipped. A slow test may be
a check, but it never makes a mitigated threat count as checked (every mitigated threat needs a
check in the default run), and it is judged only when it runs (with `--runslow`).

The decision logic is pure functions over plain data: the register format in threat_register.py
(`parse_register`, `load_register`), the judgement of a run in threat_judge.py (`evaluate`,
`decide_scope`, ...); the pytest hooks here only gather the data and print the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from threat_judge import (
    Outcome,
    Report,
    RunFacts,
    ThreatMark,
    decide_scope,
    evaluate,
    merge_outcome,
    phase_outcome,
)
from threat_register import load_register

_SUBSET_OPTIONS = (
    ("keyword", "-k"),
    ("markexpr", "-m"),
    ("lf", "--lf"),
    ("stepwise", "--sw"),
    ("stepwise_skip", "--sw-skip"),
    ("ignore", "--ignore"),
    ("ignore_glob", "--ignore-glob"),
    ("deselect", "--deselect"),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("anonmail-threats", "anonmail threat model")
    group.addoption(
        "--threats", choices=("auto", "enforce", "off"), default="auto",
        help="judge the run against threat-model/threats.toml: enforce, off, or auto "
             "(enforce on a full run, only register and marks on a subset run)",
    )
    group.addoption("--runslow", action="store_true", default=False,
                    help="also run tests marked slow")
    parser.addini("threats_register", "path of the threat register, relative to the rootdir",
                  default="threat-model/threats.toml")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a large scenario; run with --runslow")
    config.addinivalue_line(
        "markers",
        "threat(id): this test is a check for the named threat in threat-model/threats.toml",
    )
    if hasattr(config, "workerinput"):  # an xdist worker: the controller judges
        return
    config.pluginmanager.register(ThreatPlugin(config), "anonmail-threats-state")


def subset_reasons(config: pytest.Config, deselected: int) -> list[str]:
    """Why this run is not a full run (empty when it is)."""
    reasons: list[str] = []
    root = config.rootpath.resolve()
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        explicit = [a for a in config.args
                    if Path(config.invocation_params.dir, a).resolve() != root]
        if explicit:
            reasons.append("explicit paths: " + " ".join(explicit))
    elif (config.args_source == pytest.Config.ArgsSource.INVOCATION_DIR
          and config.invocation_params.dir.resolve() != root):
        reasons.append(f"run from {config.invocation_params.dir}")
    for name, flag in _SUBSET_OPTIONS:
        if getattr(config.option, name, None):
            reasons.append(flag)
    if deselected:
        reasons.append(f"{deselected} deselected")
    return reasons


class ThreatPlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.collected: list[str] = []
        self.marks: dict[str, list[ThreatMark]] = {}
        self.slow: set[str] = set()
        self.deselected: list[pytest.Item] = []
        self.outcomes: dict[str, Outcome] = {}
        self.report: Report | None = None

    @property
    def runslow(self) -> bool:
        return bool(self.config.getoption("runslow"))

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if self.runslow:
            return
        skip = pytest.mark.skip(reason="slow: run with --runslow")
        for item in items:
            if item.get_closest_marker("slow") is not None:
                item.add_marker(skip)

    def pytest_deselected(self, items: Sequence[pytest.Item]) -> None:
        self.deselected.extend(items)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in [*session.items, *self.deselected]:
            self._record(item)

    def _record(self, item: pytest.Item) -> None:
        self.collected.append(item.nodeid)
        marks = [ThreatMark(tuple(m.args), tuple(m.kwargs)) for m in item.iter_markers("threat")]
        if marks:
            self.marks[item.nodeid] = marks
        if item.get_closest_marker("slow") is not None:
            self.slow.add(item.nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        new = phase_outcome(report.when or "call", report.outcome, hasattr(report, "wasxfail"))
        self.outcomes[report.nodeid] = merge_outcome(self.outcomes.get(report.nodeid), new)

    def judge(self) -> Report:
        scope = decide_scope(str(self.config.getoption("threats")),
                             subset_reasons(self.config, len(self.deselected)))
        if scope == "off":
            return Report("off", (), 0, 0, 0)
        register = load_register(self.config.rootpath / str(self.config.getini("threats_register")))
        facts = RunFacts(
            collected=tuple(self.collected),
            marks=self.marks,
            slow=frozenset(self.slow),
            outcomes=None if self.config.option.collectonly else self.outcomes,
            runslow=self.runslow,
        )
        return evaluate(register, facts, scope)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED,
                              pytest.ExitCode.NO_TESTS_COLLECTED):
            return  # interrupted, usage or internal error: nothing sensible to judge
        self.report = self.judge()
        if not self.report.ok and session.exitstatus in (pytest.ExitCode.OK,
                                                         pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        report = self.report
        if report is None or report.scope == "off":
            return
        if report.scope == "local" and report.ok and self.config.get_verbosity() < 1:
            return
        tr = terminalreporter
        if report.problems:
            tr.section("threat model", sep="=", red=True, bold=True)
            for problem in report.problems:
                tr.write_line(f"  - {problem}")
        tr.write_line(report.summary(), red=not report.ok, green=report.ok)
