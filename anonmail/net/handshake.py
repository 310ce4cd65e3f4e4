"""Mutual authentication of a connection: a sans-I/O handshake state machine.

No I/O happens here. The driver feeds received bytes in with `receive_data`, asks `next_event(now)`
what happened, and writes out whatever `data_to_send()` returns, until it gets `Established`.
Time (`now`, for certificate validity) and randomness (an `Rng`) are passed in.

The protocol (SIGMA-I: ephemeral Diffie-Hellman, then identities signed and sent encrypted; every
message is a 4-byte big-endian length and one canonical wire message):

    1. I -> R  Hello{network_id, eI, nI}                         (eI, eR: fresh X25519 keys,
    2. R -> I  HelloReply{eR, nR, seal(kR, h1; Auth{cert_R, sigR})}   nI, nR: 32 random bytes)
    3. I -> R  HelloAuth{seal(kI, h2; Auth{cert_I, sigI})}
    2' R -> I  OtherNetworkReply{network_id}     (instead of 2 when message 1 names another
               network; R closes. I fails with `errors.OtherNetwork`: a TransportError, not a
               fault, so a user's wrong [network] name is reported as such)

    h1 = H("handshake-1", bytes of message 1, eR, nR)
    dh = X25519(eI, eR)
    kR = kdf(dh, "handshake-responder-seal", h1),   kI = kdf(dh, "handshake-initiator-seal", h1)
    sigR = Sign_R("handshake-responder", h1 || cert_R)
    h2 = H("handshake-2", h1, sealed part of message 2)
    sigI = Sign_I("handshake-initiator", h2 || cert_I)
    h3 = H("handshake-3", h2, sealed part of message 3)
    I -> R frame key: kdf(dh, "session-initiator-to-responder", h3)
    R -> I frame key: kdf(dh, "session-responder-to-initiator", h3)

`seal` is XChaCha20-Poly1305 with nonce 0 (each seal key is used once) and the transcript hash as
associated data.

Resumption (derivations, and why it is safe, in resumption.py): every established session also
leaves a one-time `Ticket` (`Established.ticket`; the driver files it, resumption.Tickets). An
initiator handed one (`resume=`) sends ResumeHello{network_id, tid, eI, nI} as message 1; a
responder handed its tickets (`tickets=`) answers ResumeReply{eR, nR, cR} when it holds an
unexpired tid, and ResumeAuth{cI} completes it: no signature, no certificate on the wire, a
fresh X25519 exchange. A responder without that ticket goes on exactly as for a Hello (h1 then
covers the ResumeHello's bytes), so a stale ticket costs no extra round trip.

Invariants:
* each side signs the whole transcript so far, including the other side's fresh ephemeral key and
  nonce, and its own certificate: a signature proves the signer holds the certificate's key *now*,
  for *this* connection. A stolen certificate without its key, or a signature replayed from another
  session, fails (`BadSignature` / `DecryptError`);
* identities travel only inside AEAD under keys from the ephemeral DH, so a passive observer learns
  neither node id. The initiator reveals its identity only after it has authenticated the
  responder and, when it dialled a known contact (`expect`), checked the responder's node id: an
  active man in the middle cannot learn who is calling. (On a bootstrap introduction, with no
  `expect`, whichever valid node answers learns it.) The responder's identity is visible to anyone
  who connects: it is a public server;
* the network id is in message 1 and therefore in every hash and key: nodes of different networks
  refuse each other. The responder then says which network it is on (2'), before any key or
  identity is shown: a network id is no secret (any caller on that network gets a full reply),
  and the unauthenticated reply can only turn a failed handshake into another failure;
* session keys depend on the whole transcript and differ per direction, so frames cannot be
  reflected back to their sender or moved between connections; ephemeral keys give forward secrecy;
* a resumed session's peer is the certificate proven in the full handshake its ticket descends
  from; an initiator resumes only with a ticket for the node it expects, and a responder reports
  `Established` only after the initiator's confirmation checks (never on its first frame: a
  forgery must fail in the handshake, charged to its source, not to the ticket's owner);
* every failure caused by the peer raises a `RemoteProtocolError` subclass and leaves the machine
  in `FAILED`; misuse by the caller raises `LocalProtocolError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated, Protocol

from anonmail import crypto, wire
from anonmail.errors import LocalProtocolError, OtherNetwork, RemoteProtocolError
from anonmail.net import resumption
from anonmail.net.resumption import ResumeAuth, ResumeHello, ResumeReply, Ticket, Tickets
from anonmail.records import ids
from anonmail.records.certs import CertCache, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng
from anonmail.wire import Size

LENGTH_SIZE = 4
MAX_MESSAGE = 4096  # one handshake message; a certificate is a few hundred bytes
NONCE_SIZE = 32
_SEALED = Size(crypto.AEAD_TAG_SIZE, 2048)

RESPONDER_DOMAIN = "handshake-responder"
INITIATOR_DOMAIN = "handshake-initiator"


class HandshakeError(RemoteProtocolError):
    """The peer broke the handshake: wrong network, wrong identity, malformed message."""


class UnexpectedPeer(HandshakeError):
    """A valid node answered, but not the one we dialled. The transport does not count this
    against the endpoint's address (net/tcp.py: a third party may have named it)."""

    def __init__(self, message: str, node_id: bytes) -> None:
        super().__init__(message)
        self.node_id = node_id  # who did answer, proven by its signature


@wire.message(tag=10)
@dataclass(frozen=True, slots=True)
class Hello:
    network_id: Annotated[bytes, Size(16)]
    ephemeral: Annotated[bytes, Size(crypto.PUBLIC_KEY_SIZE)]
    nonce: Annotated[bytes, Size(NONCE_SIZE)]


@wire.message(tag=11)
@dataclass(frozen=True, slots=True)
class HelloReply:
    ephemeral: Annotated[bytes, Size(crypto.PUBLIC_KEY_SIZE)]
    nonce: Annotated[bytes, Size(NONCE_SIZE)]
    sealed: Annotated[bytes, _SEALED]  # Auth of the responder


@wire.message(tag=12)
@dataclass(frozen=True, slots=True)
class HelloAuth:
    sealed: Annotated[bytes, _SEALED]  # Auth of the initiator


@wire.message(tag=15)
@dataclass(frozen=True, slots=True)
class OtherNetworkReply:
    """The responder's answer to a Hello of another network: the network it is on."""

    network_id: Annotated[bytes, Size(16)]


@wire.struct
@dataclass(frozen=True, slots=True)
class Auth:
    """What each side proves itself with, sent only inside AEAD."""

    cert: NodeCert
    signature: Annotated[bytes, Size(crypto.SIGNATURE_SIZE)]


class Signer(Protocol):
    """An identity key: `crypto.SigningKey` (tests pass impostors that hold a different key)."""

    @property
    def public(self) -> bytes: ...

    def sign(self, domain: str, message: bytes) -> bytes: ...


class Role(enum.Enum):
    INITIATOR = "initiator"  # dialled out
    RESPONDER = "responder"  # accepted


class State(enum.Enum):
    AWAIT_HELLO = enum.auto()  # responder: nothing received yet
    AWAIT_REPLY = enum.auto()  # initiator: Hello or ResumeHello queued, waiting for a reply
    AWAIT_AUTH = enum.auto()  # responder: HelloReply queued, waiting for HelloAuth
    AWAIT_RESUME_AUTH = enum.auto()  # responder: ResumeReply queued, waiting for ResumeAuth
    ESTABLISHED = enum.auto()
    FAILED = enum.auto()


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The two directional frame keys of an established connection (never printed)."""

    send: bytes = field(repr=False)
    recv: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing to report until more bytes arrive (after flushing `data_to_send()`)."""


@dataclass(frozen=True, slots=True)
class Established:
    """The peer is authenticated; frames may flow with `keys`."""

    peer: NodeCert
    keys: SessionKeys
    ticket: Ticket  # resumes the next connection between the two (resumption.py)
    resumed: bool = False  # this session came from a ticket, not a full handshake


NEED_DATA = NeedData()
Event = NeedData | Established


class Handshake:
    """One side of one handshake. `Handshake(Role.INITIATOR, ...)` queues message 1 at once."""

    def __init__(self, role: Role, key: Signer, cert: NodeCert, params: NetworkParams,
                 rng: Rng, *, expect: ids.NodeId | None = None,
                 cert_cache: CertCache | None = None, resume: Ticket | None = None,
                 tickets: Tickets | None = None,
                 ticket_lifetime: float = resumption.TICKET_LIFETIME) -> None:
        if cert.public_key != key.public:
            raise LocalProtocolError("our certificate is not for our key")
        if expect is not None and role is not Role.INITIATOR:
            raise LocalProtocolError("only an initiator knows whom it expects")
        if resume is not None and (expect is None or resume.peer.node_id != expect
                                   or resume.own != cert):
            raise LocalProtocolError("a ticket resumes only with the node expected, as ourselves")
        if tickets is not None and role is not Role.RESPONDER:
            raise LocalProtocolError("only a responder looks tickets up")
        self.role = role
        self._key = key
        self._cert = cert
        self._params = params
        self._expect = expect
        self._cache = cert_cache
        self._resume = resume  # initiator: the ticket sent
        self._tickets = tickets
        self._schedule: resumption.Schedule | None = None  # responder: a ticket found
        self._lifetime = ticket_lifetime
        self._eph = crypto.KeyPair.generate(rng)
        self._nonce = rng.bytes(NONCE_SIZE)
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._hello = b""  # the bytes of message 1, the start of the transcript
        self._dh = b""
        self._h2 = b""
        self._k_init = b""
        self.peer: NodeCert | None = None
        if role is Role.INITIATOR:
            self._hello = wire.encode(
                Hello(params.network_id, self._eph.public, self._nonce) if resume is None
                else ResumeHello(params.network_id, resume.tid, self._eph.public, self._nonce))
            self._queue(self._hello)
            self.state = State.AWAIT_REPLY
        else:
            self.state = State.AWAIT_HELLO

    # -- the driver's interface ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is State.FAILED:
            raise LocalProtocolError("handshake already failed")
        self._inbuf += data

    def data_to_send(self) -> bytes:
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the last handshake message: the first frames (once established)."""
        return bytes(self._inbuf)

    def next_event(self, now: float) -> Event:
        if self.state in (State.FAILED, State.ESTABLISHED):
            raise LocalProtocolError(f"handshake is {self.state.name}")
        try:
            raw = self._take()
            if raw is None:
                return NEED_DATA
            if self.state is State.AWAIT_HELLO:
                self._on_hello(raw, now)
                return NEED_DATA
            if self.state is State.AWAIT_REPLY:
                return self._on_reply(raw, now)
            if self.state is State.AWAIT_RESUME_AUTH:
                return self._on_resume_auth(raw, now)
            return self._on_auth(raw, now)
        except (RemoteProtocolError, OtherNetwork):
            self.state = State.FAILED
            raise

    # -- the protocol -------------------------------------------------------------------------

    def _on_hello(self, raw: bytes, now: float) -> None:
        hello = wire.decode_any(raw, (Hello, ResumeHello), max_size=MAX_MESSAGE)
        if hello.network_id != self._params.network_id:
            self._queue(wire.encode(OtherNetworkReply(self._params.network_id)))
            raise HandshakeError("peer is on another network")
        self._hello = raw
        if isinstance(hello, ResumeHello) and self._tickets is not None:
            # Taken (spent) here, before anything is checked: a tid is good for one attempt.
            ticket = self._tickets.take(hello.ticket, now, self._cert)
            if ticket is not None:
                self._resume_reply(hello, ticket)
                return
        h1 = self._h1(self._eph.public, self._nonce)
        self._dh = crypto.x25519(self._eph.secret, hello.ephemeral)
        k_resp, self._k_init = self._seal_keys(h1)
        sealed = self._seal(k_resp, RESPONDER_DOMAIN, h1)
        self._h2 = crypto.hash("handshake-2", h1, sealed)
        self._queue(wire.encode(HelloReply(self._eph.public, self._nonce, sealed)))
        self.state = State.AWAIT_AUTH

    def _on_reply(self, raw: bytes, now: float) -> Established:
        reply = wire.decode_any(raw, (HelloReply, OtherNetworkReply, ResumeReply),
                                max_size=MAX_MESSAGE)
        if isinstance(reply, OtherNetworkReply):
            if reply.network_id == self._params.network_id:
                raise HandshakeError("responder refused our network as another network")
            raise OtherNetwork(reply.network_id)
        if isinstance(reply, ResumeReply):
            return self._on_resume_reply(reply, now)
        h1 = self._h1(reply.ephemeral, reply.nonce)
        self._dh = crypto.x25519(self._eph.secret, reply.ephemeral)
        k_resp, k_init = self._seal_keys(h1)
        auth = self._open(k_resp, reply.sealed, h1)
        self._check(auth, RESPONDER_DOMAIN, h1, now)
        # Checked before anything of ours is sent: a stranger at a known contact's address
        # never learns who is calling. (After its signature: the transport remembers who
        # proved to answer there, net/tcp.py.)
        if self._expect is not None and auth.cert.node_id != self._expect:
            raise UnexpectedPeer("responder is not the node we dialled", auth.cert.node_id)
        h2 = crypto.hash("handshake-2", h1, reply.sealed)
        sealed = self._seal(k_init, INITIATOR_DOMAIN, h2)
        self._queue(wire.encode(HelloAuth(sealed)))
        return self._finish(crypto.hash("handshake-3", h2, sealed), auth.cert, now)

    def _on_auth(self, raw: bytes, now: float) -> Established:
        msg = wire.decode(raw, HelloAuth, max_size=MAX_MESSAGE)
        auth = self._open(self._k_init, msg.sealed, self._h2)
        self._check(auth, INITIATOR_DOMAIN, self._h2, now)
        return self._finish(crypto.hash("handshake-3", self._h2, msg.sealed), auth.cert, now)

    # -- resumption (resumption.py) -----------------------------------------------------------

    def _resume_reply(self, hello: ResumeHello, ticket: Ticket) -> None:
        dh = crypto.x25519(self._eph.secret, hello.ephemeral)
        self._schedule = resumption.Schedule(ticket, dh, self._hello, self._eph.public,
                                             self._nonce)
        self._queue(wire.encode(ResumeReply(self._eph.public, self._nonce,
                                            self._schedule.responder_confirm)))
        self.state = State.AWAIT_RESUME_AUTH

    def _on_resume_reply(self, reply: ResumeReply, now: float) -> Established:
        ticket = self._resume
        if ticket is None:
            raise HandshakeError("resumption reply to a handshake that offered no ticket")
        dh = crypto.x25519(self._eph.secret, reply.ephemeral)
        sched = resumption.Schedule(ticket, dh, self._hello, reply.ephemeral, reply.nonce)
        if not crypto.constant_time_eq(reply.confirm, sched.responder_confirm):
            raise HandshakeError("responder does not hold our resumption ticket")
        self._queue(wire.encode(ResumeAuth(sched.initiator_confirm)))
        return self._finish(sched.h3, ticket.peer, now, sched)

    def _on_resume_auth(self, raw: bytes, now: float) -> Established:
        msg = wire.decode(raw, ResumeAuth, max_size=MAX_MESSAGE)
        sched = self._schedule
        assert sched is not None
        if not crypto.constant_time_eq(msg.confirm, sched.initiator_confirm):
            raise HandshakeError("initiator does not hold the resumption ticket it named")
        return self._finish(sched.h3, sched.ticket.peer, now, sched)

    def _h1(self, responder_eph: bytes, responder_nonce: bytes) -> bytes:
        return crypto.hash("handshake-1", self._hello, responder_eph, responder_nonce)

    def _seal_keys(self, h1: bytes) -> tuple[bytes, bytes]:
        return (crypto.kdf(self._dh, "handshake-responder-seal", h1),
                crypto.kdf(self._dh, "handshake-initiator-seal", h1))

    def _seal(self, key: bytes, domain: str, transcript: bytes) -> bytes:
        signature = self._key.sign(domain, transcript + wire.encode(self._cert))
        plain = wire.encode(Auth(self._cert, signature))
        return crypto.aead_encrypt(key, crypto.counter_nonce(0), plain, transcript)

    def _open(self, key: bytes, sealed: bytes, transcript: bytes) -> Auth:
        plain = crypto.aead_decrypt(key, crypto.counter_nonce(0), sealed, transcript)
        return wire.decode(plain, Auth, max_size=MAX_MESSAGE)

    def _check(self, auth: Auth, domain: str, transcript: bytes, now: float) -> None:
        if self._cache is not None:
            self._cache.verify(auth.cert, self._params, now)
        else:
            auth.cert.verify(self._params, now)
        crypto.verify(auth.cert.public_key, domain, transcript + wire.encode(auth.cert),
                      auth.signature)

    def _finish(self, h3: bytes, peer: NodeCert, now: float,
                resumed: resumption.Schedule | None = None) -> Established:
        secret = self._dh if resumed is None else resumed.secret
        i2r = crypto.kdf(secret, "session-initiator-to-responder", h3)
        r2i = crypto.kdf(secret, "session-responder-to-initiator", h3)
        keys = SessionKeys(i2r, r2i) if self.role is Role.INITIATOR else SessionKeys(r2i, i2r)
        # The next ticket descends from this session. Resuming keeps the expiry of the full
        # handshake that began the chain: certificates are re-checked at least that often.
        expires = (resumption.first_expiry(now, self._lifetime, peer, self._cert)
                   if resumed is None else resumed.ticket.expires)
        ticket = resumption.next_ticket(secret, h3, peer, self._cert, expires)
        # Drop what is no longer needed (Python cannot wipe memory; the driver also discards
        # this object once it has the session keys).
        self._dh = self._k_init = b""
        self._resume = self._schedule = None
        self.peer = peer
        self.state = State.ESTABLISHED
        return Established(peer, keys, ticket, resumed is not None)

    # -- message framing ----------------------------------------------------------------------

    def _queue(self, message: bytes) -> None:
        self._outbuf += len(message).to_bytes(LENGTH_SIZE, "big") + message

    def _take(self) -> bytes | None:
        if len(self._inbuf) < LENGTH_SIZE:
            return None
        n = int.from_bytes(self._inbuf[:LENGTH_SIZE], "big")
        if n > MAX_MESSAGE:
            raise HandshakeError("handshake message too long")
        if len(self._inbuf) < LENGTH_SIZE + n:
            return None
        raw = bytes(self._inbuf[LENGTH_SIZE:LENGTH_SIZE + n])
        del self._inbuf[:LENGTH_SIZE + n]
        return raw
