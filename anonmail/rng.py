"""Injected randomness.

Invariant: no module below the edges calls `os.urandom`, `secrets` or `random` directly; it is
handed an `Rng`. Real nodes get `SystemRng` (the OS CSPRNG); simulations and tests get
`SeededRng`, so a run is reproducible from its seed. `SeededRng` is NOT for real keys.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Protocol


class Rng(Protocol):
    """A source of random bytes and numbers."""

    def bytes(self, n: int) -> bytes: ...

    def randbelow(self, n: int) -> int: ...

    def random(self) -> float: ...


class SystemRng:
    """The operating system's CSPRNG; the only Rng a real node uses for keys."""

    def bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def randbelow(self, n: int) -> int:
        return random.SystemRandom().randrange(n)

    def random(self) -> float:
        return random.SystemRandom().random()


class SeededRng:
    """Deterministic randomness for simulations and tests (BLAKE2b in counter mode for bytes)."""

    def __init__(self, seed: int | bytes) -> None:
        seed_bytes = seed if isinstance(seed, bytes) else str(seed).encode()
        self._key = hashlib.blake2b(seed_bytes, digest_size=32).digest()
        self._counter = 0
        self._random = random.Random(self._key)

    def bytes(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            self._counter += 1
            out += hashlib.blake2b(
                self._counter.to_bytes(8, "big"), key=self._key, digest_size=64
            ).digest()
        return bytes(out[:n])

    def randbelow(self, n: int) -> int:
        return self._random.randrange(n)

    def random(self) -> float:
        return self._random.random()

    def fork(self, label: str) -> SeededRng:
        """An independent stream derived from this one (for a sub-component)."""
        return SeededRng(self._key + label.encode())
