"""`anonmail demo` — the README's first command — runs end to end and says what it showed."""

from __future__ import annotations

import pytest

from anonmail.cli import main


def test_demo_runs_and_its_lookup_matches_the_oracle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--nodes", "5", "--sim-nodes", "200"]) == 0
    out = capsys.readouterr().out
    assert "matches the oracle" in out
    assert "Part 2" in out
    assert "over 8 disjoint paths" in out
