"""The `anonmail` command line (an edge: it may read the real clock and the OS RNG).

Each command group lives in its own module exposing `register(subparsers)`; this module only
assembles them and turns `UserError` into one clear line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from anonmail import __version__
from anonmail.errors import UserError

# Modules that add subcommands; each has `register(subparsers) -> None` and sets `func` on its
# parsers, a callable taking the parsed namespace and returning an exit status.
COMMAND_MODULES = (
    "anonmail.commands.node_cmd",
    "anonmail.commands.mail_cmd",
    "anonmail.sim.demo",
    "anonmail.sim.cli",
    "anonmail.sim.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonmail",
        description="Serverless, end-to-end encrypted e-mail with anonymous senders.",
    )
    parser.add_argument("--version", action="version", version=f"anonmail {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # a command group not built yet
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
