"""Sealed key files (anonmail/crypto/keyfile.py): round trip and wrong passphrase, the purpose
label bound as associated data, damaged files, empty passphrases and absurd costs refused, a
fresh salt and nonce for every seal.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from signedrecords import ADDRESS_KEY, receipt

from anonmail import crypto, wire
from anonmail.crypto import keyfile
from anonmail.errors import UserError
from anonmail.rng import SeededRng

FAST = crypto.INTERACTIVE


def test_keyfile_roundtrip_and_wrong_passphrase() -> None:
    secret = ADDRESS_KEY.seed()
    sealed = keyfile.seal(secret, "correct horse", "address", SeededRng(1), FAST)
    assert secret not in sealed
    assert keyfile.open_sealed(sealed, "correct horse", "address") == secret
    with pytest.raises(UserError, match="wrong passphrase"):
        keyfile.open_sealed(sealed, "correct horsf", "address")


def test_keyfile_purpose_and_damage() -> None:
    sealed = keyfile.seal(b"\x01" * 32, "pw", "node", SeededRng(2), FAST)
    with pytest.raises(UserError, match="node key, not a address key"):
        keyfile.open_sealed(sealed, "pw", "address")
    # a file whose purpose label was rewritten to pass the check still fails (AD binds it)
    record = wire.decode(sealed, keyfile.SealedKey)
    relabelled = wire.encode(dataclasses.replace(record, purpose="address"))
    with pytest.raises(UserError, match="wrong passphrase"):
        keyfile.open_sealed(relabelled, "pw", "address")
    for damaged in (b"", sealed[:-1], sealed + b"\x00", b"not a key file", wire.encode(receipt())):
        with pytest.raises(UserError, match="damaged"):
            keyfile.open_sealed(damaged, "pw", "node")


def test_keyfile_refuses_empty_passphrase_and_absurd_costs() -> None:
    with pytest.raises(UserError, match="empty passphrase"):
        keyfile.seal(b"\x01" * 32, "", "node", SeededRng(3), FAST)
    sealed = keyfile.seal(b"\x01" * 32, "pw", "node", SeededRng(3), FAST)
    record = wire.decode(sealed, keyfile.SealedKey)
    cases: list[dict[str, Any]] = [{"memlimit": 1}, {"opslimit": 1 << 30}, {"memlimit": 1 << 33}]
    for costs in cases:
        with pytest.raises(UserError, match="costs outside"):
            keyfile.open_sealed(wire.encode(dataclasses.replace(record, **costs)), "pw", "node")


def test_keyfile_uses_fresh_salt_and_nonce() -> None:
    rng = SeededRng(4)
    a = wire.decode(keyfile.seal(b"\x01" * 32, "pw", "node", rng, crypto.PassphraseParams(
        FAST.opslimit, 8192 * 1024)), keyfile.SealedKey)
    b = wire.decode(keyfile.seal(b"\x01" * 32, "pw", "node", rng, crypto.PassphraseParams(
        FAST.opslimit, 8192 * 1024)), keyfile.SealedKey)
    assert a.salt != b.salt and a.nonce != b.nonce and a.ciphertext != b.ciphertext
