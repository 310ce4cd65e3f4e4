"""POP3 (RFC 1939, RFC 2449 CAPA, RFC 5034 SASL, RFC 3206 response codes): a sans-I/O server
state machine over one maildrop.

No I/O happens here. The driver (pop3.py) feeds received bytes in with `receive_data`, asks
`next_event()` what to do, and writes out whatever `data_to_send()` returns. Events that need
the outside world must be answered before `next_event` is called again:
`AuthAttempt` -> `auth_ok(messages)` (login good, maildrop locked and listed), `auth_refused`
or `maildrop_busy`; `Retrieve` -> `message(data or None)`; `Commit` -> `committed(...)`.

Invariants:
* bounded memory: at most one line of MAX_LINE octets is buffered (lines.py);
* no message is listed, read or marked before a successful login; nothing is deleted before
  QUIT in the TRANSACTION state: `Commit` (RFC 1939 §6 UPDATE) is the only event that names
  messages to delete, and a connection that ends any other way deletes nothing;
* message numbers are fixed for the session (RFC 1939 §5); a deleted one is refused until RSET;
* what RETR and TOP send has CRLF line ends and is byte-stuffed (RFC 1939 §3);
* commands are answered strictly in order, whatever arrived in one read (RFC 2449 §6.6
  PIPELINING); hostile input raises nothing: it gets -ERR, and after MAX_ERRORS the
  connection is closed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from anonmail.errors import LocalProtocolError
from anonmail.gateway.auth import Login
from anonmail.gateway.lines import LineReader, TooLong, decode_plain
from anonmail.gateway.maildir_view import to_crlf

MAX_LINE = 1000  # octets with CRLF; RFC 2449 §4 says 255 for commands, RFC 5034 §4 more for AUTH
MAX_ERRORS = 20  # bad commands and failed logins before the server hangs up

CAPABILITIES = ("USER", "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                "SASL PLAIN", "IMPLEMENTATION anonmail")


class State(enum.Enum):
    AUTHORIZATION = enum.auto()
    AUTH_PLAIN = enum.auto()  # "+ " sent: waiting for the PLAIN response (RFC 5034)
    AWAIT_AUTH = enum.auto()  # AuthAttempt returned
    TRANSACTION = enum.auto()
    AWAIT_MESSAGE = enum.auto()  # Retrieve returned
    AWAIT_UPDATE = enum.auto()  # Commit returned
    CLOSED = enum.auto()


@dataclass(frozen=True, slots=True)
class NeedData:
    """Flush `data_to_send()`, then feed more bytes in."""


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """Check the login; if good, lock the maildrop and call `auth_ok` with its messages."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Retrieve:
    """Read the message with this uid and call `message` (None: it is gone)."""

    uid: str


@dataclass(frozen=True, slots=True)
class Commit:
    """QUIT: delete these messages, release the maildrop, call `committed`."""

    delete: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """Flush `data_to_send()` and close the connection (and release the maildrop)."""


NEED_DATA = NeedData()
CLOSED = Closed()
Event = NeedData | AuthAttempt | Retrieve | Commit | Closed

_NOT_LOGGED_IN = ("STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL")
_NOT_AFTER_LOGIN = ("USER", "PASS", "AUTH", "APOP")


def stuffed(crlf_data: bytes) -> bytes:
    """Byte-stuff a message with CRLF line ends (RFC 1939 §3): a line starting with "." gets
    another one."""
    out = crlf_data.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


def top(crlf_data: bytes, lines: int) -> bytes:
    """The header, the empty line and the first `lines` lines of the body (RFC 1939 §7 TOP)."""
    cut = 0 if crlf_data.startswith(b"\r\n") else crlf_data.find(b"\r\n\r\n") + 2
    if cut == 1:  # no body at all
        return crlf_data
    body_start = cut + 2
    end = body_start
    for _ in range(lines):
        nxt = crlf_data.find(b"\r\n", end)
        if nxt < 0:
            return crlf_data
        end = nxt + 2
    return crlf_data[:end]


class Pop3Session:
    """The server side of one POP3 connection. The greeting is queued at once."""

    def __init__(self) -> None:
        self.state = State.AUTHORIZATION
        self.errors = 0
        self._lines = LineReader(MAX_LINE)
        self._outbuf = bytearray()
        self._user: str | None = None
        self._messages: list[tuple[str, int]] = []  # (uid, size), numbered from 1
        self._deleted: set[int] = set()  # message numbers marked by DELE
        self._top: int | None = None  # the line count of a pending TOP (None: RETR)
        self._reply(True, "anonmail POP3 server ready")

    # -- the driver's interface ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._lines.feed(data)

    def data_to_send(self) -> bytes:
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    @property
    def output_pending(self) -> int:
        return len(self._outbuf)

    def next_event(self) -> Event:
        if self.state in (State.AWAIT_AUTH, State.AWAIT_MESSAGE, State.AWAIT_UPDATE):
            raise LocalProtocolError(f"answer the {self.state.name} event first")
        while self.state is not State.CLOSED:
            line = self._lines.next_line()
            if line is None:
                return NEED_DATA
            event = self._line(line)
            if event is not None:
                return event
        return CLOSED

    def auth_ok(self, messages: Sequence[tuple[str, int]]) -> None:
        """The login was good and the maildrop is locked: these are its (uid, size)."""
        self._expect(State.AWAIT_AUTH)
        self.state = State.TRANSACTION
        self._messages = list(messages)
        self._reply(True, f"Logged in, {len(self._messages)} messages")

    def auth_refused(self, result: Login) -> None:
        self._expect(State.AWAIT_AUTH)
        self.state = State.AUTHORIZATION
        if result is Login.LOCKED:
            self._error("[AUTH] Too many failed logins: try again later")
        else:
            self._error("[AUTH] Invalid user name or password")

    def maildrop_busy(self) -> None:
        """The login was good but another session holds the maildrop (RFC 2449 §8.1.2)."""
        self._expect(State.AWAIT_AUTH)
        self.state = State.AUTHORIZATION
        self._reply(False, "[IN-USE] The maildrop is in use by another session")

    def message(self, data: bytes | None) -> None:
        self._expect(State.AWAIT_MESSAGE)
        self.state = State.TRANSACTION
        if data is None:
            self._reply(False, "[SYS/TEMP] That message is no longer in the maildrop")
            return
        crlf = to_crlf(data)
        if self._top is None:
            self._reply(True, f"{len(crlf)} octets")
        else:
            crlf = top(crlf, self._top)
            self._reply(True, "Top of message follows")
        self._outbuf += stuffed(crlf) + b".\r\n"

    def committed(self, failed: int) -> None:
        """The UPDATE state is over: `failed` of the deletions did not happen."""
        self._expect(State.AWAIT_UPDATE)
        self.state = State.CLOSED
        if failed:
            self._reply(False, "[SYS/PERM] Some deleted messages were not removed")
        else:
            left = len(self._messages) - len(self._deleted)
            self._reply(True, f"anonmail POP3 server signing off ({left} messages left)")

    def timed_out(self) -> None:
        """RFC 1939 §3: on the autologout timer, close without a reply and without UPDATE."""
        self.state = State.CLOSED

    # -- commands (RFC 1939 §4-7, RFC 2449 §5) ------------------------------------------------

    def _line(self, line: bytes | TooLong) -> Event | None:
        if isinstance(line, TooLong):
            self._leave_sasl()
            self._error("Line too long")
            return None
        text = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if b"\r" in text or b"\0" in text or not text.isascii():
            self._leave_sasl()
            self._error("Syntax error")
            return None
        decoded = text.decode("ascii")
        if self.state is State.AUTH_PLAIN:
            self.state = State.AUTHORIZATION
            if decoded.strip() == "*":  # RFC 5034 §4: the client cancels
                self._error("Authentication cancelled")
                return None
            return self._plain(decoded)
        verb, _, arg = decoded.partition(" ")
        return self._command(verb.upper(), arg)

    def _command(self, verb: str, arg: str) -> Event | None:
        args = arg.split()
        logged_in = self.state is State.TRANSACTION
        if verb == "CAPA":
            self._reply(True, "Capability list follows")
            self._multiline(CAPABILITIES)
        elif verb == "QUIT":
            if logged_in:  # RFC 1939 §6: the UPDATE state
                self.state = State.AWAIT_UPDATE
                return Commit(tuple(self._messages[n - 1][0] for n in sorted(self._deleted)))
            self._reply(True, "anonmail POP3 server signing off")
            self.state = State.CLOSED
        elif verb in _NOT_LOGGED_IN and not logged_in:
            self._error("Not logged in: use USER and PASS, or AUTH PLAIN")
        elif verb in _NOT_AFTER_LOGIN and logged_in:
            self._error("Already logged in")
        elif verb == "USER":
            self._user = arg.strip() or None
            self._reply(self._user is not None, "Send PASS" if self._user else "Syntax: USER name")
        elif verb == "PASS":
            user, self._user = self._user, None
            if user is None:
                self._error("Send USER first")
                return None
            self.state = State.AWAIT_AUTH
            return AuthAttempt(user, arg)  # the password may contain spaces (RFC 1939 §7)
        elif verb == "AUTH":
            return self._auth(args)
        elif verb in _NOT_LOGGED_IN:
            return self._transaction(verb, args)
        else:
            self._error("Unknown command" if verb != "APOP" else "APOP is not supported")
        return None

    def _auth(self, args: list[str]) -> Event | None:
        if not args:  # the list of mechanisms (RFC 1734 practice)
            self._reply(True, "Mechanisms follow")
            self._multiline(["PLAIN"])
        elif args[0].upper() != "PLAIN" or len(args) > 2:
            self._error("Unsupported authentication mechanism")
        elif len(args) == 2:
            return self._plain(args[1])
        else:
            self.state = State.AUTH_PLAIN
            self._outbuf += b"+ \r\n"  # an empty challenge (RFC 5034 §4)
        return None

    def _plain(self, text: str) -> Event | None:
        login = decode_plain(text)
        if login is None:
            self._error("[AUTH] Cannot decode the PLAIN response")
            return None
        self.state = State.AWAIT_AUTH
        return AuthAttempt(*login)

    def _transaction(self, verb: str, args: list[str]) -> Event | None:
        if verb in ("NOOP", "RSET", "STAT") and args:
            self._error(f"Syntax: {verb}")
        elif verb == "NOOP":
            self._reply(True, "")
        elif verb == "RSET":
            self._deleted.clear()
            self._reply(True, f"{len(self._messages)} messages")
        elif verb == "STAT":
            live = [size for n, (_, size) in enumerate(self._messages, 1)
                    if n not in self._deleted]
            self._reply(True, f"{len(live)} {sum(live)}")
        elif verb in ("LIST", "UIDL") and not args:
            self._reply(True, "Scan listing follows" if verb == "LIST" else "Unique ids follow")
            self._multiline([f"{n} {size if verb == 'LIST' else uid}"
                             for n, (uid, size) in enumerate(self._messages, 1)
                             if n not in self._deleted])
        elif len(args) != (2 if verb == "TOP" else 1):
            self._error(f"Syntax: {verb} msg" + (" lines" if verb == "TOP" else ""))
        elif (n := self._number(args[0])) is None:
            pass
        elif verb in ("LIST", "UIDL"):
            uid, size = self._messages[n - 1]
            self._reply(True, f"{n} {size if verb == 'LIST' else uid}")
        elif verb == "DELE":
            self._deleted.add(n)
            self._reply(True, f"Message {n} deleted")
        elif verb == "RETR" or (args[1].isdigit() and len(args[1]) <= 9):
            self._top = int(args[1]) if verb == "TOP" else None
            self.state = State.AWAIT_MESSAGE
            return Retrieve(self._messages[n - 1][0])
        else:
            self._error("Syntax: TOP msg lines")
        return None

    def _number(self, text: str) -> int | None:
        """A message number that exists and is not deleted; else None and an -ERR sent."""
        n = int(text) if text.isdigit() and len(text) <= 9 else 0
        if not 1 <= n <= len(self._messages):
            self._error("No such message")
            return None
        if n in self._deleted:
            self._error(f"Message {n} already deleted")
            return None
        return n

    # -- replies (RFC 1939 §3) ----------------------------------------------------------------

    def _leave_sasl(self) -> None:
        if self.state is State.AUTH_PLAIN:
            self.state = State.AUTHORIZATION

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"nothing to answer: the session is {self.state.name}")

    def _reply(self, ok: bool, text: str) -> None:
        status = b"+OK" if ok else b"-ERR"
        self._outbuf += status + (b" " + text.encode("ascii") if text else b"") + b"\r\n"

    def _multiline(self, lines: Sequence[str]) -> None:
        self._outbuf += b"".join(line.encode("ascii") + b"\r\n" for line in lines) + b".\r\n"

    def _error(self, text: str) -> None:
        self.errors += 1
        self._reply(False, text)
        if self.errors >= MAX_ERRORS:
            self._reply(False, "Too many errors: closing connection")
            self.state = State.CLOSED
