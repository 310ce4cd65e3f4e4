"""Mail commands: `anonmail init`, `address`, `send`, `inbox`, `read`.

Each network command is a job (commands/jobs.py): run by `anonmail run` when it serves this home,
else as one short agent session (anonmail/agent/session.py). The address key
file is `address.key` in the home directory, sealed under a passphrase like the node key
(commands/common.py says where the passphrase comes from); retrieved mail is a Maildir under
`mail/`.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import sys
from pathlib import Path

import trio

from anonmail.agent.service import mark_published
from anonmail.agent.session import session
from anonmail.clock import SystemClock
from anonmail.commands import common, jobs
from anonmail.config import DEFAULT_PORT
from anonmail.errors import UserError
from anonmail.mail.compose import Attachment
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import LocalMail
from anonmail.records.certs import fingerprint_words, normalize_address_or_none
from anonmail.rng import SystemRng

ADDRESS_KEY_FILE = jobs.ADDRESS_KEY_FILE
MAIL_DIR = jobs.MAIL_DIR


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def shared(p: argparse.ArgumentParser) -> None:
        common.add_home_option(p)
        common.add_passphrase_option(p)

    p = sub.add_parser("init", help="create your mail address (a self-certifying .anon address)")
    shared(p)
    p.add_argument("--name", default="me", help="the part before @ (default: me)")
    p.add_argument("--bootstrap", action="append", default=[], metavar="HOST:PORT",
                   help="without a config.toml: a node to reach the network through")
    p.add_argument("--testnet", action="store_true", help="without a config.toml: a testnet")
    p.add_argument("--puzzle-bits", type=int, help=argparse.SUPPRESS)
    p.add_argument("--offline", action="store_true",
                   help="do not publish the address certificate now")
    common.add_fast_kdf_option(p)
    p.set_defaults(func=cmd_init)

    a = sub.add_parser("address", help="print your address and its fingerprint")
    shared(a)
    a.add_argument("--publish", action="store_true",
                   help="publish your address certificate now (done by itself when due)")
    a.set_defaults(func=cmd_address)

    s = sub.add_parser("send", help="send a message (body from FILE or standard input)")
    shared(s)
    s.add_argument("--to", action="append", default=[], metavar="ADDRESS")
    s.add_argument("--cc", action="append", default=[], metavar="ADDRESS")
    s.add_argument("--bcc", action="append", default=[], metavar="ADDRESS")
    s.add_argument("--subject", default="")
    s.add_argument("--attach", action="append", default=[], type=Path, metavar="FILE")
    s.add_argument("file", nargs="?", type=Path,
                   help="the body, or a whole RFC 5322 message when no --to is given")
    _direct_option(s, "send")
    s.set_defaults(func=cmd_send)

    i = sub.add_parser("inbox", help="collect new mail and list it")
    shared(i)
    i.add_argument("--offline", action="store_true", help="list what is here; do not check")
    _direct_option(i, "check")
    i.set_defaults(func=cmd_inbox)

    r = sub.add_parser("read", help="print a message (retrieving it first if needed)")
    shared(r)
    r.add_argument("id", help="the number `anonmail inbox` shows, or the Message-ID")
    r.add_argument("--raw", action="store_true", help="print the exact RFC 5322 bytes")
    _direct_option(r, "retrieve")
    r.set_defaults(func=cmd_read)


def _direct_option(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("--direct", action="store_true",
                   help=f"{verb} without go-betweens: faster, but the storage nodes see your "
                        f"node (default: anonymous, through go-between nodes)")


# -- plumbing -------------------------------------------------------------------------------------

open_identity = jobs.open_identity
_agent_config = jobs.agent_config


# -- commands -------------------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    home = common.home_of(args)
    path = home.root / ADDRESS_KEY_FILE
    if path.exists():
        raise UserError(f"{path} exists: refusing to overwrite your address")
    text = None
    if not home.config.exists():  # validate before writing anything
        text, _ = common.new_config(f"127.0.0.1:{DEFAULT_PORT}", args.bootstrap, args.testnet,
                             args.puzzle_bits)
    checked = normalize_address_or_none(f"{args.name}@example.org")
    if checked is None:
        raise UserError(f"--name {args.name!r} cannot be the part of an address before @ "
                        "(write e.g. alice or alice.smith)")
    rng, clock = SystemRng(), SystemClock()
    identity = AddressIdentity.create_anon(checked.split("@")[0], rng, clock.now())
    secret = common.passphrase(args, f"{common.ADDRESS_KEY} of {identity.address}", new=True)
    home.ensure()
    try:
        identity.save(path, secret, rng, params=common.kdf_cost(args))
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    if text is not None:
        common.create_file(home.config, text.encode())
    print(f"your address: {identity.address}")
    print(f"fingerprint:  {fingerprint_words(identity.sign.public)}")
    if not args.offline:
        config = _agent_config(home)

        async def publish() -> int:
            async with session(identity, config, clock, rng) as agent:
                return len(await agent.publish_cert())

        try:
            stored = trio.run(publish)
        except UserError as e:  # the address exists: any later command publishes it
            print(f"anonmail: your address certificate is not published yet ({e}); it goes "
                  "out with your next command, or by itself under `anonmail run`",
                  file=sys.stderr)
            return 0
        mark_published(home.root / MAIL_DIR, clock.now())
        print(f"published your address certificate on {stored} nodes")
    return 0


def cmd_address(args: argparse.Namespace) -> int:
    identity = open_identity(args, common.home_of(args))
    print(identity.address)
    print(f"fingerprint: {fingerprint_words(identity.sign.public)}")
    if args.publish:
        jobs.run_job(args, "publish", {}).show()
    return 0


def _read_input(path: Path | None) -> bytes:
    if path is None:
        if sys.stdin.isatty():
            print("(type the message; end with Ctrl-D)", file=sys.stderr)
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def cmd_send(args: argparse.Namespace) -> int:
    data = _read_input(args.file)
    attachments = []
    for p in args.attach:
        try:
            attachments.append(Attachment(p.name, p.read_bytes()))
        except OSError as e:
            raise UserError(f"cannot read attachment {p}: {e.strerror}") from None

    if args.to or args.cc or args.bcc:
        try:
            body: str | None = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError("the body is not UTF-8 text: send binary files with "
                            "--attach") from None
        raw = None
    else:
        if attachments or args.subject:
            raise UserError("--subject and --attach need --to (or give a whole RFC 5322 "
                            "message without them)")
        body, raw = None, data
    jobs.run_job(args, "send", jobs.send_params(args.to, args.cc, args.bcc, args.subject,
                                                body, attachments, raw)).show()
    return 0


def _listing(local: LocalMail) -> list[tuple[str, str, str, str]]:
    """(message id, from, subject, state) for pending notices, then retrieved messages."""
    rows = [(n.header.message_id, n.header.sender.address, n.header.subject, "new")
            for n in sorted(local.pending(), key=lambda n: n.header.date)]
    for key in local.message_keys():
        msg = email.message_from_bytes(local.maildir.get_bytes(key), policy=email.policy.default)
        rows.append((str(msg.get("Message-ID", "")), str(msg.get("From", "")),
                     str(msg.get("Subject", "")), "read"))
    return rows


def cmd_inbox(args: argparse.Namespace) -> int:
    home = common.home_of(args)
    if not args.offline:
        jobs.run_job(args, "check", {}).show()
    local = LocalMail(home.root / MAIL_DIR)
    for i, (_mid, sender, subject, state) in enumerate(_listing(local), start=1):
        print(f"{i:>3}  {state:4}  {sender[:40]:40}  {subject[:60]}")
    return 0


def _resolve(local: LocalMail, ident: str) -> str:
    rows = _listing(local)
    if ident.isdigit() and 1 <= int(ident) <= len(rows):
        return rows[int(ident) - 1][0]
    for mid, *_ in rows:
        if ident in (mid, mid.strip("<>")):
            return mid
    raise UserError(f"no message {ident!r}: run `anonmail inbox` to list them")


def cmd_read(args: argparse.Namespace) -> int:
    home = common.home_of(args)
    local = LocalMail(home.root / MAIL_DIR)
    mid = _resolve(local, args.id)
    data = local.get_message(mid)
    if data is None:
        jobs.run_job(args, "retrieve", {"message_id": mid}).show()
        data = local.get_message(mid)
        if data is None:
            raise UserError(f"{mid} could not be retrieved: try again later")
    if args.raw:
        sys.stdout.buffer.write(data)
    else:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        for h in ("From", "To", "Cc", "Date", "Subject", "Message-ID"):
            if msg.get(h):
                print(f"{h}: {msg[h]}")
        print()
        body = msg.get_body(preferencelist=("plain",)) if msg.is_multipart() else msg
        if body is not None:
            print(body.get_content() if hasattr(body, "get_content") else body.get_payload())
        for part in msg.iter_attachments() if msg.is_multipart() else ():
            size = len(part.get_payload(decode=True) or b"")
            print(f"[attachment: {part.get_filename()} ({size:,} bytes); --raw for the "
                  "whole message]")
    return 0
