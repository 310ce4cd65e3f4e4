"""Owner proofs for READ and ACK, with replay protection (DESIGN.md §4; seed 002 §2.2 "the node
will permit this operation only to user agents that can authenticate themselves as the owner").

An `OwnerProof` is the address key's signature (AddressCert.sign_key, domain "owner-proof") over
an `OwnerStatement`: (op, inbox key, serving node ids, time, nonce, digest of the request's
arguments). It carries the AddressCert. A node accepts it when, cheapest check first:

1. the proof names this node (a proof made for some replicas is useless at any other);
2. |time - now| <= `params.clock_skew`;
3. the inbox key is `ids.inbox_key(cert.address)` or `ids.requests_key(cert.address)` (the RTS
   request inbox of DESIGN.md §6 belongs to the same owner);
4. the nonce was not seen before for this inbox;
5. the AddressCert verifies (trusted CA, or self-certifying `.anon`; valid now);
6. the signature verifies.

Replays: an accepted nonce is stored in SQLite, in the same transaction as the operation, until
time + skew, after which check 2 refuses the proof anyway. So a replay is refused even after a
restart. The arguments digest stops a relay (the anonymizer Z of DESIGN.md §7, or anyone who
sees the request) from turning the proof into an ACK of other entries.

One node or several (issue 11): a direct READ or ACK names the one replica it goes to. Through
an anonymizer the owner sends one request that Z fans out to the replicas (a brief READ, an
ACK), so its proof names them all: one padded cell instead of one per replica. Each named node
accepts it once. A replay of a one-node proof can only be an attacker's, so it is the
presenter's fault (Invalid), found before the signature is checked; but a named replica could
race the anonymizer and present a several-node proof to another named replica first, and the
anonymizer's honest copy then arrives second. So a replay of a several-node proof whose
signature verifies is a refusal (Denied), never charged to the anonymizer; one that does not
verify is a fault as any other. What the racing replica gains is what the owner asked for
anyway: the same entry ids of the same inbox, or the same entries acknowledged (threat
T-REPLAY-OWNER).
"""

from __future__ import annotations

from collections.abc import Sequence

from anonmail import crypto, wire
from anonmail.errors import LocalError, RemoteProtocolError
from anonmail.records import ids
from anonmail.records.certs import AddressCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.store.db import StoreDb
from anonmail.store.errors import Denied, ErrorCode, Invalid
from anonmail.store.messages import (
    MAX_PROOF_NODES,
    NONCE_SIZE,
    OwnerOp,
    OwnerProof,
    OwnerStatement,
)

OWNER_PROOF_DOMAIN = "owner-proof"


def statement_bytes(op: OwnerOp, inbox: bytes, node_ids: tuple[bytes, ...], time: int,
                    nonce: bytes, args: bytes) -> bytes:
    return wire.encode(OwnerStatement(op, inbox, node_ids, time, nonce, args))


def make_owner_proof(sign_key: crypto.SigningKey, cert: AddressCert, op: OwnerOp, inbox: bytes,
                     node_ids: Sequence[bytes], args: bytes, now: float,
                     rng: Rng) -> OwnerProof:
    """Sign one READ or ACK for the nodes `node_ids` (the user agent's side)."""
    named = tuple(dict.fromkeys(node_ids))
    if not 1 <= len(named) <= MAX_PROOF_NODES:
        raise LocalError(f"an owner proof names 1 to {MAX_PROOF_NODES} nodes")
    nonce = rng.bytes(NONCE_SIZE)
    t = int(now)
    sig = sign_key.sign(OWNER_PROOF_DOMAIN, statement_bytes(op, inbox, named, t, nonce, args))
    return OwnerProof(cert, named, t, nonce, sig)


def nonce_scope(inbox: bytes, nonce: bytes) -> bytes:
    return crypto.hash("owner-nonce", inbox, nonce)


def check_owner_proof(db: StoreDb, proof: OwnerProof, op: OwnerOp, inbox: bytes, args: bytes,
                      own_node_id: bytes, trusted_cas: frozenset[bytes], params: NetworkParams,
                      now: float) -> bytes:
    """Raise `Denied` or `Invalid` unless `proof` authorises `op` on `inbox` here and now.
    Returns the nonce scope, which the caller records with `record_nonce` in the operation's
    transaction."""
    if own_node_id not in proof.node_ids:
        raise Invalid("owner proof is for another node")
    if abs(proof.time - now) > params.clock_skew:
        # Honest clocks drift: a refusal, not a fault.
        raise Denied("owner proof time outside the clock skew", ErrorCode.CLOCK_SKEW)
    address = proof.cert.address
    if inbox not in (ids.inbox_key(address), ids.requests_key(address)):
        raise Invalid("owner proof certificate does not own this inbox")
    scope = nonce_scope(inbox, proof.nonce)
    used = db.nonce_seen(scope)
    if used and len(proof.node_ids) == 1:
        raise Invalid("owner proof replayed")
    try:
        proof.cert.verify(trusted_cas, now, params.clock_skew)
        crypto.verify(proof.cert.sign_key, OWNER_PROOF_DOMAIN,
                      statement_bytes(op, inbox, proof.node_ids, proof.time, proof.nonce,
                                      args),
                      proof.signature)
    except RemoteProtocolError as e:
        raise Invalid(f"owner proof: {e}") from e
    if used:
        # Maybe a named replica's race (module docstring): not the presenter's fault. Only
        # after the signature checked, so a forgery with a used nonce is still a fault.
        raise Denied("owner proof already used here", ErrorCode.DENIED)
    return scope


def record_nonce(db: StoreDb, scope: bytes, proof: OwnerProof, params: NetworkParams) -> None:
    """Remember an accepted nonce until its proof is stale anyway (inside a transaction)."""
    db.add_nonce(scope, proof.time + params.clock_skew + 1)
