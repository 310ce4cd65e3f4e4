"""Mail delivery reliability under dropping storage nodes and churn (experiments/mail/,
sim/storage.py, sim/storage_adversary.py; threat T-RECEIPT-DROP; seed 003 §6.1, seed 002 §2.3-2.4).

* droppers really drop: their receipts verify, their databases hold nothing, readers find
  nothing on them, and the lying variant answers every Probe with "I have it";
* a small network (200 nodes, 100 messages, 20% droppers, 10%/h churn, hourly republish)
  delivers at least 99% of the messages intact, beside the seed's (1 - p_a)^r;
* without republish, under churn and longer holding times, delivery falls well below the
  same run with republish: the repair mechanism is what carries the mail;
* a run is reproducible from its seed; the sampled byte estimate agrees with the exact count;
* `anonmail sim mail` and `bench_sim` run (tiny sizes);
* `--runslow`: the full default experiment (1,000 nodes, 1,000 messages) delivers >= 99.9%.

Every async test takes `autojump_clock` itself (pytest-trio picks the clock from the test's
own arguments only) and bounds its virtual time with `trio.fail_after`; the sync ones call
`experiments.mail.run.run`, which does both.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from anonmail.cli import main
from anonmail.experiments.bench.mail_sim import bench_sim, format_bench
from anonmail.experiments.mail.model import MailConfig, MailReport, predict, survival
from anonmail.experiments.mail.report import format_report
from anonmail.experiments.mail.run import run_async, run_parallel
from anonmail.mail.identity import AddressIdentity
from anonmail.records import ids
from anonmail.records.receipts import StoreOp
from anonmail.rng import SeededRng
from anonmail.sim.scenario import Scenario, SimNode
from anonmail.sim.storage_adversary import StorageDropper
from anonmail.store.client import (
    append_replicated,
    check_receipt,
    fetch_any,
    store_replicated,
)
from anonmail.store.db import StoreDb
from anonmail.store.messages import (
    ItemKind,
    Needs,
    ObjectKind,
    Probe,
    ProbeItem,
    blob_digest,
    entry_id,
)
from anonmail.store.owner_client import read_all
from anonmail.store.service import StoreService

R = 8
DAY = 86400.0
TIMEOUT = 10 * DAY  # virtual seconds: a deadlock jumps here and fails


def closest(s: Scenario, key: bytes, n: int = R) -> list[SimNode]:
    live = [x for x in s.nodes if x.net.up]
    return sorted(live, key=lambda x: ids.distance(x.node_id, key))[:n]


# -- the adversary --------------------------------------------------------------------------------


@pytest.mark.threat("T-RECEIPT-DROP")
async def test_droppers_sign_valid_receipts_and_keep_nothing(autojump_clock: MockClock) -> None:
    s = Scenario(60, seed=5, encode=True)
    await s.build("oracle")
    key = ids.body_key("<dropped@anonmail>")
    owner = AddressIdentity.create_anon("owner", SeededRng(b"owner"), s.clock.now())
    inbox = ids.inbox_key(owner.address)
    # Every node among the r closest to both keys drops; half of them also lie in Probe.
    hostile = {x.node_id for x in (*closest(s, key), *closest(s, inbox))}
    services: dict[bytes, StoreService] = {}
    droppers: dict[bytes, StorageDropper] = {}
    for i, x in enumerate(s.nodes):
        svc = StoreService(x.net, x.dht, x.key, s.params, s.clock, s.rng.fork(f"store-{i}"),
                           StoreDb(":memory:"))  # the storage primitives (no permit gate)
        services[x.node_id] = svc
        if x.node_id in hostile:
            droppers[x.node_id] = StorageDropper(svc, lie_in_probe=i % 2 == 0)
        x.services.add(droppers.get(x.node_id, svc))
    user = next(x for x in s.nodes if x.node_id not in hostile)
    blob, entry = b"sealed body", b"sealed header"
    try:
        with trio.fail_after(TIMEOUT):
            stored = (await store_replicated(user.net, user.dht, key, ObjectKind.BODY, blob,
                                            3600, [], R, clock=s.clock)).receipts
            appended = (await append_replicated(user.net, user.dht, inbox, entry, 3600, None, R,
                                                clock=s.clock)).receipts
            # r receipts each (store_replicated checked them already); all valid evidence.
            assert len(stored) == len(appended) == R
            now = s.clock.now()
            for rc in stored:
                assert rc.node_id in hostile
                check_receipt(rc, s.by_id[rc.node_id].cert, StoreOp.STORE, key,
                              blob_digest(blob), now)
            for rc in appended:
                check_receipt(rc, s.by_id[rc.node_id].cert, StoreOp.APPEND, inbox,
                              entry_id(entry), now)
            # ... yet nothing is kept, and a reader finds nothing.
            for nid in hostile:
                db = services[nid].db
                assert db.count_objects() == 0 and db.inbox_usage(inbox, now) == (0, 0)
                assert db.object_keys(now) == [] and db.inbox_keys(now) == []
            assert await fetch_any(user.net, user.dht, key, R, digest=blob_digest(blob)) is None
            got = await read_all(user.net, user.dht, inbox, owner.sign, owner.cert, R, s.clock,
                                 SeededRng(1))
            assert got.entries == {} and len(got.nodes) == R
            # Asked by a republishing replica: the plain dropper wants the copy (and will drop
            # it again), the liar claims to hold it.
            probe = Probe((ProbeItem(ItemKind.OBJECT, key, (blob_digest(blob),)),))
            for nid, d in droppers.items():
                reply = await user.net.request(s.by_id[nid].cert, probe)
                assert isinstance(reply, Needs)
                assert reply.items[0].ids == (() if d.lie_in_probe else (blob_digest(blob),))
            lied = sum(d.stats.lies for d in droppers.values())
            assert lied == sum(d.lie_in_probe for d in droppers.values())
            assert sum(d.stats.receipts for d in droppers.values()) == 2 * R
    finally:
        for svc in services.values():
            svc.db.close()


# -- the experiment -------------------------------------------------------------------------------

SMALL = MailConfig(nodes=200, messages=100, agents=10, send_hours=2.0, delay_hours=(1.0, 2.0),
                   seed=3)


@pytest.mark.threat("T-RECEIPT-DROP", "T-MAIL-LOSS")
async def test_small_network_delivers_despite_droppers_and_churn(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    wall = time.perf_counter()
    with trio.fail_after(TIMEOUT):
        rep = await run_async(SMALL, tmp_path)
    print("\n" + format_report(rep) + f"\nwall clock {time.perf_counter() - wall:.1f} s")
    assert rep.left > 0 and rep.left == rep.joined  # churn happened, N stayed
    assert rep.drops.receipts > 0 and rep.drops.objects > 0  # droppers signed and dropped
    assert rep.store.pushed_objects > 0 and rep.store.pushed_entries > 0  # repair ran
    assert rep.rate >= 0.99
    assert not rep.errors["retrieved bytes differ"]
    assert rep.prediction.with_repair >= 0.99


@pytest.mark.threat("T-RECEIPT-DROP", "T-MAIL-LOSS")
async def test_without_republish_churn_loses_mail(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    """The repair mechanism matters: 6 hours of holding under 30%/h churn, with and without
    republish, on the same seed (same network, letters and churn schedule). The seed's formula
    predicts ~40% delivered without repair (seeds 4-7 of this setup gave 38-81%: the messages
    to one recipient share an inbox, so their fates are correlated) and ~98% with it."""
    base = MailConfig(nodes=50, messages=16, agents=8, churn=0.3, send_hours=0.25,
                      delay_hours=(6.0, 6.5), seed=5)
    with trio.fail_after(TIMEOUT):
        kept = await run_async(base, tmp_path / "republish")
        lost = await run_async(dataclasses.replace(base, republish=False), tmp_path / "none")
    print(f"\nwith republish {kept.rate:.0%} (predicted {kept.prediction.with_repair:.1%}), "
          f"without {lost.rate:.0%} (predicted {lost.prediction.no_repair:.1%})")
    assert lost.store.pushed_objects == lost.store.pushed_entries == 0
    assert kept.store.pushed_objects > 0
    assert kept.rate >= 0.95 and kept.prediction.with_repair >= 0.95
    assert lost.rate <= kept.rate - 0.3
    assert lost.prediction.no_repair < 0.5


async def test_a_run_is_reproducible_and_the_byte_estimate_holds(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    cfg = MailConfig(nodes=40, messages=6, agents=3, send_hours=0.5,
                     delay_hours=(0.5, 1.0), encode=True, sample_every=4, seed=9)
    with trio.fail_after(TIMEOUT):
        a = await run_async(cfg, tmp_path / "a")
        b = await run_async(cfg, tmp_path / "b")
    assert a.delivered == len(a.letters) == 6

    def outcome(rep: MailReport) -> list[tuple[str, float | None]]:
        # Virtual times relative to each run's start: equal up to float rounding.
        return [(x.message_id, None if x.latency is None else round(x.latency, 6))
                for x in rep.letters]

    assert outcome(a) == outcome(b)
    assert a.meter.counts == b.meter.counts and a.world_requests == b.world_requests
    assert a.exact_bytes is not None and a.exact_bytes == b.exact_bytes
    estimate = a.meter.bytes("mail") + a.meter.bytes("upkeep")
    assert abs(estimate - a.exact_bytes) <= 0.15 * a.exact_bytes


def test_prediction_follows_the_seed_formula() -> None:
    p = predict(0.2, 0.1, 8, [3 * 3600.0], step=3600.0)  # churn in hourly steps
    assert p.p_a_hold == pytest.approx(0.8 * 0.9**3)
    assert p.p_disaster_hold == pytest.approx((1 - 0.8 * 0.9**3) ** 8)
    assert p.no_repair == pytest.approx((1 - p.p_disaster_hold) ** 2)
    q = (1 - 0.72) ** 8  # one hour
    first = (1 - 0.8 * 0.81) ** 8  # a body's first two hours
    assert p.with_repair == pytest.approx((1 - first) * (1 - q) * (1 - q) ** 3)
    assert predict(0.0, 0.0, 8, [3600.0]).with_repair == 1.0
    # In steps of 10 minutes, survival approaches exp(-c t).
    assert survival(0.1, 1.0) == pytest.approx((1 - 0.1 / 6) ** 6)
    assert 0.9 < survival(0.1, 1.0) < 0.905


def test_cli_and_bench_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "mail", "--nodes", "40", "--messages", "4", "--agents", "3",
                 "--hours", "0.5", "--delay", "0.2-0.5", "--size", "500-900",
                 "--seed", "2", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "delivered intact" in out and "4/4" in out and "p_disaster" in out
    bench = bench_sim(nodes=40, messages=4, agents=3, size=1000)
    text = format_bench(bench)
    print("\n" + text)
    assert bench.delivered == 4 and bench.rate > 0
    assert bench.bytes_per_delivered > bench.floor > 4 * 1000
    assert bench.before is None and "before issue 11" not in text  # not the recorded workload
    # The recorded workload (1,000 nodes, 20 x 20 KB) prints the before beside its own.
    same = dataclasses.replace(bench, before=(2397, 19.1), wire_messages=747 * 4)
    assert "before issue 11 (08acdaa)          2,397 messages   (19.1x the floor; now 3.2x " \
        "fewer messages)" in format_bench(same)


# -- full size ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.threat("T-RECEIPT-DROP", "T-MAIL-LOSS")
def test_full_default_run_delivers_999_of_1000() -> None:
    """What `anonmail sim mail` runs by default: two independent 1,000-node networks in
    parallel processes, 500 messages each (run_parallel; `run` bounds virtual time)."""
    wall = time.perf_counter()
    rep = run_parallel(MailConfig(), 2)
    print("\n" + format_report(rep) + f"\nwall clock {time.perf_counter() - wall:.1f} s")
    assert len(rep.letters) == 1000
    assert rep.delivered >= 999
