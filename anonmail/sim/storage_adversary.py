"""Storage adversaries for simulations: nodes that sign receipts and keep nothing (threat
T-RECEIPT-DROP; DESIGN.md §4, §9; seed 002 §4 signed receipts, seed 003 §6.1 reliability).

`StorageDropper` wraps a node's honest `StoreService` (an alternative handler, never a
monkey-patch, DESIGN.md §1). It answers every store request with the honest code, so its
answers, refusals and receipts are exactly an honest node's: a STORE or APPEND gets a valid
receipt, signed by the node's key over the right op, key, digest and expiry, which the client's
`check_receipt` accepts. Then it forgets what it was given. Afterwards FETCH finds nothing
(`NotFound`), READ returns no entries, and the dropper never republishes anything: its database
holds no object and no inbox entry, ever. Nothing in one answer distinguishes it from an honest
node that has just lost its disk; only a later read does, and the receipt is the signed evidence.

Two variants (`lie_in_probe`):
* plain: asked by a republishing replica what it lacks (`Probe`), it truthfully lacks
  everything, takes the pushed copy (valid receipt again) and drops it again, every interval:
  it costs the network one push per key it is among the r closest for, per interval;
* lying: it claims to hold whatever it is offered, so nobody pushes to it. With this store's
  repair (each holder pushes to each of the r closest separately, store/service.py) that only
  saves the adversary bandwidth: a push to a dropper is lost either way, and the handover rule
  ("drop my copy once all r closest hold it") is fooled equally by both variants, since the
  plain dropper signs a receipt for the push. A lie in Probe would suppress repair only if the
  replicas agreed among themselves who repairs (Kademlia §2.5's "skip if someone republished
  to me"): then one liar could silence the others. The mail experiment (experiments/mail/,
  `anonmail sim mail --lying`) runs both.

Invariants: after every request the dropper's database holds no object and no inbox entry (it
may keep owner-proof nonces and ACK records, which are metadata, not mail); it never issues a
receipt the honest handler would not have issued; it routes DHT requests honestly (it is a
storage adversary, not a routing one: sim/adversary.py has the routing liar).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anonmail.net.base import Peer
from anonmail.store.messages import (
    Append,
    Appended,
    Needs,
    Probe,
    Replicate,
    Replicated,
    Store,
    Stored,
    Wanted,
    entry_id,
)
from anonmail.store.service import StoreService


@dataclass
class DropStats:
    receipts: int = 0  # STORE / APPEND receipts signed for data then dropped
    objects: int = 0  # objects dropped (client STOREs and republish pushes)
    entries: int = 0  # inbox entries dropped (APPENDs and replicated entries)
    lies: int = 0  # Probe answers claiming to hold everything


class StorageDropper:
    """A storage node that answers like an honest one and keeps nothing (module docstring)."""

    def __init__(self, service: StoreService, *, lie_in_probe: bool = False) -> None:
        self.service = service
        self.lie_in_probe = lie_in_probe
        self.stats = DropStats()

    @property
    def node_id(self) -> bytes:
        return self.service.node_id

    @property
    def requests(self) -> tuple[type, ...]:
        """It stands in for the service in the node's registry (net/services.py)."""
        return self.service.requests

    async def handle(self, peer: Peer, msg: Any) -> Any:
        """Answer store requests in place of `service.handle`."""
        if self.lie_in_probe and isinstance(msg, Probe):
            self.stats.lies += 1
            return Needs(tuple(Wanted(()) for _ in msg.items))
        reply = await self.service.handle(peer, msg)
        db = self.service.db
        if isinstance(msg, Store) and isinstance(reply, Stored):
            with db.transaction():
                db.drop_object(msg.key)
            self.stats.receipts += 1
            self.stats.objects += 1
        elif isinstance(msg, Append) and isinstance(reply, Appended):
            with db.transaction():
                db.drop_entries(msg.inbox, (entry_id(msg.entry),))
            self.stats.receipts += 1
            self.stats.entries += 1
        elif isinstance(msg, Replicate) and isinstance(reply, Replicated):
            with db.transaction():
                self.stats.entries += db.drop_entries(
                    msg.inbox, [entry_id(e.entry) for e in msg.entries])
        return reply
