"""`anonmail sim ...`: run simulations from the command line and print tables (an edge: it
reads the real clock, only to report how long a run took).

    anonmail sim lookup                  # the S/Kademlia table (m x d, success %)
    anonmail sim lookup --plain          # no adversaries: exact-match rate and hop histogram
    anonmail sim mail                    # mail delivery under droppers and churn (mail_cli.py)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from anonmail.errors import UserError
from anonmail.sim import lookup_experiment as lx
from anonmail.sim import mail_cli


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write fractions like 0,0.1,0.2") from None
    if not values or not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: fractions must be in [0, 1)")
    return values


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write counts like 1,2,4,8") from None
    if not values or not all(1 <= v <= 16 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: path counts must be 1-16")
    return values


def register(subparsers: Any) -> None:
    sim = subparsers.add_parser("sim", help="run a simulation and print its table")
    sim.set_defaults(func=lambda args: _usage(sim))
    sub = sim.add_subparsers(dest="scenario", metavar="SCENARIO")
    defaults = lx.ExperimentConfig()
    p = sub.add_parser(
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
    p.add_argument("--hostile", type=_floats, default=defaults.hostile,
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
    mail_cli.register(sub)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _lookup(args: argparse.Namespace) -> int:
    if args.nodes < 2:
        raise UserError("--nodes must be at least 2")
    if args.lookups < 1:
        raise UserError("--lookups must be at least 1")
    if not 1 <= args.k <= 64:
        raise UserError("--k must be 1-64")
    if not 1 <= args.alpha <= 16:
        raise UserError("--alpha must be 1-16")
    config = lx.ExperimentConfig(nodes=args.nodes, lookups=args.lookups, k=args.k, alpha=args.alpha,
                                 hostile=args.hostile, paths=args.paths, seed=args.seed,
                                 bootstrap=args.bootstrap)
    start = time.perf_counter()
    built = [start]

    def on_built(_: object) -> None:
        built[0] = time.perf_counter()
        print(f"built {args.nodes} nodes in {built[0] - start:.1f} s", file=sys.stderr)

    def progress(cell: lx.Cell) -> None:
        rate = cell.exact_rate if args.plain else cell.success_rate
        print(f"  m={cell.m:g} d={cell.d}: {100 * rate:.1f}%", file=sys.stderr)

    report = lx.run(config, plain=args.plain, on_built=on_built, progress=progress)
    end = time.perf_counter()
    print(lx.format_report(report))
    print(f"\nwall clock: {end - start:.1f} s (build {built[0] - start:.1f} s, "
          f"lookups {end - built[0]:.1f} s); virtual time {report.virtual_seconds:.0f} s")
    return 0
