"""The handshake state machine, driven in memory (no sockets): success, and each attack."""

from __future__ import annotations

import pytest

from anonmail import crypto, wire
from anonmail.clock import FixedClock
from anonmail.errors import (
    BadSignature,
    DecryptError,
    LocalProtocolError,
    RemoteProtocolError,
)
from anonmail.net.frames import FrameDecoder, FrameEncoder
from anonmail.net.handshake import (
    LENGTH_SIZE,
    MAX_MESSAGE,
    NEED_DATA,
    Established,
    Handshake,
    HandshakeError,
    Hello,
    HelloReply,
    Role,
    State,
)
from anonmail.records import params
from anonmail.records.certs import CertCache, NodeCert
from anonmail.rng import SeededRng

PARAMS = params.testnet(puzzle_bits=0)
NOW = FixedClock().now()


def key(n: int) -> crypto.SigningKey:
    return crypto.SigningKey.generate(SeededRng(n))


def cert_for(k: crypto.SigningKey | StolenIdentity, p: params.NetworkParams = PARAMS) -> NodeCert:
    assert isinstance(k, crypto.SigningKey)
    return NodeCert.issue(k, (), NOW, p)


ALICE, BOB, MALLORY = key(1), key(2), key(3)
ALICE_CERT, BOB_CERT, MALLORY_CERT = cert_for(ALICE), cert_for(BOB), cert_for(MALLORY)


class StolenIdentity:
    """Mallory with Bob's (public) certificate: she can present it, but signs with her own key."""

    def __init__(self, victim: bytes, own: crypto.SigningKey) -> None:
        self.public = victim
        self._own = own

    def sign(self, domain: str, message: bytes) -> bytes:
        return self._own.sign(domain, message)


def initiator(k: crypto.SigningKey | StolenIdentity = ALICE, cert: NodeCert = ALICE_CERT,
              p: params.NetworkParams = PARAMS, expect: bytes | None = None,
              seed: int = 10) -> Handshake:
    return Handshake(Role.INITIATOR, k, cert, p, SeededRng(seed), expect=expect)


def responder(k: crypto.SigningKey | StolenIdentity = BOB, cert: NodeCert = BOB_CERT,
              p: params.NetworkParams = PARAMS, seed: int = 20) -> Handshake:
    return Handshake(Role.RESPONDER, k, cert, p, SeededRng(seed))


def step(src: Handshake, dst: Handshake) -> Established | None:
    """Move src's pending bytes to dst and let dst react."""
    dst.receive_data(src.data_to_send())
    event = dst.next_event(NOW)
    return event if isinstance(event, Established) else None


def run(i: Handshake, r: Handshake) -> tuple[Established, Established]:
    assert step(i, r) is None  # Hello
    ei = step(r, i)  # HelloReply
    er = step(i, r)  # HelloAuth
    assert ei is not None and er is not None
    return ei, er


def test_honest_handshake() -> None:
    i, r = initiator(expect=BOB_CERT.node_id), responder()
    ei, er = run(i, r)
    assert ei.peer == BOB_CERT and er.peer == ALICE_CERT
    assert ei.keys.send == er.keys.recv and ei.keys.recv == er.keys.send
    assert ei.keys.send != ei.keys.recv
    assert i.state is r.state is State.ESTABLISHED
    # The keys carry frames both ways.
    frame = FrameEncoder(ei.keys.send, 100).encode(b"hi")
    dec = FrameDecoder(er.keys.recv, 100)
    dec.receive_data(frame)
    assert dec.next_frame() == b"hi"


def test_sessions_have_fresh_keys() -> None:
    a, _ = run(initiator(seed=10), responder(seed=20))
    b, _ = run(initiator(seed=11), responder(seed=21))
    assert a.keys.send != b.keys.send


def test_keys_are_not_printed() -> None:
    ei, _ = run(initiator(), responder())
    assert ei.keys.send.hex() not in repr(ei) and "send" not in repr(ei.keys).split("(")[1]


def test_need_data_until_message_complete_and_trailing_data_kept() -> None:
    i, r = initiator(), responder()
    hello = i.data_to_send()
    r.receive_data(hello[:5])
    assert r.next_event(NOW) is NEED_DATA
    r.receive_data(hello[5:])
    assert r.next_event(NOW) is NEED_DATA
    assert r.state is State.AWAIT_AUTH
    assert step(r, i) is not None
    r.receive_data(i.data_to_send() + b"first frame bytes")
    assert isinstance(r.next_event(NOW), Established)
    assert r.trailing_data == b"first frame bytes"


def test_cert_cache_is_used() -> None:
    cache = CertCache()
    i = Handshake(Role.INITIATOR, ALICE, ALICE_CERT, PARAMS, SeededRng(1), cert_cache=cache)
    run(i, responder())
    assert cache.verifications == 1


def test_misuse_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Handshake(Role.INITIATOR, ALICE, BOB_CERT, PARAMS, SeededRng(1))  # not our cert
    with pytest.raises(LocalProtocolError):
        Handshake(Role.RESPONDER, BOB, BOB_CERT, PARAMS, SeededRng(1), expect=bytes(32))
    i, r = initiator(), responder()
    run(i, r)
    with pytest.raises(LocalProtocolError):
        i.next_event(NOW)


# -- attacks -----------------------------------------------------------------------------------


@pytest.mark.threat("T-MITM")
def test_wrong_network_refused() -> None:
    other = PARAMS.replace(network_id=b"some-other-net!!")
    i = initiator(cert=cert_for(ALICE, other), p=other)
    with pytest.raises(HandshakeError, match="network"):
        step(i, responder())


@pytest.mark.threat("T-MITM")
def test_unexpected_responder_refused_before_initiator_reveals_itself() -> None:
    i, r = initiator(expect=BOB_CERT.node_id), responder(MALLORY, MALLORY_CERT)
    step(i, r)
    with pytest.raises(HandshakeError, match="not the node we dialled"):
        step(r, i)
    assert i.state is State.FAILED
    assert i.data_to_send() == b""  # HelloAuth (Alice's certificate) was never produced
    with pytest.raises(LocalProtocolError):
        i.receive_data(b"more")


@pytest.mark.threat("T-MITM")
def test_responder_with_stolen_certificate_refused() -> None:
    i = initiator(expect=BOB_CERT.node_id)
    r = responder(StolenIdentity(BOB.public, MALLORY), BOB_CERT)
    step(i, r)
    with pytest.raises(BadSignature):
        step(r, i)


@pytest.mark.threat("T-MITM")
def test_initiator_with_stolen_certificate_refused() -> None:
    i = initiator(StolenIdentity(ALICE.public, MALLORY), ALICE_CERT)
    r = responder()
    step(i, r)
    step(r, i)
    with pytest.raises(BadSignature):
        step(i, r)
    assert r.state is State.FAILED


@pytest.mark.threat("T-MITM")
def test_substituted_ephemeral_key_fails() -> None:
    # A man in the middle swaps in his own ephemeral key: the seal no longer opens.
    i, r = initiator(), responder()
    step(i, r)
    raw = r.data_to_send()[LENGTH_SIZE:]
    reply = wire.decode(raw, HelloReply)
    mitm = crypto.KeyPair.generate(SeededRng(66)).public
    forged = wire.encode(HelloReply(mitm, reply.nonce, reply.sealed))
    i.receive_data(len(forged).to_bytes(LENGTH_SIZE, "big") + forged)
    with pytest.raises(DecryptError):
        i.next_event(NOW)


@pytest.mark.threat("T-MITM")
def test_replayed_initiator_auth_fails_in_a_new_session() -> None:
    i, r = initiator(), responder()
    step(i, r)
    step(r, i)
    recorded_auth = i.data_to_send()
    # Mallory replays Alice's Hello and, later, Alice's HelloAuth to a fresh responder.
    r2 = responder(seed=99)
    i2 = initiator()  # same seed: Mallory can replay the exact Hello bytes
    step(i2, r2)
    r2.receive_data(recorded_auth)
    with pytest.raises(DecryptError):
        r2.next_event(NOW)


@pytest.mark.threat("T-MITM")
def test_expired_certificate_refused() -> None:
    old = NodeCert.issue(BOB, (), NOW - 10 * PARAMS.cert_lifetime, PARAMS)
    i, r = initiator(), responder(BOB, old)
    step(i, r)
    with pytest.raises(RemoteProtocolError, match="not valid now"):
        step(r, i)


@pytest.mark.threat("T-MITM")
def test_tampered_handshake_messages_fail() -> None:
    for index in (LENGTH_SIZE + 5, -1):
        i, r = initiator(), responder()
        step(i, r)
        reply = bytearray(r.data_to_send())
        reply[index] ^= 0x40
        i.receive_data(bytes(reply))
        with pytest.raises(RemoteProtocolError):
            i.next_event(NOW)


@pytest.mark.threat("T-MALFORMED")
def test_low_order_ephemeral_refused() -> None:
    hello = wire.encode(Hello(PARAMS.network_id, bytes(32), bytes(32)))
    r = responder()
    r.receive_data(len(hello).to_bytes(LENGTH_SIZE, "big") + hello)
    with pytest.raises(DecryptError):
        r.next_event(NOW)


@pytest.mark.threat("T-MALFORMED")
def test_oversized_or_garbage_handshake_message_refused() -> None:
    r = responder()
    r.receive_data((MAX_MESSAGE + 1).to_bytes(LENGTH_SIZE, "big"))
    with pytest.raises(HandshakeError):
        r.next_event(NOW)
    r = responder()
    r.receive_data((3).to_bytes(LENGTH_SIZE, "big") + b"\xff\x00\x01")
    with pytest.raises(RemoteProtocolError):
        r.next_event(NOW)
