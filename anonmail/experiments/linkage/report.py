"""The table `anonmail sim linkage` prints for a `LinkageReport` (model.py): per mode, one row per
feature (and the best combination) with the precision of "equal value, same sender", its 95%
interval, the recall and the pairs grouped, at the replica where that rule does best, beside
the range of its precision over all replicas; then the token keys (none spent twice), the token
expiries, sizes and ttls seen, who the peer was, the best any logging replica achieves against
chance, and the verdict.

Invariants: pure formatting, no I/O; the output is a function of the report alone (the command
adds the wall clock itself).
"""

from __future__ import annotations

from anonmail.experiments.linkage.model import (
    FEATURES,
    GAP,
    KEY,
    PEER,
    WINDOW,
    LinkageReport,
    Mode,
    ModeResult,
    ReplicaResult,
    RuleScore,
    verdict,
)

W = 58  # rule column

MODE_TEXT = {
    Mode.DIRECT: "direct (--direct: each agent talks to the storage nodes from its own node)",
    Mode.ANONYMOUS: "anonymous (the default: through go-betweens; storage nodes see Z)",
}


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _range(xs: list[float]) -> str:
    if not xs:
        return "-"
    lo, hi = min(xs), max(xs)
    return f"{lo:.3f}" if hi - lo < 5e-4 else f"{lo:.3f}-{hi:.3f}"


def _spread(xs: list[int]) -> str:
    if not xs:
        return "0"
    return str(xs[0]) if min(xs) == max(xs) else f"{min(xs)}-{max(xs)}"


def _values(xs: tuple[int, ...], unit: str) -> str:
    shown = ", ".join(map(str, xs[:6])) + (", ..." if len(xs) > 6 else "")
    return f"{len(xs)} value{'s' if len(xs) != 1 else ''} ({shown} {unit})"


def _row(label: str, rep: ReplicaResult, s: RuleScore, everywhere: list[float]) -> str:
    iv = s.interval
    interval = "-" if iv is None else f"[{iv[0]:.3f}, {iv[1]:.3f}]"
    return (f"  {label:<{W}}{_p(s.precision):>9}  {interval:<16}{s.recall:>7.3f}"
            f"{s.grouped:>9}   {_range(everywhere)}")


def _label(feature: str, rep: ReplicaResult, window: float) -> str:
    if feature == GAP:
        return f"{feature} (tau {rep.tau:.1f} s)"
    if feature == WINDOW:
        return f"arrival within {window:g} s"
    return feature


def table(res: ModeResult, window: float) -> list[str]:
    lines = [f"  {'rule: equal value => same sender':<{W}}{'precision':>9}  "
             f"{'95% interval':<16}{'recall':>7}{'pairs':>9}   all replicas"]
    for feature in FEATURES:
        found = res.best_for(feature)
        if found is None:
            continue
        rep, s = found
        everywhere = [p for r in res.replicas
                      if (p := r.scores[feature].precision) is not None]
        lines.append(_row(_label(feature, rep, window), rep, s, everywhere))
    found = res.best_for(None)
    if found is not None:
        rep, s = found
        everywhere = [p for r in res.replicas
                      if r.combination is not None and (p := r.combination.precision) is not None]
        name = s.name.replace(WINDOW, f"arrival within {window:g} s")
        lines.append(_row(f"best combination: {name}", rep, s, everywhere))
    return lines


def facts(res: ModeResult) -> list[str]:
    reps = res.replicas
    entries = [r.entries for r in reps]
    keys = [r.distinct[KEY] for r in reps]
    peers = [r.distinct[PEER] for r in reps]
    own = sum(r.peer_is_sender for r in reps)
    total = sum(entries)
    key_line = (f"  token keys: {_spread(keys)} distinct keys for {_spread(entries)} entries per "
                f"replica; keys spent on two different entries: {res.keys_shared}")
    key_line += " (each token is spent once)" if res.keys_shared == 0 else " (!)"
    repeats = sum(r.repeats for r in reps)
    unknown = sum(r.unknown for r in reps)
    lines = [
        key_line,
        f"  token expiry: {res.expiry_values} value(s) over every replica's log (one per "
        f"30-day epoch of issue)",
        f"  entry sizes seen: {_values(res.sizes, 'bytes')}; ttls seen: "
        f"{_values(res.ttls, 's')}",
        f"  peers: {_spread(peers)} distinct per replica; the peer is the sender's own node in "
        f"{own}/{total} logged entries",
    ]
    if res.mode is Mode.DIRECT:
        lines.append("  (that is what --direct means: the storage nodes see your node, and "
                     "permits cannot hide it)")
    if repeats or unknown:
        lines.append(f"  repeats of an entry already logged (counted once): {repeats}; entries "
                     f"spending no token of ours: {unknown}")
    return lines


def format_mode(res: ModeResult, window: float) -> list[str]:
    reps = res.replicas
    closest = sum(r.among_closest for r in reps)
    chances = [r.chance for r in reps]
    lines = [
        f"{MODE_TEXT[res.mode]}",
        f"  {res.sent}/{res.planned} messages sent ({res.failed_attempts} failed attempts, "
        f"retried); {res.delivered} entries accepted; {len(reps)} replicas logged APPENDs "
        f"({closest} of them among the r closest); virtual {res.virtual_seconds / 3600:.1f} h",
        f"  per replica: {_spread([r.entries for r in reps])} entries from "
        f"{_spread([r.senders for r in reps])} senders; chance that two share a sender "
        f"{_range(chances)}",
        *table(res, window),
        *facts(res),
    ]
    found = res.best()
    if found is None:
        lines.append("  best a logging replica achieves: no rule groups any pair")
        lines.append(f"  verdict: {verdict(None)}")
        return lines
    rep, s = found
    lines.append(f"  best a logging replica achieves: precision {_p(s.precision)} with "
                 f"'{s.name}' ({s.grouped} pairs, recall {s.recall:.3f}, {s.excess:+.1f} "
                 f"standard errors from chance; replica {rep.replica.hex()[:8]}); chance "
                 f"{s.chance:.3f}")
    top = res.most_precise()
    if top is not None and top[1] != s:
        t = top[1]
        iv = t.interval or (0.0, 1.0)
        lines.append(f"  (the highest precision of any rule: {_p(t.precision)} with '{t.name}' "
                     f"over {t.grouped} pairs, 95% interval [{iv[0]:.3f}, {iv[1]:.3f}])")
    lines.append(f"  verdict: {verdict(s)}")
    if res.mode is Mode.ANONYMOUS and PEER in s.rule and s.above_chance:
        lines.append("  (the peer is Z: a sender reuses its channel to Z for a message sent less "
                     "than a minute after its previous one finished, anon/circuit.py IDLE_REUSE, "
                     "so their appends come from one Z; other equal peers are coincidences of "
                     "random Zs)")
    return lines


def format_report(rep: LinkageReport) -> str:
    c = rep.config
    lines = [
        f"anonmail sim linkage: {c.nodes} nodes (honest, permit-gated, every node a relay, "
        f"no churn), r={c.replication}, seed {c.seed}",
        f"one inbox owner; {c.senders} senders, its contacts, each sending {c.messages} "
        f"messages to it at uniform random times over {c.hours:g} h",
        "every inbox replica logs each APPEND it accepts (time, peer, size, ttl, token key and "
        "expiry) and groups them by sender from its own log; scores are pairwise, at the "
        "replica where each rule does best",
        "",
    ]
    for i, res in enumerate(rep.results):
        if i:
            lines.append("")
        lines += format_mode(res, c.window)
    return "\n".join(lines)
