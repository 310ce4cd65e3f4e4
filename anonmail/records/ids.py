"""256-bit identifiers and the XOR metric (DESIGN.md §2).

Every id is BLAKE2b-256 over a domain tag and its parts, so ids of different kinds never collide
on purpose. A node id is H("node", signing key): self-certifying. The S/Kademlia static puzzle
(Baumgart & Mies 2007, §4.1) asks that H("puzzle", node id) start with `c1` zero bits, which makes
choosing one's own position in the keyspace cost 2^c1 key generations per try.
"""

from __future__ import annotations

import functools

from anonmail import crypto
from anonmail.rng import Rng

ID_BITS = 256
ID_BYTES = 32

NodeId = bytes
Key = bytes


@functools.lru_cache(maxsize=1 << 16)
def node_id(public_key: bytes) -> NodeId:
    # Cached: routing code derives ids from certificates constantly (sorting, lookups).
    return crypto.hash("node", public_key)


def puzzle_bits(nid: NodeId) -> int:
    """How many leading zero bits the static puzzle hash of this node id has."""
    return crypto.leading_zero_bits(crypto.hash("puzzle", nid))


# An address's inbox, request inbox and certificate are stored at keys that differ only in their
# two lowest bits (siblings of one `home`), so the same r nodes are the closest to all three, in
# the same order (unless two node ids differ only in those bits: 2^-254): one lookup serves a
# send's certificate and inbox, and a check's inbox and request inbox (issue 11). A departure
# from DESIGN.md §2's three independent hashes, explained in docs/storage.md.
HOME_MASK = 0b11


def lookup_home(key: Key) -> Key:
    """The key whose lookup serves `key` and its siblings (`key` with its two low bits clear)."""
    return key[:-1] + bytes([key[-1] & ~HOME_MASK & 0xFF])


def _sibling(key: Key, which: int) -> Key:
    return key[:-1] + bytes([key[-1] ^ which])


def inbox_key(address: str) -> Key:
    return crypto.hash("inbox", address.encode())


def requests_key(address: str) -> Key:
    """The request inbox (RTS, DESIGN.md §6): a sibling of the inbox."""
    return _sibling(inbox_key(address), 1)


def cert_key(address: str) -> Key:
    """Where an address certificate is stored (seed 002 Table 1: address + "-certificate"): a
    sibling of the inbox."""
    return _sibling(inbox_key(address), 2)


def body_key(message_id: str) -> Key:
    return crypto.hash("body", message_id.encode())


def fragment_key(ciphertext: bytes) -> Key:
    return crypto.hash("fragment", ciphertext)


def devices_key(address: str) -> Key:
    return crypto.hash("devices", address.encode())


def distance(a: bytes, b: bytes) -> int:
    """The Kademlia XOR distance as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def common_prefix_len(a: bytes, b: bytes) -> int:
    """Number of leading bits `a` and `b` share (256 when equal)."""
    return ID_BITS - distance(a, b).bit_length()


def short(nid: bytes) -> str:
    """A short printable form for logs and tables (not a secret: node ids are public)."""
    return nid.hex()[:10]


def grind_node_key(puzzle_bits: int, rng: Rng) -> crypto.SigningKey:
    """Generate signing keys until the node id solves the static puzzle (expected 2^bits tries)."""
    while True:
        key = crypto.SigningKey.generate(rng)
        if puzzle_bits == 0 or puzzle_bits_of_key(key.public) >= puzzle_bits:
            return key


def puzzle_bits_of_key(public_key: bytes) -> int:
    # Past node_id's cache: grinding tries ~2^bits throwaway keys (65,536 for a main-network
    # session key), which would evict every id the routing code keeps there, in every process
    # that grinds (`anonmail run`: two keys per agent session, beside the node).
    return puzzle_bits(node_id.__wrapped__(public_key))
