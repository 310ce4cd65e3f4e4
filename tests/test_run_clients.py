"""Real mail clients from Debian against `anonmail run`, for two users on a local testnet of
real processes: Alice and Bob each run `anonmail run` (node, agent, gateway); they are
contacts both ways (permits by policy, no request round). Mail submitted by swaks, msmtp, curl
and mutt (batch) to Alice's gateway must reach Bob's Maildir by itself, with its 30 KB random
binary attachment byte-identical; mail Alice sent (`anonmail send --attach`) must be read the
same from Bob's gateway by fetchmail (POP3 and IMAP), mpop, curl (POP3 and IMAP) and mutt
(interactive under tmux: open, save the attachment, delete, expunge; then the file is gone from
Bob's Maildir and from `anonmail inbox --offline`, and stays gone after Bob's agent checked).

Wall time: one network for the whole module. Alice's agent sends one message at a time, and
anonymously a message takes a few seconds here (the go-between holds each anonymous STORE and
APPEND for an exponential delay: a testnet's `[agent] anon_delay`, mean 0.5 s); Bob's agent
checks every 10 s (the least `check_interval`). So every message is put on its way up front, in
the `mail` fixture: the four SMTP clients submit there (the gateway answers at once, the
message queued in Alice's Outbox and sent anonymously by her agent) and each test then checks
its client's outcome and waits, bounded, for its message in Bob's Maildir. What is not under
test goes `--direct`: the two `contacts add` and the two messages Bob's clients read
(`anonmail send --direct`). A test is skipped, naming the package, only when its client is
missing.
"""

from __future__ import annotations

import email
import email.policy
import functools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from urllib.parse import quote

import pytest
from procnet import LocalNet, local_net
from runnet import RunUser, cli

CLIENT_TIMEOUT = 60  # seconds for one run of a client
ARRIVAL = 180.0  # seconds for a message to reach Bob's Maildir
BLOB_SIZE = 30_000
PERMITS = re.compile(r"you hold (\d+) of their permits")
SUBMITTERS = ("swaks", "msmtp", "curl", "mutt")
READ = "read by fetchmail, mpop and curl"  # the subject of the message the readers fetch
MUTT_READ = "read and deleted with mutt"


@dataclass
class World:
    net: LocalNet
    alice: RunUser
    bob: RunUser
    root: Path

    @property
    def inbox(self) -> Path:
        """Bob's INBOX, the Maildir his agent fills and his gateway serves."""
        return self.bob.home / "mail" / "Maildir"


@dataclass
class Sent:
    subject: str
    blob: bytes  # the attachment
    done: subprocess.CompletedProcess[bytes] | None = None  # the client's run
    missing: str | None = None  # why the client did not run


@dataclass
class Mail:
    submitted: dict[str, Sent]  # by client name
    to_read: dict[str, Sent]  # by subject


# -- helpers ----------------------------------------------------------------------------------


def need(binary: str, package: str | None = None) -> str | None:
    """Why `binary` cannot run (None: it can)."""
    if shutil.which(binary) is None:
        return f"{binary} not installed (apt-get install {package or binary})"
    return None


def require(binary: str, package: str | None = None) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed (apt-get install {package or binary})")
    return path


def client_home(root: Path, name: str) -> Path:
    home = root / "clients" / name
    home.mkdir(parents=True)
    return home


def run_client(home: Path, args: list[str], stdin: bytes = b"",
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "LANG": "C.UTF-8", "TERM": "dumb", **(extra_env or {})}
    return subprocess.run(args, input=stdin, capture_output=True, env=env, cwd=home,
                          timeout=CLIENT_TIMEOUT, check=False)


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def shown(done: subprocess.CompletedProcess[bytes]) -> str:
    return (done.stdout[-3000:] + b"\n" + done.stderr[-3000:]).decode(errors="replace")


def attachment(data: bytes) -> bytes:
    """The payload of the message's one application/octet-stream part."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    found = []
    for part in msg.walk():
        if part.get_content_type() == "application/octet-stream":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found.append(payload)
    assert len(found) == 1, f"{len(found)} application/octet-stream parts"
    return found[0]


def subject_of(data: bytes) -> str:
    msg = BytesHeaderParser(policy=email.policy.default).parsebytes(data)
    return str(msg.get("subject", ""))


def message_files(maildir: Path) -> list[Path]:
    """The message files of a Maildir folder (new/ and cur/, any info suffix)."""
    return [p for sub in ("new", "cur") if (maildir / sub).is_dir()
            for p in (maildir / sub).iterdir() if not p.name.startswith(".") and p.is_file()]


def find(maildir: Path, subject: str) -> tuple[str, bytes] | None:
    """(base name, bytes) of the message with this subject in a Maildir folder. Files may be
    renamed (new/ -> cur/, flags) by the gateway meanwhile: one that vanishes is skipped."""
    for path in message_files(maildir):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if subject_of(data) == subject:
            return path.name.split(":", 1)[0], data
    return None


def wait(pred: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def arrival(world: World, subject: str) -> tuple[str, bytes]:
    """Wait (bounded) until Bob's agent has put the message in his INBOX."""
    got: list[tuple[str, bytes]] = []

    def there() -> bool:
        hit = find(world.inbox, subject)
        if hit is not None:
            got.append(hit)
        return hit is not None

    wait(there, f"{subject!r} in Bob's Maildir", ARRIVAL)
    return got[0]


def published(user: RunUser) -> bool:
    return user.status()["agent"]["cert_published"] is not None


def composed(world: World, subject: str, blob: bytes, crlf: bool) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = world.alice.address, world.bob.address, subject
    msg.set_content("See the attachment.\n")
    msg.add_attachment(blob, maintype="application", subtype="octet-stream",
                       filename="blob.bin")
    return msg.as_bytes(policy=email.policy.SMTP if crlf else email.policy.default)


# -- the network, the users, the mail ---------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("runclients")
    with local_net(root, 3) as net:
        alice = RunUser(net, root, "alice", check_interval=10)  # 10 s: the least allowed
        bob = RunUser(net, root, "bob", check_interval=10)
        try:
            alice.start()
            bob.start()
            for user in (alice, bob):
                wait(functools.partial(published, user),
                     f"{user.name}'s certificate to be published", 120)
            # each makes the other a contact, at the same time (two agents)
            with ThreadPoolExecutor(2) as pool:
                added = list(pool.map(
                    lambda pair: cli("contacts", "add", pair[1].address, "--direct", "--home",
                                     str(pair[0].home)), ((alice, bob), (bob, alice))))
            for r in added:
                assert r.returncode == 0 and "is a contact" in r.stdout, r.stdout + r.stderr

            def held(user: RunUser) -> int:
                m = PERMITS.search(cli("contacts", "--home", str(user.home)).stdout)
                return int(m.group(1)) if m else 0

            # permits both ways (Alice writes to Bob with those Bob's `contacts add` sent)
            wait(lambda: held(alice) > 0 and held(bob) > 0, "each to hold the other's permits",
                 60)
            yield World(net, alice, bob, root)
        finally:
            alice.close()
            bob.close()


def submit(world: World, client: str, sent: Sent) -> subprocess.CompletedProcess[bytes]:
    """`client` submits a message to Bob with `sent.blob` attached, to Alice's gateway."""
    a, b, pw = world.alice.address, world.bob.address, world.alice.password
    home = client_home(world.root, f"submit-{client}")
    (home / "blob.bin").write_bytes(sent.blob)
    if client == "swaks":
        return run_client(home, [
            "swaks", "--server", f"127.0.0.1:{world.alice.smtp}", "--from", a, "--to", b,
            "--auth", "PLAIN", "--auth-user", a, "--auth-password", pw,
            "--h-Subject", sent.subject, "--attach-type", "application/octet-stream",
            "--attach", f"@{home / 'blob.bin'}", "--pipeline"])
    if client == "msmtp":
        rc = private_file(home / "msmtprc", f"account default\nhost 127.0.0.1\n"
                          f"port {world.alice.smtp}\ntls off\nauth plain\nuser {a}\n"
                          f"password {pw}\nfrom {a}\n")
        return run_client(home, ["msmtp", "-C", str(rc), "-t"],
                          stdin=composed(world, sent.subject, sent.blob, crlf=False))
    if client == "curl":
        # the file has CRLF line ends, so no --crlf (docs/gateway.md: it would make CR CR LF)
        (home / "message.eml").write_bytes(composed(world, sent.subject, sent.blob, crlf=True))
        return run_client(home, [
            "curl", "-sS", "--max-time", str(CLIENT_TIMEOUT - 5),
            f"smtp://127.0.0.1:{world.alice.smtp}", "--mail-from", a, "--mail-rcpt", b,
            "--user", f"{a}:{pw}", "--upload-file", "message.eml"])
    assert client == "mutt"
    (home / "Mail").mkdir()
    rc = private_file(home / "muttrc", f"""set from = "{a}"
set use_from = yes
set envelope_from = yes
set smtp_url = "smtp://{quote(a, safe='')}@127.0.0.1:{world.alice.smtp}/"
set smtp_pass = "{pw}"
set smtp_authenticators = "plain"
set ssl_starttls = no
set ssl_force_tls = no
set folder = "{home / 'Mail'}"
set record = ""
set copy = no
""")
    return run_client(home, ["mutt", "-n", "-F", str(rc), "-s", sent.subject, "-a",
                             str(home / "blob.bin"), "--", b], stdin=b"See the attachment.\n")


@pytest.fixture(scope="module")
def mail(world: World) -> Mail:
    """Everything Alice sends, put on its way at once (see the module's docstring)."""
    submitted = {}
    for client in SUBMITTERS:
        sent = Sent(f"submitted by {client}", os.urandom(BLOB_SIZE))
        sent.missing = need(client)
        if sent.missing is None:
            sent.done = submit(world, client, sent)
        submitted[client] = sent
    to_read = {}
    body = world.root / "body.txt"
    body.write_text("Read me through Bob's gateway.\n")
    for subject in (READ, MUTT_READ):
        sent = Sent(subject, os.urandom(BLOB_SIZE))
        blob = world.root / "blob.bin"
        blob.write_bytes(sent.blob)
        r = cli("send", "--home", str(world.alice.home), "--to", world.bob.address,
                "--subject", subject, "--attach", str(blob), "--direct", str(body))
        assert r.returncode == 0 and "delivered" in r.stdout, r.stdout + r.stderr
        to_read[subject] = sent
    return Mail(submitted, to_read)


# -- SMTP submission to Alice's gateway, delivered to Bob's Maildir ---------------------------


def check_delivered(world: World, mail: Mail, client: str) -> EmailMessage:
    sent = mail.submitted[client]
    if sent.missing is not None:
        pytest.skip(sent.missing)
    assert sent.done is not None
    assert sent.done.returncode == 0, shown(sent.done)
    _, data = arrival(world, sent.subject)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["From"].addresses[0].addr_spec == world.alice.address
    assert msg["To"].addresses[0].addr_spec == world.bob.address
    assert attachment(data) == sent.blob
    return msg


def test_swaks_submits_and_bob_receives(world: World, mail: Mail) -> None:
    msg = check_delivered(world, mail, "swaks")
    # swaks shows the dialogue: Bob got the Message-ID the gateway named in its reply
    done = mail.submitted["swaks"].done
    assert done is not None
    queued = re.search(rb"<-  250 2\.0\.0 OK queued as (<[^>\s]+>)", done.stdout)
    assert queued is not None, shown(done)
    assert msg["Message-ID"].strip() == queued.group(1).decode()


def test_msmtp_submits_and_bob_receives(world: World, mail: Mail) -> None:
    check_delivered(world, mail, "msmtp")


def test_curl_submits_and_bob_receives(world: World, mail: Mail) -> None:
    check_delivered(world, mail, "curl")


def test_mutt_batch_submits_and_bob_receives(world: World, mail: Mail) -> None:
    check_delivered(world, mail, "mutt")


# -- reading Bob's mail through Bob's gateway -------------------------------------------------


def to_read(world: World, mail: Mail, subject: str) -> tuple[str, bytes, bytes]:
    """(base name, stored bytes, attachment) of a message Alice sent, once in Bob's INBOX."""
    name, data = arrival(world, subject)
    return name, data, mail.to_read[subject].blob


def check_read(fetched: bytes, stored: bytes, blob: bytes, received: bool = False) -> None:
    """The same message as stored, line ends aside (POP3 and IMAP serve CRLF; fetchmail and
    mpop store LF), with the same attachment. `received`: the client put its own Received:
    field in front (fetchmail, mpop), and nothing else."""
    assert subject_of(fetched) == READ
    got, want = fetched.replace(b"\r\n", b"\n"), stored.replace(b"\r\n", b"\n")
    if received:
        assert got.endswith(want) and got != want, got[:500]
        assert re.fullmatch(rb"Received: [^\n]*\n(?:[ \t][^\n]*\n)*", got[:-len(want)]), got[:500]
    else:
        assert got == want
    assert attachment(fetched) == blob


def fetched_with_subject(files: list[Path], subject: str) -> bytes:
    hits = [p.read_bytes() for p in files if subject_of(p.read_bytes()) == subject]
    assert len(hits) == 1, f"{len(hits)} of {len(files)} fetched messages are {subject!r}"
    return hits[0]


def test_fetchmail_pop3_reads(world: World, mail: Mail, tmp_path: Path) -> None:
    require("fetchmail")
    _, stored, blob = to_read(world, mail, READ)
    out = tmp_path / "out"
    out.mkdir()
    rc = private_file(tmp_path / "fetchmailrc", f"""set no bouncemail
poll 127.0.0.1 service {world.bob.pop3} protocol POP3 auth password
    user "{world.bob.address}" there with password "{world.bob.password}"
    options keep fetchall sslproto '' no sslcertck
    mda "/bin/sh -c 'cat > {out}/msg-$$.eml'"
""")
    done = run_client(tmp_path, ["fetchmail", "-f", str(rc), "-N", "--nosyslog", "-v",
                                 "--pidfile", str(tmp_path / "fetchmail.pid")],
                      extra_env={"FETCHMAILHOME": str(tmp_path)})
    assert done.returncode == 0, shown(done)
    check_read(fetched_with_subject(list(out.iterdir()), READ), stored, blob, received=True)
    assert find(world.inbox, READ) is not None  # kept


def test_fetchmail_imap_reads(world: World, mail: Mail, tmp_path: Path) -> None:
    require("fetchmail")
    _, stored, blob = to_read(world, mail, READ)
    out = tmp_path / "out"
    out.mkdir()
    rc = private_file(tmp_path / "fetchmailrc", (
        f"set no bouncemail\n"
        f"poll 127.0.0.1 service {world.bob.imap} protocol IMAP auth password\n"
        f'  user "{world.bob.address}" password "{world.bob.password}"'
        f' is "{os.environ.get("USER", "root")}" here\n'
        f"  options keep fetchall sslproto '' no sslcertck\n"
        f"  mda \"/bin/sh -c 'cat > {out}/msg-$$.eml'\"\n"))
    done = run_client(tmp_path, ["fetchmail", "-f", str(rc), "-N", "--nosyslog", "-v",
                                 "--pidfile", str(tmp_path / "fetchmail.pid")],
                      extra_env={"FETCHMAILHOME": str(tmp_path)})
    assert done.returncode == 0, shown(done)
    check_read(fetched_with_subject(list(out.iterdir()), READ), stored, blob, received=True)
    assert find(world.inbox, READ) is not None  # kept


def test_mpop_reads_into_a_maildir(world: World, mail: Mail, tmp_path: Path) -> None:
    require("mpop")
    _, stored, blob = to_read(world, mail, READ)
    target = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (target / sub).mkdir(parents=True)
    rc = private_file(tmp_path / "mpoprc", f"""account default
host 127.0.0.1
port {world.bob.pop3}
tls off
auth user
user {world.bob.address}
password {world.bob.password}
delivery maildir {target}
keep on
""")
    done = run_client(tmp_path, ["mpop", "-C", str(rc)])
    assert done.returncode == 0, shown(done)
    first = message_files(target)
    check_read(fetched_with_subject(first, READ), stored, blob, received=True)
    again = run_client(tmp_path, ["mpop", "-C", str(rc)])  # UIDL: nothing fetched twice
    assert again.returncode == 0, shown(again)
    assert sorted(message_files(target)) == sorted(first)


def test_curl_pop3_reads(world: World, mail: Mail, tmp_path: Path) -> None:
    require("curl")
    name, stored, blob = to_read(world, mail, READ)
    url = f"pop3://127.0.0.1:{world.bob.pop3}/"
    user = f"{world.bob.address}:{world.bob.password}"
    listing = run_client(tmp_path, ["curl", "-sS", "--max-time", "30", url, "--user", user,
                                    "-X", "UIDL"])
    assert listing.returncode == 0, shown(listing)
    # UIDL is the Maildir base name (docs/gateway.md)
    numbers = [line.split()[0] for line in listing.stdout.decode().splitlines()
               if line.split()[1:] == [name]]
    assert len(numbers) == 1, listing.stdout.decode()
    done = run_client(tmp_path, ["curl", "-sS", "--max-time", "30", url + numbers[0],
                                 "--user", user, "-o", "fetched.eml"])
    assert done.returncode == 0, shown(done)
    fetched = (tmp_path / "fetched.eml").read_bytes()
    assert b"\n" not in fetched.replace(b"\r\n", b"")  # sent with CRLF line ends
    check_read(fetched, stored, blob)


def test_curl_imap_reads_by_uid(world: World, mail: Mail, tmp_path: Path) -> None:
    require("curl")
    _, stored, blob = to_read(world, mail, READ)
    url = f"imap://127.0.0.1:{world.bob.imap}/INBOX"
    user = f"{world.bob.address}:{world.bob.password}"
    search = run_client(tmp_path, ["curl", "-sS", "--max-time", "30", url, "--user", user,
                                   "-X", f'UID SEARCH SUBJECT "{READ}"'])
    assert search.returncode == 0, shown(search)
    found = re.search(rb"^\* SEARCH ([0-9 ]*)\r?$", search.stdout, re.MULTILINE)
    assert found is not None and len(found.group(1).split()) == 1, search.stdout.decode()
    uid = found.group(1).decode().strip()
    done = run_client(tmp_path, ["curl", "-sS", "--max-time", "30", f"{url};UID={uid}",
                                 "--user", user, "-o", "fetched.eml"])
    assert done.returncode == 0, shown(done)
    fetched = (tmp_path / "fetched.eml").read_bytes()
    check_read(fetched, stored, blob)


def test_mutt_imap_reads_saves_deletes_and_expunges(world: World, mail: Mail,
                                                     tmp_path: Path) -> None:
    mutt, tmux = require("mutt"), require("tmux")
    name, _, blob = to_read(world, mail, MUTT_READ)
    saved = tmp_path / "saved.bin"
    rc = private_file(tmp_path / "muttrc", f"""\
set imap_user="{world.bob.address}"
set imap_pass="{world.bob.password}"
set folder="imap://127.0.0.1:{world.bob.imap}/"
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
    session = f"runmutt{os.getpid()}"
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "xterm", "MAIL": ""}
    sock = ["-S", str(tmp_path / "tmux.sock")]

    def tmux_run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([tmux, *sock, *args], env=env, capture_output=True,
                              timeout=CLIENT_TIMEOUT, check=False)

    def screen() -> str:
        return tmux_run("capture-pane", "-p", "-t", session).stdout.decode(errors="replace")

    def keys(*k: str) -> None:
        tmux_run("send-keys", "-t", session, *k)
        time.sleep(0.5)

    def on_screen(text: str, what: str) -> None:
        wait(lambda: text in screen(), what, 30)

    started = tmux_run("new-session", "-d", "-s", session, "-x", "160", "-y", "40",
                       f"{mutt} -n -F {rc}")
    assert started.returncode == 0, started.stderr.decode()
    try:
        on_screen(MUTT_READ, "the index to list the message")
        keys("l")  # limit the index to this message (Bob's INBOX holds the others too)
        on_screen("Limit to messages matching", "the limit prompt")
        keys("-l", f"~s '{MUTT_READ}'")
        keys("Enter")
        keys("Enter")  # open it in the pager
        on_screen("Read me through Bob's gateway.", "the pager")
        assert MUTT_READ in screen()
        keys("v")  # the attachment menu; the attachment is the last entry
        on_screen("blob.bin", "the attachment menu")
        keys("End")
        keys("s")
        on_screen("Save to file", "the save prompt")
        keys("C-u")
        keys("-l", str(saved))
        keys("Enter")
        wait(lambda: saved.exists() and saved.stat().st_size == len(blob), "the saved file", 30)
        keys("q")  # back to the pager
        keys("q")  # back to the index
        keys("d")  # delete the message
        keys("$")  # sync: expunge on the server
        wait(lambda: not any(p.name.split(":", 1)[0] == name
                             for p in message_files(world.inbox)),
             "the message file to be expunged from Bob's Maildir", 30)
        keys("q")
        wait(lambda: tmux_run("has-session", "-t", session).returncode != 0, "mutt to quit", 30)
    except AssertionError:
        print(screen())
        raise
    finally:
        tmux_run("kill-server")
    assert saved.read_bytes() == blob

    def listed() -> str:
        r = cli("inbox", "--offline", "--home", str(world.bob.home))
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    arrival(world, READ)
    assert MUTT_READ not in listed()
    assert READ in listed()  # the other message is still there
    # and it stays gone when Bob's agent checks the network again (`inbox` without --offline
    # has the running agent check, then lists the Maildir and what is still pending)
    r = cli("inbox", "--home", str(world.bob.home))
    assert r.returncode == 0, r.stdout + r.stderr
    assert MUTT_READ not in r.stdout and READ in r.stdout, r.stdout
    assert find(world.inbox, MUTT_READ) is None
