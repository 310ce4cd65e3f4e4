"""The `anonmail` command line (the entry layer, on top of all others; it may read the real clock).

Each command group lives in its own module exposing `register(subparsers)`; this module only
assembles them, by static imports the layer test can see (it sits on top of every layer), and
turns `UserError` into one clear line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from anonmail import __version__
from anonmail.commands import mail_cmd, node_cmd, permit_cmd, read_cmd, run_cmd
from anonmail.errors import UserError
from anonmail.experiments import sim_command
from anonmail.experiments.bench import command as bench_command
from anonmail.experiments.demo import command as demo_command

# Modules that add subcommands, in the order of `anonmail --help`; each has
# `register(subparsers) -> None` and sets `func` on its parsers, a callable taking the parsed
# namespace and returning an exit status.
COMMAND_MODULES = (node_cmd, run_cmd, mail_cmd, read_cmd, permit_cmd, demo_command, sim_command,
                   bench_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonmail",
        description="Serverless, end-to-end encrypted e-mail with anonymous senders.",
    )
    parser.add_argument("--version", action="version", version=f"anonmail {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status: int = args.func(args)
    except UserError as e:
        print(f"anonmail: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anonmail: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`anonmail … | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
