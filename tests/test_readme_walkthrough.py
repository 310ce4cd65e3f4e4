"""README's "A local network on one machine": the shell block, run as it is written.

Only two things change: every 127.0.0.1 port becomes a free one, and `cd "$(mktemp -d)"` goes
to the test's own directory. The block runs under `bash -e -o pipefail` (any failing command
fails the test), in a session of its own so that whatever it started is stopped if it fails or
hangs; `anonmail` on its PATH is this interpreter's. The quick test checks that every
`anonmail` command line in the block parses (no stale command or option).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from procnet import free_ports

from anonmail import cli

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## A local network on one machine"
MKTEMP = 'cd "$(mktemp -d)"'
DEADLINE = 600.0  # seconds for the whole walkthrough (about 40 on a 2-core machine)
_PORT = re.compile(r"127\.0\.0\.1:(\d+)")


def walkthrough() -> str:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, "the README lost its walkthrough section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert found is not None, "no ```sh block in the walkthrough section"
    return found.group(1)


def test_every_command_line_of_the_walkthrough_parses() -> None:
    script = walkthrough()
    assert MKTEMP in script and "kill $(jobs -p); wait" in script
    # a command substitution is an argument of the command around it, and a command itself
    # (a ">" after a space is a redirection, one in a word is part of "Name <address>")
    lines = re.findall(r"anonmail\s(?:[^|;&)>\n]|(?<! )>)*",
                       re.sub(r'"?\$\(', " ARG\n", script))
    assert len(lines) > 20
    for line in lines:
        argv = ["bob@example.org" if "$" in word else word
                for word in shlex.split(line.split("#", 1)[0])[1:]]
        try:
            args = cli.build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"the README's `{line.strip()}` does not parse")
        assert isinstance(args, argparse.Namespace) and getattr(args, "func", None), line


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = walkthrough()
    ports = sorted(set(_PORT.findall(script)))
    new = dict(zip(ports, map(str, free_ports(len(ports))), strict=True))
    script = _PORT.sub(lambda m: f"127.0.0.1:{new[m.group(1)]}", script)
    script = script.replace(MKTEMP, f"cd {shlex.quote(str(tmp_path))}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "anonmail").write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m anonmail.cli "$@"\n')
    (bin_dir / "anonmail").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANONMAIL_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1")
    p = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", script], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        out = ""
    finally:  # whatever happened, nothing the walkthrough started is left running
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
    assert p.returncode == 0, out[-4000:]
    for expected in ("is self-certifying", "asked for permission to write",
                     "may now write to you", "delivered to", "Subject: Lunch", "Lunch on Friday?",
                     "Subject: Re: Lunch", "Friday works.", "> Lunch on Friday?"):
        assert expected in out, (expected, out[-4000:])
    for name, last in (("n1", "node stopped"), ("n2", "node stopped"), ("n3", "node stopped"),
                       ("alice", "anonmail stopped"), ("bob", "anonmail stopped")):
        log = (tmp_path / f"{name}.log").read_text()
        assert log.rstrip().endswith(last) and "Traceback" not in log, (name, log[-2000:])
