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

from collections.abc import Sequence
from pathlib import Path

from anonmail import wire
from anonmail.clock import Clock
from anonmail.mail import check as check_mod
from anonmail.mail import compose as compose_mod
from anonmail.mail import fragments
from anonmail.mail import retrieve as retrieve_mod
from anonmail.mail import send as send_mod
from anonmail.mail.compose import Attachment, Composed
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import LocalMail, PendingNotice
from anonmail.net.base import Network
from anonmail.records.params import NetworkParams
from anonmail.records.receipts import Receipt
from anonmail.rng import Rng
from anonmail.store.client import Lookup, store_replicated
from anonmail.store.messages import ObjectKind

CERT_TTL = 30 * 86400  # nodes keep a certificate at most this long: republish before it ends


class MailAgent:
    def __init__(self, identity: AddressIdentity, net: Network, dht: Lookup,
                 local: LocalMail | Path, params: NetworkParams, clock: Clock, rng: Rng, *,
                 trusted_cas: frozenset[bytes] = frozenset(), ttl: int = send_mod.DEFAULT_TTL,
                 concurrency: int = fragments.DEFAULT_CONCURRENCY,
                 proof_for: send_mod.ProofFor | None = None) -> None:
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
        self.proof_for = proof_for

    def __repr__(self) -> str:
        return f"MailAgent({self.identity!r})"

    @property
    def address(self) -> str:
        return self.identity.address

    # -- certificate -----------------------------------------------------------------------------

    async def publish_cert(self) -> list[Receipt]:
        """STORE our AddressCert on its r closest nodes (seed 002 §2.4: the owner checks that
        the closest nodes hold it; call again at least every CERT_TTL). UserError if no node
        took it."""
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
        self.local.queue_outgoing(msg.message_id, _with_bcc(msg))
        try:
            report = await send_mod.send(
                self.net, self.dht, self.identity, msg, params=self.params,
                trusted_cas=self.trusted_cas, clock=self.clock, rng=self.rng, ttl=self.ttl,
                only=only, proof_for=self.proof_for, concurrency=self.concurrency)
        except send_mod.SendFailed as e:
            raise send_mod.SendFailed(f"{e}; the message is kept in your Outbox",
                                      e.report) from None
        if report.failed:
            who = "; ".join(f"{a}: {why}" for a, why in report.failed.items())
            raise send_mod.SendFailed(f"not delivered to {who}; the message is kept in your "
                                      f"Outbox", report)
        self.local.mark_sent(msg.message_id)
        return report

    # -- receiving -------------------------------------------------------------------------------

    async def check(self) -> check_mod.CheckReport:
        return await check_mod.check(self.net, self.dht, self.identity, self.local,
                                     params=self.params, trusted_cas=self.trusted_cas,
                                     clock=self.clock, rng=self.rng)

    def pending(self) -> list[PendingNotice]:
        return self.local.pending()

    async def retrieve(self, message_id: str) -> retrieve_mod.RetrieveReport:
        return await retrieve_mod.retrieve(self.net, self.dht, self.local, message_id,
                                           params=self.params, concurrency=self.concurrency)

    async def retrieve_all(self) -> list[retrieve_mod.RetrieveReport]:
        return [await self.retrieve(n.header.message_id) for n in self.pending()]

    async def discard(self, message_id: str) -> None:
        await retrieve_mod.discard(self.net, self.dht, self.local, message_id,
                                   params=self.params, concurrency=self.concurrency)


def _with_bcc(msg: Composed) -> bytes:
    """The local copy keeps the Bcc line (it never leaves this machine)."""
    if not msg.bcc:
        return msg.data
    eol = b"\r\n" if b"\r\n" in msg.data[:200] else b"\n"
    return b"Bcc: " + ", ".join(msg.bcc).encode() + eol + msg.data
