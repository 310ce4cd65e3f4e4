"""`anonmail bench mail`, the SMTP baseline: the same workload as the loopback half
(mail_tcp.py) through an ordinary local SMTP server that delivers into a Maildir, the ceiling a
store-and-forward mail system reaches on this machine; `format_ratio` prints anonmail's rate
over it.

The server is aiosmtpd (the `bench` extra) on 127.0.0.1, in a thread of this process running
its own asyncio loop; its handler delivers each message into a `mailbox.Maildir` in a
temporary directory. The client is stdlib `smtplib`. The workload: M messages of S bytes each
(RFC 5322, CRLF, a random base64 body padded so the whole message is S bytes, i.e. as large as
anonmail's), then the recipient reads every message back from the Maildir, compares the bytes
and deletes it. A delivery, as in mail_tcp.py, is a message read back byte-identical to what
was sent; the rate is deliveries per wall-clock second over compose + submit + store + read
back + delete.

What is fair: SMTP gets its best case, one session for all messages (opened before the clock
starts, as anonmail's agent sessions are), no TLS, no authentication, no DNS, no queue and no
relay hop (the server is the final store, a local delivery). Durability is matched to
anonmail's: its stores commit with SQLite WAL + synchronous=FULL (an fsync per commit) before
they sign a receipt, and its Maildir writes are fsynced, so here each message file is fsynced
in tmp/, renamed into new/ and the directory fsynced before the server answers 250, as a
careful MTA does before it accepts (the deletions are fsynced once at the end, as a POP3 server
commits them at QUIT). `fsync=False` measures the page-cache ceiling. What anonmail does and
this does not: encryption, signatures, r replicas, DHT lookups, notifications, permits.

It reads the real clock and the OS RNG (a benchmark measures this machine). Invariants: a
delivery counts only if the bytes read back equal the bytes sent; the Maildir lives in a
temporary directory removed afterwards; the server's thread is stopped before returning, also
on failure; every wait is bounded (socket timeouts, thread joins). aiosmtpd is imported only
when the baseline runs, so `available()` can be asked without it installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import importlib.util
import logging
import mailbox
import os
import smtplib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from anonmail.fileio import fsync_dir

MISSING = ("SMTP baseline skipped: aiosmtpd is not installed "
           "(pip install 'anonmail[bench]')")
SENDER, RECIPIENT = "alice@bench.invalid", "bob@bench.invalid"
HOSTNAME = "bench.invalid"  # no getfqdn(): no DNS, no host name on the wire
TIMEOUT = 30.0  # seconds: any one socket operation, the server's start, its stop


@dataclass(frozen=True)
class SmtpBench:
    messages: int
    size: int  # bytes of each RFC 5322 message as sent
    delivered: int
    seconds: float
    fsync: bool

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0


def available() -> bool:
    """Whether aiosmtpd (the `bench` extra) is importable."""
    return importlib.util.find_spec("aiosmtpd") is not None


def format_smtp(b: SmtpBench) -> str:
    durable = ("each message fsynced before 250 (anonmail's stores fsync every commit)"
               if b.fsync else "no fsync (the page cache only)")
    return "\n".join([
        f"SMTP baseline: aiosmtpd on loopback -> Maildir, one session, {b.messages} messages "
        f"of {b.size:,} bytes",
        f"  delivered            {b.delivered}/{b.messages} byte-identical",
        f"  deliveries / second  {b.per_second:,.2f}  (submit + store + read back + delete, "
        f"{b.seconds:.2f} s)",
        f"  durability           {durable}",
    ])


def format_ratio(anonmail_per_second: float, b: SmtpBench) -> str:
    """anonmail's deliveries/s over the baseline's, and the time per delivery of each."""
    if anonmail_per_second <= 0 or b.per_second <= 0:
        return "anonmail deliveries/s over SMTP's: n/a (nothing delivered)"
    ratio = anonmail_per_second / b.per_second
    return (f"anonmail deliveries/s over SMTP's: {ratio:.3f}x  (SMTP is {1 / ratio:,.1f}x "
            f"faster; {1000 / anonmail_per_second:,.1f} ms vs "
            f"{1000 / b.per_second:,.2f} ms per delivery)")


def build_message(index: int, size: int) -> bytes:
    """An RFC 5322 message (CRLF) of exactly `size` bytes when `size` leaves room for the
    headers (else headers and one body line): random base64 lines of at most 76 characters."""
    head = "\r\n".join([
        f"From: {SENDER}", f"To: {RECIPIENT}", f"Subject: bench {index}",
        f"Date: {email.utils.formatdate(localtime=False)}",
        f"Message-ID: <{os.urandom(16).hex()}@{HOSTNAME}>",
        "MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii", "", "",
    ]).encode()
    room = max(size - len(head), 2)
    text = base64.b64encode(os.urandom(room * 3 // 4 + 3))
    body = bytearray()
    while len(body) < room:
        left = room - len(body)
        n = min(76, left - 2)
        n -= left - n - 2 == 1  # never leave 1 byte: no line holds it
        body += text[len(body):len(body) + n] + b"\r\n"
    return head + bytes(body)


class _MaildirHandler:
    """aiosmtpd handler: each accepted message into new/ of a Maildir, durably if `fsync`."""

    def __init__(self, root: Path, fsync: bool) -> None:
        self.root, self.fsync, self.count = root, fsync, 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.content
        if not isinstance(content, bytes):
            return "554 Transaction failed: expected bytes"
        self.count += 1
        name = f"{int(time.time())}.P{os.getpid()}Q{self.count}.{HOSTNAME}"
        tmp = self.root / "tmp" / name
        with open(tmp, "xb") as f:
            f.write(content)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.root / "new" / name)
        if self.fsync:
            fsync_dir(self.root / "new")
        return "250 Message accepted for delivery"


@dataclass
class _Running:
    """The server thread's loop and stop event once it listens; what it raised."""

    loop: asyncio.AbstractEventLoop | None = None
    done: asyncio.Event | None = None
    failed: list[BaseException] = field(default_factory=list)


@contextlib.contextmanager
def _server(handler: _MaildirHandler, max_size: int) -> Iterator[int]:
    """Run aiosmtpd on 127.0.0.1 (a free port, bound here so there is no race) in a thread;
    yield the port; stop the server and join the thread on the way out."""
    from aiosmtpd.smtp import SMTP  # the bench extra, only when the baseline runs

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    ready, running = threading.Event(), _Running()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname=HOSTNAME, data_size_limit=max_size, loop=loop,
                         timeout=TIMEOUT),
            sock=sock)
        running.loop, running.done = loop, done
        ready.set()
        try:
            await done.wait()
        finally:
            server.close()
            await server.wait_closed()

    def thread_main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as e:  # handed to the caller below
            running.failed.append(e)
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="smtp-baseline", daemon=True)
    thread.start()
    try:
        if not ready.wait(TIMEOUT) or running.done is None:
            raise RuntimeError("the SMTP baseline server did not start") from (
                running.failed[0] if running.failed else None)
        yield port
    finally:
        if running.loop is not None and running.done is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                running.loop.call_soon_threadsafe(running.done.set)
        thread.join(TIMEOUT)
        sock.close()
    if thread.is_alive():
        raise RuntimeError("the SMTP baseline server did not stop")
    if running.failed:
        raise RuntimeError("the SMTP baseline server failed") from running.failed[0]


@contextlib.contextmanager
def _quiet_mail_log() -> Iterator[None]:
    """aiosmtpd logs peers and envelope addresses at INFO on "mail.log": keep them out."""
    log = logging.getLogger("mail.log")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def bench_smtp(messages: int, size: int, *, fsync: bool = True) -> SmtpBench:
    """Submit `messages` messages of `size` bytes over one SMTP session to a local aiosmtpd
    that delivers into a Maildir, then read each back, compare and delete it (docstring).
    Synchronous: call it outside trio (or in a worker thread)."""
    with tempfile.TemporaryDirectory(prefix="anonmail-smtp-bench-") as tmp, _quiet_mail_log():
        root = Path(tmp) / "Maildir"
        mailbox.Maildir(str(root), factory=None, create=True)  # new/, cur/, tmp/
        with _server(_MaildirHandler(root, fsync), max(size * 2, 1 << 20)) as port, \
                smtplib.SMTP("127.0.0.1", port, local_hostname=HOSTNAME,
                             timeout=TIMEOUT) as client:
            client.ehlo()
            t0 = time.perf_counter()
            sent: dict[str, bytes] = {}
            for i in range(messages):
                data = build_message(i, size)
                sent[_message_id(data)] = data
                client.sendmail(SENDER, [RECIPIENT], data)
            sizes = {len(d) for d in sent.values()}
            delivered = _read_back(root, sent, fsync)
            seconds = time.perf_counter() - t0
    return SmtpBench(messages, max(sizes, default=size), delivered, seconds, fsync)


def _read_back(root: Path, sent: dict[str, bytes], fsync: bool) -> int:
    """The recipient's side, with its own handle on the Maildir: every message read, compared
    with what was sent (each counts once), deleted."""
    box = mailbox.Maildir(str(root), factory=None, create=False)
    delivered = 0
    for key in list(box.iterkeys()):  # (iterating a Mailbox yields messages)
        data = box.get_bytes(key)
        if sent.pop(_message_id(data), None) == data:
            delivered += 1
        box.remove(key)
    if fsync:
        fsync_dir(root / "new")
    return delivered


def _message_id(data: bytes) -> str:
    return str(BytesHeaderParser().parsebytes(data).get("Message-ID", "")).strip()
