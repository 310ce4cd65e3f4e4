"""`anonmail sim mail`: the mail delivery experiment from the command line (model.py, run.py,
report.py; seed 003 §6.1). `register(subparsers)` adds the subcommand under `anonmail sim`
(experiments/sim_command.py calls it). It reads the real clock, only to report how long a run
took; arguments are checked here and turned into a `MailConfig`, so a bad one is one clear
`UserError` line before anything runs.

    anonmail sim mail                   # 1,000 nodes and messages, 20% droppers, 10%/h churn
    anonmail sim mail --replication 4   # fewer replicas: watch delivery fall
    anonmail sim mail --no-republish    # no repair: the seed's (1 - p_a)^r without it
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from anonmail.errors import UserError
from anonmail.experiments.mail.model import MailConfig
from anonmail.experiments.mail.report import format_report
from anonmail.experiments.mail.run import run_parallel


def _range(kind: type[int] | type[float], what: str) -> Any:
    def parse(text: str) -> tuple[float, float]:
        try:
            parts = [kind(x) for x in text.split("-", 1)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: write {what} like 5 or 2-20") from None
        lo, hi = parts[0], parts[-1]
        if not 0 <= lo <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= low <= high")
        return lo, hi

    return parse


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write a fraction like 0.2") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a fraction in [0, 1)")
    return v


def register(subparsers: Any) -> None:
    d = MailConfig()
    p = subparsers.add_parser(
        "mail", help="mail delivery under dropping storage nodes and churn",
        description="Send messages between user agents over a simulated network where a "
                    "fraction of storage nodes sign receipts and keep nothing, and nodes leave "
                    "and join every hour; report the delivery rate beside the seed's "
                    "p_disaster = (1 - p_a)^r. Runs in virtual time; CPU only.")
    p.add_argument("--nodes", type=int, default=d.nodes,
                   help=f"storage nodes N (default {d.nodes})")
    p.add_argument("--messages", type=int, default=d.messages,
                   help=f"messages M (default {d.messages})")
    p.add_argument("--agents", type=int, default=d.agents,
                   help=f"user agents sending to each other (default {d.agents})")
    p.add_argument("--replication", type=int, default=d.replication,
                   help=f"replicas r of every body and inbox entry (default {d.replication})")
    p.add_argument("--droppers", type=_fraction, default=d.droppers,
                   help=f"fraction of storage nodes that drop what they store "
                        f"(default {d.droppers:g})")
    p.add_argument("--lying", action="store_true",
                   help="droppers also claim to hold everything when a replica probes them")
    p.add_argument("--churn", type=_fraction, default=d.churn,
                   help=f"fraction of N that leaves (and joins) per virtual hour "
                        f"(default {d.churn:g})")
    p.add_argument("--hours", type=float, default=d.send_hours,
                   help=f"virtual hours the sends are spread over (default {d.send_hours:g})")
    p.add_argument("--delay", type=_range(float, "hours"), default=d.delay_hours,
                   help="virtual hours from a send to the recipient's check, uniform "
                        f"(default {d.delay_hours[0]:g}-{d.delay_hours[1]:g})")
    p.add_argument("--size", type=_range(int, "bytes"), default=d.size,
                   help=f"body text bytes, uniform (default {d.size[0]}-{d.size[1]})")
    p.add_argument("--no-republish", dest="republish", action="store_false",
                   help="storage nodes never republish (no repair)")
    p.add_argument("--republish-paths", type=int, default=d.republish_paths,
                   help=f"disjoint paths of the nodes' republish lookups "
                        f"(default {d.republish_paths}; agents always use the network's d)")
    p.add_argument("--encode", action="store_true",
                   help="encode and decode every message (exact bytes; about 3x slower)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--anonymous", action="store_true",
                   help="agents go through go-betweens; the droppers are then also hostile "
                        "go-betweens (lie, refuse to relay, forge/alter/withhold receipts)")
    jobs = min(2, os.cpu_count() or 1)
    p.add_argument("--jobs", type=int, default=jobs,
                   help="run as this many independent networks of --nodes nodes in parallel "
                        "processes, sharing out the messages and agents (default "
                        f"{jobs}: one per core, up to 2; 1 for one network)")
    p.set_defaults(func=_mail)


def config_from(args: argparse.Namespace) -> MailConfig:
    if args.nodes < args.replication + 2:
        raise UserError("--nodes must exceed --replication by at least 2")
    if not 1 <= args.replication <= 20:
        raise UserError("--replication must be 1-20 (at most the DHT's k)")
    if args.messages < 1:
        raise UserError("--messages must be at least 1")
    if args.agents < 2:
        raise UserError("--agents must be at least 2")
    if not args.hours > 0 or args.delay[1] * 3600 >= 14 * 86400:
        raise UserError("--hours must be positive and --delay within the 14-day TTL")
    if not 1 <= args.republish_paths <= 16:
        raise UserError("--republish-paths must be 1-16")
    if args.size[0] < 1 or args.size[1] > 10_000_000:
        raise UserError("--size must be 1 byte to 10 MB")
    return MailConfig(nodes=args.nodes, messages=args.messages, agents=args.agents,
                         replication=args.replication, droppers=args.droppers,
                         lying=args.lying, churn=args.churn, send_hours=args.hours,
                         delay_hours=(float(args.delay[0]), float(args.delay[1])),
                         size=(int(args.size[0]), int(args.size[1])),
                         republish=args.republish, republish_paths=args.republish_paths,
                         encode=args.encode, seed=args.seed, anonymous=args.anonymous)


def _mail(args: argparse.Namespace) -> int:
    config = config_from(args)
    if not 1 <= args.jobs <= 64:
        raise UserError("--jobs must be 1-64")
    start = time.perf_counter()
    report = run_parallel(config, args.jobs,
                             progress=lambda line: print(line, file=sys.stderr))
    wall = time.perf_counter() - start
    print(format_report(report))
    how = ("every message encoded" if config.encode
           else "messages passed as objects, not encoded (encode=False)")
    print(f"\nwall clock: {wall:.1f} s (build {report.wall_build:.1f} s, mail "
          f"{report.wall_run:.1f} s); {how}")
    return 0
