"""RFC 5322 composition, submission and parsing (mail/compose.py)."""

from __future__ import annotations

import email.policy
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonmail.clock import FixedClock
from anonmail.errors import UserError
from anonmail.mail import compose as c
from anonmail.rng import SeededRng

NOW = 1_800_000_000.0
ME = "alice@example.org"


def make(**kw: object) -> c.Composed:
    args: dict[str, Any] = {"sender": ME, "to": ["bob@example.org"], "cc": [], "bcc": [],
                               "subject": "Hi", "body": "hello\n", "attachments": []}
    args.update(kw)
    return c.compose(clock=FixedClock(NOW), rng=SeededRng(1), **args)


def head(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def test_compose_builds_a_standard_message_without_bcc_host_or_random() -> None:
    att = c.Attachment("../../etc/report.pdf", b"%PDF-1.4 \x00\xff" * 100, "application/pdf")
    m = make(to=["Bob@Example.org"], cc=["carol@example.org"], bcc=["dave@example.org"],
             subject="Zürich plan", attachments=[att])
    assert m.to == ("Bob@example.org",) and m.cc == ("carol@example.org",)
    assert m.bcc == ("dave@example.org",)
    assert m.recipients == ("Bob@example.org", "carol@example.org", "dave@example.org")
    assert b"dave" not in m.data and b"bcc:" not in head(m.data).lower()
    assert c.is_message_id(m.message_id) and m.message_id.encode() in m.data
    assert m.date == int(NOW) and b"+0000" in head(m.data)
    assert b"\r\n" in m.data and b"\n" not in m.data.replace(b"\r\n", b"")
    assert m == make(to=["Bob@Example.org"], cc=["carol@example.org"], bcc=["dave@example.org"],
                     subject="Zürich plan", attachments=[att])  # reproducible from the seed
    msg = BytesParser(policy=email.policy.default).parsebytes(m.data)
    assert msg["subject"] == "Zürich plan" and msg["from"] == ME
    parts = list(msg.iter_attachments())
    assert [p.get_filename() for p in parts] == ["report.pdf"]
    assert parts[0].get_content() == att.data
    for word in (b"anonmail/", b"User-Agent", b"X-Mailer", b"Received"):
        assert word not in head(m.data)
    p = c.parse(m.data)
    assert (p.sender, p.to, p.cc, p.subject, p.message_id) == (
        ME, m.to, m.cc, "Zürich plan", m.message_id)


def test_message_ids_are_random_and_name_no_host() -> None:
    rng = SeededRng(2)
    got = {c.new_message_id(rng) for _ in range(100)}
    assert len(got) == 100 and all(c.is_message_id(x) for x in got)
    assert not c.is_message_id("<abc@example.org>")


@pytest.mark.parametrize(("kw", "why"), [
    ({"to": ["not an address"]}, "bad address"),
    ({"to": ["bob@@example.org"]}, "bad address"),
    ({"to": ["bob@example.org\r\nBcc: eve@example.org"]}, "control characters"),
    ({"subject": "a\r\nBcc: eve@example.org"}, "line breaks"),
    ({"subject": "x" * 2000}, "too long"),
    ({"to": []}, "no recipients"),
    ({"to": [f"u{i}@example.org" for i in range(101)]}, "too many recipients"),
    ({"attachments": [c.Attachment("a", b"x", "text")]}, "content type"),
    ({"attachments": [c.Attachment("a", b"x", "multipart/mixed")]}, "content type"),
    ({"attachments": [c.Attachment("..", b"x")]}, "file name"),
    ({"attachments": [c.Attachment("a\nb", b"x")]}, "file name"),
    ({"body": "\udc80"}, "not valid text"),
])
def test_compose_refuses_bad_input_with_one_line(kw: dict[str, object], why: str) -> None:
    with pytest.raises(UserError, match=why) as e:
        make(**kw)
    assert "\n" not in str(e.value)


def test_compose_refuses_oversized_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(c, "MAX_MESSAGE", 1000)
    with pytest.raises(UserError, match="too large"):
        make(attachments=[c.Attachment("a", b"x" * 2000)])


SUBMITTED = (b"From: Alice <alice@example.org>\r\n"
             b"To: bob@example.org, Carol <carol@example.org>\r\n"
             b"Bcc: dave@example.org,\r\n eve@example.org\r\n"
             b"Subject: plans\r\n"
             b"Message-ID: <123@alice-laptop.local>\r\n"
             b"\r\n"
             b"Body line one.\r\nBcc: this is body text, not a header\r\n")


def test_prepare_takes_bcc_out_replaces_the_message_id_and_keeps_the_rest() -> None:
    m = c.prepare(SUBMITTED, ME, FixedClock(NOW), SeededRng(4))
    assert m.to == ("bob@example.org", "carol@example.org") and m.cc == ()
    assert m.bcc == ("dave@example.org", "eve@example.org")
    assert b"dave" not in head(m.data) and b"eve@" not in m.data
    assert b"alice-laptop" not in m.data and c.is_message_id(m.message_id)
    assert m.data.endswith(SUBMITTED.split(b"\r\n\r\n", 1)[1])  # the body untouched
    assert b"Date: " in head(m.data) and m.date == int(NOW)
    assert c.parse(m.data).message_id == m.message_id
    dated = SUBMITTED.replace(b"Subject:", b"Date: Tue, 01 Jan 2030 00:00:00 +0000\r\nSubject:")
    assert c.prepare(dated, ME, FixedClock(NOW), SeededRng(4)).date == 1893456000
    lf = c.prepare(SUBMITTED.replace(b"\r\n", b"\n"), ME, FixedClock(NOW), SeededRng(4))
    assert b"\r\n" not in lf.data and lf.bcc == m.bcc


@pytest.mark.parametrize(("data", "why"), [
    (b"", "no empty line"),
    (b"From: alice@example.org\r\nTo: bob@example.org\r\n", "no empty line"),
    (b"From: mallory@example.org\r\nTo: bob@example.org\r\n\r\nx", "must be your own"),
    (b"To: bob@example.org\r\n\r\nx", "exactly one From"),
    (b"From: alice@example.org\r\nFrom: alice@example.org\r\nTo: b@example.org\r\n\r\n",
     "more than one From"),
    (b"From: alice@example.org\r\nTo: b\xc3\xa9@example.org\r\n\r\n", "ASCII"),
    (b"From: alice@example.org\r\nnot a header line\r\n\r\n", "Name: value"),
    (b"From: alice@example.org\r\n\r\nbody", "no recipients"),
    (b"From: alice@example.org\r\nTo: bob@example.org\r\nDate: yesterday\r\n\r\n", "Date"),
    (b"From: alice@example.org\r\nTo: b@example.org\r\nSubject: " + b"x" * 1200 + b"\r\n\r\n",
     "longer than"),
])
def test_prepare_refuses_malformed_messages(data: bytes, why: str) -> None:
    with pytest.raises(UserError, match=why) as e:
        c.prepare(data, ME, FixedClock(NOW), SeededRng(4))
    assert "\n" not in str(e.value)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.sampled_from([b"", b"From: alice@example.org\r\n",
                                                  b"From: alice@example.org\r\nTo: "]))
def test_prepare_and_parse_fail_only_with_user_errors(data: bytes, prefix: bytes) -> None:
    for fn in (lambda d: c.prepare(d, ME, FixedClock(NOW), SeededRng(4)), c.parse):
        try:
            fn(prefix + data)
        except UserError as e:
            assert "\n" not in str(e)
