"""The SMTP submission server (anonmail/gateway/smtp*.py): the sans-I/O session, the envelope
rule, and the server over loopback sockets, with hostile clients.

Also holds the helpers the POP3 and real-client tests share (addresses, a recording `submit`,
a gateway context, a line-oriented test client)."""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from anonmail.errors import UserError
from anonmail.gateway import smtp_protocol as sp
from anonmail.gateway.auth import FREE_FAILURES, Login, LoginGuard
from anonmail.gateway.context import GatewayContext
from anonmail.gateway.lines import LineReader, TooLong
from anonmail.gateway.smtp import IDLE_TIMEOUT, MAX_CONNECTIONS, serve_smtp
from anonmail.gateway.smtp_message import EnvelopeError, envelope_message
from anonmail.records.certs import anon_address

ALICE = anon_address("alice", bytes(32))
BOB = anon_address("bob", bytes([1]) * 32)
CAROL = anon_address("carol", bytes([2]) * 32)
PASSWORD = "correct horse battery"
TIMEOUT = 20  # seconds: any test conversation is far shorter


def message(to: Iterable[str] = (BOB,), cc: Iterable[str] = (), bcc: Iterable[str] = (),
            body: bytes = b"Hello Bob.\r\n", sender: str = ALICE) -> bytes:
    head = [f"From: {sender}", f"To: {', '.join(to)}", "Subject: test"]
    if cc := list(cc):
        head.append(f"Cc: {', '.join(cc)}")
    if bcc := list(bcc):
        head.append(f"Bcc: {', '.join(bcc)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Recorder:
    """A fake `ctx.submit`: records what it got; refuses a message with `X-Refuse` like the
    agent refuses one (UserError), and fails like a bug on `X-Crash`."""

    got: list[bytes] = field(default_factory=list)

    async def submit(self, data: bytes) -> str:
        if b"X-Refuse:" in data:
            raise UserError("the From address must be your own\nsecond line")
        if b"X-Crash:" in data:
            raise RuntimeError("a bug")
        self.got.append(data)
        return f"<m{len(self.got)}@anon>"


def make_ctx(root: Path, recorder: Recorder, max_size: int = 1 << 20) -> GatewayContext:
    return GatewayContext(ALICE, LoginGuard(ALICE, PASSWORD), root, recorder.submit, max_size)


class LineClient:
    """A minimal line-oriented client for SMTP and POP3 tests."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(bytes(self.buf))
            self.buf += data
        end = self.buf.index(b"\r\n") + 2
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out

    async def reply(self) -> tuple[int, str]:
        """One SMTP reply (multi-line joined): (code, text of the last line)."""
        while True:
            line = (await self.line()).decode()
            if line[3:4] != "-":
                return int(line[:3]), line[4:].rstrip("\r\n")

    async def send(self, data: bytes | str) -> None:
        await self.stream.send_all(data.encode() if isinstance(data, str) else data)

    async def cmd(self, text: str) -> tuple[int, str]:
        await self.send(text + "\r\n")
        return await self.reply()

    async def closed(self) -> bool:
        """Everything left until the server closes; True if it did close."""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return True
            self.buf += data


# -- the sans-I/O session ---------------------------------------------------------------------


def check_login(user: str, password: str) -> Login:
    return Login.OK if user.lower() == ALICE.lower() and password == PASSWORD else Login.WRONG


def run(chunks: Iterable[bytes], *, login: Callable[[str, str], Login] = check_login,
        max_size: int = 1 << 20) -> tuple[bytes, list[sp.Submit], sp.SmtpSession]:
    """Drive a session the way smtp.py does; every Submit is accepted."""
    session = sp.SmtpSession(ALICE, max_size)
    out, submitted = bytearray(), []
    pending = iter(chunks)
    while True:
        event = session.next_event()
        out += session.data_to_send()
        if isinstance(event, sp.NeedData):
            chunk = next(pending, None)
            if chunk is None:
                break
            session.receive_data(chunk)
        elif isinstance(event, sp.AuthAttempt):
            session.auth_result(login(event.user, event.password))
        elif isinstance(event, sp.Submit):
            submitted.append(event)
            session.submitted(f"<m{len(submitted)}@anon>")
        else:
            break
    out += session.data_to_send()
    return bytes(out), submitted, session


def codes(out: bytes) -> list[int]:
    """The code of every complete reply in `out` (continuation lines skipped)."""
    return [int(line[:3]) for line in out.split(b"\r\n") if line[3:4] == b" "]


AUTH = "AUTH PLAIN " + base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
LOGIN = f"EHLO client\r\n{AUTH}\r\n"


def transaction(data: bytes, rcpts: Iterable[str] = (BOB,)) -> bytes:
    """MAIL, RCPT..., DATA, the data as given (already stuffed) and the end of data."""
    lines = [f"MAIL FROM:<{ALICE}>"] + [f"RCPT TO:<{r}>" for r in rcpts] + ["DATA"]
    return ("\r\n".join(lines) + "\r\n").encode() + data + b".\r\n"


def test_greeting_ehlo_advertises_submission_extensions() -> None:
    out, _, _ = run([b"EHLO client\r\n"])
    assert out.startswith(b"220 localhost ")
    lines = out.decode().split("\r\n")
    assert lines[1:8] == ["250-localhost", "250-SIZE 1048576", "250-8BITMIME",
                          "250-AUTH PLAIN LOGIN", "250-PIPELINING", "250 ENHANCEDSTATUSCODES", ""]


def test_a_whole_submission_pipelined_in_one_chunk() -> None:
    data = message(body=b"..leading dot\r\nline\r\n")
    script = (LOGIN.encode() + transaction(data.replace(b"\r\n.", b"\r\n..")) + b"QUIT\r\n")
    out, submitted, _ = run([script])
    assert codes(out) == [220, 250, 235, 250, 250, 354, 250, 221]
    assert b"250 2.0.0 OK queued as <m1@anon>" in out
    assert [s.data for s in submitted] == [data]  # unstuffed, CRLF, nothing added
    assert submitted[0].recipients == (BOB,)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=60))
def test_any_chunking_gives_the_same_replies_and_messages(cuts: list[int]) -> None:
    script = (LOGIN.encode() + transaction(message(body=b"..x\r\n.\r\n\r\n.y\r\n"))
              + b"NOOP\r\nRSET\r\n" + transaction(b"bad\n.\n") + b"QUIT\r\n")
    whole_out, whole_sub, _ = run([script])
    chunks, pos = [], 0
    for n in itertools.cycle(cuts):
        if pos >= len(script):
            break
        chunks.append(script[pos:pos + n])
        pos += n
    out, submitted, _ = run(chunks)
    assert out == whole_out and [s.data for s in submitted] == [s.data for s in whole_sub]
    assert len(submitted) == 1  # the second message has bare LFs


@given(st.binary(max_size=3000), st.booleans())
def test_hostile_bytes_never_raise_and_cost_a_bounded_amount(data: bytes, login: bool) -> None:
    out, _, session = run([LOGIN.encode() if login else b"", data, data])
    assert len(out) <= 200 + 40 * (2 * len(data) + len(LOGIN))
    assert session._lines.buffered <= sp.MAX_LINE


def test_commands_before_auth_get_530_and_nothing_is_submitted() -> None:
    script = ("EHLO c\r\nMAIL FROM:<" + ALICE + ">\r\nRCPT TO:<" + BOB + ">\r\nDATA\r\n"
              "VRFY bob\r\nHELP\r\nNOOP\r\nRSET\r\nQUIT\r\n")
    out, submitted, _ = run([script.encode()])
    assert codes(out) == [220, 250, 530, 530, 530, 530, 530, 250, 250, 221]
    assert b"530 5.7.0 Authentication required" in out and not submitted


@pytest.mark.parametrize(("result", "reply"), [
    (Login.WRONG, b"535 5.7.8 "), (Login.LOCKED, b"454 4.7.0 Too many failed logins: try again")])
def test_failed_logins_are_refused(result: Login, reply: bytes) -> None:
    out, _, session = run([(LOGIN + f"MAIL FROM:<{ALICE}>\r\n").encode()],
                          login=lambda u, p: result)
    assert reply in out and codes(out)[-1] == 530 and not session.authenticated


def test_auth_login_and_plain_challenges_and_cancel() -> None:
    user, password = (base64.b64encode(x.encode()).decode() for x in (ALICE, PASSWORD))
    script = (f"EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n{user}\r\n{password}\r\n"
              "AUTH PLAIN\r\n").encode()
    out, _, session = run([script])
    assert b"334 \r\n" in out and b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n" in out
    assert codes(out) == [220, 250, 334, 501, 334, 334, 235, 503]  # no second AUTH
    out, _, session = run([b"EHLO c\r\nAUTH PLAIN !!notbase64\r\nAUTH CRAM-MD5\r\n"])
    assert codes(out)[2:] == [501, 504] and not session.authenticated


def test_sender_must_be_the_logged_in_address() -> None:
    script = (LOGIN + f"MAIL FROM:<{BOB}>\r\nMAIL FROM:<>\r\nMAIL FROM:{ALICE}\r\n"
              f"MAIL FROM:<{ALICE.upper()}>\r\n").encode()
    out, _, _ = run([script])
    assert codes(out)[3:] == [553, 553, 501, 250]


@pytest.mark.parametrize(("params", "code"), [
    ("SIZE=1048576 BODY=8BITMIME", 250), ("SIZE=1048577", 552), ("SIZE=x", 501),
    ("AUTH=<>", 250), ("NOTIFY=NEVER", 555), ("BODY=BINARYMIME", 501)])
def test_mail_parameters(params: str, code: int) -> None:
    out, _, _ = run([(LOGIN + f"MAIL FROM:<{ALICE}> {params}\r\n").encode()])
    assert codes(out)[-1] == code


def test_only_anonmail_recipients_and_at_most_100() -> None:
    others = [anon_address(f"u{i}", bytes([i]) * 32) for i in range(3, 104)]
    script = (LOGIN + f"MAIL FROM:<{ALICE}>\r\nRCPT TO:<someone@example.com>\r\n"
              + "".join(f"RCPT TO:<{r}>\r\n" for r in others)).encode()
    out, _, session = run([script])
    assert (b"550 5.7.1 Not an anonmail address: this gateway relays only to anonmail "
            b"addresses\r\n") in out
    assert codes(out)[4:] == [550] + [250] * 100 + [452]
    assert len(session.recipients) == sp.MAX_RECIPIENTS


SMUGGLING = {  # data after "DATA", each followed later by the real CRLF.CRLF end
    "LF.LF": b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<a@b>\r\n",
    "CR.CR": b"Subject: x\r\n\r\nhello\r.\rMAIL FROM:<a@b>\r\n",
    "LF.CRLF": b"Subject: x\r\n\r\nhello\n.\r\nRCPT TO:<a@b>\r\n",
    "CRLF.LF": b"Subject: x\r\n\r\nhello\r\n.\nDATA\r\n",
    "CR.CRLF": b"Subject: x\r\n\r\nhello\r.\r\n",
    "bare LF": b"Subject: x\r\n\r\nhello\nworld\r\n",
    "bare CR": b"Subject: x\r\n\r\nhello\rworld\r\n",
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_bare_cr_or_lf_refuses_the_message_at_the_real_end(data: bytes) -> None:
    out, submitted, _ = run([LOGIN.encode() + transaction(data) + b"NOOP\r\n"])
    assert b"554 5.6.0 Message refused: bare CR or LF" in out
    assert codes(out)[-2:] == [554, 250]  # the smuggled commands were data; NOOP a command
    assert not submitted


@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b".\r\n", b"\r\n.\r\n"]),
                max_size=12))
def test_the_end_is_the_first_crlf_dot_crlf_and_bare_newlines_refuse(parts: list[bytes]) -> None:
    """A model of the rule: after DATA's CRLF, data ends at the first CRLF "." CRLF; what
    comes before is refused if it holds a bare CR or LF, else submitted, unstuffed."""
    data = message() + b"".join(parts) + b"\r\n.\r\n"
    stream = b"\r\n" + data
    content = stream[2:stream.find(b"\r\n.\r\n") + 2]
    out, submitted, _ = run([LOGIN.encode() + transaction(b"")[:-3] + data])
    if re.search(rb"\r(?!\n)|(?<!\r)\n", content):
        assert not submitted and b"554 5.6.0 Message refused: bare CR or LF" in out
    else:
        lines = content.split(b"\r\n")[:-1]
        unstuffed = b"".join((x[1:] if x.startswith(b".") else x) + b"\r\n" for x in lines)
        assert [s.data for s in submitted] == [unstuffed]


def test_a_data_line_over_1000_octets_refuses_the_message_without_buffering_it() -> None:
    long_line = b"x" * 999 + b"\r\n"  # 1001 octets with CRLF
    chunks = [LOGIN.encode() + transaction(b"")[:-3]] + [long_line[i:i + 100]
                                                          for i in range(0, 1001, 100)]
    out, submitted, _ = run([*chunks, b".\r\n", b"NOOP\r\n"])
    assert b"500 5.5.2 Message refused: a line is longer than 1000 octets" in out
    assert codes(out)[-1] == 250 and not submitted
    _, submitted, _ = run([LOGIN.encode() + transaction(message(body=b"x" * 998 + b"\r\n"))])
    assert len(submitted) == 1  # exactly 1000 octets is allowed


def test_a_message_over_size_is_refused_552() -> None:
    out, submitted, _ = run([LOGIN.encode() + transaction(message(body=b"y" * 900 + b"\r\n"))],
                            max_size=800)
    assert b"552 5.3.4 " in out and not submitted


def test_a_command_line_over_the_limit_is_refused_and_never_buffered() -> None:
    session = sp.SmtpSession(ALICE, 1000)
    for _ in range(1000):  # a megabyte without a line end
        session.receive_data(b"A" * 1000)
        assert isinstance(session.next_event(), sp.NeedData)
        assert session._lines.buffered < sp.MAX_LINE
    session.receive_data(b"\r\nNOOP\r\n")
    assert isinstance(session.next_event(), sp.NeedData)
    assert session.data_to_send().endswith(b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n")


def test_too_many_errors_end_the_connection() -> None:
    out, _, session = run([b"BOGUS\r\n" * 30])
    assert codes(out) == [220] + [500] * 19 + [421] and session.state is sp.State.CLOSED


def test_line_reader_reports_the_line_end_of_a_discarded_line() -> None:
    reader = LineReader(10)
    reader.feed(b"x" * 20 + b"\r")
    assert reader.next_line() is None
    reader.feed(b"\nshort\n")
    assert reader.next_line() == TooLong(crlf=True)
    assert reader.next_line() == b"short\n"


# -- envelope vs headers ----------------------------------------------------------------------


def test_envelope_recipients_missing_from_the_headers_become_bcc() -> None:
    data = message(to=[BOB], bcc=["someone@example.com"])
    out = envelope_message(data, [BOB, CAROL])
    parsed = message_from_bytes(out)
    assert parsed.get_all("Bcc") == [CAROL] and parsed["To"] == BOB
    assert out.endswith(b"\r\n\r\nHello Bob.\r\n")
    assert envelope_message(message(to=[BOB], cc=[CAROL]), [BOB, CAROL]) == message(
        to=[BOB], cc=[CAROL])  # already matching: unchanged
    assert b"Bcc" not in envelope_message(message(to=[BOB], bcc=[CAROL]), [BOB])


def test_a_header_recipient_outside_the_envelope_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="not an RCPT TO recipient"):
        envelope_message(message(to=[BOB, CAROL]), [BOB])
    with pytest.raises(EnvelopeError, match="From"):
        envelope_message(b"To: " + BOB.encode() + b"\r\n\r\nno sender\r\n", [BOB])


def test_the_submitted_message_names_every_envelope_recipient() -> None:
    script = LOGIN.encode() + transaction(message(to=[BOB]), rcpts=[BOB, CAROL, BOB])
    out, submitted, _ = run([script])
    assert submitted[0].recipients == (BOB, CAROL)
    assert message_from_bytes(submitted[0].data)["Bcc"] == CAROL
    out, submitted, _ = run([LOGIN.encode() + transaction(message(to=[BOB, CAROL]))])
    assert b"554 5.6.0 the To/Cc headers name an address" in out and not submitted


# -- the server over loopback -----------------------------------------------------------------


@asynccontextmanager
async def smtp_server(ctx: GatewayContext) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_smtp, "127.0.0.1", 0, ctx)
        yield port
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect(port: int, greeting: int = 220) -> AsyncIterator[LineClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        client = LineClient(stream)
        assert (await client.reply())[0] == greeting
        yield client


async def login(client: LineClient) -> None:
    assert (await client.cmd("EHLO test"))[0] == 250
    assert (await client.cmd(AUTH))[0] == 235


async def send_message(client: LineClient, data: bytes) -> tuple[int, str]:
    for cmd in (f"MAIL FROM:<{ALICE}>", f"RCPT TO:<{BOB}>"):
        assert (await client.cmd(cmd))[0] == 250
    assert (await client.cmd("DATA"))[0] == 354
    await client.send(data)
    return await client.reply()


async def still_serving(port: int, recorder: Recorder) -> None:
    """A fresh, well-behaved connection is served to the end."""
    before = len(recorder.got)
    async with connect(port) as client:
        await login(client)
        assert (await send_message(client, message() + b".\r\n"))[0] == 250
        assert (await client.cmd("QUIT"))[0] == 221
    assert len(recorder.got) == before + 1


async def test_submission_over_loopback(tmp_path: Path) -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        async with smtp_server(make_ctx(tmp_path, recorder)) as port, connect(port) as client:
            await login(client)
            code, text = await send_message(client, message() + b".\r\n")
            assert (code, text) == (250, "2.0.0 OK queued as <m1@anon>")
            refused = message().replace(b"Subject", b"X-Refuse: 1\r\nSubject")
            code, text = await send_message(client, refused + b".\r\n")
            assert (code, text) == (554, "5.6.0 the From address must be your own")
            crash = message().replace(b"Subject", b"X-Crash: 1\r\nSubject")
            code, _ = await send_message(client, crash + b".\r\n")
            assert code == 451  # the agent's bug: temporary, and the connection lives on
            assert (await client.cmd("NOOP"))[0] == 250
    assert recorder.got == [message()]


async def test_hostile_clients_are_refused_and_the_server_keeps_serving(tmp_path: Path) -> None:
    recorder = Recorder()
    ctx = make_ctx(tmp_path, recorder, max_size=4096)
    with trio.fail_after(TIMEOUT):
        async with smtp_server(ctx) as port:
            async with connect(port) as client:  # smuggling
                await login(client)
                code, _ = await send_message(client, SMUGGLING["LF.CRLF"] + b".\r\n")
                assert code == 554
            async with connect(port) as client:  # an oversized message, by SIZE and by data
                await login(client)
                assert (await client.cmd(f"MAIL FROM:<{ALICE}> SIZE=4097"))[0] == 552
                code, _ = await send_message(client, message(body=b"z" * 990 + b"\r\n") * 5
                                             + b".\r\n")
                assert code == 552
            async with connect(port) as client:  # a line over the limit, then garbage
                await client.send(b"x" * 100_000 + b"\r\n")
                assert (await client.reply())[0] == 500
                await client.send(bytes(b for b in range(256) if b not in b"\r\n") * 5 + b"\r\n")
                assert (await client.reply())[0] == 500
            async with connect(port) as client:  # relaying elsewhere
                await login(client)
                assert (await client.cmd(f"MAIL FROM:<{ALICE}>"))[0] == 250
                assert await client.cmd("RCPT TO:<victim@example.com>") == (
                    550, "5.7.1 Not an anonmail address: this gateway relays only to anonmail "
                         "addresses")
                assert (await client.cmd("DATA"))[0] == 554
            await still_serving(port, recorder)
    assert recorder.got == [message()]


async def test_a_client_that_never_logs_in_gets_nothing_done(tmp_path: Path) -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        async with smtp_server(make_ctx(tmp_path, recorder)) as port:
            async with connect(port) as client:
                assert (await client.cmd("EHLO x"))[0] == 250
                for cmd in (f"MAIL FROM:<{ALICE}>", f"RCPT TO:<{BOB}>", "DATA", "VRFY bob"):
                    assert (await client.cmd(cmd))[0] == 530
                await client.send(message() + b".\r\n")  # as commands: all refused
                assert {(await client.reply())[0] for _ in range(5)} <= {500, 530}
            await still_serving(port, recorder)
    assert len(recorder.got) == 1


@pytest.fixture
def flowing_clock() -> MockClock:
    """Virtual time that also flows (so fail_after works) and can be jumped ahead."""
    return MockClock(rate=1.0)


async def test_password_guessing_is_locked_out(tmp_path: Path, flowing_clock: MockClock) -> None:
    recorder = Recorder()
    with trio.fail_after(10 + TIMEOUT):  # the jump below moves this clock too
        async with smtp_server(make_ctx(tmp_path, recorder)) as port, connect(port) as client:
            assert (await client.cmd("EHLO x"))[0] == 250
            for guess in range(FREE_FAILURES + 1):
                wrong = base64.b64encode(f"\0{ALICE}\0guess{guess}".encode()).decode()
                assert (await client.cmd(f"AUTH PLAIN {wrong}"))[0] == 535
            # locked out: even the right password is not checked
            assert await client.cmd(AUTH) == (454, "4.7.0 Too many failed logins: try again "
                                                    "later")
            assert (await client.cmd(f"MAIL FROM:<{ALICE}>"))[0] == 530
            flowing_clock.jump(10)
            assert (await client.cmd(AUTH))[0] == 235
            assert (await send_message(client, message() + b".\r\n"))[0] == 250


async def test_an_idle_connection_is_closed(tmp_path: Path, flowing_clock: MockClock) -> None:
    with trio.fail_after(IDLE_TIMEOUT + TIMEOUT):  # the jump below moves this clock too
        async with smtp_server(make_ctx(tmp_path, Recorder())) as port, connect(port) as client:
            await login(client)
            await trio.testing.wait_all_tasks_blocked()
            flowing_clock.jump(IDLE_TIMEOUT + 1)
            assert (await client.reply())[0] == 421
            assert await client.closed()


async def test_connections_beyond_the_limit_are_turned_away(tmp_path: Path) -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        async with smtp_server(make_ctx(tmp_path, recorder)) as port:
            streams = []
            for _ in range(MAX_CONNECTIONS):
                streams.append(LineClient(await trio.open_tcp_stream("127.0.0.1", port)))
                assert (await streams[-1].reply())[0] == 220
            async with connect(port, greeting=421) as extra:
                assert await extra.closed()
            for client in streams:
                await client.stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            await still_serving(port, recorder)
