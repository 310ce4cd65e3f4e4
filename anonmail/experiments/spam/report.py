"""The table `anonmail sim spam` prints for a `SpamReport` (model.py): the summary the issue
asks for (identities, victims, spam tried and stored, RTS tried and accepted, the most a request
inbox replica holds against its quota, the spammer's minting CPU and its price per accepted
request, the difficulty), then each attack's appends and the replicas' refusals by code.

Invariants: pure formatting, no I/O; the output is a function of the report alone (no wall
clock: the command adds that line itself).
"""

from __future__ import annotations

from anonmail.experiments.spam.model import Attack, SpamReport, Tally
from anonmail.records.params import MAINNET

W = 52  # label column


def _row(label: str, value: object, note: str = "") -> str:
    return f"{label:<{W}}{value!s:>14}{'  ' + note if note else ''}"


def _seconds(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if x < 0.01:
        return f"{x:.1e}"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _codes(t: Tally) -> str:
    parts = [f"{n} {code}" for code, n in sorted(t.refusals.items(), key=lambda kv: -kv[1])]
    if t.failures:
        parts.append(f"{t.failures} failed")
    return ", ".join(parts) or "-"


def summary(rep: SpamReport) -> list[str]:
    cfg = rep.config
    rts = rep.rts
    direct = rep.direct
    default = "the network's default" if cfg.bits == MAINNET.stamp_bits else \
        f"the network's default is {MAINNET.stamp_bits}"
    return [
        _row("spammer's certified identities", cfg.identities),
        _row("victims", cfg.victims),
        _row("spam appends tried (into victims' inboxes)", sum(t.tried for t in direct)),
        _row("entries stored in victims' inboxes", rep.inbox_entries),
        _row("RTS tried (stamped)", rts.tried),
        _row("RTS accepted (a receipt from >= 1 replica)", rts.accepted),
        _row("max held per request inbox replica / quota",
             f"{rep.request_max} / {rep.request_quota}"),
        _row("spammer CPU seconds minting (RTS)", _seconds(rts.cpu)),
        _row("CPU seconds per accepted request", _seconds(rep.cpu_per_accepted)),
        _row("stamp difficulty (bits)", cfg.bits, default),
    ]


def _attacks(rep: SpamReport, which: list[Attack]) -> list[str]:
    lines = [f"  {'':<44}{'tried':>8}{'accepted':>10}{'mint CPU s':>12}  refusals per replica"]
    for a in which:
        t = rep.tallies[a]
        lines.append(f"  {a.value:<44}{t.tried:>8}{t.accepted:>10}{_seconds(t.cpu):>12}  "
                     f"{_codes(t)}")
    return lines


def format_report(rep: SpamReport) -> str:
    cfg = rep.config
    wanted = 2 * cfg.victims * cfg.replication
    rts = rep.rts
    lines = [
        f"anonmail sim spam: {cfg.nodes} nodes, every one behind the permit gate, "
        f"r={cfg.replication}, seed {cfg.seed}",
        f"{cfg.victims} victims, each a .anon address with a PERMITS policy (stamps of "
        f"{cfg.bits} bits) under its inbox and request-inbox keys: {rep.policies_placed}/"
        f"{wanted} replicas took it",
        f"a spammer with {cfg.identities} certified identities and no permits; entries of "
        f"{cfg.entry_size} bytes; virtual time {rep.virtual_seconds:.0f} s",
        "",
        *summary(rep),
        "",
        f"(a) straight into the inboxes ({cfg.spam} of each unstamped kind and one stamped, "
        f"per victim):",
        *_attacks(rep, [Attack.INBOX_BARE, Attack.INBOX_FORGED, Attack.INBOX_STAMPED]),
        f"  entries found in the victims' inboxes, every node's database: {rep.inbox_entries} "
        f"(on {rep.inbox_holders} nodes)",
        f"(c) request inboxes without paying ({cfg.flood} of each per victim, before (b)):",
        *_attacks(rep, [Attack.REQUEST_BARE, Attack.REQUEST_WEAK]),
        f"(b) request inboxes with stamps at {cfg.bits} bits, stopping at INBOX_FULL "
        f"(at most {cfg.max_rts} per victim):",
        *_attacks(rep, [Attack.RTS]),
        f"  victims whose request inbox the spammer filled: {rep.victims_filled}/{cfg.victims};"
        f" replicas holding RTS {rep.replicas_held}, at the quota {rep.replicas_full}, "
        f"{rep.request_entries} entries in all",
        f"  the most distinct RTS one victim reads (union of its replicas): {rep.distinct_max}",
        f"  CPU seconds per stamp: {_seconds(rep.cpu_per_stamp)}; per accepted request: "
        f"{_seconds(rep.cpu_per_accepted)} ({rts.tried - rts.accepted} stamps wasted on a "
        f"full inbox)",
    ]
    return "\n".join(lines)
