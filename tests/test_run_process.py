"""`anonmail run` as users run it: real processes on a local testnet. Two users each run one;
a first message, anonymous (the default) or direct, asks for permission; the one-shot commands,
with no passphrase available, are done by the running agents; the mail goes out once permitted
and arrives in the recipient's Maildir by itself (the agent checks and retrieves); `status`
shows agent and gateway; SIGTERM stops with one line and exit 0."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procnet import LocalNet, local_net, wait_for
from runnet import RunUser, cli

from anonmail.mail.maildir import LocalMail


@pytest.fixture
def users(tmp_path: Path) -> Iterator[tuple[LocalNet, RunUser, RunUser]]:
    with local_net(tmp_path, 3) as net:
        alice, bob = RunUser(net, tmp_path, "alice"), RunUser(net, tmp_path, "bob")
        try:
            alice.start()
            bob.start()
            yield net, alice, bob
        finally:
            alice.close()
            bob.close()


@pytest.mark.slow  # ~80 s; tests/test_run_clients.py runs two users under `anonmail run` by default
@pytest.mark.parametrize("how", [(), ("--direct",)], ids=["anonymous", "direct"])
def test_run_agents_do_the_commands_and_deliver_by_themselves(
        users: tuple[LocalNet, RunUser, RunUser], tmp_path: Path, how: tuple[str, ...]) -> None:
    _, alice, bob = users
    # the agents publish the addresses `init --offline` left unpublished
    wait_for(lambda: alice.status()["agent"]["cert_published"] is not None, "alice's cert")
    wait_for(lambda: bob.status()["agent"]["cert_published"] is not None, "bob's cert")
    body = tmp_path / "body.txt"
    body.write_text("hello from the agent\n")
    r = cli("send", *how, "--home", str(alice.home), "--to", bob.address, "--subject",
            "by agent", str(body))
    assert r.returncode == 0, r.stderr
    assert "asked for permission to write" in r.stdout
    # Bob's agent has the request by itself (no command checked for it)
    wait_for(lambda: "alice@" in cli("requests", "--offline", "--home", str(bob.home)).stdout,
             "bob's agent to see the request")
    r = cli("allow", alice.address, "--home", str(bob.home))
    assert r.returncode == 0 and "may now write to you" in r.stdout, r.stderr
    # Alice's agent sees the grant and sends; Bob's agent retrieves: nobody runs a command
    local = LocalMail(bob.home / "mail")
    wait_for(lambda: len(local.message_keys()) == 1 and not local.pending(), "the mail")
    assert b"hello from the agent" in local.maildir.get_bytes(local.message_keys()[0])
    # (Alice's agent may still be finishing the send when Bob has it)
    wait_for(lambda: "empty" in cli("outbox", "--home", str(alice.home)).stdout,
             "alice's Outbox to empty")
    out = cli("status", "--home", str(alice.home)).stdout
    for line in ("address   alice@", "checked", "outbox    0 message(s)", "cert      published",
                 f"smtp      127.0.0.1:{alice.smtp}"):
        assert line in out, out
    for private in (alice.home / "gateway-password", alice.home / "control.sock"):
        assert private.stat().st_mode & 0o777 == 0o600
    code, printed = alice.stop()
    assert code == 0 and printed.rstrip().endswith("anonmail stopped"), printed[-500:]
    assert "Traceback" not in printed


def test_run_refuses_a_home_without_an_address(tmp_path: Path) -> None:
    with local_net(tmp_path, 1) as net:
        r = cli("node", "--init", "--home", str(tmp_path / "x"), "--testnet", "--bootstrap",
                net.bootstrap, "--fast-kdf", passphrase=True)
        assert r.returncode == 0, r.stderr
        t0 = time.monotonic()
        r = cli("run", "--home", str(tmp_path / "x"), passphrase=True)
        assert r.returncode == 2 and r.stdout == "" and time.monotonic() - t0 < 30
        assert r.stderr.count("\n") == 1 and "run `anonmail init` first" in r.stderr
