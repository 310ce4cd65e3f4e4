"""`anonmail sim`: the command group of the simulation experiments. `register(subparsers)` adds
`sim` and, under it, each experiment's own subcommand (`lookup`, `mail`, `anonymity`, `spam`,
`linkage`), by static imports the layer test can see. `anonmail sim` alone prints the group's
help and exits with status 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from anonmail.experiments.anonymity import command as anonymity_command
from anonmail.experiments.linkage import command as linkage_command
from anonmail.experiments.lookup import command as lookup_command
from anonmail.experiments.mail import command as mail_command
from anonmail.experiments.spam import command as spam_command

# The experiments under `anonmail sim`, in the order of its help.
EXPERIMENTS = (lookup_command, mail_command, anonymity_command, spam_command,
               linkage_command)


def register(subparsers: Any) -> None:
    sim = subparsers.add_parser("sim", help="run a simulation and print its table")
    sim.set_defaults(func=lambda args: _usage(sim))
    sub = sim.add_subparsers(dest="scenario", metavar="SCENARIO")
    for experiment in EXPERIMENTS:
        experiment.register(sub)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
