"""`anonmail bench mail`, loopback half: deliveries per second and bytes on the wire per
delivered message over real TCP, against the floor of message size x r.

It runs, in this process, a testnet of real `Node`s on 127.0.0.1 (SQLite stores in a temporary
directory, fsync on every commit, handlers off the event loop as in `anonmail node`) and two
agent sessions (Alice and Bob, each a DHT client with its own transport key). Alice sends M
messages of S bytes; Bob checks and retrieves them all. A delivery is a retrieved message
byte-identical to what was sent. Bytes on the wire are the sum of what every node and agent put
on its sockets (handshakes, frames, lookups, receipts: everything).

It reads the real clock and the OS RNG (a benchmark measures this machine, not a seeded run).
Invariant: a delivery counts only if the retrieved bytes equal the bytes sent; the nodes, their
stores and the agents' mail live in a temporary directory removed afterwards.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from anonmail.agent.session import AgentConfig, session
from anonmail.anon.client import AnonymousStore
from anonmail.clock import SystemClock
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.permits import introduce
from anonmail.mail.user_agent import MailAgent
from anonmail.net.tcp import TcpNetwork
from anonmail.node.process import Node
from anonmail.permit.book import GRANT_BATCH, MAX_ISSUED
from anonmail.records import ids
from anonmail.records.certs import Endpoint
from anonmail.records.params import testnet
from anonmail.rng import SystemRng


@dataclass(frozen=True)
class MailBench:
    transport: str
    nodes: int
    replication: int  # effective r: min(r, nodes)
    messages: int
    size: int  # bytes of each RFC 5322 message as sent
    delivered: int
    seconds: float
    wire_bytes: int

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_delivered(self) -> float:
        return self.wire_bytes / max(self.delivered, 1)

    @property
    def floor(self) -> int:
        return self.size * self.replication


def format_bench(b: MailBench) -> str:
    ratio = b.bytes_per_delivered / b.floor if b.floor else 0.0
    return "\n".join([
        f"anonmail bench mail: {b.transport}, {b.nodes} nodes, r = {b.replication}, "
        f"{b.messages} messages of {b.size:,} bytes",
        f"  delivered            {b.delivered}/{b.messages} byte-identical",
        f"  deliveries / second  {b.per_second:,.2f}  (send + check + retrieve + delete, "
        f"{b.seconds:.1f} s)",
        f"  wire bytes / mail    {b.bytes_per_delivered:,.0f}  = {ratio:.2f} x the floor "
        f"(size x r = {b.floor:,})",
    ])


async def bench_tcp(messages: int, size: int, nodes: int = 5, *,
                    anonymous: bool = False) -> MailBench:
    """Alice mails Bob `messages` messages of `size` bytes over a loopback testnet; with
    `anonymous`, both agents go through go-betweens (anon/), as `anonmail send` does."""
    params = testnet(puzzle_bits=4)
    clock, rng = SystemClock(), SystemRng()
    with tempfile.TemporaryDirectory(prefix="anonmail-bench-") as tmp:
        root = Path(tmp)
        running: list[Node] = []
        async with trio.open_nursery() as nursery:
            for i in range(nodes):
                boot = (running[0].endpoint,) if running and running[0].endpoint else ()
                node = Node(ids.grind_node_key(params.puzzle_bits, rng), params, clock, rng,
                            listen=Endpoint("127.0.0.1", 0), bootstrap=boot,
                            store_file=root / f"store{i}.sqlite")
                await nursery.start(node.run)
                running.append(node)
            for node in running:  # let early joiners learn of the later ones
                await node.join()
            entry = tuple(n.endpoint for n in running if n.endpoint is not None)
            people = []
            for name in ("alice", "bob"):
                ident = AddressIdentity.create_anon(name, rng, clock.now())
                people.append((ident, AgentConfig(params, entry, frozenset(), root / name)))
            (alice_id, alice_cfg), (bob_id, bob_cfg) = people
            body = "x" * max(0, size - 600) + "\n"  # the headers make up the rest

            async with session(alice_id, alice_cfg, clock, rng, anonymous=anonymous) as alice, \
                    session(bob_id, bob_cfg, clock, rng, anonymous=anonymous) as bob:
                await bob.publish_cert()
                # Correspondents (as after RTS/CTS), Alice holding a token for every message:
                # with the usual batch of 16 the rest would wait in her Outbox for a refill.
                introduce(alice.permits, bob.permits, max(GRANT_BATCH, min(messages, MAX_ISSUED)))
                start_bytes = _wire(running, alice, bob)
                t0 = time.perf_counter()
                outgoing = [alice.compose([bob.address], subject=f"bench {i}", body=body)
                            for i in range(messages)]
                for msg in outgoing:
                    await alice.send_composed(msg)
                await bob.check()
                got = await bob.retrieve_all()
                seconds = time.perf_counter() - t0
                wire_bytes = _wire(running, alice, bob) - start_bytes
            by_id = {r.message_id: r.data for r in got}
            delivered = sum(1 for m in outgoing if by_id.get(m.message_id) == m.data)
            nursery.cancel_scope.cancel()
    how = "anonymous" if anonymous else "direct"
    return MailBench(f"tcp (loopback), {how}", nodes, min(params.replication, nodes), messages,
                     len(outgoing[0].data) if outgoing else size, delivered, seconds,
                     wire_bytes)


def _wire(nodes: list[Node], *agents: MailAgent) -> int:
    nets: list[object] = [n.net for n in nodes]
    for a in agents:
        if isinstance(a.net, AnonymousStore):  # its circuits' and its lookups' transports
            nets += [a.net.gb.net, getattr(a.net.gb.dht, "net", None)]
        else:
            nets.append(a.net)
    return sum(net.stats.sent for net in nets if isinstance(net, TcpNetwork))
