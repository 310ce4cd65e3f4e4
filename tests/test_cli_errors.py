"""An operator's mistakes are one line, never a traceback (issue 7, items 8 and 9).

Each case runs the real `anonmail` command in a subprocess and asserts a non-zero exit status,
exactly one line on stderr with the advice, and no traceback; homes are set up in process
(`anonmail.cli.main`) to keep the tests quick. Refused configurations are refused before the
node binds, joins or writes anything, and nothing stored is changed. Ctrl-C stops a node as
SIGTERM does. Every wait is bounded (tests/procnet.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from procnet import DEADLINE, PASSPHRASE, LocalNet, anonmail, free_ports, status

from anonmail import cli, config, crypto, wire
from anonmail.commands.node_cmd import NODE_KEY_PURPOSE
from anonmail.crypto import keyfile
from anonmail.dht.messages import ContactList
from anonmail.paths import CONTROL_PATH_MAX, Home
from anonmail.records import ids

TRACEBACK_WORDS = ("Traceback", "ExceptionGroup", "KeyboardInterrupt")


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command printed (exit status 2, nothing else on stderr)."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert not any(word in r.stderr for word in TRACEBACK_WORDS), r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands use the passphrase the subprocesses get (procnet.env)."""
    monkeypatch.setenv("ANONMAIL_PASSPHRASE", PASSPHRASE)


def init_node(home: Path, port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["node", "--init", "--home", str(home), "--testnet", "--puzzle-bits", "4",
                     "--listen", f"127.0.0.1:{port}", "--fast-kdf"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("via", ["config", "option"])
def test_a_busy_port_is_one_line(tmp_path: Path, via: str, passphrase: None,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "n"
    with socket.socket() as other:  # someone else's server holds the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        busy = other.getsockname()[1]
        if via == "config":
            init_node(home, busy, capsys)
            r = anonmail("node", "--home", str(home))
        else:  # --listen overrides config.toml's listen
            init_node(home, free_ports(1)[0], capsys)
            r = anonmail("node", "--home", str(home), "--listen", f"127.0.0.1:{busy}")
    assert one_line(r) == (f"anonmail: port {busy} is in use on 127.0.0.1: choose another "
                           f"`listen` in {home / 'config.toml'} or --listen")
    assert not Home(home).contacts.exists() and not Home(home).control.exists()


def test_a_second_node_for_one_home_is_one_line(tmp_path: Path) -> None:
    net = LocalNet(tmp_path, 1)
    try:
        net.start(0)
        home, first = net.homes[0], net.procs[0]
        assert first is not None
        r = anonmail("node", "--home", str(home))
        assert one_line(r) == (f"anonmail: a node for this home is already running (pid "
                               f"{first.pid}, endpoint 127.0.0.1:{net.ports[0]}); stop it or "
                               "use another --home")
        assert first.poll() is None
        assert status(home)["pid"] == first.pid  # its control socket is still its own
        assert "node stopped" in net.stop(0)
    finally:
        net.close()


def test_a_home_too_long_for_the_control_socket_is_refused_up_front(
        tmp_path: Path, passphrase: None, capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "n"
    init_node(short, free_ports(1)[0], capsys)
    long = tmp_path / ("d" * max(1, CONTROL_PATH_MAX - len(str(tmp_path)))) / "n"
    size = len(os.fsencode(Home(long).control))
    assert size > CONTROL_PATH_MAX
    long.mkdir(parents=True)
    for name in ("config.toml", "node.key"):
        (long / name).write_bytes((short / name).read_bytes())
    advice = (f"anonmail: the home directory path is too long for the control socket ({size} "
              f"bytes, limit {CONTROL_PATH_MAX}): use a shorter --home or ANONMAIL_HOME")
    assert one_line(anonmail("node", "--home", str(long))) == advice
    assert sorted(p.name for p in long.iterdir()) == ["config.toml", "node.key"]  # not started
    assert one_line(anonmail("status", "--home", str(long))) == advice
    other = long.parent / "m"  # same length: --init refuses to create a home that cannot run
    assert one_line(anonmail("node", "--init", "--home", str(other), "--testnet",
                             "--fast-kdf")) == advice
    assert not other.exists()


NOT_UTF8 = b'[node]\nlisten = "\xff"\n'  # the bad byte is at offset 17


@pytest.mark.parametrize("command", ["node", "send"])
def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path, command: str, passphrase: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "n"
    if command == "node":
        init_node(home, free_ports(1)[0], capsys)
        argv = ["node", "--home", str(home)]
    else:
        assert cli.main(["init", "--home", str(home), "--offline", "--testnet",
                         "--fast-kdf"]) == 0
        capsys.readouterr()
        (tmp_path / "body").write_text("hello\n")
        argv = ["send", "--home", str(home), "--to", "bob@example.org", str(tmp_path / "body")]
    (home / "config.toml").write_bytes(NOT_UTF8)
    assert one_line(anonmail(*argv)) == (f"anonmail: {home / 'config.toml'} is not UTF-8 text "
                                         "(byte 17): fix or recreate it")
    assert (home / "config.toml").read_bytes() == NOT_UTF8


def test_a_main_network_node_needs_an_explicit_listen(tmp_path: Path) -> None:
    home = tmp_path / "n"
    home.mkdir()
    (home / "config.toml").write_text("")  # an empty config: the main network
    r = anonmail("node", "--home", str(home))
    assert one_line(r) == ('anonmail: a main-network node needs a listen address: set listen = '
                           f'"HOST:PORT" under [node] in {home / "config.toml"}, or pass '
                           "--listen HOST:PORT")
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]
    # --listen on the command line is enough (the next check is the missing node key) ...
    r = anonmail("node", "--home", str(home), "--listen", "0.0.0.0:7600")
    assert "no node key" in one_line(r)
    # ... and so is listen in config.toml; `node --init` without --listen leaves it unset.
    assert config.parse('[node]\nlisten = "0.0.0.0:7600"\n').listen_set
    assert not config.parse(config.template(None)).listen_set
    assert config.parse(config.template("0.0.0.0:7600", network="test")).listen_set


def test_a_node_key_that_misses_the_puzzle_is_refused(tmp_path: Path, passphrase: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "n"
    init_node(home, free_ports(1)[0], capsys)
    key = crypto.SigningKey(keyfile.open_sealed((home / "node.key").read_bytes(), PASSPHRASE,
                                                NODE_KEY_PURPOSE))
    solved = ids.puzzle_bits_of_key(key.public)  # at least 4
    cfg = (home / "config.toml").read_text()
    (home / "config.toml").write_text(cfg.replace("puzzle_bits = 4",
                                                  f"puzzle_bits = {solved + 1}"))
    before = (home / "node.key").read_bytes()
    assert one_line(anonmail("node", "--home", str(home))) == (
        f"anonmail: node.key's id solves a {solved}-bit puzzle; this network asks "
        f"{solved + 1} bits: run `anonmail node --init` in a new home")
    assert (home / "node.key").read_bytes() == before
    assert not Home(home).contacts.exists()


@contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Start children with SIGINT's default disposition, as a terminal's Ctrl-C finds a
    foreground command, even when this test run inherited SIGINT ignored (a shell's background
    job): a node started with SIGINT ignored keeps ignoring it, as Python programs do."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def test_ctrl_c_stops_a_node_like_sigterm(tmp_path: Path) -> None:
    net = LocalNet(tmp_path, 2)
    try:
        with sigint_not_ignored():
            net.start_all()  # node 1 knows node 0
        proc = net.procs[1]
        assert proc is not None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=DEADLINE) == 0
        net.procs[1] = None
        out = net.output(1).read_text(errors="replace")
        assert not any(word in out for word in TRACEBACK_WORDS), out
        assert out.rstrip().endswith("node stopped"), out
        home = Home(net.homes[1])
        assert not home.control.exists()  # shut down through the same path as SIGTERM
        saved = wire.decode(home.contacts.read_bytes(), ContactList, max_size=1 << 20)
        assert status(net.homes[0])["node_id"] in {c.node_id.hex() for c in saved.certs}
    finally:
        net.close()
