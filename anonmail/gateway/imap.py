"""The IMAP4rev1 server of the mail-client gateway (RFC 3501, with LITERAL+ RFC 7888, SASL-IR
RFC 4959, IDLE RFC 2177, NAMESPACE RFC 2342, UIDPLUS RFC 4315, UNSELECT RFC 3691, MOVE RFC 6851):
the trio driver. Parsing is imap_parse, the session state machine imap_session, the Maildir
imap_mailbox, FETCH rendering imap_fetch, SEARCH imap_search.

`serve_imap(host, port, ctx)` listens (port 0: any free port, reported through task_status) and
serves until cancelled. Invariants:
* hostile input never crashes the server: a connection's own failure ends that connection only;
  input is read only when the reader needs more (so at most one line or one capped literal is
  buffered), lines and literals are capped (imap_parse);
* idle connections are logged out: after PRE_AUTH_TIMEOUT before login, AUTH_TIMEOUT (30 min,
  RFC 3501 §5.4) after; a client that stops reading our output is dropped after SEND_TIMEOUT;
* at most MAX_CONNECTIONS at once; a connection with MAX_FAILED_LOGINS failed logins or
  MAX_BAD_COMMANDS refused commands in a row is closed (the LoginGuard rate-limits globally);
* logs name events and counts, never addresses, passwords or message contents.
"""

from __future__ import annotations

import contextlib
import logging
from typing import NoReturn

import trio

from anonmail.errors import UserError
from anonmail.gateway.context import GatewayContext
from anonmail.gateway.imap_mailbox import MailStore
from anonmail.gateway.imap_parse import Bad, Command, CommandReader, Continue
from anonmail.gateway.imap_session import Session, State

log = logging.getLogger(__name__)

PRE_AUTH_TIMEOUT = 60.0
AUTH_TIMEOUT = 30 * 60.0
SEND_TIMEOUT = 300.0
MAX_CONNECTIONS = 32
MAX_FAILED_LOGINS = 5
MAX_BAD_COMMANDS = 20
RECEIVE_SIZE = 64 << 10


class _Closed(Exception):
    """The connection is over (EOF, timeout, fatal input)."""


async def serve_imap(host: str, port: int, ctx: GatewayContext, *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
                     poll_interval: float = 1.0) -> None:
    """Serve IMAP on host:port for ctx's user until cancelled. `poll_interval`: seconds between
    Maildir checks while a client IDLEs."""
    try:
        store = MailStore(ctx.maildir)
    except OSError as e:
        raise UserError(f"cannot use the Maildir {ctx.maildir}: {e.strerror}") from None
    server = _Server(ctx, store, poll_interval)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(server.handle, listeners)


class _Server:
    def __init__(self, ctx: GatewayContext, store: MailStore, poll_interval: float) -> None:
        self.ctx, self.store, self.poll_interval = ctx, store, poll_interval
        self.active = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        if self.active >= MAX_CONNECTIONS:
            with trio.move_on_after(5):
                await stream.send_all(b"* BYE too many connections\r\n")
            await trio.aclose_forcefully(stream)
            return
        self.active += 1
        try:
            await _Connection(self, stream).run()
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as e:  # our bug: end this connection, never the server
            log.error("imap: connection failed: %s", type(e).__name__)
            log.debug("imap: connection failure", exc_info=True)
            with trio.move_on_after(5):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(b"* BYE [SERVERBUG] internal error\r\n")
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)


class _Connection:
    def __init__(self, server: _Server, stream: trio.SocketStream) -> None:
        self.server, self.stream = server, stream
        self.session = Session(server.ctx, server.store)
        self.reader = CommandReader(max_append=server.ctx.max_size)
        self.bad = 0

    async def send(self, data: bytes) -> None:
        if data:
            with trio.move_on_after(SEND_TIMEOUT) as scope:
                await self.stream.send_all(data)
            if scope.cancelled_caught:
                raise _Closed

    def timeout(self) -> float:
        return PRE_AUTH_TIMEOUT if self.session.state is State.NOT_AUTH else AUTH_TIMEOUT

    async def receive(self, timeout: float) -> bytes | None:
        """More input (None: nothing within `timeout`); _Closed at end of input."""
        with trio.move_on_after(timeout):
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise _Closed
            return data
        return None

    async def bye(self, text: str) -> NoReturn:
        await self.send(f"* BYE {text}\r\n".encode())
        raise _Closed

    async def read_line(self) -> bytes:
        while True:
            try:
                line = self.reader.take_line()
            except ValueError:
                await self.bye("line too long")
            if line is not None:
                return line
            data = await self.receive(self.timeout())
            if data is None:
                await self.bye("autologout: idle for too long")
            else:
                self.reader.feed(data)

    async def run(self) -> None:
        await self.send(self.session.greeting())
        while self.session.state is not State.LOGOUT:
            event = self.reader.next()
            if event is None:
                data = await self.receive(self.timeout())
                if data is None:
                    await self.bye("autologout: idle for too long")
                else:
                    self.reader.feed(data)
            elif isinstance(event, Continue):
                await self.send(b"+ ready for literal\r\n")
            elif isinstance(event, Bad):
                await self.refused(event)
            else:
                await self.command(event)
                self.reader.authenticated = self.session.state is not State.NOT_AUTH

    async def refused(self, event: Bad) -> None:
        if event.fatal:
            await self.bye(event.text)
        code = f"[{event.code}] " if event.code else ""
        verdict = "NO" if event.code == "TOOBIG" else "BAD"
        await self.send(f"{event.tag} {verdict} {code}{event.text}\r\n".encode())
        await self.count_bad()

    async def count_bad(self) -> None:
        self.bad += 1
        if self.bad >= MAX_BAD_COMMANDS:
            await self.bye("too many bad commands")

    async def command(self, cmd: Command) -> None:
        session = self.session
        failed = session.failed_logins
        if cmd.name == "AUTHENTICATE" and session.state is State.NOT_AUTH and len(cmd.args) == 1:
            await self.authenticate(cmd)
        elif cmd.name == "IDLE" and session.state in (State.AUTH, State.SELECTED):
            await self.idle(cmd)
        else:
            bad = False
            for chunk in session.handle(cmd):
                bad = bad or chunk.startswith(f"{cmd.tag} BAD ".encode())
                await self.send(chunk)
            if bad:
                await self.count_bad()
            else:
                self.bad = 0
        if session.failed_logins >= MAX_FAILED_LOGINS and session.failed_logins > failed:
            await self.bye("too many failed logins")

    async def authenticate(self, cmd: Command) -> None:
        """AUTHENTICATE PLAIN without an initial response: ask for it (RFC 3501 §6.2.2)."""
        mech = cmd.args[0]
        if not isinstance(mech, str) or mech.upper() != "PLAIN":
            await self.send(f"{cmd.tag} NO unsupported authentication mechanism\r\n".encode())
            return
        await self.send(b"+ \r\n")
        line = await self.read_line()
        if line == b"*":
            await self.send(f"{cmd.tag} BAD authentication cancelled\r\n".encode())
            return
        await self.send(self.session.authenticate_plain(cmd.tag, line))

    async def idle(self, cmd: Command) -> None:
        """IDLE (RFC 2177): report changes every poll_interval until the client sends DONE."""
        await self.send(b"+ idling\r\n")
        quiet_since = trio.current_time()
        while True:
            try:
                line = self.reader.take_line()
            except ValueError:
                await self.bye("line too long")
            if line is not None:
                ok = line.strip().upper() == b"DONE"
                text = "OK IDLE terminated" if ok else "BAD expected DONE"
                await self.send(f"{cmd.tag} {text}\r\n".encode())
                return
            data = await self.receive(self.server.poll_interval)
            if data is not None:
                self.reader.feed(data)
                quiet_since = trio.current_time()
                continue
            await self.send(self.session.sync(expunge=True))
            if trio.current_time() - quiet_since > AUTH_TIMEOUT:
                await self.bye("autologout: idle for too long")
