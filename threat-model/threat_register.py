"""The threat register's format (`threat-model/threats.toml`, docs/threat-model-format.md).

`parse_register` validates a decoded TOML document of `[[threat]]` tables into `Threat`s;
`load_register` reads the file first. Every failure (bad TOML, a missing, mistyped or unknown
field, an unknown status, a duplicate id, an unknown STRIDE / LINDDUN category, a `partial` or
`accepted` threat without `residual`, a `page` that does not exist) becomes a problem in the
returned `Register`, never an exception. Pure functions over plain data: the pytest plugin
(anonmail_threats.py) and the judgement of a run (threat_judge.py) build on them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

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
