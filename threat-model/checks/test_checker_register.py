"""Tests of the threat register's format (threat-model/threat_register.py): valid and invalid
`[[threat]]` tables case by case, register-level problems, failures to load, and the real
register.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from threat_register import load_register, parse_register, parse_threat
from threatcases import judge, threat

REGISTER = Path(__file__).resolve().parents[1] / "threats.toml"


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
