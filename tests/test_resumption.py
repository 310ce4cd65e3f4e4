"""Session resumption, driven in memory (no sockets): the one-time tickets a handshake leaves,
a resumed handshake, its fall-back to the full one, and each attack on it (net/resumption.py)."""

from __future__ import annotations

import pytest

from anonmail import crypto, wire
from anonmail.clock import FixedClock
from anonmail.errors import DecryptError, LocalProtocolError, RemoteProtocolError
from anonmail.net.frames import FrameDecoder, FrameEncoder
from anonmail.net.handshake import (
    LENGTH_SIZE,
    Established,
    Handshake,
    HandshakeError,
    HelloReply,
    OtherNetworkReply,
    Role,
    State,
)
from anonmail.net.resumption import (
    TICKET_LIFETIME,
    ResumeAuth,
    ResumeHello,
    ResumeReply,
    Ticket,
    Tickets,
)
from anonmail.records import params
from anonmail.records.certs import NodeCert
from anonmail.rng import SeededRng

PARAMS = params.testnet(puzzle_bits=0)
NOW = FixedClock().now()


def key(n: int) -> crypto.SigningKey:
    return crypto.SigningKey.generate(SeededRng(n))


ALICE, BOB, CAROL = key(1), key(2), key(3)
ALICE_CERT, BOB_CERT, CAROL_CERT = (NodeCert.issue(k, (), NOW, PARAMS) for k in (ALICE, BOB, CAROL))


class Side:
    """One node's resumption state: its tickets as initiator (by node id) and as responder."""

    def __init__(self, k: crypto.SigningKey, cert: NodeCert) -> None:
        self.key, self.cert = k, cert
        self.dial = Tickets()
        self.accept = Tickets()
        self.seed = 0
        self.base = int.from_bytes(k.public[:4], "big") * 10_000  # deterministic, per node

    def initiator(self, to: NodeCert, now: float = NOW, *,
                  resume: Ticket | None = None) -> Handshake:
        self.seed += 1
        ticket = resume if resume is not None else self.dial.take(to.node_id, now, self.cert)
        return Handshake(Role.INITIATOR, self.key, self.cert, PARAMS,
                         SeededRng(self.base + self.seed),
                         expect=to.node_id, resume=ticket)

    def responder(self) -> Handshake:
        self.seed += 1
        return Handshake(Role.RESPONDER, self.key, self.cert, PARAMS,
                         SeededRng(self.base - self.seed), tickets=self.accept)


def step(src: Handshake, dst: Handshake, now: float = NOW) -> Established | None:
    dst.receive_data(src.data_to_send())
    event = dst.next_event(now)
    return event if isinstance(event, Established) else None


def connect(a: Side, b: Side, now: float = NOW) -> tuple[Established, Established]:
    """`a` dials `b` (resuming if `a` holds a ticket); both file the next ticket, as the
    transport does."""
    i, r = a.initiator(b.cert, now), b.responder()
    assert step(i, r, now) is None
    ei = step(r, i, now)
    er = step(i, r, now)
    assert ei is not None and er is not None
    a.dial.put(ei.peer.node_id, ei.ticket)
    b.accept.put(er.ticket.tid, er.ticket)
    return ei, er


def state(hs: Handshake) -> State:
    """(Read through a call: mypy would keep an attribute narrowed across next_event.)"""
    return hs.state


def message(hs: Handshake) -> bytes:
    """The one handshake message `hs` queued, without its length prefix."""
    out = hs.data_to_send()
    assert int.from_bytes(out[:LENGTH_SIZE], "big") == len(out) - LENGTH_SIZE
    return out[LENGTH_SIZE:]


def framed(raw: bytes) -> bytes:
    return len(raw).to_bytes(LENGTH_SIZE, "big") + raw


def assert_keys_work(ei: Established, er: Established) -> None:
    assert ei.keys.send == er.keys.recv and ei.keys.recv == er.keys.send
    dec = FrameDecoder(er.keys.recv, 100)
    dec.receive_data(FrameEncoder(ei.keys.send, 100).encode(b"request"))
    assert dec.next_frame() == b"request"


# -- honest use --------------------------------------------------------------------------------


def test_full_handshake_leaves_the_same_ticket_on_both_sides() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    ei, er = connect(alice, bob)
    assert not ei.resumed and not er.resumed
    assert ei.ticket.tid == er.ticket.tid and ei.ticket.secret == er.ticket.secret
    assert ei.ticket.peer == BOB_CERT and ei.ticket.own == ALICE_CERT
    assert er.ticket.peer == ALICE_CERT and er.ticket.own == BOB_CERT
    assert ei.ticket.expires == er.ticket.expires == NOW + TICKET_LIFETIME
    assert ei.ticket.secret not in (ei.keys.send, ei.keys.recv)
    assert ei.ticket.secret.hex() not in repr(ei)


def test_resumed_handshake_authenticates_both_and_ratchets_the_ticket() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    first, _ = connect(alice, bob)
    i, r = alice.initiator(BOB_CERT), bob.responder()
    hello = message(i)
    assert isinstance(wire.decode_any(hello, (ResumeHello,)), ResumeHello)
    r.receive_data(framed(hello))
    r.next_event(NOW + 10)
    assert state(r) is State.AWAIT_RESUME_AUTH
    assert first.ticket.tid not in bob.accept  # spent on sight
    reply = r.data_to_send()
    assert isinstance(wire.decode_any(reply[LENGTH_SIZE:], (ResumeReply,)), ResumeReply)
    i.receive_data(reply)
    ei = i.next_event(NOW + 10)
    er = step(i, r, NOW + 10)
    assert isinstance(ei, Established) and er is not None
    assert ei.resumed and er.resumed
    assert ei.peer == BOB_CERT and er.peer == ALICE_CERT
    assert i.state is r.state is State.ESTABLISHED
    assert_keys_work(ei, er)
    # The next ticket: new id and secret, the same on both sides, same expiry as the chain's.
    assert ei.ticket.tid == er.ticket.tid != first.ticket.tid
    assert ei.ticket.secret == er.ticket.secret != first.ticket.secret
    assert ei.ticket.expires == er.ticket.expires == first.ticket.expires
    assert ei.keys.send != first.keys.send


def transcript(i: Handshake, r: Handshake) -> bytes:
    """Run a handshake to the end; every byte both sides sent."""
    sent = b""
    for src, dst in ((i, r), (r, i), (i, r)):
        out = src.data_to_send()
        sent += out
        dst.receive_data(out)
        dst.next_event(NOW)
    assert i.state is r.state is State.ESTABLISHED
    return sent


def test_no_certificate_or_signature_on_the_wire_when_resuming() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    full = transcript(alice.initiator(BOB_CERT), bob.responder())
    connect(alice, bob)
    resumed = transcript(alice.initiator(BOB_CERT), bob.responder())
    assert len(resumed) < len(full) / 2  # the full one carries two certificates and signatures
    for cert in (ALICE_CERT, BOB_CERT):
        assert cert.public_key not in resumed and cert.node_id not in resumed


def test_unknown_ticket_falls_back_to_the_full_handshake_in_the_same_round_trip() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    connect(alice, bob)
    forgetful = Side(BOB, BOB_CERT)  # Bob after a restart: no tickets
    i, r = alice.initiator(BOB_CERT), forgetful.responder()
    assert step(i, r) is None
    ei = step(r, i)
    er = step(i, r)
    assert ei is not None and er is not None
    assert not ei.resumed and not er.resumed
    assert ei.peer == BOB_CERT and er.peer == ALICE_CERT
    assert_keys_work(ei, er)
    assert ei.ticket.tid == er.ticket.tid  # and a fresh ticket from it


def test_fallback_reply_is_a_hello_reply() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    connect(alice, bob)
    r = Side(BOB, BOB_CERT).responder()
    i = alice.initiator(BOB_CERT)
    step(i, r)
    assert isinstance(wire.decode_any(message(r), (HelloReply,)), HelloReply)


def test_responder_without_ticket_store_runs_the_full_handshake() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    connect(alice, bob)
    i = alice.initiator(BOB_CERT)
    r = Handshake(Role.RESPONDER, BOB, BOB_CERT, PARAMS, SeededRng(5))
    step(i, r)
    ei, er = step(r, i), step(i, r)
    assert ei is not None and er is not None and not er.resumed and er.peer == ALICE_CERT


def test_other_network_on_a_resume_hello_is_answered_as_for_a_hello() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    connect(alice, bob)
    ticket = alice.dial.take(BOB_CERT.node_id, NOW, ALICE_CERT)
    assert ticket is not None
    hello = wire.encode(ResumeHello(b"some-other-net!!", ticket.tid, bytes(32), bytes(32)))
    r = bob.responder()
    r.receive_data(framed(hello))
    with pytest.raises(HandshakeError, match="network"):
        r.next_event(NOW)
    assert isinstance(wire.decode_any(message(r), (OtherNetworkReply,)), OtherNetworkReply)


# -- expiry and certificates -------------------------------------------------------------------


def test_expired_ticket_is_not_used_by_either_side() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    ei, _ = connect(alice, bob)
    late = NOW + TICKET_LIFETIME
    assert alice.dial.take(BOB_CERT.node_id, late, ALICE_CERT) is None  # initiator: a Hello
    # An initiator whose clock lags still offers it: the responder refuses it, full handshake.
    i, r = alice.initiator(BOB_CERT, resume=ei.ticket), bob.responder()
    assert step(i, r, late) is None
    ei2, er2 = step(r, i, late), step(i, r, late)
    assert ei2 is not None and er2 is not None and not er2.resumed
    assert ei2.ticket.expires == late + TICKET_LIFETIME  # a new chain


def test_ticket_never_outlives_either_certificate() -> None:
    short = NodeCert.issue(BOB, (), NOW - PARAMS.cert_lifetime + 100, PARAMS)  # expires NOW+100
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, short)
    ei, er = connect(alice, bob)
    assert ei.ticket.expires == er.ticket.expires == short.expires
    assert alice.dial.take(short.node_id, short.expires, ALICE_CERT) is None


def test_a_renewed_certificate_is_shown_in_a_full_handshake() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    connect(alice, bob)
    renewed = NodeCert.issue(ALICE, (), NOW + 1, PARAMS)
    assert alice.dial.take(BOB_CERT.node_id, NOW, renewed) is None
    # ... and a responder whose own certificate changed does not resume either.
    alice2 = Side(ALICE, ALICE_CERT)
    connect(alice2, bob)
    bob.cert = NodeCert.issue(BOB, (), NOW + 1, PARAMS)
    i = alice2.initiator(BOB_CERT)
    r = bob.responder()
    step(i, r)
    ei, er = step(r, i), step(i, r)
    assert ei is not None and er is not None and not er.resumed and ei.peer == bob.cert


def test_misuse_is_a_local_error() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    ei, _ = connect(alice, bob)
    t = ei.ticket
    with pytest.raises(LocalProtocolError):  # a ticket for Bob, dialling Carol
        Handshake(Role.INITIATOR, ALICE, ALICE_CERT, PARAMS, SeededRng(1),
                  expect=CAROL_CERT.node_id, resume=t)
    with pytest.raises(LocalProtocolError):  # no expected node
        Handshake(Role.INITIATOR, ALICE, ALICE_CERT, PARAMS, SeededRng(1), resume=t)
    with pytest.raises(LocalProtocolError):  # the ticket was made for another identity
        Handshake(Role.INITIATOR, CAROL, CAROL_CERT, PARAMS, SeededRng(1),
                  expect=BOB_CERT.node_id, resume=t)
    with pytest.raises(LocalProtocolError):
        Handshake(Role.INITIATOR, ALICE, ALICE_CERT, PARAMS, SeededRng(1), tickets=Tickets())


def test_tickets_are_bounded_oldest_first_and_zero_disables() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    ei, _ = connect(alice, bob)
    store = Tickets(capacity=3)
    for n in range(5):
        store.put(bytes([n]) * 32, ei.ticket)
    assert len(store) == 3 and bytes(32) not in store and bytes([4]) * 32 in store
    store.put(bytes([2]) * 32, ei.ticket)  # re-filed: now the newest
    store.put(bytes([9]) * 32, ei.ticket)
    assert bytes([3]) * 32 not in store and bytes([2]) * 32 in store
    off = Tickets(capacity=0)
    off.put(bytes(32), ei.ticket)
    assert len(off) == 0


# -- attacks -----------------------------------------------------------------------------------


@pytest.mark.threat("T-RESUME-LINK")
def test_ticket_ids_never_repeat_and_name_nobody() -> None:
    """A passive observer sees each tid once: successive connections of one pair carry
    unrelated ids, and no ResumeHello holds a node id or key of either side."""
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    connect(alice, bob)
    seen: list[bytes] = []
    for _ in range(20):
        i, r = alice.initiator(BOB_CERT), bob.responder()
        hello = i.data_to_send()
        msg = wire.decode_any(hello[LENGTH_SIZE:], (ResumeHello,))
        assert isinstance(msg, ResumeHello)
        seen.append(msg.ticket)
        for cert in (ALICE_CERT, BOB_CERT):
            assert cert.node_id not in hello and cert.public_key not in hello
        r.receive_data(hello)
        r.next_event(NOW)
        ei, er = step(r, i), step(i, r)
        assert ei is not None and er is not None and ei.resumed
        alice.dial.put(BOB_CERT.node_id, ei.ticket)
        bob.accept.put(er.ticket.tid, er.ticket)
    assert len(set(seen)) == len(seen)
    assert len(bob.accept) == 1  # each used ticket was deleted, the newest kept


@pytest.mark.threat("T-RESUME-FORGE")
def test_replayed_resume_hello_gets_a_full_handshake() -> None:
    """A recorded ResumeHello replayed (or an initiator offering a ticket twice) finds the
    ticket spent: the responder runs the full handshake, which the replayer cannot finish."""
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    ei, _ = connect(alice, bob)
    i, r = alice.initiator(BOB_CERT, resume=ei.ticket), bob.responder()
    recorded = i.data_to_send()
    r.receive_data(recorded)
    r.next_event(NOW)
    i.receive_data(r.data_to_send())
    assert isinstance(i.next_event(NOW), Established)
    assert step(i, r) is not None  # the honest resumption completes
    replay = bob.responder()
    replay.receive_data(recorded)
    replay.next_event(NOW)
    assert isinstance(wire.decode_any(message(replay), (HelloReply,)), HelloReply)
    # Alice offering the spent ticket again is treated the same way and still gets through.
    again, r2 = alice.initiator(BOB_CERT, resume=ei.ticket), bob.responder()
    step(again, r2)
    ei2, er2 = step(r2, again), step(again, r2)
    assert ei2 is not None and er2 is not None and not er2.resumed and er2.peer == ALICE_CERT


@pytest.mark.threat("T-RESUME-FORGE")
def test_observer_naming_a_ticket_cannot_complete_the_resumption() -> None:
    """Mallory saw a tid on the wire (say, she dropped Alice's packet) and sends her own
    ResumeHello with it: without rs she can check nothing and confirm nothing."""
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    connect(alice, bob)
    i = alice.initiator(BOB_CERT)
    observed = wire.decode_any(message(i), (ResumeHello,))
    assert isinstance(observed, ResumeHello)
    eph = crypto.KeyPair.generate(SeededRng(666))
    forged = wire.encode(ResumeHello(PARAMS.network_id, observed.ticket, eph.public, bytes(32)))
    r = bob.responder()
    r.receive_data(framed(forged))
    r.next_event(NOW)
    assert state(r) is State.AWAIT_RESUME_AUTH  # the ticket existed: spent now
    r.data_to_send()
    guess = wire.encode(ResumeAuth(crypto.hash("guess", observed.ticket)))
    r.receive_data(framed(guess))
    with pytest.raises(HandshakeError, match="does not hold"):
        r.next_event(NOW)
    assert r.state is State.FAILED and r.peer is None
    assert len(bob.accept) == 0


@pytest.mark.threat("T-RESUME-FORGE")
def test_tampered_confirmations_fail_the_handshake() -> None:
    for flip_reply in (True, False):
        alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
        connect(alice, bob)
        i, r = alice.initiator(BOB_CERT), bob.responder()
        step(i, r)
        reply = bytearray(r.data_to_send())
        if flip_reply:
            reply[-1] ^= 0x01  # the last byte of cR
            i.receive_data(bytes(reply))
            with pytest.raises(HandshakeError, match="does not hold"):
                i.next_event(NOW)
            assert i.state is State.FAILED and i.data_to_send() == b""  # no ResumeAuth
            continue
        i.receive_data(bytes(reply))
        assert isinstance(i.next_event(NOW), Established)
        auth = bytearray(i.data_to_send())
        auth[-1] ^= 0x01  # the last byte of cI
        r.receive_data(bytes(auth))
        with pytest.raises(RemoteProtocolError):
            r.next_event(NOW)
        assert r.state is State.FAILED


@pytest.mark.threat("T-RESUME-FORGE")
def test_substituted_responder_ephemeral_fails() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    connect(alice, bob)
    i, r = alice.initiator(BOB_CERT), bob.responder()
    step(i, r)
    reply = wire.decode_any(message(r), (ResumeReply,))
    assert isinstance(reply, ResumeReply)
    mitm = crypto.KeyPair.generate(SeededRng(66)).public
    i.receive_data(framed(wire.encode(ResumeReply(mitm, reply.nonce, reply.confirm))))
    with pytest.raises(HandshakeError):
        i.next_event(NOW)


@pytest.mark.threat("T-RESUME-FORGE")
def test_resume_reply_to_a_plain_hello_is_refused() -> None:
    i = Handshake(Role.INITIATOR, ALICE, ALICE_CERT, PARAMS, SeededRng(1),
                  expect=BOB_CERT.node_id)
    i.data_to_send()
    i.receive_data(framed(wire.encode(ResumeReply(bytes(32), bytes(32), bytes(32)))))
    with pytest.raises(HandshakeError, match="offered no ticket"):
        i.next_event(NOW)


@pytest.mark.threat("T-RESUME-FORGE")
def test_tampered_first_frame_after_resumption_fails_as_any_frame() -> None:
    alice, bob = Side(ALICE, ALICE_CERT), Side(BOB, BOB_CERT)
    connect(alice, bob)
    ei, er = connect(alice, bob)
    assert ei.resumed
    frame = bytearray(FrameEncoder(ei.keys.send, 100).encode(b"request"))
    frame[-1] ^= 0x01
    dec = FrameDecoder(er.keys.recv, 100)
    dec.receive_data(bytes(frame))
    with pytest.raises(DecryptError):
        dec.next_frame()
