"""Check (DESIGN.md §5; seed 002 §3.2, seed 001 §3 "Checking E-Mail", seed 003 §6.1).

1. READ every page of the inbox from all r replicas, under owner proofs
   (`store.owner_client.read_all`); the replicas are not consistent, so take the union,
   de-duplicated by entry id (seed 002 §3.2 "the superset"; seed 003 §6.1 "a check on
   duplication on its local workstation");
2. for each entry not handled before: open it with our seal key, verify it (envelope.
   verify_header: for us, sender certificate valid, sender signature good); drop forgeries;
   de-duplicate by (sender, message id) (the same message may arrive as different entries,
   e.g. a sender's retry); drop an entry that spends a permit token already spent on another
   entry (a double spend: each replica keeps one entry per token, and only the owner reads
   them all);
3. write every new notification to the local store (maildir.LocalMail: durable, fsynced) and
   remember every verified entry id;
4. only then ACK the handled entries on every replica that answered and on the r closest.

Hostile input (threats T-MAIL-DEDUP, T-INBOX-FLOOD):
* a Message-ID is no secret (every recipient reads it), so anyone may sign a header reusing
  another sender's: two senders' notices for one Message-ID are kept side by side and an entry
  is a duplicate only of a notice or a retrieved copy from its own sender; entries are taken
  in the order the replicas hold them, not by entry id, which the sender chooses;
* a replica chooses the entries it answers and the expiry it states: one answer is capped at the
  inbox quota (owner_client.read_all), an entry that does not verify leaves no record here (it is
  opened again if served again: cheap), and a verified entry's seen record lasts until its date
  is too old for verify_header (`max_age`) or its stated expiry, capped at max_ttl from now,
  whichever is later. So the seen records are bounded by what verifies, and an entry a replica
  serves again later is found seen or refused by age: a message the user retrieved and deleted
  does not come back from a replay.

Crash safety (threat T-CHECK-CRASH; the deviation from seed 002's read-and-delete, DESIGN.md
§4): the agent may die anywhere. Before step 3 completes nothing was ACKed, so the next check
reads the same entries; after it, the entries are on disk and marked seen, so the next check
reads them again, finds them seen, and ACKs them. No notification is lost and none is shown
twice. Rejected entries (forged, not for us, undecryptable) are ACKed too, so junk does not sit
in the inbox until its TTL (no seen record: if served again they are judged and ACKed again);
their count by reason is reported, never their content.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from anonmail.clock import Clock
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.mail import compose, envelope
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import LocalMail, PendingNotice, message_name
from anonmail.mail.notices import MAX_TTL
from anonmail.mail.permits import Settled
from anonmail.mail.send import SendReport
from anonmail.net.base import Network
from anonmail.permit.notes import ForgedNote, verify_note
from anonmail.records import ids
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.store.client import Lookup
from anonmail.store.owner_client import ReadResult, ack_all, read_all

MAX_AGE = MAX_TTL  # the oldest header date accepted (verify_header)

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
    for eid, item in res.entries.items():  # the replicas' order (read_all): arrival, roughly
        report.to_ack.append(eid)  # junk too: it must not hold the inbox quota
        if local.seen(eid):
            report.duplicates += 1
            continue
        try:
            plain = envelope.open_entry(item.entry, identity.seal, inbox)
            header = plain.header
            if header is not None:
                if requests:
                    raise envelope.ForgedHeader("mail in the request inbox")
                envelope.verify_header(header, identity.address, trusted_cas, now,
                                       params.clock_skew, max_age)
                date = header.date
            else:
                assert plain.note is not None
                verify_note(plain.note, identity.address, trusted_cas, now, params.clock_skew,
                            max_age)
                date = plain.note.date
        except (envelope.ForgedHeader, ForgedNote):
            report.rejected["forged or altered"] += 1
            continue  # no seen record: anyone can make junk, and it is cheap to judge again
        except RemoteProtocolError:
            report.rejected["unreadable (not sealed to us, or damaged)"] += 1
            continue
        else:
            if on_entry is not None and not on_entry(plain, requests, eid):
                # A token already spent on another entry (mail/permits.py `on_entry`): the
                # entry read first stands, this one is never shown.
                report.rejected["spends a permit already spent (dropped)"] += 1
            elif header is None:
                report.notes += 1
            else:
                # Only the same sender's copy makes a duplicate: a Message-ID reused by another
                # sender must not hide (and get ACKed away) the genuine message (T-MAIL-DEDUP).
                notice = PendingNotice(eid, header, int(now), item.expires)
                sender = header.sender.address
                if retrieved(local, header.message_id, sender) or not local.add_pending(notice):
                    report.duplicates += 1
                else:
                    report.new.append(notice)
        # After the notification is on disk: from here on this entry is only ever ACKed.
        local.mark_seen(eid, seen_until(item.expires, date, now, params.clock_skew, max_age))
    return report, res


def retrieved(local: LocalMail, message_id: str, sender: str) -> bool:
    """Whether the Maildir holds `message_id` from `sender` (retrieve saves only a body whose
    From is its header's sender; another sender's copy under that Message-ID is not it)."""
    head = local.read_head(message_name(message_id))
    try:
        return head is not None and compose.parse(head).sender == sender
    except UserError:
        return False  # not well-formed (a mail client rewrote it?): not this sender's copy


def seen_until(expires: int, date: int, now: float, skew: int, max_age: int) -> int:
    """How long to remember a verified entry: while a replica may still hold it (its stated
    expiry, which a hostile replica may inflate: capped at max_ttl from now) and while
    verify_header would still accept its date (a replay after that is refused by age)."""
    return max(min(expires, int(now) + MAX_TTL), date + max_age) + skew


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
    local.prune_seen(clock.now(), max(MAX_TTL, max_age) + 2 * params.clock_skew)
    return total
