"""`anonmail run` killed (SIGKILL) again and again during a burst of 50 sends and during the
recipient's checks: no message whose submission was acknowledged (SMTP 250: it is in the
durable Outbox) is lost, and none reaches the recipient twice. A submission the gateway did not
acknowledge (the agent was down or died mid-reply) may or may not go out, but at most once.
Real processes: a 3-node testnet, Alice's and Bob's `anonmail run`, mail submitted with the
stdlib SMTP client to Alice's gateway."""

from __future__ import annotations

import email
import email.policy
import random
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from procnet import local_net, wait_for
from runnet import RunUser, cli

from anonmail.mail.maildir import LocalMail

BURST = 50
KILLS = 6  # of each agent


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RunUser, RunUser]]:
    with local_net(tmp_path, 3) as net:
        alice = RunUser(net, tmp_path, "alice", check_interval=10)
        bob = RunUser(net, tmp_path, "bob", check_interval=10)
        try:
            alice.start()
            bob.start()
            yield alice, bob
        finally:
            alice.close()
            bob.close()


def subjects(home: Path) -> Counter[str]:
    local = LocalMail(home / "mail")
    out: Counter[str] = Counter()
    for key in local.message_keys():
        msg = email.message_from_bytes(local.maildir.get_bytes(key), policy=email.policy.default)
        out[str(msg["Subject"])] += 1
    return out


def submit(user: RunUser, to: str, subject: str) -> bool:
    """True when the gateway acknowledged the message (250)."""
    msg = f"From: {user.address}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nburst\r\n"
    try:
        with smtplib.SMTP("127.0.0.1", user.smtp, timeout=20) as s:
            s.login(user.address, user.password)
            s.sendmail(user.address, [to], msg.encode())
        return True
    except (OSError, smtplib.SMTPException):
        return False


def killer(user: RunUser, kills: int, rng: random.Random, stop: threading.Event,
           done: list[int]) -> None:
    """SIGKILL `user`'s agent at random moments, restarting it each time."""
    for _ in range(kills):
        if stop.wait(rng.uniform(0.5, 4.0)):
            return
        user.kill()
        user.start()
        done.append(1)


@pytest.mark.slow
def test_sigkill_during_a_burst_loses_nothing_and_doubles_nothing(
        pair: tuple[RunUser, RunUser]) -> None:
    alice, bob = pair
    wait_for(lambda: alice.status()["agent"]["cert_published"] is not None, "alice's cert")
    wait_for(lambda: bob.status()["agent"]["cert_published"] is not None, "bob's cert")
    # contacts both ways: permits are granted by policy, refilled as Bob's agent reads
    assert cli("contacts", "add", alice.address, "--home", str(bob.home)).returncode == 0
    assert cli("contacts", "add", bob.address, "--home", str(alice.home)).returncode == 0

    rng = random.Random(7)
    stop = threading.Event()
    kills: list[int] = []
    threads = [threading.Thread(target=killer, args=(u, KILLS, rng, stop, kills))
               for u in (alice, bob)]
    for t in threads:
        t.start()
    acked: list[str] = []
    unacked: list[str] = []
    try:
        for i in range(BURST):
            subject = f"burst {i:02d}"
            # (the killer restarts the agent: wait for its gateway, as a mail client retries)
            up = time.monotonic() + 120
            while not alice.serving() and time.monotonic() < up:
                time.sleep(0.2)
            (acked if submit(alice, bob.address, subject) else unacked).append(subject)
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert len(acked) >= BURST * 3 // 4, (len(acked), len(unacked))
    assert sum(kills) >= 4  # the agents really died during the burst
    deadline = time.monotonic() + 1800  # anonymous sends, ~10 s each on 2 busy cores
    while time.monotonic() < deadline:
        got = subjects(bob.home)
        if all(got[s] for s in acked) and "empty" in cli("outbox", "--home",
                                                          str(alice.home)).stdout:
            break
        time.sleep(2)
    got = subjects(bob.home)
    assert [s for s in acked if not got[s]] == []  # nothing acknowledged is lost
    assert [s for s, n in got.items() if n > 1] == []  # nothing arrives twice
    assert set(got) <= set(acked) | set(unacked)
