"""All cryptography anonmail uses; the ONLY module that imports `nacl`.

Primitives: Ed25519 signatures, X25519 key agreement, XChaCha20-Poly1305 AEAD, BLAKE2b-256 hashing
and keyed derivation, argon2id passphrase stretching. Invariants:

* every hash and every signature is domain-separated: the tag names the use, so bytes signed or
  hashed for one purpose can never be replayed as another (DESIGN.md §2);
* hash inputs are length-prefixed, so ("ab", "c") and ("a", "bc") never collide;
* failures raise typed errors (`BadSignature`, `DecryptError`), never nacl's own;
* key generation takes an injected `Rng` (seeded in simulations, the OS CSPRNG for real keys).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import nacl._sodium as _sodium
import nacl.bindings as _b
import nacl.exceptions
import nacl.pwhash.argon2id as _argon2id
import nacl.signing

from anonmail.errors import BadSignature, DecryptError, LocalError, UserError
from anonmail.rng import Rng

HASH_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
AEAD_KEY_SIZE = 32
AEAD_NONCE_SIZE = 24
AEAD_TAG_SIZE = 16
_PREFIX = b"anonmail/v1\x00"


def _frame(part: bytes) -> bytes:
    return len(part).to_bytes(8, "big") + part


def hash(tag: str, *parts: bytes) -> bytes:  # shadows the builtin: the project's one hash
    """BLAKE2b-256 over a domain tag and length-prefixed parts."""
    h = hashlib.blake2b(digest_size=HASH_SIZE)
    h.update(_PREFIX)
    h.update(_frame(tag.encode()))
    for p in parts:
        h.update(_frame(p))
    return h.digest()


def kdf(key: bytes, tag: str, *parts: bytes, size: int = 32) -> bytes:
    """Keyed BLAKE2b: derive `size` bytes from secret `key` for the use named by `tag`."""
    h = hashlib.blake2b(digest_size=size, key=key[:64])
    h.update(_frame(tag.encode()))
    for p in parts:
        h.update(_frame(p))
    return h.digest()


def leading_zero_bits(data: bytes) -> int:
    """Number of leading zero bits (for puzzles and proof-of-work stamps)."""
    n = int.from_bytes(data, "big")
    return len(data) * 8 - n.bit_length()


STAMP_NONCE_SIZE = 8


def _stamp_state(tag: str, parts: tuple[bytes, ...]) -> hashlib.blake2b:
    h = hashlib.blake2b(digest_size=HASH_SIZE)
    h.update(_PREFIX)
    h.update(_frame(tag.encode()))
    for p in parts:
        h.update(_frame(p))
    return h


def stamp_bits(tag: str, parts: tuple[bytes, ...], nonce: bytes) -> int:
    """The work a proof-of-work stamp shows: leading zero bits of hash(tag, *parts, nonce).
    One hash to check, whatever the difficulty (hashcash's asymmetry)."""
    return leading_zero_bits(hash(tag, *parts, nonce))


def mint_stamp(tag: str, parts: tuple[bytes, ...], bits: int, start: int = 0) -> bytes:
    """A nonce whose `stamp_bits` is at least `bits`: about 2**bits hashes of work. `start`
    is where the search begins (give a random one, so two minters do not race the same
    nonces). The framed prefix is hashed once and copied per try, which keeps a try to about
    0.4-0.8 microseconds of CPU (`anonmail bench pow`)."""
    if not 0 <= bits <= 64:
        raise LocalError("stamp difficulty must be 0..64 bits")
    base = _stamp_state(tag, parts)
    head = _frame(bytes(STAMP_NONCE_SIZE))[:8]  # the nonce's length prefix
    limit = 1 << (8 * STAMP_NONCE_SIZE)
    full, rest = divmod(bits, 8)
    mask = (0xFF00 >> rest) & 0xFF
    n = start % limit
    while True:
        nonce = n.to_bytes(STAMP_NONCE_SIZE, "big")
        h = base.copy()
        h.update(head)
        h.update(nonce)
        d = h.digest()
        if not any(d[:full]) and not (rest and d[full] & mask):
            return nonce
        n = (n + 1) % limit


def constant_time_eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _signed_message(domain: str, message: bytes) -> bytes:
    return _PREFIX + _frame(domain.encode()) + message


class SigningKey:
    """An Ed25519 identity key. `public` is the 32-byte verify key."""

    __slots__ = ("_sk", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise LocalError("an Ed25519 seed is 32 bytes")
        self._sk = nacl.signing.SigningKey(seed)
        self.public: bytes = bytes(self._sk.verify_key)

    @classmethod
    def generate(cls, rng: Rng) -> SigningKey:
        return cls(rng.bytes(32))

    def seed(self) -> bytes:
        """The 32-byte secret seed (only for writing an encrypted key file)."""
        return bytes(self._sk)

    def sign(self, domain: str, message: bytes) -> bytes:
        return bytes(self._sk.sign(_signed_message(domain, message)).signature)

    def box_secret(self) -> bytes:
        """The X25519 secret matching `box_public(self.public)`: lets a node open boxes sealed
        to its identity without a second key in its certificate (libsodium's Ed25519 to
        Curve25519 map, as age and ssh-to-age use)."""
        return bytes(_b.crypto_sign_ed25519_sk_to_curve25519(bytes(self._sk) + self.public))

    def __repr__(self) -> str:  # never print secrets
        return f"SigningKey(public={self.public.hex()[:16]}…)"


def box_public(signing_public: bytes) -> bytes:
    """The X25519 public key of an Ed25519 identity key (to `seal_to` a node by its NodeCert).
    Raises DecryptError for a key that is not a valid Edwards point."""
    if len(signing_public) != PUBLIC_KEY_SIZE:
        raise DecryptError("an Ed25519 public key is 32 bytes")
    try:
        return bytes(_b.crypto_sign_ed25519_pk_to_curve25519(signing_public))
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, ValueError) as e:
        raise DecryptError("invalid Ed25519 public key") from e


def verify(public: bytes, domain: str, message: bytes, signature: bytes) -> None:
    """Raise `BadSignature` unless `signature` is `public`'s signature of `message` in `domain`."""
    if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise BadSignature("malformed key or signature")
    try:
        _b.crypto_sign_open(signature + _signed_message(domain, message), public)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as e:
        raise BadSignature(f"bad signature ({domain})") from e


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An X25519 key pair for key agreement."""

    secret: bytes
    public: bytes

    @classmethod
    def generate(cls, rng: Rng) -> KeyPair:
        secret = rng.bytes(32)
        return cls(secret, _b.crypto_scalarmult_base(secret))

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()[:16]}…)"


def x25519(secret: bytes, peer_public: bytes) -> bytes:
    """Diffie-Hellman; raises `RemoteProtocolError` (DecryptError) for low-order peer keys."""
    # PyNaCl passes the buffers to libsodium unchecked: a short key would be read out of bounds.
    if len(secret) != 32:
        raise LocalError("an X25519 secret is 32 bytes")
    if len(peer_public) != PUBLIC_KEY_SIZE:
        raise DecryptError("an X25519 public key is 32 bytes")
    try:
        shared = _b.crypto_scalarmult(secret, peer_public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, ValueError) as e:
        raise DecryptError("invalid X25519 public key") from e
    if shared == bytes(32):
        raise DecryptError("low-order X25519 public key")
    return bytes(shared)


# The AEAD calls libsodium through PyNaCl's own cffi binding (`nacl._sodium`): the
# `nacl.bindings` wrappers check their arguments with eagerly formatted messages and copy the
# output twice, more than the cipher itself costs on the small frames of an RPC (issue 11:
# 5.4 -> 2.3 us a seal). Lengths are checked here instead, before any pointer is handed over.
_ffi, _lib = _sodium.ffi, _sodium.lib
_new_uncleared = _ffi.new_allocator(should_clear_after_alloc=False)


def _aead_args(key: bytes, nonce: bytes, data: bytes, ad: bytes,
               wrong_size: type[Exception] = LocalError) -> None:
    """Our bug (LocalError) if the inputs are not bytes; `wrong_size` if the key or nonce is not
    32 or 24 bytes (on decryption a DecryptError: that key cannot be the one that sealed)."""
    if not type(key) is type(nonce) is type(data) is type(ad) is bytes:
        raise LocalError("AEAD inputs are bytes")
    if len(key) != AEAD_KEY_SIZE or len(nonce) != AEAD_NONCE_SIZE:
        raise wrong_size("AEAD key or nonce of the wrong size: 32 and 24 bytes")


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes = b"") -> bytes:
    """XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03 §2.3), ciphertext || 16-byte tag. The
    caller guarantees a nonce is never reused under a key."""
    _aead_args(key, nonce, plaintext, ad)
    n = len(plaintext) + AEAD_TAG_SIZE
    out = _new_uncleared("unsigned char[]", n)
    _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, _ffi.NULL, plaintext, len(plaintext), ad, len(ad), _ffi.NULL, nonce, key)
    sealed: bytes = _ffi.buffer(out, n)[:]
    return sealed


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes = b"") -> bytes:
    """The plaintext of `aead_encrypt`'s output; DecryptError if anything was altered (or the
    ciphertext is shorter than its tag)."""
    _aead_args(key, nonce, ciphertext, ad, DecryptError)
    n = len(ciphertext) - AEAD_TAG_SIZE
    if n < 0:
        raise DecryptError("ciphertext shorter than its tag")
    out = _new_uncleared("unsigned char[]", max(n, 1))
    if _lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            out, _ffi.NULL, _ffi.NULL, ciphertext, len(ciphertext), ad, len(ad), nonce, key):
        raise DecryptError("ciphertext failed authentication")
    plain: bytes = _ffi.buffer(out, n)[:]
    return plain


def counter_nonce(counter: int) -> bytes:
    """A 24-byte AEAD nonce from a message counter (for keys used for one stream only)."""
    return counter.to_bytes(AEAD_NONCE_SIZE, "little")


@dataclass(frozen=True, slots=True)
class PassphraseParams:
    """argon2id cost. MODERATE is the default for key files; tests may use INTERACTIVE."""

    opslimit: int
    memlimit: int


INTERACTIVE = PassphraseParams(_argon2id.OPSLIMIT_INTERACTIVE, _argon2id.MEMLIMIT_INTERACTIVE)
MODERATE = PassphraseParams(_argon2id.OPSLIMIT_MODERATE, _argon2id.MEMLIMIT_MODERATE)
ARGON2_SALT_SIZE = _argon2id.SALTBYTES


def passphrase_key(passphrase: bytes, salt: bytes, params: PassphraseParams) -> bytes:
    """Stretch a passphrase into a 32-byte key with argon2id."""
    if len(salt) != ARGON2_SALT_SIZE:
        raise DecryptError("bad salt length")
    if not (
        _argon2id.OPSLIMIT_MIN <= params.opslimit <= _argon2id.OPSLIMIT_SENSITIVE
        and _argon2id.MEMLIMIT_MIN <= params.memlimit <= _argon2id.MEMLIMIT_SENSITIVE
    ):
        raise UserError("key file asks for argon2id costs outside the supported range")
    return bytes(
        _argon2id.kdf(AEAD_KEY_SIZE, passphrase, salt, opslimit=params.opslimit,
                      memlimit=params.memlimit)
    )


# ---------------------------------------------------------------------------------------------
# Sealed boxes: anonymous public-key encryption to an X25519 key (mail headers, DESIGN.md §5).

SEALED_BOX_OVERHEAD = PUBLIC_KEY_SIZE + AEAD_TAG_SIZE
_SEAL_TAG = "sealed-box"


def _box_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> tuple[bytes,
                                                                                       bytes]:
    # Both public keys go into the KDF: the key (and nonce) belong to this one ephemeral key and
    # this one recipient, so a box cannot be re-targeted by swapping the ephemeral key for an
    # equivalent point, and a shared secret is never used for two recipients.
    okm = kdf(shared, _SEAL_TAG, ephemeral_public, recipient_public,
              size=AEAD_KEY_SIZE + AEAD_NONCE_SIZE)
    return okm[:AEAD_KEY_SIZE], okm[AEAD_KEY_SIZE:]


def seal_to(public: bytes, plaintext: bytes, rng: Rng, ad: bytes = b"") -> bytes:
    """Encrypt `plaintext` to the holder of X25519 key `public` without revealing who sealed it:
    ephemeral X25519 key, keyed BLAKE2b over the shared secret and both public keys,
    XChaCha20-Poly1305 (binding `ad`). Output: ephemeral public key || ciphertext.

    A fresh ephemeral key per box makes the derived key single-use, so the derived nonce is
    never reused under it."""
    if len(public) != PUBLIC_KEY_SIZE:
        raise LocalError("an X25519 public key is 32 bytes")
    eph = KeyPair.generate(rng)
    key, nonce = _box_key(x25519(eph.secret, public), eph.public, public)
    return eph.public + aead_encrypt(key, nonce, plaintext, ad)


def open_sealed_box(keypair_secret: bytes, ct: bytes, ad: bytes = b"") -> bytes:
    """Open a `seal_to` box with the recipient's X25519 secret. Raises `DecryptError` if it was
    not sealed to this key, was altered, or `ad` differs."""
    if len(ct) < SEALED_BOX_OVERHEAD:
        raise DecryptError("sealed box too short")
    eph_public, body = ct[:PUBLIC_KEY_SIZE], ct[PUBLIC_KEY_SIZE:]
    own_public = public_from_secret(keypair_secret)
    key, nonce = _box_key(x25519(keypair_secret, eph_public), eph_public, own_public)
    return aead_decrypt(key, nonce, body, ad)


def public_from_secret(secret: bytes) -> bytes:
    """The X25519 public key of a secret (to rebuild a KeyPair from a key file)."""
    if len(secret) != 32:
        raise LocalError("an X25519 secret is 32 bytes")
    return bytes(_b.crypto_scalarmult_base(secret))
