"""An address identity: the keys that speak for one e-mail address, and its AddressCert.

An identity is an Ed25519 sign key (owner proofs for READ/ACK, the sender's signature on every
sealed header: non-repudiation, seed 003 §3.3), an X25519 seal key (what senders seal headers
to, DESIGN.md §5) and the AddressCert binding both to the address: self-certifying
`name@<fingerprint>.anon` (no CA) or `name@domain` issued by a CA the network trusts
(seeds 000, 002). On disk it is one key file sealed under a passphrase with purpose "address"
(crypto/keyfile.py: argon2id + XChaCha20-Poly1305, 0600, never overwritten by accident).

Invariants: the certificate names exactly this identity's two public keys (checked on every
construction and load); secrets never appear in `repr`; keys come from the injected Rng (a real
agent passes `SystemRng`).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from anonmail import crypto, wire
from anonmail.crypto import keyfile
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.fileio import create_private, write_private
from anonmail.records import certs
from anonmail.records.certs import AddressCert
from anonmail.rng import Rng
from anonmail.wire import Size

KEY_PURPOSE = "address"
DEFAULT_LIFETIME = 365 * 86400


@wire.message(tag=100)
@dataclass(frozen=True, slots=True)
class AddressSecret:
    """What an address key file holds (inside the passphrase seal)."""

    sign_seed: Annotated[bytes, Size(32)]
    seal_secret: Annotated[bytes, Size(32)]
    cert: AddressCert


def new_keys(rng: Rng) -> tuple[crypto.SigningKey, crypto.KeyPair]:
    """A fresh sign key and seal key (give their publics to a CA, or self-certify)."""
    return crypto.SigningKey.generate(rng), crypto.KeyPair.generate(rng)


def _utc(t: int) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class AddressIdentity:
    sign: crypto.SigningKey
    seal: crypto.KeyPair
    cert: AddressCert

    def __post_init__(self) -> None:
        if self.cert.sign_key != self.sign.public or self.cert.seal_key != self.seal.public:
            raise UserError("the address certificate names other keys than this identity's")

    def __repr__(self) -> str:  # the address is personal data: not in reprs or logs
        return f"AddressIdentity(sign={self.sign.public.hex()[:16]}…)"

    @property
    def address(self) -> str:
        return self.cert.address

    # -- making ----------------------------------------------------------------------------------

    @classmethod
    def create_anon(cls, name: str, rng: Rng, now: float,
                    lifetime: int = DEFAULT_LIFETIME) -> AddressIdentity:
        """A new self-certifying `name@<fingerprint>.anon` identity (no CA needed)."""
        sign, seal = new_keys(rng)
        return cls(sign, seal, certs.self_certify(name, sign, seal.public, now, lifetime))

    @classmethod
    def from_ca(cls, sign: crypto.SigningKey, seal: crypto.KeyPair,
                cert: AddressCert) -> AddressIdentity:
        """An identity for a CA-issued certificate of these keys."""
        if certs.is_anon_address(cert.address):
            raise UserError(".anon addresses are self-certifying: use create_anon")
        return cls(sign, seal, cert)

    def renewed(self, cert: AddressCert) -> AddressIdentity:
        """The same keys with a new certificate (renewal)."""
        if cert.address != self.address:
            raise UserError("the new certificate is for another address")
        return AddressIdentity(self.sign, self.seal, cert)

    def check(self, trusted_cas: frozenset[bytes], now: float, skew: int) -> None:
        """UserError unless our own certificate is valid now (before sending or checking)."""
        try:
            self.cert.verify(trusted_cas, now, skew)
        except RemoteProtocolError as e:
            if now > self.cert.expires:
                raise UserError(f"your address certificate expired on "
                                f"{_utc(self.cert.expires)}: renew it") from None
            raise UserError(f"your address certificate is not valid: {e}") from None

    # -- key file --------------------------------------------------------------------------------

    def to_secret(self) -> bytes:
        return wire.encode(AddressSecret(self.sign.seed(), self.seal.secret, self.cert))

    @classmethod
    def from_secret(cls, data: bytes) -> AddressIdentity:
        try:
            s = wire.decode(data, AddressSecret, max_size=4096)
        except RemoteProtocolError:
            raise UserError("the address key file is damaged") from None
        seal = crypto.KeyPair(s.seal_secret, crypto.public_from_secret(s.seal_secret))
        return cls(crypto.SigningKey(s.sign_seed), seal, s.cert)

    def save(self, path: Path, passphrase: str, rng: Rng, *,
             params: crypto.PassphraseParams = crypto.MODERATE, replace: bool = False) -> None:
        """Write the key file (0600). Refuses to overwrite unless `replace` (a renewal)."""
        sealed = keyfile.seal(self.to_secret(), passphrase, KEY_PURPOSE, rng, params)
        if replace:
            write_private(path, sealed)
            return
        try:
            create_private(path, sealed)
        except FileExistsError:
            raise UserError(f"{path} exists: an address key file is never overwritten") from None

    @classmethod
    def load(cls, path: Path, passphrase: str) -> AddressIdentity:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read the address key file {path}: {e.strerror}") from None
        return cls.from_secret(keyfile.open_sealed(data, passphrase, KEY_PURPOSE))
