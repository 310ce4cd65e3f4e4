"""Secret keys encrypted at rest under a passphrase (argon2id → XChaCha20-Poly1305).

The sealed form is a wire record holding the argon2id costs and salt, so a file written with
today's costs still opens after the defaults rise. The AEAD's associated data binds the purpose
label, so a node key file cannot be swapped in where an address key file is expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from anonmail import crypto, wire
from anonmail.errors import DecryptError, UserError
from anonmail.rng import Rng
from anonmail.wire import Range, Size


@wire.message(tag=4)
@dataclass(frozen=True, slots=True)
class SealedKey:
    purpose: Annotated[str, Size(1, 32)]
    opslimit: Annotated[int, Range(1, 1 << 32)]
    memlimit: Annotated[int, Range(1, 1 << 34)]
    salt: Annotated[bytes, Size(crypto.ARGON2_SALT_SIZE)]
    nonce: Annotated[bytes, Size(crypto.AEAD_NONCE_SIZE)]
    ciphertext: Annotated[bytes, Size(1, 4096)]


def seal(secret: bytes, passphrase: str, purpose: str, rng: Rng,
         params: crypto.PassphraseParams = crypto.MODERATE) -> bytes:
    if not passphrase:
        raise UserError("an empty passphrase protects nothing: choose one")
    salt = rng.bytes(crypto.ARGON2_SALT_SIZE)
    nonce = rng.bytes(crypto.AEAD_NONCE_SIZE)
    key = crypto.passphrase_key(passphrase.encode(), salt, params)
    ct = crypto.aead_encrypt(key, nonce, secret, purpose.encode())
    return wire.encode(SealedKey(purpose, params.opslimit, params.memlimit, salt, nonce, ct))


def open_sealed(data: bytes, passphrase: str, purpose: str) -> bytes:
    try:
        sealed = wire.decode(data, SealedKey, max_size=8192)
    except Exception as e:
        raise UserError("the key file is damaged or not an anonmail key file") from e
    if sealed.purpose != purpose:
        raise UserError(f"this key file holds a {sealed.purpose} key, not a {purpose} key")
    key = crypto.passphrase_key(passphrase.encode(), sealed.salt,
                                crypto.PassphraseParams(sealed.opslimit, sealed.memlimit))
    try:
        return crypto.aead_decrypt(key, sealed.nonce, sealed.ciphertext, purpose.encode())
    except DecryptError:
        raise UserError("wrong passphrase for the key file (or the file was altered)") from None
