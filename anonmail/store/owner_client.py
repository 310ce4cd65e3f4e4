"""What the owner of an inbox calls: READ and ACK on its r replicas, under owner proofs.

* `read_all`: the union of every replica's entries, de-duplicated by entry id (seed 002 §3.2:
  the replicas are not consistent, so take the superset). The closest replica is read whole,
  the others briefly (entry ids only), and a replica naming an entry the whole read lacked is
  then read whole: the union is what reading every replica whole gives, while each entry
  crosses the network about once instead of r times (issue 11; threat T-BRIEF-READ);
* `ack_all`: ACK the ids on the r closest and on the nodes a READ reached.

A replica answers READ with whatever it likes, so what one replica's answer may hold is capped at
the inbox quota every honest node enforces (StoreLimits: 1,000 entries, 8 MiB of entries): a
replica that goes past it is failed, paging stops there and none of its answer is used (its
honest entries sit on the other replicas too). So one hostile replica costs the owner at most
one inbox's worth of memory and work per check, not MAX_PAGES full pages (threat
T-INBOX-FLOOD).

Through an anonymizer (a `Multicast` network) every request is a padded cell that crosses the
chain, so the brief READ of the r - 1 farther replicas goes as one request and the ACK of all
of them as one per chunk, each under one proof naming the nodes it serves (store/proofs.py;
threat T-REPLAY-OWNER); directly, every node gets its own one-node proof, which is smaller.
Nothing here logs or returns contents other than to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from anonmail import crypto
from anonmail.clock import Clock
from anonmail.errors import RemoteProtocolError
from anonmail.net.base import Network
from anonmail.net.fanout import Outcome, fan_out
from anonmail.records.certs import AddressCert, NodeCert
from anonmail.rng import Rng
from anonmail.store import messages as sm
from anonmail.store.client import REQUEST_ERRORS, Lookup, Multicast, closest
from anonmail.store.context import StoreLimits
from anonmail.store.proofs import make_owner_proof

MAX_PAGES = 64  # READ pages per node per call (a full inbox is ~16)
# What an honest replica can hold for one inbox (store/budget.py inbox_room): the most one
# replica's READ answer may carry, all pages together.
INBOX_ENTRIES = StoreLimits().inbox_entries
INBOX_BYTES = StoreLimits().inbox_bytes


class OverQuota(RemoteProtocolError):
    """A replica's READ answer holds more than any honest replica can hold for one inbox."""


@dataclass
class ReadResult:
    entries: dict[bytes, sm.InboxEntry] = field(default_factory=dict)  # by entry id
    nodes: list[NodeCert] = field(default_factory=list)  # replicas that answered every page
    failed: list[NodeCert] = field(default_factory=list)


async def read_all(net: Network, dht: Lookup, inbox: bytes, sign_key: crypto.SigningKey,
                   cert: AddressCert, r: int, clock: Clock, rng: Rng, *,
                   max_entries: int = INBOX_ENTRIES,
                   max_bytes: int = INBOX_BYTES) -> ReadResult:
    """READ every page from all r replicas; the union, de-duplicated by entry id (seed 002
    §3.2: the replicas are not consistent, so take the superset). A replica answering more
    than `max_entries` entries or `max_bytes` bytes of entries in all is failed (OverQuota).

    The closest replica is read whole and the others briefly, at once (ids only: every entry
    sits on r replicas, and reading it r times cost ~5% of a delivery's bytes, issue 11); a
    replica naming an entry the whole read lacked (or all of them, when that read failed) is
    then read whole. So the union is the same as reading every replica whole."""
    found = await closest(dht, inbox, r)

    def read(nodes: Sequence[NodeCert], after: int, brief: bool) -> sm.Read:
        proof = make_owner_proof(sign_key, cert, sm.OwnerOp.READ, inbox,
                                 [n.node_id for n in nodes], sm.args_digest_read(after, brief),
                                 clock.now(), rng)
        return sm.Read(inbox, after, proof, brief)

    async def call(node: NodeCert, brief: bool,
                   page: Any = None) -> tuple[list[sm.InboxEntry], set[bytes]]:
        """Every page of `node`: (its entries, if read whole; their ids, if read briefly).
        `page`: its answer to the first page, when that came by multicast."""
        entries: list[sm.InboxEntry] = []
        named: set[bytes] = set()
        after = count = size = 0
        for _ in range(MAX_PAGES):
            if page is not None:
                reply, page = page, None
            else:
                reply = await net.request(node, read([node], after, brief))
            if brief and isinstance(reply, sm.EntryIds):
                named.update(reply.ids)
                count += len(reply.ids)
            elif not brief and isinstance(reply, sm.Entries):
                entries.extend(reply.entries)
                count += len(reply.entries)
                size += sum(len(e.entry) for e in reply.entries)
            else:
                raise RemoteProtocolError(f"READ answered with {type(reply).__name__}")
            if count > max_entries or size > max_bytes:
                # Counted as sent (repeats too): an honest replica never repeats an entry.
                raise OverQuota("READ answered beyond the inbox quota")
            if not reply.more or reply.next <= after:
                break
            after = reply.next
        return entries, named

    result = ReadResult()

    def take(entries: Sequence[sm.InboxEntry]) -> None:
        for e in entries:
            eid = sm.entry_id(e.entry)
            old = result.entries.get(eid)
            if old is None or e.expires > old.expires:
                result.entries[eid] = e

    first = found[0] if found else None
    answered: list[NodeCert] = []
    named: dict[bytes, set[bytes]] = {}  # briefly read replica -> the ids it named
    if isinstance(net, Multicast) and len(found) > 2:
        # Through an anonymizer: one brief READ for all but the closest, under one proof
        # naming them (store/proofs.py), so one padded cell instead of r - 1.
        rest = list(found[1:])
        pages: dict[bytes, Outcome[NodeCert, Any]] = {}

        async def multicast() -> None:
            for o in await net.request_many(rest, read(rest, 0, True)):
                pages[o.item.node_id] = o

        async with trio.open_nursery() as nursery:
            nursery.start_soon(multicast)
            whole = await fan_out(found[:1], lambda node: call(node, False),
                                  catch=REQUEST_ERRORS)

        async def brief(node: NodeCert) -> tuple[list[sm.InboxEntry], set[bytes]]:
            page = pages[node.node_id]
            if page.error is not None:
                raise page.error
            return await call(node, True, page.value)

        outcomes = whole + await fan_out(rest, brief, catch=REQUEST_ERRORS)
    else:
        outcomes = await fan_out(found, lambda node: call(node, node is not first),
                                 catch=REQUEST_ERRORS)
    for o in outcomes:
        if o.value is None:
            result.failed.append(o.item)
            continue
        answered.append(o.item)
        take(o.value[0])
        named[o.item.node_id] = o.value[1]
    more = [n for n in answered if named[n.node_id] - result.entries.keys()]
    for again in await fan_out(more, lambda node: call(node, False), catch=REQUEST_ERRORS):
        if again.value is None:
            answered.remove(again.item)
            result.failed.append(again.item)
        else:
            take(again.value[0])
    result.nodes = answered
    return result


async def ack_all(net: Network, dht: Lookup, inbox: bytes, entry_ids: Sequence[bytes],
                  sign_key: crypto.SigningKey, cert: AddressCert, r: int, clock: Clock, rng: Rng,
                  *, nodes: Iterable[NodeCert] = ()) -> int:
    """ACK `entry_ids` on the r closest replicas and on `nodes` (e.g. those a READ reached);
    returns on how many nodes every id was ACKed."""
    found = await closest(dht, inbox, r)
    targets = {c.node_id: c for c in (*found, *nodes)}
    ids_ = tuple(dict.fromkeys(entry_ids))
    if not ids_:
        return 0

    def ack(nodes: Sequence[NodeCert], chunk: tuple[bytes, ...]) -> sm.Ack:
        proof = make_owner_proof(sign_key, cert, sm.OwnerOp.ACK, inbox,
                                 [n.node_id for n in nodes], sm.args_digest_ack(chunk),
                                 clock.now(), rng)
        return sm.Ack(inbox, chunk, proof)

    chunks = [ids_[i:i + sm.MAX_ACK] for i in range(0, len(ids_), sm.MAX_ACK)]
    to = list(targets.values())
    if isinstance(net, Multicast):
        # Through an anonymizer: one ACK for every replica, under one proof naming them all
        # (store/proofs.py): one padded cell per chunk instead of one per replica.
        acked = dict.fromkeys((n.node_id for n in to), True)
        for i in range(0, len(to), sm.MAX_PROOF_NODES):
            group = to[i:i + sm.MAX_PROOF_NODES]
            for chunk in chunks:
                for o in await net.request_many(group, ack(group, chunk)):
                    if not isinstance(o.value, sm.Acked):
                        acked[o.item.node_id] = False
        return sum(acked.values())

    async def call(node: NodeCert) -> bool:
        for chunk in chunks:
            reply = await net.request(node, ack([node], chunk))
            if not isinstance(reply, sm.Acked):
                raise RemoteProtocolError(f"ACK answered with {type(reply).__name__}")
        return True

    outcomes = await fan_out(to, call, catch=REQUEST_ERRORS)
    return sum(1 for o in outcomes if o.value is True)
