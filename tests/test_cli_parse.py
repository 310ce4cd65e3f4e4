"""The command line's parsing (cli.parse): options may sit anywhere among a command's words,
as users type them, and what cannot be placed is still the one usage error."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonmail import cli

PARSER = cli.build_parser()


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
           ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    sub = cli._commands(parser)
    if sub is None:
        yield path, parser
        return
    for name, child in sub.items():
        yield from leaves(child, (*path, name))


@pytest.mark.parametrize(("words", "want"), [
    (["contacts", "add", "--home", "h", "a@b"], {"action": "add", "address": "a@b"}),
    (["contacts", "--home", "h", "add", "a@b"], {"action": "add", "address": "a@b"}),
    (["contacts", "add", "a@b", "--home", "h"], {"action": "add", "address": "a@b"}),
    (["contacts", "--home", "h"], {"action": "list", "address": None}),
    (["reply", "abc", "--home", "h", "f.txt"], {"id": "abc", "file": Path("f.txt")}),
    (["reply", "--home", "h", "abc", "f.txt"], {"id": "abc", "file": Path("f.txt")}),
    (["send", "--to", "x@y", "f.txt", "--home", "h"], {"file": Path("f.txt")}),
])
def test_options_may_sit_between_positionals(words: list[str], want: dict[str, object]) -> None:
    args = cli.parse(PARSER, words)
    assert {k: getattr(args, k) for k in want} == want
    assert args.home == Path("h") and args.command == words[0] and callable(args.func)


@pytest.mark.parametrize("words", [
    ["contacts", "add", "a", "b"],  # one word too many
    ["reply", "abc", "f.txt", "g.txt"],
    ["sim", "lookup", "--nodes", "5", "stray"],
    ["contacts", "add", "--no-such-option", "a@b"],
    ["no-such-command"],
])
def test_what_cannot_be_placed_is_the_usage_error(words: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.parse(PARSER, words)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("anonmail") and "error:" in err[-1]


def test_every_command_can_be_parsed_intermixed() -> None:
    # parse_intermixed_args refuses (TypeError) parsers it cannot handle; none of ours may be
    # one, or `parse` would crash on a leftover word instead of printing the usage line.
    found = list(leaves(PARSER))
    assert len(found) > 20
    for path, leaf in found:
        try:
            leaf.parse_intermixed_args([])
        except SystemExit:
            pass  # a required argument missing: the usage error, as it should be
        except TypeError as e:  # pragma: no cover - the failure this test exists for
            pytest.fail(f"anonmail {' '.join(path)}: {e}")


def _readable(w: list[str]) -> bool:
    """The option still followed by its value, the positionals still in their order."""
    at = w.index("--home")
    return at + 1 < len(w) and w[at + 1] == "h" and w.index("add") < w.index("a@b")


@given(st.permutations(["--home", "h", "add", "a@b", "--direct"]).filter(_readable))
def test_any_placing_of_the_options_reads_the_same(order: list[str]) -> None:
    args = cli.parse(PARSER, ["contacts", *order])
    assert (args.action, args.address, args.home, args.direct) == ("add", "a@b", Path("h"), True)
