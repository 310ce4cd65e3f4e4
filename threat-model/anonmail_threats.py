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

The decision logic is pure functions (`parse_register`, `evaluate`, `decide_scope`, ...) over plain
data; the pytest hooks only gather the data and print the report.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import pytest

# ---------------------------------------------------------------------------------------------
# The register

STATUSES = ("mitigated", "partial", "accepted")
REQUIRED_STRINGS = ("id", "title", "component", "adversary", "status", "mitigation")
REQUIRED_LISTS = ("checks", "references")
CATEGORY_LISTS = ("stride", "linddun")
OPTIONAL_STRINGS = ("residual", "page")
KNOWN_KEYS = frozenset(REQUIRED_STRINGS + REQUIRED_LISTS + CATEGORY_LISTS + OPTIONAL_STRINGS)
ID_PATTERN = re.compile(r"T-[A-Z0-9]+(?:-[A-Z0-9]+)*")

STRIDE = {
    "S": "spoofing",
    "T": "tampering",
    "R": "repudiation",
    "I": "information disclosure",
    "D": "denial of service",
    "E": "elevation of privilege",
}
LINDDUN = frozenset({
    "linking",
    "identifying",
    "non-repudiation",
    "detecting",
    "data disclosure",
    "unawareness",
    "unintervenability",
    "unawareness & unintervenability",
    "non-compliance",
})

Status = Literal["mitigated", "partial", "accepted"]


@dataclass(frozen=True)
class Threat:
    id: str
    title: str
    component: str
    adversary: str
    status: Status
    mitigation: str
    checks: tuple[str, ...]
    references: tuple[str, ...]
    stride: tuple[str, ...] = ()
    linddun: tuple[str, ...] = ()
    residual: str = ""
    page: str = ""


@dataclass(frozen=True)
class Register:
    """The parsed register. `known_ids` also holds ids of entries that failed validation, so a
    test marking such a threat is not reported a second time as naming an unknown id."""

    threats: Mapping[str, Threat]
    problems: tuple[str, ...] = ()
    known_ids: frozenset[str] = frozenset()


def _stride_ok(value: str) -> bool:
    v = value.strip()
    return v.upper() in STRIDE or v.lower() in STRIDE.values()


def _linddun_ok(value: str) -> bool:
    return value.strip().lower() in LINDDUN


def parse_threat(entry: object, where: str, base: Path | None = None) -> tuple[Threat | None,
                                                                              list[str]]:
    """Validate one `[[threat]]` table. Returns the threat (None if invalid) and the problems.

    `base` is the register's directory, used to check that an optional `page` exists."""
    if not isinstance(entry, dict):
        return None, [f"{where}: a threat must be a table"]
    label = entry.get("id") if isinstance(entry.get("id"), str) else where
    problems: list[str] = []
    for key in sorted(set(entry) - KNOWN_KEYS):
        problems.append(f"{label}: unknown field {key!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
    for key in REQUIRED_STRINGS:
        value = entry.get(key)
        if value is None:
            problems.append(f"{label}: missing required field {key!r}")
        elif not isinstance(value, str) or not value.strip():
            problems.append(f"{label}: {key!r} must be a non-empty string")
    for key in OPTIONAL_STRINGS:
        if key in entry and not isinstance(entry[key], str):
            problems.append(f"{label}: {key!r} must be a string")
    lists: dict[str, tuple[str, ...]] = {}
    bad_lists: set[str] = set()
    for key in REQUIRED_LISTS + CATEGORY_LISTS:
        if key not in entry:
            if key in REQUIRED_LISTS:
                problems.append(f"{label}: missing required field {key!r}")
            continue
        value = entry[key]
        if not isinstance(value, list) or not all(
            isinstance(v, str) and v.strip() for v in value
        ):
            problems.append(f"{label}: {key!r} must be a list of non-empty strings")
            bad_lists.add(key)
            continue
        lists[key] = tuple(v.strip() for v in value)

    tid = entry.get("id")
    if isinstance(tid, str) and not ID_PATTERN.fullmatch(tid):
        problems.append(f"{tid!r}: ids look like T-NAME (capitals, digits and dashes)")
    status = entry.get("status")
    if isinstance(status, str) and status not in STATUSES:
        problems.append(f"{label}: unknown status {status!r} (one of {', '.join(STATUSES)})")
    if not lists.get("stride") and not lists.get("linddun") and not bad_lists & set(
        CATEGORY_LISTS
    ):
        problems.append(f"{label}: give at least one STRIDE or LINDDUN category")
    for v in lists.get("stride", ()):
        if not _stride_ok(v):
            problems.append(f"{label}: {v!r} is not a STRIDE category "
                            f"(one of {', '.join(STRIDE)} or their names)")
    for v in lists.get("linddun", ()):
        if not _linddun_ok(v):
            problems.append(f"{label}: {v!r} is not a LINDDUN category "
                            f"(one of {', '.join(sorted(LINDDUN))})")
    for check in lists.get("checks", ()):
        if not check.split("::")[0].endswith(".py"):
            problems.append(f"{label}: check {check!r} is not a pytest node id "
                            "(path/to/test_file.py::test_name)")
    if isinstance(status, str) and status in ("partial", "accepted") and not (
        isinstance(entry.get("residual"), str) and entry["residual"].strip()
    ):
        problems.append(f"{label}: a {status} threat must say what is left open in 'residual'")
    page = entry.get("page")
    if isinstance(page, str) and page and base is not None and not (base / page).is_file():
        problems.append(f"{label}: page {page!r} does not exist next to the register")
    if problems:
        return None, problems
    assert isinstance(tid, str) and isinstance(status, str)
    return Threat(
        id=tid,
        title=str(entry["title"]).strip(),
        component=str(entry["component"]).strip(),
        adversary=str(entry["adversary"]).strip(),
        status=cast(Status, status),  # checked against STATUSES above
        mitigation=str(entry["mitigation"]).strip(),
        checks=lists["checks"],
        references=lists["references"],
        stride=lists.get("stride", ()),
        linddun=lists.get("linddun", ()),
        residual=str(entry.get("residual", "")).strip(),
        page=str(entry.get("page", "")).strip(),
    ), []


def parse_register(doc: Mapping[str, object], source: str = "threats.toml",
                   base: Path | None = None) -> Register:
    """Validate a decoded TOML document: `[[threat]]` tables and nothing else."""
    problems: list[str] = []
    for key in sorted(set(doc) - {"threat"}):
        problems.append(f"{source}: unknown top-level key {key!r} (write [[threat]] tables)")
    entries = doc.get("threat", [])
    if not isinstance(entries, list):
        problems.append(f"{source}: 'threat' must be an array of tables ([[threat]])")
        entries = []
    threats: dict[str, Threat] = {}
    known: set[str] = set()
    for i, entry in enumerate(entries):
        tid = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(tid, str):
            if tid in known:
                problems.append(f"{tid}: duplicate threat id")
                continue
            known.add(tid)
        threat, errs = parse_threat(entry, f"{source}: threat #{i + 1}", base)
        problems.extend(errs)
        if threat is not None:
            threats[threat.id] = threat
    return Register(threats, tuple(problems), frozenset(known))


def load_register(path: Path) -> Register:
    """Read and validate the register; every failure becomes a problem, never an exception."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Register({}, (f"threat register {path} not found",))
    except (OSError, UnicodeDecodeError) as e:
        return Register({}, (f"threat register {path} unreadable: {e}",))
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return Register({}, (f"threat register {path.name} is not valid TOML: {e}",))
    return parse_register(doc, path.name, path.parent)


# ---------------------------------------------------------------------------------------------
# A run, and the judgement

Outcome = str  # passed | failed | error | skipped | xfailed | xpassed
_SEVERITY = {"passed": 0, "skipped": 1, "xfailed": 2, "xpassed": 2, "failed": 3, "error": 3}


def phase_outcome(when: str, outcome: str, wasxfail: bool) -> Outcome:
    """The outcome of one test phase (setup / call / teardown) as this checker names it."""
    if outcome == "failed":
        return "failed" if when == "call" else "error"
    if wasxfail:
        return "xfailed" if outcome == "skipped" else "xpassed"
    return outcome


def merge_outcome(previous: Outcome | None, new: Outcome) -> Outcome:
    """A test's outcome is its worst phase."""
    if previous is None:
        return new
    return new if _SEVERITY.get(new, 3) > _SEVERITY.get(previous, 3) else previous


@dataclass(frozen=True)
class ThreatMark:
    """One `@pytest.mark.threat(...)` on a test: its positional args and keyword names."""

    args: tuple[object, ...]
    kwargs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunFacts:
    """What a pytest run collected and how each test ended."""

    collected: Sequence[str]
    marks: Mapping[str, Sequence[ThreatMark]] = field(default_factory=dict)
    slow: Set[str] = frozenset()
    outcomes: Mapping[str, Outcome] | None = None  # None: collect-only, nothing ran
    runslow: bool = False


Scope = Literal["full", "local", "off"]


@dataclass(frozen=True)
class Report:
    scope: Scope
    problems: tuple[str, ...]
    threats: int
    checks: int
    passed: int
    ran: bool = True  # False for --collect-only: outcomes were not judged

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        t = f"{self.threats} threat{'s' if self.threats != 1 else ''}"
        if self.scope == "local":
            what = "subset run: register and marks checked, coverage not enforced"
            return f"threat model: {what}" + (f"; {len(self.problems)} problem(s)"
                                              if self.problems else "")
        c = f"{self.passed} check{'s' if self.passed != 1 else ''} passed"
        if not self.ran:
            c = f"{self.checks} check{'s' if self.checks != 1 else ''} collected (none ran)"
        elif self.checks != self.passed:
            c = f"{self.passed}/{self.checks} checks passed"
        if self.problems:
            n = len(self.problems)
            return f"threat model: FAILED, {n} problem{'s' if n != 1 else ''}; {t}, {c}"
        return f"threat model: {t}, {c}"


def matches(listed: str, nodeid: str) -> bool:
    """Whether a listed check covers a collected node id: the same test, a parametrized instance
    of it (`test_x` covers `test_x[a]`), or a test inside a listed file or class."""
    listed = listed.strip().replace("\\", "/")
    return nodeid == listed or nodeid.startswith((listed + "::", listed + "["))


def decide_scope(mode: str, subset_reasons: Sequence[str]) -> Scope:
    """`enforce` → full, `off` → off, `auto` → full unless the run selected a subset."""
    if mode == "enforce":
        return "full"
    if mode == "off":
        return "off"
    if mode != "auto":
        raise ValueError(f"--threats must be enforce, off or auto, not {mode!r}")
    return "local" if subset_reasons else "full"


def mark_problems(register: Register, facts: RunFacts) -> tuple[list[str], dict[str, set[str]]]:
    """Problems with `threat` marks, and the marked tests of each known threat. The instances
    of one parametrized test share their marks, so they are reported once, as `test_x[...]`."""
    problems: dict[str, None] = {}  # ordered set
    marked: dict[str, set[str]] = {}
    for nodeid in facts.collected:
        base = nodeid.split("[", 1)[0]
        shown = base + "[...]" if base != nodeid else nodeid
        for mark in facts.marks.get(nodeid, ()):
            if mark.kwargs or not mark.args:
                problems[f"{shown}: write the mark as @pytest.mark.threat(\"T-ID\", ...)"] = None
                continue
            for arg in mark.args:
                if not isinstance(arg, str):
                    problems[f"{shown}: threat ids are strings, not {arg!r}"] = None
                elif arg not in register.threats and arg not in register.known_ids:
                    problems[f"{shown}: marks unknown threat {arg!r} "
                             "(add it to threat-model/threats.toml)"] = None
                else:
                    marked.setdefault(arg, set()).add(nodeid)
    return list(problems), marked


def evaluate(register: Register, facts: RunFacts, scope: Scope) -> Report:
    """Judge a run against the register. Pure: the whole decision lives here."""
    if scope == "off":
        return Report("off", (), len(register.threats), 0, 0)
    problems = list(register.problems)
    mproblems, marked = mark_problems(register, facts)
    problems.extend(mproblems)
    if scope == "local":
        return Report("local", tuple(problems), len(register.threats), 0, 0)

    judged_all: dict[str, Outcome | None] = {}
    for threat in register.threats.values():
        items: set[str] = set(marked.get(threat.id, ()))
        missing = False
        for listed in threat.checks:
            hits = [n for n in facts.collected if matches(listed, n)]
            if not hits:
                missing = True
                problems.append(f"{threat.id}: check {listed} was not collected "
                                "(renamed, moved or deleted?)")
            items.update(hits)
        counting = [n for n in items if n not in facts.slow]
        if threat.status == "mitigated" and not counting and not missing:
            why = " (only slow tests, which do not count)" if items else ""
            problems.append(
                f"{threat.id}: status is mitigated but it has no check{why}; list node ids in "
                f"`checks` or mark tests @pytest.mark.threat(\"{threat.id}\")"
            )
        judged = [n for n in sorted(items) if facts.runslow or n not in facts.slow]
        for nodeid in judged:
            judged_all[nodeid] = None
        if facts.outcomes is None:
            continue
        for nodeid in judged:
            outcome = facts.outcomes.get(nodeid)
            judged_all[nodeid] = outcome
            if outcome is None:
                problems.append(f"{threat.id}: check {nodeid} did not run")
            elif outcome != "passed":
                problems.append(f"{threat.id}: check {nodeid} {outcome}")
    passed = sum(1 for o in judged_all.values() if o == "passed")
    return Report("full", tuple(problems), len(register.threats), len(judged_all), passed,
                  ran=facts.outcomes is not None)


# ---------------------------------------------------------------------------------------------
# pytest hooks

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

