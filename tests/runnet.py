"""Helpers for tests that run `anonmail run` (node + agent + gateway) for users on a local
testnet of real processes (tests/procnet.py). Every wait is bounded."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from procnet import (
    DEADLINE,
    PASSPHRASE,
    PUZZLE_BITS,
    LocalNet,
    anonmail,
    env,
    free_ports,
    wait_for,
)

from anonmail import control
from anonmail.paths import Home


class RunUser:
    """One user's home: its own node key, an address, gateway ports of its own."""

    def __init__(self, net: LocalNet, root: Path, name: str, *, check_interval: int = 10) -> None:
        self.home = root / name
        self.name = name
        node_port, self.smtp, self.pop3, self.imap = free_ports(4)
        r = anonmail("node", "--init", "--home", str(self.home), "--testnet", "--puzzle-bits",
                     PUZZLE_BITS, "--listen", f"127.0.0.1:{node_port}", "--bootstrap",
                     net.bootstrap, "--fast-kdf")
        assert r.returncode == 0, r.stderr
        with (self.home / "config.toml").open("a") as f:
            f.write(f'\n[agent]\ncheck_interval = {check_interval}\n[gateway]\n'
                    f'smtp = "127.0.0.1:{self.smtp}"\npop3 = "127.0.0.1:{self.pop3}"\n'
                    f'imap = "127.0.0.1:{self.imap}"\n')
        r = anonmail("init", "--home", str(self.home), "--name", name, "--fast-kdf", "--offline")
        assert r.returncode == 0, r.stderr
        self.address = r.stdout.split()[2]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str:
        return (self.home / "gateway-password").read_text().strip()

    @property
    def output(self) -> Path:
        return self.home / "run.out"

    def start(self) -> None:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "anonmail.cli", "run", "--home", str(self.home)],
                env=env(), stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._started, f"{self.name}'s agent to start")

    def _started(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:  # it exited: say why now
            raise AssertionError(f"{self.name}'s anonmail run exited: "
                                 f"{self.output.read_text(errors='replace')[-2000:]}")
        return self.serving()

    def serving(self) -> bool:
        try:
            return "agent" in self.status()
        except Exception:
            return False

    def status(self) -> dict[str, Any]:
        return control.call(Home(self.home).control, {"op": "status"}, timeout=DEADLINE)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=DEADLINE)
        self.proc = None

    def stop(self) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=DEADLINE)
        self.proc = None
        return code, self.output.read_text(errors="replace")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cli(*args: str, timeout: float = DEADLINE * 3,
        passphrase: bool = False) -> subprocess.CompletedProcess[str]:
    """A one-shot command; without `passphrase` it cannot open a key (it must ask the agent)."""
    e = {k: v for k, v in env().items() if k != "ANONMAIL_PASSPHRASE"}
    if passphrase:
        e["ANONMAIL_PASSPHRASE"] = PASSPHRASE
    return subprocess.run([sys.executable, "-m", "anonmail.cli", *args], env=e,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


