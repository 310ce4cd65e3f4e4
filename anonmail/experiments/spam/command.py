"""`anonmail sim spam`: the spam experiment from the command line (model.py, run.py,
report.py; DESIGN.md §6). `register(subparsers)` adds the subcommand under `anonmail sim`
(experiments/sim_command.py calls it). It reads the real clock, only to report how long a run
took; arguments are checked here and turned into a `SpamConfig`, so a bad one is one clear
`UserError` line before anything runs. Progress goes to stderr, the table to stdout.

    anonmail sim spam                   # 300 nodes, 100 victims, 1,000 identities, 18 bits
    anonmail sim spam --victims 10      # the same price per request, a tenth of the CPU
    anonmail sim spam --bits 12         # a cheaper difficulty: watch the price fall
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from anonmail.errors import UserError
from anonmail.experiments.spam.model import SpamConfig
from anonmail.experiments.spam.report import format_report
from anonmail.experiments.spam.run import run

MAX_BITS = 32  # 2**32 hashes a stamp: hours of CPU; more is a typo


def register(subparsers: Any) -> None:
    d = SpamConfig()
    p = subparsers.add_parser(
        "spam", help="a spammer with many identities and no permits against RTS/CTS",
        description="A spammer with many certified identities and no permits appends to "
                    "victims' permit-gated inboxes (nothing may be stored) and floods their "
                    "request inboxes with RTS carrying real proof-of-work stamps (at most the "
                    "quota is held); reports what it got in and the CPU it spent minting. "
                    "Runs in virtual time; the minting is real CPU (a median ~0.1 s a stamp "
                    "at the default 18 bits; the default run mints ~6,500 stamps).")
    p.add_argument("--nodes", type=int, default=d.nodes,
                   help=f"storage nodes N, all permit-gated (default {d.nodes})")
    p.add_argument("--victims", type=int, default=d.victims,
                   help=f"victims V (default {d.victims})")
    p.add_argument("--identities", type=int, default=d.identities,
                   help=f"the spammer's certified identities (default {d.identities})")
    p.add_argument("--bits", type=int, default=d.bits,
                   help=f"stamp difficulty of the network and of every victim's policy "
                        f"(default {d.bits}, the main network's)")
    p.add_argument("--spam", type=int, default=d.spam,
                   help=f"direct appends per victim of each unstamped kind (default {d.spam})")
    p.add_argument("--flood", type=int, default=d.flood,
                   help=f"stamp-less and weak-stamp appends per victim, each (default "
                        f"{d.flood})")
    p.add_argument("--max-rts", type=int, default=d.max_rts,
                   help=f"the spammer's bound on stamped RTS per victim (default {d.max_rts})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.set_defaults(func=_spam)


def config_from(args: argparse.Namespace) -> SpamConfig:
    d = SpamConfig()
    if args.nodes < d.replication + 2:
        raise UserError(f"--nodes must be at least {d.replication + 2}")
    if args.victims < 1 or args.identities < 1:
        raise UserError("--victims and --identities must be at least 1")
    if not 1 <= args.bits <= MAX_BITS:
        raise UserError(f"--bits must be 1-{MAX_BITS}")
    if args.spam < 0 or args.flood < 0 or args.max_rts < 0:
        raise UserError("--spam, --flood and --max-rts must not be negative")
    return SpamConfig(nodes=args.nodes, victims=args.victims, identities=args.identities,
                      bits=args.bits, spam=args.spam, flood=args.flood, max_rts=args.max_rts,
                      seed=args.seed)


def _spam(args: argparse.Namespace) -> int:
    config = config_from(args)
    start = time.perf_counter()
    report = run(config, progress=lambda line: print(line, file=sys.stderr))
    wall = time.perf_counter() - start
    print(format_report(report))
    print(f"\nwall clock: {wall:.1f} s (build {report.wall_build:.1f} s, spam "
          f"{report.wall_run:.1f} s)")
    return 0
