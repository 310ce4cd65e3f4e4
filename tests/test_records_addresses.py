"""Address certificates (anonmail/records/certs.py): untrusted CAs refused; a .anon address
matches its key and is self-signed only; a certificate's address is in normal form; the shape of
.anon domains and fingerprints; normalizing and refusing address text.
"""

from __future__ import annotations

import dataclasses

import pytest
from signedrecords import ADDRESS_KEY, CA, NOW, SEAL, TRUSTED, anon_cert, ca_cert

from anonmail import crypto, wire
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.records.certs import (
    ADDRESS_CERT_DOMAIN,
    CertificateAuthority,
    anon_address,
    anon_domain,
    fingerprint_words,
    normalize_address,
)


def test_untrusted_ca_refused() -> None:
    rogue = CertificateAuthority(crypto.SigningKey(b"\x66" * 32))
    cert = rogue.issue("alice@example.com", ADDRESS_KEY.public, SEAL.public, NOW)
    with pytest.raises(RemoteProtocolError, match="untrusted CA"):
        cert.verify(TRUSTED, NOW)
    cert.verify(TRUSTED | {rogue.public}, NOW)
    # a cert naming a trusted CA as issuer but signed by the rogue
    claimed = dataclasses.replace(cert, issuer=CA.public)
    with pytest.raises(RemoteProtocolError):
        claimed.verify(TRUSTED, NOW)


def test_anon_address_must_match_its_key() -> None:
    other = crypto.SigningKey(b"\x0b" * 32)
    good = anon_cert()
    # someone else's key under bob's .anon address, properly self-signed
    unsigned = dataclasses.replace(good, sign_key=other.public, issuer=other.public,
                                   signature=bytes(64))
    forged = dataclasses.replace(unsigned, signature=other.sign(
        ADDRESS_CERT_DOMAIN, wire.signing_bytes(unsigned)))
    with pytest.raises(RemoteProtocolError, match="does not match"):
        forged.verify(frozenset(), NOW)


def test_anon_certs_are_self_signed_only() -> None:
    with pytest.raises(UserError):
        CA.issue(anon_address("bob", ADDRESS_KEY.public), ADDRESS_KEY.public, SEAL.public, NOW)
    good = anon_cert()
    unsigned = dataclasses.replace(good, issuer=CA.public, signature=bytes(64))
    by_ca = dataclasses.replace(unsigned, signature=CA.key.sign(
        ADDRESS_CERT_DOMAIN, wire.signing_bytes(unsigned)))
    with pytest.raises(RemoteProtocolError, match="self-signed"):
        by_ca.verify(TRUSTED, NOW)


def test_address_cert_with_non_normal_address_refused() -> None:
    for address in ("Alice@Example.COM", " alice@example.com", "alice@@example.com",
                    "alice@" + anon_domain(ADDRESS_KEY.public).upper()):
        unsigned = dataclasses.replace(ca_cert(), address=address, signature=bytes(64))
        cert = dataclasses.replace(unsigned, signature=CA.key.sign(
            ADDRESS_CERT_DOMAIN, wire.signing_bytes(unsigned)))
        with pytest.raises(RemoteProtocolError):
            cert.verify(TRUSTED, NOW)


def test_anon_address_shape() -> None:
    domain = anon_domain(ADDRESS_KEY.public)
    assert domain.endswith(".anon") and len(domain) == 32 + len(".anon")
    assert domain == domain.lower()
    assert anon_domain(crypto.SigningKey(b"\x01" * 32).public) != domain
    words = fingerprint_words(ADDRESS_KEY.public)
    assert len(words.split()) == 8 and all(len(w) == 4 for w in words.split())


@pytest.mark.parametrize(
    ("text", "normal"),
    [("alice@example.com", "alice@example.com"), ("Alice@Example.COM", "Alice@example.com"),
     ("  bob@mail.example.org\n", "bob@mail.example.org"),
     ("first.last+tag@ex-ample.co", "first.last+tag@ex-ample.co"),
     ("a!#$%&'*+/=?^_`{|}~-@x.io", "a!#$%&'*+/=?^_`{|}~-@x.io"),
     ("x" * 64 + "@example.com", "x" * 64 + "@example.com")],
)
def test_normalize_address(text: str, normal: str) -> None:
    assert normalize_address(text) == normal
    assert normalize_address(normal) == normal


@pytest.mark.parametrize(
    "text",
    ["", "alice", "@example.com", "alice@", "a@b@example.com", "alice@example",
     "alice@localhost", "a..b@example.com", ".a@example.com", "a.@example.com",
     "a b@example.com", '"a b"@example.com', "ä@example.com", "alice@exämple.com",
     "alice@-example.com", "alice@example-.com", "alice@example.c", "alice@example.123",
     "alice@[127.0.0.1]", "x" * 65 + "@example.com",
     "a@" + ".".join(["x" * 60] * 5) + ".com", "alice@example.com\x00", "alice@exa_mple.com"],
    ids=lambda t: t[:30],
)
def test_normalize_address_refuses(text: str) -> None:
    with pytest.raises(UserError):
        normalize_address(text)
