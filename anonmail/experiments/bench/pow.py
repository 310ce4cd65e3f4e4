"""`anonmail bench pow`: what the proof of work of an RTS costs a sender on this machine, beside
what a permit-token append costs (DESIGN.md §6, permit/records.py).

It reads the CPU clock (`time.process_time`: the sender's CPU, not the wall time of a busy
machine) and, unless given a seed, the OS RNG (a benchmark measures this machine).

`measure_stamps` mints `count` stamps at `bits` (default: the main network's minimum,
`params.MAINNET.stamp_bits`) for random request-inbox keys and entry ids, through
`permit.records.mint_stamp` as a sender does; each is checked with `stamp_work`, and the
hashes tried are read from where the search started and the nonce it found (the search counts
up from a random start, crypto.mint_stamp). `measure_permit` issues one token and times the
permit path: the sender's `spend` (one signature) and the storage node's check of the append
(`PermitGate.admit` with the owner's policy held: the token's and the use's signatures, no proof
of work), and a node's check of a stamp (`stamp_work`: one hash). `report` prints the
distribution (median, p95, max), hashes per second, the verdict against the budget (p95 of one
core under `BUDGET` seconds, the claim of params.NetworkParams.stamp_bits) beside the p95 the
hash rate predicts (tries are geometric: p95 = ln(20) x 2^bits tries) and the highest difficulty
that prediction keeps within the budget, and the ratio of a stamp to a permit.

Invariants: every stamp measured verifies at the difficulty asked (else `LocalError`); a
permit measured is admitted (else the gate's refusal propagates); `--seed` makes the keys,
entries and hashes tried reproducible (CPU seconds are this machine's).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from anonmail import crypto, wire
from anonmail.clock import SystemClock
from anonmail.errors import LocalError, UserError
from anonmail.permit.gate import PermitGate
from anonmail.permit.records import (
    PolicyMode,
    issue_tokens,
    make_policy,
    mint_stamp,
    spend,
    stamp_work,
)
from anonmail.records import ids, params
from anonmail.records.certs import self_certify
from anonmail.rng import Rng, SeededRng, SystemRng
from anonmail.store.db import StoreDb
from anonmail.store.handlers import StoreContext, handle_store
from anonmail.store.messages import AppendProof, AppendProofKind, ObjectKind, Store, entry_id

BUDGET = 1.0  # seconds of one core for the p95 stamp at the network minimum
SEEDED_NOW = 1_800_000_000.0  # with --seed the time is fixed too: the same stamps are searched
NONCE_SPACE = 1 << (8 * crypto.STAMP_NONCE_SIZE)
PERMIT_ROUNDS = 200  # permit and stamp-check timings are averaged over this many


@dataclass(frozen=True, slots=True)
class StampResult:
    bits: int
    seconds: tuple[float, ...]  # CPU seconds per stamp, in minting order
    tries: tuple[int, ...]  # hashes tried per stamp

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p95(self) -> float:
        return percentile(self.seconds, 0.95)

    @property
    def max(self) -> float:
        return max(self.seconds)

    @property
    def hash_rate(self) -> float:
        """Hashes per CPU second over the whole run."""
        return sum(self.tries) / max(sum(self.seconds), 1e-9)

    @property
    def within_budget(self) -> bool:
        return self.p95 < BUDGET

    @property
    def model_p95(self) -> float:
        """The p95 the hash rate predicts: tries are geometric with mean 2**bits, so 95 % of
        stamps need at most ln(20) * 2**bits of them (50 samples give a noisy p95)."""
        return math.log(20) * (1 << self.bits) / max(self.hash_rate, 1e-9)

    @property
    def budget_bits(self) -> int:
        """The highest difficulty whose model p95 stays within the budget at this rate."""
        return max(math.floor(math.log2(max(self.hash_rate * BUDGET / math.log(20), 1.0))), 0)


@dataclass(frozen=True, slots=True)
class PermitResult:
    spend: float  # CPU seconds per `spend` (the sender signs the use)
    admit: float  # CPU seconds per gate check of a permit append (two signature checks)
    stamp_check: float  # CPU seconds per gate-side stamp check (`stamp_work`: one hash)

    @property
    def per_append(self) -> float:
        return self.spend + self.admit


def percentile(values: tuple[float, ...] | list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least a fraction q at or below it."""
    if not values:
        raise LocalError("no values")
    ranked = sorted(values)
    return ranked[max(math.ceil(q * len(ranked)), 1) - 1]


def make_rng(seed: int | None) -> Rng:
    return SystemRng() if seed is None else SeededRng(seed)


def measure_stamps(count: int, bits: int, rng: Rng, now: float) -> StampResult:
    """Mint `count` stamps at `bits` for random request inboxes and entries (CPU time each)."""
    seconds: list[float] = []
    tries: list[int] = []
    for _ in range(count):
        inbox = ids.requests_key(f"{rng.bytes(8).hex()}@example.org")
        eid = entry_id(rng.bytes(64))
        # One seeded stream per stamp, read twice: once by mint_stamp for where its search
        # starts, once here, to count the hashes it tried.
        seed = rng.bytes(32)
        start = int.from_bytes(SeededRng(seed).bytes(8), "big") % NONCE_SPACE
        t0 = time.process_time()
        stamp = mint_stamp(inbox, eid, bits, now, SeededRng(seed))
        seconds.append(time.process_time() - t0)
        if stamp_work(stamp, inbox, eid) < bits:
            raise LocalError("a minted stamp does not show its work")
        tries.append((int.from_bytes(stamp.nonce, "big") - start) % NONCE_SPACE + 1)
    return StampResult(bits, tuple(seconds), tuple(tries))


def measure_permit(rng: Rng, now: float, rounds: int = PERMIT_ROUNDS) -> PermitResult:
    """The permit path of one append, timed over `rounds`: the sender's spend, the node's
    admission (the owner's policy held by the node), and a node's stamp check for scale."""
    sign = crypto.SigningKey.generate(rng)
    cert = self_certify("bench", sign, rng.bytes(32), now - 3600)
    inbox = ids.inbox_key(cert.address)
    net = params.MAINNET
    db = StoreDb(":memory:")
    try:
        gate = PermitGate(db, net)
        ctx = StoreContext(db, crypto.SigningKey.generate(rng), net,
                           append_policy=gate.admit, record_rules=gate.rules())
        policy = make_policy(sign, cert, 1, PolicyMode.PERMITS, net.stamp_bits, ())
        handle_store(ctx, Store(inbox, ObjectKind.POLICY, wire.encode(policy), 86400, ()), now)
        held = issue_tokens(sign, inbox, 1, now, rng)[0]
        entries = [rng.bytes(200) for _ in range(rounds)]
        eids = [entry_id(e) for e in entries]

        t0 = time.process_time()
        proofs = [spend(held, inbox, eid) for eid in eids]
        t_spend = (time.process_time() - t0) / rounds

        wrapped = [AppendProof(AppendProofKind.PERMIT, wire.encode(p)) for p in proofs]
        t0 = time.process_time()
        for entry, proof in zip(entries, wrapped, strict=True):
            adm = gate.admit(inbox, entry, proof, now)
            if adm.spend != held.token.id:
                raise LocalError("the gate did not name the token to spend")
        t_admit = (time.process_time() - t0) / rounds
    finally:
        db.close()

    stamp = mint_stamp(inbox, eids[0], 0, now, rng)
    t0 = time.process_time()
    for eid in eids:
        stamp_work(stamp, inbox, eid)
    t_stamp = (time.process_time() - t0) / rounds
    return PermitResult(t_spend, t_admit, t_stamp)


def report(stamps: StampResult, permit: PermitResult, seed: int | None) -> str:
    n = len(stamps.seconds)
    net = " (the main network's minimum)" if stamps.bits == params.MAINNET.stamp_bits else ""
    verdict = "PASS" if stamps.within_budget else "FAIL"
    ratio = stamps.median / max(permit.per_append, 1e-12)
    budget = f"  budget: p95 < {BUDGET:g} s of one core"
    lines = [
        f"anonmail bench pow: {n} stamps at {stamps.bits} bits{net}, one core, CPU time "
        f"(time.process_time), seed {'random' if seed is None else seed}",
        "",
        f"{'RTS stamp (sender mints, DESIGN.md §6)':44} {'seconds':>14}",
        f"{'  median':44} {stamps.median:>14.3f}",
        f"{'  p95':44} {stamps.p95:>14.3f}",
        f"{'  max':44} {stamps.max:>14.3f}",
        f"{'  hashes tried, mean (expected 2^bits)':44} "
        f"{statistics.fmean(stamps.tries):>14,.0f}  ({2 ** stamps.bits:,})",
        f"{'  hashes / second':44} {stamps.hash_rate:>14,.0f}",
        f"{'  p95 the rate predicts (ln 20 x 2^bits)':44} {stamps.model_p95:>14.3f}",
        f"{budget:44} {verdict:>14}",
        f"{'  highest bits whose predicted p95 fits':44} {stamps.budget_bits:>14}",
        "",
        f"{'permit token append (no proof of work)':44} {'microseconds':>14}",
        f"{'  spend (sender: one signature)':44} {permit.spend * 1e6:>14.1f}",
        f"{'  gate admit (node: token + use signatures)':44} {permit.admit * 1e6:>14.1f}",
        f"{'  together':44} {permit.per_append * 1e6:>14.1f}",
        f"{'stamp check (node: one hash)':44} {permit.stamp_check * 1e6:>14.1f}",
        "",
        f"{'median stamp / permit append':44} {ratio:>13,.0f}x",
    ]
    return "\n".join(lines)


def bench_pow(count: int, bits: int, seed: int | None) -> str:
    rng = make_rng(seed)
    now = SystemClock().now() if seed is None else SEEDED_NOW
    stamps = measure_stamps(count, bits, rng, now)
    return report(stamps, measure_permit(rng, now), seed)


def _cmd_pow(args: argparse.Namespace) -> int:
    if not 1 <= args.count <= 10_000:
        raise UserError("--count must be 1-10000")
    if not 0 <= args.bits <= 30:
        raise UserError("--bits must be 0-30")
    print(bench_pow(args.count, args.bits, args.seed))
    return 0


def add_parser(sub: Any) -> None:
    """Add `anonmail bench pow` to the `bench` subcommands (command.py)."""
    p = sub.add_parser("pow", help="CPU cost of an RTS proof-of-work stamp vs a permit token")
    p.add_argument("--count", type=int, default=50, help="stamps to mint (default 50)")
    p.add_argument("--bits", type=int, default=params.MAINNET.stamp_bits,
                   help="difficulty in leading zero bits (default: the main network's "
                        f"minimum, {params.MAINNET.stamp_bits})")
    p.add_argument("--seed", type=int, default=None,
                   help="seed the keys and entries (default: random)")
    p.set_defaults(func=_cmd_pow)
