"""Fixtures for tests over the CLI entry point: a fresh offline testnet home, and the network
jobs a command hands to the agent, captured instead of run (commands/jobs.py `run_job`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procnet import PASSPHRASE

from anonmail import cli
from anonmail.commands import jobs
from anonmail.commands.jobs import Output
from anonmail.mail.identity import AddressIdentity


def new_home(root: Path, name: str, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Path:
    """`root/name`: an address `name@….anon` made offline on a testnet (the passphrase from the
    environment, as scripts give it)."""
    monkeypatch.setenv("ANONMAIL_PASSPHRASE", PASSPHRASE)
    h = root / name
    assert cli.main(["init", "--home", str(h), "--name", name, "--testnet", "--offline",
                     "--fast-kdf"]) == 0
    capsys.readouterr()
    return h


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         capsys: pytest.CaptureFixture[str]) -> Path:
    """Bob's home (new_home)."""
    return new_home(tmp_path, "bob", monkeypatch, capsys)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The jobs commands hand to the agent, as (name, params); none runs. `identity given`
    (in params) says whether the command passed its unlocked identity along."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake(args: argparse.Namespace, name: str, params: dict[str, Any], *,
             identity: AddressIdentity | None = None) -> Output:
        calls.append((name, {**params, "identity given": identity is not None}))
        return Output()

    monkeypatch.setattr(jobs, "run_job", fake)
    yield calls


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`anonmail ARGV`: its exit code, standard output and standard error."""
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(result: tuple[int, str, str]) -> str:
    """The error of a refused command: exit 2, nothing on stdout, one line, no traceback."""
    code, out, err = result
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()
