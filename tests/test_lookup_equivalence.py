"""The disjoint-path lookup's one-pass picks and eager un-listing of claimed nodes (issue 11)
make the same requests in the same order as the lookup they replaced
(tests/lookup_reference.py), whatever the answers and the order they arrive in: hypothesis
picks which outstanding request completes next and how (an honest answer, a hostile one, a
failure), and every step must agree."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from lookup_reference import ReferenceLookup

from anonmail.dht.lookup import DisjointLookup
from anonmail.dht.routing import Contact
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.rng import SeededRng
from anonmail.sim.scenario import IdIndex, make_key, sim_params

NOW = 1_800_000_000.0
PARAMS = sim_params(puzzle_bits=0)


def _contacts(n: int, seed: int) -> list[Contact]:
    rng = SeededRng(seed)
    return [Contact.of(NodeCert.issue(make_key(rng, PARAMS),
                                      (Endpoint(f"198.18.{i >> 6}.{1 + (i & 63)}", 7000),),
                                      NOW, PARAMS))
            for i in range(n)]


NETWORK = _contacts(160, seed=5)
INDEX = IdIndex(NETWORK)


def _answer(c: Contact, count: int, key: bytes, me: Contact,
            hostile: frozenset[bytes], hostile_index: IdIndex) -> list[Contact]:
    if c.node_id in hostile and len(hostile_index):
        return hostile_index.closest(key, count)
    near = INDEX.closest(key, count + 1)
    return [x for x in near if x.node_id != me.node_id][:count]


@settings(max_examples=250, deadline=None)
@given(data=st.data(), key=st.binary(min_size=32, max_size=32), me=st.integers(0, 159),
       k=st.integers(1, 12), paths=st.integers(1, 6), alpha=st.integers(1, 4),
       n_initial=st.integers(0, 30), self_server=st.booleans(),
       hostile=st.sets(st.integers(0, 159), max_size=40),
       dead=st.sets(st.integers(0, 159), max_size=40))
def test_the_lookup_matches_the_reference_step_by_step(
        data: st.DataObject, key: bytes, me: int, k: int, paths: int, alpha: int,
        n_initial: int, self_server: bool, hostile: set[int], dead: set[int]) -> None:
    own = NETWORK[me]
    bad = frozenset(NETWORK[i].node_id for i in hostile)
    gone = frozenset(NETWORK[i].node_id for i in dead)
    hostile_index = IdIndex(c for c in NETWORK if c.node_id in bad)
    # The initial contacts: the closest, maybe ourselves among them, as a table would give.
    initial = INDEX.closest(key, n_initial)
    args = (key, k, paths, alpha, initial, own if self_server else None, own.node_id)
    new, ref = DisjointLookup(*args), ReferenceLookup(*args)

    def step(todo_new: list[tuple[int, Contact, int]],
             todo_ref: list[tuple[int, Contact, int]]) -> list[tuple[int, Contact, int]]:
        assert ([(p, c.node_id, n) for p, c, n in todo_new]
                == [(p, c.node_id, n) for p, c, n in todo_ref])
        assert new.done == ref.done
        return todo_new

    outstanding = step(new.next_queries(), ref.next_queries())
    for _ in range(2000):
        if new.done or not outstanding:
            break
        p, c, count = outstanding.pop(data.draw(st.integers(0, len(outstanding) - 1)))
        if c.node_id in gone or data.draw(st.integers(0, 19)) == 0:
            new.on_failure(p, c)
            ref.on_failure(p, c)
        else:
            learned = _answer(c, count, key, own, bad, hostile_index)
            new.on_reply(p, c, learned)
            ref.on_reply(p, c, learned)
        assert new.done == ref.done
        outstanding += step(new.next_queries(), ref.next_queries())
    assert [c.node_id for c in new.result()] == [c.node_id for c in ref.result()]
    assert new.hops == ref.hops
    assert new.done == ref.done
