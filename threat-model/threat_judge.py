"""Judging a pytest run against the threat register: pure functions over plain data (the pytest
plugin, anonmail_threats.py, gathers the data and prints the report).

A threat's checks are the node ids in its `checks` list together with every test marked
`@pytest.mark.threat("ID")`. `evaluate` reports malformed or unknown marks, a `mitigated` threat
with no check that runs by default (slow tests do not count), a listed check that matches no
collected test, and a check that was skipped, failed, errored, xfailed / xpassed or did not run;
`decide_scope` chooses between judging all of that (a full run), only the register and the marks
(a subset run), or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Literal

from threat_register import Register

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
