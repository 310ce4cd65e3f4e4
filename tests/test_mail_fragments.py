"""Body encryption, padding, fragments and descriptors (mail/fragments.py), without a network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonmail import crypto, wire
from anonmail.errors import DecryptError, RemoteProtocolError
from anonmail.mail import fragments as f
from anonmail.mail.envelope import BodyLayout
from anonmail.records import ids
from anonmail.rng import SeededRng
from anonmail.store.messages import MAX_BLOB

KEY = b"\x07" * 32


@given(st.integers(0, 1 << 40))
def test_padme_rounds_up_a_little_and_leaks_few_bits(n: int) -> None:
    p = f.padme(n)
    assert p >= n
    if n >= 16:
        assert p - n <= 0.12 * n
        assert f.padme(p) == p  # padded sizes are fixed points: a size class
    assert f.padded_size(n) >= max(n, f.MIN_PADDED)


def test_small_bodies_are_inline_and_padded() -> None:
    for n in (0, 1, 500, 2048, 100_000, 900_000, f.INLINE_MAX - 100, f.INLINE_MAX):
        plain = SeededRng(n).bytes(n)
        body = f.encrypt_body(plain, KEY)
        assert body.layout is BodyLayout.INLINE and body.fragments == ()
        assert len(body.blob) == f.padded_size(n) + crypto.AEAD_TAG_SIZE <= MAX_BLOB
        assert f.decrypt_inline(body.blob, KEY, n) == plain
        if plain[-1:] not in (b"", b"\x00"):
            with pytest.raises(RemoteProtocolError):  # the signed size must match the padding
                f.decrypt_inline(body.blob, KEY, n - 1)
        with pytest.raises(DecryptError):
            f.decrypt_inline(body.blob, b"\x08" * 32, n)
    assert len(f.encrypt_body(b"a", KEY).blob) == len(f.encrypt_body(b"abc" * 100, KEY).blob)


def test_large_bodies_are_fragments_under_an_encrypted_descriptor() -> None:
    n = 2 * MAX_BLOB + 12345
    plain = SeededRng(5).bytes(n)
    body = f.encrypt_body(plain, KEY)
    assert body.layout is BodyLayout.FRAGMENTED and len(body.fragments) == 3
    for k, ct in body.fragments:
        assert k == ids.fragment_key(ct) and len(ct) <= MAX_BLOB
    assert body.stored_bytes - len(body.blob) == f.padded_size(n) + 3 * crypto.AEAD_TAG_SIZE
    assert plain[1000:1064] not in body.blob + b"".join(ct for _, ct in body.fragments)
    for k, _ in body.fragments:
        assert k not in body.blob  # the descriptor is encrypted too
    desc = f.open_descriptor(body.blob, KEY, 3, n)
    assert [r.key for r in desc.fragments] == [k for k, _ in body.fragments]
    cts = [ct for _, ct in body.fragments]
    assert f.decrypt_fragments(desc, cts, KEY, n) == plain

    with pytest.raises(DecryptError):  # reordered
        f.decrypt_fragments(desc, [cts[1], cts[0], cts[2]], KEY, n)
    with pytest.raises(RemoteProtocolError):  # a fragment dropped
        f.decrypt_fragments(desc, cts[:2], KEY, n)
    other = f.encrypt_body(SeededRng(6).bytes(n), KEY)  # spliced from another message
    with pytest.raises(RemoteProtocolError):
        f.decrypt_fragments(desc, [cts[0], other.fragments[1][1], cts[2]], KEY, n)
    with pytest.raises(RemoteProtocolError, match="does not match"):
        f.open_descriptor(body.blob, KEY, 4, n)
    with pytest.raises(RemoteProtocolError, match="does not match"):
        f.open_descriptor(body.blob, KEY, 3, n - 2 * MAX_BLOB)
    bad = wire.encode(f.Descriptor(desc.fragments, desc.padded_size, bytes(32)))
    wrong_digest = f.Descriptor(desc.fragments, desc.padded_size, bytes(32))
    assert wire.decode(bad, f.Descriptor) == wrong_digest
    with pytest.raises(RemoteProtocolError, match="digest"):
        f.decrypt_fragments(wrong_digest, cts, KEY, n)


def test_fragment_delete_secrets_differ_per_fragment_and_recipient() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    got = {f.fragment_secret(s, i) for s in (a, b) for i in range(50)}
    assert len(got) == 100 and a not in got and b not in got
