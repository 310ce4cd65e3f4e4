"""LocalMail and Maildir flags (mail/maildir.py): a message is found by its base name in new/
or cur/ whatever its ":2,FLAGS" suffix; reading it renames it into cur/ with the Seen flag;
another program (the IMAP/POP3 gateway, a mail client) may rename or delete files at any time,
and LocalMail takes that in its stride."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anonmail.mail.maildir import LocalMail, message_name

MID = "<" + "a" * 32 + "@anonmail>"
DATA = f"From: a@b.anon\r\nMessage-ID: {MID}\r\nSubject: hi\r\n\r\nhello\r\n".encode()


@pytest.fixture
def local(tmp_path: Path) -> LocalMail:
    return LocalMail(tmp_path / "mail")


def inbox(local: LocalMail, sub: str) -> list[str]:
    return sorted(os.listdir(local.root / "Maildir" / sub))


def test_reading_moves_the_message_to_cur_with_the_seen_flag(local: LocalMail) -> None:
    name = local.add_message(MID, DATA)
    assert name == message_name(MID) and inbox(local, "new") == [name]
    (stored,) = local.messages()
    assert not stored.seen and stored.key == name
    assert local.set_flags(name, "S")
    assert inbox(local, "new") == [] and inbox(local, "cur") == [f"{name}:2,S"]
    assert (local.root / "Maildir" / "cur" / f"{name}:2,S").read_bytes() == DATA
    (stored,) = local.messages()
    assert stored.seen and stored.flags == "S"
    assert local.set_flags(name, "S")  # again: nothing changes
    assert inbox(local, "cur") == [f"{name}:2,S"]


def test_lookups_find_a_message_in_cur_whatever_its_flags(local: LocalMail) -> None:
    name = local.add_message(MID, DATA)
    cur = local.root / "Maildir" / "cur"
    os.rename(local.root / "Maildir" / "new" / name, cur / f"{name}:2,FR")  # a mail client
    assert local.has_message(MID) and local.get_message(MID) == DATA
    assert local.message_keys() == [name]
    assert local.add_message(MID, DATA) == name  # idempotent: no second copy in new/
    assert inbox(local, "new") == [] and inbox(local, "cur") == [f"{name}:2,FR"]
    assert local.set_flags(name, "S")  # the other program's flags are kept, in ASCII order
    assert inbox(local, "cur") == [f"{name}:2,FRS"]
    assert local.read_stored(name) == DATA and local.read_head(name) == DATA


def test_a_message_deleted_by_another_program_is_gone_not_an_error(local: LocalMail) -> None:
    name = local.add_message(MID, DATA)
    os.unlink(local.root / "Maildir" / "new" / name)
    assert not local.has_message(MID) and local.get_message(MID) is None
    assert local.read_stored(name) is None and not local.set_flags(name, "S")
    assert local.messages() == [] and local.message_keys() == []


def test_other_files_and_links_are_listed_safely(local: LocalMail, tmp_path: Path) -> None:
    new = local.root / "Maildir" / "new"
    (new / "1700000000.M1P2.host").write_bytes(DATA)  # another program's delivery
    (new / ".hidden").write_bytes(DATA)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not mail")
    (new / ("b" * 40)).symlink_to(secret)
    (stored,) = local.messages()
    assert stored.name == "1700000000.M1P2.host"
    assert len(stored.key) == 40 and stored.key != stored.name  # a hex key all the same
    assert local.read_stored("b" * 40) is None  # a symbolic link is never followed
