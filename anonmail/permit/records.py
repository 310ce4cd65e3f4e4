"""Permit records (DESIGN.md §6; seed 003 §3.2, §7.1): what an inbox owner signs so that storage
nodes can tell a permitted append from spam without learning who sent it.

* `Token` (signed by the owner's address key): whoever holds the secret of `key` may append
  one entry to `inbox` until `expires`;
* `PermitProof` (signed by the token's key): this token is spent on this entry (an APPEND's
  proof);
* `Stamp` (proof of work, nobody's signature): about 2**bits hashes were spent on this entry,
  for this inbox, today;
* `InboxPolicy` (signed by the owner's address key): permits required or open, the stamp
  difficulty, the revoked tokens, a version.

Why one-time tokens (the issue's "permits storage nodes cannot link"): Freemail's per-sender
channel and a single permit key both give every append by one sender the same visible handle.
Here each append carries a different token key, every token the owner issues in one `EPOCH`
carries the same `expires` (so expiry groups nothing finer than "issued this month"), Ed25519
signatures are deterministic functions of their key and message and link nothing, and the token
names no sender. What a replica sees of two appends by one sender is what it sees of appends by
two senders. The simpler schemes with the same property need blind signatures or anonymous
credentials (the owner would sign tokens it never sees): they buy unlinkability from the owner
too, which the owner, who knows whom each token went to, does not need to be denied.

Invariants: every field has a bound (wire schema), every signature has its own domain; tokens
are spent once per inbox replica (the store keeps the spent ids, store/handlers.py) and a token
that lapses can never be spent again (`expires` is in the signed bytes); a revocation is a new
policy version, and a node keeps only the newest version it has seen.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Annotated

from anonmail import crypto, wire
from anonmail.records import ids
from anonmail.records.certs import AddressCert
from anonmail.rng import Rng
from anonmail.wire import Range, Size

TOKEN_DOMAIN = "permit-token"  # noqa: S105 -- a domain tag
USE_DOMAIN = "permit-use"
POLICY_DOMAIN = "inbox-policy"
STAMP_TAG = "rts-stamp"

DAY = 86400
EPOCH = 30 * DAY  # tokens issued in one epoch all expire at the end of the next
MAX_REVOKED = 4096  # revoked token ids a policy lists (only unspent, unexpired ones)
MAX_POLICY = 160 << 10  # an encoded policy: well under one object
STAMP_DAYS = 1  # a stamp for yesterday or tomorrow still counts (clocks and midnight)

Key32 = Annotated[bytes, Size(32)]


class PolicyMode(enum.IntEnum):
    PERMITS = 1  # the inbox takes appends with a permit token only; strangers ask first (RTS)
    OPEN = 2  # a token or a proof-of-work stamp at the policy's difficulty


def token_expiry(now: float) -> int:
    """The expiry of every token issued now: the end of the next epoch (30 to 60 days away).
    The same for every token any owner issues in this epoch, so it groups nothing."""
    return (int(now) // EPOCH + 2) * EPOCH


def token_id(key: bytes) -> bytes:
    """The name a store spends and a policy revokes a token by."""
    return crypto.hash("permit-token-id", key)


@wire.message(tag=60)
@dataclass(frozen=True, slots=True)
class Token:
    """The owner's permission for one append to `inbox`, by whoever holds `key`'s secret."""

    inbox: Key32
    key: Key32  # an Ed25519 public key; the secret travels to the sender inside a sealed CTS
    expires: Annotated[int, wire.U64]
    signature: Annotated[bytes, Size(64)]

    @property
    def id(self) -> bytes:
        return token_id(self.key)

    def verify(self, owner_sign_key: bytes) -> None:
        """Raise BadSignature unless the owner signed this token."""
        crypto.verify(owner_sign_key, TOKEN_DOMAIN, wire.signing_bytes(self), self.signature)


@wire.message(tag=61)
@dataclass(frozen=True, slots=True)
class HeldToken:
    """A token with its secret: what a CTS carries to the sender, and what the sender keeps."""

    token: Token
    seed: Annotated[bytes, Size(32)]


@wire.struct
@dataclass(frozen=True, slots=True)
class TokenUse:
    """What a token's key signs when it is spent (never sent on its own)."""

    inbox: Key32
    entry_id: Key32


@wire.message(tag=62)
@dataclass(frozen=True, slots=True)
class PermitProof:
    """An APPEND's proof (store AppendProofKind.PERMIT): the token and its key's signature over
    (inbox, entry id), so the token is spent on exactly this entry."""

    token: Token
    signature: Annotated[bytes, Size(64)]


@wire.message(tag=63)
@dataclass(frozen=True, slots=True)
class Stamp:
    """An APPEND's proof (AppendProofKind.STAMP): a nonce for which
    hash("rts-stamp", inbox, day, entry id, nonce) has `bits` leading zero bits."""

    day: Annotated[int, Range(0, (1 << 32) - 1)]
    nonce: Annotated[bytes, Size(crypto.STAMP_NONCE_SIZE)]


@wire.message(tag=64)
@dataclass(frozen=True, slots=True)
class InboxPolicy:
    """The owner's rules for its inbox and its request inbox, with its revocation list; stored,
    signed, under both keys (store ObjectKind.POLICY). The list is inside the policy so that a
    replica never holds a policy without the revocations that go with it."""

    cert: AddressCert  # whose inbox: the node checks the key is this address's
    version: Annotated[int, Range(0, (1 << 63) - 1)]  # a node keeps the highest (SQLite int)
    mode: PolicyMode
    stamp_bits: Annotated[int, Range(0, 40)]  # for RTS (and appends to an open inbox)
    revoked: Annotated[tuple[Key32, ...], Size(0, MAX_REVOKED)]  # token ids, sorted
    signature: Annotated[bytes, Size(64)]

    def verify(self) -> None:
        """Raise BadSignature unless the certificate's owner signed this policy (the
        certificate itself is checked by the caller, against its trusted CAs)."""
        crypto.verify(self.cert.sign_key, POLICY_DOMAIN, wire.signing_bytes(self),
                      self.signature)

    def covers(self, key: bytes) -> bool:
        return key in (ids.inbox_key(self.cert.address), ids.requests_key(self.cert.address))


# -- making (the owner's side) --------------------------------------------------------------------


def issue_tokens(sign: crypto.SigningKey, inbox: bytes, count: int, now: float,
                 rng: Rng) -> list[HeldToken]:
    """`count` fresh tokens for `inbox`, each with its own key."""
    expires = token_expiry(now)
    out = []
    for _ in range(count):
        key = crypto.SigningKey.generate(rng)
        unsigned = Token(inbox, key.public, expires, bytes(64))
        token = replace(unsigned, signature=sign.sign(TOKEN_DOMAIN,
                                                      wire.signing_bytes(unsigned)))
        out.append(HeldToken(token, key.seed()))
    return out


def make_policy(sign: crypto.SigningKey, cert: AddressCert, version: int, mode: PolicyMode,
                stamp_bits: int, revoked: tuple[bytes, ...]) -> InboxPolicy:
    unsigned = InboxPolicy(cert, version, mode, stamp_bits, tuple(sorted(set(revoked))),
                           bytes(64))
    return replace(unsigned, signature=sign.sign(POLICY_DOMAIN, wire.signing_bytes(unsigned)))


# -- spending (the sender's side) -----------------------------------------------------------------


def spend(held: HeldToken, inbox: bytes, entry_id: bytes) -> PermitProof:
    use = wire.encode(TokenUse(inbox, entry_id))
    return PermitProof(held.token, crypto.SigningKey(held.seed).sign(USE_DOMAIN, use))


def check_use(proof: PermitProof, inbox: bytes, entry_id: bytes) -> None:
    """Raise BadSignature unless the token's key signed this use."""
    crypto.verify(proof.token.key, USE_DOMAIN, wire.encode(TokenUse(inbox, entry_id)),
                  proof.signature)


def stamp_day(now: float) -> int:
    return int(now) // DAY


def _stamp_parts(inbox: bytes, day: int, entry_id: bytes) -> tuple[bytes, ...]:
    return (inbox, day.to_bytes(4, "big"), entry_id)


def mint_stamp(inbox: bytes, entry_id: bytes, bits: int, now: float, rng: Rng) -> Stamp:
    """About 2**bits hashes of work bound to this inbox, today and this entry."""
    day = stamp_day(now)
    nonce = crypto.mint_stamp(STAMP_TAG, _stamp_parts(inbox, day, entry_id), bits,
                              start=int.from_bytes(rng.bytes(8), "big"))
    return Stamp(day, nonce)


def stamp_work(stamp: Stamp, inbox: bytes, entry_id: bytes) -> int:
    """The bits of work `stamp` shows for this inbox and entry (one hash)."""
    return crypto.stamp_bits(STAMP_TAG, _stamp_parts(inbox, stamp.day, entry_id), stamp.nonce)
