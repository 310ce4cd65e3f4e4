"""The gateway's IMAP server: the sans-I/O command reader (property tests: chunking does not
matter, hostile literals are refused before they are read), MIME/FETCH rendering on hostile
messages, and the server over real loopback sockets with the stdlib imaplib as the client."""

from __future__ import annotations

import base64
import email
import email.policy
import imaplib
import os
import re
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from anonmail.gateway import auth
from anonmail.gateway import imap as imap_server
from anonmail.gateway.auth import LoginGuard
from anonmail.gateway.context import GatewayContext
from anonmail.gateway.imap import serve_imap
from anonmail.gateway.imap_fetch import bodystructure, envelope, parse, parse_items, section
from anonmail.gateway.imap_folders import list_match
from anonmail.gateway.imap_mailbox import MailStore
from anonmail.gateway.imap_parse import (
    Bad,
    Command,
    CommandReader,
    Continue,
    Event,
    SeqSet,
    Value,
)
from anonmail.gateway.imap_search import Candidate, compile_search
from anonmail.gateway.imap_session import Session, State

ADDR = "alice@" + "a" * 32 + ".anon"
PASSWORD = "correct-horse-battery"
T = TypeVar("T")

# -- the command reader ---------------------------------------------------------------------


def drain(reader: CommandReader) -> list[Event]:
    out = []
    while (ev := reader.next()) is not None:
        out.append(ev)
    return out


def read_all(data: bytes, cuts: list[int] | None = None, **kw: int) -> list[Event]:
    reader = CommandReader(**kw)
    events: list[Event] = []
    last = 0
    for cut in [*sorted(set(cuts or [])), len(data)]:
        reader.feed(data[last:cut])
        last = cut
        events += drain(reader)
    return events


def test_reader_parses_atoms_strings_literals_lists_and_sections() -> None:
    data = (b'a1 LOGIN "al\\"ice" {3}\r\npw!\r\n'
            b"a2 UID FETCH 1:*,7 (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)\r\n"
            b"a3 APPEND Sent (\\Seen) {5+}\r\nhello\r\n")
    events = read_all(data)
    assert events == [
        Continue(),
        Command("a1", "LOGIN", [b'al"ice', b"pw!"]),
        Command("a2", "UID FETCH",
                ["1:*,7", ["FLAGS", "BODY.PEEK[HEADER.FIELDS (From To)]<0.100>"]]),
        Command("a3", "APPEND", ["Sent", ["\\Seen"], b"hello"]),
    ]


def test_reader_refuses_malformed_commands_with_their_tag() -> None:
    events = read_all(b'x1 LOGIN "open\r\nx2 FETCH 1 (FLAGS\r\n* NOOP\r\nx3\r\nx4 NOOP\r\n')
    assert [type(e) for e in events] == [Bad, Bad, Bad, Bad, Command]
    assert [e.tag for e in events if isinstance(e, Bad)] == ["x1", "x2", "*", "x3"]


COMMANDS = st.lists(st.sampled_from([
    b"a NOOP\r\n", b'b LOGIN {5}\r\nalice "p w"\r\n', b"c APPEND INBOX {4+}\r\nab\r\n\r\n",
    b"d UID FETCH 1:* (BODY.PEEK[1.MIME] RFC822.SIZE)\r\n",
    b"e SEARCH OR SEEN (UNSEEN NOT DELETED)\n",
    b'f BAD "unterminated\r\n', b"g APPEND INBOX {0}\r\n\r\n", b"h LOGIN {999999999}\r\n",
]), max_size=12).map(b"".join)


@given(COMMANDS, st.lists(st.integers(0, 400), max_size=20))
def test_reader_chunking_does_not_change_the_commands(data: bytes, cuts: list[int]) -> None:
    assert read_all(data, [c for c in cuts if c < len(data)]) == read_all(data)


@pytest.mark.threat("T-GW-IMAP-LITERAL")
def test_oversized_literals_are_refused_before_they_are_read() -> None:
    reader = CommandReader(max_line=1000, max_append=10_000)
    reader.feed(b"t0 APPEND INBOX {5000}\r\n")  # before login, no literal beyond a line
    assert drain(reader) == [Bad("t0", "literal too big", fatal=False, code="TOOBIG")]
    reader.authenticated = True
    reader.feed(b"t1 APPEND INBOX {10001}\r\nt1b APPEND INBOX {5000}\r\n")
    assert drain(reader) == [Bad("t1", "literal too big", fatal=False, code="TOOBIG"), Continue()]
    reader.feed(b"x" * 5000 + b"\r\n")
    assert drain(reader) == [Command("t1b", "APPEND", ["INBOX", b"x" * 5000])]
    reader.feed(b"t2 LOGIN {1001}\r\n")  # outside APPEND a literal may not exceed a line
    assert drain(reader) == [Bad("t2", "literal too big", fatal=False, code="TOOBIG")]
    reader.feed(b"t3 NOOP\r\n")
    assert drain(reader) == [Command("t3", "NOOP", [])]  # the stream is still in step
    reader.feed(b"t4 APPEND INBOX {99999999999999999999+}\r\n" + b"x" * 5000)
    assert drain(reader) == [Bad("t4", "literal too big", fatal=True, code="TOOBIG")]
    assert reader.buffered == 0
    reader = CommandReader(max_line=1000)
    reader.feed(b"t5 NOOP " + b"x" * 2000)  # no line end in sight
    assert [e.fatal for e in drain(reader) if isinstance(e, Bad)] == [True]
    assert reader.buffered == 0


@pytest.mark.threat("T-GW-IMAP-LITERAL")
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
def test_reader_survives_random_bytes_and_stays_bounded(data: bytes, cuts: list[int]) -> None:
    reader = CommandReader(max_line=200, max_append=300)
    reader.authenticated = True
    last = 0
    for cut in [*sorted(c for c in cuts if c < len(data)), len(data)]:
        reader.feed(data[last:cut])
        last = cut
        for ev in drain(reader):
            assert isinstance(ev, Command | Bad | Continue)
            if isinstance(ev, Bad) and ev.fatal:
                return
        # waiting for a line (at most max_line) or for a literal's rest (at most its cap)
        assert reader.buffered <= 300


def test_sequence_sets_and_list_patterns() -> None:
    s = SeqSet("5:3,9,*,20:18,1:1", 30)
    assert [n for n in range(1, 32) if n in s] == [1, 3, 4, 5, 9, 18, 19, 20, 30]
    assert 4294967295 in SeqSet("1:4294967295", 7)
    for bad in ("", "0", "1:", "a", "1:2:3", "99999999999"):
        with pytest.raises(ValueError):
            SeqSet(bad, 5)
    assert list_match("*", "Sent.2024") and not list_match("%", "Sent.2024")
    assert list_match("S%", "Sent")
    assert list_match("%.%", "Sent.2024") and not list_match("Sent", "Sent.2024")


# -- MIME structure and FETCH rendering ----------------------------------------------------


def sample_message(attachment: bytes, subject: str = "hello") -> bytes:
    m = EmailMessage()
    m["From"] = 'Bob "the builder" <bob@' + "b" * 32 + ".anon>"
    m["To"] = ADDR
    m["Subject"] = subject
    m["Date"] = "Tue, 02 Jan 2024 10:00:00 +0000"
    m["Message-ID"] = f"<{subject}@example.anon>"
    m.set_content("Hi Alice,\nsee the attachment.\n")
    m.add_attachment(attachment, maintype="application", subtype="octet-stream",
                     filename="random.bin")
    return m.as_bytes(policy=email.policy.SMTP)


def attachment_of(data: bytes) -> bytes:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    parts = [p for p in msg.iter_attachments() if isinstance(p, EmailMessage)]
    payload = parts[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def test_sections_are_exact_slices_of_the_message() -> None:
    blob = os.urandom(3000)
    data = sample_message(blob)
    root = parse(data)
    items = parse_items(["BODY[]", "BODY[1]", "BODY[2]", "BODY[2.MIME]", "BODY[HEADER]",
                         "BODY[TEXT]<0.10>", "BODY[HEADER.FIELDS (SUBJECT)]", "BODY[3]"])
    got = [section(data, root, i) for i in items]
    assert got[0] == data
    assert got[1] == b"Hi Alice,\r\nsee the attachment.\r\n"
    assert got[2] is not None and base64.b64decode(got[2]) == blob
    assert got[3] is not None and got[3].startswith(b"Content-Type: application/octet-stream")
    assert got[4] is not None and data == got[4] + root.body
    assert got[5] == root.body[:10]
    assert got[6] == b"Subject: hello\r\n\r\n"
    assert got[7] is None
    env = envelope(root)
    assert b'"hello"' in env and b'"bob" "' + b"b" * 32 + b'.anon"' in env
    assert b'"APPLICATION" "OCTET-STREAM"' in bodystructure(root, ext=True)
    assert b'"MIXED"' in bodystructure(root, ext=False)


HEADERS = st.lists(st.sampled_from([
    b"From: ", b"To: a@b, <c@d>, e", b"Date: ", b"Date: Mon, 99 Foo 2024 25:61:00 +9999", b"\xff",
    b"Subject: =?utf-8?q?x?=", b"Content-Type: text/plain; charset*=utf-8''%ff",
    b"Content-Type: multipart/alternative; boundary=q", b"--q", b"--q--", b"\r\n", b"\n", b" ",
    b"Content-Disposition: attachment; filename*0=a; filename*1=b", b"(", b'"', b"@", b":",
]), max_size=30).map(b"".join)


def test_encapsulated_messages_have_their_own_parts() -> None:
    inner = sample_message(b"inner-blob", "inner")
    outer = EmailMessage()
    outer["Subject"] = "fwd"
    outer.set_content("see below\n")
    outer.add_attachment(email.message_from_bytes(inner, policy=email.policy.SMTP))
    data = outer.as_bytes(policy=email.policy.SMTP)
    root = parse(data)
    get = {w: section(data, root, parse_items([w])[0])
           for w in ["BODY[2.HEADER.FIELDS (SUBJECT)]", "BODY[2.1]", "BODY[2.2]", "BODY[2.3]"]}
    assert get["BODY[2.HEADER.FIELDS (SUBJECT)]"] == b"Subject: inner\r\n\r\n"
    assert get["BODY[2.1]"] == b"Hi Alice,\r\nsee the attachment.\r\n"
    assert get["BODY[2.2]"] is not None and base64.b64decode(get["BODY[2.2]"]) == b"inner-blob"
    assert get["BODY[2.3]"] is None
    structure = bodystructure(root, ext=True)
    assert b'"MESSAGE" "RFC822"' in structure and b'"inner"' in structure


@given(st.binary(max_size=400) | HEADERS | COMMANDS.map(
    lambda b: b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n" + b))
def test_mime_rendering_never_fails_on_hostile_messages(data: bytes) -> None:
    root = parse(data)
    envelope(root)
    bodystructure(root, ext=True)
    for item in parse_items(["BODY[1]", "BODY[1.2.MIME]", "BODY[2.HEADER]", "BODY[TEXT]"]):
        section(data, root, item)
    keys: list[Value] = ["OR", "SENTSINCE", "1-Jan-2000", "FROM", "x", "NOT", "HEADER", "a", b"b",
                         "TEXT", b"c", "BODY", "d", "LARGER", "3", "SINCE", "1-Feb-1999"]
    compile_search(keys, 1, 1)(Candidate(1, 1, "S", False, 0.0, lambda: data))


def test_mime_nesting_is_bounded() -> None:
    data = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                    for i in range(2000))
    bodystructure(parse(data), ext=True)  # no recursion error: nesting is capped


# -- the session on hostile command sequences ----------------------------------------------

WORDS = st.sampled_from([
    "1", "1:*", "*", "2,4:3", "0", "INBOX", "Sent", "Outbox", "Nope", "Arch", "FLAGS", "+FLAGS",
    "-FLAGS.SILENT", "\\Seen", "\\Deleted", "\\Bogus", "(", ")", "BODY[]", "BODY.PEEK[1.2]",
    "BODY[HEADER.FIELDS (A)]<0.5>", "BODY[2.MIME]<9.1>", "ALL", "FAST", "UID", "NOT", "OR",
    "SINCE", "1-Jan-2020", "CHARSET", "UTF-8", "KOI8", '"x"', "{3}\r\nabc", "ENVELOPE",
    "BODYSTRUCTURE", "RFC822", "TEXT", "HEADER", '""', '"*"', "%", "NIL", "LARGER", "99999999999",
])
VERBS = st.sampled_from([
    "SELECT", "EXAMINE", "FETCH", "UID FETCH", "STORE", "UID STORE", "SEARCH", "UID SEARCH",
    "COPY", "UID MOVE", "EXPUNGE", "UID EXPUNGE", "CLOSE", "UNSELECT", "LIST", "LSUB", "STATUS",
    "APPEND", "CREATE", "DELETE", "NAMESPACE", "CHECK", "NOOP", "RENAME", "SUBSCRIBE", "BOGUS",
    "LOGIN", "CAPABILITY",
])


@settings(max_examples=max(20, settings().max_examples // 3))
@given(st.lists(st.tuples(VERBS, st.lists(WORDS, max_size=6)), min_size=1, max_size=12))
def test_session_answers_every_hostile_command(script: list[tuple[str, list[str]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        maildir = make_maildir(Path(tmp))
        deliver(maildir, sample_message(b"a", "one"))
        (maildir / "cur" / "0123abcd:2,T").write_bytes(sample_message(b"b", "two"))
        ctx = GatewayContext(ADDR, LoginGuard(ADDR, PASSWORD), Path(tmp), _submit)
        session = Session(ctx, MailStore(maildir))
        session.state = State.AUTH  # logged in (the guard needs a trio clock)
        reader = CommandReader(max_append=10_000)
        reader.authenticated = True
        for i, (verb, words) in enumerate(script):
            if verb == "LOGIN":
                continue
            reader.feed(f"t{i} {verb} {' '.join(words)}\r\n".encode())
            for ev in drain(reader):
                if isinstance(ev, Command):
                    out = b"".join(session.handle(ev))
                    assert out.endswith(b"\r\n")
                    assert re.search(rb"(^|\r\n)t%d (OK|NO|BAD) " % i, out), out[-200:]


# -- the server over loopback ---------------------------------------------------------------


def make_maildir(root: Path) -> Path:
    for folder in ("", ".Sent", ".Outbox"):
        for sub in ("cur", "new", "tmp"):
            (root / "Maildir" / folder / sub).mkdir(parents=True, exist_ok=True)
    return root / "Maildir"


async def _submit(data: bytes) -> str:
    return "<unused@anon>"


@pytest.fixture
def ctx(tmp_path: Path) -> GatewayContext:
    make_maildir(tmp_path)
    return GatewayContext(ADDR, LoginGuard(ADDR, PASSWORD), tmp_path, _submit)


@asynccontextmanager
async def running(ctx: GatewayContext, poll: float = 0.05) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve_imap("127.0.0.1", 0, ctx, task_status=task_status,
                                           poll_interval=poll))
        yield port
        nursery.cancel_scope.cancel()


async def in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(60):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def connect(port: int, login: bool = True) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=20)
    if login:
        c.login(ADDR, PASSWORD)
    return c


def ok(result: tuple[str, Any]) -> Any:
    assert result[0] == "OK", result
    return result[1]


def deliver(maildir: Path, data: bytes, name: str | None = None) -> str:
    name = name or os.urandom(20).hex()
    (maildir / "new" / name).write_bytes(data)
    return name


def code(c: imaplib.IMAP4, name: str) -> str:
    value = c.untagged_responses.get(name, [b""])[-1]
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_fetch_envelope_bodystructure_and_exact_body(ctx: GatewayContext) -> None:
    blob = os.urandom(30_000)
    data = sample_message(blob)
    name = deliver(ctx.maildir, data)

    def client(port: int) -> None:
        c = connect(port)
        assert ok(c.select("INBOX")) == [b"1"]
        resp = ok(c.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE "
                                         "INTERNALDATE BODY.PEEK[])"))
        head, body = resp[0]
        assert body == data and attachment_of(body) == blob
        assert b"RFC822.SIZE %d" % len(data) in head
        assert b'"hello"' in head and b'"APPLICATION" "OCTET-STREAM"' in head
        assert b"\\Seen" not in head  # PEEK leaves \Seen alone
        part = ok(c.uid("FETCH", "1", "(BODY.PEEK[2] BODY.PEEK[HEADER.FIELDS (Subject)])"))
        assert base64.b64decode(part[0][1]) == blob
        partial = ok(c.uid("FETCH", "1", "(BODY[]<100.50>)"))
        assert partial[0][1] == data[100:150] and b"BODY[]<100>" in partial[0][0]
        assert b"\\Seen" in b"".join(x if isinstance(x, bytes) else x[0] for x in partial)
        c.logout()

    async with running(ctx) as port:
        await in_thread(lambda: client(port))
    assert not (ctx.maildir / "new" / name).exists()
    assert (ctx.maildir / "cur" / f"{name}:2,S").read_bytes() == data


async def test_store_expunge_search_and_flags_from_other_programs(ctx: GatewayContext) -> None:
    names = [deliver(ctx.maildir, sample_message(b"x", f"m{i}")) for i in range(4)]

    def client(port: int) -> None:
        c = connect(port)
        ok(c.select("INBOX"))
        assert ok(c.uid("SEARCH", "ALL")) == [b"1 2 3 4"]
        ok(c.uid("STORE", "2", "+FLAGS", "(\\Seen)"))
        ok(c.uid("STORE", "3", "+FLAGS.SILENT", "(\\Deleted \\Flagged)"))
        assert ok(c.uid("SEARCH", "UNSEEN")) == [b"1 3 4"]
        assert ok(c.uid("SEARCH", "SEEN")) == [b"2"]
        assert ok(c.uid("SEARCH", "DELETED")) == [b"3"]
        assert ok(c.uid("SEARCH", "UID 2:3 NOT DELETED")) == [b"2"]
        assert ok(c.uid("SEARCH", "OR SUBJECT m0 SUBJECT m3")) == [b"1 4"]
        assert ok(c.uid("SEARCH", "SINCE 1-Jan-2000 BEFORE 1-Jan-2999")) == [b"1 2 3 4"]
        assert ok(c.uid("SEARCH", "SENTON 2-Jan-2024 LARGER 10")) == [b"1 2 3 4"]
        # another program (the CLI) marks message 4 read: the session learns it on NOOP
        os.rename(ctx.maildir / "cur" / f"{names[3]}:2,", ctx.maildir / "cur" / f"{names[3]}:2,S")
        c.noop()
        assert "\\Seen" in str(c.untagged_responses.pop("FETCH", []))
        assert ok(c.expunge()) == [b"3"]
        assert ok(c.uid("SEARCH", "ALL")) == [b"1 2 4"]  # UIDs survive expunges
        c.close()
        c.logout()

    async with running(ctx) as port:
        await in_thread(lambda: client(port))
    left = sorted(p.name.split(":")[0] for p in (ctx.maildir / "cur").iterdir())
    assert left == sorted([names[0], names[1], names[3]])  # the expunged file is gone


async def test_append_copy_move_list_status(ctx: GatewayContext) -> None:
    deliver(ctx.maildir, sample_message(b"y"))
    sent = b"From: " + ADDR.encode() + b"\r\nSubject: sent\r\n\r\nbody\r\n"

    def client(port: int) -> None:
        c = connect(port)
        folders = ok(c.list())
        assert any(b'"Sent"' in f for f in folders) and any(b"INBOX" in f for f in folders)
        assert ok(c.lsub()) and ok(c.namespace())
        resp = ok(c.append("Sent", "(\\Seen)", None, sent))
        assert re.match(rb"\[APPENDUID \d+ 1\]", resp[0])
        assert c.append("Outbox", None, None, sent)[0] == "NO"  # the agent's, not the client's
        assert c.append("Nope", None, None, sent)[0] == "NO"
        ok(c.create("Archive"))
        status = ok(c.status("Sent", "(MESSAGES UIDNEXT UNSEEN)"))[0]
        assert b"MESSAGES 1" in status and b"UIDNEXT 2" in status and b"UNSEEN 0" in status
        ok(c.select("INBOX"))
        ok(c.uid("COPY", "1", "Archive"))
        ok(c.uid("MOVE", "1", "Sent"))
        assert ok(c.uid("SEARCH", "ALL")) == [b""]
        ok(c.select("Archive", readonly=True))
        assert c.uid("STORE", "1", "+FLAGS", "(\\Deleted)")[0] == "NO"
        c.logout()

    async with running(ctx) as port:
        await in_thread(lambda: client(port))
    sent_files = list((ctx.maildir / ".Sent" / "cur").iterdir())
    assert len(sent_files) == 2 and sent in [p.read_bytes() for p in sent_files]
    assert any(p.name.endswith(":2,S") for p in sent_files)
    assert len(list((ctx.maildir / ".Archive" / "cur").iterdir())) == 1


async def test_uidvalidity_and_uidnext_persist_across_restarts(ctx: GatewayContext) -> None:
    first = deliver(ctx.maildir, sample_message(b"1", "one"))

    def select(port: int) -> tuple[str, str, list[bytes]]:
        c = connect(port)
        ok(c.select("INBOX"))
        v, n = code(c, "UIDVALIDITY"), code(c, "UIDNEXT")
        got = ok(c.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (Subject)])"))
        c.logout()
        return v, n, [x[0].split()[2] + x[1].strip() for x in got if isinstance(x, tuple)]

    async with running(ctx) as port:
        v1, n1, got1 = await in_thread(lambda: select(port))
    assert n1 == "2" and got1 == [b"1Subject: one"]
    os.rename(ctx.maildir / "cur" / f"{first}:2,", ctx.maildir / "cur" / f"{first}:2,S")
    deliver(ctx.maildir, sample_message(b"2", "two"))
    async with running(ctx) as port:
        v2, n2, got2 = await in_thread(lambda: select(port))
    assert v2 == v1 and n2 == "3" and got2 == [b"1Subject: one", b"2Subject: two"]


async def test_idle_reports_a_message_arriving_in_new(ctx: GatewayContext) -> None:
    def client(port: int) -> list[bytes]:
        c = connect(port)
        ok(c.select("INBOX"))
        c.send(b"i1 IDLE\r\n")
        assert c.readline().startswith(b"+")
        deliver(ctx.maildir, sample_message(b"z", "late"))
        lines = []
        while not (line := c.readline()).endswith(b"EXISTS\r\n"):
            lines.append(line)
        c.send(b"DONE\r\n")
        while not (line := c.readline()).startswith(b"i1 "):
            pass
        assert line.startswith(b"i1 OK")
        got = ok(c.uid("FETCH", "1", "(BODY.PEEK[HEADER.FIELDS (Subject)])"))
        c.logout()
        return [line, got[0][1]]

    async with running(ctx, poll=0.05) as port:
        done = await in_thread(lambda: client(port))
    assert done == [b"i1 OK IDLE terminated\r\n", b"Subject: late\r\n\r\n"]


@pytest.mark.threat("T-GW-IMAP-AUTH")
async def test_wrong_passwords_are_rate_limited_and_refused(
        ctx: GatewayContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "FIRST_LOCKOUT", 60.0)  # no race with a slow machine
    def client(port: int) -> list[str]:
        replies = []
        c = connect(port, login=False)
        for password in ["bad1", "bad2", "bad3", "bad4", PASSWORD]:
            try:
                c.login(ADDR, password)
                replies.append("OK")
            except imaplib.IMAP4.error as e:
                replies.append(str(e))
        try:  # the connection was closed after 5 failures
            c.noop()
            replies.append("still open")
        except (imaplib.IMAP4.abort, OSError):
            replies.append("closed")
        c.shutdown()
        c2 = connect(port, login=False)  # the lockout is global, not per connection
        try:
            c2.login(ADDR, PASSWORD)
            replies.append("OK")
        except imaplib.IMAP4.error as e:
            replies.append(str(e))
        c2.logout()
        return replies

    async with running(ctx) as port:
        replies = await in_thread(lambda: client(port))
    assert all("[AUTHENTICATIONFAILED]" in r for r in replies[:4])
    assert "[UNAVAILABLE]" in replies[4]  # locked out: even the right password is not checked
    assert replies[5] == "closed" and "[UNAVAILABLE]" in replies[6]


@pytest.mark.threat("T-GW-IMAP-AUTH")
async def test_nothing_is_served_before_login(ctx: GatewayContext) -> None:
    name = deliver(ctx.maildir, sample_message(b"secret"))

    def client(port: int) -> list[bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"a SELECT INBOX\r\nb FETCH 1 BODY[]\r\nc APPEND INBOX {5}\r\nhello\r\n"
                      b"d STATUS INBOX (MESSAGES)\r\ne LIST \"\" *\r\nf LOGOUT\r\n")
            return f.read().splitlines()

    async with running(ctx) as port:
        lines = await in_thread(lambda: client(port))
    assert [x.split()[:2] for x in lines] == [
        [b"a", b"BAD"], [b"b", b"BAD"], [b"+", b"ready"], [b"c", b"BAD"], [b"d", b"BAD"],
        [b"e", b"BAD"],
        [b"*", b"BYE"], [b"f", b"OK"]]
    assert (ctx.maildir / "new" / name).exists()  # not even claimed into cur/


async def test_authenticate_plain_with_and_without_initial_response(ctx: GatewayContext) -> None:
    creds = base64.b64encode(f"\0{ADDR}\0{PASSWORD}".encode())

    def client(port: int) -> None:
        c = connect(port, login=False)
        ok(c.authenticate("PLAIN", lambda _: f"\0{ADDR}\0{PASSWORD}".encode()))
        ok(c.select("INBOX"))
        c.logout()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"a AUTHENTICATE PLAIN " + creds + b"\r\n")
            assert f.readline().startswith(b"a OK")

    async with running(ctx) as port:
        await in_thread(lambda: client(port))


@pytest.mark.threat("T-GW-IMAP-LITERAL")
async def test_server_refuses_oversized_literals_and_garbage(ctx: GatewayContext) -> None:
    def client(port: int) -> list[bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"a LOGIN " + ADDR.encode() + b" " + PASSWORD.encode() + b"\r\n")
            f.readline()
            s.sendall(b"b APPEND INBOX {999999999999}\r\n")
            first = f.readline()
            s.sendall(b"c FETCH 1 (BODY[1.2.3\r\n\x00\xff junk\r\nd NOOP\r\n")
            rest = [f.readline() for _ in range(3)]
            s.sendall(b"e APPEND INBOX {999999999999+}\r\nxxxx")
            bye = f.readline()
            return [first, *rest, bye, f.read()]

    async with running(ctx) as port:
        first, bad1, bad2, noop, bye, after = await in_thread(lambda: client(port))
    assert first.startswith(b"b NO [TOOBIG]")
    assert bad1.startswith(b"c BAD") and bad2.startswith(b"* BAD") and noop.startswith(b"d OK")
    assert bye.startswith(b"* BYE") and after == b""


async def test_idle_connections_are_logged_out(ctx: GatewayContext,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imap_server, "PRE_AUTH_TIMEOUT", 0.2)

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            f = s.makefile("rb")
            f.readline()
            return f.readline()

    async with running(ctx) as port:
        assert (await in_thread(lambda: client(port))).startswith(b"* BYE autologout")


async def test_cancelling_the_server_ends_open_sessions(ctx: GatewayContext) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_imap, "127.0.0.1", 0, ctx)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(f"a LOGIN {ADDR} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n"
                                  .encode())
            got = b""
            while b"+ idling" not in got:
                got += await client.receive_some(4096)
            nursery.cancel_scope.cancel()  # as `anonmail run` does on Ctrl-C
        assert await client.receive_some(4096) == b""  # the session was closed, not left open
        await client.aclose()
