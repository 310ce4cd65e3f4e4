"""The routing table's dict buckets, subnet counts, bulk `fill` and lazy `closest` (issue 11)
behave exactly as the list-based table they replaced (tests/routing_reference.py): the same
result for every operation, the same buckets and replacement caches in the same order, holding
the same Contact objects, under any sequence of operations (hypothesis)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from routing_reference import ReferenceTable

from anonmail.dht.routing import AddResult, Contact, RoutingTable
from anonmail.records import ids
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.rng import SeededRng
from anonmail.sim.scenario import make_key, sim_params

NOW = 1_800_000_000.0
PARAMS = sim_params(puzzle_bits=0)
SUBNETS = ("198.18.1", "198.18.2", "198.19.7")


def _pool(n: int, seed: int) -> list[Contact]:
    """Contacts on a few /24s (limits bite), some on two, some on loopback, a few clients,
    and for some keys several certificates: renewals (higher seq, maybe another subnet), an
    equal re-issue (an equal cert in another object) and an equivocation (same seq, other
    endpoints)."""
    rng = SeededRng(seed)
    out: list[Contact] = []
    for i in range(n):
        key = make_key(rng, PARAMS)

        def ep(j: int) -> tuple[Endpoint, ...]:
            if j % 11 == 10:
                return ()  # a client
            if j % 11 == 9:
                return (Endpoint("127.0.0.1", 7000 + j),)
            first = Endpoint(f"{SUBNETS[j % len(SUBNETS)]}.{1 + j % 250}", 7000)
            if j % 7 == 3:  # two subnets
                return (first, Endpoint(f"{SUBNETS[(j + 1) % len(SUBNETS)]}.{1 + j % 250}", 7001))
            if j % 7 == 5:  # a subnet and loopback
                return (first, Endpoint("127.0.0.1", 7000 + j))
            return (first,)

        out.append(Contact.of(NodeCert.issue(key, ep(i), NOW, PARAMS, seq=5)))
        if i % 4 == 0:
            out.append(Contact.of(NodeCert.issue(key, ep(i + 1), NOW, PARAMS, seq=6)))
        if i % 4 == 1:
            out.append(Contact.of(NodeCert.issue(key, ep(i), NOW, PARAMS, seq=5)))
        if i % 8 == 2:
            out.append(Contact.of(NodeCert.issue(key, ep(i + 2), NOW, PARAMS, seq=5)))
    return out


POOL = _pool(90, seed=21)
IDS = sorted({c.node_id for c in POOL})


def _same_state(new: RoutingTable, ref: ReferenceTable) -> None:
    assert len(new) == len(ref)
    assert new.deepest() == ref.deepest()
    for i in range(ids.ID_BITS):
        assert [id(c) for c in new.bucket(i)] == [id(c) for c in ref.bucket(i)], i
        assert [id(c) for c in new.replacements(i)] == [id(c) for c in ref.replacements(i)], i
    for nid in IDS:
        assert new.failures(nid) == ref.failures(nid)
        assert (new.get(nid) is ref.get(nid)) and ((nid in new) == (nid in ref))


def _offered(picks: list[Contact], taken: list[Contact]) -> Iterator[Contact]:
    """`picks`, noting in `taken` each one handed out."""
    for c in picks:
        taken.append(c)
        yield c


OPS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["add", "add", "add", "fail", "remove"]),
              st.integers(0, len(POOL) - 1)),
    st.tuples(st.just("fill"), st.integers(0, 6),
              st.lists(st.integers(0, len(POOL) - 1), max_size=12)),
    st.tuples(st.just("closest"), st.binary(min_size=32, max_size=32), st.integers(0, 40),
              st.lists(st.integers(0, len(POOL) - 1), max_size=4)),
), max_size=120)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, own=st.integers(0, len(POOL) - 1), k=st.integers(1, 6),
       subnet_limit=st.integers(1, 3), failure_limit=st.integers(1, 3))
def test_the_table_matches_the_list_based_model(ops: list[tuple[Any, ...]], own: int, k: int,
                                                subnet_limit: int, failure_limit: int) -> None:
    params = sim_params(k=k, subnet_limit=subnet_limit, failure_limit=failure_limit,
                        puzzle_bits=0)
    own_id = POOL[own].node_id
    new, ref = RoutingTable(own_id, params, NOW), ReferenceTable(own_id, params, NOW)
    for op in ops:
        if op[0] == "add":
            assert new.add(POOL[op[1]], NOW) is ref.add(POOL[op[1]], NOW)
        elif op[0] == "fail":
            nid = POOL[op[1]].node_id
            assert new.record_failure(nid) == ref.record_failure(nid)
        elif op[0] == "remove":
            nid = POOL[op[1]].node_id
            assert new.remove(nid) == ref.remove(nid)
        elif op[0] == "fill":
            index, picks = op[1], [POOL[i] for i in op[2]]
            taken: list[Contact] = []
            added = new.fill(index, _offered(picks, taken), NOW)
            ref_added = 0
            for n, c in enumerate(picks):
                if len(ref.bucket(index)) >= ref.k:
                    # `fill` takes a candidate, then sees the bucket full and stops there.
                    assert len(taken) == n + 1
                    break
                ref_added += ref.add(c, NOW) is AddResult.ADDED
            else:
                assert len(taken) == len(picks)
            assert added == ref_added
        else:
            key, n, ex = op[1], op[2], frozenset(POOL[i].node_id for i in op[3])
            for exclude in (frozenset(), ex, tuple(ex)):
                assert ([id(c) for c in new.closest(key, n, exclude)]
                        == [id(c) for c in ref.closest(key, n, exclude)])
        _same_state(new, ref)


def test_fill_takes_no_candidate_past_a_full_bucket() -> None:
    """The oracle build (sim/scenario.py) draws one random number per candidate taken: `fill`
    must take exactly the candidates a loop of `add`s would, the last one included."""
    own = POOL[0].node_id
    table = RoutingTable(own, sim_params(k=2, puzzle_bits=0, subnet_limit=64), NOW)
    index = next(i for i in range(8)
                 if sum(table.bucket_index(c.node_id) == i and c.cert.is_server
                        for c in POOL) >= 4)
    members = list({c.node_id: c for c in POOL
                    if table.bucket_index(c.node_id) == index and c.cert.is_server}.values())
    it = iter(members)
    assert table.fill(index, it, NOW) == 2
    assert [c.node_id for c in table.bucket(index)] == [c.node_id for c in members[:2]]
    assert next(it) is members[3]  # members[2] was taken, seen to find the bucket full
