"""SMTP submission (RFC 5321, RFC 6409, RFC 4954 AUTH): a sans-I/O server state machine.

No I/O happens here. The driver (smtp.py) feeds received bytes in with `receive_data`, asks
`next_event()` what to do, and writes out whatever `data_to_send()` returns. Two events need
the outside world and must be answered before `next_event` is called again: `AuthAttempt`
(`auth_result(Login)`) and `Submit` (`submitted(message_id)` or `submit_failed(line)`).
`Closed` means: flush, then close the connection.

Invariants:
* bounded memory: the input buffer holds at most one line of MAX_LINE octets plus what the
  driver fed in one call (lines.py); message data at most `max_size` octets (smtp_message.py);
* the end of data is CRLF "." CRLF only, and a bare CR or LF anywhere in the data refuses the
  message (SMTP smuggling; smtp_message.py);
* nothing but EHLO/HELO, AUTH, NOOP, RSET and QUIT is served before a successful AUTH (530);
  the envelope sender is the logged-in address; every recipient is an anonmail address; the
  message submitted goes to exactly the envelope recipients (`envelope_message`);
* commands are answered strictly in order, whatever arrived in one read (RFC 2920
  PIPELINING), and hostile input raises nothing: it gets a reply, and after MAX_ERRORS a 421.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from anonmail.errors import LocalProtocolError
from anonmail.gateway.auth import Login
from anonmail.gateway.context import is_anonmail_recipient
from anonmail.gateway.lines import LineReader, TooLong, decode_plain, decode_sasl, one_line
from anonmail.gateway.smtp_message import MAX_DATA_LINE, DataReader, EnvelopeError, envelope_message
from anonmail.records.certs import normalize_address

# Octets with CRLF of a command line: RFC 5321 §4.5.3.1.4 allows more than 512 for extensions,
# and RFC 4954 AUTH lines need it. The same as a data line (§4.5.3.1.6).
MAX_LINE = MAX_DATA_LINE
MAX_RECIPIENTS = 100  # RFC 5321 §4.5.3.1.8 asks for at least 100
MAX_ERRORS = 20  # bad commands and failed logins before the server gives up (421)
HOSTNAME = "localhost"  # never the machine's name: it would identify the user in replies


class State(enum.Enum):
    COMMAND = enum.auto()
    AUTH_PLAIN = enum.auto()  # "334 " sent: waiting for the PLAIN response (RFC 4616)
    AUTH_LOGIN_USER = enum.auto()  # "334 Username:" sent
    AUTH_LOGIN_PASS = enum.auto()  # "334 Password:" sent
    AWAIT_AUTH = enum.auto()  # AuthAttempt returned: waiting for `auth_result`
    DATA = enum.auto()  # after 354: message lines until CRLF.CRLF
    AWAIT_SUBMIT = enum.auto()  # Submit returned: waiting for `submitted` / `submit_failed`
    CLOSED = enum.auto()


@dataclass(frozen=True, slots=True)
class NeedData:
    """Flush `data_to_send()`, then feed more bytes in."""


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """Check this login (`LoginGuard.check`) and call `auth_result`."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Submit:
    """A message accepted by SMTP: hand it to the agent, then call `submitted` or
    `submit_failed`. `data` has CRLF line ends, is dot-unstuffed and names every envelope
    recipient in To, Cc or its one Bcc header."""

    data: bytes = field(repr=False)
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """Flush `data_to_send()` and close the connection."""


NEED_DATA = NeedData()
CLOSED = Closed()
Event = NeedData | AuthAttempt | Submit | Closed


_MAIL = re.compile(r"FROM:\s*<([^<>\s]*)>(?:\s+(.*))?", re.IGNORECASE | re.DOTALL)
_RCPT = re.compile(r"TO:\s*<([^<>\s]*)>(?:\s+(.*))?", re.IGNORECASE | re.DOTALL)
_OPEN = ("EHLO", "HELO", "AUTH", "NOOP", "RSET", "QUIT")  # served before AUTH
_UNIMPLEMENTED = ("EXPN", "STARTTLS", "BDAT", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML")
_KNOWN = (*_OPEN, "MAIL", "RCPT", "DATA", "VRFY", "HELP", *_UNIMPLEMENTED)


class SmtpSession:
    """The server side of one SMTP submission connection. The greeting is queued at once."""

    def __init__(self, address: str, max_size: int) -> None:
        self.address = address
        self.max_size = max_size
        self.state = State.COMMAND
        self.greeted = False
        self.authenticated = False
        self.errors = 0
        self.mail_from: str | None = None
        self.recipients: list[str] = []
        self._lines = LineReader(MAX_LINE)
        self._outbuf = bytearray()
        self._login_user = ""
        self._last_line_crlf = True  # the last command line ended with CRLF
        self._data: DataReader | None = None  # in the DATA state
        self._reply(220, f"{HOSTNAME} anonmail ESMTP submission ready")

    # -- the driver's interface ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._lines.feed(data)

    def data_to_send(self) -> bytes:
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    def next_event(self) -> Event:
        if self.state in (State.AWAIT_AUTH, State.AWAIT_SUBMIT):
            raise LocalProtocolError(f"answer the {self.state.name} event first")
        while self.state is not State.CLOSED:
            event = self._data_step() if self.state is State.DATA else self._command_step()
            if event is not None:
                return event
        return CLOSED

    def auth_result(self, result: Login) -> None:
        self._expect(State.AWAIT_AUTH)
        self.state = State.COMMAND
        if result is Login.OK:
            self.authenticated = True
            self._reply(235, "2.7.0 Authentication successful")
        elif result is Login.LOCKED:  # RFC 4954 §6: 454 temporary failure
            self._error(454, "4.7.0 Too many failed logins: try again later")
        else:
            self._error(535, "5.7.8 Authentication credentials invalid")

    def submitted(self, message_id: str) -> None:
        self._expect(State.AWAIT_SUBMIT)
        self.state = State.COMMAND
        self._reply(250, f"2.0.0 OK queued as {one_line(message_id, 200)}")

    def submit_failed(self, reason: str) -> None:
        self._expect(State.AWAIT_SUBMIT)
        self.state = State.COMMAND
        self._reply(554, f"5.6.0 {one_line(reason)}")

    def submit_error(self) -> None:
        """The agent failed for a reason of its own (not the message's)."""
        self._expect(State.AWAIT_SUBMIT)
        self.state = State.COMMAND
        self._reply(451, "4.3.0 Local error in processing; try again later")

    def timed_out(self) -> None:
        """The connection was idle too long (RFC 5321 §4.5.3.2.7)."""
        self._reply(421, f"4.4.2 {HOSTNAME} idle too long: closing connection")
        self.state = State.CLOSED

    # -- commands (RFC 5321 §4.1.1) -----------------------------------------------------------

    def _command_step(self) -> Event | None:
        line = self._lines.next_line()
        if line is None:
            return NEED_DATA
        if isinstance(line, TooLong):
            self.state = State.COMMAND  # also ends a SASL exchange
            self._error(500, "5.5.2 Line too long")
            return None
        text = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if b"\r" in text or b"\0" in text or not text.isascii():
            self.state = State.COMMAND
            self._error(500, "5.5.2 Syntax error")
            return None
        self._last_line_crlf = line.endswith(b"\r\n")
        decoded = text.decode("ascii")
        if self.state is State.COMMAND:
            return self._command(decoded)
        return self._sasl_response(decoded)

    def _command(self, text: str) -> Event | None:
        verb, _, arg = text.strip().partition(" ")
        verb, arg = verb.upper(), arg.strip()
        if verb not in _KNOWN:
            self._error(500, "5.5.2 Command unrecognized")
        elif verb in _UNIMPLEMENTED:
            self._error(502, "5.5.1 Command not implemented")
        elif verb not in _OPEN and not self.authenticated:
            self._error(530, "5.7.0 Authentication required")
        elif verb in ("EHLO", "HELO"):
            self._hello(verb, arg)
        elif verb == "AUTH":
            return self._auth(arg)
        elif verb == "NOOP":
            self._reply(250, "2.0.0 OK")
        elif verb == "QUIT":
            self._reply(221, f"2.0.0 {HOSTNAME} closing connection")
            self.state = State.CLOSED
        elif arg and verb in ("RSET", "DATA"):
            self._error(501, "5.5.4 Syntax error: no arguments allowed")
        elif verb == "RSET":
            self._reset()
            self._reply(250, "2.0.0 OK")
        elif verb == "MAIL":
            self._mail(arg)
        elif verb == "RCPT":
            self._rcpt(arg)
        elif verb == "DATA":
            self._start_data()
        elif verb == "VRFY":  # RFC 5321 §3.5.3: 252, we do not verify
            self._reply(252, "2.1.5 Cannot VRFY user; send the message to attempt delivery")
        elif verb == "HELP":
            self._reply(214, "2.0.0 Commands: EHLO HELO AUTH MAIL RCPT DATA RSET NOOP VRFY "
                             "HELP QUIT")
        return None

    def _hello(self, verb: str, arg: str) -> None:
        if not arg:
            self._error(501, f"5.5.4 Syntax: {verb} <domain>")
            return
        self._reset()  # RFC 5321 §4.1.4: as if RSET
        self.greeted = True
        if verb == "HELO":
            self._reply(250, HOSTNAME)
            return
        # RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 4954 AUTH (advertised without TLS: loopback
        # only), RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES
        self._reply_lines(250, [HOSTNAME, f"SIZE {self.max_size}", "8BITMIME",
                                "AUTH PLAIN LOGIN", "PIPELINING", "ENHANCEDSTATUSCODES"])

    def _auth(self, arg: str) -> Event | None:
        mechanism, _, initial = arg.partition(" ")
        mechanism, initial = mechanism.upper(), initial.strip()
        if not self.greeted:
            self._error(503, "5.5.1 Send EHLO first")
        elif self.authenticated:  # RFC 4954 §4: no second AUTH
            self._error(503, "5.5.1 Already authenticated")
        elif self.mail_from is not None:
            self._error(503, "5.5.1 AUTH not allowed during a mail transaction")
        elif mechanism == "PLAIN":
            if initial:
                return self._plain(initial)
            self.state = State.AUTH_PLAIN
            self._reply(334, "")
        elif mechanism == "LOGIN":
            if initial:
                return self._login_user_step(initial)
            self.state = State.AUTH_LOGIN_USER
            self._reply(334, "VXNlcm5hbWU6")  # "Username:"
        else:
            self._error(504, "5.5.4 Unrecognized authentication type")
        return None

    def _sasl_response(self, text: str) -> Event | None:
        state, self.state = self.state, State.COMMAND
        if text.strip() == "*":  # RFC 4954 §4: the client cancels
            self._error(501, "5.7.0 Authentication cancelled")
            return None
        if state is State.AUTH_PLAIN:
            return self._plain(text)
        if state is State.AUTH_LOGIN_USER:
            return self._login_user_step(text)
        password = decode_sasl(text)
        if password is None:
            self._error(501, "5.5.2 Cannot decode the response")
            return None
        return self._attempt(self._login_user, password)

    def _plain(self, text: str) -> Event | None:
        login = decode_plain(text)
        if login is None:
            self._error(501, "5.5.2 Cannot decode the PLAIN response")
            return None
        return self._attempt(*login)

    def _login_user_step(self, text: str) -> Event | None:
        user = decode_sasl(text)
        if user is None:
            self._error(501, "5.5.2 Cannot decode the response")
            return None
        self._login_user = user
        self.state = State.AUTH_LOGIN_PASS
        self._reply(334, "UGFzc3dvcmQ6")  # "Password:"
        return None

    def _attempt(self, user: str, password: str) -> AuthAttempt:
        self.state = State.AWAIT_AUTH
        self._login_user = ""
        return AuthAttempt(user, password)

    def _mail(self, arg: str) -> None:
        match = _MAIL.fullmatch(arg)
        if not self.greeted:
            self._error(503, "5.5.1 Send EHLO first")
        elif self.mail_from is not None:
            self._error(503, "5.5.1 Nested MAIL command")
        elif match is None:
            self._error(501, "5.5.4 Syntax: MAIL FROM:<address>")
        elif (params := self._mail_params(match.group(2) or "")) is not None:
            self._error(*params)
        elif match.group(1).lower() != self.address.lower():  # RFC 6409 §6.1
            self._error(553, "5.7.1 The sender must be the address you logged in as")
        else:
            self.mail_from = match.group(1)
            self._reply(250, "2.1.0 Sender OK")

    def _mail_params(self, text: str) -> tuple[int, str] | None:
        """The error reply for MAIL's parameters, None if they are acceptable."""
        for param in text.split():
            key, _, value = param.partition("=")
            key = key.upper()
            if key == "SIZE":  # RFC 1870 §6
                if not (value.isdigit() and len(value) <= 20):
                    return 501, "5.5.4 Syntax: SIZE=<octets>"
                if int(value) > self.max_size:
                    return 552, "5.3.4 Message size exceeds the fixed maximum message size"
            elif key == "BODY":  # RFC 6152
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return 501, "5.5.4 BODY must be 7BIT or 8BITMIME"
            elif key != "AUTH":  # RFC 4954 §5: accepted, not used
                return 555, "5.5.4 MAIL parameter not recognized"
        return None

    def _rcpt(self, arg: str) -> None:
        match = _RCPT.fullmatch(arg)
        if self.mail_from is None:
            self._error(503, "5.5.1 MAIL first")
        elif match is None:
            self._error(501, "5.5.4 Syntax: RCPT TO:<address>")
        elif match.group(2):
            self._error(555, "5.5.4 RCPT parameters not recognized")
        elif not is_anonmail_recipient(match.group(1)):
            self._reply(550, "5.7.1 Not an anonmail address: this gateway relays only to "
                             "anonmail addresses")
        elif (address := normalize_address(match.group(1))) in self.recipients:
            self._reply(250, "2.1.5 Recipient OK")
        elif len(self.recipients) >= MAX_RECIPIENTS:
            self._reply(452, "4.5.3 Too many recipients")
        else:
            self.recipients.append(address)
            self._reply(250, "2.1.5 Recipient OK")

    def _start_data(self) -> None:
        if self.mail_from is None:
            self._error(503, "5.5.1 MAIL first")
        elif not self.recipients:
            self._error(554, "5.5.1 No valid recipients")
        else:
            self.state = State.DATA
            self._data = DataReader(self.max_size, after_crlf=self._last_line_crlf)
            self._reply(354, "End data with <CR><LF>.<CR><LF>")

    def _data_step(self) -> Event | None:
        line = self._lines.next_line()
        if line is None:
            return NEED_DATA
        assert self._data is not None
        if not self._data.line(line):
            return None
        reader, recipients = self._data, tuple(self.recipients)
        self.state = State.COMMAND
        self._reset()  # RFC 5321 §4.1.1.4: the transaction ends, accepted or not
        refusal = reader.refusal
        if refusal is not None:
            self._reply(*refusal)
            return None
        try:
            data = envelope_message(reader.data, recipients)
        except EnvelopeError as e:
            self._reply(554, f"5.6.0 {one_line(str(e))}")
            return None
        self.state = State.AWAIT_SUBMIT
        return Submit(data, recipients)

    # -- replies (RFC 5321 §4.2, RFC 2034) ----------------------------------------------------

    def _reset(self) -> None:
        self.mail_from = None
        self.recipients = []
        self._data = None

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"nothing to answer: the session is {self.state.name}")

    def _reply(self, code: int, text: str) -> None:
        # an empty 334 challenge is "334 " (RFC 4954 §4)
        self._outbuf += f"{code} {text}".encode("ascii") + b"\r\n"

    def _reply_lines(self, code: int, lines: Sequence[str]) -> None:
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            self._outbuf += f"{code}{sep}{line}\r\n".encode("ascii")

    def _error(self, code: int, text: str) -> None:
        self.errors += 1
        if self.errors >= MAX_ERRORS:
            self._reply(421, "4.7.0 Too many errors: closing connection")
            self.state = State.CLOSED
        else:
            self._reply(code, text)
