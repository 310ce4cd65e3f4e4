"""The worker processes of `anonmail bench lookup` (lookup.py): spawn, command, collect, kill.

A network of N nodes is split over P worker processes (`multiprocessing` with the spawn start
method: a fresh interpreter each, nothing inherited), each holding its share of the nodes in one
event loop: lookup_tcp.py for anonmail (trio), kademlia_baseline.py for the kademlia package
(asyncio). The parent talks to each worker over a `Pipe` of plain dicts: it sends a command
(`{"cmd": ..., ...}`) and the worker sends back exactly one reply, `{"ok": True, ...}` or
`{"error": "..."}`. The commands, in order: the worker's first reply (unasked) says its nodes
listen and gives its first node's endpoint (worker 0's first node is the network's seed);
`join` (bootstrap every node through the seed), `rejoin` (a second pass, so early joiners learn
of later ones), `warm` (lookups from every node), `measure` (the timed lookups), `stop`.

It reads the real clock (a benchmark measures this machine). Invariants: every wait for a reply
has an absolute deadline; a worker that misses it, dies, or answers with an error fails the
whole network: every worker is killed and `WorkerFailure` names the worker and the command;
`close()` stops every worker within STOP_TIMEOUT and kills the rest, on failure too. A worker
polls its pipe, so one whose parent died sees EOF and exits; it also has an absolute lifetime
(`LIFETIME`) after which it exits by itself.
"""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing
import resource
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

STOP_TIMEOUT = 10.0  # seconds for a worker to answer `stop` and exit before it is killed
LIFETIME = 3600.0  # seconds a worker lives at most, whatever it is doing
POLL_INTERVAL = 0.02  # seconds between a worker's looks at its pipe

Reply = dict[str, Any]
WorkerMain = Callable[[Connection, int, int, dict[str, Any]], None]


class WorkerFailure(Exception):
    """A worker hung, died or failed: the run is over (its workers were killed)."""


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal shares, larger first (nodes or lookups per worker)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def raise_nofile_limit() -> int:
    """Raise this process's soft limit on open files to the hard one (each connection is a
    socket); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def settle_heap() -> None:
    """Move what the worker holds so far out of the collector's sight (`gc.freeze`), before a
    measured phase, in both systems' workers alike.

    A worker packs N/P nodes into one heap (~750k objects for 40 anonmail nodes), where a real
    node has its own process and a heap about that many times smaller. A full collection walks
    the whole heap, and collections come with allocations, so a packed worker pays for each
    full collection once per node it holds: measured, 32% of a worker's CPU in the d = 8 phase
    at 200 nodes, against ~5% once the nodes' long-lived state is frozen (docs/performance.md).
    New objects are still collected as usual; nothing is ever unfrozen (a worker ends after its
    phases)."""
    gc.collect()
    gc.freeze()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method; 0.0 for no values."""
    if not values:
        return 0.0
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]


def describe(error: BaseException) -> str:
    """One line for a worker's failure: the type and the first 200 characters of the message
    (our own exceptions' messages name node ids at most, never addresses)."""
    return f"{type(error).__name__}: {str(error)[:200]}"


def run_worker(conn: Connection, loop: Callable[[int], object]) -> None:
    """A worker's body: raise the open-files limit, run `loop(limit)` (its event loop), answer
    one `{"error": ...}` if that raised (when the parent still listens), close the pipe."""
    try:
        loop(raise_nofile_limit())
    except BaseException as e:
        with contextlib.suppress(OSError, ValueError):
            conn.send({"error": describe(e)})
    finally:
        conn.close()


class Workers:
    """P worker processes running `main(conn, index, nodes, cfg)`; use as a context manager."""

    def __init__(self, main: WorkerMain, nodes: int, processes: int, cfg: dict[str, Any],
                 *, start_timeout: float) -> None:
        self.shares = split(nodes, processes)
        self._main = main
        self._cfg = cfg
        self._start_timeout = start_timeout
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self.first: list[Reply] = []  # each worker's unasked first reply

    def __enter__(self) -> Workers:
        ctx = multiprocessing.get_context("spawn")
        try:
            for i, share in enumerate(self.shares):
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(target=self._main, args=(theirs, i, share, self._cfg),
                                   name=f"anonmail-bench-worker-{i}", daemon=True)
                proc.start()
                theirs.close()
                self._procs.append(proc)
                self._conns.append(ours)
            self.first = self._collect(range(len(self._conns)), "start",
                                       time.monotonic() + self._start_timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(self, cmd: dict[str, Any] | Sequence[dict[str, Any]], timeout: float,
            only: Sequence[int] | None = None) -> list[Reply]:
        """Send a command (the same to all, or one per worker) to the workers `only` (default
        all) and return their replies in order, within `timeout` seconds in all."""
        which = list(range(len(self._conns))) if only is None else list(only)
        per = [cmd] * len(self._conns) if isinstance(cmd, dict) else list(cmd)
        deadline = time.monotonic() + timeout
        try:
            for i in which:
                self._conns[i].send(per[i])
        except (OSError, ValueError) as e:
            self.kill()
            raise WorkerFailure(f"a worker is gone ({type(e).__name__})") from e
        return self._collect(which, str(per[which[0]].get("cmd")) if which else "", deadline)

    def _collect(self, which: Sequence[int], what: str, deadline: float) -> list[Reply]:
        replies: list[Reply] = []
        for i in which:
            conn = self._conns[i]
            try:
                ready = conn.poll(max(0.0, deadline - time.monotonic()))
                reply = conn.recv() if ready else None
            except (EOFError, OSError):
                self.kill()  # joins it too, so its exit code is known
                raise WorkerFailure(f"worker {i} exited during '{what}'") from None
            if reply is None:
                self.kill()
                raise WorkerFailure(f"worker {i} gave no answer to '{what}' in time: "
                                    "all workers killed")
            if "error" in reply:
                self.kill()
                raise WorkerFailure(f"worker {i} failed in '{what}': {reply['error']}")
            replies.append(reply)
        return replies

    def close(self) -> None:
        """Ask every live worker to stop; kill whoever has not exited within STOP_TIMEOUT."""
        deadline = time.monotonic() + STOP_TIMEOUT
        for conn, proc in zip(self._conns, self._procs, strict=True):
            if proc.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    conn.send({"cmd": "stop"})
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        for proc in self._procs:
            proc.join(STOP_TIMEOUT)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
