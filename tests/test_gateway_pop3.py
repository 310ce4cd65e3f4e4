"""The POP3 server (anonmail/gateway/pop3*.py, maildir_view.py): the sans-I/O session, the
Maildir view, and the server over loopback sockets with a temporary Maildir."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from test_gateway_smtp import ALICE, PASSWORD, TIMEOUT, LineClient, Recorder, make_ctx
from trio.testing import MockClock

from anonmail.gateway import pop3_protocol as pp
from anonmail.gateway.auth import FREE_FAILURES, Login
from anonmail.gateway.context import GatewayContext
from anonmail.gateway.maildir_view import MaildirView, to_crlf, uid_of
from anonmail.gateway.pop3 import IDLE_TIMEOUT, serve_pop3

HEX1, HEX2, HEX3 = "1" * 40, "2" * 40, "3" * 40
MSG1 = b"From: bob@x\nSubject: one\n\n.starts with a dot\nbody\n..two dots\nend"  # LF, no end
MSG2 = b"From: bob@x\r\nSubject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
MSG3 = b"Subject: three\n\nthird\n"


def make_maildir(root: Path) -> Path:
    """INBOX with MSG1 in new/ (as the CLI writes it), MSG2 in cur/ with flags, MSG3 in new/."""
    box = root / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    for i, (path, data) in enumerate([(box / "new" / HEX1, MSG1),
                                      (box / "cur" / f"{HEX2}:2,S", MSG2),
                                      (box / "new" / HEX3, MSG3)]):
        path.write_bytes(data)
        os.utime(path, ns=(10**18 + i, 10**18 + i))  # delivery order
    (box / "new" / ".hidden").write_bytes(b"not a message")
    (box / "cur" / "link").symlink_to(box / "new" / HEX1)
    return box


def unstuff(multiline: bytes) -> bytes:
    assert multiline.endswith(b"\r\n.\r\n") or multiline == b".\r\n"
    body = multiline[:-3]
    lines = [line[1:] if line.startswith(b".") else line for line in body.split(b"\r\n")]
    return b"\r\n".join(lines)


# -- pure parts ---------------------------------------------------------------------------------


def test_uids_ignore_the_maildir_info_and_odd_names_are_hashed() -> None:
    assert uid_of(HEX1) == HEX1 and uid_of(f"{HEX1}:2,RS") == HEX1
    assert uid_of("1700000000.M1P2.host,S=12:2,") == "1700000000.M1P2.host,S=12"
    odd = uid_of("with space:2,S")
    assert odd == uid_of("with space") and odd.startswith("h") and len(odd) == 41
    assert len(uid_of("x" * 100)) == 41


@given(st.binary(max_size=300))
def test_stuffing_round_trips_and_keeps_the_terminator_unique(data: bytes) -> None:
    crlf = to_crlf(data)
    assert b"\n" not in crlf.replace(b"\r\n", b"")
    sent = pp.stuffed(crlf) + b".\r\n"
    assert unstuff(sent) == crlf
    assert sent.find(b"\r\n.\r\n") in (len(sent) - 5, -1)
    assert not sent[:-3].startswith(b".\r\n")


def test_top_gives_the_header_and_n_body_lines() -> None:
    crlf = to_crlf(MSG2)
    assert pp.top(crlf, 0) == b"From: bob@x\r\nSubject: two\r\n\r\n"
    assert pp.top(crlf, 2) == b"From: bob@x\r\nSubject: two\r\n\r\nline 1\r\nline 2\r\n"
    assert pp.top(crlf, 99) == crlf
    assert pp.top(b"Subject: no body\r\n", 3) == b"Subject: no body\r\n"


def test_the_view_lists_cur_and_new_with_crlf_sizes(tmp_path: Path) -> None:
    box = make_maildir(tmp_path)
    view = MaildirView(box)
    listed = view.messages()
    assert [m.uid for m in listed] == [HEX1, HEX2, HEX3]  # no dot file, no symbolic link
    assert [m.size for m in listed] == [len(to_crlf(m)) for m in (MSG1, MSG2, MSG3)]
    os.rename(box / "new" / HEX1, box / "cur" / f"{HEX1}:2,S")  # another client read it
    assert view.read(HEX1) == MSG1 and [m.uid for m in view.messages()] == [HEX1, HEX2, HEX3]
    assert view.delete(HEX1) and not view.delete(HEX1) and view.read(HEX1) is None
    assert sorted(os.listdir(box / "cur")) == [f"{HEX2}:2,S", "link"]


# -- the sans-I/O session -----------------------------------------------------------------------

MAILDROP = {HEX1: MSG1, HEX2: MSG2}


def check_login(user: str, password: str) -> Login:
    return Login.OK if user == ALICE and password == PASSWORD else Login.WRONG


def run(chunks: Iterable[bytes], login: Callable[[str, str], Login] = check_login,
        ) -> tuple[bytes, list[pp.Commit], pp.Pop3Session]:
    """Drive a session as pop3.py does, over MAILDROP."""
    session = pp.Pop3Session()
    out, commits = bytearray(), []
    pending = iter(chunks)
    while True:
        event = session.next_event()
        out += session.data_to_send()
        if isinstance(event, pp.NeedData):
            chunk = next(pending, None)
            if chunk is None:
                break
            session.receive_data(chunk)
        elif isinstance(event, pp.AuthAttempt):
            result = login(event.user, event.password)
            if result is Login.OK:
                session.auth_ok([(uid, len(to_crlf(d))) for uid, d in MAILDROP.items()])
            else:
                session.auth_refused(result)
        elif isinstance(event, pp.Retrieve):
            session.message(MAILDROP.get(event.uid))
        elif isinstance(event, pp.Commit):
            commits.append(event)
            session.committed(0)
        else:
            break
    out += session.data_to_send()
    return bytes(out), commits, session


USERPASS = f"USER {ALICE}\r\nPASS {PASSWORD}\r\n"


def statuses(out: bytes) -> list[str]:
    return [line.split(b" ")[0].decode() for line in out.split(b"\r\n")
            if line.startswith((b"+OK", b"-ERR"))]


def test_a_whole_session_pipelined_in_one_chunk() -> None:
    script = (USERPASS + "CAPA\r\nSTAT\r\nLIST\r\nUIDL 2\r\nRETR 1\r\nTOP 2 1\r\nDELE 1\r\n"
              "RETR 1\r\nLIST 1\r\nRSET\r\nDELE 2\r\nNOOP\r\nQUIT\r\n")
    out, commits, session = run([script.encode()])
    size1, size2 = len(to_crlf(MSG1)), len(to_crlf(MSG2))
    assert f"+OK {2} {size1 + size2}\r\n".encode() in out
    assert f"+OK Scan listing follows\r\n1 {size1}\r\n2 {size2}\r\n.\r\n".encode() in out
    assert f"+OK 2 {HEX2}\r\n".encode() in out
    assert b"IMPLEMENTATION anonmail\r\n.\r\n" in out and b"\r\nPIPELINING\r\n" in out
    retr = out.split(f"+OK {size1} octets\r\n".encode(), 1)[1]
    assert retr.startswith(b"From: bob@x\r\nSubject: one\r\n\r\n..starts with a dot\r\nbody\r\n"
                           b"...two dots\r\nend\r\n.\r\n")
    assert (b"+OK Top of message follows\r\nFrom: bob@x\r\nSubject: two\r\n\r\nline 1\r\n"
            b".\r\n") in out
    assert out.count(b"-ERR Message 1 already deleted") == 2
    assert commits == [pp.Commit((HEX2,))]  # RSET undid DELE 1
    assert out.endswith(b"+OK anonmail POP3 server signing off (1 messages left)\r\n")
    assert session.state is pp.State.CLOSED


@given(st.lists(st.integers(1, 30), min_size=1, max_size=40))
def test_any_chunking_gives_the_same_replies(cuts: list[int]) -> None:
    script = (USERPASS + "STAT\r\nRETR 1\r\nTOP 2 0\r\nDELE 2\r\nUIDL\r\nQUIT\r\n").encode()
    whole, whole_commits, _ = run([script])
    chunks, pos, i = [], 0, 0
    while pos < len(script):
        chunks.append(script[pos:pos + cuts[i % len(cuts)]])
        pos += cuts[i % len(cuts)]
        i += 1
    out, commits, _ = run(chunks)
    assert out == whole and commits == whole_commits == [pp.Commit((HEX2,))]


@given(st.binary(max_size=2000), st.booleans())
def test_hostile_bytes_never_raise_and_cost_a_bounded_amount(data: bytes, login: bool) -> None:
    out, _, session = run([USERPASS.encode() if login else b"", data, data])
    # RETR answers with a whole message: bound by the maildrop, not by the input
    assert len(out) <= 300 + 60 * len(data) + (1 + 2 * len(data)) * (len(MSG1) + len(MSG2))
    assert session._lines.buffered <= pp.MAX_LINE


def test_nothing_is_served_before_login() -> None:
    script = "STAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nTOP 1 1\r\nUIDL\r\nPASS x\r\nQUIT\r\n"
    out, commits, _ = run([script.encode()])
    assert statuses(out) == ["+OK"] + ["-ERR"] * 7 + ["+OK"]
    assert b"-ERR Not logged in" in out and not commits  # QUIT here deletes nothing


@pytest.mark.parametrize(("result", "text"), [
    (Login.WRONG, b"-ERR [AUTH] Invalid user name or password"),
    (Login.LOCKED, b"-ERR [AUTH] Too many failed logins: try again later")])
def test_failed_logins(result: Login, text: bytes) -> None:
    out, _, session = run([(USERPASS + "STAT\r\n").encode()], login=lambda u, p: result)
    assert text in out and statuses(out)[-1] == "-ERR"
    assert session.state is pp.State.AUTHORIZATION


def test_auth_plain_with_and_without_initial_response() -> None:
    plain = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    out, _, session = run([f"AUTH\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n{plain}\r\n".encode()])
    assert b"+OK Mechanisms follow\r\nPLAIN\r\n.\r\n" in out and b"\r\n+ \r\n" in out
    assert session.state is pp.State.TRANSACTION and b"-ERR Authentication cancelled" in out
    out, _, session = run([f"AUTH PLAIN {plain}\r\nAUTH PLAIN {plain}\r\n".encode()])
    assert statuses(out) == ["+OK", "+OK", "-ERR"]  # already logged in
    out, _, session = run([b"AUTH PLAIN %%%\r\nAUTH CRAM-MD5\r\n"])
    assert statuses(out) == ["+OK", "-ERR", "-ERR"]


@pytest.mark.parametrize("command", ["RETR 0", "RETR 3", "RETR x", "DELE 99999999999",
                                     "TOP 1", "TOP 1 x", "LIST 1 2", "STAT 1", "BOGUS"])
def test_bad_arguments_get_err(command: str) -> None:
    out, commits, _ = run([(USERPASS + command + "\r\nQUIT\r\n").encode()])
    assert statuses(out) == ["+OK", "+OK", "+OK", "-ERR", "+OK"] and commits == [pp.Commit(())]


def test_long_lines_and_too_many_errors() -> None:
    out, _, session = run([b"x" * 5000 + b"\r\n" + b"NOOP\r\n" * 30])
    assert b"-ERR Line too long\r\n" in out and session.state is pp.State.CLOSED
    assert out.endswith(b"-ERR Too many errors: closing connection\r\n")


# -- the server over loopback -----------------------------------------------------------------


@asynccontextmanager
async def pop3_server(ctx: GatewayContext) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_pop3, "127.0.0.1", 0, ctx)
        yield port
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[LineClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        client = LineClient(stream)
        assert (await client.line()).startswith(b"+OK")
        yield client


async def cmd(client: LineClient, text: str) -> bytes:
    await client.send(text + "\r\n")
    return await client.line()


async def multiline(client: LineClient) -> bytes:
    out = bytearray()
    while not out.endswith(b"\r\n.\r\n") and out != b".\r\n":
        out += await client.line()
    return bytes(out)


async def login(client: LineClient) -> bytes:
    assert (await cmd(client, f"USER {ALICE}")).startswith(b"+OK")
    return await cmd(client, f"PASS {PASSWORD}")


async def uidl(client: LineClient) -> list[str]:
    assert (await cmd(client, "UIDL")).startswith(b"+OK")
    return [line.split()[1] for line in (await multiline(client)).decode().splitlines()[:-1]]


async def test_retrieve_and_delete_over_loopback(tmp_path: Path) -> None:
    box = make_maildir(tmp_path)
    with trio.fail_after(TIMEOUT):
        async with pop3_server(make_ctx(tmp_path, Recorder())) as port:
            async with connect(port) as client:
                assert await login(client) == b"+OK Logged in, 3 messages\r\n"
                assert await uidl(client) == [HEX1, HEX2, HEX3]
                size = len(to_crlf(MSG1))
                assert await cmd(client, "RETR 1") == f"+OK {size} octets\r\n".encode()
                assert unstuff(await multiline(client)) == to_crlf(MSG1)
                assert (await cmd(client, "DELE 1")).startswith(b"+OK")
                assert (await cmd(client, "QUIT")).startswith(b"+OK")
                assert await client.closed()
            assert not (box / "new" / HEX1).exists()
            os.rename(box / "new" / HEX3, box / "cur" / f"{HEX3}:2,RS")
            async with connect(port) as client:  # UIDs are the same in a new session
                await login(client)
                assert await uidl(client) == [HEX2, HEX3]
                assert await cmd(client, "STAT") == (
                    f"+OK 2 {len(to_crlf(MSG2)) + len(to_crlf(MSG3))}\r\n".encode())


async def test_deletion_only_on_quit_and_one_session_at_a_time(tmp_path: Path) -> None:
    box = make_maildir(tmp_path)
    with trio.fail_after(TIMEOUT):
        async with pop3_server(make_ctx(tmp_path, Recorder())) as port:
            async with connect(port) as first:
                assert (await login(first)).startswith(b"+OK")
                assert (await cmd(first, "DELE 1")).startswith(b"+OK")
                async with connect(port) as second:
                    assert await login(second) == (
                        b"-ERR [IN-USE] The maildrop is in use by another session\r\n")
            # the first connection broke off without QUIT: nothing deleted, lock released
            await trio.testing.wait_all_tasks_blocked()
            assert (box / "new" / HEX1).exists()
            async with connect(port) as client:  # never logs in
                for command in ("RETR 1", "DELE 1", "LIST", "QUIT"):
                    assert (await cmd(client, command)).startswith(
                        b"+OK" if command == "QUIT" else b"-ERR")
            async with connect(port) as client:
                assert (await login(client)).startswith(b"+OK Logged in, 3")
    assert sorted(os.listdir(box / "new")) == [".hidden", HEX1, HEX3]


async def test_garbage_is_refused_and_the_server_keeps_serving(tmp_path: Path) -> None:
    box = make_maildir(tmp_path)
    with trio.fail_after(TIMEOUT):
        async with pop3_server(make_ctx(tmp_path, Recorder())) as port:
            async with connect(port) as client:
                await client.send(b"RETR 1" + b"x" * 100_000 + b"\r\n")
                assert await client.line() == b"-ERR Line too long\r\n"
                garbage = bytes(b for b in range(256) if b not in b"\r\n") + b"\r\n"
                await client.send(garbage * (pp.MAX_ERRORS - 1))  # the last one is the 20th
                assert await client.closed()  # 20 errors: hung up
                assert client.buf.count(b"-ERR") == pp.MAX_ERRORS  # 19, then good-bye
            async with connect(port) as client:
                assert (await login(client)).startswith(b"+OK Logged in, 3")
    assert len(list((box / "new").iterdir())) == 3


@pytest.fixture
def flowing_clock() -> MockClock:
    return MockClock(rate=1.0)


async def test_password_guessing_is_locked_out(tmp_path: Path, flowing_clock: MockClock) -> None:
    make_maildir(tmp_path)
    with trio.fail_after(10 + TIMEOUT):  # the jump below moves this clock too
        async with pop3_server(make_ctx(tmp_path, Recorder())) as port:
            async with connect(port) as client:
                for guess in range(FREE_FAILURES + 1):
                    assert (await cmd(client, f"USER {ALICE}")).startswith(b"+OK")
                    assert await cmd(client, f"PASS guess{guess}") == (
                        b"-ERR [AUTH] Invalid user name or password\r\n")
                assert await login(client) == (
                    b"-ERR [AUTH] Too many failed logins: try again later\r\n")
                assert (await cmd(client, "RETR 1")).startswith(b"-ERR Not logged in")
            flowing_clock.jump(10)
            async with connect(port) as client:
                assert (await login(client)).startswith(b"+OK Logged in")


async def test_an_idle_session_is_closed_without_update(tmp_path: Path,
                                                        flowing_clock: MockClock) -> None:
    box = make_maildir(tmp_path)
    with trio.fail_after(IDLE_TIMEOUT + TIMEOUT):  # the jump below moves this clock too
        async with pop3_server(make_ctx(tmp_path, Recorder())) as port:
            async with connect(port) as client:
                await login(client)
                assert (await cmd(client, "DELE 2")).startswith(b"+OK")
                await trio.testing.wait_all_tasks_blocked()
                flowing_clock.jump(IDLE_TIMEOUT + 1)
                assert await client.closed() and not client.buf
            async with connect(port) as client:  # and the lock was released
                assert (await login(client)).startswith(b"+OK Logged in, 3")
    assert (box / "cur" / f"{HEX2}:2,S").exists()
