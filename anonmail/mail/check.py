"""Check (DESIGN.md §5; seed 002 §3.2, seed 001 §3 "Checking E-Mail", seed 003 §6.1).

1. READ every page of the inbox from all r replicas, under owner proofs
   (`store.owner_client.read_all`); the replicas are not consistent, so take the union,
   de-duplicated by entry id (seed 002 §3.2 "the superset"; seed 003 §6.1 "a check on
   duplication on its local workstation");
2. for each entry not handled before: open it with our seal key, verify it (envelope.
   verify_header: for us, sender certificate valid, sender signature good); drop forgeries;
   de-duplicate by message id (the same message may arrive as different entries, e.g. a sender's
   retry); drop an entry that spends a permit token already spent on another entry (a double
   spend: each replica keeps one entry per token, and only the owner reads them all);
3. write every new notification to the local store (maildir.LocalMail: durable, fsynced) and
   remember every handled entry id;
4. only then ACK the handled entries on every replica that answered and on the r closest.

Crash safety (threat T-CHECK-CRASH; the deviation from seed 002's read-and-delete, DESIGN.md
§4): the agent may die anywhere. Before step 3 completes nothing was ACKed, so the next check
reads the same entries; after it, the entries are on disk and marked seen, so the next check
reads them again, finds them seen, and ACKs them. No notification is lost and none is shown
twice. Rejected entries (forged, not for us, undecryptable) are ACKed too, so junk does not sit
in the inbox until its TTL; their count by reason is reported, never their content.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from anonmail.clock import Clock
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.mail import envelope
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import LocalMail, PendingNotice
from anonmail.mail.permits import Settled
from anonmail.mail.send import SendReport
from anonmail.net.base import Network
from anonmail.permit.notes import ForgedNote, verify_note
from anonmail.records import ids
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.store.client import Lookup
from anonmail.store.owner_client import ReadResult, ack_all, read_all

MAX_AGE = 30 * 86400  # the longest TTL a node keeps anything (StoreLimits.max_ttl)

# (verified entry, from the request inbox, entry id) -> False: drop it (a double spend)
OnEntry = Callable[[envelope.HeaderPlain, bool, bytes], bool]


@dataclass
class CheckReport:
    new: list[PendingNotice] = field(default_factory=list)
    duplicates: int = 0  # entries already handled, or second copies of a message
    rejected: Counter[str] = field(default_factory=Counter)  # fixed reason phrases -> count
    replicas_read: int = 0
    replicas_failed: int = 0
    to_ack: list[bytes] = field(default_factory=list)  # entry ids handled this time
    acked_nodes: int = 0  # nodes on which every handled entry was ACKed
    notes: int = 0  # permit notes (requests to write, grants) handled
    settled: Settled | None = None  # grants sent after this check
    flushed: list[SendReport] = field(default_factory=list)  # Outbox sends it made possible
    requests_pending: int = 0  # requests to write to us waiting for the owner's review

    def merge(self, other: CheckReport, *, main: bool) -> None:
        """Add the request inbox's report to the inbox's (`main`: the inbox's own)."""
        self.new += other.new
        self.duplicates += other.duplicates
        self.rejected.update(other.rejected)
        self.notes += other.notes
        self.to_ack += other.to_ack
        if main:
            self.replicas_read, self.replicas_failed = other.replicas_read, other.replicas_failed
            self.acked_nodes = other.acked_nodes


async def collect(net: Network, dht: Lookup, identity: AddressIdentity, local: LocalMail, *,
                  params: NetworkParams, trusted_cas: frozenset[bytes], clock: Clock, rng: Rng,
                  max_age: int = MAX_AGE, on_entry: OnEntry | None = None,
                  inbox: bytes | None = None) -> tuple[CheckReport, ReadResult]:
    """Steps 1-3: read, open, verify, save. Nothing is ACKed here. `inbox`: the inbox key
    (default ours; the request inbox holds RTS notes only). `on_entry` sees every verified
    entry (the permit book's accounting, mail/permits.py) and may drop it (a double spend)."""
    r = params.replication
    identity.check(trusted_cas, clock.now(), params.clock_skew)
    own = ids.inbox_key(identity.address)
    inbox = own if inbox is None else inbox
    requests = inbox != own
    res = await read_all(net, dht, inbox, identity.sign, identity.cert, r, clock, rng)
    report = CheckReport(replicas_read=len(res.nodes), replicas_failed=len(res.failed))
    if not res.nodes:
        raise UserError("could not reach any of your inbox replicas: check your connection "
                        "and try again")
    now = clock.now()
    for eid in sorted(res.entries):
        item = res.entries[eid]
        if local.seen(eid):
            report.duplicates += 1
            report.to_ack.append(eid)
            continue
        try:
            plain = envelope.open_entry(item.entry, identity.seal, inbox)
            header = plain.header
            if header is not None:
                if requests:
                    raise envelope.ForgedHeader("mail in the request inbox")
                envelope.verify_header(header, identity.address, trusted_cas, now,
                                       params.clock_skew, max_age)
            else:
                assert plain.note is not None
                verify_note(plain.note, identity.address, trusted_cas, now, params.clock_skew,
                            max_age)
        except (envelope.ForgedHeader, ForgedNote):
            report.rejected["forged or altered"] += 1
        except RemoteProtocolError:
            report.rejected["unreadable (not sealed to us, or damaged)"] += 1
        else:
            if on_entry is not None and not on_entry(plain, requests, eid):
                # A token already spent on another entry (mail/permits.py `on_entry`): the
                # entry read first stands, this one is never shown.
                report.rejected["spends a permit already spent (dropped)"] += 1
            elif header is None:
                report.notes += 1
            else:
                mid = header.message_id
                notice = PendingNotice(eid, header, int(now), item.expires)
                if local.has_message(mid) or not local.add_pending(notice):
                    report.duplicates += 1
                else:
                    report.new.append(notice)
        # After the notification is on disk: from here on this entry is only ever ACKed.
        local.mark_seen(eid, item.expires + params.clock_skew)
        report.to_ack.append(eid)
    return report, res


async def check(net: Network, dht: Lookup, identity: AddressIdentity, local: LocalMail, *,
                params: NetworkParams, trusted_cas: frozenset[bytes], clock: Clock, rng: Rng,
                max_age: int = MAX_AGE, on_entry: OnEntry | None = None,
                requests: bool = True) -> CheckReport:
    """Read, save, then ACK (the module docstring): the inbox, then (`requests`) the request
    inbox. Returns what was new."""
    keys = [ids.inbox_key(identity.address)]
    if requests:
        keys.append(ids.requests_key(identity.address))
    total = CheckReport()
    for i, key in enumerate(keys):
        try:
            report, res = await collect(net, dht, identity, local, params=params,
                                        trusted_cas=trusted_cas, clock=clock, rng=rng,
                                        max_age=max_age, on_entry=on_entry, inbox=key)
        except UserError:
            if i == 0:
                raise
            continue  # the inbox was read; its request inbox may be reached next time
        if report.to_ack:
            acked = await ack_all(net, dht, key, report.to_ack, identity.sign, identity.cert,
                                  params.replication, clock, rng, nodes=res.nodes)
            report.acked_nodes = acked
        total.merge(report, main=i == 0)
    local.prune_seen(clock.now())
    return total
