"""`anonmail sim lookup`: the S/Kademlia lookup experiment from the command line (model.py,
run.py, report.py). `register(subparsers)` adds the subcommand under `anonmail sim`
(experiments/sim_command.py calls it). It reads the real clock, only to report how long a run
took; arguments are checked here, so a bad one is one clear `UserError` line before anything
runs. Progress goes to stderr, the table to stdout.

    anonmail sim lookup                  # the S/Kademlia table (m x d, success %)
    anonmail sim lookup --plain          # no adversaries: exact-match rate and hop histogram
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from anonmail.errors import UserError
from anonmail.experiments.args import fractions
from anonmail.experiments.lookup.model import Cell, ExperimentConfig
from anonmail.experiments.lookup.report import format_report
from anonmail.experiments.lookup.run import run


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write counts like 1,2,4,8") from None
    if not values or not all(1 <= v <= 16 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: path counts must be 1-16")
    return values


def register(subparsers: Any) -> None:
    """Add `lookup` to the `anonmail sim` subcommands."""
    defaults = ExperimentConfig()
    p = subparsers.add_parser(
        "lookup", help="S/Kademlia disjoint-path lookups under colluding adversaries",
        description="Reproduce S/Kademlia's lookup experiment: success rate of lookups (the "
                    "result holds the true closest honest node) per hostile fraction m and "
                    "number of disjoint paths d. Runs in virtual time; CPU only.")
    p.add_argument("--nodes", type=int, default=defaults.nodes,
                   help=f"network size (default {defaults.nodes})")
    p.add_argument("--lookups", type=int, default=defaults.lookups,
                   help=f"lookups per (m, d) cell (default {defaults.lookups})")
    p.add_argument("--k", type=int, default=defaults.k,
                   help=f"bucket size and result size (default {defaults.k})")
    p.add_argument("--alpha", type=int, default=defaults.alpha,
                   help=f"requests in flight per path (default {defaults.alpha})")
    p.add_argument("--hostile", type=fractions, default=defaults.hostile,
                   help="hostile fractions m (default 0,0.1,0.2,0.3)")
    p.add_argument("--paths", type=_ints, default=defaults.paths,
                   help="disjoint path counts d (default 1,2,4,8)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default 1)")
    p.add_argument("--bootstrap", choices=("oracle", "join"), default=defaults.bootstrap,
                   help="fill tables directly (oracle, fast) or by real joins (join, for up "
                        "to ~2,000 nodes)")
    p.add_argument("--plain", action="store_true",
                   help="no adversaries: exact-match rate vs the oracle and hop histogram")
    p.set_defaults(func=_lookup)


def _lookup(args: argparse.Namespace) -> int:
    if args.nodes < 2:
        raise UserError("--nodes must be at least 2")
    if args.lookups < 1:
        raise UserError("--lookups must be at least 1")
    if not 1 <= args.k <= 64:
        raise UserError("--k must be 1-64")
    if not 1 <= args.alpha <= 16:
        raise UserError("--alpha must be 1-16")
    config = ExperimentConfig(nodes=args.nodes, lookups=args.lookups, k=args.k, alpha=args.alpha,
                              hostile=args.hostile, paths=args.paths, seed=args.seed,
                              bootstrap=args.bootstrap)
    start = time.perf_counter()
    built = [start]

    def on_built(_: object) -> None:
        built[0] = time.perf_counter()
        print(f"built {args.nodes} nodes in {built[0] - start:.1f} s", file=sys.stderr)

    def progress(cell: Cell) -> None:
        rate = cell.exact_rate if args.plain else cell.success_rate
        print(f"  m={cell.m:g} d={cell.d}: {100 * rate:.1f}%", file=sys.stderr)

    report = run(config, plain=args.plain, on_built=on_built, progress=progress)
    end = time.perf_counter()
    print(format_report(report))
    print(f"\nwall clock: {end - start:.1f} s (build {built[0] - start:.1f} s, "
          f"lookups {end - built[0]:.1f} s); virtual time {report.virtual_seconds:.0f} s")
    return 0
