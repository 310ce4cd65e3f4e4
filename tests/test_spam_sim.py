"""A spammer without permits against RTS/CTS (experiments/spam/, permit/gate.py; DESIGN.md §6;
threats T-PERMIT-SPAM, T-RTS-FLOOD).

A small `anonmail sim spam` (60 gated nodes, 5 victims, 20 identities, 4-bit stamps):

* nothing the spammer appends straight to an inbox is stored, on any node: no proof, a token
  it signed itself, a real stamp (a PERMITS inbox takes none) are each refused by every
  replica with their own code;
* request inboxes refuse appends without a stamp or with one below the difficulty;
* RTS with real stamps get in, up to the quota: no replica holds more than REQUEST_ENTRIES,
  a smart spammer learns that the inbox is full only by paying for one more stamp;
* `anonmail sim spam` runs and prints its table (tiny sizes).

The async test takes `autojump_clock` itself (pytest-trio picks the clock from the test's own
arguments only) and bounds its virtual time with `trio.fail_after`.
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from anonmail.cli import main
from anonmail.experiments.spam.model import Attack, SpamConfig
from anonmail.experiments.spam.report import format_report
from anonmail.experiments.spam.run import run_async
from anonmail.permit.gate import REQUEST_ENTRIES
from anonmail.records.params import MAINNET

TIMEOUT = 86400.0  # virtual seconds: a deadlock jumps here and fails
SMALL = SpamConfig(nodes=60, victims=5, identities=20, bits=4, spam=4, flood=3, seed=2)


@pytest.mark.threat("T-PERMIT-SPAM")
@pytest.mark.threat("T-RTS-FLOOD")
async def test_spammer_without_permits_stores_nothing_and_rts_stay_within_quota(
    autojump_clock: MockClock
) -> None:
    cfg = SMALL
    r = cfg.replication
    with trio.fail_after(TIMEOUT):
        rep = await run_async(cfg)
    print("\n" + format_report(rep))
    assert rep.policies_placed == 2 * cfg.victims * r  # every victim's policy on r replicas

    # (a) nothing in the victims' inboxes, and every replica said why.
    assert rep.inbox_entries == 0 and rep.inbox_holders == 0
    codes = {Attack.INBOX_BARE: "PERMIT_REQUIRED", Attack.INBOX_FORGED: "PERMIT_INVALID",
             Attack.INBOX_STAMPED: "PERMIT_REQUIRED", Attack.REQUEST_BARE: "STAMP_REQUIRED",
             Attack.REQUEST_WEAK: "STAMP_REQUIRED"}
    for attack, code in codes.items():
        t = rep.tallies[attack]
        assert t.tried > 0 and t.accepted == t.receipts == t.failures == 0, attack
        assert dict(t.refusals) == {code: t.tried * r}, attack
    assert rep.tallies[Attack.INBOX_FORGED].tried == cfg.victims * cfg.spam
    # (c) cost the spammer no minting.
    assert rep.tallies[Attack.REQUEST_BARE].cpu == rep.tallies[Attack.REQUEST_WEAK].cpu == 0

    # (b) stamped RTS get in, up to the quota and no further.
    rts = rep.rts
    assert rts.accepted > 0
    assert rep.request_max <= REQUEST_ENTRIES
    assert rep.distinct_max <= REQUEST_ENTRIES
    assert rts.accepted == cfg.victims * REQUEST_ENTRIES  # it filled every request inbox...
    assert rts.tried == rts.accepted + cfg.victims  # ...and paid one stamp each to learn it
    assert rep.victims_filled == cfg.victims
    assert dict(rts.refusals) == {"INBOX_FULL": cfg.victims * r}
    assert rep.replicas_full == rep.replicas_held == cfg.victims * r
    assert rts.cpu > 0 and rep.cpu_per_accepted is not None


def test_cli_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "spam", "--nodes", "30", "--victims", "2", "--identities", "5",
                 "--bits", "3", "--spam", "2", "--flood", "1", "--max-rts", "10"]) == 0
    out = capsys.readouterr().out
    assert "entries stored in victims' inboxes" in out
    assert "max held per request inbox replica / quota" in out and "10 / 64" in out
    assert f"the network's default is {MAINNET.stamp_bits}" in out
