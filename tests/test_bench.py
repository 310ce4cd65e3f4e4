"""The `anonmail bench` commands run and print their figures (sizes kept tiny here)."""

from __future__ import annotations

import re

import pytest

from anonmail.cli import main


def test_bench_rpc_prints_both_transports(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "rpc", "--seconds", "0.3", "--clients", "2"]) == 0
    out = capsys.readouterr().out
    assert "bench rpc: tcp" in out and "bench rpc: sim" in out
    assert re.search(r"FIND_NODE answered .* [1-9][\d,]* +1\.00", out)


def test_bench_mail_delivers_everything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "mail", "--messages", "3", "--size", "2000", "--nodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "delivered            3/3 byte-identical" in out
    assert "x the floor" in out
    assert "simulated: 200 nodes, 3 messages" in out
