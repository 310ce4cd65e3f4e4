"""Layered encryption of circuits, free of I/O (DESIGN.md §7; seed 002 §4.1 "A generates a
session key to give to Z ... encrypts the session key with Z's public key").

A circuit is a path of hops h1 .. hn from the sender: relays (X, a middle relay) and the end
(Z, or Y for a cross-check). The sender draws one session key per hop and seals it, with the
next hop's certificate, to that hop's node key (`build_onion`: a hop learns only its
predecessor, its key and its successor). Every cell then carries one AEAD layer per hop:

* forward, the sender encrypts for hn first and h1 last; each hop removes its layer;
* backward, the end encrypts its answer and each hop adds its layer; the sender removes all.

Each hop's session key gives a forward and a backward key (BLAKE2b KDF), and cells on a
circuit are strictly sequential, so the n-th cell's nonce is the counter n on both sides and
is never sent: a relay sees no sequence number another hop could match. The confirmation of an
Open uses the reserved counter OPENED_COUNTER.

Every layer carries the onion's creation time, and a hop admits a layer's session key once
and only within params.clock_skew of that time (anon/replay.py): a hop that re-sends the inner
onion it forwarded, to replay the cells it carried, is refused (threat T-ANON-REPLAY).

Invariants: a relay cannot read a cell (it lacks the inner keys), alter one (the next layer's
authentication fails) or tell two cells of one size class apart by content; with padding, a
cell's plaintext is padded to a size class (anon/options.py SIZE_CLASSES), so its size says
only its class; a failed layer raises DecryptError and the circuit is not used again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from anonmail import crypto, wire
from anonmail.anon.messages import MAX_CELL, MAX_ONION, OnionLayer
from anonmail.anon.options import SIZE_CLASSES
from anonmail.errors import DecryptError, LocalError, RemoteProtocolError
from anonmail.records.certs import NodeCert
from anonmail.rng import Rng

ONION_AD = b"anonmail-onion-v1"
OPENED = b"circuit-open"
OPENED_COUNTER = (1 << 64) - 1
_HEADER = 5  # 1 flag byte (padded or not) and a 4-byte length


@dataclass(frozen=True, slots=True)
class HopKeys:
    """One hop's directional keys, derived from the session key the sender sealed to it."""

    forward: bytes
    backward: bytes

    @classmethod
    def from_session(cls, key: bytes) -> HopKeys:
        return cls(crypto.kdf(key, "anon-forward"), crypto.kdf(key, "anon-backward"))


def size_class(n: int) -> int:
    """The smallest size class holding `n` bytes of padded plaintext."""
    for c in SIZE_CLASSES:
        if n <= c:
            return c
    raise LocalError(f"{n} bytes do not fit the largest cell")


def pad(body: bytes, padded: bool) -> bytes:
    """`body` framed (flag, length) and, if `padded`, zero-filled to its size class. The zeros
    are inside the encryption: they cost bytes, never secrecy."""
    head = bytes([1 if padded else 0]) + len(body).to_bytes(4, "big")
    n = _HEADER + len(body)
    if n > MAX_CELL - 64:
        raise LocalError("cell body too large")
    fill = size_class(n) - n if padded else 0
    return head + body + bytes(fill)


def unpad(data: bytes) -> tuple[bytes, bool]:
    """The body of a padded plaintext and whether it was padded; RemoteProtocolError if the
    framing is inconsistent."""
    if len(data) < _HEADER or data[0] not in (0, 1):
        raise RemoteProtocolError("bad cell framing")
    n = int.from_bytes(data[1:_HEADER], "big")
    if _HEADER + n > len(data):
        raise RemoteProtocolError("bad cell length")
    return data[_HEADER:_HEADER + n], data[0] == 1


def build_onion(hops: Sequence[NodeCert], keys: Sequence[bytes], rng: Rng, now: float) -> bytes:
    """The Open onion for `hops` (first hop outermost) with their session `keys`, built at
    `now` (the sender's clock): every layer says so, and a hop refuses a stale layer or one it
    has seen (anon/replay.py), so no hop can replay the onion it passed on."""
    if not hops or len(hops) != len(keys):
        raise LocalError("one session key per hop")
    created = int(now)
    inner = b""
    for i in reversed(range(len(hops))):
        nxt = hops[i + 1] if i + 1 < len(hops) else None
        layer = wire.encode(OnionLayer(keys[i], nxt, inner, created))
        inner = crypto.seal_to(crypto.box_public(hops[i].public_key), layer, rng, ONION_AD)
    if len(inner) > MAX_ONION:
        raise LocalError("onion too large")
    return inner


def open_onion(node_key: crypto.SigningKey, onion: bytes) -> OnionLayer:
    """This hop's layer of an onion; DecryptError (or RemoteProtocolError) if it is not one."""
    plaintext = crypto.open_sealed_box(node_key.box_secret(), onion, ONION_AD)
    return wire.decode(plaintext, OnionLayer, max_size=MAX_ONION)


def seal_layer(key: bytes, counter: int, data: bytes) -> bytes:
    return crypto.aead_encrypt(key, crypto.counter_nonce(counter), data)


def open_layer(key: bytes, counter: int, data: bytes) -> bytes:
    return crypto.aead_decrypt(key, crypto.counter_nonce(counter), data)


class SenderLayers:
    """The sender's side of a circuit's encryption: wraps requests, unwraps replies."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self.hops = [HopKeys.from_session(k) for k in keys]
        self.counter = 0

    def check_opened(self, box: bytes) -> None:
        """Raise DecryptError unless `box` is the end's confirmation through every hop."""
        for hop in self.hops:
            box = open_layer(hop.backward, OPENED_COUNTER, box)
        if box != OPENED:
            raise DecryptError("circuit confirmation is not the end's")

    def wrap(self, body: bytes, padded: bool) -> bytes:
        data = pad(body, padded)
        for hop in reversed(self.hops):
            data = seal_layer(hop.forward, self.counter, data)
        return data

    def unwrap(self, box: bytes) -> bytes:
        """The end's answer to the last wrapped request; advances the counter."""
        try:
            for hop in self.hops:
                box = open_layer(hop.backward, self.counter, box)
        finally:
            self.counter += 1
        return unpad(box)[0]
