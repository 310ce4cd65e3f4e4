"""The permit commands without a network: what they say about bad input (one line), an empty
Outbox and contacts, and what `outbox` shows of a message waiting for a permission."""

from __future__ import annotations

from pathlib import Path

import pytest
from clihome import new_home

from anonmail import cli
from anonmail.mail.maildir import LocalMail, Waiting
from anonmail.permit.book import PermitBook, Status


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         capsys: pytest.CaptureFixture[str]) -> Path:
    return new_home(tmp_path, "alice", monkeypatch, capsys)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_input_is_one_line(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["allow", "not an address"], ["block", "nobody"],
                 ["contacts", "add"], ["contacts", "remove", "bob@example.org"],
                 ["outbox", "--drop", "<nothing@anonmail>"]):
        code, out, err = run([*args, "--home", str(home)], capsys)
        assert code != 0 and out == ""
        assert err.count("\n") == 1 and "Traceback" not in err, (args, err)


def test_empty_outbox_contacts_and_requests(home: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["outbox", "--home", str(home)], capsys)[1] == "your Outbox is empty\n"
    assert run(["contacts", "--home", str(home)], capsys)[1] == "no contacts yet\n"
    code, out, _ = run(["requests", "--offline", "--home", str(home)], capsys)
    assert code == 0 and out == "no pending requests to write to you\n"


def test_outbox_lists_waiting_recipients_and_drop_removes(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = LocalMail(home / "mail")
    mid = "<" + "c" * 32 + "@anonmail>"
    local.queue_outgoing(mid, f"From: a@b.anon\r\nMessage-ID: {mid}\r\n\r\nhi\r\n".encode())
    local.set_waiting(mid, (Waiting("bob@example.org", "asked for permission to write", True,
                                    1_800_000_000),))
    code, out, _ = run(["outbox", "--home", str(home)], capsys)
    assert code == 0 and mid in out
    assert "bob@example.org: asked for permission to write (since 2027-01-15" in out
    assert run(["outbox", "--drop", mid, "--home", str(home)], capsys)[0] == 0
    assert local.outbox() == [] and local.waiting(mid) == ()


def test_contacts_remove_keeps_the_permits(home: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    LocalMail(home / "mail")
    path = home / "mail" / "permits.cbor"
    book = PermitBook.load(path, 8)
    book.set_status("bob@example.org", Status.CONTACT)
    book.save()
    code, out, _ = run(["contacts", "--home", str(home)], capsys)
    assert code == 0 and "contact  bob@example.org" in out
    code, out, _ = run(["contacts", "remove", "bob@example.org", "--home", str(home)], capsys)
    assert code == 0 and "no longer a contact" in out
    assert PermitBook.load(path, 8).status("bob@example.org") is Status.ALLOWED
