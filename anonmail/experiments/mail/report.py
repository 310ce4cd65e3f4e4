"""The table `anonmail sim mail` prints for a `MailReport` (model.py): delivery measured beside
predicted, the seed's formula with this run's numbers, latency, wire cost per delivered mail and
what repair and the droppers did.

Invariants: pure formatting, no I/O; the output is a function of the report alone (no wall
clock: the command adds that line itself). `human_size` is shared with the benchmarks.
"""

from __future__ import annotations

import math
import statistics

from anonmail.experiments.mail.model import MailReport
from anonmail.sim.storage import HOUR


def percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def human_size(n: float) -> str:
    """Bytes in MB, KB or B, one decimal."""
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _header(rep: MailReport) -> list[str]:
    cfg = rep.config
    kind = "lying in Probe" if cfg.lying else "plain"
    rep_line = (f"republish every {cfg.republish_interval / HOUR:g} h (lookups over "
                f"{cfg.republish_paths} path{'s' if cfg.republish_paths > 1 else ''})"
                if cfg.republish else "NO republish")
    where = (f"{cfg.nodes} nodes" if rep.shards == 1 else
             f"{rep.shards} independent networks of {cfg.nodes} nodes (messages and agents "
             f"shared out)")
    return [
        f"anonmail sim mail: {where}, {cfg.agents} agents, {len(rep.letters)} messages of "
        f"{human_size(cfg.size[0])}-{human_size(cfg.size[1])} text, r={cfg.replication}, "
        f"seed {cfg.seed}",
        f"droppers {cfg.droppers:.0%} ({kind}); churn {cfg.churn:.0%} of N per hour "
        f"({rep.left} left, {rep.joined} joined); {rep_line}",
        f"sends over {cfg.send_hours:g} h, checks {cfg.delay_hours[0]:g}-{cfg.delay_hours[1]:g} h "
        f"after; virtual time {rep.virtual_seconds / HOUR:.1f} h",
    ]


def _delivery(rep: MailReport) -> list[str]:
    cfg, pr = rep.config, rep.prediction
    n = len(rep.letters)
    lost = rep.lost
    no_header = sum(1 for x in lost if not x.header_seen)
    predicted = pr.with_repair if cfg.republish else pr.no_repair
    return [
        f"{'':44}{'measured':>14}{'predicted':>12}",
        f"{'delivered intact':44}{rep.delivered:>7}/{n:<6}",
        f"{'delivery rate':44}{percent(rep.rate):>14}{percent(predicted):>12}",
        f"{'  lost silently (header / body missing)':44}{len(lost):>7} "
        f"({no_header} / {len(lost) - no_header})",
        f"{'  send failed, sender told':44}{rep.send_failed:>7}",
        f"{'  delivered by the final check':44}{rep.swept:>7}",
        "",
        "p_a(t) = (1-f) s(t), s(t) = (1-cD)^(t/D) ~ exp(-ct), p_disaster = (1-p_a)^r "
        "(seed 003 §6.1)",
        f"  f={cfg.droppers:g}, c={cfg.churn:g}/h, D={cfg.churn_step / 60:g} min, "
        f"r={cfg.replication}",
        f"  with repair, T={pr.interval_hours:g} h: p_a(T)={pr.p_a_interval:.3f}  "
        f"p_disaster={pr.p_disaster_interval:.2e}/key/interval  "
        f"delivery {percent(pr.with_repair)}",
        f"  no repair, mean H={pr.holding_hours:.1f} h: p_a(H)={pr.p_a_hold:.3f}  "
        f"p_disaster={pr.p_disaster_hold:.2e}/key  delivery {percent(pr.no_repair)}",
    ]


def _wire(rep: MailReport) -> list[str]:
    m, r = rep.meter, rep.config.replication
    d = max(rep.delivered, 1)
    mail_b, up_b = m.bytes("mail"), m.bytes("upkeep")
    how = ("exact" if rep.exact_bytes is not None
           else f"estimated from 1 in {m.sample_every} encoded")
    lines = [
        f"wire per delivered mail ({how}):",
        f"  {'agents (send, check, retrieve)':34}{m.messages('mail') / d:>9.0f} msgs "
        f"{human_size(mail_b / d):>10}",
        f"  {'nodes (republish, repair, joins)':34}{m.messages('upkeep') / d:>9.0f} msgs "
        f"{human_size(up_b / d):>10}",
        f"  {'floor: message size x r':34}{'':>14}"
        f"{human_size(rep.mean_size * r):>10}  ({human_size(rep.mean_size)} x {r})",
    ]
    if rep.exact_bytes is not None:
        lines.append(f"  {'all bytes, counted by the world':34}{'':>14}"
                     f"{human_size(rep.exact_bytes / d):>10}")
    by_type = sorted(m.bytes_by_type().items(), key=lambda kv: -kv[1])
    total = sum(v for _, v in by_type) or 1.0
    lines.append("  largest shares: " + ", ".join(f"{name} {v / total:.0%}"
                                                  for name, v in by_type[:4]))
    return lines


def _anonymity(rep: MailReport) -> list[str]:
    a, h = rep.anon, rep.hostile
    assert a is not None and h is not None
    caught = "every one caught" if a.bad_receipts >= h.tampered else \
        f"ONLY {a.bad_receipts} CAUGHT"
    return [
        f"anonymous: agents sent {a.forwards} forwards through Z, {a.lookups} cross-checked "
        f"lookups ({a.lookup_disagreements} Z/W disagreements), {a.retried} targets retried "
        f"through a fresh Z, {a.z_failures} channels to Z failed",
        f"hostile go-betweens ({rep.config.droppers:.0%}): {h.forged} receipts forged, "
        f"{h.altered} altered, {h.substituted} from friends, {h.withheld} answers withheld, "
        f"{h.lied} lies, {h.refused} refusals to relay; tampered receipts {h.tampered}, "
        f"detected by senders {a.bad_receipts} ({caught})",
    ]


def format_report(rep: MailReport) -> str:
    lines = [*_header(rep), "", *_delivery(rep), ""]
    lat = [x / HOUR for x in rep.latencies()]
    if lat:
        lines.append(f"latency send -> retrieved (virtual h): mean {statistics.fmean(lat):.2f}, "
                     f"median {statistics.median(lat):.2f}, p99 "
                     f"{lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]:.2f}, "
                     f"max {lat[-1]:.2f}")
    lines += _wire(rep)
    st, dr = rep.store, rep.drops
    lines.append(
        f"repair: {st.pushed_objects} objects and {st.pushed_entries} entries pushed, "
        f"{st.handed_over} handovers; droppers signed {dr.receipts} receipts, dropped "
        f"{dr.objects} objects and {dr.entries} entries, lied {dr.lies} times")
    if rep.anon is not None and rep.hostile is not None:
        lines += _anonymity(rep)
    if rep.errors:
        lines.append("agent errors: " + ", ".join(f"{k} {v}" for k, v in sorted(
            rep.errors.items())))
    return "\n".join(lines)
