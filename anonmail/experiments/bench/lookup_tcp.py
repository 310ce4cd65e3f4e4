"""`anonmail bench lookup`, anonmail's side: one worker process's share of a loopback network of
real DHT nodes over TCP (the parent, lookup.py with lookup_procs.py, runs P of these).

Each node is what `anonmail node` runs for the DHT (node/process.py without the store and relay
services, which a lookup never reaches): its own `TcpNetwork` on 127.0.0.1 (the authenticated,
encrypted transport with its connection pool, admission and limits), its own `CertCache`, a
`DhtNode` served through its registry (which observes every requester, as a real node's does).
All nodes of a worker share one trio loop. Joining is the real `DhtNode.bootstrap` through the
seed (worker 0's first node); lookups are the real `DhtNode.lookup(key, k, paths=d)`.

One deviation from a real node, on purpose: admission (net/admission.py) gives loopback, the
one source every node here shares, a share of 64 connections and 50 handshakes/s, where on a
real network each of these nodes is its own source with its own share. So `BENCH_ADMISSION`
raises the per-source shares to the node-wide limits, which stay as a real node has them (256
accepted connections, 200 handshakes/s with a burst of 400). Nothing else is changed.

It reads the real clock and the OS RNG (a benchmark measures this machine, not a seeded run).
Invariants: every command gets exactly one reply (lookup_procs.py); a lookup is counted when it
returned, with its latency, and as `short` when it returned fewer than k nodes; the connection
counters are the transport's own (`TcpStats`, open connections in and out); nothing here logs,
and no address leaves the worker except the seed's, to the parent.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import trio

from anonmail.clock import SystemClock
from anonmail.dht.dht_node import DhtNode
from anonmail.experiments.bench.lookup_procs import (
    LIFETIME,
    POLL_INTERVAL,
    Reply,
    run_worker,
    settle_heap,
)
from anonmail.net.tcp import DEFAULT_LIMITS, AdmissionLimits, TcpNetwork
from anonmail.records import ids
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.params import testnet
from anonmail.rng import SystemRng

PARAMS = testnet()  # k = 20, alpha = 3, d = 8 by default; a 4-bit puzzle; loopback allowed
_REAL = AdmissionLimits(shared_everywhere=True)  # what node/process.py gives a testnet node
BENCH_ADMISSION = dataclasses.replace(
    _REAL, max_per_shared_source=_REAL.max_connections,
    max_pending_per_source=_REAL.max_connections,
    shared_handshake_rate=_REAL.global_handshake_rate,
    shared_handshake_burst=_REAL.global_handshake_burst)
POOL_LIMIT = DEFAULT_LIMITS.max_connections  # outgoing connections per node
ACCEPT_LIMIT = BENCH_ADMISSION.max_connections  # accepted connections per node
CLOSE_TIMEOUT = 5.0  # seconds to close a worker's nodes


@dataclass(frozen=True, slots=True)
class BenchNode:
    net: TcpNetwork
    dht: DhtNode
    endpoint: Endpoint


async def start_node(nursery: trio.Nursery, clock: SystemClock, rng: SystemRng) -> BenchNode:
    """One DHT node listening on 127.0.0.1 (any free port), serving in `nursery`."""
    key = ids.grind_node_key(PARAMS.puzzle_bits, rng)
    cache = CertCache()
    net = TcpNetwork(key, PARAMS, clock, rng, cert_cache=cache, admission=BENCH_ADMISSION)
    endpoint = await net.bind("127.0.0.1", 0)
    net.cert = NodeCert.issue(key, (endpoint,), clock.now(), PARAMS)
    dht = DhtNode(net, key, PARAMS, clock, rng, cache)
    await nursery.start(net.serve, dht.registry().handle)
    return BenchNode(net, dht, endpoint)


def counters(nodes: list[BenchNode]) -> dict[str, Any]:
    """The transport's counters over this worker's nodes: open connections per node (in +
    out), the largest in and out, and the handshakes so far."""
    stats = [n.net.stats for n in nodes]
    return {
        "conns": [n.net.inbound_connections + n.net.outbound_connections for n in nodes],
        "max_in": max((n.net.inbound_connections for n in nodes), default=0),
        "max_out": max((n.net.outbound_connections for n in nodes), default=0),
        "table": [len(n.dht.table) for n in nodes],
        "dials_full": sum(s.dials_full for s in stats),
        "dials_resumed": sum(s.dials_resumed for s in stats),
        "accepts_full": sum(s.accepts_full for s in stats),
        "accepts_resumed": sum(s.accepts_resumed for s in stats),
    }


async def each(items: list[BenchNode], concurrency: int,
               job: Callable[[BenchNode], Awaitable[object]]) -> None:
    """`job` for every node, at most `concurrency` at a time."""
    limiter = trio.CapacityLimiter(max(1, concurrency))

    async def one(node: BenchNode) -> None:
        async with limiter:
            await job(node)

    async with trio.open_nursery() as nursery:
        for node in items:
            nursery.start_soon(one, node)


async def lookups(nodes: list[BenchNode], count: int, concurrency: int, paths: int,
                  seconds: float, rng: SystemRng) -> Reply:
    """`count` lookups of random keys from random nodes of this worker, `concurrency` at a
    time, stopped after `seconds` whatever is left; the counters' change over them."""
    before = counters(nodes)
    latencies: list[float] = []
    tally = {"short": 0, "empty": 0, "failures": 0, "queried": 0}
    left = count

    async def runner() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            node = nodes[rng.randbelow(len(nodes))]
            started = time.perf_counter()
            result = await node.dht.lookup(rng.bytes(ids.ID_BYTES), PARAMS.k, paths=paths)
            latencies.append(time.perf_counter() - started)
            tally["short"] += len(result.nodes) < PARAMS.k
            tally["empty"] += not result.nodes
            tally["failures"] += result.failures
            tally["queried"] += result.queried

    settle_heap()
    t0, cpu0 = time.monotonic(), time.process_time()
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, min(concurrency, count))):
                nursery.start_soon(runner)
    t1, cpu = time.monotonic(), time.process_time() - cpu0
    after = counters(nodes)
    delta = {name: after[name] - before[name]
             for name in ("dials_full", "dials_resumed", "accepts_full", "accepts_resumed")}
    return {"ok": True, "latencies": latencies, "t0": t0, "t1": t1, "cpu": cpu, **tally, **after,
            **delta}


async def command(cmd: dict[str, Any], index: int, nodes: list[BenchNode],
                  rng: SystemRng) -> Reply:
    what = cmd["cmd"]
    if what == "join":
        seed = Endpoint(*cmd["seed"])
        joining = nodes[1:] if index == 0 else nodes  # worker 0's first node is the seed
        await each(joining, cmd["concurrency"], lambda n: n.dht.bootstrap([seed]))
        return {"ok": True, **counters(nodes)}
    if what == "rejoin":  # a node with contacts looks itself up and refreshes its buckets
        await each(nodes, cmd["concurrency"], lambda n: n.dht.bootstrap(()))
        return {"ok": True, **counters(nodes)}
    if what == "warm":
        per_node = int(cmd["per_node"])

        async def warm(node: BenchNode) -> None:
            for _ in range(per_node):
                await node.dht.lookup(rng.bytes(ids.ID_BYTES), PARAMS.k, paths=cmd["paths"])

        await each(nodes, cmd["concurrency"], warm)
        return {"ok": True, **counters(nodes)}
    if what == "measure":
        return await lookups(nodes, int(cmd["lookups"]), int(cmd["concurrency"]),
                             int(cmd["paths"]), float(cmd["seconds"]), rng)
    if what == "stop":
        return {"ok": True}
    return {"error": f"unknown command {what!r}"}


async def next_command(conn: Connection) -> dict[str, Any]:
    """Wait for the parent's next command without blocking the loop (EOFError if it is gone)."""
    while not conn.poll():
        await trio.sleep(POLL_INTERVAL)
    cmd: dict[str, Any] = conn.recv()
    return cmd


async def _main(conn: Connection, index: int, count: int, nofile: int) -> None:
    clock, rng = SystemClock(), SystemRng()
    nodes: list[BenchNode] = []
    try:
        with trio.fail_after(LIFETIME):
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nodes.append(await start_node(nursery, clock, rng))
                seed = nodes[0].endpoint
                conn.send({"ok": True, "seed": [seed.host, seed.port], "nofile": nofile})
                while True:
                    cmd = await next_command(conn)
                    reply = await command(cmd, index, nodes, rng)
                    conn.send(reply)
                    if cmd["cmd"] == "stop" or "error" in reply:
                        break
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(CLOSE_TIMEOUT) as closing:
            closing.shield = True
            for node in nodes:
                await node.net.aclose()


def worker(conn: Connection, index: int, count: int, cfg: dict[str, Any]) -> None:
    """A worker process's entry point (lookup_procs.Workers): `count` nodes, then commands."""
    logging.getLogger("anonmail").setLevel(logging.CRITICAL)  # a bench prints its own table
    run_worker(conn, lambda nofile: trio.run(_main, conn, index, count, nofile))
