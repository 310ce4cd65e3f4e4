"""`anonmail bench flood`: honest FIND_NODE latency while one source floods a node with Hellos.

It reads the real clock and the OS RNG (a benchmark measures this machine).

Three processes, as in the attack measured in issue 7 (item 6): a server node on 127.0.0.1
answering FIND_NODE (the rpc bench's handler), an attacker that opens connections from the same
address as fast as it can and sends a valid Hello on each (replayed: the responder pays an X25519
and a signature per Hello it answers, ~160 µs, the attacker nothing), and in this process an
honest client asking FIND_NODE one at a time over a connection it opened before the flood.

Each run measures the honest latency unloaded, then under the flood, twice: with the node's
admission defaults (net/admission.py: a handshake token bucket per source and in all, checked
before any public-key work) and with those buckets opened wide (the node as it was before them),
so the figures are ratios against a baseline measured in the same run. The flood is bounded
(`seconds`, at most 30).

A real attacker's CPU is not its victim's. Here all three share one machine, so, where the OS
allows, the attacker is pinned to the last core at a lower priority and the server and the
honest client to the first: what is measured is what the node's defences leave of its time, not
how Linux shares two cores between the victim and the attacker's busy loop.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import trio

from anonmail import crypto, wire
from anonmail.clock import SystemClock
from anonmail.dht.messages import FindNode
from anonmail.experiments.bench.pow import percentile
from anonmail.experiments.bench.rpc import PARAMS, Table, find_node_handler
from anonmail.net.admission import AdmissionLimits, Verdict
from anonmail.net.handshake import Handshake, Role
from anonmail.net.tcp import TcpNetwork
from anonmail.records.certs import NodeCert
from anonmail.rng import SystemRng

MAX_SECONDS = 30.0
LIMIT = 3.0  # defended p90 flooded / unloaded, at most (issue 7's must-show)
UNDEFENDED = AdmissionLimits(handshake_rate=1e9, handshake_burst=1e9,
                             shared_handshake_rate=1e9, shared_handshake_burst=1e9,
                             global_handshake_rate=1e9, global_handshake_burst=1e9)


@dataclass(frozen=True, slots=True)
class FloodRun:
    defended: bool
    unloaded: list[float]  # honest FIND_NODE latencies, seconds
    flooded: list[float]
    attempts: int  # connections the attacker opened
    seconds: float
    refused: int  # connections the node closed before any handshake work (rate limited)

    @property
    def ratio(self) -> float:
        return percentile(self.flooded, 0.9) / max(percentile(self.unloaded, 0.9), 1e-9)


def run(seconds: float, *, defended: bool) -> FloodRun:
    """One measurement: `seconds` unloaded, then `seconds` under the flood."""
    _pin(attacker=False)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    admission = AdmissionLimits() if defended else UNDEFENDED
    server = ctx.Process(target=_serve, args=(child, dataclasses.asdict(admission)), daemon=True)
    server.start()
    try:
        cert = wire.decode(parent.recv_bytes(), NodeCert)
        unloaded = trio.run(_honest, cert, seconds)
        stop = ctx.Event()
        counter = ctx.Value("q", 0)
        attacker = ctx.Process(target=_flood, args=(wire.encode(cert), stop, counter),
                               daemon=True)
        attacker.start()
        started = time.perf_counter()
        flooded = trio.run(_honest, cert, seconds)
        elapsed = time.perf_counter() - started
        stop.set()
        attacker.join(10)
        parent.send_bytes(b"report")
        refused = int.from_bytes(parent.recv_bytes(), "big")
    finally:
        server.kill()
        server.join(10)
    return FloodRun(defended, unloaded, flooded, int(counter.value), elapsed, refused)


async def _honest(server: NodeCert, seconds: float) -> list[float]:
    clock, rng = SystemClock(), SystemRng()
    net = TcpNetwork(crypto.SigningKey.generate(rng), PARAMS, clock, rng)
    net.cert = NodeCert.issue(net.key, (), clock.now(), PARAMS)
    latencies = []
    try:
        await net.request(server, FindNode(rng.bytes(32), PARAMS.k))  # connect before timing
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await net.request(server, FindNode(rng.bytes(32), PARAMS.k))
            latencies.append(time.perf_counter() - t0)
            await trio.sleep(0.005)  # a steady trickle, not a second flood
    finally:
        await net.aclose()
    return latencies


def _pin(*, attacker: bool) -> None:
    """Attacker on the last core, niced; everyone else on the first (where supported)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= 2:
        os.sched_setaffinity(0, {cores[-1] if attacker else cores[0]})
    if attacker:
        os.nice(10)


def _serve(conn: Connection, admission: dict[str, Any]) -> None:
    _pin(attacker=False)
    trio.run(_serve_async, conn, AdmissionLimits(**admission))


async def _serve_async(conn: Connection, admission: AdmissionLimits) -> None:
    clock, rng = SystemClock(), SystemRng()
    net = TcpNetwork(crypto.SigningKey.generate(rng), PARAMS, clock, rng, admission=admission)
    net.cert = NodeCert.issue(net.key, (await net.bind("127.0.0.1", 0),), clock.now(), PARAMS)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve, find_node_handler(Table()))
        conn.send_bytes(wire.encode(net.local_cert))
        await trio.to_thread.run_sync(conn.recv_bytes)  # the report request
        refused = net.admission.refused[Verdict.RATE_LIMITED]
        conn.send_bytes(refused.to_bytes(8, "big"))
        await trio.sleep_forever()


def _flood(cert_bytes: bytes, stop: Any, counter: Any) -> None:
    """Open a connection, send one Hello, close; again, until told to stop (bounded by the
    caller). Blocking sockets: the cheapest loop Python offers the attacker."""
    _pin(attacker=True)
    cert = wire.decode(cert_bytes, NodeCert)
    rng = SystemRng()
    key = crypto.SigningKey.generate(rng)
    hs = Handshake(Role.INITIATOR, key, NodeCert.issue(key, (), SystemClock().now(), PARAMS),
                   PARAMS, rng)
    hs.next_event(SystemClock().now())
    hello = hs.data_to_send()
    ep = cert.endpoints[0]
    n = 0
    deadline = time.monotonic() + MAX_SECONDS + 5
    while not stop.is_set() and time.monotonic() < deadline:
        for _ in range(50):
            try:
                with socket.create_connection((ep.host, ep.port), timeout=1) as s:
                    s.sendall(hello)
            except OSError:
                pass
            n += 1
        counter.value = n


def report(runs: list[FloodRun]) -> str:
    lines = ["anonmail bench flood: honest FIND_NODE over an open connection while one source "
             "(127.0.0.1) floods Hellos"]
    for r in runs:
        name = "defended (admission defaults)" if r.defended else "baseline (no handshake limit)"
        lines += [
            f"  {name}",
            f"    unloaded   p50 {percentile(r.unloaded, 0.5) * 1e3:7.2f} ms   "
            f"p90 {percentile(r.unloaded, 0.9) * 1e3:7.2f} ms   ({len(r.unloaded)} requests)",
            f"    flooded    p50 {percentile(r.flooded, 0.5) * 1e3:7.2f} ms   "
            f"p90 {percentile(r.flooded, 0.9) * 1e3:7.2f} ms   ({len(r.flooded)} requests)",
            f"    flood      {r.attempts / r.seconds:,.0f} connections/s for {r.seconds:.1f} s; "
            f"{r.refused:,} refused before any handshake work",
            f"    p90 flooded / unloaded  {r.ratio:.2f}x",
        ]
    defended = next((r for r in runs if r.defended), None)
    if defended is not None:
        verdict = "PASS" if defended.ratio <= LIMIT else "FAIL"
        lines.append(f"  {verdict}: defended p90 within {LIMIT:g}x of unloaded "
                     f"({defended.ratio:.2f}x)")
    return "\n".join(lines)
