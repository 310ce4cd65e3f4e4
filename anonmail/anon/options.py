"""The sender-anonymity defences as options (DESIGN.md §7; issue 8 item 3), with the defaults
chosen from `anonmail sim anonymity` (docs/anonymity.md says why each default is what it is).

Seed 002 §4 alone is `AnonOptions.seed_only()`: a fresh X per channel, Y's cross-check, one
relay, no delay, no padding. Each defence is one field; the protocol code (anon/) and the
linkage model (experiments/anonymity/) read the same record, so what is measured is what runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DAY = 86400.0

# Cell size classes (bytes of channel plaintext before the per-hop layers): a request or reply
# is padded up to the smallest class that holds it. The largest holds a maximal STORE
# (store/messages.py MAX_BLOB) with its envelope, and still fits a default 1 MiB frame.
SIZE_CLASSES = (2 << 10, 16 << 10, 128 << 10, (1 << 20) - (48 << 10))


@dataclass(frozen=True, slots=True)
class AnonOptions:
    cross_check: bool = True  # ask Y (through X) where Z is, and use Z only if X and Y agree
    guard: bool = True  # keep one X (a guard) for guard_lifetime instead of a fresh X each time
    guard_lifetime: float = 30 * DAY
    guard_disagreements: int = 2  # X/Y disagreements before the guard is replaced
    hops: int = 2  # relays between A and Z: 1 = X only; 2 = X then a random middle relay
    delay_mean: float = 5.0  # seconds: Z waits Exp(delay_mean) before it acts (0 = at once)
    batch_interval: float = 0.0  # seconds: Z releases what it forwards at multiples of this
    padding: bool = True  # pad every cell to SIZE_CLASSES

    @classmethod
    def seed_only(cls) -> AnonOptions:
        """Seed 002 §4 as written: no defence beyond Y's cross-check."""
        return cls(guard=False, hops=1, delay_mean=0.0, batch_interval=0.0, padding=False)

    def replace(self, **changes: object) -> AnonOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


DEFAULT = AnonOptions()
