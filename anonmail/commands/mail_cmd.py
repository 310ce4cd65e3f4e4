"""Mail commands: `anonmail init`, `address`, `send` (reading: commands/read_cmd.py).

Each network command is a job (commands/jobs.py): run by `anonmail run` when it serves this home,
else as one short agent session (anonmail/agent/session.py). The address key
file is `address.key` in the home directory, sealed under a passphrase like the node key
(commands/common.py says where the passphrase comes from); retrieved mail is a Maildir under
`mail/`.

Addresses on the command line are written as in a mail header (`parse_addresses`):
`name@domain`, `Name <name@domain>`, several separated by commas; the domain is lower-cased
(domains are case-insensitive), the local part kept as written (RFC 5321 §2.4: it is
case-sensitive, and a .anon address's certificate names it exactly). Anything else is one line.
"""

from __future__ import annotations

import argparse
import email.policy
import re
import sys
from pathlib import Path
from typing import Any

import trio

from anonmail.agent import service as agent_service
from anonmail.agent.session import session
from anonmail.clock import SystemClock
from anonmail.commands import common, jobs
from anonmail.config import DEFAULT_PORT
from anonmail.errors import UserError
from anonmail.gateway.auth import ensure_password
from anonmail.mail.compose import Attachment
from anonmail.mail.identity import AddressIdentity
from anonmail.records.certs import fingerprint_words, normalize_address_or_none
from anonmail.rng import SystemRng

ADDRESS_KEY_FILE = jobs.ADDRESS_KEY_FILE
MAIL_DIR = jobs.MAIL_DIR
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

INIT_HELP = """\
Create your mail address: a new signing and sealing key, sealed under a passphrase in
address.key, and a self-certifying address name@<fingerprint>.anon whose domain is the
fingerprint of the key. The address certificate is published to the network at once (or by
the next command, or `anonmail run`, with --offline or when the network cannot be reached).
Without a config.toml in the home, one is written (--bootstrap, --testnet)."""
INIT_EXAMPLES = """\
examples:
  anonmail init --name alice
  anonmail init --home ~/mail-test --name bob --testnet --bootstrap 127.0.0.1:7601"""
ADDRESS_HELP = """\
Print your address and its fingerprint, to read aloud to someone who wants to write to you.
With --verify ADDRESS, fetch ADDRESS's certificate from the network instead, check it as
`send` does (for a .anon address: its domain must be the fingerprint of its key) and print its
fingerprint, to compare with what its owner reads to you."""
ADDRESS_EXAMPLES = """\
examples:
  anonmail address
  anonmail address --verify bob@abcd...wxyz.anon"""
SEND_HELP = """\
Send a message, end-to-end encrypted, anonymously through go-between nodes (--direct: not).
The body comes from FILE or standard input; without --to/--cc/--bcc, FILE (or standard input)
is a whole RFC 5322 message whose To/Cc/Bcc name the recipients. A first message to someone
asks them for permission (a request to write) and waits in your Outbox until they allow you.
Addresses: name@domain or "Name <name@domain>"; several per option, separated by commas."""
SEND_EXAMPLES = """\
examples:
  anonmail send --to bob@abcd...wxyz.anon --subject "Hello" body.txt
  echo "See you at 8" | anonmail send --to "Bob <bob@abcd...wxyz.anon>" --subject Dinner
  anonmail send --to bob@x.anon --cc carol@y.anon --attach photo.jpg body.txt
  anonmail send < message.eml"""


def parser_kwargs(description: str, epilog: str) -> dict[str, Any]:
    """A command's help text: a description and examples, shown as written."""
    return {"description": description, "epilog": epilog,
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def shared(p: argparse.ArgumentParser) -> None:
        common.add_home_option(p)
        common.add_passphrase_option(p)

    p = sub.add_parser("init", help="create your mail address (a self-certifying .anon address)",
                       **parser_kwargs(INIT_HELP, INIT_EXAMPLES))
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

    a = sub.add_parser("address", help="print your address and its fingerprint, or check "
                                       "someone else's (--verify)",
                       **parser_kwargs(ADDRESS_HELP, ADDRESS_EXAMPLES))
    shared(a)
    a.add_argument("--publish", action="store_true",
                   help="publish your address certificate now (done by itself when due)")
    a.add_argument("--verify", metavar="ADDRESS",
                   help="fetch and check ADDRESS's certificate; print its fingerprint")
    _direct_option(a, "fetch the certificate")
    a.set_defaults(func=cmd_address)

    s = sub.add_parser("send", help="send a message (body from FILE or standard input)",
                       **parser_kwargs(SEND_HELP, SEND_EXAMPLES))
    shared(s)
    s.add_argument("--to", action="append", default=[], metavar="ADDRESS")
    s.add_argument("--cc", action="append", default=[], metavar="ADDRESS")
    s.add_argument("--bcc", action="append", default=[], metavar="ADDRESS",
                   help="blind copy: named only in that recipient's own sealed header")
    s.add_argument("--subject", default="")
    s.add_argument("--attach", action="append", default=[], type=Path, metavar="FILE",
                   help="attach FILE (repeatable)")
    s.add_argument("file", nargs="?", type=Path,
                   help="the body, or a whole RFC 5322 message when no --to is given")
    _direct_option(s, "send")
    s.set_defaults(func=cmd_send)


def _direct_option(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("--direct", action="store_true",
                   help=f"{verb} without go-betweens: faster, but the storage nodes see your "
                        f"node (default: anonymous, through go-between nodes)")


# -- addresses as users write them ----------------------------------------------------------------

def parse_addresses(text: str, what: str) -> list[str]:
    """The addresses in `text`: `name@domain`, `Name <name@domain>`, or several of them
    separated by commas; normalized (certs.normalize_address: the domain lower-cased). The
    stdlib's header parser is used, not `email.utils.getaddresses`, whose legacy parser turns
    "a@b.org junk" into "a@b.orgjunk" on Python 3.11; a defect it finds is refused."""
    bad = UserError(f"{what} {text!r} is not an e-mail address: write name@domain or "
                    '"Name <name@domain>"')
    if _CONTROL.search(text):
        raise bad
    try:
        header = email.policy.default.header_factory("to", text)
        found = [str(a.addr_spec) for a in header.addresses]
    except Exception:  # the parser is lenient; anything it raises is a bad address
        raise bad from None
    if header.defects or not found:
        raise bad
    out = []
    for addr in found:
        checked = normalize_address_or_none(addr)
        if checked is None:
            raise bad
        out.append(checked)
    return list(dict.fromkeys(out))


def parse_address(text: str, what: str = "") -> str:
    """Exactly one address (see `parse_addresses`)."""
    found = parse_addresses(text, what or "the address")
    if len(found) != 1:
        raise UserError(f"{what or 'the address'} {text!r} names {len(found)} addresses: give "
                        "one")
    return found[0]


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
    ensure_password(home.root)  # the mail-client gateway's login (`anonmail run`)
    print(f"your address: {identity.address}")
    print(f"fingerprint:  {fingerprint_words(identity.sign.public)}")
    if not args.offline:
        config = _agent_config(home)

        async def publish() -> int:
            async with session(identity, config, clock, rng) as agent:
                return await agent_service.publish(agent, home.root / MAIL_DIR)

        try:
            stored = trio.run(publish)
        except UserError as e:  # the address exists: any later command publishes it
            print(f"anonmail: your address certificate is not published yet ({e}); it goes "
                  "out with your next command, or by itself under `anonmail run`",
                  file=sys.stderr)
            return 0
        print(f"published your address certificate on {stored} nodes")
    return 0


def cmd_address(args: argparse.Namespace) -> int:
    if args.verify is not None:
        if args.publish:
            raise UserError("--verify and --publish are two commands: run one, then the other")
        address = parse_address(args.verify, "--verify")
        jobs.run_job(args, "cert", {"address": address}).show()
        return 0
    identity = open_identity(args, common.home_of(args))
    print(identity.address)
    print(f"fingerprint: {fingerprint_words(identity.sign.public)}")
    if args.publish:
        jobs.run_job(args, "publish", {}, identity=identity).show()
    return 0


def read_input(path: Path | None) -> bytes:
    """FILE's bytes, else standard input's (with a hint when it is a terminal)."""
    if path is None:
        if sys.stdin.isatty():
            print("(type the message; end with Ctrl-D)", file=sys.stderr)
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def read_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("the body is not UTF-8 text: send binary files with --attach") from None


def read_attachments(paths: list[Path]) -> list[Attachment]:
    attachments = []
    for p in paths:
        try:
            attachments.append(Attachment(p.name, p.read_bytes()))
        except OSError as e:
            raise UserError(f"cannot read attachment {p}: {e.strerror}") from None
    return attachments


def cmd_send(args: argparse.Namespace) -> int:
    to = [a for text in args.to for a in parse_addresses(text, "--to")]
    cc = [a for text in args.cc for a in parse_addresses(text, "--cc")]
    bcc = [a for text in args.bcc for a in parse_addresses(text, "--bcc")]
    data = read_input(args.file)
    attachments = read_attachments(args.attach)
    if to or cc or bcc:
        body: str | None = read_text(data)
        raw = None
    else:
        if attachments or args.subject:
            raise UserError("--subject and --attach need --to (or give a whole RFC 5322 "
                            "message without them)")
        body, raw = None, data
    jobs.run_job(args, "send", jobs.send_params(to, cc, bcc, args.subject, body, attachments,
                                                raw)).show()
    return 0
