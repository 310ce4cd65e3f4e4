"""The permit book: one user's local record of who may write to whom (DESIGN.md §6).

For each correspondent (by address) it keeps:

* `status`: NONE (known, nothing granted), ALLOWED (the owner granted permits: `allow`, a reply,
  or a first message we sent them), CONTACT (`contacts add`: granted, and their requests are
  granted by policy), BLOCKED (`block`: their unspent tokens revoked, their requests dropped);
* `held`: tokens *they* granted us, with their secrets: what we spend to write to them;
* `issued`: ids and expiry of tokens *we* granted them that we have not seen spent: what
  `block` revokes (only these, so a block does not hand replicas the ids of tokens already
  spent, which would let them group that sender's stored appends);
* `supply`: how many of our tokens they last said they hold (every entry carries the count),
  which decides refills;
* `request`: a pending RTS (their note and its date) and `cert`, their last verified address
  certificate (to seal the answer without a lookup);
* `asked`: when our own RTS to them went out, while it is outstanding (until their grant comes,
  or it lapses: mail/permits.py `RTS_LAPSE`), so a further send or retry waits for the answer
  instead of paying for another request;
* `spent`: tokens we issued them that we have seen spent, each with the one entry it was spent
  on, until the token lapses; `double_spent`: how many further entries spent one of those
  tokens again (a cheating sender: replicas each keep one entry per token, the owner reads them
  all and sees the rest). Shown by `anonmail contacts`; nothing is blocked automatically.

and for the owner: the inbox policy's version, mode, stamp difficulty and revoked token ids.

Invariants: the file is written atomically and 0600 (it holds token secrets) after every
change that spends, grants or revokes, so a token is never spent twice by a crash and a grant is
never forgotten; a damaged file is a `UserError` naming it (never silently reset: that would
forget whom the user blocked); every list is bounded. A book written before `asked` and
`spent` existed (tag 66) is read and migrated, not refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

from anonmail import crypto, wire
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.fileio import write_private
from anonmail.permit.records import (
    MAX_REVOKED,
    HeldToken,
    InboxPolicy,
    PolicyMode,
    issue_tokens,
    make_policy,
)
from anonmail.records import ids
from anonmail.records.certs import AddressCert
from anonmail.rng import Rng
from anonmail.wire import Range, Size

GRANT_BATCH = 16  # tokens in a CTS or a refill
REPLY_TOKENS = 4  # tokens an RTS carries, so the owner can answer
LOW = 6  # refill a correspondent who says it holds fewer of our tokens than this
MAX_HELD = 256
MAX_ISSUED = 512
MAX_SPENT = 512  # spent tokens remembered per correspondent (a double spend comes within days)
MAX_PEOPLE = 10_000
MAX_BOOK = 64 << 20

Key32 = Annotated[bytes, Size(32)]


class Status(enum.IntEnum):
    NONE = 0
    ALLOWED = 1
    CONTACT = 2
    BLOCKED = 3


@wire.struct
@dataclass(frozen=True, slots=True)
class Issued:
    id: Key32
    expires: Annotated[int, wire.U64]


@wire.struct
@dataclass(frozen=True, slots=True)
class Request:
    note: Annotated[str, Size(0, 1000)]
    date: Annotated[int, wire.U64]


@wire.struct
@dataclass(frozen=True, slots=True)
class Spent:
    id: Key32  # the token
    entry: Key32  # the one entry it was first seen spent on
    expires: Annotated[int, wire.U64]  # the token's: no replica takes it after this


@wire.struct
@dataclass(frozen=True, slots=True)
class Correspondent:
    address: Annotated[str, Size(3, 254)]
    status: Status = Status.NONE
    held: Annotated[tuple[HeldToken, ...], Size(0, MAX_HELD)] = ()
    issued: Annotated[tuple[Issued, ...], Size(0, MAX_ISSUED)] = ()
    supply: Annotated[int, Range(0, 1 << 16)] = 0
    request: Request | None = None
    cert: AddressCert | None = None
    asked: Annotated[int, wire.U64] = 0  # when our outstanding RTS went out; 0: none
    spent: Annotated[tuple[Spent, ...], Size(0, MAX_SPENT)] = ()
    double_spent: Annotated[int, Range(0, 1 << 32)] = 0


@wire.message(tag=67)
@dataclass(frozen=True, slots=True)
class BookState:
    version: Annotated[int, wire.U64]
    mode: PolicyMode
    stamp_bits: Annotated[int, Range(0, 40)]
    revoked: Annotated[tuple[Issued, ...], Size(0, MAX_REVOKED)]
    people: Annotated[tuple[Correspondent, ...], Size(0, MAX_PEOPLE)]
    published: Annotated[int, wire.U64]  # the policy version the replicas last took


# The first layout (before `asked`, `spent`, `double_spent`): read, then written as BookState.
@wire.struct
@dataclass(frozen=True, slots=True)
class CorrespondentV1:
    address: Annotated[str, Size(3, 254)]
    status: Status
    held: Annotated[tuple[HeldToken, ...], Size(0, MAX_HELD)]
    issued: Annotated[tuple[Issued, ...], Size(0, MAX_ISSUED)]
    supply: Annotated[int, Range(0, 1 << 16)]
    request: Request | None
    cert: AddressCert | None


@wire.message(tag=66)
@dataclass(frozen=True, slots=True)
class BookStateV1:
    version: Annotated[int, wire.U64]
    mode: PolicyMode
    stamp_bits: Annotated[int, Range(0, 40)]
    revoked: Annotated[tuple[Issued, ...], Size(0, MAX_REVOKED)]
    people: Annotated[tuple[CorrespondentV1, ...], Size(0, MAX_PEOPLE)]
    published: Annotated[int, wire.U64]


def _migrate(old: BookStateV1) -> BookState:
    people = tuple(Correspondent(c.address, c.status, c.held, c.issued, c.supply, c.request,
                                 c.cert) for c in old.people)
    return BookState(old.version, old.mode, old.stamp_bits, old.revoked, people, old.published)


class PermitBook:
    def __init__(self, path: Path | None, state: BookState) -> None:
        self.path = path  # None: in memory only (tests)
        self.version = state.version
        self.mode = state.mode
        self.stamp_bits = state.stamp_bits
        self.revoked = list(state.revoked)
        self.people = {p.address: p for p in state.people}
        self.published = state.published
        # Whose each token seen spent was (token id -> address): a second entry spending one is
        # told apart from a first spend without a walk through every correspondent.
        self._spent_by = {s.id: p.address for p in state.people for s in p.spent}

    @classmethod
    def load(cls, path: Path | None, stamp_bits: int) -> PermitBook:
        """The book at `path`, or a new one (permits required, the network's difficulty)."""
        fresh = BookState(1, PolicyMode.PERMITS, stamp_bits, (), (), 0)
        if path is None or not path.exists():
            return cls(path, fresh)
        try:
            state = wire.decode_any(path.read_bytes(), (BookState, BookStateV1),
                                    max_size=MAX_BOOK)
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}") from None
        except RemoteProtocolError:
            raise UserError(f"{path} is damaged: restore it from a backup (it records whom "
                            f"you allowed and blocked)") from None
        return cls(path, state if isinstance(state, BookState) else _migrate(state))

    def save(self) -> None:
        if self.path is None:
            return
        state = BookState(self.version, self.mode, self.stamp_bits, tuple(self.revoked),
                          tuple(self.people.values()), self.published)
        try:
            write_private(self.path, wire.encode(state))
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}") from None

    # -- correspondents --------------------------------------------------------------------------

    def get(self, address: str) -> Correspondent:
        return self.people.get(address) or Correspondent(address)

    def _put(self, c: Correspondent) -> None:
        if c.address not in self.people and len(self.people) >= MAX_PEOPLE:
            raise UserError("your permit book is full: remove contacts you no longer need")
        self.people[c.address] = c

    def status(self, address: str) -> Status:
        return self.get(address).status

    def set_status(self, address: str, status: Status) -> None:
        self._put(replace(self.get(address), status=status))

    def remember_cert(self, cert: AddressCert) -> None:
        self._put(replace(self.get(cert.address), cert=cert))

    # -- tokens we hold (to write to them) -------------------------------------------------------

    def held_count(self, address: str, now: float) -> int:
        return sum(1 for h in self.get(address).held if h.token.expires > now)

    def add_held(self, address: str, tokens: tuple[HeldToken, ...], now: float) -> int:
        """Keep tokens `address` granted us (the caller checked they are theirs). Returns how
        many were new."""
        c = self.get(address)
        have = {h.token.id for h in c.held}
        new = [h for h in tokens if h.token.id not in have and h.token.expires > now]
        keep = tuple(h for h in c.held if h.token.expires > now) + tuple(new)
        # Their grant answers our request to write, if one was outstanding.
        self._put(replace(c, held=keep[-MAX_HELD:], asked=0 if new else c.asked))
        return len(new)

    def drop_held(self, address: str) -> None:
        """Forget the tokens we hold for `address` (it revoked them: we were blocked)."""
        if address in self.people:
            self._put(replace(self.get(address), held=()))

    def take_token(self, address: str, now: float) -> HeldToken | None:
        """Remove and return one token for writing to `address` (soonest to expire first).
        The caller saves the book before the token leaves this machine."""
        c = self.get(address)
        live = sorted((h for h in c.held if h.token.expires > now),
                      key=lambda h: h.token.expires)
        if not live:
            if c.held:
                self._put(replace(c, held=()))
            return None
        self._put(replace(c, held=tuple(live[1:])))
        return live[0]

    # -- tokens we issue (for them to write to us) -----------------------------------------------

    def issue(self, address: str, sign: crypto.SigningKey, own_address: str, count: int,
              now: float, rng: Rng) -> tuple[HeldToken, ...]:
        """Grant `address` `count` tokens for our inbox and record them as issued."""
        fresh = issue_tokens(sign, ids.inbox_key(own_address), count, now, rng)
        c = self.get(address)
        live = tuple(i for i in c.issued if i.expires > now)
        issued = (live + tuple(Issued(h.token.id, h.token.expires) for h in fresh))[-MAX_ISSUED:]
        self._put(replace(c, issued=issued, supply=min(c.supply + count, 1 << 16)))
        return tuple(fresh)

    def note_spent(self, sender: str, tid: bytes, entry: bytes, now: float) -> str | None:
        """Entry `entry` from `sender` says it spent our token `tid`. Record the first spend
        against the correspondent the token was issued to (usually `sender`; another, if the
        token was passed on or stolen). A token already seen spent on another entry is a double
        spend: counted against its correspondent, whose address is returned (the caller drops
        the entry); None otherwise, also for a token we do not know (lapsed, or never ours)."""
        owner = self._spent_by.get(tid)
        if owner is not None:
            c = self.get(owner)
            first = next((s for s in c.spent if s.id == tid), None)
            if first is not None:
                if first.entry == entry:  # the same entry again (read before a crash)
                    return None
                self._put(replace(c, double_spent=min(c.double_spent + 1, 1 << 32)))
                return owner
        if any(i.id == tid for i in self.get(sender).issued):
            owner = sender
        else:  # rare: a token spent by someone it was not issued to
            owner = next((p.address for p in self.people.values()
                          if any(i.id == tid for i in p.issued)), None)
        if owner is None:
            return None
        c = self.get(owner)
        token = next(i for i in c.issued if i.id == tid)
        spent = (*(s for s in c.spent if s.expires > now), Spent(tid, entry, token.expires))
        kept = spent[-MAX_SPENT:]
        for gone in {s.id for s in c.spent} - {s.id for s in kept}:  # lapsed, or the oldest
            self._spent_by.pop(gone, None)
        self._put(replace(c, issued=tuple(i for i in c.issued if i.id != tid), spent=kept))
        self._spent_by[tid] = owner
        return None

    def note_supply(self, address: str, supply: int) -> None:
        self._put(replace(self.get(address), supply=min(supply, 1 << 16)))

    def needs_refill(self, address: str) -> bool:
        c = self.get(address)
        return c.status in (Status.ALLOWED, Status.CONTACT) and c.supply < LOW

    # -- our own requests to write ---------------------------------------------------------------

    def asked_at(self, address: str) -> int:
        """When our RTS to `address` went out, if it is still outstanding (0: none)."""
        return self.get(address).asked

    def set_asked(self, address: str, when: int) -> None:
        self._put(replace(self.get(address), asked=when))

    # -- requests --------------------------------------------------------------------------------

    def add_request(self, cert: AddressCert, note: str, date: int) -> None:
        self._put(replace(self.get(cert.address), request=Request(note, date), cert=cert))

    def drop_request(self, address: str) -> None:
        if address in self.people:
            self._put(replace(self.get(address), request=None))

    def requests(self) -> list[Correspondent]:
        return sorted((c for c in self.people.values() if c.request is not None),
                      key=lambda c: c.request.date if c.request else 0)

    # -- policy ----------------------------------------------------------------------------------

    def block(self, address: str, now: float) -> int:
        """Block `address`: revoke its unspent tokens (a new policy version), drop its request.
        Returns how many tokens were revoked."""
        c = self.get(address)
        live = [i for i in c.issued if i.expires > now]
        self.revoked = [i for i in self.revoked if i.expires > now] + live
        self.revoked = self.revoked[-MAX_REVOKED:]
        self.version += 1
        self._put(replace(c, status=Status.BLOCKED, issued=(), supply=0, request=None))
        return len(live)

    def policy(self, sign: crypto.SigningKey, cert: AddressCert, now: float) -> InboxPolicy:
        revoked = tuple(i.id for i in self.revoked if i.expires > now)
        return make_policy(sign, cert, self.version, self.mode, self.stamp_bits, revoked)
