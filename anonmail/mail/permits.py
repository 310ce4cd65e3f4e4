"""The user agent's side of RTS/CTS (DESIGN.md §6; seed 003 §3.2, §7.1, §8.1).

As a sender, for each recipient: a token the recipient granted us (`Ticket`: the token is spent
on exactly the sealed entry); else the recipient's signed InboxPolicy, fetched from its inbox
replicas, decides: OPEN takes a proof-of-work stamp; PERMITS means an RTS first (a signed
`PermitNote` REQUEST with a few of our own tokens, sealed to the owner and appended to its
request inbox with a stamp) while the message waits in the Outbox for that recipient; it goes
out by itself (`flush`) in the first session that sees the grant. One RTS per recipient is
outstanding at a time (the book keeps when it went out): a further send or retry waits for the
answer, and asks again only once the request has lapsed (`RTS_LAPSE`, the request inbox's TTL).

As an owner: every entry read is accounted (tokens granted to us kept; which of our tokens it
spent, and a token spent on a second entry is a double spend: the entry is dropped and counted
against whom the token was issued; how many of ours the sender still holds). An RTS from a
contact or an allowed correspondent is granted by policy; from a blocked one dropped; from
anyone else kept for review (`anonmail requests`). Grants are made only here, and only for those
reasons or the owner's own command (`allow`, `contacts add`, a message the owner sends:
`wrote_to`): never because of anything an entry says (seed 003 §8.1: a hijacked client must not
grant permission). `block` revokes the unspent tokens issued to the blocked address with a new
policy version, stored on every inbox replica. Where policies and entries are stored:
mail/policies.py.

Nodes see a token (a random key) or a stamp: never a sender, never a stable pseudonym.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from anonmail import wire
from anonmail.clock import Clock
from anonmail.errors import UserError
from anonmail.mail import envelope
from anonmail.mail.envelope import Extras, HeaderPlain
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.policies import Policies
from anonmail.net.base import Network
from anonmail.permit.book import GRANT_BATCH, REPLY_TOKENS, PermitBook, Status
from anonmail.permit.gate import REQUEST_TTL
from anonmail.permit.notes import NoteKind, make_note
from anonmail.permit.records import HeldToken, PolicyMode, issue_tokens, mint_stamp, spend
from anonmail.records import ids
from anonmail.records.certs import AddressCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.store.client import Lookup, Placement, fetch_cert
from anonmail.store.messages import AppendProof, AppendProofKind, entry_id

BOOK_FILE = "permits.cbor"
# Stamps up to this many bits (~30 ms) are minted on the event loop: a thread would let a
# simulation's MockClock (autojump) leap ahead while it runs.
INLINE_BITS = 16
# An RTS unanswered this long has left the owner's request inbox (its TTL): ask again.
RTS_LAPSE = REQUEST_TTL


@dataclass
class Ticket:
    """How one entry to one recipient is allowed in: a token we hold, or a stamp."""

    inbox: bytes
    token: HeldToken | None
    stamp_bits: int
    extras: Extras

    async def prove(self, entry: bytes, now: float, rng: Rng) -> AppendProof:
        eid = entry_id(entry)
        if self.token is not None:
            return AppendProof(AppendProofKind.PERMIT, wire.encode(spend(self.token, self.inbox,
                                                                        eid)))
        if self.stamp_bits <= INLINE_BITS:  # milliseconds: not worth a thread
            stamp = mint_stamp(self.inbox, eid, self.stamp_bits, now, rng)
        else:  # a fraction of a second at a real difficulty: off the event loop
            stamp = await trio.to_thread.run_sync(mint_stamp, self.inbox, eid, self.stamp_bits,
                                                  now, rng)
        return AppendProof(AppendProofKind.STAMP, wire.encode(stamp))


@dataclass
class Sorted:
    """Recipients by what a send may do for them now."""

    ready: list[str] = field(default_factory=list)  # token held, or an open inbox
    asked: dict[str, str] = field(default_factory=dict)  # RTS sent now: the one-line reason
    waiting: dict[str, str] = field(default_factory=dict)  # cannot ask now, and why
    open_bits: dict[str, int] = field(default_factory=dict)  # open inboxes' stamp difficulty


@dataclass
class Settled:
    granted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Permits(Policies):
    def __init__(self, net: Network, dht: Lookup, identity: AddressIdentity, book: PermitBook,
                 params: NetworkParams, clock: Clock, rng: Rng,
                 trusted_cas: frozenset[bytes]) -> None:
        super().__init__(net, dht, identity, book, params, clock, trusted_cas)
        self.rng = rng
        # Correspondents a grant is due to: True for a request granted by policy (always
        # answered), False for a refill (skipped if a mail sent since carried one).
        self.owed: dict[str, bool] = {}

    # -- sending ---------------------------------------------------------------------------------

    def ticket(self, address: str, *, stamp_bits: int | None = None,
               grant: int = 0) -> Ticket:
        """Take a token for `address` (the book is saved before it is used), with our grant
        and our supply of their tokens beside it. No token: a stamp, to the request inbox
        unless `stamp_bits` says the inbox is open."""
        now = self.clock.now()
        book = self.book
        if not grant and book.status(address) is not Status.BLOCKED and book.needs_refill(address):
            grant = GRANT_BATCH
        given = book.issue(address, self.identity.sign, self.me, grant, now, self.rng) \
            if grant and address != self.me else ()
        if address == self.me:  # our own inbox: we are its owner and grant ourselves one
            token: HeldToken | None = issue_tokens(self.identity.sign, ids.inbox_key(address),
                                                   1, now, self.rng)[0]
        else:
            token = book.take_token(address, now)
        book.save()
        supply = book.held_count(address, now)
        if token is not None:
            return Ticket(ids.inbox_key(address), token, 0,
                          Extras(given, supply, token.token.id))
        bits = self.params.stamp_bits if stamp_bits is None else stamp_bits
        inbox = ids.inbox_key(address) if stamp_bits is not None else ids.requests_key(address)
        return Ticket(inbox, None, bits, Extras(given, supply, b""))

    def wrote_to(self, addresses: Sequence[str]) -> None:
        """The user sends to `addresses` (the user's own action, never an entry's content):
        they may write back. Each one not yet allowed becomes ALLOWED, so the mail (or the RTS)
        carries a grant and later reads refill it; a request of theirs waiting for review is
        answered by this. A blocked address stays blocked (`allow` lifts a block)."""
        for address in addresses:
            if address != self.me and self.book.status(address) is Status.NONE:
                self.book.set_status(address, Status.ALLOWED)
                self.book.drop_request(address)
        self.book.save()

    async def sort(self, addresses: Sequence[str], certs: dict[str, AddressCert],
                   note: str) -> Sorted:
        """Who can be written to now; RTS to those who must be asked (one per recipient: not
        again while a request is outstanding, until it lapses)."""
        out = Sorted()
        now = self.clock.now()
        for address in addresses:
            if address == self.me or self.book.held_count(address, now):
                out.ready.append(address)
                continue
            policy = await self.fetch_policy(address)
            if policy is None:
                out.waiting[address] = ("has not published an inbox policy (old software, or "
                                        "never online): waiting")
                continue
            if policy.mode is PolicyMode.OPEN:
                out.ready.append(address)
                out.open_bits[address] = max(policy.stamp_bits, self.params.stamp_bits)
                continue
            asked = self.book.asked_at(address)
            if asked and now < asked + RTS_LAPSE:
                # Pending: another RTS would cost a stamp and a slot of their request-inbox
                # quota, and tell them nothing new.
                out.waiting[address] = (f"asked for permission to write on {_day(asked)}: "
                                        f"waiting for the answer (asks again after "
                                        f"{_day(asked + RTS_LAPSE)})")
                continue
            bits = max(policy.stamp_bits, self.params.stamp_bits)
            if await self.send_note(certs[address], NoteKind.REQUEST, note, REPLY_TOKENS,
                                    stamp_bits=bits):
                self.book.set_asked(address, int(now))
                self.book.save()
                out.asked[address] = "asked for permission to write (an RTS was sent)"
            else:
                out.waiting[address] = "could not deliver the request to write: will retry"
        return out

    async def send_note(self, cert: AddressCert, kind: NoteKind, text: str, grant: int, *,
                        stamp_bits: int | None = None) -> bool:
        """Seal a signed note (RTS or grant) to `cert`'s owner and append it: to the inbox with
        a token we hold, else to the request inbox with a stamp. True if a replica took it."""
        address = cert.address
        now = self.clock.now()
        if self.book.status(address) is Status.NONE:
            # We grant them, or we asked them (so they may answer): either way, allowed.
            self.book.set_status(address, Status.ALLOWED)
        t = self.ticket(address, grant=grant)
        if t.token is None and stamp_bits is not None:
            t.stamp_bits = stamp_bits
        note = make_note(self.identity.cert, self.identity.sign, address, kind, text, now)
        entry = envelope.seal_entry(note, cert.seal_key, t.inbox, self.rng, t.extras)
        placed = await self._append(address, t, entry, REQUEST_TTL)
        return bool(placed.receipts)

    async def _append(self, address: str, t: Ticket, entry: bytes, ttl: int) -> Placement:
        proof = await t.prove(entry, self.clock.now(), self.rng)
        return await self.place(address, t.inbox, entry, ttl, proof)

    # -- reading ---------------------------------------------------------------------------------

    def on_entry(self, plain: HeaderPlain, from_requests: bool, entry: bytes) -> bool:
        """Account for one verified entry (the caller verified its header or note; `entry`
        is its id). False: drop it, it spends a token already spent on another entry (replicas
        each keep one entry per token; reading them all, we see the rest). The first one read
        stands; the book counts the double spend, and only the owner blocks."""
        sender = plain.sender
        address = sender.address
        now = self.clock.now()
        book = self.book
        if address == self.me:
            return True
        if not from_requests and plain.spent and book.note_spent(address, plain.spent, entry,
                                                                 now) is not None:
            book.save()
            return False
        status = book.status(address)
        granted = envelope.valid_grant(plain, now)
        if status is not Status.BLOCKED and granted:
            book.add_held(address, granted, now)
        if status is not Status.BLOCKED:
            book.remember_cert(sender)  # verified: seals our grants without a lookup
        if not from_requests:
            book.note_supply(address, plain.supply)
            if book.needs_refill(address):
                self.owed.setdefault(address, False)
        note = plain.note
        if note is not None and note.kind is NoteKind.REQUEST:
            if status in (Status.CONTACT, Status.ALLOWED):
                self.owed[address] = True  # granted by the owner's policy, not by the note
            elif status is Status.NONE:
                book.add_request(sender, note.note, note.date)
        book.save()
        return True

    async def settle(self) -> Settled:
        """Send the grants that are due (policy grants for requests, refills), publish a
        changed policy."""
        out = Settled()
        if self.book.published < self.book.version:
            await self.publish_policy()
        for address, asked in sorted(self.owed.items()):
            if self.book.status(address) not in (Status.CONTACT, Status.ALLOWED):
                continue
            if not asked and not self.book.needs_refill(address):
                continue  # a message sent since carried the refill
            try:
                ok = await self.grant(address)
            except UserError:  # no certificate now, say: owed again at the next read
                ok = False
            (out.granted if ok else out.failed).append(address)
        self.owed.clear()
        return out

    async def cert_of(self, address: str) -> AddressCert:
        c = self.book.get(address).cert
        now = self.clock.now()
        if c is not None and c.expires > now:
            return c
        search = await fetch_cert(self.net, self.dht, address, self.params.replication,
                                  self.trusted_cas, self.clock, skew=self.params.clock_skew)
        if search.cert is None:
            raise UserError(f"no valid certificate found for {address}")
        self.book.remember_cert(search.cert)
        return search.cert

    async def grant(self, address: str, count: int = GRANT_BATCH) -> bool:
        """A CTS (or refill) of `count` tokens to `address`."""
        cert = await self.cert_of(address)
        policy_bits = None
        if not self.book.held_count(address, self.clock.now()):
            policy = await self.fetch_policy(address, ids.requests_key(address))
            if policy is not None:
                policy_bits = max(policy.stamp_bits, self.params.stamp_bits)
        return await self.send_note(cert, NoteKind.GRANT, "", count, stamp_bits=policy_bits)

    # -- the owner's commands --------------------------------------------------------------------

    async def allow(self, address: str) -> bool:
        """Grant `address` permits (answering its request, or unasked)."""
        if self.book.status(address) is not Status.CONTACT:
            self.book.set_status(address, Status.ALLOWED)
        self.book.drop_request(address)
        self.book.save()
        return await self.grant(address)

    async def block(self, address: str) -> tuple[int, int]:
        """Revoke `address`'s unspent tokens on every inbox replica; (revoked, replicas)."""
        revoked = self.book.block(address, self.clock.now())
        self.book.save()
        return revoked, await self.publish_policy()


def _day(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).strftime("%Y-%m-%d")


def introduce(a: Permits, b: Permits, count: int = GRANT_BATCH, *, save: bool = True) -> None:
    """Leave `a` and `b` as an RTS/CTS exchange would: contacts, each holding `count` of the
    other's tokens (simulations and tests that are about mail, not about asking). `save`
    False: the caller saves both books later (many introductions at once)."""
    now = a.clock.now()
    for x, y in ((a, b), (b, a)):
        x.book.set_status(y.me, Status.CONTACT)
        given = x.book.issue(y.me, x.identity.sign, x.me, count, now, x.rng)
        y.book.add_held(x.me, given, now)
    if save:
        for p in (a, b):
            p.book.save()
