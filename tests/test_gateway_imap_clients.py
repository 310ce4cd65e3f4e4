"""The gateway's IMAP server against real mail clients: fetchmail, curl, mbsync (isync) and mutt
(interactive, under tmux). Each reads a message with a 30 KB random binary attachment from the
Maildir and must get it byte-identical. A test is skipped only when its client is not installed
(Debian: apt-get install fetchmail curl isync mutt tmux)."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import trio

from anonmail.gateway.auth import LoginGuard
from anonmail.gateway.context import GatewayContext
from anonmail.gateway.imap import serve_imap

ADDR = "carol@" + "c" * 32 + ".anon"
PASSWORD = "pw-" + "x" * 20
TIMEOUT = 60


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (apt-get install {binary})")
    return path


def message(blob: bytes) -> bytes:
    m = EmailMessage()
    m["From"] = "Dave <dave@" + "d" * 32 + ".anon>"
    m["To"] = ADDR
    m["Subject"] = "binary attachment"
    m["Date"] = "Wed, 03 Jan 2024 09:00:00 +0000"
    m["Message-ID"] = "<blob@example.anon>"
    m.set_content("An attachment follows.\n")
    m.add_attachment(blob, maintype="application", subtype="octet-stream", filename="blob.bin")
    return m.as_bytes(policy=email.policy.SMTP)


def attachment_of(data: bytes) -> bytes:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    parts = [p for p in msg.iter_attachments() if isinstance(p, EmailMessage)]
    payload = parts[0].get_payload(decode=True) if parts else None
    assert isinstance(payload, bytes)
    return payload


class Server:
    """serve_imap in a background thread running its own trio loop, stopped at teardown."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.port = 0
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    async def _main(self) -> None:
        self._token, self._stop = trio.lowlevel.current_trio_token(), trio.Event()
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(
                lambda task_status: serve_imap("127.0.0.1", 0, self.ctx, task_status=task_status,
                                               poll_interval=0.2))
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def __enter__(self) -> Server:
        self._thread.start()
        assert self._ready.wait(TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()


async def _submit(data: bytes) -> str:
    return "<unused@anon>"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Server, Path, bytes, bytes]]:
    """A running server; the Maildir; the message (as delivered, in new/); its attachment."""
    maildir = tmp_path / "mail" / "Maildir"
    for folder in ("", ".Sent", ".Outbox"):
        for sub in ("cur", "new", "tmp"):
            (maildir / folder / sub).mkdir(parents=True, exist_ok=True)
    blob = os.urandom(30_000)
    data = message(blob)
    (maildir / "new" / os.urandom(20).hex()).write_bytes(data)
    ctx = GatewayContext(ADDR, LoginGuard(ADDR, PASSWORD), tmp_path / "mail", _submit)
    with Server(ctx) as server:
        yield server, maildir, data, blob


def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=TIMEOUT, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_fetchmail(setup: tuple[Server, Path, bytes, bytes], tmp_path: Path) -> None:
    fetchmail = need("fetchmail")
    server, maildir, _, blob = setup
    out = tmp_path / "fetched"
    out.mkdir()
    rc = private_file(tmp_path / "fetchmailrc", (
        f"poll 127.0.0.1 service {server.port} protocol IMAP auth password\n"
        f'  user "{ADDR}" password "{PASSWORD}" is "{os.environ.get("USER", "root")}" here\n'
        f"  options keep fetchall sslproto '' mda \"cat > {out}/msg\"\n"))
    result = run([fetchmail, "-f", str(rc), "--nodetach", "--nosyslog", "-v"],
                 env={**os.environ, "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert attachment_of((out / "msg").read_bytes()) == blob
    assert len(list((maildir / "cur").iterdir())) == 1  # kept ("keep"), now seen


def test_curl_fetches_a_message_by_uid(setup: tuple[Server, Path, bytes, bytes],
                                       tmp_path: Path) -> None:
    curl = need("curl")
    server, _, data, blob = setup
    out = tmp_path / "curl.eml"
    user = ADDR.replace("@", "%40")
    result = run([curl, "-sS", "--max-time", "30", "-o", str(out),
                  f"imap://{user}:{PASSWORD}@127.0.0.1:{server.port}/INBOX;UID=1"])
    assert result.returncode == 0, result.stderr.decode()
    assert out.read_bytes() == data  # byte for byte
    assert attachment_of(out.read_bytes()) == blob


def test_mbsync_syncs_inbox_to_a_local_maildir(setup: tuple[Server, Path, bytes, bytes],
                                               tmp_path: Path) -> None:
    mbsync = need("mbsync")
    server, _, data, blob = setup
    local = tmp_path / "local"
    local.mkdir()
    cfg = private_file(tmp_path / "mbsyncrc", f"""\
IMAPAccount gw
Host 127.0.0.1
Port {server.port}
User {ADDR}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore gw-remote
Account gw

MaildirStore gw-local
Path {local}/
Inbox {local}/INBOX

Channel gw
Far :gw-remote:
Near :gw-local:
Patterns INBOX
Create Near
SyncState *
""")
    result = run([mbsync, "-c", str(cfg), "-a"], env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    files = [p for sub in ("new", "cur") for p in (local / "INBOX" / sub).iterdir()]
    assert len(files) == 1
    # mbsync stores local mail with LF line ends and adds its tracking header X-TUID
    got = re.sub(rb"(?m)^X-TUID: .*\n", b"", files[0].read_bytes())
    assert got == data.replace(b"\r\n", b"\n") and attachment_of(got) == blob


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_mutt_reads_saves_deletes_and_expunges(setup: tuple[Server, Path, bytes, bytes],
                                               tmp_path: Path) -> None:
    mutt, tmux = need("mutt"), need("tmux")
    server, maildir, _, blob = setup
    saved = tmp_path / "saved.bin"
    rc = private_file(tmp_path / "muttrc", f"""\
set imap_user="{ADDR}"
set imap_pass="{PASSWORD}"
set folder="imap://127.0.0.1:{server.port}/"
set spoolfile="+INBOX"
set ssl_starttls=no
set ssl_force_tls=no
set record=""
set postponed=""
set move=no
set delete=yes
set confirmappend=no
set quit=yes
set wait_key=no
set pager_stop=yes
set mail_check=1
set timeout=1
set header_cache=""
set message_cachedir=""
set editor="true"
""")
    session = f"imapmutt{os.getpid()}"
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "xterm", "MAIL": ""}
    socket_args = ["-S", str(tmp_path / "tmux.sock")]

    def screen() -> str:
        return run([tmux, *socket_args, "capture-pane", "-p", "-t", session], env=env
                   ).stdout.decode(errors="replace")

    def keys(*k: str) -> None:
        run([tmux, *socket_args, "send-keys", "-t", session, *k], env=env)
        time.sleep(0.5)

    started = run([tmux, *socket_args, "new-session", "-d", "-s", session, "-x", "160", "-y", "40",
                   f"{mutt} -n -F {rc}"], env=env)
    assert started.returncode == 0, started.stderr.decode()
    try:
        wait_for(lambda: "binary attachment" in screen(), "the index to list the message")
        keys("Enter")  # open the message in the pager
        wait_for(lambda: "An attachment follows" in screen(), "the pager")
        keys("v")  # the attachment menu; the attachment is the last entry
        wait_for(lambda: "blob.bin" in screen(), "the attachment menu")
        keys("End")
        keys("s")
        wait_for(lambda: "Save to file" in screen(), "the save prompt")
        keys("C-u")
        keys("-l", str(saved))
        keys("Enter")
        wait_for(lambda: saved.exists() and saved.stat().st_size == len(blob), "the saved file")
        keys("q")  # back to the pager
        keys("q")  # back to the index
        keys("d")  # delete the message
        keys("$")  # sync: expunge on the server
        wait_for(lambda: not any(any((maildir / sub).iterdir()) for sub in ("cur", "new")),
                 "the message file to be expunged from the Maildir")
        keys("q")
        wait_for(lambda: run([tmux, *socket_args, "has-session", "-t", session],
                             env=env).returncode != 0, "mutt to quit")
    except AssertionError:
        print(screen())
        raise
    finally:
        run([tmux, *socket_args, "kill-server"], env=env)
    assert saved.read_bytes() == blob
