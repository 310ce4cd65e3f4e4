"""`anonmail bench mail`, simulated half: deliveries per wall-clock second and bytes on the
simulated wire per delivered message, against the floor of message size x r.

It runs the mail experiment (experiments/mail/run.py) on honest nodes without churn, every
message encoded (so the byte count is exact, not sampled): sends over 1 virtual hour, each read
0.1-0.5 h later. Deliveries per second are over the workload only, not building the network:
the CPU cost of the mail layer on the simulator, which bounds the size of a simulation.

Bytes are split (sim/metrics.py): the mail's are everything sent for the workload's sends,
checks and retrievals, by the agents and by the go-betweens and storage nodes on their behalf;
the rest is the network's upkeep (republishing what it holds, the agents' certificates,
policies and inboxes among it), which does not grow with the mail and is printed per node-hour.
The total per delivery is printed too: with few messages it is mostly upkeep.

Invariants: a delivery counts only if the retrieved bytes equal the bytes sent; the run is
reproducible from `seed` except for the wall-clock rate. Call outside trio (`run` starts its
own, under MockClock).
"""

from __future__ import annotations

from dataclasses import dataclass

from anonmail.anon.onion import size_class
from anonmail.anon.options import DEFAULT
from anonmail.experiments.mail.model import MailConfig
from anonmail.experiments.mail.report import human_size
from anonmail.experiments.mail.run import run

# The same workload at commit 08acdaa, before issue 11, on the reference machine (2 cores;
# docs/performance.md), re-measured 2026-12-05: per delivery, everything on the wire (upkeep
# included), as (messages, bytes / floor). A run of that workload prints it beside its own,
# so the before and after of the issue are on one screen; keyed by (nodes, messages, size,
# seed, anonymous).
BEFORE_ISSUE_11: dict[tuple[int, int, int, int, bool], tuple[int, float]] = {
    (1000, 20, 20_000, 1, False): (2397, 19.1),
    (1000, 20, 20_000, 1, True): (10188, 92.2),
}


@dataclass(frozen=True)
class BenchResult:
    nodes: int
    messages: int
    delivered: int
    wall_seconds: float  # the workload only (not building the network)
    virtual_seconds: float
    wire_bytes: int  # every byte on the simulated wire during the workload (encoded)
    mail_bytes: float  # of which sent for the workload's operations (sim/metrics.py OPERATION)
    wire_messages: int  # requests and replies during the workload
    mean_size: float  # bytes of one RFC 5322 message
    replication: int
    send_latency: float = 0.0  # mean virtual seconds a send took
    anonymous: bool = False
    mail_messages: int = 0  # of wire_messages, sent for the workload's operations
    body_bytes: float = 0.0  # mean bytes of one replica's STORE of the body, on the wire
    before: tuple[int, float] | None = None  # BEFORE_ISSUE_11's figures for this workload

    @property
    def padded_floor(self) -> float:
        """The least an anonymous delivery moves with issue 8's defences as they are by default
        (anon/options.py): the body's STORE crosses the hops + 1 links from A to Z in cells of
        its size class, then goes to r replicas; its FETCH comes back from one replica to Z and
        over the same number of links. Lookups, inbox operations and receipts come on top."""
        links = DEFAULT.hops + 1
        cell = size_class(int(self.body_bytes)) if DEFAULT.padding else self.body_bytes
        return 2 * links * cell + (self.replication + 1) * self.body_bytes

    @property
    def rate(self) -> float:
        """Deliveries per wall-clock second."""
        return self.delivered / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def bytes_per_delivered(self) -> float:
        """Everything on the wire, the network's upkeep included, per delivery."""
        return self.wire_bytes / max(self.delivered, 1)

    @property
    def mail_per_delivered(self) -> float:
        """What the mail itself cost: the workload's operations, per delivery."""
        return self.mail_bytes / max(self.delivered, 1)

    @property
    def upkeep_per_node_hour(self) -> float:
        hours = self.virtual_seconds / 3600
        return (self.wire_bytes - self.mail_bytes) / max(self.nodes * hours, 1e-9)

    @property
    def floor(self) -> float:
        """The least any design moves: the message stored on r replicas."""
        return self.mean_size * self.replication


def bench_sim(*, nodes: int = 200, messages: int = 100, agents: int = 20, size: int = 5_000,
              replication: int = 8, seed: int = 1, anonymous: bool = False,
              look_ahead: bool = True) -> BenchResult:
    """The simulated half of `anonmail bench mail` (module docstring); with `anonymous` the
    agents go through go-betweens (all honest here); without `look_ahead` a send looks its
    keys up one after the other (MailAgent's `look_ahead`)."""
    config = MailConfig(nodes=nodes, messages=messages, agents=agents, replication=replication,
                        droppers=0.0, churn=0.0, send_hours=1.0, delay_hours=(0.1, 0.5),
                        size=(size, size), encode=True, seed=seed, anonymous=anonymous,
                        sample_every=1, look_ahead=look_ahead)
    rep = run(config)
    stores = rep.meter.sampled[("mail", "Store")]
    body = rep.meter.sampled_bytes[("mail", "Store")] / stores if stores else 0.0
    took = [x.sent - x.send_at for x in rep.letters if x.sent is not None and x.attempts == 1]
    return BenchResult(nodes, messages, rep.delivered, rep.wall_run, rep.virtual_seconds,
                       rep.exact_bytes or 0, rep.meter.bytes("mail"),
                       rep.meter.messages("mail") + rep.meter.messages("upkeep"), rep.mean_size,
                       replication, sum(took) / len(took) if took else 0.0, anonymous,
                       rep.meter.messages("mail"), body,
                       BEFORE_ISSUE_11.get((nodes, messages, size, seed, anonymous)))


def format_bench(b: BenchResult) -> str:
    per = max(b.delivered, 1)
    how = "anonymous (through go-betweens)" if b.anonymous else "direct"
    return "\n".join([
        f"simulated: {b.nodes} nodes, {b.messages} messages of {human_size(b.mean_size)}, "
        f"r={b.replication}, {how}, every message encoded",
        f"  deliveries per second (wall clock)   {b.rate:>12.1f}   "
        f"({b.delivered} in {b.wall_seconds:.1f} s)",
        f"  mail's bytes on the wire / delivery  {human_size(b.mail_per_delivered):>12}   "
        f"({b.mail_per_delivered / max(b.floor, 1):.2f}x the floor)",
        f"  floor: message size x r              {human_size(b.floor):>12}",
        *([f"  least with the anonymity defences    {human_size(b.padded_floor):>12}   "
           f"({b.padded_floor / max(b.floor, 1):.2f}x the floor; this run "
           f"{b.mail_per_delivered / max(b.padded_floor, 1):.2f}x it: the body in "
           f"{human_size(size_class(int(b.body_bytes)))} cells over {DEFAULT.hops + 1} links, "
           "stored and fetched)"] if b.anonymous and b.body_bytes else []),
        f"  mail's messages on the wire / deliv. {b.mail_messages / per:>12.0f}",
        f"  mean send latency (virtual seconds)  {b.send_latency:>12.2f}",
        f"  upkeep per node-hour (republish)     {human_size(b.upkeep_per_node_hour):>12}",
        f"  everything / delivery, upkeep too    {human_size(b.bytes_per_delivered):>12}   "
        f"({b.bytes_per_delivered / max(b.floor, 1):.2f}x the floor, "
        f"{b.wire_messages / per:.0f} messages)",
        *([f"  the same before issue 11 (08acdaa)   {b.before[0]:>12,} messages   "
           f"({b.before[1]:.1f}x the floor; now {b.before[0] * per / max(b.wire_messages, 1):.1f}"
           f"x fewer messages)"] if b.before else []),
    ])
