"""`anonmail bench lookup`: lookups per second, latency and connections of anonmail's DHT on a
loopback network of N real nodes over TCP, beside the `kademlia` package from PyPI (plain
Kademlia over UDP, no security) on a network of the same size, as ratios.

For each N (100 and 200 by default) and each system, a fresh network of N nodes on 127.0.0.1 is
split over P worker processes (lookup_procs.py; anonmail's nodes in lookup_tcp.py, the
package's in kademlia_baseline.py) and run through the same steps: every node joins through the
seed with the system's own bootstrap, then a second pass (each node looks itself up again with
what it knows), then a warm-up (`warmup` lookups of random keys from every node, then rounds of
one per node until a round dials at most one full handshake per lookup: "once warm" in issue
11's words; the baseline gets as many). Both networks
then stand side by side, idle but for the phase being measured: `lookups` lookups of random keys
from random nodes, spread over the workers in proportion to their nodes, `concurrency` at a
time in all, capped at `seconds`. The phases run in the order kademlia, anonmail d = 1, anonmail
d = 8, kademlia, and the package's two are pooled, so a ratio compares runs seconds apart and
holds when the machine's load drifts. k = 20, alpha = 3 for both systems; d = 1 and d = 8 are
anonmail's disjoint paths, measured on the same network.

Figures: lookups/s = lookups completed in the phase over the phase's span (first worker's start
to last worker's end); latency per lookup (mean, p50, p95); open connections per node (inbound +
outbound, mean and max, at the end of the phase; after warm-up in the header); full and resumed
handshakes dialled per lookup (the change of `TcpStats.dials_full` / `dials_resumed` summed over
all nodes, over the lookups completed); failed RPCs per lookup (anonmail: requests that timed
out or could not be delivered; the package: its UDP requests left unanswered within its 5 s);
`short` lookups returned fewer than k nodes; CPU per lookup = the CPU time of all workers
(every node's client and server work) in the phase over its lookups: beside lookups/s it tells
work from waiting. The ratios are anonmail's over the package's.

It reads the real clock (a benchmark measures this machine). Invariants: each system gets a
fresh network and the same workload; a worker that hangs or fails ends that system's network
(its workers are killed, the table says so) and the bench goes on with the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from anonmail.errors import UserError
from anonmail.experiments.bench import kademlia_baseline, lookup_tcp
from anonmail.experiments.bench.lookup_procs import (
    Reply,
    WorkerFailure,
    WorkerMain,
    Workers,
    percentile,
    raise_nofile_limit,
    split,
)

PATHS = (1, 8)  # anonmail's d, measured in this order on the same network
JOIN_CONCURRENCY = 4  # nodes of one worker joining at once
START_TIMEOUT = 60.0  # seconds: spawn, import, nodes listening (plus per node, below)
WARM_HANDSHAKES = 1.0  # "warm": a warm-up round dialled at most this many full handshakes a lookup
WARM_MAX = 30  # warm-up rounds (one lookup per node each) at most, by default
PER_NODE_TIMEOUT = 1.0  # seconds per node added to the join and warm-up deadlines
GRACE = 30.0  # seconds a measured phase may overrun its cap before its workers are killed
MIN_NODES, MAX_NODES = 2, 1000  # network sizes --nodes accepts
FD_RESERVE = 64  # open files a worker keeps for itself (pipes, the loop, libraries)


@dataclass(frozen=True)
class Phase:
    """One measured phase of one system."""

    system: str
    lookups: int
    seconds: float
    latencies: tuple[float, ...]
    short: int
    empty: int
    failures: int
    queried: int  # FIND_NODE requests sent
    conns: tuple[int, ...] | None  # open connections per node at the end (None: UDP)
    max_in: int = 0
    max_out: int = 0
    dials_full: int = 0
    dials_resumed: int = 0
    cpu: float = 0.0  # CPU seconds all workers spent in the phase (clients and servers)

    @property
    def rate(self) -> float:
        return self.lookups / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean(self) -> float:
        return sum(self.latencies) / len(self.latencies) if self.latencies else 0.0

    def per_lookup(self, n: float) -> float:
        return n / self.lookups if self.lookups else 0.0


@dataclass
class SizeRun:
    """Everything measured at one network size."""

    nodes: int
    processes: int
    lookups: int
    concurrency: int
    warmup: int
    warm_max: int = WARM_MAX
    rounds: int = 0  # warm-up rounds taken after the first `warmup` lookups per node
    warm_handshakes: float = 0.0  # full handshakes per lookup in anonmail's last warm-up round
    phases: list[Phase] = field(default_factory=list)
    warm_conns: tuple[int, ...] = ()
    tables: dict[str, float] = field(default_factory=dict)  # system -> mean contacts known
    built: dict[str, float] = field(default_factory=dict)  # system -> seconds to join + warm
    errors: list[str] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)  # the machine's 1-minute load average, before, after


def _phase(system: str, replies: Sequence[Reply]) -> Phase:
    span = max(r["t1"] for r in replies) - min(r["t0"] for r in replies)
    lat = tuple(x for r in replies for x in r["latencies"])
    conns = (tuple(c for r in replies for c in r["conns"]) if "conns" in replies[0] else None)
    total = {name: sum(int(r.get(name, 0)) for r in replies)
             for name in ("short", "empty", "failures", "queried", "dials_full",
                          "dials_resumed")}
    return Phase(system, len(lat), span, lat, total["short"], total["empty"], total["failures"],
                 total["queried"], conns, max(int(r.get("max_in", 0)) for r in replies),
                 max(int(r.get("max_out", 0)) for r in replies), total["dials_full"],
                 total["dials_resumed"], sum(float(r["cpu"]) for r in replies))


def _pool(a: Phase, b: Phase) -> Phase:
    """Two runs of one phase as one: their lookups over their summed spans."""
    return Phase(a.system, a.lookups + b.lookups, a.seconds + b.seconds,
                 a.latencies + b.latencies, a.short + b.short, a.empty + b.empty,
                 a.failures + b.failures, a.queried + b.queried, b.conns,
                 max(a.max_in, b.max_in), max(a.max_out, b.max_out),
                 a.dials_full + b.dials_full, a.dials_resumed + b.dials_resumed,
                 a.cpu + b.cpu)


def _mean_table(replies: Sequence[Reply]) -> float:
    sizes = [int(t) for r in replies for t in r["table"]]
    return sum(sizes) / max(len(sizes), 1)


def _warm(workers: Workers, run: SizeRun, per_node: int, timeout: float) -> list[Reply]:
    return workers.ask({"cmd": "warm", "per_node": per_node, "paths": max(PATHS),
                        "concurrency": max(1, run.concurrency // run.processes)},
                       timeout + PER_NODE_TIMEOUT * run.nodes * per_node)


def _full_dials(replies: Sequence[Reply]) -> int:
    return sum(int(r.get("dials_full", 0)) for r in replies)


def build(run: SizeRun, system: str, main: WorkerMain, stack: contextlib.ExitStack,
          rounds: int | None = None) -> Workers | None:
    """Start a network of `run.nodes` nodes of one system, join it and warm it up; None if it
    failed (the error is in `run.errors`).

    Warm-up: `run.warmup` lookups per node, then rounds of one lookup per node until a round
    dialled at most WARM_HANDSHAKES full handshakes per lookup ("once warm", issue 11), at most
    `run.warm_max` rounds; `rounds` given (the baseline), exactly that many, so both systems
    get the same warm-up. The rounds taken are in `run.rounds`."""
    n = run.nodes
    setup = START_TIMEOUT + PER_NODE_TIMEOUT * n
    started = time.monotonic()
    try:
        workers = stack.enter_context(Workers(main, n, run.processes, {}, start_timeout=setup))
        seed = workers.first[0]["seed"]
        workers.ask({"cmd": "join", "seed": seed, "concurrency": JOIN_CONCURRENCY}, setup)
        workers.ask({"cmd": "rejoin", "concurrency": JOIN_CONCURRENCY}, setup)
        warm = _warm(workers, run, run.warmup, setup)
        taken = 0
        while taken < (run.warm_max if rounds is None else rounds):
            dials = _full_dials(warm)
            warm = _warm(workers, run, 1, setup)
            taken += 1
            if rounds is None and "dials_full" in warm[0]:
                run.warm_handshakes = (_full_dials(warm) - dials) / n
                if run.warm_handshakes <= WARM_HANDSHAKES:
                    break
    except WorkerFailure as e:
        run.errors.append(f"{system}: {e}")
        return None
    if rounds is None:
        run.rounds = taken
    run.built[system] = time.monotonic() - started
    run.tables[system] = _mean_table(warm)
    if "conns" in warm[0]:
        run.warm_conns = tuple(c for r in warm for c in r["conns"])
    return workers


def measure(run: SizeRun, workers: Workers, label: str, d: int | None,
            seconds: float) -> Phase:
    """One measured phase (module docstring) on a built network."""
    p = run.processes
    shares, concurrency = split(run.lookups, p), split(run.concurrency, p)
    cmds = [{"cmd": "measure", "lookups": shares[i], "concurrency": concurrency[i],
             "paths": d, "seconds": seconds} for i in range(p)]
    return _phase(label, workers.ask(cmds, seconds + GRACE))


def bench_size(nodes: int, processes: int, lookups: int, concurrency: int, warmup: int,
               seconds: float, *, baseline: bool = True, warm_max: int = WARM_MAX) -> SizeRun:
    """Measure anonmail (d = 1, d = 8) and, if `baseline`, the kademlia package (the caller
    checks `kademlia_baseline.available()`) on networks of `nodes` nodes (module docstring)."""
    p = processes_for(nodes, processes, raise_nofile_limit())  # the workers inherit it
    run = SizeRun(nodes, p, lookups, max(concurrency, p), warmup, warm_max)
    load_before = os.getloadavg()[0]
    mains: dict[str, WorkerMain] = {"anonmail": lookup_tcp.worker}
    if baseline:
        mains["kademlia"] = kademlia_baseline.worker
    schedule = [("kademlia", None), *(("anonmail", d) for d in PATHS), ("kademlia", None)]
    with contextlib.ExitStack() as stack:
        live: dict[str, Workers] = {}
        for name, main in mains.items():  # anonmail first: the baseline warms as much
            w = build(run, name, main, stack, None if name == "anonmail" else run.rounds)
            if w is not None:
                live[name] = w
        done: dict[str, Phase] = {}
        for system, d in schedule:
            if system not in live:
                continue
            label = system if d is None else f"{system} d={d}"
            try:
                phase = measure(run, live[system], label, d, seconds)
            except WorkerFailure as e:
                run.errors.append(f"{label}: {e}")
                del live[system]
                continue
            done[label] = _pool(done[label], phase) if label in done else phase
        run.phases = sorted(done.values(), key=lambda ph: ph.system == "kademlia")
    run.load = (load_before, os.getloadavg()[0])
    return run


def processes_for(nodes: int, asked: int, nofile: int) -> int:
    """At least `asked` workers, and enough that each can hold its nodes' sockets under the
    open-files limit `nofile`: a node may hold a connection each way with every other node
    (at most its pool and accept limits) and a listener."""
    per_node = min(2 * (nodes - 1), lookup_tcp.POOL_LIMIT + lookup_tcp.ACCEPT_LIMIT) + 1
    fit = max(1, (nofile - FD_RESERVE) // per_node)
    return max(1, min(nodes, max(asked, math.ceil(nodes / fit))))


def _ratio(x: float, base: float | None) -> str:
    return f"{x / base:.2f}x" if base else "-"


def _conns(conns: Sequence[int] | None) -> str:
    if not conns:
        return "-"
    return f"{sum(conns) / len(conns):.1f} ({max(conns)})"


def report(run: SizeRun) -> str:
    """The table of one size: one row per system and d, ratios to the kademlia package."""
    lines = [f"anonmail bench lookup: {run.nodes} nodes on 127.0.0.1 in {run.processes} "
             f"processes; k = 20, alpha = 3; {run.lookups} lookups of random keys per run, "
             f"{run.concurrency} concurrent; kademlia run before and after anonmail, pooled; "
             f"load average {run.load[0]:.1f} -> {run.load[1]:.1f} on {os.cpu_count()} CPUs",
             f"warm-up, both systems: {run.warmup} + {run.rounds} lookups per node (d = "
             f"{max(PATHS)}; rounds of one per node until a round dialled <= "
             f"{WARM_HANDSHAKES:g} full handshake per lookup, at most {run.warm_max}): "
             f"anonmail's last round {run.warm_handshakes:.2f}"]
    if run.warm_conns:
        lines.append(f"anonmail open connections per node after warm-up (in + out): mean "
                     f"{sum(run.warm_conns) / len(run.warm_conns):.1f}, max "
                     f"{max(run.warm_conns)} (pool {lookup_tcp.POOL_LIMIT} out, "
                     f"{lookup_tcp.ACCEPT_LIMIT} in)")
    if run.tables:
        lines.append("after warm-up: mean contacts known " + ", ".join(
            f"{name} {size:.1f}" for name, size in run.tables.items()) + "; network built "
            "(start, join, rejoin, warm-up) in " + ", ".join(
            f"{name} {sec:.0f} s" for name, sec in run.built.items()))
    base = next((ph for ph in run.phases if ph.system == "kademlia"), None)
    base_rate, base_mean = (base.rate, base.mean) if base is not None else (None, None)
    head = (f"{'':14} {'lookups/s':>9} {'x kad':>6} {'mean ms':>8} {'p50 ms':>7} {'p95 ms':>7} "
            f"{'lat x kad':>9} {'conns/node (max)':>16} {'full hs/lk':>10} {'resumed/lk':>10} "
            f"{'RPCs/lk':>7} {'failed/lk':>9} {'short':>5} {'CPU ms/lk':>9}")
    lines += ["", head]
    for ph in run.phases:
        udp = ph.conns is None
        lines.append(
            f"{ph.system:14} {ph.rate:>9.1f} {_ratio(ph.rate, base_rate):>6} "
            f"{ph.mean * 1e3:>8.1f} {percentile(ph.latencies, 0.5) * 1e3:>7.1f} "
            f"{percentile(ph.latencies, 0.95) * 1e3:>7.1f} "
            f"{_ratio(ph.mean, base_mean):>9} "
            f"{'- (UDP)' if udp else _conns(ph.conns):>16} "
            f"{'-' if udp else f'{ph.per_lookup(ph.dials_full):.2f}':>10} "
            f"{'-' if udp else f'{ph.per_lookup(ph.dials_resumed):.2f}':>10} "
            f"{ph.per_lookup(ph.queried):>7.1f} {ph.per_lookup(ph.failures):>9.2f} "
            f"{ph.short:>5} {ph.per_lookup(ph.cpu) * 1e3:>9.1f}")
    if base is not None and base.rate:
        verdicts = [f"{ph.system} {ph.rate / base.rate:.2f}x "
                    f"({'met' if ph.rate >= 0.5 * base.rate else 'NOT met'})"
                    for ph in run.phases if ph is not base]
        lines.append("target lookups/s >= 0.5x the kademlia package: " + "; ".join(verdicts))
    lines += [f"FAILED: {e}" for e in run.errors]
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError("--nodes takes network sizes separated by commas, e.g. 100,200") from None
    if not sizes or not all(MIN_NODES <= n <= MAX_NODES for n in sizes):
        raise UserError(f"--nodes: each size must be {MIN_NODES}-{MAX_NODES}")
    return sizes


def _cmd_lookup(args: argparse.Namespace) -> int:
    sizes = _sizes(args.nodes)
    if not 1 <= args.processes <= 64:
        raise UserError("--processes must be 1-64")
    if not 1 <= args.lookups <= 100_000 or not 1 <= args.concurrency <= 1000:
        raise UserError("--lookups must be 1-100000 and --concurrency 1-1000")
    if not 0 <= args.warmup <= 100 or not 0 <= args.warm_max <= 100:
        raise UserError("--warmup and --warm-max must be 0-100")
    if not 0 < args.seconds <= 3600:
        raise UserError("--seconds must be more than 0, at most 3600")
    baseline = not args.no_baseline
    if baseline and not kademlia_baseline.available():
        print(kademlia_baseline.MISSING, flush=True)
        baseline = False
    ok = True
    for i, n in enumerate(sizes):
        run = bench_size(n, args.processes, args.lookups, args.concurrency, args.warmup,
                         args.seconds, baseline=baseline, warm_max=args.warm_max)
        print(("\n" if i else "") + report(run), flush=True)
        ok = ok and not run.errors
    return 0 if ok else 1


def add_parser(sub: Any) -> None:
    """Add `anonmail bench lookup` to the `bench` subcommands (command.py)."""
    p = sub.add_parser("lookup", help="DHT lookups/s, latency and connections on loopback TCP, "
                                      "as ratios to the kademlia package over UDP")
    p.add_argument("--nodes", default="100,200",
                   help="network sizes, separated by commas (default 100,200)")
    p.add_argument("--processes", type=int, default=4,
                   help="worker processes per network, at least (default 4; more when one "
                        "cannot hold its nodes' sockets)")
    p.add_argument("--lookups", type=int, default=400,
                   help="measured lookups per system and d (default 400)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="lookups in flight over the whole network (default 16)")
    p.add_argument("--warmup", type=int, default=2,
                   help="warm-up lookups per node before measuring (default 2)")
    p.add_argument("--warm-max", type=int, default=WARM_MAX,
                   help="then at most this many rounds of one lookup per node, until a round "
                        f"dials <= {WARM_HANDSHAKES:g} full handshake per lookup (default "
                        f"{WARM_MAX}; 0: none)")
    p.add_argument("--seconds", type=float, default=120.0,
                   help="cap on each measured phase, in seconds (default 120)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the kademlia package baseline")
    p.set_defaults(func=_cmd_lookup)
