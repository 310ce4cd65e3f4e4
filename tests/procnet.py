"""Helpers for tests that run real `anonmail` processes on 127.0.0.1.

Every wait is bounded by an absolute deadline, so a broken node fails the test instead of
hanging the suite.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anonmail import control
from anonmail.paths import Home

DEADLINE = 60.0  # seconds for any one wait
PASSPHRASE = "correct horse battery staple"
PUZZLE_BITS = "4"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def env() -> dict[str, str]:
    return {**os.environ, "ANONMAIL_PASSPHRASE": PASSPHRASE, "PYTHONUNBUFFERED": "1"}


def anonmail(*args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anonmail.cli", *args], env=env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def wait_for(pred: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def status(home: Path) -> dict[str, Any]:
    return control.call(Home(home).control, {"op": "status"}, timeout=DEADLINE)


def running(home: Path) -> bool:
    try:
        status(home)
        return True
    except Exception:
        return False


def knows(home: Path, n: int) -> bool:
    return int(status(home)["contacts"]) >= n


class LocalNet:
    """N node processes on 127.0.0.1, all bootstrapping through the first."""

    def __init__(self, root: Path, n: int) -> None:
        self.ports = free_ports(n)
        self.homes = [root / f"node{i}" for i in range(n)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        for home, port in zip(self.homes, self.ports, strict=True):
            r = anonmail("node", "--init", "--home", str(home), "--testnet", "--puzzle-bits",
                         PUZZLE_BITS, "--listen", f"127.0.0.1:{port}", "--bootstrap",
                         self.bootstrap, "--fast-kdf")
            assert r.returncode == 0, r.stderr

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def output(self, i: int) -> Path:
        """Everything node i printed and logged (at DEBUG level), across restarts."""
        return self.homes[i] / "node.out"

    def start(self, i: int) -> None:
        with self.output(i).open("ab") as out:  # a file, not a pipe: a pipe can fill and block
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "anonmail.cli", "node", "--home", str(self.homes[i]),
                 "--verbose"], env=env(), stdout=out, stderr=subprocess.STDOUT)
        wait_for(functools.partial(running, self.homes[i]), f"node {i} to start")

    def start_all(self) -> None:
        for i in range(len(self.homes)):
            self.start(i)
        for home in self.homes:
            wait_for(functools.partial(knows, home, len(self.homes) - 1), f"{home.name} to join")

    def kill(self, i: int) -> None:
        p = self.procs[i]
        assert p is not None
        p.kill()
        self._reap(p)
        self.procs[i] = None

    def stop(self, i: int) -> str:
        """SIGTERM node i; returns what it printed."""
        p = self.procs[i]
        assert p is not None
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=DEADLINE)
        out = self.output(i).read_text(errors="replace")
        assert p.returncode == 0, out
        self.procs[i] = None
        return out

    def close(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            if p is not None:
                self._reap(p)

    @staticmethod
    def _reap(p: subprocess.Popen[bytes]) -> None:
        try:
            p.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def user(t: LocalNet, root: Path, name: str) -> tuple[Path, str]:
    """A user's home under `root` (a client of `t`, no node of its own) and its address."""
    home = root / name
    r = anonmail("init", "--home", str(home), "--name", name, "--testnet", "--puzzle-bits",
                 PUZZLE_BITS, "--bootstrap", t.bootstrap, "--fast-kdf", timeout=120)
    assert r.returncode == 0, r.stderr
    return home, anonmail("address", "--home", str(home)).stdout.splitlines()[0]


@contextmanager
def local_net(root: Path, n: int) -> Iterator[LocalNet]:
    """N started, joined node processes; all stopped on exit, whatever happened."""
    t = LocalNet(root, n)
    try:
        t.start_all()
        yield t
    finally:
        t.close()
