"""Real `anonmail node` processes on 127.0.0.1: join, agree with the oracle, survive a kill.

These are the slowest non-scenario tests (process start-up dominates); each wait is bounded by an
absolute deadline so nothing can hang the suite.
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
from pathlib import Path
from typing import Any

import pytest

from anonmail import control, ids, wire
from anonmail.dht.messages import ContactList
from anonmail.paths import Home
from anonmail.rng import SeededRng

N_NODES = 6
DEADLINE = 60.0  # seconds for any one wait


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
    return {**os.environ, "ANONMAIL_PASSPHRASE": "correct horse battery staple",
            "PYTHONUNBUFFERED": "1"}


def anonmail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anonmail.cli", *args], env=env(),
                          capture_output=True, text=True, timeout=DEADLINE, check=False)


def start(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "anonmail.cli", "node", "--home", str(home),
                             "--quiet"], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(pred: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def status(home: Path) -> dict[str, Any]:
    return control.call(Home(home).control, {"op": "status"}, timeout=DEADLINE)


def saved_contacts(home: Path) -> int:
    try:
        data = Home(home).contacts.read_bytes()
    except FileNotFoundError:
        return 0
    return len(wire.decode(data, ContactList, max_size=1 << 20).certs)


def joined(home: Path) -> bool:
    return int(status(home)["contacts"]) >= N_NODES - 1


def running(home: Path) -> bool:
    try:
        status(home)
        return True
    except Exception:
        return False


@pytest.fixture
def testnet(tmp_path: Path) -> Iterator[tuple[list[Path], list[subprocess.Popen[str]]]]:
    ports = free_ports(N_NODES)
    homes = [tmp_path / f"n{i}" for i in range(N_NODES)]
    for home, port in zip(homes, ports, strict=True):
        r = anonmail("node", "--init", "--home", str(home), "--testnet", "--puzzle-bits", "4",
                     "--listen", f"127.0.0.1:{port}", "--bootstrap", f"127.0.0.1:{ports[0]}",
                     "--fast-kdf")
        assert r.returncode == 0, r.stderr
    procs: list[subprocess.Popen[str]] = []
    try:
        for home in homes:
            procs.append(start(home))
            wait_for(functools.partial(running, home), f"{home.name} to start")
        yield homes, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


def test_init_refuses_to_overwrite_identity(tmp_path: Path) -> None:
    args = ("node", "--init", "--home", str(tmp_path / "n"), "--testnet", "--listen",
            "127.0.0.1:7999", "--fast-kdf")
    assert anonmail(*args).returncode == 0
    before = (tmp_path / "n" / "node.key").read_bytes()
    r = anonmail(*args)
    assert r.returncode == 2
    assert "refusing to overwrite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "n" / "node.key").read_bytes() == before
    assert (tmp_path / "n" / "node.key").stat().st_mode & 0o777 == 0o600


def test_wrong_passphrase_is_one_clear_line(tmp_path: Path) -> None:
    home = tmp_path / "n"
    assert anonmail("node", "--init", "--home", str(home), "--testnet", "--listen",
                    "127.0.0.1:7999", "--fast-kdf").returncode == 0
    r = subprocess.run([sys.executable, "-m", "anonmail.cli", "node", "--home", str(home)],
                       env={**env(), "ANONMAIL_PASSPHRASE": "wrong"}, capture_output=True,
                       text=True, timeout=DEADLINE, check=False)
    assert r.returncode == 2
    assert r.stderr.strip() == ("anonmail: wrong passphrase for the key file "
                                "(or the file was altered)")


def test_processes_agree_with_oracle_and_survive_restart(
    testnet: tuple[list[Path], list[subprocess.Popen[str]]],
) -> None:
    homes, procs = testnet
    ids_by_home = {h: bytes.fromhex(str(status(h)["node_id"])) for h in homes}
    everyone = list(ids_by_home.values())
    for h in homes:  # everyone learns everyone (6 nodes, k = 20)
        wait_for(functools.partial(joined, h), f"{h.name} to join")

    rng = SeededRng(7)
    k = 3
    for _ in range(8):
        key = rng.bytes(32)
        oracle = sorted(everyone, key=lambda n: ids.distance(n, key))[:k]
        for h in homes:
            reply = control.call(Home(h).control, {"op": "lookup", "key": key.hex(), "k": k},
                                 timeout=DEADLINE)
            got = [bytes.fromhex(x) for x in reply["nodes"]]
            assert got == oracle, f"lookup from {h.name} disagrees with the oracle"

    # SIGKILL one node (no chance to save on exit) and restart it: same id, table restored.
    # The node saves its table within SAVE_CHECK_INTERVAL of a change; wait for that first.
    victim = homes[3]
    wait_for(lambda: saved_contacts(victim) >= N_NODES - 1, "the routing table to be saved")
    procs[3].kill()
    procs[3].wait(timeout=DEADLINE)
    if procs[3].stdout is not None:
        procs[3].stdout.close()
    procs[3] = start(victim)
    wait_for(lambda: running(victim), "the restarted node")
    st = status(victim)
    assert bytes.fromhex(str(st["node_id"])) == ids_by_home[victim]
    assert int(str(st["restored"])) >= N_NODES - 1
    key = rng.bytes(32)
    oracle = sorted(everyone, key=lambda n: ids.distance(n, key))[:k]
    reply = control.call(Home(victim).control, {"op": "lookup", "key": key.hex(), "k": k},
                         timeout=DEADLINE)
    assert [bytes.fromhex(x) for x in reply["nodes"]] == oracle

    # A clean stop through SIGTERM exits 0 and says so.
    procs[1].send_signal(signal.SIGTERM)
    out, _ = procs[1].communicate(timeout=DEADLINE)
    assert procs[1].returncode == 0
    assert "node stopped" in out
