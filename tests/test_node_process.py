"""Real `anonmail node` processes on 127.0.0.1: join, agree with the oracle, survive a kill.

Process start-up dominates these tests; every wait is bounded by an absolute deadline
(tests/procnet.py) so nothing can hang the suite.
"""

from __future__ import annotations

import functools
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from procnet import DEADLINE, LocalNet, anonmail, env, local_net, running, status, wait_for

from anonmail import control, wire
from anonmail.dht.messages import ContactList
from anonmail.paths import Home
from anonmail.records import ids
from anonmail.rng import SeededRng

N_NODES = 6


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNet]:
    with local_net(tmp_path, N_NODES) as t:
        yield t


def saved_contacts(home: Path) -> int:
    try:
        data = Home(home).contacts.read_bytes()
    except FileNotFoundError:
        return 0
    return len(wire.decode(data, ContactList, max_size=1 << 20).certs)


def lookup(home: Path, key: bytes, k: int) -> list[bytes]:
    reply = control.call(Home(home).control, {"op": "lookup", "key": key.hex(), "k": k},
                         timeout=DEADLINE)
    return [bytes.fromhex(x) for x in reply["nodes"]]


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


def test_processes_agree_with_oracle_and_survive_restart(net: LocalNet) -> None:
    homes = net.homes
    ids_by_home = {h: bytes.fromhex(str(status(h)["node_id"])) for h in homes}
    everyone = list(ids_by_home.values())

    rng = SeededRng(7)
    k = 3
    for _ in range(8):
        key = rng.bytes(32)
        oracle = sorted(everyone, key=lambda n: ids.distance(n, key))[:k]
        for h in homes:
            assert lookup(h, key, k) == oracle, f"lookup from {h.name} disagrees with the oracle"

    # SIGKILL one node (no chance to save on exit) and restart it: same id, table restored.
    # The node saves its table within SAVE_CHECK_INTERVAL of a change; wait for that first.
    victim = homes[3]
    wait_for(lambda: saved_contacts(victim) >= N_NODES - 1, "the routing table to be saved")
    net.kill(3)
    net.start(3)
    wait_for(functools.partial(running, victim), "the restarted node")
    st = status(victim)
    assert bytes.fromhex(str(st["node_id"])) == ids_by_home[victim]
    assert int(str(st["restored"])) >= N_NODES - 1
    key = rng.bytes(32)
    assert lookup(victim, key, k) == sorted(everyone, key=lambda n: ids.distance(n, key))[:k]

    # A clean stop through SIGTERM exits 0 and says so.
    assert "node stopped" in net.stop(1)


def test_control_socket_and_home_are_private(tmp_path: Path) -> None:
    net = LocalNet(tmp_path, 1)
    try:
        net.start(0)
        home = Home(net.homes[0])
        assert stat.S_ISSOCK(home.control.stat().st_mode)
        assert home.control.stat().st_mode & 0o777 == 0o600
        assert home.root.stat().st_mode & 0o777 == 0o700
        for secret in (home.node_key, home.store):
            assert secret.stat().st_mode & 0o777 == 0o600
    finally:
        net.close()
