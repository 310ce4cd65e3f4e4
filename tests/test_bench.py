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
    assert main(["bench", "mail", "--messages", "3", "--size", "2000", "--nodes", "3",
                 "--sim-nodes", "40"]) == 0
    out = capsys.readouterr().out
    assert "delivered            3/3 byte-identical" in out
    assert "x the floor" in out
    assert "simulated: 40 nodes, 3 messages" in out
    assert "upkeep per node-hour" in out
    if "aiosmtpd is not installed" not in out:
        assert re.search(r"anonmail deliveries/s over SMTP's: \d+\.\d+x", out)


def test_bench_decode_prints_a_verdict(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from anonmail.experiments.bench import decode
    monkeypatch.setattr(decode, "SIZES", (4096,))
    monkeypatch.setattr(decode, "MIN_SECONDS", 0.001)
    monkeypatch.setattr(decode, "SCREEN_SECONDS", 0.0002)
    assert main(["bench", "decode"]) in (0, 1)  # the verdict is a measurement, not a test
    out = capsys.readouterr().out
    assert "worst hostile / densest honest" in out and "empty maps" in out


def test_bench_flood_refuses_a_bad_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "flood", "--seconds", "0"]) != 0
    assert "--seconds must be 1-30" in capsys.readouterr().err
