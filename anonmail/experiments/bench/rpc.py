"""`anonmail bench rpc`: how fast this machine serves the protocol, beside what its crypto allows.

It reads the real clock and the OS RNG (a benchmark measures this machine, not a seeded run).

`anonmail bench rpc` starts, in this process, one server node on loopback TCP that answers
FIND_NODE from a table of synthetic certificates (closest by a plain XOR sort), and drives it from
several client connections, each asking one request at a time. It prints requests served per
second and the mean latency, beside two bounds measured on this machine: Ed25519 verifications per
second (a DHT client verifies every certificate it is told about) and AEAD frame encrypt+decrypt
per second at the size of one FIND_NODE answer (the record layer's share of every request).

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
from dataclasses import dataclass
from typing import Any

import trio

from anonmail import crypto, wire
from anonmail.clock import SystemClock
from anonmail.dht.messages import FindNode, Nodes
from anonmail.net.base import Handler, Network, Peer
from anonmail.net.frames import FrameDecoder, FrameEncoder
from anonmail.net.tcp import AdmissionLimits, Response, TcpNetwork
from anonmail.records import ids, params
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.rng import SystemRng
from anonmail.sim.network import SimWorld

TABLE_SIZE = 200
PARAMS = params.testnet(puzzle_bits=0)  # loopback endpoints allowed; keys are cheap to make


@dataclass(frozen=True, slots=True)
class RpcResult:
    transport: str
    clients: int
    seconds: float
    requests: int
    latency_total: float  # seconds, summed over completed requests

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


def closest(table: list[tuple[bytes, NodeCert]], target: bytes,
            count: int) -> tuple[NodeCert, ...]:
    """The `count` certs nearest `target`; `table` holds (node id, cert) as a routing table would,
    so the ids are not re-hashed per request."""
    ranked = sorted(table, key=lambda entry: ids.distance(entry[0], target))
    return tuple(cert for _, cert in ranked[:count])


def find_node_handler() -> Handler:
    """A server that answers FIND_NODE from a table of synthetic certificates."""
    table = [(cert.node_id, cert) for cert in synthetic_table()]

    async def handler(peer: Peer, msg: Any) -> Any:
        if isinstance(msg, FindNode):
            return Nodes(closest(table, msg.target, msg.count))
        raise NotImplementedError

    return handler


async def drive(nets: Sequence[Network], server: NodeCert, seconds: float,
                transport: str) -> RpcResult:
    """Each client asks FIND_NODE back to back for `seconds`."""
    rng = SystemRng()
    done, latency = 0, 0.0

    async def client(net: Network) -> None:
        nonlocal done, latency
        while True:
            started = trio.current_time()
            await net.request(server, FindNode(rng.bytes(32), PARAMS.k))
            latency += trio.current_time() - started
            done += 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as drivers:
            for net in nets:
                drivers.start_soon(client, net)
    return RpcResult(transport, len(nets), seconds, done, latency)


async def rpc_over_tcp(seconds: float, clients: int) -> RpcResult:
    """One server on 127.0.0.1, `clients` connections asking FIND_NODE back to back."""
    clock, rng = SystemClock(), SystemRng()
    handler = find_node_handler()

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
            result = await drive(nets, server.local_cert, seconds, "tcp")
            nursery.cancel_scope.cancel()
    finally:
        for net in [*nets, server]:
            await net.aclose()
    return result


async def rpc_over_sim(seconds: float, clients: int) -> RpcResult:
    """The same workload through the simulated network with zero latency and every message
    encoded and decoded (as `anonmail sim` runs it with encode=True): what one simulated RPC
    costs in CPU, which bounds how many nodes and lookups a simulation can afford."""
    clock, rng = SystemClock(), SystemRng()
    world = SimWorld(PARAMS, rng, latency=(0.0, 0.0), encode=True)
    server_key = crypto.SigningKey.generate(rng)
    server_cert = NodeCert.issue(server_key, (Endpoint("198.18.0.1", 7000),), clock.now(),
                                 PARAMS)
    world.attach(server_cert).set_handler(find_node_handler())
    nets = [world.attach(NodeCert.issue(crypto.SigningKey.generate(rng), (), clock.now(), PARAMS))
            for _ in range(clients)]
    return await drive(nets, server_cert, seconds, "sim")


# Measurements of the same workload over each transport.
RPC_TRANSPORTS: dict[str, Callable[[float, int], Awaitable[RpcResult]]] = {
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


def report(rpc: RpcResult, verify: float, aead: float, size: int) -> str:
    k = PARAMS.k
    rows = [
        (f"FIND_NODE answered ({k} of {TABLE_SIZE} certs)", rpc.rate),
        ("Ed25519 verify (crypto.verify)", verify),
        (f"  = FIND_NODE answers a client can check ({k} each)", verify / k),
        (f"AEAD frame seal+open ({size:,} B)", aead),
    ]
    lines = [
        f"anonmail bench rpc: {rpc.transport}, {rpc.clients} client(s), {rpc.seconds:g} s, "
        "server and clients in one process",
        "",
        f"{'':52} {'per second':>12} {'x RPC':>8}",
    ]
    lines += [f"{name:52} {rate:>12,.0f} {rate / max(rpc.rate, 1e-9):>8.2f}" for name, rate in rows]
    lines.append(f"{'mean RPC latency':52} {rpc.mean_latency * 1000:>9.2f} ms")
    return "\n".join(lines)
