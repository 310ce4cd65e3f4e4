"""Builders for the threat checker's tests (threat-model/checks/test_checker_*.py): a valid
`[[threat]]` table with fields overridden (or removed with None), a register that must parse
without problems, and the problems of judging a run given as plain lists.
"""

from __future__ import annotations

from typing import Any

from threat_judge import RunFacts, Scope, ThreatMark, evaluate
from threat_register import Register, parse_register


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
