"""Permit commands (DESIGN.md §6): `anonmail requests`, `allow`, `block`, `contacts`, `outbox`.

Who may write to you is decided here, by you, and nowhere else: `allow` answers a request to
write (or grants an address before it asks), `block` revokes every unspent permit you gave an
address on every replica of your inbox, `contacts add` makes an address's future requests
granted by your policy. `outbox` lists what waits to go out and why; `--retry` and `--drop`
act on one message. The commands that need the network run one agent session each
(commands/jobs.py: or the running agent's), which also collects new requests and grants first.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import time

from anonmail.commands import common, jobs
from anonmail.commands.mail_cmd import MAIL_DIR, _direct_option, parse_address, parser_kwargs
from anonmail.errors import UserError
from anonmail.mail.maildir import LocalMail
from anonmail.mail.permits import BOOK_FILE
from anonmail.permit.book import PermitBook, Status
from anonmail.records.certs import fingerprint_words

REQUESTS_HELP = """\
Check for new requests to write to you (unless --offline) and list them: each asker's address,
the fingerprint of its key (compare it with what the asker reads to you) and its note. Answer
with `anonmail allow ADDRESS` or `anonmail block ADDRESS`."""
REQUESTS_EX = """\
examples:
  anonmail requests
  anonmail requests --offline"""
ALLOW_HELP = """\
Let ADDRESS write to you: your agent sends it a batch of one-time permits (and refills them as
they are used). A message ADDRESS is holding for you goes out with its next session.
ADDRESS: name@domain or "Name <name@domain>"."""
ALLOW_EX = """\
examples:
  anonmail allow alice@abcd...wxyz.anon
  anonmail allow "Alice <alice@abcd...wxyz.anon>"
"""
BLOCK_HELP = """\
Revoke every unspent permit ADDRESS holds, on every replica of your inbox, and drop its
requests from now on."""
BLOCK_EX = """\
examples:
  anonmail block mallory@abcd...wxyz.anon"""
CONTACTS_HELP = """\
List your contacts and the addresses you allowed or blocked (with "double-spent tokens: N" when
one of their permits was spent on more than one message: the extra copies were dropped; only
`anonmail block` acts on it); `add` makes ADDRESS a contact (permits both ways; its requests are
granted by your policy), `remove` makes it a merely allowed address again (the permits it holds
stay valid until `anonmail block`)."""
CONTACTS_EX = """\
examples:
  anonmail contacts
  anonmail contacts add "Dave <dave@abcd...wxyz.anon>"
  anonmail contacts remove dave@abcd...wxyz.anon"""
OUTBOX_HELP = """\
List the messages waiting to go out and, per recipient, why (waiting for their permission, a
failure). --retry sends one again now; --drop removes it (it is never sent)."""
OUTBOX_EX = """\
examples:
  anonmail outbox
  anonmail outbox --retry "<abc...@anonmail>"
  anonmail outbox --drop "<abc...@anonmail>"
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def shared(p: argparse.ArgumentParser) -> None:
        common.add_home_option(p)
        common.add_passphrase_option(p)

    r = sub.add_parser("requests", help="list who asks to write to you (after checking for new "
                                        "requests)", **parser_kwargs(REQUESTS_HELP, REQUESTS_EX))
    shared(r)
    r.add_argument("--offline", action="store_true", help="list what is here; do not check")
    _direct_option(r, "check")
    r.set_defaults(func=cmd_requests)

    a = sub.add_parser("allow", help="let ADDRESS write to you (sends it permits)",
                       **parser_kwargs(ALLOW_HELP, ALLOW_EX))
    shared(a)
    a.add_argument("address")
    _direct_option(a, "send the permits")
    a.set_defaults(func=cmd_allow)

    b = sub.add_parser("block", help="revoke every permit ADDRESS holds and refuse its requests",
                       **parser_kwargs(BLOCK_HELP, BLOCK_EX))
    shared(b)
    b.add_argument("address")
    _direct_option(b, "publish the revocation")
    b.set_defaults(func=cmd_block)

    c = sub.add_parser("contacts", help="list, add or remove contacts (their requests are "
                                        "granted by your policy)",
                       **parser_kwargs(CONTACTS_HELP, CONTACTS_EX))
    shared(c)
    c.add_argument("action", nargs="?", choices=("list", "add", "remove"), default="list")
    c.add_argument("address", nargs="?")
    _direct_option(c, "send permits to a new contact")
    c.set_defaults(func=cmd_contacts)

    o = sub.add_parser("outbox", help="list messages waiting to go out, and why",
                       **parser_kwargs(OUTBOX_HELP, OUTBOX_EX))
    shared(o)
    o.add_argument("--retry", metavar="MESSAGE-ID", help="try sending this message again now")
    o.add_argument("--drop", metavar="MESSAGE-ID", help="remove this message from the Outbox")
    _direct_option(o, "send")
    o.set_defaults(func=cmd_outbox)


def _address(text: str) -> str:
    """One address as a user writes it: name@domain or "Name <name@domain>" (mail_cmd)."""
    return parse_address(text)


def _book(args: argparse.Namespace) -> PermitBook:
    home = common.home_of(args)
    bits = common.load_config(home).params.stamp_bits
    LocalMail(home.root / MAIL_DIR)  # the directory the book lives in (created 0700)
    return PermitBook.load(home.root / MAIL_DIR / BOOK_FILE, bits)


def _utc(t: int) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M")


def cmd_requests(args: argparse.Namespace) -> int:
    if not args.offline:
        jobs.run_job(args, "check", {}).show()
    pending = _book(args).requests()
    if not pending:
        print("no pending requests to write to you")
        return 0
    for c in pending:
        assert c.request is not None
        key = fingerprint_words(c.cert.sign_key) if c.cert is not None else "?"
        print(f"{c.address}\n    fingerprint: {key}\n    asked {_utc(c.request.date)} UTC: "
              f"{c.request.note!r}")
    print(f"{len(pending)} request(s): `anonmail allow ADDRESS` lets one write to you, "
          "`anonmail block ADDRESS` refuses it")
    return 0


def cmd_allow(args: argparse.Namespace) -> int:
    address = _address(args.address)

    jobs.run_job(args, "allow", {"address": address}).show()
    return 0


def cmd_block(args: argparse.Namespace) -> int:
    address = _address(args.address)

    jobs.run_job(args, "block", {"address": address}).show()
    return 0


def cmd_contacts(args: argparse.Namespace) -> int:
    if args.action == "list":
        book = _book(args)
        now = time.time()
        rows = sorted(book.people.values(), key=lambda c: c.address)
        shown = [c for c in rows if c.status is not Status.NONE or c.double_spent
                 or book.held_count(c.address, now)]
        if not shown:
            print("no contacts yet")
        for c in shown:
            held = book.held_count(c.address, now)
            # Said, never acted on: only the owner's `block` revokes (a token could also have
            # been stolen from them).
            cheat = f"; double-spent tokens: {c.double_spent}" if c.double_spent else ""
            print(f"{c.status.name.lower():8} {c.address}  (you hold {held} of their permits; "
                  f"they hold about {c.supply} of yours{cheat})")
        return 0
    if args.address is None:
        raise UserError(f"`anonmail contacts {args.action}` needs an ADDRESS")
    address = _address(args.address)
    if args.action == "remove":
        book = _book(args)
        if book.status(address) is not Status.CONTACT:
            raise UserError(f"{address} is not among your contacts")
        book.set_status(address, Status.ALLOWED)
        book.save()
        print(f"{address} is no longer a contact (permits already given stay valid; "
              f"`anonmail block` revokes them)")
        return 0

    jobs.run_job(args, "contact-add", {"address": address}).show()
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    home = common.home_of(args)
    local = LocalMail(home.root / MAIL_DIR)
    if args.drop:
        if not local.drop_outgoing(args.drop):
            raise UserError(f"no message {args.drop} in your Outbox: run `anonmail outbox`")
        print(f"dropped {args.drop} from your Outbox")
        return 0
    if args.retry:
        jobs.run_job(args, "retry", {"message_id": args.retry}).show()
        return 0
    states = local.outbox()
    if not states:
        print("your Outbox is empty")
        return 0
    for state in states:
        print(state.message_id)
        if not state.waiting:
            print("    not sent (interrupted or failed): `anonmail outbox --retry` it")
        for w in state.waiting:
            print(f"    {w.address}: {w.reason} (since {_utc(w.since)} UTC)")
    return 0
