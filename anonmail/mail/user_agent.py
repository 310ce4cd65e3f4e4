"""`MailAgent`: one address identity's user agent on one node (DESIGN.md §5).

It bundles the identity (identity.py), the node's `Network` and DHT lookup, the local store
(maildir.py), the network parameters, the trusted CA keys, a Clock and an Rng, and offers what a
user does: publish the address certificate, send, check, retrieve, discard. The node layer
(`anonmail/agent/session.py`, the CLI and the control socket) wraps this; simulations use it
directly on a simulated node.

Local state guarantees: a message is written to the Outbox (with its Bcc line, which never
leaves the machine) before the network sees any of it, and moves to Sent only when every
recipient's inbox has its header; a failed send keeps it in the Outbox and raises one
`SendFailed` line (a UserError) that says who did not get it and why. Notifications are on disk
before they are ACKed (check.py); retrieved messages are on disk before the body is deleted
(retrieve.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import trio

from anonmail import wire
from anonmail.anon.client import AnonymousStore
from anonmail.clock import Clock
from anonmail.errors import UserError
from anonmail.mail import check as check_mod
from anonmail.mail import compose as compose_mod
from anonmail.mail import fragments
from anonmail.mail import permits as permits_mod
from anonmail.mail import retrieve as retrieve_mod
from anonmail.mail import send as send_mod
from anonmail.mail.compose import Attachment, Composed
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import LocalMail, PendingNotice, Waiting
from anonmail.mail.notices import expired
from anonmail.mail.permits import Permits
from anonmail.net.base import Network
from anonmail.permit.book import PermitBook
from anonmail.records import ids
from anonmail.records.params import NetworkParams
from anonmail.records.receipts import Receipt
from anonmail.rng import Rng
from anonmail.store.client import Lookup, store_replicated
from anonmail.store.lookups import OperationLookups, RecentLookups, looking_ahead
from anonmail.store.messages import ObjectKind

CERT_TTL = 30 * 86400  # nodes keep a certificate at most this long: republish before it ends
# How long a check reuses its own inboxes' replica set (fresh at once after any failure): a
# node that joins nearer the key is read from within this long.
INBOX_LOOKUP_TTL = 600.0


class MailAgent:
    def __init__(self, identity: AddressIdentity, net: Network, dht: Lookup,
                 local: LocalMail | Path, params: NetworkParams, clock: Clock, rng: Rng, *,
                 trusted_cas: frozenset[bytes] = frozenset(), ttl: int = send_mod.DEFAULT_TTL,
                 concurrency: int = fragments.DEFAULT_CONCURRENCY,
                 look_ahead: bool = True) -> None:
        self.identity = identity
        self.net = net
        self.dht = dht
        self.local = local if isinstance(local, LocalMail) else LocalMail(local)
        self.params = params
        self.clock = clock
        self.rng = rng
        self.trusted_cas = trusted_cas
        self.ttl = ttl
        self.concurrency = concurrency
        # Look a send's independent keys up at once (`store.lookups.looking_ahead`); off only
        # to measure the difference (`anonmail bench mail --no-look-ahead`).
        self.look_ahead = look_ahead
        self.checked = False  # has this agent checked (and flushed) in this session?
        # Our own inboxes' replicas, kept between checks (store/lookups.py RecentLookups).
        self.inbox_lookups = RecentLookups(
            dht, clock, (ids.inbox_key(identity.address), ids.requests_key(identity.address)),
            INBOX_LOOKUP_TTL)
        book = PermitBook.load(self.local.root / permits_mod.BOOK_FILE, params.stamp_bits)
        self.permits = Permits(net, dht, identity, book, params, clock, rng, trusted_cas)

    def __repr__(self) -> str:
        return f"MailAgent({self.identity!r})"

    @property
    def address(self) -> str:
        return self.identity.address

    # -- certificate -----------------------------------------------------------------------------

    async def publish_cert(self) -> list[Receipt]:
        """STORE our AddressCert on its r closest nodes (seed 002 §2.4: the owner checks that
        the closest nodes hold it; call again at least every CERT_TTL), and our inbox policy
        (DESIGN.md §6: without it no replica can check a permit). UserError if no node took
        the certificate."""
        cert = self.identity.cert
        now = int(self.clock.now())
        self.identity.check(self.trusted_cas, now, self.params.clock_skew)
        ttl = max(1, min(CERT_TTL, cert.expires - now))
        placed = await store_replicated(self.net, self.dht, cert.key, ObjectKind.CERT,
                                        wire.encode(cert), ttl, (), self.params.replication,
                                        clock=self.clock, skew=self.params.clock_skew,
                                        rounds=send_mod.DEFAULT_ROUNDS)
        receipts = placed.receipts
        if not receipts:
            raise send_mod.SendFailed("no node took your address certificate: check your "
                                      "connection and try again", None)
        await self.permits.publish_policy()
        return receipts

    # -- sending ---------------------------------------------------------------------------------

    def compose(self, to: Sequence[str], cc: Sequence[str] = (), bcc: Sequence[str] = (),
                subject: str = "", body: str = "",
                attachments: Sequence[Attachment] = ()) -> Composed:
        return compose_mod.compose(self.address, to, cc, bcc, subject, body, attachments,
                                   self.clock, self.rng)

    async def send(self, to: Sequence[str], cc: Sequence[str] = (), bcc: Sequence[str] = (),
                   subject: str = "", body: str = "",
                   attachments: Sequence[Attachment] = ()) -> send_mod.SendReport:
        """Compose and send. Raises SendFailed (a UserError) if anyone did not get it."""
        return await self.send_composed(self.compose(to, cc, bcc, subject, body, attachments))

    async def send_message(self, data: bytes) -> send_mod.SendReport:
        """Send a ready RFC 5322 message (its From must be ours; Bcc lines are honoured and
        taken out; the Message-ID is replaced). For a mail client's submission."""
        return await self.send_composed(compose_mod.prepare(data, self.address, self.clock,
                                                            self.rng))

    async def send_composed(self, msg: Composed,
                            only: Sequence[str] | None = None) -> send_mod.SendReport:
        """Send now to every recipient that has granted us a permit (or whose inbox is open);
        ask the others (an RTS) and keep the message in the Outbox for them: it goes out to
        each by itself (`flush`) once their grant is seen. Raises SendFailed if a recipient
        could not be reached (the message stays in the Outbox)."""
        self.local.queue_outgoing(msg.message_id, with_bcc(msg))
        try:
            return await self._send_composed(msg, only)
        finally:
            await self._retire()

    async def _retire(self) -> None:
        """End of one operation: an anonymous store takes fresh go-betweens for the next, so
        no Z (and no inbox replica, which sees Z) can group two of our messages."""
        if isinstance(self.net, AnonymousStore):
            with trio.CancelScope(shield=True):
                await self.net.retire()

    async def _send_composed(self, msg: Composed,
                             only: Sequence[str] | None) -> send_mod.SendReport:
        targets = list(msg.recipients if only is None else only)
        dht = OperationLookups(self.dht)  # one lookup per key in this send (store/lookups.py)
        if not self.look_ahead:
            return await self._send_with(dht, msg, targets)
        # The send's independent keys are looked up at once, not one after the other.
        keys = [*(ids.cert_key(a) for a in targets), ids.body_key(msg.message_id),
                *(ids.inbox_key(a) for a in targets)]
        return await looking_ahead(dht, keys, self.params.replication,
                                   lambda: self._send_with(dht, msg, targets))

    async def _send_with(self, dht: OperationLookups, msg: Composed,
                         targets: list[str]) -> send_mod.SendReport:
        try:
            certs = await send_mod.recipient_certs(
                self.net, dht, targets, self.params.replication, self.trusted_cas,
                self.clock, self.params.clock_skew)
        except send_mod.SendFailed as e:
            raise send_mod.SendFailed(f"{e}; the message is kept in your Outbox",
                                      e.report) from None
        # The user writes to them: they may write back (tokens ride with this message, or with
        # the RTS). Here, on the user's own send, never on anything an entry says.
        self.permits.wrote_to(targets)
        sorted_ = await self.permits.sort(targets, certs, f"Subject: {msg.subject}")
        later = {**sorted_.asked, **sorted_.waiting}
        earlier = self.local.waiting(msg.message_id)
        keep = send_mod.sender_secret(self.identity, msg.message_id)
        report = send_mod.SendReport(msg.message_id, len(msg.data), 0,
                                     send_mod.StepReport("body", b"", need=0))
        if sorted_.ready:
            try:
                report = await send_mod.send(
                    self.net, dht, self.identity, msg, params=self.params,
                    trusted_cas=self.trusted_cas, clock=self.clock, rng=self.rng,
                    ttl=self.ttl, only=sorted_.ready, tickets=self.permits,
                    open_bits=sorted_.open_bits, keep=keep if later or earlier else None,
                    certs=certs, concurrency=self.concurrency)
            except send_mod.SendFailed as e:
                raise send_mod.SendFailed(f"{e}; the message is kept in your Outbox",
                                          e.report) from None
        report.waiting = dict(later)
        now = int(self.clock.now())
        since = {w.address: w.since for w in earlier}
        still = tuple(Waiting(a, why, a in later, since.get(a, now))
                      for a, why in {**later, **report.failed}.items())
        others = tuple(w for w in earlier if w.address not in targets)
        self.local.set_waiting(msg.message_id, others + still)
        if report.failed:
            who = "; ".join(f"{a}: {why}" for a, why in report.failed.items())
            raise send_mod.SendFailed(f"not delivered to {who}; the message is kept in your "
                                      f"Outbox", report)
        if not (others + still):
            self.local.mark_sent(msg.message_id)
            if earlier:  # our own right kept the body alive for late recipients: let it go
                body = fragments.encrypt_body(msg.data, send_mod.body_key_of(self.identity,
                                                                             msg.message_id))
                await send_mod.forget(self.net, dht, body, ids.body_key(msg.message_id),
                                      [keep], self.params.replication)
        return report

    async def flush(self) -> list[send_mod.SendReport]:
        """Send Outbox messages to the recipients whose permission has come since (the
        grant was read by `check`). Failures stay in the Outbox, with their reason."""
        out = []
        now = self.clock.now()
        for state in self.local.outbox():
            due = [w.address for w in state.waiting
                   if w.permit and self.permits.book.held_count(w.address, now)]
            if due:
                with contextlib.suppress(UserError):  # its reason stays in the Outbox
                    out.append(await self.retry(state.message_id, due))
        return out

    async def retry(self, message_id: str, only: Sequence[str] | None = None
                    ) -> send_mod.SendReport:
        """Send an Outbox message again, to `only` (default: everyone it has not reached)."""
        data = self.local.outgoing(message_id)
        if data is None:
            raise UserError(f"no message {message_id} in your Outbox")
        msg = compose_mod.prepare(data, self.address, self.clock, self.rng, keep_id=True)
        if only is None:
            waiting = self.local.waiting(message_id)
            only = [w.address for w in waiting] or list(msg.recipients)
        return await self.send_composed(msg, only)

    # -- receiving -------------------------------------------------------------------------------

    async def check(self, *, flush: bool = True) -> check_mod.CheckReport:
        """Collect new mail and permit notes (both inboxes); then send the grants that are due
        and the Outbox messages whose recipients have granted us permission since."""
        try:
            report = await check_mod.check(self.net, OperationLookups(self.inbox_lookups),
                                           self.identity,
                                           self.local,
                                           params=self.params, trusted_cas=self.trusted_cas,
                                           clock=self.clock, rng=self.rng,
                                           on_entry=self.permits.on_entry)
        finally:
            await self._retire()
        self.checked = True
        # Outbox first: its messages carry the refills that are due; then the grants left.
        report.flushed = await self.flush() if flush else []
        report.settled = await self.permits.settle()
        report.requests_pending = len(self.permits.book.requests())
        return report

    def pending(self) -> list[PendingNotice]:
        return self.local.pending()

    async def retrieve(self, message_id: str, sender: str | None = None
                       ) -> retrieve_mod.RetrieveReport:
        """Retrieve the notice of (message_id, sender) (without sender: the Message-ID's
        first); one UserError line if its body has expired (retrieve.py)."""
        try:
            return await retrieve_mod.retrieve(self.net, OperationLookups(self.dht), self.local,
                                               message_id, sender=sender,
                                               now=self.clock.now(), params=self.params,
                                               concurrency=self.concurrency)
        finally:
            await self._retire()

    async def retrieve_all(self) -> list[retrieve_mod.RetrieveReport]:
        """Retrieve every pending notice, each by its sender, except those whose body has
        expired (kept for the user to discard)."""
        now = self.clock.now()
        return [await self.retrieve(n.header.message_id, n.sender) for n in self.pending()
                if not expired(n, now, self.params.clock_skew)]

    async def discard(self, message_id: str, sender: str | None = None) -> int:
        """Give up the notice of (message_id, sender) (without sender: the Message-ID's
        first); the nodes that no longer hold our right to its body (none asked when the body
        has expired)."""
        try:
            return await retrieve_mod.discard(self.net, OperationLookups(self.dht), self.local,
                                              message_id, sender=sender, now=self.clock.now(),
                                              params=self.params, concurrency=self.concurrency)
        finally:
            await self._retire()


def with_bcc(msg: Composed) -> bytes:
    """The local copy keeps the Bcc line (it never leaves this machine)."""
    if not msg.bcc:
        return msg.data
    eol = b"\r\n" if b"\r\n" in msg.data[:200] else b"\n"
    return b"Bcc: " + ", ".join(msg.bcc).encode() + eol + msg.data
