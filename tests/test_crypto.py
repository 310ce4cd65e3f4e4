"""Properties of anonmail.crypto: domain separation, length-prefixing, signatures bound to their
domain, AEAD tamper detection, X25519 low-order key rejection, leading_zero_bits."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonmail import crypto
from anonmail.errors import BadSignature, DecryptError, LocalError, RemoteProtocolError
from anonmail.rng import SeededRng

FEWER = settings(max_examples=max(20, settings().max_examples // 3))

tags = st.text(min_size=0, max_size=24)
parts = st.lists(st.binary(max_size=40), max_size=5)
keys = st.binary(min_size=32, max_size=32).map(crypto.SigningKey)


# --- hashing ---------------------------------------------------------------------------------


@given(tags, parts)
def test_hash_is_256_bits_and_deterministic(tag: str, ps: list[bytes]) -> None:
    h = crypto.hash(tag, *ps)
    assert len(h) == crypto.HASH_SIZE == 32
    assert h == crypto.hash(tag, *ps)


@given(tags, tags, parts)
def test_hash_domain_separation(tag1: str, tag2: str, ps: list[bytes]) -> None:
    if tag1 != tag2:
        assert crypto.hash(tag1, *ps) != crypto.hash(tag2, *ps)


@given(tags, parts, parts)
def test_hash_parts_are_length_prefixed(tag: str, ps1: list[bytes], ps2: list[bytes]) -> None:
    """Different part lists never collide, even when their concatenations are equal."""
    if ps1 != ps2:
        assert crypto.hash(tag, *ps1) != crypto.hash(tag, *ps2)


def test_hash_boundary_examples() -> None:
    t = "x"
    assert crypto.hash(t, b"ab", b"c") != crypto.hash(t, b"a", b"bc")
    assert crypto.hash(t, b"abc") != crypto.hash(t, b"ab", b"c")
    assert crypto.hash(t) != crypto.hash(t, b"")
    assert crypto.hash(t, b"") != crypto.hash(t, b"", b"")
    # the tag is framed too: moving bytes between tag and first part changes the hash
    assert crypto.hash("ab", b"c") != crypto.hash("a", b"bc")
    # and it is not plain BLAKE2b of the data
    assert crypto.hash(t, b"data") != hashlib.blake2b(b"data", digest_size=32).digest()


def test_ids_use_distinct_domains() -> None:
    from anonmail.records import ids

    a = "alice@example.com"
    derived = {ids.cert_key(a), ids.inbox_key(a), ids.requests_key(a), ids.body_key(a),
               ids.devices_key(a), ids.fragment_key(a.encode())}
    assert len(derived) == 6


@given(st.binary(min_size=1, max_size=64), tags, parts)
def test_kdf_separates_keys_and_tags(key: bytes, tag: str, ps: list[bytes]) -> None:
    out = crypto.kdf(key, tag, *ps)
    assert len(out) == 32
    assert crypto.kdf(key, tag + "'", *ps) != out
    assert crypto.kdf(key + b"\x00", tag, *ps) != out
    assert len(crypto.kdf(key, tag, *ps, size=64)) == 64


# --- leading zero bits -----------------------------------------------------------------------


@given(st.binary(max_size=40))
def test_leading_zero_bits_matches_bit_string(data: bytes) -> None:
    bits = "".join(f"{b:08b}" for b in data)
    expected = len(bits) - len(bits.lstrip("0"))
    assert crypto.leading_zero_bits(data) == expected


@pytest.mark.parametrize(
    ("data", "n"),
    [(b"", 0), (b"\x00", 8), (b"\x80", 0), (b"\x01", 7), (b"\x00\x01", 15), (b"\x00\x00", 16),
     (bytes(32), 256), (b"\x00\x7f" + bytes(30), 9)],
)
def test_leading_zero_bits_examples(data: bytes, n: int) -> None:
    assert crypto.leading_zero_bits(data) == n


# --- signatures ------------------------------------------------------------------------------


@FEWER
@given(keys, tags, st.binary(max_size=200))
def test_sign_verify_roundtrip(key: crypto.SigningKey, domain: str, msg: bytes) -> None:
    sig = key.sign(domain, msg)
    assert len(sig) == crypto.SIGNATURE_SIZE
    crypto.verify(key.public, domain, msg, sig)


@pytest.mark.threat("T-FORGE")
@FEWER
@given(keys, tags, tags, st.binary(max_size=100))
def test_signature_is_bound_to_its_domain(key: crypto.SigningKey, d1: str, d2: str,
                                          msg: bytes) -> None:
    sig = key.sign(d1, msg)
    if d1 != d2:
        with pytest.raises(BadSignature):
            crypto.verify(key.public, d2, msg, sig)


def test_domain_and_message_boundary_cannot_shift() -> None:
    """Signing ("ab", m) is not signing ("a", "b" + m): the domain is length-framed."""
    key = crypto.SigningKey(bytes(range(32)))
    sig = key.sign("ab", b"msg")
    with pytest.raises(BadSignature):
        crypto.verify(key.public, "a", b"bmsg", sig)


@pytest.mark.threat("T-FORGE")
@FEWER
@given(keys, st.binary(min_size=1, max_size=100), st.data())
def test_any_altered_message_signature_or_key_fails(key: crypto.SigningKey, msg: bytes,
                                                    data: st.DataObject) -> None:
    sig = key.sign("d", msg)
    which = data.draw(st.sampled_from(["msg", "sig", "key"]))
    target = {"msg": msg, "sig": sig, "key": key.public}[which]
    i = data.draw(st.integers(0, len(target) - 1))
    flip = data.draw(st.integers(1, 255))
    altered = target[:i] + bytes([target[i] ^ flip]) + target[i + 1:]
    args = {"msg": msg, "sig": sig, "key": key.public} | {which: altered}
    with pytest.raises(BadSignature):
        crypto.verify(args["key"], "d", args["msg"], args["sig"])


@pytest.mark.parametrize(
    ("public", "sig"),
    [(bytes(31), bytes(64)), (bytes(32), bytes(63)), (bytes(33), bytes(64)),
     (bytes(32), bytes(64)), (b"\xff" * 32, b"\xff" * 64)],
)
def test_verify_rejects_malformed_keys_and_signatures(public: bytes, sig: bytes) -> None:
    with pytest.raises(BadSignature):
        crypto.verify(public, "d", b"m", sig)


def test_bad_signature_is_a_remote_protocol_error() -> None:
    assert issubclass(BadSignature, RemoteProtocolError)
    assert issubclass(DecryptError, RemoteProtocolError)


def test_signing_key_needs_32_byte_seed_and_hides_it() -> None:
    with pytest.raises(LocalError):
        crypto.SigningKey(bytes(31))
    key = crypto.SigningKey(b"\x07" * 32)
    assert key.seed() == b"\x07" * 32
    assert "07070707" not in repr(key)
    assert crypto.SigningKey(key.seed()).public == key.public


def test_generated_keys_come_from_the_injected_rng() -> None:
    a = crypto.SigningKey.generate(SeededRng(5)).public
    b = crypto.SigningKey.generate(SeededRng(5)).public
    c = crypto.SigningKey.generate(SeededRng(6)).public
    assert a == b != c


# --- AEAD ------------------------------------------------------------------------------------

aead_keys = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=24, max_size=24)


@given(aead_keys, nonces, st.binary(max_size=300), st.binary(max_size=40))
def test_aead_roundtrip(key: bytes, nonce: bytes, pt: bytes, ad: bytes) -> None:
    ct = crypto.aead_encrypt(key, nonce, pt, ad)
    assert len(ct) == len(pt) + crypto.AEAD_TAG_SIZE
    assert crypto.aead_decrypt(key, nonce, ct, ad) == pt


@pytest.mark.threat("T-FORGE")
@given(aead_keys, nonces, st.binary(max_size=100), st.binary(max_size=20), st.data())
def test_aead_detects_any_tampering(key: bytes, nonce: bytes, pt: bytes, ad: bytes,
                                    data: st.DataObject) -> None:
    ct = crypto.aead_encrypt(key, nonce, pt, ad)
    parts = {"key": key, "nonce": nonce, "ct": ct, "ad": ad}
    which = data.draw(st.sampled_from(sorted(parts)))
    target = parts[which]
    if which == "ad" and not target:
        altered = b"\x00"
    elif which == "ct" and data.draw(st.booleans()):
        altered = target[: data.draw(st.integers(0, len(target) - 1))]  # truncation
    else:
        i = data.draw(st.integers(0, len(target) - 1))
        altered = target[:i] + bytes([target[i] ^ data.draw(st.integers(1, 255))]) + target[i + 1:]
    parts[which] = altered
    with pytest.raises(DecryptError):
        crypto.aead_decrypt(parts["key"], parts["nonce"], parts["ct"], parts["ad"])


def test_aead_matches_the_xchacha_draft_vector() -> None:
    """draft-irtf-cfrg-xchacha-03 §A.3.1 (AEAD_XChaCha20_Poly1305): libsodium is called
    directly (crypto's AEAD), so argument order is pinned against the published vector."""
    pt = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
          b"the future, sunscreen would be it.")
    ad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    key, nonce = bytes(range(0x80, 0xA0)), bytes(range(0x40, 0x58))
    ct = crypto.aead_encrypt(key, nonce, pt, ad)
    assert ct[:16].hex() == "bd6d179d3e83d43b9576579493c0e939"
    assert ct[-16:].hex() == "c0875924c1c7987947deafd8780acf49"
    assert crypto.aead_decrypt(key, nonce, ct, ad) == pt


def test_aead_refuses_what_is_not_bytes_of_the_right_size() -> None:
    key, nonce = bytes(32), bytes(24)
    for bad in ((bytes(31), nonce, b"x", b""), (key, bytes(23), b"x", b""),
                (key, nonce, bytearray(b"x"), b""), (key, nonce, b"x", memoryview(b"a"))):
        with pytest.raises(LocalError):
            crypto.aead_encrypt(*bad)
    with pytest.raises(DecryptError):
        crypto.aead_decrypt(key, nonce, bytes(15))  # shorter than its tag
    with pytest.raises(DecryptError):
        crypto.aead_decrypt(key, nonce, bytes(16))  # an empty plaintext's length, wrong tag


@pytest.mark.parametrize(("key", "nonce"), [(bytes(31), bytes(24)), (bytes(32), bytes(12))])
def test_aead_decrypt_wrong_sizes_is_decrypt_error(key: bytes, nonce: bytes) -> None:
    with pytest.raises(DecryptError):
        crypto.aead_decrypt(key, nonce, bytes(40))


def test_counter_nonce_is_unique_per_counter() -> None:
    seen = {crypto.counter_nonce(i) for i in range(1000)}
    assert len(seen) == 1000
    assert all(len(n) == crypto.AEAD_NONCE_SIZE for n in seen)


# --- X25519 ----------------------------------------------------------------------------------


@FEWER
@given(st.integers(0, 2**32), st.integers(0, 2**32))
def test_x25519_agreement(seed_a: int, seed_b: int) -> None:
    a = crypto.KeyPair.generate(SeededRng(seed_a))
    b = crypto.KeyPair.generate(SeededRng(seed_b + 2**33))
    assert crypto.x25519(a.secret, b.public) == crypto.x25519(b.secret, a.public)
    assert "secret" not in repr(a) and a.secret.hex() not in repr(a)


# The order-1, -2, -4 and -8 points of Curve25519 and their non-canonical encodings
# (libsodium's blocklist); Diffie-Hellman with any of them gives an all-zero or fixed secret.
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("public", LOW_ORDER, ids=lambda p: p.hex()[:8])
def test_x25519_rejects_low_order_points(public: bytes) -> None:
    me = crypto.KeyPair.generate(SeededRng(1))
    with pytest.raises(DecryptError):
        crypto.x25519(me.secret, public)


@pytest.mark.parametrize("public", [bytes(31), bytes(33), b"", b"\x09", b"\x09" + bytes(30)])
def test_x25519_rejects_malformed_keys(public: bytes) -> None:
    """PyNaCl hands short buffers to libsodium unchecked (an out-of-bounds read): we check."""
    me = crypto.KeyPair.generate(SeededRng(1))
    with pytest.raises(DecryptError):
        crypto.x25519(me.secret, public)


def test_x25519_secret_size_is_our_invariant() -> None:
    peer = crypto.KeyPair.generate(SeededRng(2))
    with pytest.raises(LocalError):
        crypto.x25519(bytes(16), peer.public)


# --- passphrases -----------------------------------------------------------------------------


def test_passphrase_key_rejects_out_of_range_costs() -> None:
    from anonmail.errors import UserError

    salt = bytes(crypto.ARGON2_SALT_SIZE)
    with pytest.raises(UserError):
        crypto.passphrase_key(b"pw", salt, crypto.PassphraseParams(1, 1024))
    with pytest.raises(UserError):
        crypto.passphrase_key(b"pw", salt, crypto.PassphraseParams(1 << 20, 1 << 26))
    with pytest.raises(DecryptError):
        crypto.passphrase_key(b"pw", b"short", crypto.INTERACTIVE)
