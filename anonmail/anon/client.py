"""Anonymous store and append: the storage client's `Network` and `Lookup` through Z and W
(seed 002 §4.2; DESIGN.md §7).

`AnonymousStore` is what `store.client` and the mail agent are given instead of the node's own
network and DHT, so send, check and retrieve run unchanged, anonymously:

* `lookup(key, k)`: Z and W (two channels with different ends, anon/gobetweens.py) each look
  the key up; every certificate is verified; the answer is the k closest of the union. When
  the lists' first r differ the disagreement is recorded against both ends. Taking the union's
  closest (rather than refusing on any difference, as seed 002 §4.2 words it) is a departure
  for churn: two honest lookups may differ at the edge, and a hostile end can only *add*
  nodes, which then must be closer than everything the other end found (docs/anonymity.md);
* `request_many(targets, msg)`: one `Forward` through Z: one copy of the request crosses the
  channel, Z sends it to each target and returns each target's answer. For STORE and APPEND
  every receipt is checked against the target's certificate (the one the lookup cross-checked);
  a forged or mismatched receipt is Z's doing: recorded against Z, and the target is asked
  again through a fresh Z. A target with no answer, or a refusal, is asked once more through
  another Z before the result is believed (a hostile Z cannot fake a refusal alone);
* `request(to, msg)`: `request_many([to], msg)`.

Storage and inbox nodes see Z, never A. Lookups are cached for `cache_ttl` seconds (a send
looks the same key up for its `need` and for the store: one cross-checked lookup serves both).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from anonmail import wire
from anonmail.anon import messages as am
from anonmail.anon.circuit import ChannelError, Circuit, CircuitClosed
from anonmail.anon.gobetweens import AnonUnavailable, GoBetweens
from anonmail.dht.lookup import LookupResult
from anonmail.errors import LocalError, Refused, RemoteProtocolError, TransportError
from anonmail.net import rpc
from anonmail.net.base import Handler
from anonmail.net.fanout import Outcome
from anonmail.records import ids
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.records.receipts import StoreOp
from anonmail.store import messages as sm
from anonmail.store.client import check_receipt, receipt_terms

MAX_ROUNDS = 4  # Forward rounds (each through a different Z) for one request
BELIEVE_AFTER = 2  # a missing answer or a refusal is believed once this many Zs report it
CACHE_SIZE = 256
# An answer whose r-th node is farther than this many times the typical r-th distance is
# refused. For r = 8 honest answers exceed 2.5x the median about once in 3,000 (the distance
# is ~Gamma(8)); a coalition of a fraction f answering alone is ~1/f times sparser (5x at 20%).
DENSITY_FACTOR = 2.5


@dataclass
class AnonStats:
    forwards: int = 0
    lookups: int = 0
    lookup_disagreements: int = 0
    bad_receipts: int = 0  # forged or mismatched receipts Z returned
    z_failures: int = 0  # channels to Z that failed mid-request
    retried: int = 0  # targets asked again through a fresh Z
    sparse: int = 0  # lookups refused by the density test (both ends likely hostile)


class AnonymousStore:
    """`Network` + `Lookup` for store.client, through go-betweens (module docstring)."""

    def __init__(self, gobetweens: GoBetweens, *, cache_ttl: float = 60.0) -> None:
        self.gb = gobetweens
        self.params = gobetweens.params
        self.clock = gobetweens.clock
        self.cache_ttl = cache_ttl
        self.stats = AnonStats()
        self._z: Circuit | None = None
        self._w: Circuit | None = None
        self._cache: OrderedDict[tuple[bytes, int], tuple[float, LookupResult]] = OrderedDict()
        self._lock = trio.Lock()

    # -- Network ----------------------------------------------------------------------------------

    @property
    def local_cert(self) -> NodeCert:
        return self.gb.net.local_cert

    async def introduce(self, endpoint: Endpoint, *, timeout: float | None = None) -> NodeCert:
        raise LocalError("an anonymous store does not dial endpoints")

    async def serve(self, handler: Handler, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise LocalError("an anonymous store serves nothing")

    async def request(self, to: NodeCert, msg: Any, *, timeout: float | None = None) -> Any:
        [o] = await self.request_many([to], msg)
        if o.error is not None:
            raise o.error
        return o.value

    async def aclose(self) -> None:
        for c in (self._z, self._w):
            if c is not None:
                await c.close()
        self._z = self._w = None

    async def retire(self) -> None:
        """The end of one user operation (a message sent, a check): close Z and W, so the next
        operation goes through fresh ones. Without it two messages sent within IDLE_REUSE of
        each other came from one Z, and an inbox replica grouped them by that peer (measured:
        `anonmail sim linkage`, precision 0.83 against chance 0.25 for such pairs)."""
        await self.aclose()

    # -- channels ---------------------------------------------------------------------------------

    async def _end(self, which: str) -> Circuit:
        async with self._lock:
            cur = self._z if which == "z" else self._w
            if cur is not None and not cur.fresh():
                await cur.close()  # retire it before a hop's idle timer does
            if cur is None or cur.broken:
                other = self._w if which == "z" else self._z
                cur = await self.gb.channel(exclude=() if other is None else
                                            (other.end.node_id,))
                if which == "z":
                    self._z = cur
                else:
                    self._w = cur
            return cur

    def _fail(self, circuit: Circuit, e: ChannelError) -> None:
        if isinstance(e, CircuitClosed):
            return  # retired by another request of ours: nobody's fault
        circuit.broken = True
        self.stats.z_failures += 1
        self.gb.blame.failures[circuit.end.node_id if e.at is None else e.at] += 1

    def _blame_end(self, circuit: Circuit) -> None:
        circuit.broken = True  # a fresh Z next time
        self.gb.blame.failures[circuit.end.node_id] += 1

    # -- Lookup -----------------------------------------------------------------------------------

    async def lookup(self, key: bytes, k: int | None = None) -> LookupResult:
        key = ids.lookup_home(key)  # one lookup for an address's siblings (records/ids.py)
        n = min(am.MAX_FOUND, k or self.params.k)
        ask_for = n  # one more once our own node was among them: `_merge` drops it
        now = self.clock.now()
        hit = self._cache.get((key, n))
        if hit is not None and now - hit[0] <= self.cache_ttl:
            return hit[1]
        for _ in range(MAX_ROUNDS):
            z, w = await self._end("z"), await self._end("w")
            z = await self._end("z")  # still fresh after W was built (else a new one)
            found: dict[str, list[NodeCert]] = {}

            async def ask(which: str, circuit: Circuit, found: dict[str, list[NodeCert]] = found,
                          count: int = ask_for) -> None:
                try:
                    answer = await circuit.call(am.FindNodes(key, count))
                except ChannelError as e:
                    self._fail(circuit, e)
                    return
                if not isinstance(answer, am.Found):
                    self._blame_end(circuit)
                    return
                found[which] = self._valid(answer.certs, circuit)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "z", z)
                nursery.start_soon(ask, "w", w)
            if len(found) < 2:
                continue
            result = self._merge(key, n, found["z"], found["w"], z, w)
            if len(result.nodes) < n and ask_for == n and any(
                    c.node_id == self.local_cert.node_id for c in (*found["z"], *found["w"])):
                ask_for = min(am.MAX_FOUND, n + 1)  # we were among them: ask for one more
                continue
            if self._too_sparse(key, result):
                # Both ends answered with nodes far sparser than the network is: both are
                # likely hostile and returned only their coalition (Castro et al. 2002's
                # density test). Ask two fresh ends.
                self.stats.sparse += 1
                self.gb.blame.lies.update((z.end.node_id, w.end.node_id))
                z.broken = w.broken = True
                continue
            self._cache[(key, n)] = (now, result)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return result
        raise AnonUnavailable("anonymous lookups keep failing: try again later, or use --direct")

    def _too_sparse(self, key: bytes, result: LookupResult) -> bool:
        r = self.params.replication
        typical = self.gb.density()
        if typical is None or len(result.nodes) < r:
            return False
        return ids.distance(result.nodes[r - 1].node_id, key) > DENSITY_FACTOR * typical

    def _valid(self, certs: Sequence[NodeCert], circuit: Circuit) -> list[NodeCert]:
        good = []
        for cert in certs:
            try:
                self.gb.cert_cache.verify(cert, self.params, self.clock.now())
            except RemoteProtocolError:
                self._blame_end(circuit)  # an end passing on invalid certificates
                continue
            good.append(cert)
        return good

    def _merge(self, key: bytes, n: int, a: list[NodeCert], b: list[NodeCert], z: Circuit,
               w: Circuit) -> LookupResult:
        self.stats.lookups += 1
        r = self.params.replication
        union = {c.node_id: c for c in (*a, *b)}
        union.pop(self.local_cert.node_id, None)
        nodes = sorted(union.values(), key=lambda c: ids.distance(c.node_id, key))[:n]
        if {c.node_id for c in a[:r]} != {c.node_id for c in b[:r]}:
            self.stats.lookup_disagreements += 1
            self.gb.blame.disagreements.update((z.end.node_id, w.end.node_id))
        return LookupResult(key, tuple(nodes), hops=0, queried=2, failures=0, faults=0,
                            refused=0, paths=2)

    # -- Forward ----------------------------------------------------------------------------------

    async def request_many(self, targets: Sequence[NodeCert],
                           msg: Any) -> list[Outcome[NodeCert, Any]]:
        """`msg` to every target through Z; per target its answer or error (module
        docstring)."""
        by_id = {t.node_id: t for t in targets}
        settled: dict[bytes, Outcome[NodeCert, Any]] = {}
        doubts: dict[bytes, int] = {}
        last: dict[bytes, Outcome[NodeCert, Any]] = {}
        request = wire.encode(msg)
        timed = isinstance(msg, sm.Store | sm.Append)
        for round_ in range(MAX_ROUNDS):
            pending = [t for nid, t in by_id.items() if nid not in settled]
            if not pending:
                break
            if round_:
                self.stats.retried += len(pending)
            try:
                circuit = await self._end("z")
            except AnonUnavailable:
                break  # the pending targets are reported unreachable
            op = am.Forward(tuple(pending), request, self.gb.delay_ms() if timed else 0,
                            int(self.gb.options.batch_interval * 1000) if timed else 0)
            self.stats.forwards += 1
            try:
                answer = await circuit.call(op)
            except ChannelError as e:
                self._fail(circuit, e)
                continue
            if not isinstance(answer, am.Forwarded):
                self._blame_end(circuit)
                continue
            replies = {r.node_id: r.reply for r in answer.replies}
            for t in pending:
                verdict = self._judge(t, msg, replies.get(t.node_id, b""))
                if verdict is None:  # forged or mismatched: Z lied
                    self.stats.bad_receipts += 1
                    self._blame_end(circuit)
                    continue
                if verdict.error is None:
                    settled[t.node_id] = verdict
                    continue
                last[t.node_id] = verdict
                doubts[t.node_id] = doubts.get(t.node_id, 0) + 1
                if doubts[t.node_id] >= BELIEVE_AFTER:
                    settled[t.node_id] = verdict
            if len(settled) < len(by_id):
                circuit.broken = True  # ask the rest through a different Z
        out = []
        for nid, t in by_id.items():
            o = settled.get(nid) or last.get(nid) or Outcome(
                t, None, TransportError("no anonymous route reached this node"))
            out.append(o)
        return out

    def _judge(self, target: NodeCert, msg: Any, reply: bytes) -> Outcome[NodeCert, Any] | None:
        """A target's answer as Z returned it; None when it is evidence against Z."""
        if not reply:
            return Outcome(target, None, TransportError("no answer through the anonymizer"))
        try:
            answer = rpc.decode_response(reply, am.MAX_FORWARD_REQUEST)
        except RemoteProtocolError:
            return None
        if isinstance(answer, rpc.ErrorReply):
            return Outcome(target, None, Refused(answer.code, answer.detail))
        if isinstance(msg, sm.Store | sm.Append):
            op, key, digest, kind = (
                (StoreOp.STORE, msg.key, sm.blob_digest(msg.blob), sm.Stored)
                if isinstance(msg, sm.Store) else
                (StoreOp.APPEND, msg.inbox, sm.entry_id(msg.entry), sm.Appended))
            if not isinstance(answer, kind):
                return None
            terms, ttl = receipt_terms(msg)
            try:
                check_receipt(answer.receipt, target, op, key, digest, self.clock.now(),
                              self.params.clock_skew, terms=terms, ttl=ttl)
            except RemoteProtocolError:
                return None  # Z altered the request or the receipt (T-ANON-RECEIPTS)
        return Outcome(target, answer)
