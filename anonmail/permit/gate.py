"""The permit gate: the check a storage node runs on every APPEND (DESIGN.md §6), and the rule by
which it accepts an owner's InboxPolicy as a stored object.

A node holds an inbox's policy as a POLICY object under the inbox key and under the request
inbox key (the same r nodes that hold the entries: placement is by key). `admit` then judges an
append by its proof alone:

* request inbox (key = H("requests", address)): a `Stamp` for this inbox, this entry and today
  (± 1 day) with at least max(policy, network minimum) bits. Tight quotas: `REQUEST_ENTRIES`
  entries, `REQUEST_BYTES` bytes, `REQUEST_TTL` at most;
* inbox (key = H("inbox", address)): a `PermitProof` whose token the owner signed for this
  inbox, unexpired, not revoked, and whose key signed (inbox, entry id); the token id is the
  one-time right the store spends (refused for any other entry, remembered until the token
  lapses). An OPEN policy also takes a stamp;
* no policy held: `NO_POLICY` (the sender pushes the signed policy, which it fetched from
  another replica, and retries). Without a policy there is no owner key to check tokens by,
  and a node that admitted anything would be the spammer's way in.

Every refusal is a `Denied` with its own code, never a fault: appends come through go-betweens
(Z did not forge the token it forwards) and by replication. Costs: a refused append costs at most
one hash (stamp) or two signature checks (token and use); a parsed policy is cached by its digest.

Invariants: the gate is synchronous and reads only the store database (and `now`); it never
learns or keeps anything about senders: what it sees is a token (a random key) or a stamp.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from anonmail import crypto, wire
from anonmail.clock import Clock
from anonmail.errors import ErrorCode, RemoteProtocolError
from anonmail.net.base import Network
from anonmail.permit.records import (
    DAY,
    EPOCH,
    MAX_POLICY,
    STAMP_DAYS,
    InboxPolicy,
    PermitProof,
    PolicyMode,
    Stamp,
    check_use,
    stamp_day,
    stamp_work,
)
from anonmail.records import ids
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.store.client import Lookup
from anonmail.store.db import StoreDb
from anonmail.store.errors import Denied, Invalid
from anonmail.store.handlers import Admission, RecordFacts, RecordRule
from anonmail.store.messages import MAX_PROOF_DATA, AppendProof, AppendProofKind, ObjectKind
from anonmail.store.messages import entry_id as entry_id_of
from anonmail.store.service import StoreService

REQUEST_ENTRIES = 64  # pending RTS an owner's request inbox holds on one replica
REQUEST_BYTES = 256 << 10
REQUEST_TTL = 14 * 86400
CACHE = 256  # parsed policies kept


@dataclass(frozen=True, slots=True)
class _Held:
    policy: InboxPolicy
    revoked: frozenset[bytes]
    requests: bytes  # the policy's request inbox key


class PermitGate:
    def __init__(self, db: StoreDb, params: NetworkParams,
                 trusted_cas: frozenset[bytes] = frozenset()) -> None:
        self.db = db
        self.params = params
        self.trusted_cas = trusted_cas
        self._cache: OrderedDict[bytes, _Held] = OrderedDict()

    # -- the POLICY object rule (store ObjectKind.POLICY) -----------------------------------------

    def check_policy(self, key: bytes, blob: bytes, now: float) -> RecordFacts:
        """Accept `blob` as the policy stored under `key` (store handlers' RecordRule)."""
        try:
            policy = wire.decode(blob, InboxPolicy, max_size=MAX_POLICY)
            policy.cert.verify(self.trusted_cas, now, self.params.clock_skew)
            policy.verify()
        except RemoteProtocolError as e:
            raise Invalid(f"inbox policy refused: {e}") from e
        if not policy.covers(key):
            raise Invalid("inbox policy stored under another key than its inbox's")
        return RecordFacts(policy.version, policy.cert.expires)

    def rules(self) -> dict[ObjectKind, RecordRule]:
        return {ObjectKind.POLICY: self.check_policy}

    # -- APPEND (store handlers' AppendPolicy) ----------------------------------------------------

    def _held(self, inbox: bytes, now: float) -> _Held:
        row = self.db.get_object(inbox)
        if (row is None or row.blob is None or row.kind != ObjectKind.POLICY
                or row.expires <= now):
            raise Denied("no inbox policy here", ErrorCode.NO_POLICY)
        held = self._cache.get(row.digest)
        if held is None:
            # Checked when it was stored; decoding again cannot fail short of disk damage.
            try:
                policy = wire.decode(row.blob, InboxPolicy, max_size=MAX_POLICY)
            except RemoteProtocolError:
                raise Denied("no inbox policy here", ErrorCode.NO_POLICY) from None
            held = _Held(policy, frozenset(policy.revoked), ids.requests_key(policy.cert.address))
            self._cache[row.digest] = held
            while len(self._cache) > CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(row.digest)
        return held

    def admit(self, inbox: bytes, entry: bytes, proof: AppendProof | None, now: float,
              replicated: bool = False) -> Admission:
        """Judge one APPEND (`replicated`: an entry another replica took earlier, whose stamp
        was for its own day: any day within REQUEST_TTL counts)."""
        held = self._held(inbox, now)
        eid = entry_id_of(entry)
        days = REQUEST_TTL // DAY + STAMP_DAYS if replicated else STAMP_DAYS
        if inbox == held.requests:
            self._check_stamp(held, inbox, eid, proof, now, days)
            return Admission(entries=REQUEST_ENTRIES, bytes=REQUEST_BYTES, max_ttl=REQUEST_TTL)
        if proof is not None and proof.kind is AppendProofKind.PERMIT:
            return self._check_token(held, inbox, eid, proof.data, now)
        if held.policy.mode is PolicyMode.OPEN:
            self._check_stamp(held, inbox, eid, proof, now, days)
            return Admission()
        raise Denied("this inbox takes mail only with a permit", ErrorCode.PERMIT_REQUIRED)

    def _check_stamp(self, held: _Held, inbox: bytes, eid: bytes, proof: AppendProof | None,
                     now: float, days: int) -> None:
        if proof is None or proof.kind is not AppendProofKind.STAMP:
            raise Denied("a proof-of-work stamp is needed", ErrorCode.STAMP_REQUIRED)
        try:
            stamp = wire.decode(proof.data, Stamp, max_size=MAX_PROOF_DATA)
        except RemoteProtocolError:
            raise Denied("malformed stamp", ErrorCode.STAMP_REQUIRED) from None
        age = stamp_day(now) - stamp.day
        if age > days or age < -STAMP_DAYS:
            raise Denied("stamp is not for today", ErrorCode.STAMP_REQUIRED)
        need = max(held.policy.stamp_bits, self.params.stamp_bits)
        if stamp_work(stamp, inbox, eid) < need:
            raise Denied("stamp shows too little work", ErrorCode.STAMP_REQUIRED)

    def _check_token(self, held: _Held, inbox: bytes, eid: bytes, data: bytes,
                     now: float) -> Admission:
        try:
            proof = wire.decode(data, PermitProof, max_size=MAX_PROOF_DATA)
        except RemoteProtocolError:
            raise Denied("malformed permit", ErrorCode.PERMIT_INVALID) from None
        token = proof.token
        if token.inbox != inbox:
            raise Denied("permit is for another inbox", ErrorCode.PERMIT_INVALID)
        if token.expires <= now or token.expires > now + 2 * EPOCH + self.params.clock_skew:
            raise Denied("permit expired or not yet valid", ErrorCode.PERMIT_INVALID)
        tid = token.id
        if tid in held.revoked:
            raise Denied("permit revoked by the inbox owner", ErrorCode.PERMIT_REVOKED)
        try:
            token.verify(held.policy.cert.sign_key)
            check_use(proof, inbox, eid)
        except RemoteProtocolError:
            raise Denied("permit not signed by the inbox owner", ErrorCode.PERMIT_INVALID) \
                from None
        # The entry lives no longer than its token: else replication, which re-judges the
        # token, would refuse it after the token lapsed.
        return Admission(spend=tid, spend_until=token.expires,
                         max_ttl=max(1, token.expires - int(now)))


def gated_store(net: Network, dht: Lookup, key: crypto.SigningKey, params: NetworkParams,
                clock: Clock, rng: Rng, db: StoreDb, *,
                trusted_cas: frozenset[bytes] = frozenset(), **options: Any) -> StoreService:
    """A StoreService behind the permit gate: what every node runs (node/process.py, the
    simulated grids). `options` are StoreService's other keyword arguments."""
    gate = PermitGate(db, params, trusted_cas)
    return StoreService(net, dht, key, params, clock, rng, db, trusted_cas=trusted_cas,
                        append_policy=gate.admit, record_rules=gate.rules(), **options)
