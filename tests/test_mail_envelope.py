"""Sealed boxes (crypto.seal_to / open_sealed_box), address identities (mail/identity.py) and
the per-recipient sealed header (mail/envelope.py): sealing, padding, signature, Bcc rule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonmail import crypto, wire
from anonmail.clock import FixedClock
from anonmail.errors import DecryptError, RemoteProtocolError, UserError
from anonmail.mail import envelope
from anonmail.mail.compose import compose
from anonmail.mail.envelope import BodyFacts, BodyLayout, ForgedHeader, MailHeader
from anonmail.mail.identity import AddressIdentity, new_keys
from anonmail.records import ids
from anonmail.records.certs import CertificateAuthority
from anonmail.rng import SeededRng
from anonmail.store.messages import MAX_ENTRY

NOW = 1_800_000_000.0
SKEW = 600
MAX_AGE = 30 * 86400
CA = CertificateAuthority(crypto.SigningKey(b"\x42" * 32))
TRUSTED = frozenset({CA.public})


def ident(name: str) -> AddressIdentity:
    return AddressIdentity.create_anon(name, SeededRng(name.encode()), NOW - 10)


ALICE, BOB, CAROL, DAVE = (ident(n) for n in ("alice", "bob", "carol", "dave"))
FACTS = BodyFacts(b"\x01" * 32, b"\x02" * 32, 1234, BodyLayout.INLINE, 0, int(NOW) + 86400)


def headers(subject: str = "hello") -> dict[str, MailHeader]:
    msg = compose(ALICE.address, [BOB.address], [CAROL.address], [DAVE.address], subject,
                  "body\n", [], FixedClock(NOW), SeededRng(1))
    secrets = {a: crypto.hash("secret", a.encode()) for a in msg.recipients}
    return envelope.build_headers(msg, ALICE.cert, ALICE.sign, FACTS, secrets)


def verify(h: MailHeader, me: AddressIdentity) -> None:
    envelope.verify_header(h, me.address, TRUSTED, NOW, SKEW, MAX_AGE)


# -- sealed boxes ---------------------------------------------------------------------------------


@given(st.binary(max_size=2000), st.binary(max_size=64), st.integers(0, 2**32))
def test_sealed_box_roundtrip_and_binding(pt: bytes, ad: bytes, seed: int) -> None:
    rng = SeededRng(seed)
    kp, other = crypto.KeyPair.generate(rng), crypto.KeyPair.generate(rng)
    ct = crypto.seal_to(kp.public, pt, rng, ad)
    assert len(ct) == len(pt) + crypto.SEALED_BOX_OVERHEAD
    assert crypto.open_sealed_box(kp.secret, ct, ad) == pt
    with pytest.raises(DecryptError):
        crypto.open_sealed_box(other.secret, ct, ad)
    with pytest.raises(DecryptError):
        crypto.open_sealed_box(kp.secret, ct, ad + b"x")
    for i in (0, 31, 32, len(ct) - 1):  # the ephemeral key, the ciphertext, the tag
        bad = ct[:i] + bytes([ct[i] ^ 1]) + ct[i + 1:]
        with pytest.raises(DecryptError):
            crypto.open_sealed_box(kp.secret, bad, ad)


def test_sealed_boxes_hide_the_sealer_and_never_repeat() -> None:
    rng = SeededRng(3)
    kp = crypto.KeyPair.generate(rng)
    a, b = crypto.seal_to(kp.public, b"same", rng), crypto.seal_to(kp.public, b"same", rng)
    assert a != b and a[:32] != b[:32]  # a fresh ephemeral key each time
    with pytest.raises(DecryptError):
        crypto.open_sealed_box(kp.secret, a[:10])
    with pytest.raises(DecryptError):  # a low-order ephemeral key
        crypto.open_sealed_box(kp.secret, bytes(32) + a[32:])
    assert crypto.public_from_secret(kp.secret) == kp.public


# -- identities -----------------------------------------------------------------------------------


def test_identity_key_file_roundtrip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    ALICE.save(path, "pass phrase", SeededRng(9), params=crypto.INTERACTIVE)
    assert (path.stat().st_mode & 0o777) == 0o600
    back = AddressIdentity.load(path, "pass phrase")
    assert back.cert == ALICE.cert and back.sign.public == ALICE.sign.public
    assert back.seal == ALICE.seal
    with pytest.raises(UserError, match="never overwritten"):
        BOB.save(path, "x", SeededRng(1), params=crypto.INTERACTIVE)
    with pytest.raises(UserError, match="wrong passphrase"):
        AddressIdentity.load(path, "wrong")
    with pytest.raises(UserError, match="cannot read"):
        AddressIdentity.load(tmp_path / "missing.key", "x")
    BOB.save(path, "other", SeededRng(1), params=crypto.INTERACTIVE, replace=True)
    assert AddressIdentity.load(path, "other").address == BOB.address
    assert ALICE.address not in repr(ALICE) and "alice" not in repr(ALICE)


def test_identity_certificate_must_name_its_keys() -> None:
    sign, seal = new_keys(SeededRng(4))
    cert = CA.issue("erin@example.org", sign.public, seal.public, NOW)
    erin = AddressIdentity.from_ca(sign, seal, cert)
    erin.check(TRUSTED, NOW, SKEW)
    with pytest.raises(UserError, match="other keys"):
        AddressIdentity.from_ca(sign, ALICE.seal, cert)
    with pytest.raises(UserError, match="self-certifying"):
        AddressIdentity.from_ca(ALICE.sign, ALICE.seal, ALICE.cert)
    with pytest.raises(UserError, match="expired"):
        erin.check(TRUSTED, cert.expires + 7200, SKEW)
    with pytest.raises(UserError, match="not valid"):
        erin.check(frozenset(), NOW, SKEW)
    with pytest.raises(UserError, match="another address"):
        erin.renewed(ALICE.cert)


# -- headers --------------------------------------------------------------------------------------


@pytest.mark.threat("T-MAIL-BCC")
def test_bcc_recipients_appear_only_in_their_own_header() -> None:
    hs = headers()
    assert set(hs) == {BOB.address, CAROL.address, DAVE.address}
    assert hs[DAVE.address].bcc == (DAVE.address,)
    for a in (BOB.address, CAROL.address):
        assert hs[a].bcc == () and DAVE.address.encode() not in wire.encode(hs[a])
    for a, me in ((BOB.address, BOB), (CAROL.address, CAROL), (DAVE.address, DAVE)):
        assert hs[a].recipient == a
        verify(hs[a], me)
    with pytest.raises(ForgedHeader, match="other Bcc"):
        verify(envelope.sign_header(replace(hs[DAVE.address], bcc=(DAVE.address, BOB.address)),
                                    ALICE.sign), DAVE)


@pytest.mark.threat("T-MAIL-HEADERS")
def test_sealed_headers_hide_everything_and_pad_to_blocks() -> None:
    rng = SeededRng(8)
    inbox = ids.inbox_key(BOB.address)
    sizes = []
    for subject in ("", "Secret plan Q3", "a long subject " * 60):
        h = headers(subject)[BOB.address]
        entry = envelope.seal_header(h, BOB.seal.public, inbox, rng)
        for secret in (subject.encode() or b"\x00" * 64, BOB.address.encode(),
                       ALICE.address.encode(), CAROL.address.encode(), h.message_id.encode(),
                       h.body_key, h.delete_secret):
            assert secret not in entry
        sizes.append(len(entry))
        box = wire.decode(entry, envelope.SealedHeader).box
        assert (len(box) - crypto.SEALED_BOX_OVERHEAD) % envelope.PAD_BLOCK == 0
        assert len(entry) < MAX_ENTRY
        assert envelope.open_entry(entry, BOB.seal, inbox).header == h
    assert sizes[0] == sizes[1] < sizes[2]  # a short and an empty subject look the same


@pytest.mark.threat("T-MAIL-FORGE")
def test_header_verification_refuses_forgeries() -> None:
    h = headers()[BOB.address]
    mallory = ident("mallory")
    verify(h, BOB)
    cases = {
        "another recipient": (h, CAROL),
        "not authentic": (replace(h, subject="altered"), BOB),  # signature no longer matches
        "not authentic ": (envelope.sign_header(replace(h, subject="x"), mallory.sign), BOB),
        "future": (envelope.sign_header(replace(h, date=int(NOW) + 3600), ALICE.sign), BOB),
        "too old": (envelope.sign_header(replace(h, date=int(NOW) - MAX_AGE - 3600),
                                         ALICE.sign), BOB),
        "message id": (envelope.sign_header(replace(h, message_id="<x@host.example>"),
                                            ALICE.sign), BOB),
        "layout": (envelope.sign_header(replace(h, fragments=3), ALICE.sign), BOB),
        "does not list": (envelope.sign_header(replace(h, to=(), cc=()), ALICE.sign), BOB),
    }
    for why, (bad, me) in cases.items():
        with pytest.raises(ForgedHeader, match=why.strip()):
            verify(bad, me)
    # Valid when signed: mail signed while the sender's certificate was valid still verifies
    # after it lapsed (it may wait in the inbox); mail dated after the lapse does not.
    end = ALICE.cert.expires
    while_valid = envelope.sign_header(replace(h, date=end - 86400), ALICE.sign)
    envelope.verify_header(while_valid, BOB.address, TRUSTED, end + 5 * 86400, SKEW, MAX_AGE)
    after = envelope.sign_header(replace(h, date=end + 86400), ALICE.sign)
    with pytest.raises(ForgedHeader, match="expired"):
        envelope.verify_header(after, BOB.address, TRUSTED, end + 5 * 86400, SKEW, MAX_AGE)


def test_entries_open_only_for_their_key_and_inbox() -> None:
    rng = SeededRng(2)
    h = headers()[BOB.address]
    inbox = ids.inbox_key(BOB.address)
    entry = envelope.seal_header(h, BOB.seal.public, inbox, rng)
    with pytest.raises(DecryptError):
        envelope.open_entry(entry, CAROL.seal, inbox)
    with pytest.raises(DecryptError):  # moved into another inbox by a storage node
        envelope.open_entry(entry, BOB.seal, ids.inbox_key(CAROL.address))
    for junk in (b"", b"junk", wire.encode(envelope.SealedHeader(b"\x00" * 60))):
        with pytest.raises(RemoteProtocolError):
            envelope.open_entry(junk, BOB.seal, inbox)
    # Non-zero padding is refused (the padding is covered by the seal, but must be canonical).
    plain = wire.encode(envelope.HeaderPlain(h, None, (), 0, b"", b"\x01"))
    boxed = wire.encode(envelope.SealedHeader(crypto.seal_to(
        BOB.seal.public, plain, rng, b"anonmail/mail-header\x00" + inbox)))
    with pytest.raises(RemoteProtocolError, match="padding"):
        envelope.open_entry(boxed, BOB.seal, inbox)
