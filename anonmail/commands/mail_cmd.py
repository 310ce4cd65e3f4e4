"""Mail commands: `anonmail init`, `address`, `send`, `inbox`, `read`.

Each network command is one short agent session (anonmail/agent/session.py). The address key
file is `address.key` in the home directory, sealed under a passphrase like the node key
(commands/common.py says where the passphrase comes from); retrieved mail is a Maildir under
`mail/`.
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.policy
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import trio

from anonmail.agent.session import AgentConfig, own_node_endpoint, session
from anonmail.clock import SystemClock
from anonmail.commands import common
from anonmail.config import DEFAULT_PORT
from anonmail.errors import UserError
from anonmail.mail.check import CheckReport
from anonmail.mail.compose import Attachment
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import LocalMail
from anonmail.mail.user_agent import MailAgent
from anonmail.paths import Home
from anonmail.records.certs import fingerprint_words, normalize_address_or_none
from anonmail.rng import SystemRng

T = TypeVar("T")
ADDRESS_KEY_FILE = "address.key"
MAIL_DIR = "mail"
GUARD_FILE = "anon-guard.cbor"  # the anonymous sender's guard X, kept between sessions


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

def open_identity(args: argparse.Namespace, home: Home) -> AddressIdentity:
    """The address identity, unsealed with the passphrase of the address key."""
    path = home.root / ADDRESS_KEY_FILE
    if not path.exists():
        raise UserError(f"no address in {home.root}: run `anonmail init` first")
    return AddressIdentity.load(path, common.passphrase(args, f"{common.ADDRESS_KEY} in {path}"))


def _agent_config(home: Home) -> AgentConfig:
    cfg = common.load_config(home)
    entry = (own_node_endpoint(cfg.listen), *cfg.bootstrap)
    return AgentConfig(cfg.params, tuple(dict.fromkeys(entry)), cfg.trusted_cas,
                       home.root / MAIL_DIR, guard_file=home.root / GUARD_FILE)


def _run(args: argparse.Namespace, job: Callable[[MailAgent], Awaitable[T]]) -> T:
    home = common.home_of(args)
    identity = open_identity(args, home)
    config = _agent_config(home)
    anonymous = not getattr(args, "direct", False)

    async def main() -> T:
        async with session(identity, config, SystemClock(), SystemRng(),
                           anonymous=anonymous) as agent:
            out = await job(agent)
            await _flush_waiting(agent)
            return out

    return trio.run(main)


async def _flush_waiting(agent: MailAgent) -> None:
    """Any session sends what waits for a permission that has come: if the Outbox holds
    messages waiting for a grant, read the inbox (grants arrive there) and send them. One line
    on standard error per message that went out."""
    if agent.checked or not any(w.permit for state in agent.local.outbox()
                                for w in state.waiting):
        return
    with contextlib.suppress(UserError):  # the job's own result stands; they wait for later
        report = await agent.check()
        for sent in report.flushed:
            if sent.delivered:
                print(f"from your Outbox: {sent.message_id} delivered to "
                      f"{', '.join(sent.delivered)}", file=sys.stderr)


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

        stored = trio.run(publish)
        print(f"published your address certificate on {stored} nodes")
    return 0


def cmd_address(args: argparse.Namespace) -> int:
    identity = open_identity(args, common.home_of(args))
    print(identity.address)
    print(f"fingerprint: {fingerprint_words(identity.sign.public)}")
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

    async def job(agent: MailAgent) -> str:
        if args.to or args.cc or args.bcc:
            try:
                body = data.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError("the body is not UTF-8 text: send binary files with "
                                "--attach") from None
            report = await agent.send(args.to, args.cc, args.bcc, args.subject, body,
                                      attachments)
        else:
            if attachments or args.subject:
                raise UserError("--subject and --attach need --to (or give a whole RFC 5322 "
                                "message without them)")
            report = await agent.send_message(data)
        how = "directly (not anonymous: storage nodes saw your node)" if args.direct else \
            "anonymously (storage nodes saw only go-betweens)"
        lines = [f"{address}: delivered, {len(report.inboxes[address].receipts)} inbox "
                 f"receipts verified" for address in report.delivered]
        lines += [f"{address}: {why}; the message waits in your Outbox and goes out by "
                  f"itself once they allow you" for address, why in report.waiting.items()]
        if report.delivered:
            lines.append(f"sent {report.message_id} ({report.size:,} bytes) to "
                         f"{len(report.delivered)} recipient(s) {how}; "
                         f"{len(report.body.receipts)} body receipts verified")
        return "\n".join(lines)

    print(_run(args, job))
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
        report = _run(args, lambda agent: agent.check())
        print(f"{len(report.new)} new message(s)", file=sys.stderr)
        for line in _permit_news(report):
            print(line, file=sys.stderr)
    local = LocalMail(home.root / MAIL_DIR)
    for i, (_mid, sender, subject, state) in enumerate(_listing(local), start=1):
        print(f"{i:>3}  {state:4}  {sender[:40]:40}  {subject[:60]}")
    return 0


def _permit_news(report: CheckReport) -> list[str]:
    """What the check did about permits, one line each."""
    out = []
    settled = report.settled
    if settled is not None and settled.granted:
        out.append(f"sent permits to {', '.join(settled.granted)}")
    for sent in report.flushed:
        if sent.delivered:
            out.append(f"from your Outbox: {sent.message_id} delivered to "
                       f"{', '.join(sent.delivered)}")
    pending = report.requests_pending
    if pending:
        out.append(f"{pending} request(s) to write to you: `anonmail requests` lists them")
    return out


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
        data = _run(args, lambda agent: _retrieve(agent, mid))
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


async def _retrieve(agent: MailAgent, mid: str) -> bytes:
    return (await agent.retrieve(mid)).data
