"""The table `anonmail sim anonymity` prints for an `AnonymityReport` (model.py): per hostile
fraction f, one row per configuration with rule (a) beside f^2, 3f^2 - 2f^3 and the model's
own prediction, the pooled adversary (b), the chance that a sender's history of 100 messages
has at least one link, the degree of anonymity and the latency each defence adds.

Invariants: pure formatting, no I/O; the output is a function of the report alone (the command
adds the wall clock itself).
"""

from __future__ import annotations

from anonmail.experiments.anonymity.model import (
    AnonymityReport,
    FractionResult,
    Row,
    describe,
    majority,
    seed_rule,
)

STRATEGY_TEXT = {
    "greedy": "greedy X (always returns a hostile Z; an honest Y's disagreement makes A retry)",
    "patient": "patient X (returns a hostile Z only when the Y it relays to is hostile, else "
               "forwards honestly and stays unseen)",
}

def columns(width: int) -> str:
    return (f"{'configuration':<{width}}{'(a)':>8}{'pred':>8}{'f²':>8}{'3f²-2f³':>9}{'(a)/f²':>7}"
            f"{'(b)':>8}{'(b)/f²':>7}{'wrong':>7}{'1+/100a':>9}{'1+/100b':>9}{'d':>7}"
            f"{'+lat s':>8}")


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _header(rep: AnonymityReport) -> list[str]:
    c = rep.config
    hours = c.messages / c.load / 3600
    disrupt = "; hostile Ys contradict honest Xs (--disrupt)" if c.disrupt else ""
    leak = ("what-if: Y and M found by a lookup just before use learn A (--lookup-leak)"
            if c.lookup_leak else "Y and M from A's pool, found >= 5 min before use: they do "
            "not learn A (anon/gobetweens.py)")
    return [
        f"anonmail sim anonymity: {c.nodes} nodes, {c.senders} senders with {c.contacts} "
        f"contacts each, r={c.replication}, seed {c.seed}",
        f"load {c.load:g} anonymous messages/s network-wide: {c.messages} measured messages "
        f"({hours:.1f} h); histories: {min(c.history_senders, c.senders)} senders x "
        f"{c.history} messages over {c.history_days:g} days",
        f"adversary: a coalition of round(f N) nodes pooling all it sees; hostile "
        f"{STRATEGY_TEXT.get(c.strategy, c.strategy)}{disrupt}",
        f"{leak}; (b) names the top sender at posterior >= {c.threshold:g}; latency "
        f"{1000 * c.latency[0]:g}-{1000 * c.latency[1]:g} ms per link",
    ]


def _row(row: Row, f: float, base: float, width: int) -> str:
    f2 = seed_rule(f)

    def ratio(x: float) -> str:
        return f"{x / f2:7.2f}" if f2 > 0 else f"{'-':>7}"

    pred = pct(row.predicted) if row.predicted is not None else "-"
    return (f"{row.label:<{width}}{pct(row.rate_a):>8}{pred:>8}{pct(f2):>8}{pct(majority(f)):>9}"
            f"{ratio(row.rate_a)}{pct(row.rate_b):>8}{ratio(row.rate_b)}"
            f"{pct(row.misattributed / max(1, row.messages)):>7}"
            f"{100 * row.p_history_a:>8.1f}%{100 * row.p_history_b:>8.1f}%{row.degree:>7.3f}"
            f"{row.latency - base:>+8.2f}")


def format_fraction(res: FractionResult, strategy: str) -> list[str]:
    base = res.rows[0].latency if res.rows else 0.0
    width = max(16, *(len(row.label) + 1 for row in res.rows))
    lines = [f"f = {res.f:g} ({strategy}): {res.hostile} hostile nodes holding "
             f"{100 * res.share:.1f}% of the id space; seed-only latency {base:.2f} s",
             columns(width)]
    lines += [_row(row, res.f, base, width) for row in res.rows]
    return lines


def format_report(rep: AnonymityReport) -> str:
    lines = _header(rep)
    for res in rep.results:
        lines += ["", *format_fraction(res, rep.config.strategy)]
    lines += ["", "configurations:"]
    if rep.results:
        width = max(16, *(len(row.label) + 1 for row in rep.results[0].rows))
        lines += [f"  {row.label:<{width}}{describe(row.options)}"
                  for row in rep.results[0].rows]
    lines += [
        "",
        "(a): X and Z hostile (X, M and Z with 2 hops), seed 002 §4.2; pred: the model's rate "
        "for a fresh X per channel",
        "  (model.py); 3f²-2f³: at least two of X, Y, Z hostile (an upper bound). (b): (a) or "
        "the pooled Bayesian",
        "  adversary names the true sender; wrong: it names another one. 1+/100: a sender's "
        "100 messages have >= 1 link.",
        "  d: degree of anonymity H/log2(senders), Díaz et al. 2002 (1 = nothing learnt). "
        "+lat: mean latency (send to",
        "  header on every inbox replica) minus seed-only's.",
    ]
    return "\n".join(lines)
