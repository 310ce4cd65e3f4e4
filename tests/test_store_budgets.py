"""Storage budgets (anonmail/store/budget.py; docs/storage.md "Storage budgets").

The must-show: one party storing at the blob cap as fast as it can, alone and as a Sybil crowd of
keys and addresses, while an honest party keeps storing and appending: every honest request gets
its receipt, the attacker gets no more than its shares and the node never holds more than
`node_bytes` (and, without the reserve, the crowd shuts honest parties out). Then: many keys
behind one address share one source budget; loopback parties are judged by key; a property test
of the budget arithmetic. Charges themselves: tests/test_store_charges.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from storebudget import TTL, MiB, add, blob, check_books, party, put
from storectx import NODE_KEY, NOW, PARAMS, make_ctx

from anonmail import crypto
from anonmail.clock import FixedClock
from anonmail.net.base import Peer
from anonmail.records import ids
from anonmail.records.certs import NodeCert
from anonmail.rng import SeededRng
from anonmail.store.budget import (
    KEY_SHARE,
    RESERVE,
    SOURCE_SHARE,
    Party,
    Shares,
    judge,
    shares,
)
from anonmail.store.db import StoreDb
from anonmail.store.errors import QuotaExceeded
from anonmail.store.handlers import StoreContext, StoreLimits, handle_store
from anonmail.store.messages import MAX_BLOB, ObjectKind, Store
from anonmail.store.schema import object_size
from anonmail.store.service import StoreService


def flood(ctx: StoreContext, attackers: list[Party], honest: Party, rounds: int, *,
          greedy: bool = False) -> tuple[int, int, int]:
    """Each round every attacker stores a blob at the cap (`greedy`: refused, it halves the
    size down to 16 KiB to fill what room is left), and before every 8th attacker the honest
    party stores a body and appends an entry; until a round takes nothing from the attackers,
    then `rounds` more. Returns (attacker bytes accepted, honest requests, honest receipts)."""
    taken = asked = got = 0
    extra, i = rounds, 0
    while extra > 0:
        took = 0
        for j, a in enumerate(attackers):
            if j % 8 == 0:
                n = f"{i}.{j}"
                got += put(ctx, honest, f"honest body {n} ".encode() * 400)
                got += add(ctx, honest, f"honest entry {n} ".encode() * 80,
                           ids.inbox_key(f"u{j % 9}@x.org"))
                asked += 2
            size = MAX_BLOB
            while size >= 16384:
                if put(ctx, a, blob(i * 1000 + j, size)):
                    took += size
                    break
                size = size // 2 if greedy else 0
        taken += took
        extra -= took == 0
        i += 1
        check_books(ctx)
    return taken, asked, got


# -- the must-show --------------------------------------------------------------------------------


@pytest.mark.threat("T-STORE-HOG")
def test_one_party_flooding_gets_its_share_and_honest_requests_all_get_receipts() -> None:
    # The measured attack: one key, one address, a 1 GiB node, blobs at the cap.
    ctx = make_ctx()
    try:
        attacker, honest = party(ctx, 0xA, "203.0.113.66"), party(ctx, 0xB, "198.51.100.7")
        taken, asked, got = flood(ctx, [attacker], honest, rounds=20)
        sh = shares(ctx.limits)
        held = ctx.db.ledger.usage(attacker)[0]
        print(f"\none key, one address: attacker accepted {taken:,} B in "
              f"{taken // MAX_BLOB} blobs ({held:,} B accounted; key share {sh.key:,} B of "
              f"{sh.node:,} B); honest receipts {got}/{asked} = {100 * got / asked:.0f}%")
        assert held <= sh.key and taken // MAX_BLOB == sh.key // object_size(blob(0), 1)
        assert got == asked
    finally:
        ctx.db.close()


@pytest.mark.threat("T-STORE-HOG")
@pytest.mark.parametrize("reserve", [True, False])
def test_a_crowd_of_keys_and_addresses_cannot_shut_out_honest_parties(reserve: bool) -> None:
    """96 keys on 12 addresses, and 8 more addresses with a key each, fill a 64 MiB node as
    greedily as they can. With the reserve every honest request gets its receipt; without it
    (the counterfactual: open_share = 1) the crowd fills the node and honest requests fail."""
    ctx = make_ctx(node_bytes=64 * MiB)
    if not reserve:
        ctx.limits = replace(ctx.limits, open_share=1.0)
    try:
        heavy = [party(ctx, 100 + 8 * s + k, f"203.0.113.{s + 1}")
                 for k in range(8) for s in range(12)]
        light = [party(ctx, 300 + s, f"198.18.0.{s + 1}") for s in range(8)]
        honest = party(ctx, 0xB, "198.51.100.7")
        taken, asked, got = flood(ctx, heavy + light, honest, rounds=4, greedy=True)
        sh, used = shares(ctx.limits), ctx.db.used_bytes()
        in_light = sum(ctx.db.ledger.usage(a)[0] for a in light)
        print(f"\ncrowd, reserve {'on' if reserve else 'off'}: attackers accepted {taken:,} B; "
              f"node {used:,} of {sh.node:,} B ({100 * used / sh.node:.0f}%; open part "
              f"{sh.open:,}); worst key {max(ctx.db.ledger.usage(a)[0] for a in heavy):,} B "
              f"(share {sh.key:,}), worst address "
              f"{max(ctx.db.ledger.usage(a)[1] for a in heavy):,} B (share {sh.source:,}); "
              f"light attackers {in_light:,} B; honest receipts {got}/{asked} = "
              f"{100 * got / asked:.0f}%")
        assert all(ctx.db.ledger.usage(a)[0] <= sh.key for a in heavy + light)
        assert all(ctx.db.ledger.usage(a)[1] <= sh.source for a in heavy + light)
        if reserve:
            assert used > sh.open  # the crowd reached the reserve ...
            assert in_light <= len(light) * sh.reserve_source  # ... in light parties' pieces
            assert got == asked  # ... and honest requests still got their receipts
        else:
            assert got < asked
    finally:
        ctx.db.close()


def test_many_keys_from_one_address_share_its_budget() -> None:
    ctx = make_ctx(node_bytes=64 * MiB)
    try:
        sh = shares(ctx.limits)
        keys = [party(ctx, i, "203.0.113.9") for i in range(40)]
        refusals: set[str] = set()
        for i, k in enumerate(keys):
            for j in range(4):
                try:
                    handle_store(ctx, Store(ids.body_key(f"{i}/{j}"), ObjectKind.BODY,
                                            blob(i * 10 + j), TTL, ()), NOW, k)
                except QuotaExceeded as e:
                    refusals.add(e.detail)
        source_used = ctx.db.ledger.usage(keys[0])[1]
        assert sh.source - sh.key < source_used <= sh.source
        assert refusals == {KEY_SHARE, SOURCE_SHARE}
        # The source is the exact IPv4 address (as net/admission.py judges connections) ...
        assert put(ctx, party(ctx, 99, "203.0.113.10"), blob(99))
        # ... and an IPv6 /64: two addresses of one /64 are one source.
        a, b = party(ctx, 1, "2001:db8::1"), party(ctx, 2, "2001:db8::2:3")
        assert a.source == b.source and a.source != party(ctx, 1, "2001:db8:0:1::1").source
        check_books(ctx)
    finally:
        ctx.db.close()


async def test_loopback_parties_are_judged_by_key() -> None:
    db = StoreDb(":memory:")
    # Through the service, as a request arrives (the sim's testnet would judge by key anyway).
    svc = StoreService(cast(Any, None), cast(Any, None), NODE_KEY, PARAMS, FixedClock(NOW),
                       SeededRng(1), db, limits=StoreLimits(node_bytes=64 * MiB),
                       shared_sources=False)
    sh = shares(svc.ctx.limits)
    try:
        for address in ("127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1", None):
            assert party(svc.ctx, 1, address).source is None
        assert party(svc.ctx, 1, "192.0.2.1").source is not None
        # 12 local processes: each gets its own key share, together more than a source share.
        refused = 0
        for i in range(12):
            key = crypto.SigningKey(crypto.hash("budget-test-key", bytes([i])))
            peer = Peer(NodeCert.issue(key, (), NOW, PARAMS), "127.0.0.1")
            for j in range(3):
                try:
                    await svc.handle(peer, Store(ids.body_key(f"{i}/{j}"), ObjectKind.BODY,
                                                 blob(i * 10 + j), TTL, ()))
                except QuotaExceeded as e:
                    assert e.detail == KEY_SHARE
                    refused += 1
        assert refused == 12 and sh.source < db.used_bytes() <= 12 * sh.key
        check_books(svc.ctx)
    finally:
        db.close()


# -- the arithmetic -------------------------------------------------------------------------------


@st.composite
def budget_shares(draw: st.DrawFn) -> Shares:
    node = draw(st.integers(100, 10_000))
    key = draw(st.integers(1, node))
    source = draw(st.integers(key, 2 * node))
    reserve_key = draw(st.integers(1, key))
    return Shares(node=node, open=draw(st.integers(0, node)), key=key, source=source,
                  reserve_key=reserve_key,
                  reserve_source=draw(st.integers(reserve_key, source)))


@given(budget_shares(), st.lists(st.tuples(st.integers(0, 11), st.integers(-300, 1500)),
                                 max_size=120))
def test_budget_arithmetic_keeps_every_bound(sh: Shares, steps: list[tuple[int, int]]) -> None:
    """Twelve keys on four sources add (or free) bytes as `judge` lets them: no key or source
    ever exceeds its share, the node never exceeds its budget, bytes beyond the reserve shares
    stay within the open part, and a light party is refused only when the node is full."""
    keys = [0] * 12
    sources = [0] * 4
    for who, amount in steps:
        src = who % 4
        total = sum(keys)
        if amount < 0:  # a release (expiry, delete): never refused
            amount = max(amount, -keys[who])
        else:
            detail = judge(sh, total, amount, keys[who], sources[src], amount)
            light = (keys[who] + amount <= sh.reserve_key
                     and sources[src] + amount <= sh.reserve_source)
            if light and total + amount <= sh.node:
                assert detail is None
            if detail is not None:
                assert judge(sh, total, amount, keys[who] + 1, sources[src], amount) is not None
                continue
        keys[who] += amount
        sources[src] += amount
        assert sum(keys) <= sh.node
        assert max(keys) <= sh.key and max(sources) <= sh.source
        # The reserve is entered only in light parties' pieces (budget.py's invariant).
        assert sum(max(0, k - sh.reserve_key) for k in keys) <= sh.open
        assert sum(max(0, s - sh.reserve_source) for s in sources) <= sh.open


def test_refusal_details_are_distinct_fixed_phrases() -> None:
    sh = Shares(node=1000, open=750, key=100, source=300, reserve_key=10, reserve_source=40)
    assert judge(sh, 995, 10, 0, 0, 10) == "quota: node storage full"
    assert judge(sh, 0, 10, 95, 0, 10) == KEY_SHARE
    assert judge(sh, 0, 10, 0, 295, 10) == SOURCE_SHARE
    assert judge(sh, 0, 10, 0, None, 10) is None  # judged by key alone
    assert judge(sh, 745, 10, 20, 20, 10) == RESERVE
    assert judge(sh, 745, 10, 0, 20, 10) is None  # a light party enters the reserve
    assert judge(sh, 745, 10, 20, 20, 10, reserve=False) is None  # READ / ACK
    assert len({KEY_SHARE, SOURCE_SHARE, RESERVE}) == 3
