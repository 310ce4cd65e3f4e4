"""The routing table (anonmail/dht/routing.py): unit tests and hypothesis property tests."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonmail import crypto
from anonmail.dht.routing import AddResult, Contact, ContactCache, RoutingTable
from anonmail.errors import RemoteProtocolError
from anonmail.records import ids
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import SeededRng
from anonmail.sim.scenario import make_key, sim_params

NOW = 1_800_000_000.0
PARAMS = sim_params(k=4, subnet_limit=2, failure_limit=3, puzzle_bits=0)
SUBNETS = ("198.18.1", "198.18.2", "198.18.3", "198.19.7", "198.19.8")


def _pool(n: int, seed: int) -> list[Contact]:
    """n verified contacts spread over a few /24s, some on loopback (exempt), a few clients."""
    rng = SeededRng(seed)
    out = []
    for i in range(n):
        key = make_key(rng, PARAMS)
        if i % 10 == 9:
            eps: tuple[Endpoint, ...] = ()  # a client
        elif i % 10 == 8:
            eps = (Endpoint("127.0.0.1", 7000 + i),)
        else:
            eps = (Endpoint(f"{SUBNETS[i % len(SUBNETS)]}.{1 + i}", 7000),)
        out.append(Contact.of(NodeCert.issue(key, eps, NOW, PARAMS)))
    return out


POOL = _pool(120, seed=7)
SERVERS = [c for c in POOL if c.cert.is_server]


def _table(own: bytes, params: NetworkParams = PARAMS) -> RoutingTable:
    return RoutingTable(own, params, NOW)


def _in_bucket(table: RoutingTable, index: int, rng: SeededRng) -> Contact:
    """A fresh contact whose id lands in `index` (by trying keys: cheap at puzzle_bits=0)."""
    while True:
        key = crypto.SigningKey.generate(rng)
        if table.bucket_index(ids.node_id(key.public)) == index:
            n = rng.randbelow(1 << 16)
            ep = Endpoint(f"198.{18 + (n >> 15)}.{(n >> 7) & 255}.{1 + (n & 127)}", 7000)
            return Contact.of(NodeCert.issue(key, (ep,), NOW, PARAMS))


def brute_closest(table: RoutingTable, key: bytes, n: int,
                  exclude: frozenset[bytes] = frozenset()) -> list[bytes]:
    t = int.from_bytes(key, "big")
    everyone = [c for c in table if c.node_id not in exclude]
    return [c.node_id for c in sorted(everyone, key=lambda c: c.int_id ^ t)[:n]]


def check_invariants(table: RoutingTable) -> None:
    seen: set[bytes] = set()
    for i in range(ids.ID_BITS):
        bucket = table.bucket(i)
        assert len(bucket) <= table.k
        subnets: Counter[str] = Counter()
        for c in bucket:
            assert table.bucket_index(c.node_id) == i
            assert c.node_id not in seen, "duplicate id"
            assert c.node_id != table.own_id, "own id stored"
            assert c.cert.is_server, "client stored"
            seen.add(c.node_id)
            subnets.update(c.subnets)
        assert all(n <= table.subnet_limit for n in subnets.values()), subnets
        reps = table.replacements(i)
        assert len(reps) <= table.replacement_size
        assert not {c.node_id for c in reps} & {c.node_id for c in bucket}
    assert len(table) == len(seen)


# ---------------------------------------------------------------------------------------------
# Unit tests


def test_refuses_self_and_clients() -> None:
    own = SERVERS[0]
    table = _table(own.node_id)
    assert table.add(own, NOW) is AddResult.REFUSED
    client = next(c for c in POOL if not c.cert.is_server)
    assert table.add(client, NOW) is AddResult.REFUSED
    assert len(table) == 0


def test_lru_order_and_replacement_cache() -> None:
    rng = SeededRng(1)
    table = _table(SERVERS[0].node_id)
    first = [_in_bucket(table, 0, rng) for _ in range(4)]
    for c in first:
        assert table.add(c, NOW) is AddResult.ADDED
    assert [c.node_id for c in table.bucket(0)] == [c.node_id for c in first]
    # Hearing from the oldest moves it to the tail (Kademlia §2.2).
    assert table.add(first[0], NOW) is AddResult.UPDATED
    assert table.bucket(0)[-1].node_id == first[0].node_id
    # A full bucket keeps its old contacts; the newcomer waits in the replacement cache.
    newcomer = _in_bucket(table, 0, rng)
    assert table.add(newcomer, NOW) is AddResult.CACHED
    assert newcomer.node_id not in table
    assert table.replacements(0)[-1].node_id == newcomer.node_id


def test_drop_after_failure_limit_and_promote() -> None:
    rng = SeededRng(2)
    table = _table(SERVERS[0].node_id)
    members = [_in_bucket(table, 1, rng) for _ in range(4)]
    for c in members:
        table.add(c, NOW)
    spare = _in_bucket(table, 1, rng)
    assert table.add(spare, NOW) is AddResult.CACHED
    victim = members[1].node_id
    assert not table.record_failure(victim)
    assert not table.record_failure(victim)
    assert table.failures(victim) == 2
    table.add(members[1], NOW)  # it answered after all: the count starts again
    assert table.failures(victim) == 0
    assert not table.record_failure(victim)
    assert not table.record_failure(victim)
    assert table.record_failure(victim)  # third consecutive failure: dropped
    assert victim not in table
    assert spare.node_id in table  # promoted from the replacement cache
    assert len(table.bucket(1)) == 4


def test_newer_seq_replaces_older_is_ignored() -> None:
    rng = SeededRng(3)
    key = make_key(rng, PARAMS)
    old = Contact.of(NodeCert.issue(key, (Endpoint("198.18.9.9", 7000),), NOW, PARAMS, seq=5))
    new = Contact.of(NodeCert.issue(key, (Endpoint("198.18.10.9", 7001),), NOW, PARAMS, seq=6))
    table = _table(SERVERS[0].node_id)
    assert table.add(old, NOW) is AddResult.ADDED
    assert table.add(new, NOW) is AddResult.UPDATED
    stored = table.get(new.node_id)
    assert stored is not None and stored.cert.seq == 6
    assert table.add(old, NOW) is AddResult.REFUSED  # a stale copy does not roll it back
    stored = table.get(new.node_id)
    assert stored is not None and stored.cert.seq == 6
    assert len(table) == 1


@pytest.mark.threat("T-ECLIPSE")
def test_subnet_limit_per_bucket() -> None:
    """At most `subnet_limit` contacts of one /24 per bucket, however many ids the attacker has;
    replacement caches are limited the same way. Loopback is exempt (one-machine testnets)."""
    rng = SeededRng(4)
    table = _table(SERVERS[0].node_id)
    same_subnet: list[Contact] = []
    while len(same_subnet) < 6:
        key = make_key(rng, PARAMS)
        nid = ids.node_id(key.public)
        if table.bucket_index(nid) == 0:
            ep = Endpoint(f"203.0.113.{10 + len(same_subnet)}", 7000)
            same_subnet.append(Contact.of(NodeCert.issue(key, (ep,), NOW, PARAMS)))
    results = [table.add(c, NOW) for c in same_subnet]
    assert results[:2] == [AddResult.ADDED, AddResult.ADDED]
    assert set(results[2:]) == {AddResult.REFUSED}
    assert sum("203.0.113.0/24" in c.subnets for c in table.bucket(0)) == 2
    # Loopback endpoints do not count against any subnet.
    loop: list[Contact] = []
    while len(loop) < 4:
        key = make_key(rng, PARAMS)
        if table.bucket_index(ids.node_id(key.public)) == 1:
            ep = Endpoint("127.0.0.1", 9000 + len(loop))
            loop.append(Contact.of(NodeCert.issue(key, (ep,), NOW, PARAMS)))
    assert [table.add(c, NOW) for c in loop] == [AddResult.ADDED] * 4
    check_invariants(table)


def test_ipv6_subnet_is_a_48() -> None:
    rng = SeededRng(5)
    c = Contact.of(NodeCert.issue(make_key(rng, PARAMS), (Endpoint("2001:db8:1:2::7", 7000),),
                                  NOW, PARAMS))
    assert c.subnets == frozenset({"2001:db8:1::/48"})


def test_closest_matches_brute_force_on_a_full_table() -> None:
    own = SERVERS[3]
    table = _table(own.node_id, sim_params(k=20, puzzle_bits=0, subnet_limit=64))
    for c in SERVERS:
        table.add(c, NOW)
    check_invariants(table)
    rng = SeededRng(6)
    keys = [rng.bytes(32) for _ in range(50)] + [own.node_id] + [c.node_id for c in SERVERS[:5]]
    for key in keys:
        for n in (1, 5, 20, 200):
            assert [c.node_id for c in table.closest(key, n)] == brute_closest(table, key, n)
    excluded = frozenset(c.node_id for c in SERVERS[:10])
    assert ([c.node_id for c in table.closest(keys[0], 8, exclude=excluded)]
            == brute_closest(table, keys[0], 8, excluded))


def test_random_id_in_bucket_and_refresh_bookkeeping() -> None:
    rng = SeededRng(8)
    table = _table(SERVERS[0].node_id)
    for i in (0, 1, 7, 200, 255):
        assert table.bucket_index(table.random_id_in_bucket(i, rng.bytes(32))) == i
    assert table.stale_buckets(NOW + 10_000, 3600) == []  # empty table: nothing to refresh
    assert table.next_refresh(3600) is None
    for _ in range(3):
        table.add(_in_bucket(table, 2, rng), NOW)
    assert table.deepest() == 2
    assert table.stale_buckets(NOW + 100, 3600) == []
    assert table.stale_buckets(NOW + 3600, 3600) == [0, 1, 2]
    table.touch(table.random_id_in_bucket(1, rng.bytes(32)), NOW + 3000)
    assert table.stale_buckets(NOW + 3600, 3600) == [0, 2]
    assert table.next_refresh(3600) == NOW + 3600


def test_contacts_are_certs_for_persistence() -> None:
    table = _table(SERVERS[0].node_id)
    for c in SERVERS[1:8]:
        table.add(c, NOW)
    assert {c.node_id for c in table.contacts()} == {c.node_id for c in table}
    assert all(isinstance(c, NodeCert) for c in table.contacts())


@pytest.mark.threat("T-ECLIPSE")
def test_contact_cache_accepts_only_verified_certs() -> None:
    """Contacts come only from NodeCerts that verify: a forged signature or an expired cert is
    refused, also when an equal cert was verified before (the memo re-checks the time)."""
    cache = ContactCache(PARAMS, CertCache())
    good = SERVERS[1].cert
    assert cache.contact(good, NOW).node_id == good.node_id
    forged = good.with_signature(bytes(64))
    with pytest.raises(RemoteProtocolError):
        cache.contact(forged, NOW)
    with pytest.raises(RemoteProtocolError):
        cache.contact(good, NOW + PARAMS.cert_lifetime + PARAMS.clock_skew + 1)
    assert cache.contact(good, NOW) is cache.contact(good, NOW)


# ---------------------------------------------------------------------------------------------
# Property tests

OPS = st.lists(st.tuples(st.sampled_from(["add", "add", "add", "fail", "remove"]),
                         st.integers(0, len(POOL) - 1)), max_size=150)


@settings(max_examples=100)
@given(ops=OPS, own=st.integers(0, len(POOL) - 1), k=st.integers(1, 5),
       subnet_limit=st.integers(1, 3), failure_limit=st.integers(1, 3),
       key_seed=st.binary(min_size=32, max_size=32))
def test_table_invariants_hold_under_any_operations(
        ops: list[tuple[str, int]], own: int, k: int, subnet_limit: int, failure_limit: int,
        key_seed: bytes) -> None:
    params = sim_params(k=k, subnet_limit=subnet_limit, failure_limit=failure_limit,
                        puzzle_bits=0)
    table = _table(POOL[own].node_id, params)
    for op, i in ops:
        c = POOL[i]
        if op == "add":
            table.add(c, NOW)
        elif op == "fail":
            table.record_failure(c.node_id)
        else:
            table.remove(c.node_id)
    check_invariants(table)
    for key in (key_seed, POOL[own].node_id, POOL[ops[0][1]].node_id if ops else key_seed):
        for n in (1, 3, 10, 64):
            assert [c.node_id for c in table.closest(key, n)] == brute_closest(table, key, n)
        ex = frozenset(c.node_id for c in list(table)[::2])
        assert [c.node_id for c in table.closest(key, 5, exclude=ex)] == brute_closest(
            table, key, 5, ex)
