"""The storage primitives as synchronous handlers: (context, request, now) -> response.

`StoreContext` bundles what a handler needs: the database, the node key (to sign receipts), the
network parameters, the trusted CA keys, the limits and the append policy. Handlers do no I/O
but SQLite and no waiting; they are the whole semantics of the store (DESIGN.md §4, seed 002
§2.2), testable with a fixed `now`. `dispatch` routes a request to its handler.

Semantics and invariants:
* a receipt is signed only after the transaction that made the data durable has committed
  (`StoreDb.transaction`); a failed commit raises and signs nothing;
* delete rights are hash preimages (DESIGN.md §4, a deliberate deviation from seed 002's
  certificate sets, which would tell storage nodes who the recipients are): an object keeps the
  set of H("delete", secret) it was stored with; DELETE with a secret removes its hash; the
  object goes when the set is empty. One body serves all recipients;
* STORE of an existing key with the same blob digest merges: delete hashes are added, the expiry
  becomes the later of the two. Merging can only ever add hashes, never remove one, so an
  attacker who adds its own hash can at worst keep the object alive until its TTL, which anyone
  holding the blob could do anyway by storing it again; it cannot delete someone else's object.
  An object stored without delete hashes is undeletable (lives to its TTL) and merges add no
  hashes to it (else an attacker could add one and then delete the object);
* deletion is sticky: a used hash is remembered as removed (merges never re-add it), and a
  deleted object leaves a tombstone until its expiry, so a stale replica's republish cannot
  resurrect it; a DELETE repeated with a used secret answers Deleted again (idempotent);
* a different blob under an existing key is refused, except for the verified, versioned kinds
  (CERT, POLICY: `messages.VERSIONED`), where a later version (a certificate's `issued`, a
  policy's `version`) replaces the held one (seed 002 §2.4: certificates are long-lived and
  renewed; DESIGN.md §6: a block is a new policy version). They carry no delete rights (nobody
  but their owner, by a newer version, may remove them) and evict an opaque object squatting
  their key;
* FRAGMENT keys must equal `ids.fragment_key(blob)`, CERT blobs must be a valid AddressCert
  stored under `ids.cert_key(address)` and POLICY blobs pass the permit layer's rule
  (`record_rules`): the node checks them, so it never serves one that fails the reader's own
  check;
* inbox entries are named by `entry_id(entry)`: duplicate APPENDs and replicas collapse. READ
  and ACK need an owner proof (store/proofs.py). ACK deletes and remembers the ids until the
  entries' expiry, so replication cannot hand them back;
* every TTL is clamped to `limits.max_ttl`; sizes, per-inbox counts and bytes, the node's total
  bytes and each requesting party's share are bounded (store/budget.py: every row is charged to
  the `Party` whose request wrote it, only growth is charged); exceeding a bound is
  `QuotaExceeded` (not a fault: store/errors.py).

APPEND authorisation is pluggable: `AppendPolicy(inbox, entry, proof, now)` raises `Denied` to
refuse (an honest refusal: never a fault, because a policy judges the proof alone, not the peer:
entries arrive through relays, DESIGN.md §7, and by replication, `Replicate`, which re-runs the
policy on the entry's original proof) and otherwise returns an `Admission`: the one-time right the
entry spends (a permit token; the store refuses it for any other entry and remembers it, in the
entry's transaction, until it lapses) and tighter quotas (request inboxes). The default,
`accept_within_quotas`, admits anything the quotas admit. The RTS/CTS permit gate of DESIGN.md §6
(permit/gate.py) plugs in here, with the rule that checks POLICY objects (`record_rules`): the
store holds policies like certificates, versioned, but cannot read them itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anonmail import wire
from anonmail.errors import Refusal, RemoteProtocolError
from anonmail.records import ids
from anonmail.records.certs import AddressCert
from anonmail.records.receipts import Receipt, StoreOp, store_terms
from anonmail.store import proofs
from anonmail.store.budget import LOCAL, Party, admit, admit_ack, as_party, inbox_room, spend_cost
from anonmail.store.context import (
    Admission,
    AppendPolicy,
    RecordFacts,
    RecordRule,
    StoreContext,
    StoreLimits,
    accept_within_quotas,
)
from anonmail.store.db import ObjectRow, StoreDb, entry_size, object_size
from anonmail.store.errors import Denied, ErrorCode, Invalid, QuotaExceeded
from anonmail.store.messages import (
    FORWARDABLE,
    MAX_BLOB,
    MAX_PAGE,
    VERSIONED,
    Ack,
    Acked,
    Append,
    Appended,
    Delete,
    Deleted,
    Entries,
    EntryIds,
    Fetch,
    Fetched,
    InboxEntry,
    ItemKind,
    Needs,
    NotFound,
    ObjectKind,
    OwnerOp,
    Probe,
    Read,
    Replicate,
    Replicated,
    Store,
    Stored,
    Wanted,
    args_digest_ack,
    args_digest_read,
    blob_digest,
    delete_hash,
    entry_id,
)
from anonmail.store.schema import NONCE_OVERHEAD, SPENT_OVERHEAD

__all__ = ["Admission", "AppendPolicy", "Party", "RecordFacts", "RecordRule", "StoreContext",
           "StoreLimits", "accept_within_quotas", "dispatch"]

MAX_PROBE_TOTAL = 4096  # entry ids across one Probe's items (bounds the handler's work)


def _expires(ctx: StoreContext, ttl: int, now: float, cap: int | None = None) -> int:
    return int(now) + min(ttl, ctx.limits.max_ttl, ctx.limits.max_ttl if cap is None else cap)


# -- STORE / FETCH / DELETE -----------------------------------------------------------------------


def _check_cert(ctx: StoreContext, req: Store, now: float) -> RecordFacts:
    try:
        cert = wire.decode(req.blob, AddressCert, max_size=MAX_BLOB)
    except RemoteProtocolError as e:
        raise Invalid("CERT blob is not an address certificate") from e
    if cert.key != req.key:
        raise Invalid("certificate stored under another key than its address's")
    try:
        cert.verify(ctx.trusted_cas, now, ctx.params.clock_skew)
    except RemoteProtocolError as e:
        raise Invalid(f"certificate refused: {e}") from e
    return RecordFacts(cert.issued, cert.expires)


def _check_record(ctx: StoreContext, req: Store, now: float) -> RecordFacts:
    """Verify a CERT (here) or another versioned kind (by its plugged-in rule)."""
    if req.kind is ObjectKind.CERT:
        return _check_cert(ctx, req, now)
    rule = ctx.record_rules.get(req.kind)
    if rule is None:
        raise Denied("this node keeps no records of this kind", ErrorCode.DENIED)
    return rule(req.key, req.blob, now)


def handle_store(ctx: StoreContext, req: Store, now: float, party: Party = LOCAL) -> Stored:
    lim, db = ctx.limits, ctx.db
    if len(req.blob) > lim.max_blob:
        raise QuotaExceeded("quota: object too large")
    # A certificate or a policy is nobody's to delete (its owner replaces it with a newer
    # version): delete hashes on one would let anyone who stored it tombstone it.
    hashes = set() if req.kind in VERSIONED else set(req.delete_hashes)
    if len(hashes) > lim.max_delete_hashes:
        raise QuotaExceeded("quota: too many delete hashes")
    expires = _expires(ctx, req.ttl, now)
    version: int | None = None
    if req.kind is ObjectKind.FRAGMENT:
        if ids.fragment_key(req.blob) != req.key:
            raise Invalid("fragment does not match its content address")
    elif req.kind in VERSIONED:
        facts = _check_record(ctx, req, now)
        version = facts.version
        expires = min(expires, facts.expires)
        if expires <= now:
            raise Denied("record expires now", ErrorCode.EXPIRED)
    digest = blob_digest(req.blob)
    removed: set[bytes]
    fresh = ObjectRow(req.key, int(req.kind), req.blob, digest, expires, version,
                      bool(hashes), now)

    old = db.get_object(req.key)
    if old is not None and old.expires <= now:
        old = None  # expired, not yet collected: as good as absent
    row, live, removed = fresh, hashes, set()
    if old is None:
        pass
    elif old.kind != req.kind:
        if not (req.kind in VERSIONED and old.kind not in VERSIONED):
            raise Denied("this key holds another kind of object", ErrorCode.CONFLICT)
        # else: a verified record evicts an opaque squatter of its key (VERSIONED)
    elif req.kind in VERSIONED and (old.cert_issued or 0) < (version or 0):
        pass  # a renewed certificate or policy replaces the old one, with its delete hashes
    elif old.blob is None:
        raise Denied("object was deleted", ErrorCode.GONE)
    elif old.digest != digest:
        if req.kind in VERSIONED:
            raise Denied("a record as new or newer is held", ErrorCode.CONFLICT)
        raise Denied("another object is stored under this key", ErrorCode.CONFLICT)
    else:
        # The receipt says the requester's delete hashes are all recorded and the object lives
        # no longer than it asked (store_terms, T-ANON-RECEIPTS): a copy held without delete
        # rights (stored by someone who stripped them) or for longer cannot be merged into.
        if hashes and not old.deletable:
            raise Denied("held without delete rights", ErrorCode.CONFLICT)
        if old.expires > expires + ctx.params.clock_skew:
            raise Denied("held for longer than asked", ErrorCode.CONFLICT)
        live, removed = db.get_hashes(req.key)
        if old.deletable:
            live |= hashes - removed
        if len(live) + len(removed) > lim.max_delete_hashes:
            raise QuotaExceeded("quota: too many delete hashes")
        # `touched` stays: only a STORE that placed the object here delays its republish (a
        # merge refreshing it would let anyone holding the blob suppress repair for ever).
        row = ObjectRow(old.key, old.kind, old.blob, old.digest, max(old.expires, expires),
                        old.cert_issued, old.deletable, old.touched)
    # A new object is the requester's whole; a merge charges it only what it adds (no double
    # charge for a republish or a second recipient's copy of a held body).
    size, held_size = object_size(row.blob, len(live) + len(removed)), db.stored_size(req.key)
    admit(ctx, party, size if row is fresh else size - held_size, size - held_size)
    with db.transaction(party):
        db.put_object(row, live, removed, replace=row is fresh)
    # Signed only now: the transaction above has committed (durable).
    receipt = Receipt.issue(ctx.key, StoreOp.STORE, req.key, digest, row.expires, now,
                            store_terms(hashes))
    return Stored(receipt)


def handle_fetch(ctx: StoreContext, req: Fetch, now: float) -> Fetched | NotFound:
    row = ctx.db.get_object(req.key)
    if row is None or row.blob is None or row.expires <= now:
        return NotFound()
    return Fetched(ObjectKind(row.kind), row.blob, row.expires)


def handle_delete(ctx: StoreContext, req: Delete, now: float) -> Deleted | NotFound:
    db = ctx.db
    row = db.get_object(req.key)
    if row is None or row.expires <= now:
        return NotFound()
    h = delete_hash(req.secret)
    live, removed = db.get_hashes(req.key)
    if h in removed:
        return Deleted()  # a repeated DELETE (its answer was lost): idempotent
    if row.blob is None:
        return NotFound()
    if h not in live:
        raise Denied("delete secret does not match", ErrorCode.WRONG_SECRET)
    with db.transaction():  # the last right used drops the blob: a tombstone until expiry
        db.use_delete_right(req.key, h, last=live == {h})
    return Deleted()


# -- APPEND / READ / ACK --------------------------------------------------------------------------


def _check_spend(db: StoreDb, inbox: bytes, eid: bytes, adm: Admission) -> None:
    """A one-time right may name one entry only (a repeat of that entry is not a second use)."""
    if adm.spend is not None:
        prior = db.spent_on(inbox, adm.spend)
        if prior is not None and prior != eid:
            raise Denied("permit token already spent", ErrorCode.PERMIT_SPENT)


def handle_append(ctx: StoreContext, req: Append, peer: bytes | Party, now: float) -> Appended:
    db, party = ctx.db, as_party(ctx, peer)
    if len(req.entry) > ctx.limits.max_entry:
        raise QuotaExceeded("quota: entry too large")
    eid = entry_id(req.entry)
    if db.is_acked(req.inbox, eid):
        raise Denied("entry already acknowledged by the owner", ErrorCode.GONE)
    adm = ctx.append_policy(req.inbox, req.entry, req.proof, now, False) or Admission()
    _check_spend(db, req.inbox, eid, adm)
    expires = _expires(ctx, req.ttl, now, adm.max_ttl)
    held = db.has_entry(req.inbox, eid)
    proof = None if req.proof is None else wire.encode(req.proof)
    if held is None:
        inbox_room(ctx, party, req.inbox, now, 1, entry_size(req.entry, proof), adm,
                   spend_cost(db, req.inbox, adm))
    else:  # a duplicate costs nothing new (but a right spent on it now)
        admit(ctx, party, spend_cost(db, req.inbox, adm))
    with db.transaction(party):
        if held is None:
            db.add_entry(req.inbox, eid, req.entry, proof, expires)
        else:
            db.extend_entry(req.inbox, eid, expires)
        if adm.spend is not None:
            db.add_spent(req.inbox, adm.spend, eid, max(adm.spend_until, expires))
    receipt = Receipt.issue(ctx.key, StoreOp.APPEND, req.inbox, eid,
                            expires if held is None else max(held, expires), now)
    return Appended(receipt)


def handle_read(ctx: StoreContext, req: Read, now: float,
                party: Party = LOCAL) -> Entries | EntryIds:
    db = ctx.db
    scope = proofs.check_owner_proof(db, req.proof, OwnerOp.READ, req.inbox,
                                     args_digest_read(req.after, req.brief), ctx.node_id,
                                     ctx.trusted_cas, ctx.params, now)
    rows, more = db.read_entries(req.inbox, req.after, now, ctx.limits.read_page_bytes,
                                 MAX_PAGE)
    admit(ctx, party, NONCE_OVERHEAD, reserve=False)  # the nonce, remembered for the skew
    with db.transaction(party):
        proofs.record_nonce(db, scope, req.proof, ctx.params)
    nxt = rows[-1].seq if rows else req.after
    if req.brief:
        return EntryIds(tuple(r.entry_id for r in rows), nxt, more)
    return Entries(tuple(InboxEntry(r.entry, r.expires) for r in rows), nxt, more)


def handle_ack(ctx: StoreContext, req: Ack, now: float, party: Party = LOCAL) -> Acked:
    db = ctx.db
    scope = proofs.check_owner_proof(db, req.proof, OwnerOp.ACK, req.inbox,
                                     args_digest_ack(req.entry_ids), ctx.node_id,
                                     ctx.trusted_cas, ctx.params, now)
    admit_ack(ctx, party, req.inbox, req.entry_ids)
    with db.transaction(party):
        proofs.record_nonce(db, scope, req.proof, ctx.params)
        # An id we do not hold is remembered too (until the longest TTL): its entry may still
        # reach us by replication from a replica that missed this ACK.
        db.ack(req.inbox, dict.fromkeys(req.entry_ids), int(now) + ctx.limits.max_ttl)
    return Acked()


# -- node-to-node repair --------------------------------------------------------------------------


def handle_probe(ctx: StoreContext, req: Probe, now: float) -> Needs:
    """Which of the offered objects and entries does this node lack and would take?"""
    db = ctx.db
    if sum(len(item.ids) for item in req.items) > MAX_PROBE_TOTAL:
        raise Invalid("probe offers too many ids")
    out: list[Wanted] = []
    for item in req.items:
        if item.what is ItemKind.OBJECT:
            if len(item.ids) != 1:
                raise Invalid("an object probe offers one digest")
            row = db.get_object(item.key)
            if row is None or row.expires <= now:
                want: tuple[bytes, ...] = item.ids
            elif row.blob is not None and row.kind in VERSIONED:
                # Maybe a newer certificate or policy: STORE decides, by version.
                want = () if row.digest == item.ids[0] else item.ids
            else:
                want = ()  # held, a tombstone, or a conflicting blob: nothing to push
        else:
            want = tuple(eid for eid in dict.fromkeys(item.ids)
                         if db.has_entry(item.key, eid) is None
                         and not db.is_acked(item.key, eid))
        out.append(Wanted(want))
    return Needs(tuple(out))


def handle_replicate(ctx: StoreContext, req: Replicate, peer: bytes | Party,
                     now: float) -> Replicated:
    """Take entries another replica pushes (republish). Each is judged as an APPEND would be
    (quota, then the append policy on its original proof) and charged to the pushing replica;
    one refused entry does not spoil the batch, a full inbox or budget ends it."""
    db, party = ctx.db, as_party(ctx, peer)
    take: list[tuple[bytes, bytes, bytes | None, int, Admission]] = []
    seen: set[bytes] = set()
    spends: set[bytes] = set()
    count = size = extra = 0
    for item in req.entries:
        eid = entry_id(item.entry)
        if (eid in seen or len(item.entry) > ctx.limits.max_entry
                or db.has_entry(req.inbox, eid) is not None or db.is_acked(req.inbox, eid)):
            continue
        try:
            adm = ctx.append_policy(req.inbox, item.entry, item.proof, now, True) or Admission()
            # A token spent here on another entry (a sender that spent it once per replica):
            # the second entry stays out, so each replica holds one entry per token.
            _check_spend(db, req.inbox, eid, adm)
        except (Refusal, RemoteProtocolError):
            continue  # e.g. a permit revoked since: that entry stays out
        if adm.spend is not None and adm.spend in spends:
            continue
        proof = None if item.proof is None else wire.encode(item.proof)
        esize = entry_size(item.entry, proof)
        spend = 0 if adm.spend is None else SPENT_OVERHEAD  # new here: _check_spend passed
        try:
            inbox_room(ctx, party, req.inbox, now, count + 1, size + esize, adm, extra + spend)
        except QuotaExceeded:
            break
        extra += spend
        seen.add(eid)
        if adm.spend is not None:
            spends.add(adm.spend)
        count += 1
        size += esize
        take.append((eid, item.entry, proof, _expires(ctx, item.ttl, now, adm.max_ttl), adm))
    if take:
        with db.transaction(party):
            for eid, entry, proof, expires, adm in take:
                db.add_entry(req.inbox, eid, entry, proof, expires)
                if adm.spend is not None:
                    db.add_spent(req.inbox, adm.spend, eid, max(adm.spend_until, expires))
    return Replicated(len(take))


# -- dispatch -------------------------------------------------------------------------------------

_Handler = Callable[[StoreContext, Any, Party, float], Any]  # (ctx, request, requester, now)

HANDLERS: dict[type, _Handler] = {
    Store: lambda ctx, req, party, now: handle_store(ctx, req, now, party),
    Fetch: lambda ctx, req, _party, now: handle_fetch(ctx, req, now),
    Delete: lambda ctx, req, _party, now: handle_delete(ctx, req, now),
    Append: handle_append,
    Read: lambda ctx, req, party, now: handle_read(ctx, req, now, party),
    Ack: lambda ctx, req, party, now: handle_ack(ctx, req, now, party),
    Probe: lambda ctx, req, _party, now: handle_probe(ctx, req, now),
    Replicate: handle_replicate,
}


# What an anonymizer Z forwards for a sender it cannot vet (messages.FORWARDABLE).
# Inconsistent content in one of these (a fragment not matching its key, a forged or replayed
# owner proof, a policy that does not verify) is refused with DENIED, never counted as a fault:
# this node cannot tell the author from the Z that passed it on, and a fault would let any
# sender get honest anonymizers banned (threat T-FAULT-REFLECT). Probe and Replicate come
# straight from the storing peer, so their faults stay faults.


def dispatch(ctx: StoreContext, peer: bytes | Party, msg: Any, now: float) -> Any:
    """Answer one store request from `peer` (the party it is charged to: budget.party_of; a
    bare node id is judged by key alone). Raises `Denied` (honest) or `Invalid` (a fault)."""
    handler = HANDLERS.get(type(msg))
    if handler is None:
        raise Invalid(f"not a store request: {type(msg).__name__}")
    try:
        return handler(ctx, msg, as_party(ctx, peer), now)
    except Invalid as e:
        if isinstance(msg, FORWARDABLE):
            raise Denied(str(e)[:200], ErrorCode.DENIED) from None
        raise
