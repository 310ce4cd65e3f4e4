"""The walkthrough fixes of the mail commands (docs/cli.md), each checked without a real
network where it can be: stable message ids (`inbox`, `read`), the Seen flag, the listing's
sender and date, `reply`, `read --save`, `address --verify`, addresses as users write them,
`node --init` after `init`, a node or client on the wrong network, and help texts.

Network jobs are captured (commands/jobs.py `run_job` replaced) to see exactly what a command
hands to the agent; the jobs themselves run on the simulated mail network (tests/mailsim.py),
and the wrong-network case on real loopback TCP in this process."""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import os
import re
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trio
from clihome import captured as captured  # fixture
from clihome import home as home  # fixture
from clihome import one_line_error, run
from mailsim import people
from mailsim import sim_fixture as sim_fixture
from procnet import PASSPHRASE, free_ports

from anonmail import cli
from anonmail.agent.session import AgentConfig, session
from anonmail.clock import FixedClock, SystemClock
from anonmail.commands import jobs, node_cmd
from anonmail.commands.mail_cmd import parse_address
from anonmail.errors import OtherNetwork, UserError
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import LocalMail, message_name
from anonmail.net.handshake import Handshake, HandshakeError, Role, State
from anonmail.node.process import Node
from anonmail.records import ids
from anonmail.records import params as netparams
from anonmail.records.certs import Endpoint, NodeCert, fingerprint_words
from anonmail.rng import SeededRng, SystemRng

ALICE = "alice@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.anon"
CAROL = "carol@example.org"
MAIL_AND_PERMIT_COMMANDS = ("init", "address", "send", "inbox", "read", "reply", "discard",
                            "requests", "allow", "block", "contacts", "outbox")


def message(mid: str, *, sender: str = f"Alice Example <{ALICE}>", subject: str = "Lunch",
            date: str = "Fri, 01 Mar 2024 12:00:00 +0000", to: str = "",
            attachments: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"], msg["Subject"], msg["Date"], msg["Message-ID"] = sender, subject, date, mid
    if to:
        msg["To"] = to
    msg.set_content("Lunch on Friday?\n")
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def mid(n: int) -> str:
    return f"<{n:032d}@anonmail>"


LINE = re.compile(r"(\S+)  (new |read)  (\S+ \S+)  (.*?)  +(.*)")


def inbox(capsys: pytest.CaptureFixture[str], home: Path) -> dict[str, list[str]]:
    """`inbox --offline`: each line's columns (id, state, date, sender, subject), by subject."""
    code, out, _ = run(capsys, "inbox", "--offline", "--home", str(home))
    assert code == 0
    rows = {}
    for line in out.splitlines():
        m = LINE.fullmatch(line)
        assert m is not None, line
        rows[m.group(5)] = list(m.groups())
    return rows


# -- 1-3: stable ids, the Seen flag, the listing --------------------------------------------------

def test_ids_stay_put_and_reading_marks_seen(home: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    local = LocalMail(home / "mail")
    local.add_message(mid(1), message(mid(1)))
    local.add_message(mid(2), message(mid(2), sender=CAROL, subject="Minutes",
                                      date="Sat, 02 Mar 2024 09:30:00 +0100"))
    before = inbox(capsys, home)
    lunch, minutes = before["Lunch"], before["Minutes"]
    assert lunch[0] == message_name(mid(1))[:8] and minutes[0] == message_name(mid(2))[:8]
    # the whole sender with its name, the local date and time, new
    assert lunch[1:4] == ["new ", time.strftime("%Y-%m-%d %H:%M", time.localtime(1709294400)),
                          f"Alice Example <{ALICE}>"]
    code, out, _ = run(capsys, "read", lunch[0], "--home", str(home))
    assert code == 0 and "Lunch on Friday?" in out
    name = message_name(mid(1))
    assert os.listdir(home / "mail" / "Maildir" / "cur") == [f"{name}:2,S"]
    local.add_message(mid(3), message(mid(3), subject="Later", date="Sun, 03 Mar 2024 "
                                                                    "10:00:00 +0000"))
    after = inbox(capsys, home)
    assert after["Lunch"][0] == lunch[0] and after["Minutes"][0] == minutes[0]
    assert after["Lunch"][1] == "read" and after["Minutes"][1] == "new "
    # the Message-ID, with or without <>, names a message too
    for ident in (mid(2), mid(2).strip("<>")):
        code, out, _ = run(capsys, "read", ident, "--home", str(home))
        assert code == 0 and "Subject: Minutes" in out
    # a list position is not an id: one line, nothing read
    err = one_line_error((*run(capsys, "read", "1", "--home", str(home)),))
    assert "not a message id" in err and "anonmail inbox" in err


def test_ids_grow_when_two_share_their_first_digits(home: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    new = LocalMail(home / "mail").root / "Maildir" / "new"  # files another program put
    (new / ("3f2a9c1e0" + "0" * 31)).write_bytes(message(mid(1), subject="one"))
    (new / ("3f2a9c1e1" + "1" * 31)).write_bytes(message(mid(2), subject="two"))
    listed = inbox(capsys, home)
    assert (listed["one"][0], listed["two"][0]) == ("3f2a9c1e0", "3f2a9c1e1")
    err = one_line_error(run(capsys, "read", "3f2a9c1e", "--home", str(home)))
    assert "names 2 messages (3f2a9c1e0, 3f2a9c1e1): give more digits" in err
    code, out, _ = run(capsys, "read", "3f2a9c1e1", "--home", str(home))
    assert code == 0 and "Subject: two" in out


# -- 5: read --save -------------------------------------------------------------------------------

def test_read_save_writes_safe_names_and_never_overwrites(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parts = (("../../.bashrc", b"evil"), ("photo.jpg", b"one"), ("photo.jpg", b"two"),
             ("\x1b]0;title\x07notes.txt", b"notes"), ("", b"nameless"))
    LocalMail(home / "mail").add_message(mid(1), message(mid(1), attachments=parts))
    out_dir = tmp_path / "saved"
    out_dir.mkdir()
    (out_dir / "photo.jpg").write_bytes(b"mine")
    ident = inbox(capsys, home)["Lunch"][0]
    code, out, _ = run(capsys, "read", ident, "--save", str(out_dir), "--home", str(home))
    assert code == 0
    saved = [line for line in out.splitlines() if line.startswith("saved ")]
    names = ["bashrc", "photo-1.jpg", "photo-2.jpg", "]0;titlenotes.txt", "attachment.bin"]
    assert saved == [f"saved {out_dir / n} ({len(d)} bytes)"
                     for n, (_, d) in zip(names, parts, strict=True)]
    assert (out_dir / "photo.jpg").read_bytes() == b"mine"  # never overwritten
    assert sorted(os.listdir(out_dir)) == sorted([*names, "photo.jpg"])
    assert not (tmp_path / ".bashrc").exists() and not (home / ".bashrc").exists()
    assert [(out_dir / n).read_bytes() for n in names] == [d for _, d in parts]


# -- 4: reply -------------------------------------------------------------------------------------

def test_reply_sends_a_threaded_message_through_the_send_job(
        home: Path, tmp_path: Path, captured: list[tuple[str, dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    me = AddressIdentity.load(home / "address.key", PASSPHRASE).address
    LocalMail(home / "mail").add_message(mid(1), message(mid(1), to=f"{me}, {CAROL}"))
    (tmp_path / "answer.txt").write_text("Friday works.\n")
    (tmp_path / "map.txt").write_text("here\n")
    ident = inbox(capsys, home)["Lunch"][0]
    code, _, _ = run(capsys, "reply", ident, str(tmp_path / "answer.txt"), "--all",
                     "--attach", str(tmp_path / "map.txt"), "--home", str(home))
    assert code == 0
    ((name, params),) = captured
    assert name == "send" and params["to"] == [] and params["identity given"]
    sent = email.message_from_bytes(base64.b64decode(params["raw"]),
                                    policy=email.policy.default)
    assert str(sent["From"]) == me and str(sent["To"]) == ALICE and str(sent["Cc"]) == CAROL
    assert str(sent["Subject"]) == "Re: Lunch"
    assert str(sent["In-Reply-To"]) == mid(1) and str(sent["References"]) == mid(1)
    assert isinstance(sent, EmailMessage)
    body = sent.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content().replace("\r\n", "\n")
    assert text.startswith("Friday works.\n\nOn Fri, 01 Mar 2024 12:00:00 +0000, Alice "
                           f"Example <{ALICE}> wrote:\n> Lunch on Friday?\n")
    assert [p.get_filename() for p in sent.iter_attachments()] == ["map.txt"]
    # the original is marked read and replied
    assert os.listdir(home / "mail" / "Maildir" / "cur") == [f"{message_name(mid(1))}:2,RS"]


# -- 6: address --verify --------------------------------------------------------------------------

def test_address_verify_asks_for_the_certificate(
        home: Path, captured: list[tuple[str, dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(capsys, "address", "--verify", f"Alice <{ALICE.upper()}>", "--home",
                     str(home))
    assert code == 0
    assert captured == [("cert", {"address": "ALICE@" + ALICE.split("@")[1],
                                  "identity given": False})]


async def test_the_cert_job_shows_the_verified_fingerprint(sim: Any,
                                                           autojump_clock: Any) -> None:
    alice, bob, carol = await people(sim, "alice", "bob", "carol")
    out = await jobs.JOBS["cert"](alice, {"address": carol.address})
    assert out.out[:2] == [carol.address,
                           f"fingerprint: {fingerprint_words(carol.identity.sign.public)}"]
    assert "self-certifying: its domain is the fingerprint of this key" in out.out[2]
    out = await jobs.JOBS["cert"](alice, {"address": bob.address})  # name@domain: from a CA
    assert out.out[1] == f"fingerprint: {fingerprint_words(bob.identity.sign.public)}"
    assert "certified by the CA" in out.out[2]
    nobody = "nobody@" + carol.address.split("@")[1]
    with pytest.raises(UserError, match=f"no certificate found for {nobody}"):
        await jobs.JOBS["cert"](alice, {"address": nobody})


# -- 7: addresses as users write them -------------------------------------------------------------

def test_names_and_upper_case_domains_are_accepted(
        home: Path, captured: list[tuple[str, dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    upper = "Carol <CAROL@EXAMPLE.ORG>"
    assert run(capsys, "send", "--home", str(home), "--to", f"Alice <{ALICE.upper()}>",
               "--cc", f"{upper}, dave@Example.Org", "--bcc", "eve@EXAMPLE.org",
               "--subject", "Hi", os.devnull)[0] == 0
    for args in (["allow", upper], ["block", upper], ["contacts", "add", upper]):
        assert run(capsys, *args, "--home", str(home))[0] == 0
    (send, *permits) = captured
    assert send[1]["to"] == ["ALICE@" + ALICE.split("@")[1]]  # the local part stays as written
    assert send[1]["cc"] == ["CAROL@example.org", "dave@example.org"]
    assert send[1]["bcc"] == ["eve@example.org"]
    assert [p["address"] for _, p in permits] == ["CAROL@example.org"] * 3
    # a .anon domain in capitals is the address's own domain again (its key's fingerprint)
    me = AddressIdentity.load(home / "address.key", PASSPHRASE).address
    local, domain = me.split("@")
    assert parse_address(f"Me <{local}@{domain.upper()}>") == me
    for bad in ("a@b.org junk", "Carol <carol@example.org", "not an address",
                "a@b.org, c@d.org"):
        err = one_line_error(run(capsys, "allow", bad, "--home", str(home)))
        assert repr(bad) in err
    err = one_line_error(run(capsys, "send", "--to", "x@y.org <z@w.org>", "--home", str(home),
                             os.devnull))
    assert "--to" in err and "is not an e-mail address" in err


# -- 8: node --init after init --------------------------------------------------------------------

def test_node_init_after_init_keeps_the_config(home: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = home / "config.toml"
    with config.open("a") as f:
        f.write('\n[gateway]\nsmtp = "127.0.0.1:2588"  # mine\n')
    before = config.read_text()
    assert not (home / "node.key").exists()
    err = one_line_error(run(capsys, "node", "--init", "--home", str(home), "--fast-kdf",
                             "--bootstrap", "nowhere"))
    assert err.startswith("anonmail: --bootstrap: ")
    assert config.read_text() == before and not (home / "node.key").exists()
    code, out, _ = run(capsys, "node", "--init", "--home", str(home), "--fast-kdf", "--testnet",
                       "--listen", "127.0.0.1:7611", "--bootstrap", "127.0.0.1:7601")
    assert code == 0 and (home / "node.key").exists()
    assert "set listen = 127.0.0.1:7611 (was 127.0.0.1:7600); added bootstrap 127.0.0.1:7601" \
        in out
    after = config.read_text()
    assert after == before.replace('listen = "127.0.0.1:7600"', 'listen = "127.0.0.1:7611"') \
        .replace("bootstrap = []", 'bootstrap = ["127.0.0.1:7601"]')
    assert 'smtp = "127.0.0.1:2588"  # mine' in after
    err = one_line_error(run(capsys, "node", "--init", "--home", str(home), "--fast-kdf"))
    assert "refusing to overwrite" in err


def test_node_init_refuses_another_network_than_the_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ANONMAIL_PASSPHRASE", PASSPHRASE)
    h = tmp_path / "main"
    assert run(capsys, "init", "--home", str(h), "--offline", "--fast-kdf")[0] == 0
    err = one_line_error(run(capsys, "node", "--init", "--testnet", "--home", str(h),
                             "--fast-kdf"))
    assert "is for the main network" in err and not (h / "node.key").exists()


# -- 9: the wrong network -------------------------------------------------------------------------

OTHER = netparams.testnet(puzzle_bits=0).replace(network_id=b"anonmail-othr-v1")
TEST = netparams.testnet(puzzle_bits=0)


def test_the_handshake_names_the_responders_network() -> None:
    now = FixedClock().now()
    a, b = (ids.grind_node_key(0, SeededRng(n)) for n in (1, 2))
    i = Handshake(Role.INITIATOR, a, NodeCert.issue(a, (), now, OTHER), OTHER, SeededRng(3))
    r = Handshake(Role.RESPONDER, b, NodeCert.issue(b, (), now, TEST), TEST, SeededRng(4))
    r.receive_data(i.data_to_send())
    with pytest.raises(HandshakeError, match="another network"):
        r.next_event(now)
    i.receive_data(r.data_to_send())  # what the responder says before it closes
    with pytest.raises(OtherNetwork) as e:
        i.next_event(now)
    assert e.value.network_id == TEST.network_id and i.state is State.FAILED
    assert "anonmail-test-v1" in str(e.value)


async def test_a_client_and_a_node_on_the_wrong_network_say_so(tmp_path: Path) -> None:
    clock, rng = SystemClock(), SystemRng()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            test = Node(ids.grind_node_key(0, rng), TEST, clock, rng,
                        listen=Endpoint("127.0.0.1", 0))
            await nursery.start(test.run)
            assert test.endpoint is not None
            identity = AddressIdentity.create_anon("dora", rng, clock.now())
            config = AgentConfig(netparams.MAINNET, (test.endpoint,), frozenset(),
                                 tmp_path / "mail")
            with pytest.raises(UserError) as e:
                async with session(identity, config, clock, rng, anonymous=False):
                    pass
            assert str(e.value) == (f"the bootstrap node {test.endpoint} is on another network "
                                    "(anonmail-test-v1; this home is on anonmail-main-v1): "
                                    "check [network] name in config.toml")
            # a node bootstrapping through a node of another network
            other = Node(ids.grind_node_key(0, rng), OTHER, clock, rng,
                         listen=Endpoint("127.0.0.1", 0), bootstrap=(test.endpoint,))
            await nursery.start(other.run)
            assert node_cmd.bootstrap_warnings(other) == [
                f"the bootstrap node {test.endpoint} is on another network (anonmail-test-v1; "
                "this node is on anonmail-othr-v1): check [network] name in config.toml"]
            # nobody there at all: the home's network is named
            (port,) = free_ports(1)
            config = AgentConfig(TEST, (Endpoint("127.0.0.1", port),), frozenset(),
                                 tmp_path / "mail")
            with pytest.raises(UserError, match=f"cannot reach the network \\(tried 127.0.0.1:"
                                                f"{port}; this home is on anonmail-test-v1\\)"):
                async with session(identity, config, clock, rng, anonymous=False):
                    pass
            nursery.cancel_scope.cancel()


# -- 10: help texts -------------------------------------------------------------------------------

def test_every_mail_and_permit_command_has_a_description_and_examples() -> None:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name in MAIL_AND_PERMIT_COMMANDS:
        p = sub.choices[name]
        assert p.description and len(p.description) > 80, name
        assert p.epilog and p.epilog.startswith("examples:\n  "), name
        assert f"anonmail {name}" in p.epilog, name
        assert p.formatter_class is argparse.RawDescriptionHelpFormatter, name
