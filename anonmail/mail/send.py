"""Send (DESIGN.md §5; seed 002 §3.1, seed 001 §3 "Composing E-mail").

For a composed message (compose.py) from an identity (identity.py):

1. fetch and verify every recipient's AddressCert from its r replicas (`store.client.fetch_cert`,
   which also repairs replicas that lacked it, seed 002 §2.4). A recipient without a valid
   certificate stops the send before anything is stored: one `UserError` line naming what is
   wrong (unknown, expired, untrusted CA);
2. encrypt the message once with a random body key (fragments.py) and STORE it once: the
   fragments (if any) first, then the body or descriptor under H("body", message id), each on
   its r = `params.replication` closest nodes with one delete hash per recipient. Storage is
   shared by all recipients (seed 002 §2.2: "the same amount of storage ... as a single
   recipient");
3. for each recipient, sign and seal a header (envelope.py) and APPEND it to the recipient's
   inbox on its r closest nodes;
4. every STORE and APPEND receipt is verified against the NodeCert the request went to; nodes
   that fail or answer wrongly are replaced by a fresh, wider set (seed 002 §3.1 step 6,
   `store.client`'s rounds). A step with fewer than `need` receipts fails.

Failure semantics: a body that cannot be stored on enough nodes fails the whole send
(`SendFailed`, nothing delivered, the sender's delete secrets remove what was stored). A
recipient whose inbox cannot take the header (full: quota; or unreachable) is reported in
`SendReport.failed` with a one-line reason; the sender uses that recipient's delete secret to
remove its right to the body at once, so nothing is left behind for it. Everyone else's delivery
stands. The caller (user_agent.py) keeps the message in the Outbox until every recipient has it.

Nothing here logs; the report is for the local user only.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from anonmail import crypto
from anonmail.clock import Clock
from anonmail.errors import ErrorCode, Refused, UserError
from anonmail.mail import envelope, fragments
from anonmail.mail.compose import Composed
from anonmail.mail.envelope import BodyFacts
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.permits import Ticket
from anonmail.net.base import Network
from anonmail.net.fanout import fan_out
from anonmail.records import ids
from anonmail.records.certs import AddressCert, is_anon_address
from anonmail.records.params import NetworkParams
from anonmail.records.receipts import Receipt
from anonmail.rng import Rng
from anonmail.store.client import (
    CertSearch,
    Lookup,
    Placement,
    append_replicated,
    closest,
    delete_all,
    fetch_cert,
    store_replicated,
)
from anonmail.store.messages import AppendProof, ObjectKind, delete_hash

DEFAULT_TTL = 14 * 86400  # bodies and headers; nodes clamp to their max_ttl (30 days)
DEFAULT_ROUNDS = 4  # fresh node sets tried per step (seed 002 §3.1 step 6)
APPEND_CONCURRENCY = 8


class Tickets(Protocol):
    """Where each recipient's permission comes from (mail/permits.py `Permits`)."""

    def ticket(self, address: str, *, stamp_bits: int | None = None,
               grant: int = 0) -> Ticket: ...

    async def place(self, address: str, inbox: bytes, entry: bytes, ttl: int,
                    proof: AppendProof, rounds: int = ..., *,
                    dht: Lookup | None = None) -> Placement: ...


@dataclass
class StepReport:
    """One replicated STORE or APPEND: the receipts that verified, and the typed refusals
    seen (by node id; store.client's `Placement`)."""

    what: str
    key: bytes
    receipts: list[Receipt] = field(default_factory=list)
    need: int = 0
    refusals: dict[bytes, Refused] = field(default_factory=dict)

    def take(self, placed: Placement) -> None:
        """The receipts of `placed`; its refusals added to those seen before."""
        self.receipts = placed.receipts
        self.refusals.update(placed.refusals)

    def refused_with(self, code: ErrorCode) -> bool:
        return any(e.code is code for e in self.refusals.values())

    @property
    def ok(self) -> bool:
        return len(self.receipts) >= self.need


@dataclass
class SendReport:
    message_id: str
    size: int  # bytes of the RFC 5322 message
    stored_bytes: int  # ciphertext bytes on each replica set (body or descriptor + fragments)
    body: StepReport
    fragments: list[StepReport] = field(default_factory=list)
    inboxes: dict[str, StepReport] = field(default_factory=dict)  # by recipient
    failed: dict[str, str] = field(default_factory=dict)  # recipient -> one-line reason
    waiting: dict[str, str] = field(default_factory=dict)  # waiting for a permit -> why

    @property
    def delivered(self) -> list[str]:
        return [a for a, step in self.inboxes.items() if a not in self.failed and step.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and self.body.ok and all(f.ok for f in self.fragments)

    def receipts(self) -> list[Receipt]:
        out = list(self.body.receipts)
        for step in (*self.fragments, *self.inboxes.values()):
            out.extend(step.receipts)
        return out


class SendFailed(UserError):
    """The send did not reach every recipient; `report` says what did."""

    def __init__(self, line: str, report: SendReport | None) -> None:
        super().__init__(line)
        self.report = report


def body_key_of(identity: AddressIdentity, message_id: str) -> bytes:
    """The body key of a message: a function of our seal secret and its id, so every send of
    one message stores one identical body (encryption is deterministic given the key)."""
    return crypto.kdf(identity.seal.secret, "mail-body-key", message_id.encode())


def sender_secret(identity: AddressIdentity, message_id: str) -> bytes:
    """Our own delete right on a message's body (held while recipients wait for a permit)."""
    return crypto.kdf(identity.seal.secret, "mail-sender-delete", message_id.encode())


def _utc(t: int) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).strftime("%Y-%m-%d")


# -- step 1: certificates -------------------------------------------------------------------------


def _why_no_cert(address: str, search: CertSearch, trusted_cas: frozenset[bytes], now: float,
                 skew: int) -> str:
    """Why no valid certificate was found, from what the replicas held: one line for the
    user."""
    if not search.rejected:
        return (f"no certificate found for {address}: check the address, or ask its owner to "
                f"publish one")
    newest = max(search.rejected, key=lambda c: c.issued)
    if now > newest.expires + skew:
        return (f"the certificate of {address} expired on {_utc(newest.expires)}: ask its "
                f"owner to renew it")
    if not is_anon_address(address) and newest.issuer not in trusted_cas:
        return f"the certificate of {address} is from a CA you do not trust"
    return f"the certificate found for {address} is not valid (forged or damaged)"


async def recipient_certs(net: Network, dht: Lookup, addresses: Sequence[str], r: int,
                          trusted_cas: frozenset[bytes], clock: Clock,
                          skew: int) -> dict[str, AddressCert]:
    """Every recipient's valid AddressCert, fetched in parallel; UserError naming each one
    that has none (seed 002 §3.1 step 1: "A authenticates the certificate")."""
    found: dict[str, AddressCert] = {}
    problems: dict[str, str] = {}

    async def one(address: str) -> CertSearch:
        return await fetch_cert(net, dht, address, r, trusted_cas, clock, skew=skew)

    for o in await fan_out(addresses, one, limit=APPEND_CONCURRENCY):
        assert o.value is not None
        if o.value.cert is not None:
            found[o.item] = o.value.cert
        else:
            problems[o.item] = _why_no_cert(o.item, o.value, trusted_cas, clock.now(), skew)
    if problems:
        raise SendFailed("; ".join(problems[a] for a in addresses if a in problems), None)
    return found


# -- steps 2-4 ------------------------------------------------------------------------------------


def _reason(step: StepReport) -> str:
    if step.refused_with(ErrorCode.INBOX_FULL):
        return "their inbox is full (quota): try again later"
    if step.refused_with(ErrorCode.PERMIT_REVOKED):
        return "they blocked you (your permits were revoked)"
    if step.refused_with(ErrorCode.PERMIT_REQUIRED) or step.refused_with(ErrorCode.PERMIT_SPENT) \
            or step.refused_with(ErrorCode.PERMIT_INVALID):
        return "their inbox did not take your permit: ask them again (send a new message)"
    if step.refused_with(ErrorCode.NO_POLICY):
        return "their inbox replicas hold no inbox policy yet: try again later"
    if step.refusals:
        first = next(iter(step.refusals.values()))
        return f"their inbox replicas refused the message ({first.detail})"
    return (f"only {len(step.receipts)} of {step.need} inbox replicas took the message: try "
            f"again later")


async def forget(net: Network, dht: Lookup, body: fragments.EncryptedBody, key: bytes,
                  secrets: Sequence[bytes], r: int) -> None:
    """Use our copies of delete secrets: remove those recipients' rights everywhere."""
    desc: fragments.Descriptor | None = None
    if body.fragments:
        refs = tuple(fragments.FragmentRef(k, len(ct)) for k, ct in body.fragments)
        desc = fragments.Descriptor(refs, body.padded_size, bytes(32))
    for secret in secrets:
        await delete_all(net, dht, key, secret, r, widen=fragments.WIDEN)
        if desc is not None:
            await fragments.delete_fragments(net, dht, desc, secret, r, widen=fragments.WIDEN)


async def send(net: Network, dht: Lookup, identity: AddressIdentity, msg: Composed, *,
               params: NetworkParams, trusted_cas: frozenset[bytes], clock: Clock, rng: Rng,
               ttl: int = DEFAULT_TTL, need: int | None = None, only: Sequence[str] | None = None,
               tickets: Tickets | None = None, open_bits: Mapping[str, int] | None = None,
               keep: bytes | None = None, certs: Mapping[str, AddressCert] | None = None,
               rounds: int = DEFAULT_ROUNDS,
               concurrency: int = fragments.DEFAULT_CONCURRENCY) -> SendReport:
    """Send `msg` (DESIGN.md §5). `need`: receipts each step needs (default r). `only`: deliver
    headers to these recipients only (recipients whose permission came later, or a retry of the
    ones that failed; the headers still list the message's To and Cc). `tickets`: each
    recipient's permit or stamp (`open_bits`: recipients whose open inboxes take a stamp of that
    many bits). The body key is derived from our seal key and the message id, so a later send
    of the same message to more recipients stores the very same body (the store merges their
    delete rights into it); `keep`: a delete secret of our own (`sender_secret`) whose right
    keeps the body and its fragments alive until every recipient has them. Raises SendFailed
    (a UserError) when the body cannot be stored or a certificate is missing; per-recipient
    failures are in the report."""
    r = params.replication
    need = r if need is None else need
    skew = params.clock_skew
    if msg.sender != identity.address:
        raise UserError("the message's From is not this identity's address")
    identity.check(trusted_cas, clock.now(), skew)
    targets = list(msg.recipients if only is None else dict.fromkeys(only))
    if not targets or any(t not in msg.recipients for t in targets):
        raise UserError("retry recipients must be among the message's recipients")

    # 1. certificates, before anything is stored
    if certs is None or any(t not in certs for t in targets):
        certs = await recipient_certs(net, dht, targets, r, trusted_cas, clock, skew)

    # 2. encrypt once, STORE once (fragments first: a descriptor never names missing ones)
    body_key = body_key_of(identity, msg.message_id)
    body = fragments.encrypt_body(msg.data, body_key)
    secrets = {a: rng.bytes(32) for a in targets}
    key = ids.body_key(msg.message_id)
    # A network with fewer than r live nodes (a test network, a young one) cannot give r
    # receipts: ask for as many as there are. In a network of r or more this is r.
    need = min(need, max(1, len(await closest(dht, key, r))))
    now = int(clock.now())
    report = SendReport(msg.message_id, len(msg.data), body.stored_bytes,
                        StepReport("body", key, need=need))
    if body.fragments:
        got = await fragments.store_fragments(net, dht, body,
                                              list(secrets.values()) + ([keep] if keep else []),
                                              ttl, r,
                                              clock, concurrency=concurrency, rounds=rounds)
        report.fragments = [StepReport(f"fragment {i + 1}/{len(body.fragments)}", k, rcpts, need)
                            for i, ((k, _), rcpts) in enumerate(zip(body.fragments, got.receipts,
                                                                    strict=True))]
    stored_ok = all(f.ok for f in report.fragments)
    if stored_ok:
        report.body.take(await store_replicated(
            net, dht, key, ObjectKind.BODY, body.blob, ttl,
            [delete_hash(s) for s in (*secrets.values(), *([keep] if keep else []))], r,
            clock=clock, skew=skew, rounds=rounds))
    if not (stored_ok and report.body.ok):
        await forget(net, dht, body, key, list(secrets.values()), r)
        tried = report.fragments if not stored_ok else [report.body]
        worst = min(len(s.receipts) for s in tried if not s.ok)
        raise SendFailed(f"could not store the message on enough nodes ({worst} of {need} "
                         f"replicas answered); nothing was delivered: try again later", report)

    # 3-4. a sealed, signed header per recipient, APPENDed to its inbox
    facts = BodyFacts(body_key, body.digest, len(msg.data), body.layout, len(body.fragments),
                      now + ttl)
    headers = envelope.build_headers(msg, identity.cert, identity.sign, facts, secrets)
    bits = open_bits or {}

    async def deliver(address: str) -> None:
        inbox = ids.inbox_key(address)
        proof: AppendProof | None = None
        if tickets is None:
            entry = envelope.seal_header(headers[address], certs[address].seal_key, inbox, rng)
        else:
            t = tickets.ticket(address, stamp_bits=bits.get(address))
            entry = envelope.seal_header(headers[address], certs[address].seal_key, inbox, rng,
                                         t.extras)
            proof = await t.prove(entry, clock.now(), rng)
        step = StepReport(f"inbox of {address}", inbox, need=need)
        report.inboxes[address] = step
        # One round first: a full inbox refuses on every replica, and trying ever farther
        # nodes would only park the header where its owner does not read (store/client's
        # retries are for nodes that failed, not for an inbox that is full).
        if tickets is not None and proof is not None:
            # (replicas lacking the owner's policy get it, mail/permits.py `place`)
            step.take(await tickets.place(address, inbox, entry, ttl, proof, rounds, dht=dht))
        else:
            step.take(await append_replicated(net, dht, inbox, entry, ttl, proof, r,
                                              clock=clock, skew=skew, rounds=1))
        if not step.ok and not step.refused_with(ErrorCode.INBOX_FULL) \
                and not step.refused_with(ErrorCode.PERMIT_REVOKED):
            # Repeats to the nodes that took it collapse (same entry id) and re-sign.
            step.take(await append_replicated(net, dht, inbox, entry, ttl, proof, r,
                                              clock=clock, skew=skew, rounds=rounds))
        if not step.ok:
            report.failed[address] = _reason(step)

    await fan_out(targets, deliver, limit=APPEND_CONCURRENCY)
    # A recipient no inbox replica took can never fetch the body: drop its right now. One
    # that some replicas took may still get the header (replicas republish): keep its right.
    lost = [a for a in report.failed if not report.inboxes[a].receipts]
    if lost:
        await forget(net, dht, body, key, [secrets[a] for a in lost], r)
    return report
