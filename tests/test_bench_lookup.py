"""`anonmail bench lookup` (experiments/bench/lookup.py): a small loopback network of real
anonmail DHT nodes in two worker processes looks up random keys, every lookup returns nodes and
the transport's counters stay within its limits; the kademlia package baseline (if installed)
runs the same workload beside it; a worker that hangs is killed within its deadline, not waited for.
Real processes and sockets; every run is bounded by an absolute timeout."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import pytest
import trio

from anonmail.cli import main
from anonmail.experiments.bench import kademlia_baseline, lookup, lookup_procs, lookup_tcp
from anonmail.experiments.bench.lookup import Phase, SizeRun

T = TypeVar("T")
LIMIT = 60.0  # seconds: a run takes a few; only a hang or a broken worker trips this
NODES, PROCESSES, LOOKUPS = 12, 2, 24


async def _in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(LIMIT):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def _small_run() -> SizeRun:
    return lookup.bench_size(NODES, PROCESSES, LOOKUPS, 4, 1, 20.0,
                             baseline=kademlia_baseline.available())


def _check_phase(ph: Phase, lookups: int = LOOKUPS) -> None:
    assert ph.lookups == lookups and ph.seconds > 0 and ph.rate > 0
    assert len(ph.latencies) == lookups and all(x > 0 for x in ph.latencies)
    assert ph.empty == 0  # every lookup returned nodes ...
    assert ph.queried >= lookups  # ... after asking at least one


async def test_lookups_succeed_and_connections_stay_within_the_limits() -> None:
    run = await _in_thread(_small_run)
    assert run.errors == [] and run.processes == PROCESSES
    names = ["anonmail d=1", "anonmail d=8"]
    assert [ph.system for ph in run.phases] == (
        [*names, "kademlia"] if kademlia_baseline.available() else names)
    for ph in run.phases[:2]:
        _check_phase(ph)
        assert ph.short == LOOKUPS  # 12 nodes < k = 20: each lookup returns all it can
        assert ph.failures == 0  # nobody left: no request may fail
        assert ph.conns is not None and len(ph.conns) == NODES
        # at most one connection each way with each other node, and never over the limits
        assert max(ph.conns) <= 2 * (NODES - 1)
        assert ph.max_out <= lookup_tcp.POOL_LIMIT and ph.max_in <= lookup_tcp.ACCEPT_LIMIT
        assert ph.dials_full >= 0 and ph.dials_resumed >= 0
    assert len(run.warm_conns) == NODES and min(run.warm_conns) > 0
    assert run.tables["anonmail"] == NODES - 1  # after warm-up every node knows every other
    # warm: rounds went on until one dialled at most one full handshake per lookup
    assert 1 <= run.rounds <= lookup.WARM_MAX
    assert run.rounds == lookup.WARM_MAX or run.warm_handshakes <= lookup.WARM_HANDSHAKES
    text = lookup.report(run)
    assert f"warm-up, both systems: 1 + {run.rounds} lookups per node" in text
    assert "anonmail d=1" in text and "anonmail d=8" in text and "FAILED" not in text
    if kademlia_baseline.available():  # the same workload, run twice (before and after)
        kad = run.phases[2]
        assert kad.conns is None  # UDP: no connections
        _check_phase(kad, 2 * LOOKUPS)
        assert run.tables["kademlia"] == NODES - 1
        assert "0.5x the kademlia package" in text


def hanging_worker(conn: Connection, index: int, count: int, cfg: dict[str, Any]) -> None:
    """A worker that never says it is ready (spawned by name from this module)."""
    time.sleep(LIMIT)


def _hung() -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(lookup_procs.WorkerFailure) as failed, \
            lookup_procs.Workers(hanging_worker, 2, 2, {}, start_timeout=2.0):
        pass
    return str(failed.value), time.monotonic() - started


async def test_a_hung_worker_is_killed_and_named() -> None:
    message, seconds = await _in_thread(_hung)
    assert "worker 0 gave no answer to 'start' in time" in message
    assert seconds < 2.0 + lookup_procs.STOP_TIMEOUT


def test_processes_grow_to_hold_the_sockets() -> None:
    assert lookup.processes_for(100, 4, 20_000) == 4
    assert lookup.processes_for(200, 4, 20_000) == 5  # 49 nodes of 399 sockets each fit
    assert lookup.processes_for(200, 4, 1024) == 100  # two nodes of 399 sockets each
    assert lookup.processes_for(3, 8, 20_000) == 3


def test_bad_arguments_are_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "lookup", "--nodes", "100,x"]) == 2
    assert "--nodes takes network sizes separated by commas" in capsys.readouterr().err
    assert main(["bench", "lookup", "--nodes", "1"]) == 2
    assert "each size must be 2-1000" in capsys.readouterr().err
    assert main(["bench", "lookup", "--warm-max", "101"]) == 2
    assert "--warmup and --warm-max must be 0-100" in capsys.readouterr().err


async def test_the_command_says_how_to_get_the_baseline(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kademlia_baseline, "available", lambda: False)
    argv = ["bench", "lookup", "--nodes", "6", "--processes", "2", "--lookups", "6",
            "--concurrency", "2", "--warmup", "1", "--seconds", "20"]
    assert await _in_thread(partial(main, argv)) == 0
    out = capsys.readouterr().out
    assert "pip install 'anonmail[bench]'" in out
    assert "anonmail d=8" in out and "6 nodes on 127.0.0.1 in 2 processes" in out
