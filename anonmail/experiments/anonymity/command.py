"""`anonmail sim anonymity`: the sender-linkage experiment from the command line (model.py,
run.py, report.py; issue 8, DESIGN.md §7, seed 002 §4). `register(subparsers)` adds the
subcommand under `anonmail sim` (experiments/sim_command.py calls it). It reads the real
clock, only to report how long a run took; arguments are checked here and turned into an
`AnonConfig`, so a bad one is one clear `UserError` line before anything runs. Progress goes
to stderr, the tables to stdout.

    anonmail sim anonymity                       # both adversaries, f = 5%, 10%, 20%
    anonmail sim anonymity --strategy patient    # the stronger hostile X only
    anonmail sim anonymity --also hops=2,delay_mean=2   # one more row: the defaults, changed
    anonmail sim anonymity --quick               # a small network, for a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

from anonmail.anon.options import DEFAULT, AnonOptions
from anonmail.errors import UserError
from anonmail.experiments.anonymity.model import STRATEGIES, AnonConfig
from anonmail.experiments.anonymity.report import format_report
from anonmail.experiments.anonymity.run import run_many
from anonmail.experiments.args import fractions

QUICK = {"nodes": 300, "senders": 100, "messages": 1_500, "history_senders": 50,
         "calibration": 600}


def parse_options(text: str) -> tuple[str, AnonOptions]:
    """`[label:]field=value,...` -> (label, DEFAULT with those fields changed)."""
    label, _, spec = text.rpartition(":") if ":" in text else ("", "", text)
    kinds = {f.name: type(getattr(DEFAULT, f.name)) for f in dataclasses.fields(AnonOptions)}
    changes: dict[str, object] = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        name, eq, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or name not in kinds:
            raise UserError(f"--also {text!r}: write field=value pairs with fields among "
                            f"{', '.join(kinds)}")
        try:
            if kinds[name] is bool:
                if value.lower() not in ("true", "false", "on", "off", "1", "0"):
                    raise ValueError(value)
                changes[name] = value.lower() in ("true", "on", "1")
            else:
                changes[name] = kinds[name](value)
        except ValueError:
            raise UserError(f"--also {text!r}: {value!r} is not a {kinds[name].__name__}") from None
    return (label or spec or "defaults"), DEFAULT.replace(**changes)


def register(subparsers: Any) -> None:
    d = AnonConfig()
    p = subparsers.add_parser(
        "anonymity", help="who can link anonymous senders to recipients, per defence",
        description="A statistical model of the anonymous sending protocol (seed 002 §4 and "
                    "the defences of AnonOptions) under a coalition of a fraction f of the "
                    "nodes: the seed's rule (X and Z hostile) beside f² and 3f²-2f³, a pooled "
                    "Bayesian adversary using times, sizes and hop identities, the chance of a "
                    "link in a sender's 100 messages, the degree of anonymity and the latency "
                    "each defence costs. Pure Python, deterministic from --seed.")
    p.add_argument("--nodes", type=int, default=None, help=f"nodes N (default {d.nodes})")
    p.add_argument("--senders", type=int, default=None,
                   help=f"honest senders, each also a recipient (default {d.senders})")
    p.add_argument("--messages", type=int, default=None,
                   help=f"measured messages (default {d.messages})")
    p.add_argument("--fractions", type=fractions, default=d.fractions,
                   help="hostile fractions f (default 0.05,0.1,0.2)")
    p.add_argument("--load", type=float, default=d.load,
                   help=f"network-wide anonymous messages per second (default {d.load:g})")
    p.add_argument("--replication", type=int, default=d.replication,
                   help=f"replicas r of a body and an inbox (default {d.replication})")
    p.add_argument("--contacts", type=int, default=d.contacts,
                   help=f"recipients each sender writes to (default {d.contacts})")
    p.add_argument("--history", type=int, default=d.history,
                   help=f"messages in a sender's history (default {d.history})")
    p.add_argument("--history-days", type=float, default=d.history_days,
                   help=f"days a history spans (default {d.history_days:g})")
    p.add_argument("--history-senders", type=int, default=None,
                   help=f"senders whose histories are simulated (default {d.history_senders})")
    p.add_argument("--calibration", type=int, default=None,
                   help=f"sends the adversary learns timing from (default {d.calibration})")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help=f"posterior at which (b) names a sender (default {d.threshold:g})")
    p.add_argument("--strategy", choices=(*STRATEGIES, "both"), default="both",
                   help="hostile X: greedy, patient, or both tables (default both)")
    p.add_argument("--disrupt", action="store_true",
                   help="hostile Ys contradict honest Xs, forcing retries (and guard changes)")
    p.add_argument("--lookup-leak", dest="lookup_leak", action="store_true",
                   help="what-if: A finds Y and M by a lookup just before using them, so they "
                        "learn A (the code before its pool of nodes found >= 5 min earlier)")
    p.add_argument("--delay", type=float, default=d.delay_mean,
                   help=f"delay_mean of the '+ delay' row (default {d.delay_mean:g} s)")
    p.add_argument("--batch", type=float, default=d.batch_interval,
                   help=f"batch_interval of the '+ batch' row (default {d.batch_interval:g} s)")
    p.add_argument("--also", action="append", default=[], metavar="[LABEL:]FIELD=VALUE,...",
                   help="one more row: the defaults with these AnonOptions fields changed "
                        "(repeatable), e.g. 2hops:hops=2,delay_mean=2")
    p.add_argument("--quick", action="store_true",
                   help="a small run: " + ", ".join(f"{k.replace('_', '-')} {v}"
                                                    for k, v in QUICK.items()))
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    jobs = min(2, os.cpu_count() or 1)
    p.add_argument("--jobs", type=int, default=jobs,
                   help=f"processes (default {jobs}: one per core, up to 2); the tables do "
                        "not depend on it")
    p.set_defaults(func=_anonymity)


def configs_from(args: argparse.Namespace) -> list[AnonConfig]:
    d = AnonConfig()
    sized = {k: getattr(args, k) if getattr(args, k) is not None
             else (QUICK[k] if args.quick else getattr(d, k)) for k in QUICK}
    nodes, senders = sized["nodes"], sized["senders"]
    if not 1 <= args.replication <= 20 or nodes < args.replication + 3:
        raise UserError("--replication must be 1-20 and --nodes at least r + 3")
    worst = max(args.fractions)
    if not 1 <= senders <= nodes - round(worst * nodes):
        raise UserError(f"--senders must be 1 to the {nodes - round(worst * nodes)} honest "
                        f"nodes left at f={worst:g}")
    if sized["messages"] < 1 or args.history < 1 or sized["calibration"] < 100:
        raise UserError("--messages and --history must be at least 1, --calibration 100")
    if not args.load > 0 or not args.history_days > 0 or args.contacts < 1:
        raise UserError("--load, --history-days and --contacts must be positive")
    if not 0 < args.threshold <= 1:
        raise UserError("--threshold must be in (0, 1]")
    if args.delay < 0 or args.batch < 0:
        raise UserError("--delay and --batch must be >= 0")
    extra = tuple(parse_options(x) for x in args.also)
    strategies = STRATEGIES if args.strategy == "both" else (args.strategy,)
    return [AnonConfig(nodes=nodes, senders=senders, messages=sized["messages"],
                       fractions=args.fractions, load=args.load,
                       replication=args.replication, contacts=args.contacts,
                       history=args.history, history_days=args.history_days,
                       history_senders=sized["history_senders"],
                       calibration=sized["calibration"], threshold=args.threshold,
                       strategy=s, disrupt=args.disrupt, lookup_leak=args.lookup_leak,
                       delay_mean=args.delay,
                       batch_interval=args.batch, extra=extra, seed=args.seed)
            for s in strategies]


def _anonymity(args: argparse.Namespace) -> int:
    configs = configs_from(args)
    if not 1 <= args.jobs <= 64:
        raise UserError("--jobs must be 1-64")
    start = time.perf_counter()
    reports = run_many(configs, args.jobs, progress=lambda line: print(line, file=sys.stderr))
    print("\n\n".join(format_report(report) for report in reports))
    print(f"\nwall clock: {time.perf_counter() - start:.1f} s")
    return 0
