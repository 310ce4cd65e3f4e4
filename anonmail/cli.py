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


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
          ) -> argparse.Namespace:
    """The parsed command line, options allowed between a command's positionals.

    argparse binds an optional positional at its first chance, so in `contacts add --home H
    ADDR` or `reply ID --home H FILE` the last word would be refused as unrecognized. When plain
    parsing leaves words over, the command's own parser parses them again intermixed
    (`parse_intermixed_args`, which takes options first and then every positional in order);
    what it cannot place is the same one-line usage error as before."""
    words = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(words)
    if not extra:
        return args
    leaf, at = parser, 0
    while (choices := _commands(leaf)) is not None and at < len(words) \
            and words[at] in choices:
        leaf, at = choices[words[at]], at + 1
    if leaf is parser or _commands(leaf) is not None:
        return parser.parse_args(words)  # refuses `extra` with the usage line
    vars(args).update(vars(leaf.parse_intermixed_args(words[at:])))
    return args


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    """The parser's subcommands by name, or None when it has none."""
    for action in parser._actions:  # argparse keeps subparsers only there
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
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
