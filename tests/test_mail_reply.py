"""Replies (mail/reply.py): recipients (Reply-To honoured, reply-all without ourselves), the
subject, threading (In-Reply-To, References: RFC 5322 §3.6.4), the quoted original; and the
reply is a message `anonmail send` takes as it is (compose.prepare)."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from anonmail.clock import FixedClock
from anonmail.errors import UserError
from anonmail.mail.compose import Attachment, prepare
from anonmail.mail.reply import MAX_REFERENCES, compose_reply, reply_subject
from anonmail.rng import SeededRng

ME = "bob@bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.anon"
ALICE = "alice@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.anon"
CAROL = "carol@example.org"
DAVE = "dave@example.org"
MID = "<" + "m" * 32 + "@anonmail>"


def original(**headers: str) -> bytes:
    fields = {"From": f"Alice <{ALICE}>", "To": f"{ME}, {CAROL}", "Cc": DAVE,
              "Subject": "Lunch", "Date": "Fri, 01 Mar 2024 12:00:00 +0000", "Message-ID": MID,
              **headers}
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
    return (head + "\r\nLunch on Friday?\r\n\r\n> an older quote\r\n").encode()


def reply(data: bytes, *, reply_all: bool = False, text: str = "Friday works.",
          attachments: tuple[Attachment, ...] = ()) -> EmailMessage:
    composed = compose_reply(data, ME, text, attachments, reply_all=reply_all,
                             clock=FixedClock(1_700_000_000), rng=SeededRng(1))
    # exactly what the "send" job does with it (compose.prepare): accepted as it is
    prepared = prepare(composed.data, ME, FixedClock(1_700_000_000), SeededRng(2))
    assert prepared.to == composed.to and prepared.cc == composed.cc
    msg = email.message_from_bytes(composed.data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_a_reply_goes_to_the_sender_quotes_and_threads() -> None:
    msg = reply(original())
    assert str(msg["From"]) == ME and str(msg["To"]) == ALICE and msg["Cc"] is None
    assert str(msg["Subject"]) == "Re: Lunch"
    assert str(msg["In-Reply-To"]) == MID and str(msg["References"]) == MID
    body = msg.get_content().replace("\r\n", "\n")
    assert body.startswith("Friday works.\n\n")
    assert (f"On Fri, 01 Mar 2024 12:00:00 +0000, Alice <{ALICE}> wrote:\n"
            "> Lunch on Friday?\n>\n> > an older quote\n") in body


def test_reply_to_is_honoured_and_reply_all_leaves_us_out() -> None:
    msg = reply(original(**{"Reply-To": CAROL}))
    assert str(msg["To"]) == CAROL
    msg = reply(original(), reply_all=True)
    assert str(msg["To"]) == ALICE
    assert [a.addr_spec for a in msg["Cc"].addresses] == [CAROL, DAVE]  # not ME
    # a reply to all of a message we sent ourselves goes to its recipients, not to us
    mine = original(From=ME, To=f"{ALICE}, {ME}", Cc=CAROL)
    msg = reply(mine, reply_all=True)
    assert str(msg["To"]) == ALICE and str(msg["Cc"]) == CAROL


def test_the_subject_gets_one_re() -> None:
    assert reply_subject("Lunch") == "Re: Lunch"
    for already in ("Re: Lunch", "RE: Lunch", "re:Lunch", "Re[2]: Lunch"):
        assert reply_subject(already) == already
    assert reply_subject("") == "Re:"
    assert reply_subject("a\nb\x1b[31m") == "Re: a b [31m"  # no line break, no escape
    assert str(reply(original(Subject="Re: Lunch"))["Subject"]) == "Re: Lunch"


def test_references_grow_from_the_original_and_stay_bounded() -> None:
    older = [f"<{i:032d}@anonmail>" for i in range(30)]
    msg = reply(original(References=" ".join(older), **{"In-Reply-To": older[-1]}))
    refs = str(msg["References"]).split()
    assert len(refs) == MAX_REFERENCES
    assert refs[0] == older[0] and refs[-2:] == [older[-1], MID]
    msg = reply(original(**{"In-Reply-To": older[3]}))  # no References: In-Reply-To, then ours
    assert str(msg["References"]).split() == [older[3], MID]
    msg = reply(original(**{"Message-ID": "not an id"}))  # nothing usable: no threading fields
    assert msg["In-Reply-To"] is None and msg["References"] is None


def test_attachments_and_a_message_with_no_one_to_reply_to() -> None:
    msg = reply(original(), attachments=(Attachment("notes.txt", b"notes"),))
    (part,) = msg.iter_attachments()
    assert part.get_filename() == "notes.txt" and part.get_payload(decode=True) == b"notes"
    with pytest.raises(UserError, match="no address to reply to"):
        reply(original(From="not an address"))
