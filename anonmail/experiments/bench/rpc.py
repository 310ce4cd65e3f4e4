"""`anonmail bench rpc`: how fast this machine serves the protocol, beside what its crypto allows.

It reads the real clock and the OS RNG (a benchmark measures this machine, not a seeded run).

`anonmail bench rpc` starts, in this process, one server node on loopback TCP that answers
FIND_NODE as a DhtNode does (a real RoutingTable filled from synthetic certificates, answers made
by dht/tags.py), and drives it from several client connections, each asking one request at a time
and checking each answer as a lookup does (certificates through its verification cache, tags
resolved). Two runs: cold askers that list nothing (every contact comes as a certificate, the
only kind of answer before issue 11) and warm ones that list the certificates they hold nearest
the target (answers of tags). It prints requests served and checked per second and the mean
latency, beside bounds measured on this machine: Ed25519 verifications per second (a client
that had to verify every certificate anew could check verify/k answers a second), the answers of
k certificates a client absorbs with its verification cache warm, and AEAD frame encrypt+decrypt
per second at the size of one FIND_NODE answer (the record layer's share of every request).

Over TCP it also times redials (issue 11): one client opening a new connection for each
FIND_NODE, with a full handshake every time and then resuming its last session by ticket
(net/resumption.py), admission opened wide so that only the handshake is measured.

Server and clients share one CPU core (one trio thread), so the RPC rate is a floor for a real
server, which does not pay for its clients.

`--transport sim` runs the same workload through the simulated network (zero latency, every
message encoded and decoded): the CPU cost of one simulated RPC, which bounds the size of a
simulation. `--transport both` prints the two side by side. The command-line front-end is
command.py; `report` formats one measurement.

Invariants: both transports run the same handler and the same client loop (`drive`), so their
rates differ only by the transport; only completed requests are counted.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import trio

from anonmail import crypto, wire
from anonmail.clock import SystemClock
from anonmail.dht.messages import FindNode, Nodes
from anonmail.dht.routing import Contact, ContactCache, RoutingTable
from anonmail.dht.tags import MAX_HAVE, Known, answer_parts
from anonmail.net import rpc
from anonmail.net.base import Handler, Network, Peer
from anonmail.net.frames import FrameDecoder, FrameEncoder
from anonmail.net.tcp import AdmissionLimits, Response, TcpLimits, TcpNetwork
from anonmail.records import params
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.rng import SystemRng
from anonmail.sim.network import SimWorld

TABLE_SIZE = 200
ASKS = 256  # distinct FIND_NODE requests the clients cycle through
PARAMS = params.testnet(puzzle_bits=0)  # loopback endpoints allowed; keys are cheap to make


@dataclass(frozen=True, slots=True)
class RpcResult:
    transport: str
    clients: int
    seconds: float
    requests: int
    latency_total: float  # seconds, summed over completed requests
    warm: bool = False  # the askers listed what they hold (answers of tags)
    redial_full: float = 0.0  # new connections (+ one FIND_NODE) a second, full handshakes
    redial_resumed: float = 0.0  # ... resumed by ticket (0.0: not measured)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def mean_latency(self) -> float:
        return self.latency_total / max(self.requests, 1)


def synthetic_table(n: int = TABLE_SIZE) -> tuple[NodeCert, ...]:
    rng, now = SystemRng(), SystemClock().now()
    return tuple(
        NodeCert.issue(crypto.SigningKey.generate(rng),
                       (Endpoint(f"10.{i // 250}.{i % 250}.1", 7000),), now, PARAMS)
        for i in range(n))


class Table:
    """The server's routing table (a real `RoutingTable`, so the handler does what a node's
    does) filled from synthetic certificates, and a warm asker's knowledge of the same nodes."""

    def __init__(self, n: int = TABLE_SIZE) -> None:
        now = SystemClock().now()
        self.contacts = [Contact.of(cert) for cert in synthetic_table(n)]
        self.routing = RoutingTable(bytes(32), PARAMS, now)
        for c in self.contacts:
            self.routing.add(c, now)

    def have(self, target: bytes) -> bytes:
        """What an asker that already holds these nodes lists (dht/tags.py)."""
        return Known(target, self.routing.closest(target, MAX_HAVE)).have()


def find_node_handler(table: Table) -> Handler:
    """A server that answers FIND_NODE as a DhtNode does (dht_node.DhtNode.answer)."""

    async def handler(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, FindNode):
            return Nodes(*answer_parts(table.routing.closest(msg.target, msg.count), msg.have))
        raise NotImplementedError

    return handler


async def drive(nets: Sequence[Network], server: NodeCert, seconds: float,
                transport: str, table: Table, warm: bool) -> RpcResult:
    """Each client asks FIND_NODE back to back for `seconds` and checks every answer as a
    lookup does (certificates through its verification cache, tags resolved); `warm`: it lists
    what it holds, so the answers carry tags, else every contact comes as a certificate."""
    rng = SystemRng()
    done, latency = 0, 0.0
    now = SystemClock().now()

    # The asks, made before timing: a lookup builds what it knows once, not per request.
    asks = []
    for _ in range(ASKS):
        target = rng.bytes(32)
        known = Known(target, table.routing.closest(target, MAX_HAVE)) if warm else None
        asks.append((FindNode(target, PARAMS.k, known.have() if known else b""), known))

    async def client(net: Network) -> None:
        nonlocal done, latency
        cache = ContactCache(PARAMS)
        i = rng.randbelow(ASKS)
        while True:
            started = trio.current_time()
            i = (i + 1) % ASKS
            ask, known = asks[i]
            have = ask.have
            reply = await net.request(server, ask)
            assert isinstance(reply, Nodes)
            for cert in reply.certs:
                cache.contact(cert, now)
            if known is not None:
                known.resolve(reply.known, have)
            latency += trio.current_time() - started
            done += 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as drivers:
            for net in nets:
                drivers.start_soon(client, net)
    return RpcResult(transport, len(nets), seconds, done, latency, warm)


async def rpc_over_tcp(seconds: float, clients: int, warm: bool = False) -> RpcResult:
    """One server on 127.0.0.1, `clients` connections asking FIND_NODE back to back."""
    clock, rng = SystemClock(), SystemRng()
    table = Table()
    handler = find_node_handler(table)

    # Every client is a local process's key on 127.0.0.1: room for all of them at once.
    admission = AdmissionLimits(max_connections=clients + 8, max_per_shared_source=clients + 1,
                                shared_handshake_burst=clients + 1,
                                global_handshake_burst=clients + 1)
    server = TcpNetwork(crypto.SigningKey.generate(rng), PARAMS, clock, rng,
                        admission=admission)
    server.cert = NodeCert.issue(server.key, (await server.bind("127.0.0.1", 0),), clock.now(),
                                 PARAMS)
    nets = [TcpNetwork(crypto.SigningKey.generate(rng), PARAMS, clock, rng)
            for _ in range(clients)]
    for net in nets:
        net.cert = NodeCert.issue(net.key, (), clock.now(), PARAMS)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, handler)
            result = await drive(nets, server.local_cert, seconds, "tcp", table, warm)
            nursery.cancel_scope.cancel()
    finally:
        for net in [*nets, server]:
            await net.aclose()
    if warm:
        return result
    full, resumed = await redial_rates(min(max(seconds / 5, 0.3), 2.0), table)
    return replace(result, redial_full=full, redial_resumed=resumed)


async def redial_rates(seconds: float, table: Table) -> tuple[float, float]:
    """New connections a second from one client, each carrying one FIND_NODE and closed after
    it: with a full handshake every time (no tickets kept), then resuming by ticket."""
    clock, rng = SystemClock(), SystemRng()
    wide = AdmissionLimits(max_per_shared_source=10**6, max_per_key=10**6,
                           max_pending_per_source=10**6, shared_handshake_rate=1e12,
                           shared_handshake_burst=1e12, global_handshake_rate=1e12,
                           global_handshake_burst=1e12)
    server = TcpNetwork(crypto.SigningKey.generate(rng), PARAMS, clock, rng, admission=wide)
    server.cert = NodeCert.issue(server.key, (await server.bind("127.0.0.1", 0),), clock.now(),
                                 PARAMS)
    ask = FindNode(rng.bytes(32), PARAMS.k)
    rates = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, find_node_handler(table))
            for tickets in (0, TcpLimits().max_tickets):
                net = TcpNetwork(crypto.SigningKey.generate(rng), PARAMS, clock, rng,
                                 limits=TcpLimits(max_tickets=tickets))
                net.cert = NodeCert.issue(net.key, (), clock.now(), PARAMS)
                await net.request(server.local_cert, ask)  # the first leaves a ticket
                await net.dialer.aclose()
                done, start = 0, time.perf_counter()
                with trio.move_on_after(seconds):
                    while True:
                        await net.request(server.local_cert, ask)
                        await net.dialer.aclose()
                        done += 1
                rates.append(done / (time.perf_counter() - start))
                await net.aclose()
            nursery.cancel_scope.cancel()
    finally:
        await server.aclose()
    return rates[0], rates[1]


async def rpc_over_sim(seconds: float, clients: int, warm: bool = False) -> RpcResult:
    """The same workload through the simulated network with zero latency and every message
    encoded and decoded (as `anonmail sim` runs it with encode=True): what one simulated RPC
    costs in CPU, which bounds how many nodes and lookups a simulation can afford."""
    clock, rng = SystemClock(), SystemRng()
    world = SimWorld(PARAMS, rng, latency=(0.0, 0.0), encode=True)
    server_key = crypto.SigningKey.generate(rng)
    server_cert = NodeCert.issue(server_key, (Endpoint("198.18.0.1", 7000),), clock.now(),
                                 PARAMS)
    table = Table()
    world.attach(server_cert).set_handler(find_node_handler(table))
    nets = [world.attach(NodeCert.issue(crypto.SigningKey.generate(rng), (), clock.now(), PARAMS))
            for _ in range(clients)]
    return await drive(nets, server_cert, seconds, "sim", table, warm)


# Measurements of the same workload over each transport.
RPC_TRANSPORTS: dict[str, Callable[[float, int, bool], Awaitable[RpcResult]]] = {
    "tcp": rpc_over_tcp,
    "sim": rpc_over_sim,
}


def _per_second(seconds: float, op: Callable[[], object]) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        for _ in range(50):
            op()
        n += 50
    return n / (now - start)


def verify_rate(seconds: float) -> float:
    """Ed25519 verifications per second (`crypto.verify` of a certificate-sized message)."""
    key = crypto.SigningKey.generate(SystemRng())
    message = bytes(200)
    signature = key.sign("bench", message)
    return _per_second(seconds, lambda: crypto.verify(key.public, "bench", message, signature))


def frame_size() -> int:
    """Plaintext bytes of one FIND_NODE answer frame (k certificates)."""
    nodes = Nodes(synthetic_table(PARAMS.k))
    return len(wire.encode(Response(2**32, wire.encode(nodes))))


def aead_rate(seconds: float, size: int) -> float:
    """Frames of `size` bytes sealed and opened per second."""
    key = SystemRng().bytes(crypto.AEAD_KEY_SIZE)
    enc, dec = FrameEncoder(key, size), FrameDecoder(key, size)
    plaintext = bytes(size)

    def round_trip() -> None:
        dec.receive_data(enc.encode(plaintext))
        dec.next_frame()

    return _per_second(seconds, round_trip)


def absorb_rate(seconds: float) -> float:
    """Cold FIND_NODE answers (k certificates, as received) a client decodes and checks per
    second, its verification cache warm (`ContactCache`: a certificate seen before costs a dict
    lookup and the validity window, not a signature)."""
    table = Table()
    rng, now = SystemRng(), SystemClock().now()
    cache = ContactCache(PARAMS)
    answers = [wire.encode(Nodes(tuple(c.cert for c in table.routing.closest(rng.bytes(32),
                                                                            PARAMS.k))))
               for _ in range(64)]
    for c in table.contacts:
        cache.contact(c.cert, now)
    i = 0

    def absorb() -> None:
        nonlocal i
        i += 1
        nodes = rpc.decode_response(answers[i % len(answers)], PARAMS.max_frame)
        for cert in nodes.certs:
            cache.contact(cert, now)

    return _per_second(seconds, absorb)


def report(runs: Sequence[RpcResult], verify: float, aead: float, size: int,
           absorb: float) -> str:
    """One table for a transport: the cold and warm runs, beside the client's bounds."""
    k = PARAMS.k
    base = runs[0].rate
    rows = []
    for run in runs:
        what = "tags for what the asker holds" if run.warm else f"{k} certificates each"
        rows.append((f"FIND_NODE answered and checked ({what})", run.rate))
    rows += [
        ("Ed25519 verify (crypto.verify)", verify),
        (f"  = answers of {k} new certificates a client can check", verify / k),
        (f"answers of {k} certificates a client absorbs (cache warm)", absorb),
        (f"AEAD frame seal+open ({size:,} B)", aead),
    ]
    head = runs[0]
    if head.redial_full:
        rows += [("new connection + FIND_NODE: full handshake", head.redial_full),
                 ("new connection + FIND_NODE: resumed by ticket", head.redial_resumed)]
    lines = [
        f"anonmail bench rpc: {head.transport}, {head.clients} client(s), {head.seconds:g} s "
        "a run, server and clients in one process",
        "",
        f"{'':60} {'per second':>12} {'x RPC':>8}",
    ]
    lines += [f"{name:60} {rate:>12,.0f} {rate / max(base, 1e-9):>8.2f}" for name, rate in rows]
    for run in runs:
        label = "mean RPC latency" + (" (tags)" if run.warm else "")
        lines.append(f"{label:60} {run.mean_latency * 1000:>9.2f} ms")
    return "\n".join(lines)
