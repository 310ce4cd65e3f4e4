"""A received message is a hostile sender's bytes (threat T-MAIL-HOSTILE-BODY): reading its
headers -- compose.parse (what retrieve checks every body with), reply.compose_reply (what
`anonmail reply` does with it) -- raises nothing but one UserError line, whatever the bytes.

The stdlib parses a header only when it is read and raises IndexError, AttributeError or
TypeError on some values (`From: <`, a group where an address belongs, ...). The generators
build header blocks from the pieces that reach those paths (the audit's fuzzers), with the
inputs found so far as fixed examples."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from anonmail.clock import FixedClock
from anonmail.errors import UserError
from anonmail.mail import compose, reply
from anonmail.rng import SeededRng

pytestmark = pytest.mark.threat("T-MAIL-HOSTILE-BODY")

MID = b"<" + b"a" * 32 + b"@anonmail>"
ME = "b@yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy.anon"
PIECES = [b"=?utf-8?q?", b"?=", b"=?", b'"', b"\\", b"<", b">", b"[", b"]", b"(", b")", b",",
          b";", b":", b"@", b"\x80", b"\xff", b"\x00", b"\t", b" ", b"\r\n ", b"=?utf-8?b?",
          b"=E0", b"%", b"'", b"=?x?", b"\r", b"\n", b"a", b".", b"Group:", b"==", b"?", b"0",
          b"Mon,", b"+", b"-"]
FIELDS = [b"From", b"To", b"Cc", b"Subject", b"Message-ID", b"Date", b"Reply-To",
          b"References", b"In-Reply-To", b"Content-Type", b"Content-Transfer-Encoding"]
# Found by the audit's fuzzers: each raised something else than UserError.
FOUND = [
    b"From: <\r\nTo: x@y.zz\r\nMessage-ID: " + MID + b"\r\n\r\nbody\r\n",
    b"From: =?utf-8?q?<\r[=?;\x80\r)[\r\nMessage-ID: " + MID + b"\r\n\r\nbody\r\n",
    b"From: =?utf-8?b?=?utf-8?b??==?utf-8?q?:Group:;\x00\t\r\nMessage-ID: " + MID
    + b"\r\n\r\nbody\r\n",
    b"From: \r\n .;\\\n(<\r\nMessage-ID: " + MID + b"\r\n\r\nbody\r\n",
]
REPLY_FOUND = [
    b"From: m@x.anon\r\nTo: b@y.anon\r\nMessage-ID: " + MID + b"\r\nReply-To: =<\r\n\r\nbody\r\n",
    b"From: m@x.anon\r\nTo: b@y.anon\r\nMessage-ID: " + MID + b"\r\nReply-To: :\t;)\r\n\r\nb\r\n",
]

value = st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map(b"".join)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A plausible header block (From, To, Message-ID) with one or two hostile fields."""
    fields = {b"From": b"m@xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.anon", b"To": ME.encode(),
              b"Message-ID": MID}
    for _ in range(draw(st.integers(1, 2))):
        fields[draw(st.sampled_from(FIELDS))] = draw(value)
    head = b"".join(k + b": " + v + b"\r\n" for k, v in fields.items())
    return head + b"\r\n" + draw(st.sampled_from([b"body\r\n", b"--x\r\n\r\n", b""]))


def one_line(e: UserError) -> None:
    text = str(e)
    assert text and "\n" not in text and "\r" not in text


@given(messages())
@example(FOUND[0])
@example(FOUND[1])
@example(FOUND[2])
@example(FOUND[3])
def test_parsing_a_received_message_raises_only_user_errors(data: bytes) -> None:
    try:
        compose.parse(data)
    except UserError as e:
        one_line(e)


@given(st.binary(max_size=300))
def test_parsing_arbitrary_bytes_raises_only_user_errors(data: bytes) -> None:
    try:
        compose.parse(data)
    except UserError as e:
        one_line(e)


@given(messages())
@example(REPLY_FOUND[0])
@example(REPLY_FOUND[1])
def test_replying_to_a_received_message_raises_only_user_errors(data: bytes) -> None:
    try:
        reply.compose_reply(data, ME, "ok", [], reply_all=True, clock=FixedClock(1.7e9),
                            rng=SeededRng(1))
    except UserError as e:
        one_line(e)


def test_a_hostile_from_is_one_line_naming_the_field() -> None:
    with pytest.raises(UserError, match="From header"):
        compose.parse(FOUND[0])
    with pytest.raises(UserError, match=r"Reply-To header cannot be read.*anonmail send"):
        reply.compose_reply(REPLY_FOUND[0], ME, "ok", [], reply_all=False,
                            clock=FixedClock(1.7e9), rng=SeededRng(1))
