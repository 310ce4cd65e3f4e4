"""The tables `anonmail sim lookup` prints for a lookup `Report` (model.py): success rate (or,
plain, exact-match rate), mean hops and mean requests per (m, d), and the plain run's hop
histogram.

Invariants: pure formatting, no I/O; the output is a function of the report alone (no wall
clock: the command adds that line itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from anonmail.experiments.lookup.model import Cell, Report


def format_report(report: Report) -> str:
    cfg = report.config
    ds = cfg.paths
    head = "".join(f"{'d=' + str(d):>9}" for d in ds)
    lines = [f"{cfg.nodes} nodes ({cfg.bootstrap} tables), k={cfg.k}, alpha={cfg.alpha}, "
             f"{cfg.lookups} lookups per cell, seed {cfg.seed}"]

    def table(title: str, rows: Sequence[float], value: Callable[[Cell], str],
              label: Callable[[float], str]) -> None:
        lines.append("")
        lines.append(f"{title:<16}{head}")
        for m in rows:
            cells = [report.cell(m, d) for d in ds]
            lines.append(f"{label(m):<16}" + "".join(f"{value(c):>9}" for c in cells))

    if report.plain:
        lines.append("no adversaries; exact = the result is the true k closest live nodes")
        table("exact %", [0.0], lambda c: f"{100 * c.exact_rate:.1f}", lambda m: "")
        table("mean hops", [0.0], lambda c: f"{c.mean_hops:.2f}", lambda m: "")
        table("mean requests", [0.0], lambda c: f"{c.mean_requests:.1f}", lambda m: "")
        lines.append("")
        lines.append("hop histogram (lookups per number of hops)")
        hops = [h for c in report.cells for h in c.hops]
        lines.append(f"{'hops':<16}{head}")
        for h in range(min(hops, default=0), max(hops, default=-1) + 1):
            lines.append(f"{h:<16}" + "".join(f"{report.cell(0.0, d).hops[h]:>9}" for d in ds))
    else:
        lines.append("success = the result holds the true closest honest node to the key")
        ms = cfg.hostile
        table("success %", ms, lambda c: f"{100 * c.success_rate:.1f}", lambda m: f"m={m:g}")
        table("mean hops", ms, lambda c: f"{c.mean_hops:.2f}", lambda m: f"m={m:g}")
        table("mean requests", ms, lambda c: f"{c.mean_requests:.1f}", lambda m: f"m={m:g}")
    return "\n".join(lines)
