"""`anonmail sim linkage`: the linkage experiment from the command line (model.py, run.py,
report.py; DESIGN.md §6, §7; threat T-PERMIT-LINK). `register(subparsers)` adds the subcommand
under `anonmail sim` (experiments/sim_command.py calls it). It reads the real clock, only to
report how long a run took; arguments are checked here and turned into a `LinkageConfig`, so a
bad one is one clear `UserError` line before anything runs. Progress goes to stderr, the table
to stdout.

    anonmail sim linkage                    # 300 nodes, 4 senders x 50 messages, both modes
    anonmail sim linkage --mode anonymous   # only the default way of sending
    anonmail sim linkage --senders 2        # chance is then 1/2
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from anonmail.errors import UserError
from anonmail.experiments.linkage.model import LinkageConfig, Mode
from anonmail.experiments.linkage.report import format_report
from anonmail.experiments.linkage.run import run
from anonmail.permit.book import MAX_HELD

MODES = {"both": (Mode.DIRECT, Mode.ANONYMOUS), "direct": (Mode.DIRECT,),
         "anonymous": (Mode.ANONYMOUS,)}


def register(subparsers: Any) -> None:
    d = LinkageConfig()
    p = subparsers.add_parser(
        "linkage", help="can an inbox replica group one sender's appends?",
        description="One inbox owner and its contacts, each sending messages to it with "
                    "one-time permit tokens; every inbox replica logs the APPENDs it accepts "
                    "(time, peer, size, ttl, token key and expiry) and tries to group them by "
                    "sender from its own log. Reports, per feature, the precision and recall "
                    "of 'equal value, same sender' against chance, sent directly and "
                    "anonymously. Runs in virtual time; CPU only.")
    p.add_argument("--nodes", type=int, default=d.nodes,
                   help=f"storage nodes N, honest and permit-gated (default {d.nodes})")
    p.add_argument("--senders", type=int, default=d.senders,
                   help=f"senders S, the owner's contacts (default {d.senders})")
    p.add_argument("--messages", type=int, default=d.messages,
                   help=f"messages M each sender sends to the owner (default {d.messages})")
    p.add_argument("--hours", type=float, default=d.hours,
                   help=f"virtual hours each sender's sends are spread over, uniformly "
                        f"(default {d.hours:g})")
    p.add_argument("--mode", choices=sorted(MODES), default="both",
                   help="direct (agents talk to storage nodes themselves), anonymous (through "
                        "go-betweens, the default way of sending), or both (default both)")
    p.add_argument("--gap-quantile", type=float, default=d.gap_quantile,
                   help=f"the arrival-gap rule links adjacent appends at most this quantile "
                        f"of the gaps apart (default {d.gap_quantile:g})")
    p.add_argument("--window", type=float, default=d.window,
                   help=f"the arrival-window rule links appends at most this many seconds "
                        f"apart (default {d.window:g}: the longest a sender reuses a channel)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.set_defaults(func=_linkage)


def config_from(args: argparse.Namespace) -> LinkageConfig:
    d = LinkageConfig()
    if args.nodes < d.replication + 2:
        raise UserError(f"--nodes must be at least {d.replication + 2}")
    if not 1 <= args.senders <= 100:
        raise UserError("--senders must be 1-100")
    if not 1 <= args.messages <= MAX_HELD // 2:
        raise UserError(f"--messages must be 1-{MAX_HELD // 2} (a sender holds at most "
                        f"{MAX_HELD} tokens)")
    if not 0 < args.hours <= 24 * 14:
        raise UserError("--hours must be positive and at most 14 days (the entries' TTL)")
    if not 0 < args.gap_quantile <= 1:
        raise UserError("--gap-quantile must be in (0, 1]")
    if not 0 < args.window <= 86400:
        raise UserError("--window must be positive and at most a day (seconds)")
    return LinkageConfig(nodes=args.nodes, senders=args.senders, messages=args.messages,
                         hours=args.hours, gap_quantile=args.gap_quantile, window=args.window,
                         modes=MODES[args.mode], seed=args.seed)


def _linkage(args: argparse.Namespace) -> int:
    config = config_from(args)
    start = time.perf_counter()
    report = run(config, progress=lambda line: print(line, file=sys.stderr))
    wall = time.perf_counter() - start
    print(format_report(report))
    each = ", ".join(f"{r.mode.value} {r.wall:.1f} s" for r in report.results)
    print(f"\nwall clock: {wall:.1f} s ({each})")
    return 0
