"""The gateway with real, unmodified mail clients (the Debian packages swaks, msmtp, mutt, curl,
fetchmail, mpop): each sends or fetches a message with a 30 KB binary attachment, which must
arrive byte for byte. A test is skipped, saying which package to install, only when its client
is missing (CI installs them when it runs as root: .ci/run).

The SMTP and POP3 servers run in a background thread (`trio.run`) on 127.0.0.1; every client
runs with HOME in a temporary directory, its configuration file mode 0600, and a timeout.
"""

from __future__ import annotations

import email
import email.policy
import os
import queue
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

import pytest
import trio
from test_gateway_smtp import ALICE, BOB, Recorder

from anonmail.gateway.auth import LoginGuard
from anonmail.gateway.context import GatewayContext
from anonmail.gateway.pop3 import serve_pop3
from anonmail.gateway.smtp import serve_smtp

PASSWORD = "abcdefghijklmnopqrstuvwxyz234567"  # the shape of a gateway password
BLOB = random.Random(2024).randbytes(30_000)  # the attachment
CLIENT_TIMEOUT = 60  # seconds for one client run
HEX = "0123456789abcdef" * 2 + "01234567"  # a 40-hex Maildir name, as the agent writes


@dataclass
class Gateway:
    smtp: int
    pop3: int
    recorder: Recorder
    maildir: Path
    home: Path


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    recorder = Recorder()
    root = tmp_path / "mail"
    for sub in ("new", "cur", "tmp"):
        (root / "Maildir" / sub).mkdir(parents=True)
    ctx = GatewayContext(ALICE, LoginGuard(ALICE, PASSWORD), root, recorder.submit)
    started: queue.Queue[tuple[int, int, trio.lowlevel.TrioToken, trio.CancelScope]] = (
        queue.Queue())

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            smtp = await nursery.start(serve_smtp, "127.0.0.1", 0, ctx)
            pop3 = await nursery.start(serve_pop3, "127.0.0.1", 0, ctx)
            started.put((smtp, pop3, trio.lowlevel.current_trio_token(), nursery.cancel_scope))

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    smtp, pop3, token, scope = started.get(timeout=30)
    home = tmp_path / "home"
    home.mkdir()
    try:
        yield Gateway(smtp, pop3, recorder, root / "Maildir", home)
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=30)
    assert not thread.is_alive()


def need(binary: str, package: str | None = None) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed (apt-get install {package or binary})")
    return path


def run_client(gw: Gateway, args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[
        bytes]:
    env = {"HOME": str(gw.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "LANG": "C.UTF-8", "TERM": "dumb"}
    done = subprocess.run(args, input=stdin, capture_output=True, env=env, cwd=gw.home,
                          timeout=CLIENT_TIMEOUT, check=False)
    return done


def config(gw: Gateway, name: str, text: str) -> Path:
    path = gw.home / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def composed(sender: str = ALICE, crlf: bool = False) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, BOB, "a binary attachment"
    msg.set_content("See the attachment.\n")
    msg.add_attachment(BLOB, maintype="application", subtype="octet-stream",
                       filename="blob.bin")
    return msg.as_bytes(policy=email.policy.SMTP if crlf else email.policy.default)


def attachment(data: bytes) -> bytes:
    """The payload of the message's application/octet-stream part."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    for part in msg.walk():
        if part.get_content_type() == "application/octet-stream":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload
    raise AssertionError("no attachment in the message")


def check_submitted(gw: Gateway, done: subprocess.CompletedProcess[bytes]) -> None:
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert len(gw.recorder.got) == 1
    data = gw.recorder.got[0]
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF line ends only
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["From"].addresses[0].addr_spec == ALICE
    assert msg["To"].addresses[0].addr_spec == BOB
    assert attachment(data) == BLOB


# -- SMTP submission --------------------------------------------------------------------------


def test_swaks_submits(gateway: Gateway) -> None:
    need("swaks")
    (gateway.home / "blob.bin").write_bytes(BLOB)
    done = run_client(gateway, [
        "swaks", "--server", f"127.0.0.1:{gateway.smtp}", "--from", ALICE, "--to", BOB,
        "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", PASSWORD,
        "--h-Subject", "swaks test", "--attach-type", "application/octet-stream",
        "--attach", f"@{gateway.home / 'blob.bin'}", "--pipeline"])
    check_submitted(gateway, done)


def test_msmtp_submits(gateway: Gateway) -> None:
    need("msmtp")
    rc = config(gateway, "msmtprc", f"""account default
host 127.0.0.1
port {gateway.smtp}
tls off
auth plain
user {ALICE}
password {PASSWORD}
from {ALICE}
""")
    done = run_client(gateway, ["msmtp", "-C", str(rc), "-t"], stdin=composed())
    check_submitted(gateway, done)


def test_curl_submits(gateway: Gateway) -> None:
    need("curl")
    (gateway.home / "message.eml").write_bytes(composed(crlf=True))
    done = run_client(gateway, [
        "curl", "-sS", f"smtp://127.0.0.1:{gateway.smtp}", "--mail-from", ALICE,
        "--mail-rcpt", BOB, "--user", f"{ALICE}:{PASSWORD}", "--upload-file", "message.eml"])
    check_submitted(gateway, done)


def test_mutt_submits_in_batch_mode(gateway: Gateway) -> None:
    need("mutt")
    (gateway.home / "blob.bin").write_bytes(BLOB)
    (gateway.home / "Mail").mkdir()
    rc = config(gateway, "muttrc", f"""set from = "{ALICE}"
set use_from = yes
set envelope_from = yes
set smtp_url = "smtp://{quote(ALICE, safe='')}@127.0.0.1:{gateway.smtp}/"
set smtp_pass = "{PASSWORD}"
set smtp_authenticators = "plain"
set ssl_starttls = no
set ssl_force_tls = no
set folder = "{gateway.home / 'Mail'}"
set record = ""
set copy = no
""")
    done = run_client(gateway, ["mutt", "-n", "-F", str(rc), "-s", "mutt test", "-a",
                                str(gateway.home / "blob.bin"), "--", BOB],
                      stdin=b"See the attachment.\n")
    check_submitted(gateway, done)


# -- POP3 retrieval ---------------------------------------------------------------------------


def deliver(gw: Gateway) -> bytes:
    """Put a message with the attachment in INBOX, with LF line ends (POP3 must send CRLF)."""
    data = composed(sender=BOB)
    assert b"\r\n" not in data
    (gw.maildir / "new" / HEX).write_bytes(data)
    return data


def check_fetched(gw: Gateway, done: subprocess.CompletedProcess[bytes], fetched: bytes,
                  deleted: bool) -> None:
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert attachment(fetched) == BLOB
    msg = email.message_from_bytes(fetched, policy=email.policy.default)
    assert msg["Subject"] == "a binary attachment"
    assert (gw.maildir / "new" / HEX).exists() is not deleted


def test_fetchmail_retrieves_and_deletes(gateway: Gateway) -> None:
    need("fetchmail")
    deliver(gateway)
    out = gateway.home / "out"
    out.mkdir()
    rc = config(gateway, "fetchmailrc", f"""set no bouncemail
poll 127.0.0.1 service {gateway.pop3} protocol POP3 auth password
    user "{ALICE}" there with password "{PASSWORD}"
    sslproto '' no sslcertck
    mda "/bin/sh -c 'cat > {out}/msg-$$.eml'"
""")
    done = run_client(gateway, ["fetchmail", "-f", str(rc), "-N", "--nosyslog", "-v",
                                "--pidfile", str(gateway.home / "fetchmail.pid")])
    files = list(out.iterdir())
    assert len(files) == 1, (done.stdout[-3000:], done.stderr[-3000:])
    check_fetched(gateway, done, files[0].read_bytes(), deleted=True)


def test_mpop_retrieves_into_a_maildir(gateway: Gateway) -> None:
    need("mpop")
    deliver(gateway)
    target = gateway.home / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (target / sub).mkdir(parents=True)
    rc = config(gateway, "mpoprc", f"""account default
host 127.0.0.1
port {gateway.pop3}
tls off
auth user
user {ALICE}
password {PASSWORD}
delivery maildir {target}
keep on
""")
    done = run_client(gateway, ["mpop", "-C", str(rc)])
    files = list((target / "new").iterdir())
    assert len(files) == 1, (done.stdout[-3000:], done.stderr[-3000:])
    check_fetched(gateway, done, files[0].read_bytes(), deleted=False)
    again = run_client(gateway, ["mpop", "-C", str(rc)])  # UIDL: already fetched, not again
    assert again.returncode == 0 and len(list((target / "new").iterdir())) == 1


def test_curl_retrieves(gateway: Gateway) -> None:
    need("curl")
    deliver(gateway)
    done = run_client(gateway, ["curl", "-sS", f"pop3://127.0.0.1:{gateway.pop3}/1",
                                "--user", f"{ALICE}:{PASSWORD}", "-o", "fetched.eml"])
    fetched = (gateway.home / "fetched.eml").read_bytes()
    assert b"\n" not in fetched.replace(b"\r\n", b"")  # sent with CRLF line ends
    check_fetched(gateway, done, fetched, deleted=False)
