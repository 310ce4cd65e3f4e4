"""What the command modules share (an edge: reads the environment, files and the terminal).

The options several commands take (`--home`, `--passphrase-file`, `--fast-kdf`), the home
directory and the configuration in it, a new configuration for a new home, the files a command
creates, and the passphrase of a key file: from `--passphrase-file`, else $ANONMAIL_PASSPHRASE,
else asked on the terminal by a prompt that names the key it opens ("the node key", "the address
key"), so a user with several keys knows which passphrase to type. Every failure here is a
`UserError`, which the command line prints as one line.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from anonmail import config as config_mod
from anonmail import crypto
from anonmail.config import NodeConfig
from anonmail.errors import UserError
from anonmail.fileio import create_private
from anonmail.paths import Home, default_home

PASSPHRASE_ENV = "ANONMAIL_PASSPHRASE"  # noqa: S105 -- the variable's name, not a secret
NODE_KEY = "the node key"
ADDRESS_KEY = "the address key"


# -- options --------------------------------------------------------------------------------------

def add_home_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", type=Path,
                   help="home directory (default: $ANONMAIL_HOME, else a per-user data dir)")


def add_passphrase_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passphrase-file", type=Path,
                   help=f"read the key passphrase from this file (else ${PASSPHRASE_ENV}, "
                        "else a prompt)")


def add_fast_kdf_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fast-kdf", action="store_true", help=argparse.SUPPRESS)  # tests only


def kdf_cost(args: argparse.Namespace) -> crypto.PassphraseParams:
    """The argon2id cost for sealing a new key file: MODERATE, or INTERACTIVE with --fast-kdf."""
    return crypto.INTERACTIVE if getattr(args, "fast_kdf", False) else crypto.MODERATE


# -- the home directory ---------------------------------------------------------------------------

def home_of(args: argparse.Namespace) -> Home:
    """`--home`, else $ANONMAIL_HOME, else the platform's per-user data directory."""
    home: Path | None = getattr(args, "home", None)
    return Home(home if home else default_home())


def load_config(home: Home) -> NodeConfig:
    """The home's config.toml, checked."""
    try:
        return config_mod.load(home.config)
    except OSError as e:  # a missing file is config.load's own clear error
        raise UserError(f"cannot read {home.config}: {e.strerror}") from None
    except UnicodeDecodeError as e:  # nothing is written: the file stays as it is
        raise UserError(f"{home.config} is not UTF-8 text (byte {e.start}): fix or recreate "
                        "it") from None


def new_config(listen: str | None, bootstrap: Sequence[str], testnet: bool,
               puzzle_bits: int | None) -> tuple[str, NodeConfig]:
    """The text of a config.toml for a new home, and what it says: validated, so that nothing
    is written when an option is wrong. `listen` None: left unset (config.template)."""
    if puzzle_bits is not None and not testnet:
        raise UserError("--puzzle-bits is for test networks (add --testnet)")
    extra = {} if puzzle_bits is None else {"puzzle_bits": puzzle_bits}
    text = config_mod.template(listen, tuple(bootstrap), "test" if testnet else "main", extra)
    return text, config_mod.parse(text)


def create_file(path: Path, data: bytes) -> None:
    """Write a new private (0600) file; never replace one."""
    try:
        create_private(path, data)
    except FileExistsError:
        raise UserError(f"{path} exists: refusing to overwrite it") from None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


# -- passphrases ----------------------------------------------------------------------------------

def passphrase(args: argparse.Namespace, key: str, *, new: bool = False) -> str:
    """The passphrase of `key`, a phrase naming the key, e.g. "the node key in ~/n/node.key":
    from --passphrase-file, else $ANONMAIL_PASSPHRASE, else asked on the terminal (twice when
    `new`, i.e. when a key file is about to be sealed). The passphrase itself is never echoed
    or printed."""
    path: Path | None = getattr(args, "passphrase_file", None)
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise UserError(f"cannot read passphrase file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"passphrase file {path} is not UTF-8 text") from None
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise UserError(f"{key} needs a passphrase: use --passphrase-file or set "
                        f"{PASSPHRASE_ENV}")
    try:
        first = getpass.getpass(f"{'New passphrase' if new else 'Passphrase'} for {key}: ")
        if new and getpass.getpass(f"The same passphrase again, for {key}: ") != first:
            raise UserError("the passphrases differ; nothing was written")
    except EOFError:
        raise UserError(f"no passphrase given for {key}") from None
    return first

