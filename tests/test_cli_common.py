"""The command modules' shared helpers (anonmail/commands/common.py), in process.

The passphrase prompt names the key it opens ("the node key", "the address key") at every call
site, the passphrase never shows up in the output, and bad input is one `UserError`, never a
traceback. Real processes run the same commands in test_node_process.py and test_mail_tcp.py.
"""

from __future__ import annotations

import argparse
import getpass
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from anonmail.commands import common, mail_cmd, node_cmd
from anonmail.errors import UserError
from anonmail.paths import Home

SECRET = "tr0ub4dor&3 of the test"


class Terminal(io.StringIO):
    """A standard input that says it is a terminal (so the commands prompt)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every prompt getpass shows; each is answered with SECRET."""
    shown: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        shown.append(prompt)
        return SECRET

    monkeypatch.delenv(common.PASSPHRASE_ENV, raising=False)
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr(sys, "stdin", Terminal())
    return shown


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="anonmail")
    sub = parser.add_subparsers()
    node_cmd.register(sub)
    mail_cmd.register(sub)
    return parser.parse_args(argv)


def run(*argv: str) -> int:
    args = parse(*argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def test_every_prompt_names_its_key(tmp_path: Path, prompts: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "h"
    node_key, address_key = home / "node.key", home / "address.key"
    assert run("node", "--init", "--home", str(home), "--testnet", "--puzzle-bits", "4",
               "--listen", "127.0.0.1:7999", "--fast-kdf") == 0
    assert prompts == [f"New passphrase for the node key in {node_key}: ",
                       f"The same passphrase again, for the node key in {node_key}: "]
    prompts.clear()
    node_cmd.open_node_key(parse("node", "--home", str(home)), Home(home))
    assert prompts == [f"Passphrase for the node key in {node_key}: "]

    prompts.clear()
    assert run("init", "--home", str(home), "--name", "alice", "--offline", "--fast-kdf") == 0
    address = capsys.readouterr().out.split("your address: ")[1].split()[0]
    assert address.startswith("alice@") and address.endswith(".anon")
    assert prompts == [f"New passphrase for the address key of {address}: ",
                       f"The same passphrase again, for the address key of {address}: "]
    prompts.clear()
    assert run("address", "--home", str(home)) == 0
    assert prompts == [f"Passphrase for the address key in {address_key}: "]

    out, err = capsys.readouterr()
    assert address in out
    assert SECRET not in out + err + "".join(prompts)


def test_passphrase_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal
    monkeypatch.delenv(common.PASSPHRASE_ENV, raising=False)
    none = argparse.Namespace(passphrase_file=None)
    with pytest.raises(UserError, match=r"^the address key in x needs a passphrase: use "):
        common.passphrase(none, "the address key in x")
    monkeypatch.setenv(common.PASSPHRASE_ENV, "from the environment")
    assert common.passphrase(none, "the node key") == "from the environment"
    file = tmp_path / "pw"
    file.write_text("from a file\n")
    assert common.passphrase(argparse.Namespace(passphrase_file=file), "k") == "from a file"


@pytest.mark.parametrize("content", [None, b"\xff\xfe not UTF-8"])
def test_a_bad_passphrase_file_is_one_line(tmp_path: Path, content: bytes | None) -> None:
    file = tmp_path / "pw"
    if content is not None:
        file.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(f"passphrase file {file}")) as e:
        common.passphrase(argparse.Namespace(passphrase_file=file), "the node key")
    assert "\n" not in str(e.value)


def test_mistyped_or_missing_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(common.PASSPHRASE_ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", Terminal())
    answers = iter(["one", "two"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    args = argparse.Namespace(passphrase_file=None)
    with pytest.raises(UserError, match="the passphrases differ; nothing was written"):
        common.passphrase(args, "the node key", new=True)

    def eof(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(getpass, "getpass", eof)
    with pytest.raises(UserError, match=r"^no passphrase given for the address key of a@b$"):
        common.passphrase(args, "the address key of a@b")


def test_bad_input_is_a_user_error(tmp_path: Path, prompts: list[str]) -> None:
    home = tmp_path / "h"
    with pytest.raises(UserError, match="--puzzle-bits is for test networks"):
        run("node", "--init", "--home", str(home), "--puzzle-bits", "4")
    with pytest.raises(UserError, match="--name 'a@b' cannot be"):
        run("init", "--home", str(home), "--name", "a@b", "--offline", "--testnet")
    assert not home.exists() and prompts == []  # refused before asking or writing anything
    home.mkdir()
    (home / "config.toml").write_bytes(b"\xff not UTF-8")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        common.load_config(Home(home))
    (home / "config.toml").unlink()
    (home / "config.toml").mkdir()
    with pytest.raises(UserError, match="cannot read"):
        common.load_config(Home(home))
    with pytest.raises(UserError, match="no node key"):
        node_cmd.open_node_key(parse("node", "--home", str(home)), Home(home))
    with pytest.raises(UserError, match="run `anonmail init` first"):
        run("address", "--home", str(home))
    assert prompts == []
