"""Check (DESIGN.md §5; seed 002 §3.2, seed 001 §3 "Checking E-Mail", seed 003 §6.1).

1. READ every page of the inbox from all r replicas, with an owner proof per node and request
   (`store.client.read_all`); the replicas are not consistent, so take the union, de-duplicated
   by entry id (seed 002 §3.2 "the superset"; seed 003 §6.1 "a check on duplication on its local
   workstation");
2. for each entry not handled before: open it with our seal key, verify it (envelope.
   verify_header: for us, sender certificate valid, sender signature good); drop forgeries;
   de-duplicate by message id (the same message may arrive as different entries, e.g. a sender's
   retry);
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
from dataclasses import dataclass, field

from anonmail.clock import Clock
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.mail import envelope
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import LocalMail, PendingNotice
from anonmail.net.base import Network
from anonmail.records import ids
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.store.client import Lookup, ReadResult, ack_all, read_all

MAX_AGE = 30 * 86400  # the longest TTL a node keeps anything (StoreLimits.max_ttl)


@dataclass
class CheckReport:
    new: list[PendingNotice] = field(default_factory=list)
    duplicates: int = 0  # entries already handled, or second copies of a message
    rejected: Counter[str] = field(default_factory=Counter)  # fixed reason phrases -> count
    replicas_read: int = 0
    replicas_failed: int = 0
    to_ack: list[bytes] = field(default_factory=list)  # entry ids handled this time
    acked_nodes: int = 0  # nodes on which every handled entry was ACKed


async def collect(net: Network, dht: Lookup, identity: AddressIdentity, local: LocalMail, *,
                  params: NetworkParams, trusted_cas: frozenset[bytes], clock: Clock, rng: Rng,
                  max_age: int = MAX_AGE) -> tuple[CheckReport, ReadResult]:
    """Steps 1-3: read, open, verify, save. Nothing is ACKed here."""
    r = params.replication
    identity.check(trusted_cas, clock.now(), params.clock_skew)
    inbox = ids.inbox_key(identity.address)
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
            header = envelope.open_entry(item.entry, identity.seal, inbox)
            envelope.verify_header(header, identity.address, trusted_cas, now,
                                   params.clock_skew, max_age)
        except envelope.ForgedHeader:
            report.rejected["forged or altered"] += 1
        except RemoteProtocolError:
            report.rejected["unreadable (not sealed to us, or damaged)"] += 1
        else:
            mid = header.message_id
            if local.has_message(mid) or not local.add_pending(
                    PendingNotice(eid, header, int(now), item.expires)):
                report.duplicates += 1
            else:
                report.new.append(PendingNotice(eid, header, int(now), item.expires))
        # After the notification is on disk: from here on this entry is only ever ACKed.
        local.mark_seen(eid, item.expires + params.clock_skew)
        report.to_ack.append(eid)
    return report, res


async def check(net: Network, dht: Lookup, identity: AddressIdentity, local: LocalMail, *,
                params: NetworkParams, trusted_cas: frozenset[bytes], clock: Clock, rng: Rng,
                max_age: int = MAX_AGE) -> CheckReport:
    """Read, save, then ACK (the module docstring). Returns what was new."""
    report, res = await collect(net, dht, identity, local, params=params,
                                trusted_cas=trusted_cas, clock=clock, rng=rng, max_age=max_age)
    if report.to_ack:
        report.acked_nodes = await ack_all(
            net, dht, ids.inbox_key(identity.address), report.to_ack, identity.sign,
            identity.cert, params.replication, clock, rng, nodes=res.nodes)
    local.prune_seen(clock.now())
    return report
