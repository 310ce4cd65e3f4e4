"""`anonmail bench lookup`, the baseline: one worker process's share of a loopback network of
nodes of the `kademlia` package from PyPI (the `bench` extra) — plain Kademlia over UDP with no
security, what a Python developer would pick instead (lookup.py runs P of these).

Each node is a `kademlia.network.Server` (k = 20, alpha = 3, as anonmail's parameters) listening
on 127.0.0.1 (any free UDP port); all nodes of a worker share one asyncio loop. Joining is the
package's own `Server.bootstrap` through the seed (worker 0's first node), then a second pass
through each node's neighbours; a lookup is the package's node lookup: `NodeSpiderCrawl` from
the node's k nearest known contacts, exactly as `Server.get`/`set` start theirs, without the
value part (anonmail's lookup finds nodes, not values: like is compared with like); in measured
lookups the crawl's request function is wrapped to count its FIND_NODEs, nothing else. The worker
protocol, commands and replies are anonmail's (lookup_tcp.py, lookup_procs.py), so the two run
the same join, warm-up and measured workload.

The package logs at INFO eagerly and at WARNING/ERROR for every unanswered RPC (with the peer's
address): its loggers are kept off the terminal; unanswered RPCs (its 5 s UDP timeout) are
counted instead, as `failures`.

It reads the real clock and the OS RNG (a benchmark measures this machine). Invariants: as
lookup_tcp.py; kademlia is imported only inside a worker, so `available()` can be asked without
it installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import random
import time
import warnings
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from anonmail.experiments.bench.lookup_procs import (
    LIFETIME,
    POLL_INTERVAL,
    Reply,
    run_worker,
    settle_heap,
)

K, ALPHA = 20, 3  # as anonmail's network parameters (records/params.py)
KEY_BYTES = 20  # the package's ids are 160 bits (SHA-1)
MISSING = ("kademlia baseline skipped: the kademlia package is not installed "
           "(pip install 'anonmail[bench]')")


def available() -> bool:
    """Whether the kademlia package (the `bench` extra) is importable."""
    return importlib.util.find_spec("kademlia") is not None


class _TimeoutCounter(logging.Handler):
    """Counts the package's "no reply within the timeout" records; prints nothing."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _quiet_loggers() -> _TimeoutCounter:
    counter = _TimeoutCounter()
    for name in ("kademlia", "rpcudp"):
        log = logging.getLogger(name)
        log.propagate = False
        log.handlers = []
        log.setLevel(logging.ERROR)
    logging.getLogger("rpcudp").addHandler(counter)
    logging.getLogger("kademlia").addHandler(logging.NullHandler())
    return counter


async def _each(servers: list[Any], concurrency: int,
                job: Callable[[Any], Awaitable[object]]) -> None:
    limit = asyncio.Semaphore(max(1, concurrency))

    async def one(server: Any) -> None:
        async with limit:
            await job(server)

    await asyncio.gather(*(one(s) for s in servers))


async def _lookup(server: Any, key: bytes, tally: dict[str, int] | None = None) -> list[Any]:
    """The package's node lookup, started as `Server.get` starts its crawl; counts the
    FIND_NODE requests it sends into `tally["queried"]`."""
    from kademlia.crawling import NodeSpiderCrawl
    from kademlia.node import Node

    target = Node(key)
    nearest = server.protocol.router.find_neighbors(target)
    if not nearest:
        return []
    crawl = NodeSpiderCrawl(server.protocol, target, nearest, server.ksize, server.alpha)
    if tally is not None:
        ask = server.protocol.call_find_node

        async def counted(peer: Any, node: Any) -> Any:
            tally["queried"] += 1
            return await ask(peer, node)

        # NodeSpiderCrawl.find is `self._find(self.protocol.call_find_node)`, and each round
        # calls `self.find()` for the next: the same crawl with every request counted.
        crawl.find = lambda: crawl._find(counted)
    found: list[Any] = await crawl.find()
    return found


def _counters(servers: list[Any]) -> dict[str, Any]:
    tables = [sum(len(b.nodes) for b in s.protocol.router.buckets) for s in servers]
    return {"table": tables}


async def _measure(servers: list[Any], cmd: dict[str, Any], counter: _TimeoutCounter) -> Reply:
    count, concurrency = int(cmd["lookups"]), int(cmd["concurrency"])
    latencies: list[float] = []
    tally = {"short": 0, "empty": 0, "queried": 0}
    failures_before = counter.count
    left = count
    rng = random.SystemRandom()

    async def runner() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            server = servers[rng.randrange(len(servers))]
            started = time.perf_counter()
            found = await _lookup(server, os.urandom(KEY_BYTES), tally)
            latencies.append(time.perf_counter() - started)
            tally["short"] += len(found) < K
            tally["empty"] += not found

    settle_heap()
    t0, cpu0 = time.monotonic(), time.process_time()
    tasks = [asyncio.ensure_future(runner()) for _ in range(max(1, min(concurrency, count)))]
    _, pending = await asyncio.wait(tasks, timeout=float(cmd["seconds"]))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    t1, cpu = time.monotonic(), time.process_time() - cpu0
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return {"ok": True, "latencies": latencies, "t0": t0, "t1": t1, "cpu": cpu, **tally,
            "failures": counter.count - failures_before, **_counters(servers)}


async def _command(cmd: dict[str, Any], index: int, servers: list[Any],
                   counter: _TimeoutCounter) -> Reply:
    what = cmd["cmd"]
    if what == "join":
        seed = (cmd["seed"][0], int(cmd["seed"][1]))
        joining = servers[1:] if index == 0 else servers
        await _each(joining, cmd["concurrency"], lambda s: s.bootstrap([seed]))
        return {"ok": True, **_counters(servers)}
    if what == "rejoin":  # a crawl for its own id from what each node knows now
        await _each(servers, cmd["concurrency"],
                    lambda s: s.bootstrap(s.bootstrappable_neighbors()))
        return {"ok": True, **_counters(servers)}
    if what == "warm":
        per_node = int(cmd["per_node"])

        async def warm(server: Any) -> None:
            for _ in range(per_node):
                await _lookup(server, os.urandom(KEY_BYTES))

        await _each(servers, cmd["concurrency"], warm)
        return {"ok": True, **_counters(servers)}
    if what == "measure":
        return await _measure(servers, cmd, counter)
    if what == "stop":
        return {"ok": True}
    return {"error": f"unknown command {what!r}"}


async def _main(conn: Connection, index: int, count: int, nofile: int) -> None:
    from kademlia.network import Server

    counter = _quiet_loggers()
    servers: list[Any] = []
    try:
        for _ in range(count):
            server = Server(ksize=K, alpha=ALPHA)
            await server.listen(0, interface="127.0.0.1")
            servers.append(server)
        host, port = servers[0].transport.get_extra_info("sockname")[:2]
        conn.send({"ok": True, "seed": [host, port], "nofile": nofile})
        while True:
            while not conn.poll():
                await asyncio.sleep(POLL_INTERVAL)
            cmd: dict[str, Any] = conn.recv()
            reply = await _command(cmd, index, servers, counter)
            conn.send(reply)
            if cmd["cmd"] == "stop" or "error" in reply:
                break
    finally:
        for server in servers:
            server.stop()


def worker(conn: Connection, index: int, count: int, cfg: dict[str, Any]) -> None:
    """A worker process's entry point (lookup_procs.Workers): `count` nodes, then commands."""
    # rpcudp calls asyncio.iscoroutinefunction, deprecated in newer Pythons: not ours to fix.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="rpcudp")
    run_worker(conn, lambda nofile: asyncio.run(
        asyncio.wait_for(_main(conn, index, count, nofile), LIFETIME)))
