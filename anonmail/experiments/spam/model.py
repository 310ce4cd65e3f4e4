"""A spammer against RTS/CTS permits: the model (DESIGN.md §6, §9; seed 003 §3.2, §7.1, §8.1;
threats T-PERMIT-SPAM, T-RTS-FLOOD).

The experiment: N storage nodes, every one behind the permit gate (permit/gate.py); V victims,
each a self-certifying address whose owner published a signed `InboxPolicy` (mode PERMITS, the
network's stamp difficulty) under its inbox key and its request-inbox key on the r closest
nodes. A spammer holds I certified identities (self-certified `.anon` addresses: anyone can
make as many as it likes, so "certified" buys the receiver nothing) and no permit. It tries:

(a) the inbox directly (`Attack.INBOX_*`): no proof; a permit token it signed itself (with an
    identity's key, for the victim's inbox, or a genuine token of the spammer's own inbox spent
    on the victim's); and a real proof-of-work stamp at the difficulty (a PERMITS inbox takes
    none). Every one must be refused: the measure is the entries every node's database holds in
    the victims' inboxes, which must be 0;
(b) the request inbox with RTS-like entries (`Attack.RTS`: ~2 KiB of random bytes standing in
    for a sealed request), each with a stamp minted at the difficulty. The spammer is smart: it
    stops sending to a victim as soon as an RTS comes back with no receipt and an INBOX_FULL
    refusal (it cannot learn that more cheaply: the gate checks the stamp before the quota), and
    it makes at most `max_rts` attempts per victim. Measured: the CPU seconds it spent minting
    (`time.process_time` around each mint, nothing else), the RTS that reached a request inbox
    (a receipt from at least one replica), and the most entries any request-inbox replica holds
    (the gate's quota, `REQUEST_ENTRIES`, bounds it);
(c) the request inbox without paying (`Attack.REQUEST_*`): no stamp, and a stamp below the
    difficulty (a random nonce, one hash to pick). Refused, at no minting cost; sent before (b)
    so the refusals are the stamp check's, not the quota's.

The price of (b) is the point: what one accepted request costs the spammer, in CPU seconds, at
the network's difficulty (MAINNET 18 bits, ~0.1 s a stamp); and that a victim's request inbox
holds at most `REQUEST_ENTRIES` (it is then full for everybody until the owner reads and ACKs).

Invariants: counts are per `append_replicated` call (one entry sent to the r replicas) unless
named per replica; results are frozen except the `Tally`s a run fills in.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from anonmail.permit.gate import REQUEST_ENTRIES
from anonmail.records.params import MAINNET


class Attack(enum.Enum):
    INBOX_BARE = "inbox, no proof"
    INBOX_FORGED = "inbox, permit signed by the spammer"
    INBOX_STAMPED = "inbox, stamp at the difficulty"
    REQUEST_BARE = "request inbox, no stamp"
    REQUEST_WEAK = "request inbox, stamp below the difficulty"
    RTS = "request inbox, stamp at the difficulty (RTS)"

    @property
    def on_inbox(self) -> bool:
        return self in (Attack.INBOX_BARE, Attack.INBOX_FORGED, Attack.INBOX_STAMPED)


@dataclass(frozen=True)
class SpamConfig:
    nodes: int = 300
    victims: int = 100
    identities: int = 1_000  # the spammer's certified (self-certified .anon) identities
    bits: int = MAINNET.stamp_bits  # the network's stamp difficulty; the sim is otherwise testnet
    spam: int = 10  # direct appends per victim, of each unstamped inbox kind (a)
    flood: int = 8  # free appends per victim to its request inbox, of each kind (c)
    max_rts: int = REQUEST_ENTRIES + 8  # the spammer's bound on RTS attempts per victim (b)
    entry_size: int = 2048  # bytes of one spam entry or RTS
    replication: int = 8  # r = params.replication
    seed: int = 1


@dataclass
class Tally:
    """What one kind of attack achieved: per append (one entry to its r replicas), and the
    refusals per replica by error code."""

    tried: int = 0
    accepted: int = 0  # appends with at least one replica's receipt
    receipts: int = 0  # replicas' receipts, summed
    refusals: Counter[str] = field(default_factory=Counter)  # ErrorCode name -> replicas
    failures: int = 0  # replicas unreachable or answering wrongly
    cpu: float = 0.0  # CPU seconds spent minting stamps for these appends

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())


@dataclass(frozen=True)
class SpamReport:
    config: SpamConfig
    tallies: dict[Attack, Tally]
    policies_placed: int  # policy receipts (of 2 V r wanted)
    inbox_entries: int  # entries the victims' inboxes hold, over every node's database
    inbox_holders: int  # nodes holding at least one such entry
    request_entries: int  # entries the victims' request inboxes hold, summed over replicas
    request_max: int  # the most one request-inbox replica holds
    request_quota: int  # REQUEST_ENTRIES
    replicas_full: int  # request-inbox replicas at the quota
    replicas_held: int  # request-inbox replicas holding anything
    distinct_max: int  # the most distinct RTS one victim would read (union of its replicas)
    victims_filled: int  # victims the spammer stopped at because their replicas said full
    virtual_seconds: float
    wall_build: float = 0.0
    wall_run: float = 0.0

    @property
    def direct(self) -> list[Tally]:
        return [t for a, t in self.tallies.items() if a.on_inbox]

    @property
    def rts(self) -> Tally:
        return self.tallies[Attack.RTS]

    @property
    def cpu_per_accepted(self) -> float | None:
        t = self.rts
        return t.cpu / t.accepted if t.accepted else None

    @property
    def cpu_per_stamp(self) -> float | None:
        t = self.rts
        return t.cpu / t.tried if t.tried else None
