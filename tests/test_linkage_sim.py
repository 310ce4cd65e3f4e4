"""Can an inbox replica group one sender's appends? (experiments/linkage/; DESIGN.md §6, §7;
threat T-PERMIT-LINK).

A small `anonmail sim linkage` (80 nodes, 3 senders x 8 messages to one owner):

* anonymous (the default way of sending): every message is accepted; at every replica no two
  entries spend one token key (each token is spent once), every token has the same expiry,
  entry size and ttl take one value (so these rules score exactly chance), the peer is never
  the sender's node, and no rule of a logging replica groups the senders' appends much better
  than chance or reaches more than a small share of the same-sender pairs (bounds generous:
  few pairs; see the test);
* direct: the peer is the sender's own node, so the peer alone groups perfectly (precision and
  recall 1.0): that is what --direct means, not a weakness of the permits;
* `anonmail sim linkage` runs and prints its table (tiny sizes, one mode).

The async tests take `autojump_clock` themselves (pytest-trio picks the clock from the test's
own arguments only) and bound their virtual time with `trio.fail_after`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from anonmail.cli import main
from anonmail.experiments.linkage.model import (
    EXPIRES,
    KEY,
    PEER,
    SIZE,
    TTL,
    LinkageConfig,
    LinkageReport,
    Mode,
)
from anonmail.experiments.linkage.report import format_report
from anonmail.experiments.linkage.run import bound, run_mode

SMALL = LinkageConfig(nodes=80, senders=3, messages=8, hours=2.0, seed=3)
MIN_PAIRS = 5  # fewer grouped pairs say little about a rule's precision


@pytest.mark.threat("T-PERMIT-LINK")
async def test_anonymous_appends_link_no_better_than_chance(autojump_clock: MockClock,
                                                            tmp_path: Path) -> None:
    cfg = SMALL
    with trio.fail_after(bound(cfg)):
        res = await run_mode(cfg, Mode.ANONYMOUS, tmp_path)
    print("\n" + format_report(LinkageReport(cfg, [res])))
    n = cfg.senders * cfg.messages
    assert res.sent == res.delivered == n
    assert len(res.replicas) >= cfg.replication
    assert res.keys_shared == 0 and res.expiry_values == 1
    assert len(res.sizes) == len(res.ttls) == 1
    for rep in res.replicas:
        assert rep.keys_shared == 0
        assert rep.distinct[KEY] == rep.entries  # one key per entry: spent once
        assert rep.scores[KEY].grouped == 0
        assert rep.distinct[EXPIRES] == rep.distinct[SIZE] == rep.distinct[TTL] == 1
        assert rep.peer_is_sender == 0  # the peer is Z, never the sender's node
        for feature in (EXPIRES, SIZE, TTL):  # group everything: exactly chance
            s = rep.scores[feature]
            assert s.grouped == s.pairs_total and s.precision == pytest.approx(s.chance)
    # Every message goes through fresh go-betweens (MailAgent retires them after each send), so
    # equal peers are coincidences of random Zs; with 24 appends those are few and noisy, hence
    # generous bounds. Nothing may group the senders' appends wholesale, as the peer does with
    # --direct (precision and recall 1.0 over every same-sender pair, below). The full-size run
    # (`anonmail sim linkage`, 4 x 50) is the measurement: no better than chance.
    for rep in res.replicas:
        for s in rep.rules():
            if 0 < s.grouped < s.pairs_total:
                assert s.recall < 0.25, (s.name, s.recall)
            if s.grouped >= MIN_PAIRS:
                assert s.precision is not None
                assert s.precision <= s.chance + 0.4, (s.name, s.precision, s.chance)
    found = res.best()
    assert found is not None and found[1].recall < 0.25


@pytest.mark.threat("T-PERMIT-LINK")
async def test_direct_appends_link_by_peer(autojump_clock: MockClock, tmp_path: Path) -> None:
    cfg = SMALL
    with trio.fail_after(bound(cfg)):
        res = await run_mode(cfg, Mode.DIRECT, tmp_path)
    assert res.sent == res.delivered == cfg.senders * cfg.messages
    assert res.keys_shared == 0 and res.expiry_values == 1
    for rep in res.replicas:
        peer = rep.scores[PEER]
        assert peer.precision == 1.0 and peer.recall == 1.0
        assert rep.peer_is_sender == rep.entries  # the sender's own node: --direct
        assert rep.distinct[PEER] == rep.senders
    found = res.best()
    assert found is not None and found[1].above_chance


def test_cli_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "linkage", "--nodes", "30", "--senders", "2", "--messages", "3",
                 "--hours", "0.5", "--mode", "direct"]) == 0
    out = capsys.readouterr().out
    assert "peer node id" in out and "verdict: better than chance" in out
    assert "keys spent on two different entries: 0 (each token is spent once)" in out
