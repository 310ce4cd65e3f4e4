"""Session resumption: redialling a recent peer without signatures. Sans-I/O, pure.

A full handshake (handshake.py) costs each side an Ed25519 signature, a signature check and a
certificate check. A node that talks to the same peers again and again (a DHT node: its routing
table's contacts, the neighbourhoods of keys it stores) pays that on every redial. A successful
handshake therefore leaves both sides a one-time *ticket* for the next connection between them:

    full handshake:    rs = kdf(dh, "session-resumption", h3)
    resumed one:       rs' = kdf(s, "session-resumption", h3')   (s and h3' below)
    ticket id:         tid = H("resumption-ticket", rs)

Nothing is sent for it: both sides derive the same rs and tid from the shared secret and the
transcript. The responder files the ticket under tid, the initiator under the responder's node
id, each with the peer's certificate, the certificate it presented itself, and an expiry.

The resumption (messages 1r-3r; the initiator's first request rides right behind 3r, so it costs
the same single round trip as a full handshake, minus the public-key signature work):

    1r. I -> R  ResumeHello{network_id, tid, eI, nI}
    2r. R -> I  ResumeReply{eR, nR, cR}     or, if R has no usable ticket tid: HelloReply (the
                                            full handshake goes on from there, no extra round trip)
    3r. I -> R  ResumeAuth{cI}

    h1 = H("resume-1", bytes of message 1r, eR, nR)
    s  = kdf(rs || X25519(eI, eR), "resume-secret", h1)
    cR = kdf(s, "resume-responder-confirm", h1);    h2 = H("resume-2", h1, cR)
    cI = kdf(s, "resume-initiator-confirm", h2);    h3 = H("resume-3", h2, cI)
    frame keys: kdf(s, "session-initiator-to-responder", h3), kdf(s, "session-responder-to-...", h3)

Invariants:
* only a holder of rs can compute cR or cI, and rs came out of a full handshake in which each
  side proved its certificate's key: cR authenticates the responder to the initiator, cI the
  initiator to the responder, and the peer on a resumed connection is the certificate stored
  with the ticket. The responder reports the peer authenticated (`Established`) only after cI
  checks, so a forged or replayed resumption fails *in the handshake*, before the connection is
  charged to any key: its fault counts against the source that sent it, never against the
  node whose ticket was named (a first request frame as the proof would have made a failure
  there look like the ticket owner's);
* tickets are one-time: each side deletes a ticket as it uses it (the responder when it reads
  message 1r, before any reply) and files the next one, derived from the new session. A tid
  appears on the wire at most once, so a passive observer cannot link two connections by it;
  a replayed 1r meets an unknown tid and gets a full handshake; a side that lost its ticket
  (crash, eviction) only makes the next dial a full handshake;
* a fresh X25519 exchange goes into every resumed session: a later leak of rs (a memory dump)
  does not open recorded sessions (forward secrecy as for a full handshake);
* a ticket lives at most `TICKET_LIFETIME` from the full handshake that made it (resuming does
  not extend it) and never past either certificate's expiry, so certificates are re-checked and
  keys re-proven at least that often; a ticket is used only while we present the same
  certificate as when it was made (a node with a renewed certificate shows it in a full
  handshake, and the peer's handlers see the new one);
* memory is bounded: `Tickets` holds at most `capacity` tickets and drops the oldest first. New
  tickets come only from handshakes that admission let through (net/admission.py), so a flood
  can at worst evict honest tickets, which costs those peers a full handshake.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated

from anonmail import crypto, wire
from anonmail.records.certs import NodeCert
from anonmail.wire import Size

# Seconds from the full handshake. A d = 8 lookup meets ~190 nodes spread over the network, so
# a node that looks up a key every 10 s meets nearly all of a 10,000-node network within a day:
# a day keeps full handshakes near one per lookup there, an hour would leave ~24 (measured:
# docs/transport.md "Resumption"). TLS 1.3 allows 7 days (RFC 8446 §4.6.1).
TICKET_LIFETIME = 86_400.0
MAX_TICKETS = 16_384  # per side and node (~0.8 KiB each): a 10,000-node network, with room
TICKET_ID_SIZE = crypto.HASH_SIZE
CONFIRM_SIZE = 32


@wire.message(tag=16)
@dataclass(frozen=True, slots=True)
class ResumeHello:
    network_id: Annotated[bytes, Size(16)]
    ticket: Annotated[bytes, Size(TICKET_ID_SIZE)]  # tid: names a secret, reveals nothing of it
    ephemeral: Annotated[bytes, Size(crypto.PUBLIC_KEY_SIZE)]
    nonce: Annotated[bytes, Size(32)]


@wire.message(tag=17)
@dataclass(frozen=True, slots=True)
class ResumeReply:
    ephemeral: Annotated[bytes, Size(crypto.PUBLIC_KEY_SIZE)]
    nonce: Annotated[bytes, Size(32)]
    confirm: Annotated[bytes, Size(CONFIRM_SIZE)]  # cR


@wire.message(tag=18)
@dataclass(frozen=True, slots=True)
class ResumeAuth:
    confirm: Annotated[bytes, Size(CONFIRM_SIZE)]  # cI


@dataclass(frozen=True, slots=True)
class Ticket:
    """What one side keeps to resume with one peer (never printed, never sent: only `tid` is)."""

    tid: bytes
    secret: bytes = field(repr=False)  # rs
    expires: float  # the same clock as certificates' validity (`now` of the handshake)
    peer: NodeCert  # who the other side proved to be
    own: NodeCert  # the certificate we presented


def next_ticket(secret: bytes, h3: bytes, peer: NodeCert, own: NodeCert,
                expires: float) -> Ticket:
    """The ticket an established session leaves (`secret`: its DH secret or resumed `s`)."""
    rs = crypto.kdf(secret, "session-resumption", h3)
    return Ticket(crypto.hash("resumption-ticket", rs), rs, expires, peer, own)


def first_expiry(now: float, lifetime: float, peer: NodeCert, own: NodeCert) -> float:
    """When a ticket from a full handshake at `now` stops being usable."""
    return min(now + lifetime, float(peer.expires), float(own.expires))


class Schedule:
    """The key schedule of one resumption, the same on both sides (the module docstring)."""

    def __init__(self, ticket: Ticket, dh: bytes, hello: bytes, responder_eph: bytes,
                 responder_nonce: bytes) -> None:
        self.ticket = ticket
        h1 = crypto.hash("resume-1", hello, responder_eph, responder_nonce)
        # rs authenticates, the fresh DH gives forward secrecy: both are 32 bytes, together the
        # 64 a BLAKE2b key holds, so neither is truncated.
        self.secret = crypto.kdf(ticket.secret + dh, "resume-secret", h1)
        self.responder_confirm = crypto.kdf(self.secret, "resume-responder-confirm", h1)
        self.h2 = crypto.hash("resume-2", h1, self.responder_confirm)
        self.initiator_confirm = crypto.kdf(self.secret, "resume-initiator-confirm", self.h2)
        self.h3 = crypto.hash("resume-3", self.h2, self.initiator_confirm)

    def __repr__(self) -> str:  # never print secrets
        return "Schedule(…)"


class Tickets:
    """One side's tickets, bounded, the least recently filed dropped first. An initiator files
    them by the responder's node id, a responder by ticket id. `capacity` 0 disables
    resumption on that side."""

    def __init__(self, capacity: int = MAX_TICKETS) -> None:
        self.capacity = capacity
        # Oldest first; an OrderedDict, as dropping a plain dict's first key again and again
        # is O(n) in CPython.
        self._tickets: OrderedDict[bytes, Ticket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def __contains__(self, key: bytes) -> bool:
        return key in self._tickets

    def put(self, key: bytes, ticket: Ticket) -> None:
        if self.capacity <= 0:
            return
        self._tickets.pop(key, None)  # re-filed last
        while len(self._tickets) >= self.capacity:
            self._tickets.popitem(last=False)
        self._tickets[key] = ticket

    def take(self, key: bytes, now: float, own: NodeCert) -> Ticket | None:
        """Remove the ticket filed under `key` and return it if it may be used: unexpired, and
        made while we presented `own`. Taken means spent, whatever happens next."""
        ticket = self._tickets.pop(key, None)
        if ticket is None or now >= ticket.expires or ticket.own != own:
            return None
        return ticket
